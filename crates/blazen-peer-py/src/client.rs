//! Native half of `blazen_peer.PeerClient`.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::RwLock;
use std::time::Duration;

use futures::FutureExt;

use std::sync::Arc;

use blazen_peer_core::client::{Health, PutOptions};
use blazen_peer_core::envelope::{
    self, FailureKind, ParentRun, SubWorkflowRequest, SubWorkflowResponse, WorkflowFailure,
};
use blazen_peer_core::error::failure_from_text;
use blazen_peer_core::usage::RunUsage;
use blazen_peer_core::RefPayload;
use blazen_peer_core::{
    CallOptions, ClientConfig, Envelope, PeerClient, PeerError, RunContext, TraceContext,
};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::awaitable::{self, Class, ToPython};
use crate::context::RunContextRef;
use crate::errors::{to_py, IntoPyResult};
use crate::gil;
use crate::records::{RemoteRefEntry, StepListing, UsageTotals};
use crate::refs::{
    parse_key, parse_lifetime, BufferSink, BytesSink, Fetched, FetchedInto, PyRefPayload,
};
use crate::runtime::{self, Owner};
use crate::server::seconds;
use crate::streaming::EventStreamRef;
use crate::tls::ClientTlsRef;

/// A connected client; calls share one HTTP/2 channel.
#[pyclass(frozen, name = "PeerClient", module = "blazen_peer._native")]
pub struct PeerClientRef {
    inner: RwLock<Option<PeerClient>>,
    node_id: String,
    address: String,
    owner: Owner,
}

/// Connection settings as Python passes them (keywords of `PeerClient.connect`).
#[derive(FromPyObject)]
pub struct ConnectOptions {
    connect_timeout_secs: f64,
    max_message_bytes: usize,
    token: Option<String>,
    tls: Option<Py<ClientTlsRef>>,
    keepalive_interval_secs: Option<f64>,
    keepalive_timeout_secs: f64,
}

impl ConnectOptions {
    fn config(&self, py: Python<'_>) -> PyResult<ClientConfig> {
        Ok(ClientConfig {
            connect_timeout: seconds("connect_timeout_secs", self.connect_timeout_secs)?,
            max_message_bytes: self.max_message_bytes,
            token: self.token.clone(),
            tls: self.tls.as_ref().map(|tls| tls.borrow(py).config.clone()),
            keepalive_interval: self
                .keepalive_interval_secs
                .map(|secs| seconds("keepalive_interval_secs", secs))
                .transpose()?,
            keepalive_timeout: seconds("keepalive_timeout_secs", self.keepalive_timeout_secs)?,
            ..ClientConfig::default()
        })
    }
}

fn wrap(client: PeerClient) -> PeerClientRef {
    PeerClientRef {
        node_id: client.node_id().to_owned(),
        address: client.address().to_owned(),
        inner: RwLock::new(Some(client)),
        owner: Owner::here(),
    }
}

/// How often a blocking call wakes to let Python run signal handlers.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// Blocks the calling thread on `fut` with the GIL released. Ctrl-C (any
/// signal handler that raises) interrupts it: the call is dropped, which
/// cancels it on the wire and the run on the peer, and the exception propagates.
pub(crate) fn block_on<T: Send + 'static>(
    py: Python<'_>,
    fut: impl Future<Output = Result<T, PeerError>> + Send + 'static,
) -> PyResult<T> {
    let runtime = runtime::runtime().py_err()?;
    let (done, mut outcome) = std::sync::mpsc::sync_channel(1);
    let task = runtime.spawn(async move {
        let outcome = AssertUnwindSafe(fut)
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(PeerError::from_panic(panic.as_ref(), "blazen_peer")));
        let _ = done.send(outcome);
    });
    loop {
        let (received, receiver) =
            gil::detach(py, move || (outcome.recv_timeout(SIGNAL_POLL), outcome));
        outcome = receiver;
        match received {
            Ok(outcome) => return outcome.py_err(),
            Err(RecvTimeoutError::Timeout) => {
                if let Err(interrupted) = py.check_signals() {
                    task.abort();
                    return Err(interrupted);
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(to_py(PeerError::transport(
                    "blazen_peer's runtime stopped before the call finished",
                )))
            }
        }
    }
}

