//! Runs as spans: when tracing is on, the server calls
//! `blazen_peer._tracing.run_started` as each run starts; the object it
//! returns is told how the run ended (or that it was cancelled). The span's
//! own context becomes the run's, so the spans of its steps nest under it.
//! A failing tracer is reported as unraisable and never fails a run.

use blazen_peer_core::envelope::WorkflowFailure;
use blazen_peer_core::observer::{RunObservation, RunObserver};
use blazen_peer_core::{RunContext, TraceContext};
use pyo3::prelude::*;

use crate::gil;

/// Calls a Python `run_started(workflow, run_id, node_id, traceparent,
/// tracestate, caller_node_id)` per run.
pub struct PyRunObserver {
    pub run_started: Py<PyAny>,
}

impl RunObserver for PyRunObserver {
    fn run_started(&self, ctx: &RunContext) -> Option<Box<dyn RunObservation>> {
        let caller = ctx.caller();
        let trace = caller.and_then(|caller| caller.trace.as_ref());
        gil::with_python(|py| {
            let args = (
                ctx.workflow_name(),
                ctx.run_id().to_string(),
                ctx.node_id(),
                trace.map(|trace| trace.traceparent.as_str()),
                trace.and_then(|trace| trace.tracestate.as_deref()),
                caller.and_then(|caller| caller.node_id.as_deref()),
            );
            let span = match self.run_started.call1(py, args) {
                Ok(span) if !span.is_none(py) => span,
                Ok(_) => return None,
                Err(err) => {
                    err.write_unraisable(py, None);
                    return None;
                }
            };
            let own: Option<(String, Option<String>)> = span
                .bind(py)
                .getattr("context")
                .and_then(|context| context.extract())
                .unwrap_or(None);
            if let Some(Ok(context)) =
                own.map(|(parent, state)| TraceContext::new(&parent, state.as_deref()))
            {
                ctx.set_run_trace(context);
            }
            Some(Box::new(PySpan { span: Some(span) }) as Box<dyn RunObservation>)
        })
        .flatten()
    }
}

struct PySpan {
    span: Option<Py<PyAny>>,
}

impl PySpan {
    fn end(&mut self, outcome: Option<(String, String)>) {
        let Some(span) = self.span.take() else {
            return;
        };
        gil::with_python(move |py| {
            let (kind, message) = outcome.unzip();
            if let Err(err) = span.call_method1(py, "end", (kind, message)) {
                err.write_unraisable(py, None);
            }
        });
    }
}

impl RunObservation for PySpan {
    fn ended(mut self: Box<Self>, failure: Option<&WorkflowFailure>) {
        self.end(failure.map(|failure| (format!("{:?}", failure.kind), failure.message.clone())));
    }
}

impl Drop for PySpan {
    fn drop(&mut self) {
        self.end(Some(("Cancelled".into(), "the caller went away".into())));
    }
}
