//! Plain `def` steps run on Python's own daemon threads, fed from here.
//!
//! Why not tokio's blocking pool: a step still running when the interpreter
//! exits re-takes the GIL after finalization began, and CPython ends such a
//! thread with `pthread_exit`. Unwinding that through Rust frames runs their
//! drops (pyo3's GIL guard among them) on a dead thread state and aborts the
//! process. A thread `threading` started has only CPython's frames under the
//! step, which is exactly the daemon-thread case CPython handles, so the host
//! exits cleanly. Where the worker does wait in Rust (for its next job), it
//! waits with the GIL released and never takes it back once the exit gate
//! closed (see `gil::detach`).
//!
//! The queue grows its threads on demand: a job that finds no idle worker asks
//! Python for one more (up to [`MAX_WORKERS`]); a worker idle for
//! [`IDLE_RETIREMENT`] leaves while another stays idle.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use blazen_peer_core::registry::StepOutput;
use blazen_peer_core::{Event, RunContext, StepFailure, StepSlot};
use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};
use tokio::sync::oneshot;

use crate::context::RunContextRef;
use crate::events;
use crate::{bridge, gil};

/// Most `def` steps running at once in a process; beyond it they queue.
pub const MAX_WORKERS: usize = 256;
/// How long a worker waits for a job before leaving (one always stays).
const IDLE_RETIREMENT: Duration = Duration::from_secs(30);

type Outcome = Result<StepOutput, StepFailure>;

/// One `def` step call waiting for (or running on) a worker.
struct SyncJob {
    func: Arc<Py<PyAny>>,
    ctx: RunContext,
    event: Event,
    remote: bool,
    reply: oneshot::Sender<Outcome>,
    // The step's concurrency slot, if it has a limit: held until the step returns.
    slot: Option<StepSlot>,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<SyncJob>,
    workers: usize,
    idle: usize,
    running: usize,
}

/// The process's queue of `def` step calls.
pub struct SyncPool {
    pid: u32,
    state: Mutex<State>,
    job_ready: Condvar,
    all_done: Condvar,
}

// Swapped, never freed: a forked child gets a pool of its own (the parent's
// workers did not survive the fork), read without a lock that a thread of
// the parent may have held at fork().
static POOL: AtomicPtr<SyncPool> = AtomicPtr::new(std::ptr::null_mut());

/// This process's pool.
pub fn pool() -> &'static SyncPool {
    let pid = std::process::id();
    loop {
        let current = POOL.load(Ordering::Acquire);
        // SAFETY: pools are leaked, so a pointer once stored stays valid.
        if let Some(pool) = unsafe { current.as_ref() } {
            if pool.pid == pid {
                return pool;
            }
        }
        let fresh = Box::into_raw(Box::new(SyncPool {
            pid,
            state: Mutex::default(),
            job_ready: Condvar::new(),
            all_done: Condvar::new(),
        }));
        if POOL
            .compare_exchange(current, fresh, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // SAFETY: never shared; another thread installed its pool first.
            drop(unsafe { Box::from_raw(fresh) });
        }
    }
}

impl SyncPool {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Queues `job`; true when a worker must be started for it.
    fn push(&self, job: SyncJob) -> bool {
        let mut state = self.lock();
        state.jobs.push_back(job);
        let grow = state.idle < state.jobs.len() && state.workers < MAX_WORKERS;
        if grow {
            state.workers += 1;
        }
        drop(state);
        self.job_ready.notify_one();
        grow
    }

    /// A worker that was counted could not start. With no worker at all, the
    /// queued calls fail now instead of waiting for a thread that never comes.
    fn worker_lost(&self, why: &str) {
        let mut state = self.lock();
        state.workers -= 1;
        let stranded: Vec<SyncJob> = if state.workers == 0 {
            state.jobs.drain(..).collect()
        } else {
            Vec::new()
        };
        drop(state);
        log::warn!(
            target: blazen_peer_core::log_target::TARGET,
            "could not start a thread for `def` steps: {why}"
        );
        for job in stranded {
            let _ = job.reply.send(Err(StepFailure::new(
                "RuntimeError",
                format!("could not start a thread to run this `def` step: {why}"),
            )));
        }
    }

    /// The next job whose caller still waits; None: retire this worker.
    fn next(&self) -> Option<SyncJob> {
        // Jobs whose run ended while they queued never start. They are dropped
        // after the lock is released: the last handle on a run's context may
        // take the GIL as it goes, and a worker holding the GIL may be waiting
        // for this lock.
        let mut abandoned = Vec::new();
        let mut state = self.lock();
        state.idle += 1;
        let next = loop {
            if gil::is_closed() {
                // Exit began: nothing starts any more (see `fail_queued`).
                state.idle -= 1;
                break None;
            }
            let mut taken = None;
            while let Some(job) = state.jobs.pop_front() {
                if job.reply.is_closed() {
                    abandoned.push(job);
                } else {
                    taken = Some(job);
                    break;
                }
            }
            if let Some(job) = taken {
                state.idle -= 1;
                state.running += 1;
                break Some(job);
            }
            if !abandoned.is_empty() {
                drop(state);
                abandoned.clear();
                state = self.lock();
                continue;
            }
            let (next, waited) = self
                .job_ready
                .wait_timeout(state, IDLE_RETIREMENT)
                .unwrap_or_else(|poison| poison.into_inner());
            state = next;
            if waited.timed_out() && state.jobs.is_empty() && state.idle > 1 {
                state.idle -= 1;
                state.workers -= 1;
                break None;
            }
        };
        drop(state);
        drop(abandoned);
        next
    }

