//! The one place a core error becomes a Python exception: the exception classes
//! live in `blazen_peer.errors`, and `_from_native` builds them from a kind,
//! a message and a dict of typed details.

use blazen_peer_core::envelope::FailureKind;
use blazen_peer_core::PeerError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;

/// gRPC's UNAVAILABLE, the status a draining peer answers with.
const GRPC_UNAVAILABLE: i32 = 14;
/// gRPC's UNIMPLEMENTED, a v1-only peer's answer to a newer method.
const GRPC_UNIMPLEMENTED: i32 = 12;

static FROM_NATIVE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Converts a core error into the matching `blazen_peer.errors` exception.
pub fn to_py(err: PeerError) -> PyErr {
    Python::attach(|py| match build(py, &err) {
        Ok(exc) => PyErr::from_value(exc),
        Err(import_failure) => import_failure,
    })
}

/// `?`-friendly form of [`to_py`].
pub trait IntoPyResult<T> {
    /// Maps the error with [`to_py`].
    fn py_err(self) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for Result<T, PeerError> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}

fn build<'py>(py: Python<'py>, err: &PeerError) -> PyResult<Bound<'py, PyAny>> {
    let factory = FROM_NATIVE.get_or_try_init(py, || {
        py.import("blazen_peer.errors")?
            .getattr("_from_native")
            .map(Bound::unbind)
    })?;
    let details = PyDict::new(py);
    let mut kind = err.kind();
    match err {
        PeerError::Transport { code, started, .. } => {
            details.set_item("grpc_status", code)?;
            details.set_item("started", started)?;
        }
        PeerError::UnknownStep {
            step_id,
            registered,
            ..
        } => {
            details.set_item("step_id", step_id)?;
            details.set_item("registered", registered)?;
        }
        PeerError::UnknownWorkflow {
            workflow_name,
            registered,
            ..
        } => {
            details.set_item("workflow_name", workflow_name)?;
            details.set_item("registered", registered)?;
        }
        PeerError::EnvelopeVersion { got, supported } => {
            details.set_item("got", got)?;
            details.set_item("supported", supported)?;
        }
        PeerError::Workflow(failure) => {
            if failure.kind == FailureKind::Timeout {
                kind = "Timeout";
            }
            details.set_item("failure_kind", format!("{:?}", failure.kind))?;
            details.set_item("remote_type", &failure.remote_type)?;
            details.set_item("remote_traceback", &failure.remote_traceback)?;
            details.set_item("step_id", &failure.step_id)?;
            details.set_item("node_id", &failure.node_id)?;
        }
        PeerError::Encode(_)
        | PeerError::RefNotFound(_)
        | PeerError::MessageTooLarge(_)
        | PeerError::Tls(_)
        | PeerError::Authentication(_)
        | PeerError::Timeout(_)
        | PeerError::Validation(_)
        | PeerError::Busy(_)
        | PeerError::Quota(_) => {}
        PeerError::Unavailable(_) => {
            details.set_item("grpc_status", GRPC_UNAVAILABLE)?;
            details.set_item("started", false)?;
        }
        PeerError::Unsupported { method, .. } => {
            details.set_item("grpc_status", GRPC_UNIMPLEMENTED)?;
            details.set_item("method", method)?;
        }
    }
    factory.bind(py).call1((kind, err.to_string(), details))
}
