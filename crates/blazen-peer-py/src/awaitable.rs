//! Rust futures as asyncio futures of the calling loop.
//!
//! The future runs on the package's runtime; its outcome travels back as a
//! Rust value and becomes a Python object only on the loop thread, through the
//! loop's inbox (see `inbox`), so runtime threads do not take the GIL to build
//! results. Cancelling the asyncio future aborts the Rust task, which drops
//! whatever it was doing (a gRPC call, a run).

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;

use blazen_peer_core::{Event, PeerError};
use pyo3::prelude::*;
use tokio::task::AbortHandle;

use crate::errors::{to_py, IntoPyResult};
use crate::events::PyEvent;
use crate::{inbox, runtime};
use pyo3::sync::PyOnceLock;

/// A value a future hands back to Python.
pub trait ToPython: Send + 'static {
    /// Builds the Python object.
    fn to_python(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>>;
}

impl ToPython for () {
    fn to_python(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        Ok(py.None().into_bound(py))
    }
}

impl<T: ToPython> ToPython for Option<T> {
    fn to_python(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        match self {
            Some(value) => value.to_python(py),
            None => Ok(py.None().into_bound(py)),
        }
    }
}

macro_rules! plain_to_python {
    ($($ty:ty),*) => {$(
        impl ToPython for $ty {
            fn to_python(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
                Ok(self.into_pyobject(py)?.to_owned().into_any())
            }
        }
    )*};
}

plain_to_python!(bool, u64, f64, String, &'static str);

/// The Python object inside an event that a Python step emitted.
pub struct PyEventObject(pub Event);

impl ToPython for PyEventObject {
    fn to_python(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        match self.0.data.as_any().downcast_ref::<PyEvent>() {
            Some(event) => Ok(event.obj.bind(py).clone()),
            None => Err(to_py(PeerError::Encode(
                "the run ended with an event that is not a Python object".into(),
            ))),
        }
    }
}

/// Any pyclass value.
pub struct Class<T>(pub T);

impl<T> ToPython for Class<T>
where
    T: pyo3::PyClass + Into<pyo3::PyClassInitializer<T>> + Send + 'static,
{
    fn to_python(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        Ok(Bound::new(py, self.0)?.into_any())
    }
}

/// Runs `fut` on the runtime and returns an asyncio future of the running loop.
pub fn spawn<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = Result<T, PeerError>> + Send + 'static,
    T: ToPython,
{
    let runtime = runtime::runtime().py_err()?;
    let event_loop = get_running_loop(py)?;
    let future = event_loop.call_method0("create_future")?;
    let inbox = inbox::for_loop(py, &event_loop)?;
    let future_ref = future.clone().unbind();
    let task = runtime.spawn(async move {
        // A panic must not leave the awaiting coroutine hanging: it becomes an error.
        let outcome = AssertUnwindSafe(fut)
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(PeerError::from_panic(panic.as_ref(), "blazen_peer")));
        // The Python value is built on the loop thread, which holds the GIL anyway.
        inbox.post(Box::new(move |py| settle(py, future_ref.bind(py), outcome)));
    });
    future.call_method1(
        "add_done_callback",
        (AbortOnCancel {
            task: task.abort_handle(),
        },),
    )?;
    Ok(future)
}

/// Sets the outcome on `future` unless it is already done (cancelled).
fn settle<T: ToPython>(py: Python<'_>, future: &Bound<'_, PyAny>, outcome: Result<T, PeerError>) {
    if future
        .call_method0("done")
        .and_then(|done| done.is_truthy())
        .unwrap_or(true)
    {
        return;
    }
    let _ = match outcome.map_err(to_py).and_then(|value| value.to_python(py)) {
        Ok(value) => future.call_method1("set_result", (value,)),
        Err(err) => future.call_method1("set_exception", (err.into_value(py),)),
    };
}

fn get_running_loop<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
    static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    GET_RUNNING_LOOP
        .get_or_try_init(py, || {
            py.import("asyncio")?
                .getattr("get_running_loop")
                .map(Bound::unbind)
        })?
        .bind(py)
        .call0()
}

/// Done-callback that aborts the Rust task when the asyncio future was cancelled.
#[pyclass(frozen, module = "blazen_peer._native")]
pub struct AbortOnCancel {
    task: AbortHandle,
}

#[pymethods]
impl AbortOnCancel {
    fn __call__(&self, future: &Bound<'_, PyAny>) -> PyResult<()> {
        if future.call_method0("cancelled")?.is_truthy()? {
            self.task.abort();
        }
        Ok(())
    }
}

/// Awaitable whose Rust future panics: lets the tests prove a panic surfaces
/// as a `TransportError` instead of a hung coroutine or a dead interpreter.
#[pyfunction]
pub fn _panic_probe(py: Python<'_>, message: String) -> PyResult<Bound<'_, PyAny>> {
    spawn(py, async move {
        if !message.is_empty() {
            panic!("{message}");
        }
        Ok(())
    })
}
