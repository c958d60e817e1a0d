//! One inbox per asyncio event loop for work that runtime threads hand to it:
//! resolving a native awaitable, starting an `async def` step.
//!
//! Why: a runtime thread that enters Python to call `call_soon_threadsafe`
//! first has to win the GIL from the loop thread. While the loop runs Python
//! code that wait lasts up to the interpreter's switch interval (5 ms), and
//! the runtime thread, with every task queued on it, stalls for that long; the
//! thread state Python makes for the visit costs more than the wake-up itself.
//! So the runtime threads never take the GIL here: a job is queued under a
//! plain mutex, and only the job that finds the inbox empty writes one byte to
//! a socket that the loop watches (`add_reader`). The loop then runs every
//! queued job in one callback: a burst of N completions costs one wake-up and
//! no GIL hand-off, and the Python objects are built on the loop thread, which
//! holds the GIL anyway. A loop without `add_reader` (Windows' proactor loop)
//! is rung the old way, through `call_soon_threadsafe`.
//!
//! A closed loop never reads its socket again. Jobs queued for it would wait
//! forever (and a step's run with them), so a watchdog on the runtime looks
//! once a second at inboxes whose jobs went unread for a whole tick, and
//! drops them when their loop is closed or gone: dropping a job settles what
//! it was to do (see `steps::SettleOnDrop`).

