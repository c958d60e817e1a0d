//! The package's tokio runtime: two small named worker threads, created on
//! first use. A runtime's threads do not survive `fork()`, so the process id is
//! recorded and every native entry point refuses to run in a forked child
//! instead of hanging on threads that no longer exist.

use std::sync::OnceLock;

use blazen_peer_core::PeerError;
use tokio::runtime::{Builder, Runtime};

static RUNTIME: OnceLock<Result<(u32, Runtime), String>> = OnceLock::new();

/// The runtime, after checking that this is the process that created it.
pub fn runtime() -> Result<&'static Runtime, PeerError> {
    let (owner, runtime) = RUNTIME
        .get_or_init(|| {
            Builder::new_multi_thread()
                .worker_threads(2)
                .max_blocking_threads(64)
                .thread_name("blazen-peer-worker")
                .enable_all()
                .build()
                .map(|runtime| (std::process::id(), runtime))
                .map_err(|err| err.to_string())
        })
        .as_ref()
        .map_err(|err| {
            PeerError::Validation(format!("cannot start the blazen-peer runtime: {err}"))
        })?;
    if *owner != std::process::id() {
        return Err(PeerError::Validation(
            "blazen_peer started its runtime in the parent process and cannot use it after fork(); \
             start child processes with the 'spawn' method, or use blazen_peer only in the child"
                .into(),
        ));
    }
    Ok(runtime)
}