/// [`block_on`], then the value as Python builds it for the awaitable form.
fn block_on_py<'py, T: ToPython>(
    py: Python<'py>,
    fut: impl Future<Output = Result<T, PeerError>> + Send + 'static,
) -> PyResult<Bound<'py, PyAny>> {
    block_on(py, fut)?.to_python(py)
}

async fn list_steps_of(client: PeerClient) -> Result<Class<StepListing>, PeerError> {
    Ok(Class(StepListing::from(client.list_steps().await?)))
}

async fn health_of(
    client: PeerClient,
    service: String,
    timeout: Option<Duration>,
) -> Result<&'static str, PeerError> {
    Ok(match client.health(&service, timeout).await? {
        Health::Serving => "SERVING",
        Health::NotServing => "NOT_SERVING",
        Health::ServiceUnknown => "SERVICE_UNKNOWN",
        Health::Unknown => "UNKNOWN",
    })
}

async fn fetch_of(client: PeerClient, key: uuid::Uuid) -> Result<Fetched, PeerError> {
    let mut sink = BytesSink::default();
    client.deref_into(key, &mut sink).await?;
    Ok(Fetched(sink))
}

async fn fetch_into_of(
    client: PeerClient,
    key: uuid::Uuid,
    mut sink: BufferSink,
) -> Result<FetchedInto, PeerError> {
    client.deref_into(key, &mut sink).await?;
    Ok(FetchedInto(sink))
}

async fn put_of(
    client: PeerClient,
    payload: Arc<dyn RefPayload>,
    options: PutOptions,
) -> Result<Class<RemoteRefEntry>, PeerError> {
    let (key, descriptor) = client.put_ref(payload, options).await?;
    Ok(Class(RemoteRefEntry::new(key.to_string(), &descriptor)))
}

async fn renew_parent_of(client: PeerClient, parent: uuid::Uuid) -> Result<f64, PeerError> {
    let (_, lease) = client.renew_parent(parent).await?;
    Ok(lease.as_secs_f64())
}