use std::io::{ErrorKind, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use pyo3::exceptions::PyNotImplementedError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::{gil, runtime};

/// Work to run on the loop thread, with the GIL.
pub type Job = Box<dyn FnOnce(Python<'_>) + Send>;

/// How often the watchdog looks for a closed loop with jobs waiting.
const WATCHDOG_TICK: Duration = Duration::from_secs(1);

/// The part of an inbox that runtime threads use, without the GIL.
struct Shared {
    jobs: Mutex<Vec<Job>>,
    bell: Bell,
    /// Bumped each time the loop takes the queued jobs: the watchdog's sign of life.
    taken: AtomicU64,
    // A weak reference: the inboxes table is keyed weakly by the loop, and a
    // strong reference from its value would keep every loop alive forever.
    event_loop: Py<PyAny>,
}

/// How a runtime thread wakes the loop.
enum Bell {
    /// The write end of a socket pair whose read end the loop watches.
    #[cfg(unix)]
    Socket {
        write: std::os::unix::net::UnixStream,
        read: std::os::unix::net::UnixStream,
    },
    /// `call_soon_threadsafe`, with the GIL: for loops that cannot watch a socket.
    Threadsafe,
}

/// The inbox of one event loop, as the loop sees it (its reader callback);
/// get a handle with [`for_loop`].
#[pyclass(frozen, module = "blazen_peer._native")]
pub struct LoopInbox {
    shared: Arc<Shared>,
}

/// A cheap handle usable without the GIL.
#[derive(Clone)]
pub struct Inbox(Arc<Shared>);

impl Inbox {
    /// Queues `job`; rings the loop when the inbox was empty. A closed loop
    /// (or an exiting interpreter) drops the job: nobody is left to run it.
    pub fn post(&self, job: Job) {
        let ring = {
            let mut jobs = self.0.lock();
            jobs.push(job);
            jobs.len() == 1
        };
        if ring {
            self.0.ring();
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Job>> {
        // Jobs run outside the lock, so a panic cannot poison it mid-update.
        self.jobs
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn ring(self: &Arc<Self>) {
        match &self.bell {
            #[cfg(unix)]
            Bell::Socket { write, .. } => {
                // WouldBlock: the socket is full of unread rings, and one is enough.
                let _ = (&*write).write(&[1]);
            }
            Bell::Threadsafe => {
                gil::with_python(|py| {
                    let this = self.clone();
                    let rang = self.event_loop.bind(py).call0().and_then(|event_loop| {
                        let callback = Bound::new(py, LoopInbox { shared: this })?;
                        event_loop.call_method1("call_soon_threadsafe", (callback,))
                    });
                    if rang.is_err() {
                        // The loop is closed: forget the jobs instead of ringing forever.
                        drop(std::mem::take(&mut *self.lock()));
                    }
                });
            }
        }
    }

    /// Empties the socket, so the next ring wakes the loop again.
    fn silence(&self) {
        #[cfg(unix)]
        if let Bell::Socket { read, .. } = &self.bell {
            let mut buf = [0u8; 256];
            loop {
                match (&*read).read(&mut buf) {
                    Ok(n) if n == buf.len() => continue,
                    Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                    _ => break,
                }
            }
        }
    }

    fn run_jobs(&self, py: Python<'_>) {
        // Silence first: a job queued after the take below rings again.
        self.silence();
        let jobs = std::mem::take(&mut *self.lock());
        self.taken.fetch_add(1, Ordering::Relaxed);
        for job in jobs {
            // One failing job must not strand the others.
            let _ = catch_unwind(AssertUnwindSafe(|| job(py)));
        }
    }

    /// True when the loop is closed or gone, so queued jobs would never run.
    fn loop_is_closed(&self, py: Python<'_>) -> bool {
        self.event_loop
            .bind(py)
            .call0()
            .and_then(|event_loop| {
                if event_loop.is_none() {
                    return Ok(true);
                }
                event_loop.call_method0("is_closed")?.is_truthy()
            })
            .unwrap_or(true)
    }
}

/// Drops the jobs of a closed loop (see the module note); ends with the inbox.
async fn watchdog(inbox: Weak<Shared>) {
    let mut last_taken = None;
    loop {
        tokio::time::sleep(WATCHDOG_TICK).await;
        let Some(shared) = inbox.upgrade() else {
            return;
        };
        let taken = shared.taken.load(Ordering::Relaxed);
        let waiting = !shared.lock().is_empty();
        if waiting && last_taken == Some(taken) {
            gil::with_python(|py| {
                if shared.loop_is_closed(py) {
                    drop(std::mem::take(&mut *shared.lock()));
                }
            });
        }
        last_taken = waiting.then_some(taken);
    }
}

#[pymethods]
impl LoopInbox {
    /// Runs every queued job (the loop calls this).
    fn __call__(&self, py: Python<'_>) {
        self.shared.run_jobs(py);
    }
}

static INBOXES: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

thread_local! {
    // Nearly every call on a thread comes from the same loop: remember its inbox
    // (checked by identity, since a new loop may reuse a dead one's address).
    static LAST: std::cell::RefCell<Option<Inbox>> = const { std::cell::RefCell::new(None) };
}

/// The inbox of `event_loop`, created on first use and kept as long as the
/// loop. Call it on the loop's own thread (it may register a reader).
pub fn for_loop(py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> PyResult<Inbox> {
    let cached = LAST.with(|last| {
        last.borrow()
            .as_ref()
            .filter(|inbox| {
                inbox
                    .0
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
        return Ok(Inbox(inbox.get().shared.clone()));
    }
    let weak_loop = py.import("weakref")?.getattr("ref")?.call1((event_loop,))?;
    let new_inbox = |bell| {
        Bound::new(
            py,
            LoopInbox {
                shared: Arc::new(Shared {
                    jobs: Mutex::new(Vec::new()),
                    bell,
                    taken: AtomicU64::new(0),
                    event_loop: weak_loop.clone().unbind(),
                }),
            },
        )
    };
    let inbox = match socket_bell()? {
        Some(bell) => {
            let inbox = new_inbox(bell)?;
            match register_reader(py, event_loop, &inbox) {
                Ok(()) => {
                    let runtime = runtime::runtime().map_err(crate::errors::to_py)?;
                    runtime.spawn(watchdog(Arc::downgrade(&inbox.get().shared)));
                    inbox
                }
                Err(err) if err.is_instance_of::<PyNotImplementedError>(py) => {
                    new_inbox(Bell::Threadsafe)?
                }
                Err(err) => return Err(err),
            }
        }
        None => new_inbox(Bell::Threadsafe)?,
    };
    inboxes.set_item(event_loop, &inbox)?;
    Ok(Inbox(inbox.get().shared.clone()))
}

/// A socket pair for a loop to watch (not on Windows, whose loops cannot).
fn socket_bell() -> PyResult<Option<Bell>> {
    #[cfg(unix)]
    {
        let (write, read) = std::os::unix::net::UnixStream::pair()?;
        write.set_nonblocking(true)?;
        read.set_nonblocking(true)?;
        Ok(Some(Bell::Socket { write, read }))
    }
    #[cfg(not(unix))]
    Ok(None)
}

/// Registers the inbox as the reader of its socket, in an empty context: the
/// tasks its jobs create (a step's) must not inherit the variables of
/// whichever coroutine happened to make the inbox.
fn register_reader(
    py: Python<'_>,
    event_loop: &Bound<'_, PyAny>,
    inbox: &Bound<'_, LoopInbox>,
) -> PyResult<()> {
    #[cfg(unix)]
    if let Bell::Socket { read, .. } = &inbox.get().shared.bell {
        use std::os::fd::AsRawFd;
        let empty = py.import("contextvars")?.getattr("Context")?.call0()?;
        let add_reader = event_loop.getattr("add_reader")?;
        empty.call_method1("run", (add_reader, read.as_raw_fd(), inbox))?;
    }
    Ok(())
}
