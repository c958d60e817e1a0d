//! The gate every runtime thread passes to enter Python.
//!
//! Once interpreter finalization starts, CPython ends any thread that waits
//! for the GIL with `pthread_exit`, which aborts the process when it unwinds
//! through Rust frames (seen as SIGABRT/SIGSEGV at exit). So `blazen_peer`
//! registers an `atexit` hook that closes this gate and waits, GIL released,
//! for threads already inside and for running `def` steps to leave, for at
//! most [`DRAIN_LIMIT`]; after that, hand-offs to Python are skipped (nobody
//! is left to receive them), and a thread that released the GIL inside our
//! code never takes it back (see [`detach`]). `def` steps still running are
//! then abandoned as CPython abandons daemon threads: the process exits.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use pyo3::prelude::*;

static CLOSED: AtomicBool = AtomicBool::new(false);
static INSIDE: AtomicUsize = AtomicUsize::new(0);
static CLOSER: OnceLock<ThreadId> = OnceLock::new();

/// How long exit waits for threads running Python code (e.g. a `def` step).
pub const DRAIN_LIMIT: Duration = Duration::from_secs(2);

struct Leave;

impl Drop for Leave {
    fn drop(&mut self) {
        INSIDE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs `f` with the GIL, or returns None when the interpreter is shutting down.
pub fn with_python<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> Option<R> {
    while_open(|| Python::attach(f))
}

/// Runs `f`, which may take the GIL itself, unless the interpreter is shutting down.
pub fn while_open<R>(f: impl FnOnce() -> R) -> Option<R> {
    // Announce first, check second; `close` does the reverse, so with SeqCst
    // one of the two always sees the other.
    INSIDE.fetch_add(1, Ordering::SeqCst);
    let _leave = Leave;
    if CLOSED.load(Ordering::SeqCst) {
        return None;
    }
    Some(f())
}

/// True once interpreter exit closed the gate.
pub fn is_closed() -> bool {
    CLOSED.load(Ordering::SeqCst)
}

/// `py.detach(f)` for waits that may outlast the interpreter: when the gate
/// closed while `f` ran, the thread never takes the GIL back (that would end
/// it with `pthread_exit` through our frames); it sleeps until the process
/// exits around it. The thread that closed the gate (the one running exit
/// hooks) always comes back: parking it would hang the exit.
pub fn detach<T, F>(py: Python<'_>, f: F) -> T
where
    F: Send + FnOnce() -> T,
    T: Send,
{
    let out = py.detach(|| {
        let out = f();
        // Announce, then check, as in `while_open`: either this thread sees
        // the gate closed, or the closer sees it inside and waits for it to
        // be back in Python before finalization proceeds.
        INSIDE.fetch_add(1, Ordering::SeqCst);
        if CLOSED.load(Ordering::SeqCst) && !is_closer() {
            INSIDE.fetch_sub(1, Ordering::SeqCst);
            loop {
                std::thread::park();
            }
        }
        out
    });
    INSIDE.fetch_sub(1, Ordering::SeqCst);
    out
}

fn is_closer() -> bool {
    CLOSER.get() == Some(&std::thread::current().id())
}

/// Closes the gate and waits for runtime threads to leave Python and for
/// running `def` steps to return (atexit hook).
#[pyfunction]
pub fn close_python_gate(py: Python<'_>) {
    let _ = CLOSER.set(std::thread::current().id());
    CLOSED.store(true, Ordering::SeqCst);
    py.detach(|| {
        let started = Instant::now();
        let steps = crate::sync_steps::pool();
        steps.fail_queued();
        steps.wait_idle(DRAIN_LIMIT);
        while INSIDE.load(Ordering::SeqCst) > 0 && started.elapsed() < DRAIN_LIMIT {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
}
