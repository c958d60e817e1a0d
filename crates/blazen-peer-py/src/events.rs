//! Python events inside the core runner.

use std::any::Any;
use std::sync::OnceLock;

use blazen_peer_core::{Event, EventData, EventTypes};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use crate::{bridge, gil};

/// The routing chain of one Python event class, built once per class.
#[pyclass(frozen, name = "EventTypes", module = "blazen_peer._native")]
pub struct EventTypesRef {
    pub types: EventTypes,
}

#[pymethods]
impl EventTypesRef {
    #[new]
    fn new(chain: Vec<String>) -> PyResult<Self> {
        if chain.is_empty() {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "an event type chain needs at least the event's own type name",
            ));
        }
        Ok(Self {
            types: EventTypes::new(chain),
        })
    }

    /// The chain, most derived first.
    #[getter]
    fn chain(&self) -> Vec<String> {
        self.types.chain().to_vec()
    }

    fn __repr__(&self) -> String {
        format!("EventTypes({:?})", self.types.chain())
    }
}

/// A Python event object travelling through the runner.
pub struct PyEvent {
    pub obj: Py<PyAny>,
    // A remote run's StopEvent is encoded where it is emitted, on a thread that
    // holds the GIL anyway, so the runner never takes the GIL again for it.
    result_json: OnceLock<Result<Vec<u8>, String>>,
}

impl PyEvent {
    pub fn new(obj: Py<PyAny>) -> Self {
        Self {
            obj,
            result_json: OnceLock::new(),
        }
    }

    fn encode_result(py: Python<'_>, obj: &Bound<'_, PyAny>) -> Result<Vec<u8>, String> {
        let encoded = bridge::stop_result_json(py, obj).map_err(|err| err.to_string())?;
        Ok(encoded.as_bytes().to_vec())
    }
}

impl EventData for PyEvent {
    fn result_json(&self) -> Result<Vec<u8>, String> {
        self.result_json
            .get_or_init(|| {
                gil::with_python(|py| Self::encode_result(py, self.obj.bind(py)))
                    .unwrap_or_else(|| Err("the Python interpreter is shutting down".into()))
            })
            .clone()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Wraps a Python event with the type chain its class carries; a StopEvent
/// bound for the wire (`encode_stop`) gets its result encoded now.
pub fn from_py(obj: Bound<'_, PyAny>, types: &EventTypesRef, encode_stop: bool) -> Event {
    let event = PyEvent::new(obj.clone().unbind());
    if encode_stop && types.types.is_stop() {
        let _ = event
            .result_json
            .set(PyEvent::encode_result(obj.py(), &obj));
    }
    Event {
        types: types.types.clone(),
        data: std::sync::Arc::new(event),
    }
}

/// The object a step receives: the Python event itself, or `(type_name,
/// json_bytes)` for an event that is still JSON, which the bridge decodes.
pub fn to_py<'py>(py: Python<'py>, event: &Event) -> PyResult<Bound<'py, PyAny>> {
    if let Some(native) = event.data.as_any().downcast_ref::<PyEvent>() {
        return Ok(native.obj.bind(py).clone());
    }
    let json: &[u8] = event
        .as_json()
        .map(|json| json.0.as_slice())
        .unwrap_or(b"null");
    let pair = PyTuple::new(
        py,
        [
            event.types.name().into_pyobject(py)?.into_any(),
            PyBytes::new(py, json).into_any(),
        ],
    )?;
    Ok(pair.into_any())
}
