//! The package's tokio runtime: two small named worker threads, created on
//! first use. A runtime's threads do not survive `fork()`, so the process id is
//! recorded and every native entry point refuses to run in a forked child
//! instead of hanging on threads that no longer exist.

use std::sync::OnceLock;

use blazen_peer_core::PeerError;
use tokio::runtime::{Builder, Runtime};

static OWNER_PID: OnceLock<u32> = OnceLock::new();

/// Configures the runtime pyo3-async-runtimes will build on first use.
pub fn configure() {
    let mut builder = Builder::new_multi_thread();
    builder
        .worker_threads(2)
        .thread_name("blazen-peer-worker")
        .enable_all();
    pyo3_async_runtimes::tokio::init(builder);
    OWNER_PID.get_or_init(std::process::id);
}

/// The runtime, after checking that this is the process that created it.
pub fn runtime() -> Result<&'static Runtime, PeerError> {
    check_not_forked()?;
    Ok(pyo3_async_runtimes::tokio::get_runtime())
}

/// Fails when called in a child forked after the runtime was configured.
pub fn check_not_forked() -> Result<(), PeerError> {
    let owner = *OWNER_PID.get_or_init(std::process::id);
    if owner != std::process::id() {
        return Err(PeerError::Validation(
            "blazen_peer was initialised in the parent process and cannot be used after fork(); \
             start child processes with the 'spawn' method, or import blazen_peer only in the child"
                .into(),
        ));
    }
    Ok(())
}