#[pymethods]
impl PeerClientRef {
    /// Connects to `address`; the awaitable fails fast when nothing listens.
    #[staticmethod]
    fn connect(
        py: Python<'_>,
        address: String,
        node_id: String,
        options: ConnectOptions,
    ) -> PyResult<Bound<'_, PyAny>> {
        let config = options.config(py)?;
        awaitable::spawn(py, async move {
            let client = PeerClient::connect(&address, &node_id, config).await?;
            Ok(Class(wrap(client)))
        })
    }

    /// Blocking form of `connect`.
    #[staticmethod]
    fn connect_blocking(
        py: Python<'_>,
        address: String,
        node_id: String,
        options: ConnectOptions,
    ) -> PyResult<Self> {
        let config = options.config(py)?;
        let client = block_on(py, async move {
            PeerClient::connect(&address, &node_id, config).await
        })?;
        Ok(wrap(client))
    }

    /// This client's node id.
    #[getter]
    fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The peer's address.
    #[getter]
    fn address(&self) -> &str {
        &self.address
    }

    /// True after `close`.
    #[getter]
    fn closed(&self) -> bool {
        self.inner
            .read()
            .map(|inner| inner.is_none())
            .unwrap_or(true)
    }

    /// Drops the channel; later calls raise ValidationError. Idempotent.
    fn close(&self) {
        if let Ok(mut inner) = self.inner.write() {
            inner.take();
        }
    }

    /// Runs a sub-workflow; resolves to a `SubWorkflowResponse`.
    fn invoke<'py>(&self, py: Python<'py>, call: RunArgs) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client()?;
        let call = call.into_request()?;
        awaitable::spawn(py, async move {
            let response = client.invoke_with(&call.request, &call.options).await?;
            roll_up(call.within_run.as_ref(), &response);
            Ok(Class(
                ResponseRef::from(response).at(client.address().to_owned()),
            ))
        })
    }

    /// Blocking form of `invoke`.
    fn invoke_blocking(&self, py: Python<'_>, call: RunArgs) -> PyResult<ResponseRef> {
        let client = self.client()?;
        let call = call.into_request()?;
        block_on(py, async move {
            let response = client.invoke_with(&call.request, &call.options).await?;
            roll_up(call.within_run.as_ref(), &response);
            Ok(ResponseRef::from(response).at(client.address().to_owned()))
        })
    }

    /// Starts a streaming run; resolves to an `EventStream` to read with `next()`.
    fn stream<'py>(&self, py: Python<'py>, call: RunArgs) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client()?;
        let call = call.into_request()?;
        awaitable::spawn(py, async move {
            let receiver = client.stream_with(&call.request, &call.options).await?;
            Ok(Class(EventStreamRef::new(receiver, call.within_run)))
        })
    }

    /// Blocking form of `stream`: the `EventStream`, read with `next_blocking()`.
    fn stream_blocking(&self, py: Python<'_>, call: RunArgs) -> PyResult<EventStreamRef> {
        let client = self.client()?;
        let call = call.into_request()?;
        let receiver = block_on(py, async move {
            client.stream_with(&call.request, &call.options).await
        })?;
        Ok(EventStreamRef::new(receiver, call.within_run))
    }

    /// What the peer can run; resolves to
    /// `(node_id, [(step_id, [accepted types])], [(workflow, [step_ids])], draining)`.
    fn list_steps<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        awaitable::spawn(py, list_steps_of(self.client()?))
    }

    /// Blocking form of `list_steps`.
    fn list_steps_blocking<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        block_on_py(py, list_steps_of(self.client()?))
    }

    /// Standard gRPC health check; resolves to "SERVING", "NOT_SERVING",
    /// "SERVICE_UNKNOWN" or "UNKNOWN".
    #[pyo3(signature = (service="", timeout_secs=None))]
    fn health<'py>(
        &self,
        py: Python<'py>,
        service: &str,
        timeout_secs: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client()?;
        let service = service.to_owned();
        let timeout = timeout_secs
            .map(|secs| seconds("timeout_secs", secs))
            .transpose()?;
        awaitable::spawn(py, health_of(client, service, timeout))
    }

    /// Blocking form of `health`.
    #[pyo3(signature = (service="", timeout_secs=None))]
    fn health_blocking<'py>(
        &self,
        py: Python<'py>,
        service: &str,
        timeout_secs: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client()?;
        let timeout = timeout_secs
            .map(|secs| seconds("timeout_secs", secs))
            .transpose()?;
        block_on_py(py, health_of(client, service.to_owned(), timeout))
    }

    /// Fetches a session ref of any size; resolves to a `FetchedBytes`.
    fn fetch<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Bound<'py, PyAny>> {
        awaitable::spawn(py, fetch_of(self.client()?, parse_key(key)?))
    }

    /// Blocking form of `fetch`.
    fn fetch_blocking<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Bound<'py, PyAny>> {
        block_on_py(py, fetch_of(self.client()?, parse_key(key)?))
    }

    /// Streams a session ref into a caller's writable buffer; resolves to a
    /// `FetchedSize`. Reusing one buffer skips the page faults of new memory.
    fn fetch_into<'py>(
        &self,
        py: Python<'py>,
        key: &str,
        buffer: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client()?;
        let key = parse_key(key)?;
        awaitable::spawn(py, fetch_into_of(client, key, BufferSink::new(buffer)?))
    }

    /// Blocking form of `fetch_into`.
    fn fetch_into_blocking<'py>(
        &self,
        py: Python<'py>,
        key: &str,
        buffer: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client()?;
        let key = parse_key(key)?;
        block_on_py(py, fetch_into_of(client, key, BufferSink::new(buffer)?))
    }

    /// Streams a value into the peer's session refs; resolves to its
    /// `RemoteRefEntry` (key and descriptor).
    fn put<'py>(&self, py: Python<'py>, call: PutArgs) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client()?;
        let (payload, options) = call.into_upload(py)?;
        awaitable::spawn(py, put_of(client, payload, options))
    }

    /// Blocking form of `put`.
    fn put_blocking<'py>(&self, py: Python<'py>, call: PutArgs) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client()?;
        let (payload, options) = call.into_upload(py)?;
        block_on_py(py, put_of(client, payload, options))
    }

    /// Releases a session ref; resolves to False when it was already gone.
    fn release<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client()?;
        let key = parse_key(key)?;
        awaitable::spawn(py, async move { client.release(key).await })
    }

    /// Blocking form of `release`.
    fn release_blocking(&self, py: Python<'_>, key: &str) -> PyResult<bool> {
        let client = self.client()?;
        let key = parse_key(key)?;
        block_on(py, async move { client.release(key).await })
    }

    /// Releases the `UNTIL_PARENT_FINISH` refs of a parent run; resolves to how many.
    fn finish_parent<'py>(&self, py: Python<'py>, parent_run: &str) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client()?;
        let parent = parse_key(parent_run)?;
        awaitable::spawn(py, async move { client.finish_parent(parent).await })
    }

    /// Blocking form of `finish_parent`.
    fn finish_parent_blocking(&self, py: Python<'_>, parent_run: &str) -> PyResult<u64> {
        let client = self.client()?;
        let parent = parse_key(parent_run)?;
        block_on(py, async move { client.finish_parent(parent).await })
    }

    /// Renews a parent run's lease; resolves to the peer's lease in seconds.
    fn renew_parent<'py>(&self, py: Python<'py>, parent_run: &str) -> PyResult<Bound<'py, PyAny>> {
        awaitable::spawn(py, renew_parent_of(self.client()?, parse_key(parent_run)?))
    }

    /// Blocking form of `renew_parent`.
    fn renew_parent_blocking(&self, py: Python<'_>, parent_run: &str) -> PyResult<f64> {
        block_on(py, renew_parent_of(self.client()?, parse_key(parent_run)?))
    }
}

