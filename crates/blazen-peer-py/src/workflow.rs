//! Native half of the local `blazen_peer.Workflow`: the core runner, in-process.

use std::sync::Arc;
use std::time::Duration;

use blazen_peer_core::event_stream::DEFAULT_STREAM_BUFFER;
use blazen_peer_core::runner::run_workflow;
use blazen_peer_core::{Event, EventStream, PeerError, RunContext, Step, StepRegistry};
use pyo3::prelude::*;

use crate::awaitable::{self, Class, PyEventObject};
use crate::context::RunContextRef;
use crate::errors::IntoPyResult;
use crate::events::{EventTypesRef, PyEvent};
use crate::inbox;
use crate::records::WrittenEvent;
use crate::refs::SessionRefRegistryRef;
use crate::steps::PyHost;

/// Node id reported by in-process runs.
const LOCAL_NODE: &str = "local";

/// One in-process run of registered steps.
#[pyclass(frozen, name = "LocalRun", module = "blazen_peer._native")]
pub struct LocalRunRef {
    ctx: RunContext,
    steps: Vec<Step>,
    events: EventStream,
}

#[pymethods]
impl LocalRunRef {
    /// Resolves `step_ids` now, so an unknown step fails before the run starts.
    #[new]
    #[pyo3(signature = (workflow_name, step_ids, event_loop, session_refs=None))]
    fn new(
        py: Python<'_>,
        workflow_name: String,
        step_ids: Vec<String>,
        event_loop: Py<PyAny>,
        session_refs: Option<PyRef<'_, SessionRefRegistryRef>>,
    ) -> PyResult<Self> {
        let steps = StepRegistry::global()
            .resolve(&workflow_name, &step_ids, "this process")
            .py_err()?;
        let host: Arc<dyn std::any::Any + Send + Sync> = Arc::new(PyHost {
            inbox: inbox::for_loop(py, event_loop.bind(py))?,
            directory: None,
        });
        let ctx = RunContext::with_session_refs(
            LOCAL_NODE.into(),
            workflow_name,
            Some(host),
            session_refs
                .map(|refs| refs.registry.clone())
                .unwrap_or_default(),
            None,
        );
        // Attached from the start so that no event is missed before the
        // caller begins to read; `discard_events` lets go of it unread.
        let events = EventStream::new(DEFAULT_STREAM_BUFFER);
        ctx.attach_event_stream(events.clone());
        Ok(Self { ctx, steps, events })
    }

    /// Resolves to each event the steps wrote (a `WrittenEvent`), in order,
    /// then None once the run ended and every event was read.
    fn next_event<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let events = self.events.clone();
        awaitable::spawn(py, async move {
            Ok::<_, PeerError>(
                events
                    .next()
                    .await
                    .map(|event| Class(WrittenEvent::from(event))),
            )
        })
    }

    /// Nobody will read the events: drops those queued and releases writers
    /// waiting for room, so an unread run never stalls.
    fn discard_events(&self) {
        self.events.close_reader();
    }

    /// The run's context.
    #[getter]
    fn context(&self) -> RunContextRef {
        RunContextRef {
            ctx: self.ctx.clone(),
        }
    }

    /// Runs from `start_event` to the StopEvent, which the awaitable returns.
    #[pyo3(signature = (start_event, types, timeout_secs=None))]
    fn run<'py>(
        &self,
        py: Python<'py>,
        start_event: Py<PyAny>,
        types: PyRef<'py, EventTypesRef>,
        timeout_secs: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let deadline = timeout_secs
            .map(|secs| {
                Duration::try_from_secs_f64(secs).map_err(|_| {
                    PeerError::Validation(format!(
                        "timeout_secs must be a non-negative number, got {secs}"
                    ))
                })
            })
            .transpose()
            .py_err()?;
        let start = Event {
            types: types.types.clone(),
            data: Arc::new(PyEvent::new(start_event)),
        };
        let steps = self.steps.clone();
        let ctx = self.ctx.clone();
        awaitable::spawn(py, async move {
            run_workflow(&steps, ctx, start, deadline)
                .await
                .map(PyEventObject)
                .map_err(PeerError::Workflow)
        })
    }
}
