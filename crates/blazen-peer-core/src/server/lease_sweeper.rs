//! The task that frees the `UntilParentFinish` refs of parents that stopped
//! renewing their lease (a crashed or unreachable caller).
//!
//! It runs beside the server for its whole life, polling a few times per
//! lease, so an expired ref is freed even if nobody asks for it again.

use std::sync::Arc;
use std::time::Duration;

use crate::session_refs::SessionRefRegistry;

/// Frees refs of parents that stopped renewing their lease.
pub(super) async fn sweep_leases(session_refs: Arc<SessionRefRegistry>) {
    let period =
        (session_refs.lease() / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
    let mut ticks = tokio::time::interval(period);
    loop {
        ticks.tick().await;
        session_refs.sweep_expired();
    }
}