/// An upload as Python passes it (`uploads._PutCall`, read by attribute):
/// the value, the bytes-like object it is sent as, and where it belongs.
#[derive(FromPyObject)]
pub struct PutArgs {
    value: Py<PyAny>,
    payload: Py<PyAny>,
    type_tag: String,
    lifetime: String,
    parent_run: Option<String>,
}

impl PutArgs {
    fn into_upload(self, py: Python<'_>) -> PyResult<(Arc<dyn RefPayload>, PutOptions)> {
        let options = PutOptions {
            type_tag: self.type_tag,
            lifetime: parse_lifetime(&self.lifetime)?,
            parent: self.parent_run.as_deref().map(parse_key).transpose()?,
        };
        // A view pinned for the whole upload: runtime threads read it in place.
        let payload = PyRefPayload::new(self.value, self.payload.bind(py))?;
        Ok((Arc::new(payload), options))
    }
}

/// A run request as Python passes it (`_run_request.RunRequest`, read by attribute).
#[derive(FromPyObject)]
pub struct RunArgs {
    workflow_name: String,
    step_ids: Vec<String>,
    input_json: Vec<u8>,
    timeout_secs: Option<u64>,
    parent_run: Option<String>,
    traceparent: Option<String>,
    tracestate: Option<String>,
    /// The run of the step making this call, whose usage the sub-run's adds to.
    within_run: Option<Py<RunContextRef>>,
}

/// A run request ready to send, and where its usage rolls up to.
struct PreparedCall {
    request: Envelope<SubWorkflowRequest>,
    options: CallOptions,
    within_run: Option<RunContext>,
}

impl RunArgs {
    fn into_request(self) -> PyResult<PreparedCall> {
        let within_run = self.within_run.map(|run| run.get().ctx.clone());
        let mut request = envelope::request(
            self.workflow_name,
            self.step_ids,
            self.input_json,
            self.timeout_secs,
        );
        if let Some(parent_run) = self.parent_run {
            let parent_run = ParentRun {
                parent_run_id: parse_key(&parent_run)?,
            };
            request.extensions.insert(&parent_run).py_err()?;
        }
        let trace = self
            .traceparent
            .map(|parent| TraceContext::new(&parent, self.tracestate.as_deref()))
            .transpose()
            .py_err()?;
        Ok(PreparedCall {
            request,
            options: CallOptions { trace },
            within_run,
        })
    }
}

