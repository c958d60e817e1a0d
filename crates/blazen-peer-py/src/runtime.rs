//! The package's tokio runtime, created on first use in each process: one
//! named worker thread unless `BLAZEN_PEER_RUNTIME_THREADS` asks for more.
//!
//! Why one: every call crosses between a Python thread and the runtime, and
//! with two workers each crossing woke both (tokio wakes an idle sibling to
//! steal work the moment one worker has any), so a round trip cost each
//! process about five context switches instead of two (measured with
//! `/proc/<pid>/task/*/status`). One worker made a sequential call faster and
//! 64 calls in flight no slower, and a 256 MiB deref no slower, on 2 cores:
//! the Python side, not the runtime, is what saturates a core first. A
//! process that moves many large values at once over many connections can
//! give the runtime more threads.
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
        .worker_threads(worker_threads()?)
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

/// Worker threads of the runtime when the environment does not say.
pub const DEFAULT_RUNTIME_THREADS: usize = 1;

/// The environment variable that sets the runtime's worker threads.
pub const RUNTIME_THREADS_VAR: &str = "BLAZEN_PEER_RUNTIME_THREADS";

fn worker_threads() -> Result<usize, PeerError> {
    let Ok(raw) = std::env::var(RUNTIME_THREADS_VAR) else {
        return Ok(DEFAULT_RUNTIME_THREADS);
    };
    match raw.trim().parse::<usize>() {
        Ok(threads) if threads >= 1 => Ok(threads),
        _ => Err(PeerError::Validation(format!(
            "{RUNTIME_THREADS_VAR}={raw:?} is not a number of threads; set it to a whole \
             number of at least 1, or unset it for the default ({DEFAULT_RUNTIME_THREADS})"
        ))),
    }
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
