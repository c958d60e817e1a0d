//! `Context` state and identity, held by the core run.

use std::time::Duration;

use blazen_peer_core::usage::UsageEvent;
use blazen_peer_core::{EventStream, RefOwner, RunContext, StateValue, StreamedEvent};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::IntoPyResult;
use crate::records::{CallerIdentity, UsageTotals};
use crate::steps::PyHost;
use crate::{awaitable, gil, refs};

/// How often a blocked writer checks whether its run ended.
const ROOM_POLL: Duration = Duration::from_millis(100);

/// Native half of `blazen_peer.Context`.
#[pyclass(frozen, name = "RunContext", module = "blazen_peer._native")]
pub struct RunContextRef {
    pub ctx: RunContext,
}

#[pymethods]
impl RunContextRef {
    /// Unique id of the run, as text.
    #[getter]
    fn run_id(&self) -> String {
        self.ctx.run_id().to_string()
    }

    /// Node executing the run.
    #[getter]
    fn node_id(&self) -> &str {
        self.ctx.node_id()
    }

    /// Name the run was requested under.
    #[getter]
    fn workflow_name(&self) -> &str {
        self.ctx.workflow_name()
    }

    /// True once the run ended or was cancelled.
    #[getter]
    fn cancelled(&self) -> bool {
        self.ctx.is_cancelled()
    }

    /// The node id the caller announced, for remote runs (not verified).
    #[getter]
    fn caller_node_id(&self) -> Option<String> {
        self.ctx.caller()?.node_id.clone()
    }

    /// `(traceparent, tracestate)` (W3C) this run's steps work under: the
    /// run's span when the server traces, else what the caller sent.
    #[getter]
    fn trace_context(&self) -> Option<(String, Option<String>)> {
        let trace = self.ctx.run_trace()?;
        Some((trace.traceparent.clone(), trace.tracestate.clone()))
    }

    /// `(subject, common_name, dns_names, uris, certificate_der)` of the caller's
    /// verified TLS client certificate, under mutual TLS; else None.
    #[getter]
    fn peer_identity(&self) -> Option<CallerIdentity> {
        let identity = self.ctx.caller().and_then(|caller| caller.identity())?;
        Some(CallerIdentity::from(&**identity))
    }

    /// Counts a usage record (the JSON of a `blazen::UsageEvent`) in the run's totals.
    fn record_usage(&self, data_json: &[u8]) -> PyResult<()> {
        let event = UsageEvent::from_json(data_json).py_err()?;
        self.ctx.record_usage(&event);
        Ok(())
    }

    /// The run's usage so far, its sub-runs' included.
    #[getter]
    fn usage(&self) -> UsageTotals {
        UsageTotals::from(&self.ctx.usage())
    }

    /// The serving peer's directory (`PeerServer(peers=...)`), or None.
    #[getter]
    fn peer_directory<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        let host = self.ctx.host::<PyHost>()?;
        host.directory
            .as_ref()
            .map(|directory| directory.bind(py).clone())
    }

    /// True when a caller streams this run's events.
    #[getter]
    fn streaming(&self) -> bool {
        self.ctx.event_stream().is_some()
    }

    /// Queues an event for the caller (dropped when nobody streams the run).
    fn write_stream_event(&self, event_type: String, data_json: Vec<u8>) {
        if let Some(events) = self.ctx.event_stream() {
            events.push(StreamedEvent {
                event_type,
                data_json,
            });
        }
    }

    /// True while writers should wait for the caller to read.
    fn stream_full(&self) -> bool {
        self.ctx.event_stream().is_some_and(EventStream::is_full)
    }

    /// Blocks (GIL released) while the stream is full; for `def` steps in
    /// worker threads. Returns early when the run ends.
    fn wait_for_stream_room(&self, py: Python<'_>) {
        if let Some(events) = self.ctx.event_stream() {
            let ctx = &self.ctx;
            gil::detach(py, || {
                events.wait_for_room_blocking(ROOM_POLL, || ctx.is_cancelled())
            });
        }
    }

    /// Resolves once the stream has room; for `async def` steps.
    fn stream_room<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let events = self.ctx.event_stream().cloned();
        awaitable::spawn(py, async move {
            if let Some(events) = events {
                events.room().await;
            }
            Ok(())
        })
    }

    /// Stores JSON text under an exported key.
    fn set_json(&self, key: String, json: &[u8]) {
        self.ctx.set(key, StateValue::Json(json.to_vec()));
    }

    /// Stores any object under a private key.
    fn set_object(&self, key: String, value: Py<PyAny>) {
        self.ctx
            .set(key, StateValue::Opaque(std::sync::Arc::new(value)));
    }

    /// JSON bytes or the stored object under `key`, or None.
    fn get<'py>(&self, py: Python<'py>, key: &str) -> Option<Bound<'py, PyAny>> {
        match self.ctx.get(key)? {
            StateValue::Json(json) => Some(PyBytes::new(py, &json).into_any()),
            StateValue::Opaque(value) => value
                .downcast_ref::<Py<PyAny>>()
                .map(|obj| obj.bind(py).clone()),
        }
    }

    /// Stores a session ref owned by this run; returns its key.
    fn insert_ref(
        &self,
        value: Py<PyAny>,
        payload: &Bound<'_, PyAny>,
        type_tag: String,
        lifetime: &str,
    ) -> PyResult<String> {
        let owner = RefOwner {
            run: Some(self.ctx.run_id()),
            parent: self.ctx.parent_run(),
        };
        refs::insert(
            self.ctx.session_refs(),
            value,
            payload,
            type_tag,
            lifetime,
            owner,
        )
    }

    /// The session ref value under `key`, or None.
    fn get_ref<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
        refs::get(py, self.ctx.session_refs(), key)
    }

    /// Drops a session ref; True when it was there.
    fn remove_ref(&self, key: &str) -> PyResult<bool> {
        Ok(self.ctx.session_refs().remove(&refs::parse_key(key)?))
    }

    /// Every exported key with its JSON text.
    fn exported_state<'py>(&self, py: Python<'py>) -> Vec<(String, Bound<'py, PyBytes>)> {
        self.ctx
            .exported_state()
            .into_iter()
            .map(|(key, json)| (key, PyBytes::new(py, &json)))
            .collect()
    }
}
