//! The package's tokio runtime: two small named worker threads, created on
//! first use in each process.
//!
//! A runtime's threads do not survive `fork()`. A forked child therefore gets
//! a runtime of its own on first use, and the parent's is leaked, never
//! dropped: dropping it would wait for threads that do not exist in the child.
//! Clients and servers remember the process that made them ([`Owner`]) and
//! refuse to run in another one: their connections and tasks live on the
//! parent's runtime, and waiting on them in the child would hang forever.

use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Mutex;

use blazen_peer_core::PeerError;
use tokio::runtime::{Builder, Runtime};

struct ProcessRuntime {
    pid: u32,
    runtime: Runtime,
}

// Read on every call without a lock: a lock held by another thread at fork()
// would stay locked forever in the child.
static CURRENT: AtomicPtr<ProcessRuntime> = AtomicPtr::new(std::ptr::null_mut());
static CREATING: Mutex<()> = Mutex::new(());

fn current(pid: u32) -> Option<&'static Runtime> {
    let ptr = CURRENT.load(Ordering::Acquire);
    // SAFETY: only `runtime` stores into CURRENT, always a leaked Box, never freed.
    let owned = unsafe { ptr.as_ref() }?;
    (owned.pid == pid).then_some(&owned.runtime)
}

/// This process's runtime, started on first use.
pub fn runtime() -> Result<&'static Runtime, PeerError> {
    let pid = std::process::id();
    if let Some(runtime) = current(pid) {
        return Ok(runtime);
    }
    let _creating = CREATING.lock().unwrap_or_else(|poison| poison.into_inner());
    if let Some(runtime) = current(pid) {
        return Ok(runtime);
    }
    let runtime = Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(64)
        .thread_name("blazen-peer-worker")
        .enable_all()
        .build()
        .map_err(|err| {
            PeerError::Validation(format!("cannot start the blazen-peer runtime: {err}"))
        })?;
    let owned = Box::leak(Box::new(ProcessRuntime { pid, runtime }));
    CURRENT.store(owned, Ordering::Release);
    Ok(&owned.runtime)
}

/// The process a client or server was created in.
#[derive(Debug, Clone, Copy)]
pub struct Owner(u32);

impl Owner {
    /// The calling process.
    pub fn here() -> Self {
        Self(std::process::id())
    }

    /// Refuses use from a forked child; `what` names the object in the message.
    pub fn check(self, what: &str) -> Result<(), PeerError> {
        let here = std::process::id();
        if self.0 == here {
            return Ok(());
        }
        Err(PeerError::Validation(format!(
            "this {what} was created in process {} and cannot be used after fork() (this is \
             process {here}): its connections and tasks stayed in the parent. Create a new \
             {what} in the child, or start children with the 'spawn' method",
            self.0
        )))
    }
}