    /// A worker thread ended other than by retiring (an exception in the loop).
    fn worker_left(&self) {
        let mut state = self.lock();
        state.workers = state.workers.saturating_sub(1);
    }

    /// At exit: queued calls fail now instead of waiting for a worker that
    /// will never take them; idle workers wake and park.
    pub fn fail_queued(&self) {
        let queued: Vec<SyncJob> = self.lock().jobs.drain(..).collect();
        self.job_ready.notify_all();
        for job in queued {
            let _ = job.reply.send(Err(interpreter_exiting()));
        }
    }

    fn finished(&self) {
        let mut state = self.lock();
        // Saturating: a child forked inside a `def` step settles that call
        // into a fresh pool that never counted it.
        state.running = state.running.saturating_sub(1);
        if state.running == 0 {
            self.all_done.notify_all();
        }
    }

    /// Waits up to `limit` for running `def` steps to return.
    pub fn wait_idle(&self, limit: Duration) {
        let state = self.lock();
        let _ = self
            .all_done
            .wait_timeout_while(state, limit, |state| state.running > 0);
    }
}

/// Runs a `def` step on a worker thread and waits for its outcome.
pub async fn run(
    func: Arc<Py<PyAny>>,
    ctx: RunContext,
    event: Event,
    remote: bool,
    slot: Option<StepSlot>,
) -> Outcome {
    if gil::is_closed() {
        return Err(interpreter_exiting());
    }
    let (reply, outcome) = oneshot::channel();
    let pool = pool();
    let job = SyncJob {
        func,
        ctx,
        event,
        remote,
        reply,
        slot,
    };
    if pool.push(job) {
        let started =
            gil::with_python(|py| bridge::start_step_worker(py).map_err(|err| err.to_string()))
                .unwrap_or_else(|| Err("the interpreter is shutting down".into()));
        if let Err(why) = started {
            pool.worker_lost(&why);
        }
    }
    outcome.await.unwrap_or_else(|_| Err(interpreter_exiting()))
}

pub fn interpreter_exiting() -> StepFailure {
    StepFailure {
        cancelled: true,
        ..StepFailure::new("CancelledError", "the Python interpreter is shutting down")
    }
}

/// A `def` step call handed to a worker thread: the step, its context and
/// event as Python objects, and where its outcome goes.
#[pyclass(frozen, module = "blazen_peer._native")]
pub struct SyncStepCall {
    #[pyo3(get)]
    func: Py<PyAny>,
    #[pyo3(get)]
    context: Py<RunContextRef>,
    #[pyo3(get)]
    event: Py<PyAny>,
    remote: bool,
    reply: Mutex<Option<oneshot::Sender<Outcome>>>,
    slot: Mutex<Option<StepSlot>>,
}

impl SyncStepCall {
    fn settle(&self, outcome: Outcome) {
        // The step returned: its slot is free, even if its run stopped waiting.
        drop(
            self.slot
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .take(),
        );
        let reply = self
            .reply
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take();
        if let Some(reply) = reply {
            pool().finished();
            let _ = reply.send(outcome);
        }
    }
}

#[pymethods]
impl SyncStepCall {
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.func)?;
        visit.call(&self.context)?;
        visit.call(&self.event)
    }

    /// Delivers the events the step emitted, as `[(event, event_types), ...]`.
    fn succeed(&self, emitted: Bound<'_, PyAny>) {
        let outcome = crate::steps::collect_events(&emitted, self.remote)
            .map_err(|err| bridge::describe_failure(emitted.py(), err));
        self.settle(outcome);
    }

    /// Delivers the exception the step raised.
    fn fail(&self, exc: Bound<'_, PyAny>) {
        let failure = bridge::describe_failure(exc.py(), PyErr::from_value(exc));
        self.settle(Err(failure));
    }
}

impl Drop for SyncStepCall {
    fn drop(&mut self) {
        // A worker that lost the call before settling it (it cannot, but a
        // call must never leave the pool counting it as running).
        if let Some(reply) = self
            .reply
            .get_mut()
            .unwrap_or_else(|poison| poison.into_inner())
            .take()
        {
            pool().finished();
            let _ = reply.send(Err(StepFailure::new(
                "RuntimeError",
                "the worker thread dropped this step call without an outcome",
            )));
        }
    }
}

/// Blocks (GIL released) for the next `def` step call; None tells the calling
/// worker thread to end. After interpreter exit began, never returns.
#[pyfunction]
pub fn next_sync_step(py: Python<'_>) -> PyResult<Option<SyncStepCall>> {
    loop {
        let Some(job) = gil::detach(py, || pool().next()) else {
            return Ok(None);
        };
        let call = (|| -> PyResult<SyncStepCall> {
            Ok(SyncStepCall {
                func: job.func.clone_ref(py),
                context: Py::new(py, RunContextRef { ctx: job.ctx })?,
                event: events::to_py(py, &job.event)?.unbind(),
                remote: job.remote,
                reply: Mutex::new(None),
                slot: Mutex::new(job.slot),
            })
        })();
        match call {
            Ok(call) => {
                *call.reply.lock().unwrap_or_else(|p| p.into_inner()) = Some(job.reply);
                return Ok(Some(call));
            }
            Err(err) => {
                pool().finished();
                let _ = job.reply.send(Err(bridge::describe_failure(py, err)));
            }
        }
    }
}

/// A worker thread is ending because of an exception in its own loop.
#[pyfunction]
pub fn sync_step_worker_left() {
    pool().worker_left();
}
