//! Handles to the Python half of the step bridge (`blazen_peer._bridge`).

use blazen_peer_core::StepFailure;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyBytes;

static BRIDGE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    BRIDGE
        .get_or_try_init(py, || py.import("blazen_peer._bridge").map(Bound::unbind))
        .map(|module| module.bind(py))
}

/// `_bridge.start_async_step`, scheduled on the event loop by the caller.
pub fn start_async_step(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    module(py)?.getattr("start_async_step")
}

/// Starts one more daemon thread for `def` steps (`_workers.start_worker`).
pub fn start_step_worker(py: Python<'_>) -> PyResult<()> {
    py.import("blazen_peer._workers")?
        .getattr("start_worker")?
        .call0()
        .map(drop)
}

/// JSON text of a StopEvent's result.
pub fn stop_result_json<'py>(
    py: Python<'py>,
    event: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    Ok(module(py)?
        .getattr("stop_result_json")?
        .call1((event,))?
        .cast_into()?)
}

/// A step's exception as a [`StepFailure`] (type name, message, traceback).
pub fn describe_failure(py: Python<'_>, err: PyErr) -> StepFailure {
    let exc = err.value(py).clone();
    let described = module(py).and_then(|bridge| {
        bridge
            .getattr("describe_exception")?
            .call1((&exc,))?
            .extract::<(String, String, String, bool)>()
    });
    match described {
        Ok((error_type, message, traceback, cancelled)) => StepFailure {
            error_type,
            message,
            traceback: Some(traceback),
            cancelled,
            source: Some(std::sync::Arc::new(exc.unbind())),
        },
        Err(_) => StepFailure::new("Exception", err.to_string()),
    }
}
