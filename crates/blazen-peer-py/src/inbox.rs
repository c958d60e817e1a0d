//! One inbox per asyncio event loop for work that runtime threads hand to it:
//! resolving a native awaitable, starting an `async def` step.
//!
//! Why: every `call_soon_threadsafe` from a runtime thread takes the GIL away
//! from the loop thread and writes to the loop's self-pipe. Under load (many
//! calls in flight) that hand-off dominated. Here a runtime thread queues a
//! job without the GIL and only the job that finds the inbox empty rings the
//! loop; one loop callback then runs every queued job. So a burst of N
//! completions costs one GIL hand-off and one wake-up, and the Python objects
//! are built on the loop thread, which holds the GIL anyway.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::gil;

/// Work to run on the loop thread, with the GIL.
pub type Job = Box<dyn FnOnce(Python<'_>) + Send>;

/// The inbox of one event loop; get it with [`for_loop`].
#[pyclass(frozen, module = "blazen_peer._native")]
pub struct LoopInbox {
    jobs: Mutex<Vec<Job>>,
    // A weak reference: the inboxes table is keyed weakly by the loop, and a
    // strong reference from its value would keep every loop alive forever.
    event_loop: Py<PyAny>,
}

/// A cheap handle usable without the GIL.
#[derive(Clone)]
pub struct Inbox(Arc<Py<LoopInbox>>);

impl Inbox {
    /// Queues `job`; rings the loop when the inbox was empty. A closed loop
    /// (or an exiting interpreter) drops the job: nobody is left to run it.
    pub fn post(&self, job: Job) {
        let inbox = self.0.get();
        let ring = {
            let mut jobs = inbox.lock();
            jobs.push(job);
            jobs.len() == 1
        };
        if ring {
            gil::with_python(|py| {
                let handle = self.0.clone_ref(py);
                let rang = inbox.event_loop.bind(py).call0().and_then(|event_loop| {
                    event_loop.call_method1("call_soon_threadsafe", (handle,))
                });
                if rang.is_err() {
                    // The loop is closed: forget the jobs instead of ringing forever.
                    inbox.lock().clear();
                }
            });
        }
    }
}

impl LoopInbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Job>> {
        // Jobs run outside the lock, so a panic cannot poison it mid-update.
        self.jobs
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

#[pymethods]
impl LoopInbox {
    /// Runs every queued job (the loop calls this).
    fn __call__(&self, py: Python<'_>) {
        let jobs = std::mem::take(&mut *self.lock());
        for job in jobs {
            // One failing job must not strand the others.
            let _ = catch_unwind(AssertUnwindSafe(|| job(py)));
        }
    }
}

static INBOXES: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

thread_local! {
    // Nearly every call on a thread comes from the same loop: remember its inbox
    // (checked by identity, since a new loop may reuse a dead one's address).
    static LAST: std::cell::RefCell<Option<Inbox>> = const { std::cell::RefCell::new(None) };
}

/// The inbox of `event_loop`, created on first use and kept as long as the loop.
pub fn for_loop(py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> PyResult<Inbox> {
    let cached = LAST.with(|last| {
        last.borrow()
            .as_ref()
            .filter(|inbox| {
                inbox
                    .0
                    .get()
                    .event_loop
                    .bind(py)
                    .call0()
                    .is_ok_and(|alive| alive.is(event_loop))
            })
            .cloned()
    });
    if let Some(inbox) = cached {
        return Ok(inbox);
    }
    let inbox = lookup(py, event_loop)?;
    LAST.with(|last| *last.borrow_mut() = Some(inbox.clone()));
    Ok(inbox)
}

fn lookup(py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> PyResult<Inbox> {
    let inboxes = INBOXES
        .get_or_try_init(py, || {
            py.import("weakref")?
                .getattr("WeakKeyDictionary")?
                .call0()
                .map(Bound::unbind)
        })?
        .bind(py);
    if let Ok(found) = inboxes.get_item(event_loop) {
        let inbox: Bound<'_, LoopInbox> = found.cast_into()?;
        return Ok(Inbox(Arc::new(inbox.unbind())));
    }
    let weak_loop = py.import("weakref")?.getattr("ref")?.call1((event_loop,))?;
    let inbox = Bound::new(
        py,
        LoopInbox {
            jobs: Mutex::new(Vec::new()),
            event_loop: weak_loop.unbind(),
        },
    )?;
    inboxes.set_item(event_loop, &inbox)?;
    Ok(Inbox(Arc::new(inbox.unbind())))
}