/// Adds a sub-run's usage to the run whose step called it, before the caller
/// sees the response, so the parent's totals include it however it is read.
pub(crate) fn roll_up(within_run: Option<&RunContext>, response: &Envelope<SubWorkflowResponse>) {
    if let (Some(run), Some(usage)) = (within_run, response.extensions.get::<RunUsage>()) {
        run.absorb_usage(&usage);
    }
}

impl PeerClientRef {
    fn client(&self) -> PyResult<PeerClient> {
        self.owner.check("PeerClient").py_err()?;
        let inner = self
            .inner
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        inner.clone().ok_or_else(|| {
            to_py(PeerError::Validation(format!(
                "PeerClient for {} is closed; connect a new one",
                self.address
            )))
        })
    }
}

/// A decoded `SubWorkflowResponse`; JSON stays as bytes for Python to parse.
#[pyclass(frozen, name = "SubWorkflowResponse", module = "blazen_peer._native")]
pub struct ResponseRef {
    body: SubWorkflowResponse,
    failure: Option<WorkflowFailure>,
    usage: RunUsage,
    peer_address: Option<String>,
}

impl ResponseRef {
    /// The response as answered by the peer at `address`, which holds its refs.
    pub fn at(self, address: String) -> Self {
        Self {
            peer_address: Some(address),
            ..self
        }
    }
}

impl From<Envelope<SubWorkflowResponse>> for ResponseRef {
    fn from(envelope: Envelope<SubWorkflowResponse>) -> Self {
        // A v1 peer sends only the error text; the failure is read from it.
        let failure = envelope.extensions.get::<WorkflowFailure>().or_else(|| {
            envelope
                .body
                .error
                .as_deref()
                .map(|message| failure_from_text(message, ""))
        });
        // A v1 peer (or a run that used nothing) sends no usage: zero.
        let usage = envelope.extensions.get::<RunUsage>().unwrap_or_default();
        Self {
            body: envelope.body,
            failure,
            usage,
            peer_address: None,
        }
    }
}

#[pymethods]
impl ResponseRef {
    /// The StopEvent's result as JSON text, or None.
    #[getter]
    fn result_json<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.body
            .result_json
            .as_ref()
            .map(|json| PyBytes::new(py, json))
    }

    /// Exported state, each value JSON text.
    #[getter]
    fn state_json<'py>(&self, py: Python<'py>) -> BTreeMap<String, Bound<'py, PyBytes>> {
        self.body
            .state_json
            .iter()
            .map(|(key, json)| (key.clone(), PyBytes::new(py, json)))
            .collect()
    }

    /// `[(key, origin_node_id, type_tag, created_at_epoch_ms), ...]`.
    #[getter]
    fn remote_refs(&self) -> Vec<RemoteRefEntry> {
        self.body
            .remote_refs
            .iter()
            .map(|(key, descriptor)| RemoteRefEntry::new(key.to_string(), descriptor))
            .collect()
    }

    /// The address of the peer that answered (and holds `remote_refs`).
    #[getter]
    fn peer_address(&self) -> Option<&str> {
        self.peer_address.as_deref()
    }

    /// True when refs outlive the run (cheaper than building `remote_refs`).
    #[getter]
    fn has_remote_refs(&self) -> bool {
        !self.body.remote_refs.is_empty()
    }

    /// The run's usage totals, its sub-runs' included (zero from a v1 peer).
    #[getter]
    fn usage(&self) -> UsageTotals {
        UsageTotals::from(&self.usage)
    }

    /// The remote workflow's error text, or None.
    #[getter]
    fn error(&self) -> Option<&str> {
        self.body.error.as_deref()
    }

    /// True when the run failed because it passed its deadline.
    #[getter]
    fn timed_out(&self) -> bool {
        self.failure
            .as_ref()
            .is_some_and(|failure| failure.kind == FailureKind::Timeout)
    }

    /// Raises the typed error for a failed run; does nothing for a successful one.
    fn raise_for_error(&self) -> PyResult<()> {
        // `from` reads a failure for every response with an error.
        match (&self.body.error, &self.failure) {
            (Some(_), Some(failure)) => Err(to_py(PeerError::Workflow(Box::new(failure.clone())))),
            _ => Ok(()),
        }
    }
}
