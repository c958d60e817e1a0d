//! The gRPC peer service and a server that runs it on a bound listener.

use std::any::Any;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Routes;
use tonic::{Request, Response, Status};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use uuid::Uuid;

mod connection;
mod http_json;
mod incoming;
mod lifecycle;
mod limits;
mod log_throttle;
mod metrics;
mod request_body;
mod stream_feed;

pub use lifecycle::RunStats;
pub use limits::{
    DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_IDLE_CONNECTION_TIMEOUT, DEFAULT_MAX_BUFFERED_REQUEST_BYTES,
    DEFAULT_MAX_CONCURRENT_STREAMS, DEFAULT_MAX_CONNECTIONS, DEFAULT_REQUEST_BODY_TIMEOUT,
    MAX_LOCAL_ERROR_RESET_STREAMS, MAX_PENDING_ACCEPT_RESET_STREAMS,
};
pub use metrics::{DurationBuckets, Refusal, RunOutcome, RUN_DURATION_BOUNDS_SECS};

use crate::auth::{bearer, TokenCheck};
use crate::context::{Caller, RunContext};
use crate::envelope::{
    self, ChunkLimit, DerefChunk, DerefRequest, DerefResponse, Envelope, FailureKind, ParentRun,
    ParentRunRequest, ParentRunResponse, ReleaseRequest, ReleaseResponse, StepsRequest,
    StepsResponse, SubWorkflowRequest, SubWorkflowResponse, WorkflowFailure, ENVELOPE_VERSION,
};
use crate::error::PeerError;
use crate::event::Event;
use crate::event_stream::{EventStream, DEFAULT_STREAM_BUFFER};
use crate::limits::{check_json_depth, DEFAULT_MAX_JSON_DEPTH, MAX_JSON_DEPTH_CEILING};
use crate::log_target::TARGET;
use crate::observer::RunObserver;
use crate::pb::blazen_peer_server::{BlazenPeer, BlazenPeerServer};
use crate::pb::{PostcardRequest, PostcardResponse};
use crate::registry::{Step, StepRegistry};
use crate::runner::run_workflow;
use crate::session_refs::{RefUsage, SessionRef, SessionRefRegistry};
use crate::tls::ServerTls;
use crate::trace::TraceContext;
use crate::transport::NODE_ID_HEADER;
use lifecycle::Lifecycle;
pub(crate) use metrics::ServerCounters;
use stream_feed::StreamFeed;

pub use crate::transport::{
    CONNECTION_WINDOW_BYTES, DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_KEEPALIVE_TIMEOUT,
    DEFAULT_MAX_MESSAGE_BYTES, MAX_FRAME_BYTES, STREAM_WINDOW_BYTES,
};

/// Size of the pieces `DerefSessionRefChunks` sends.
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// Pieces a deref stream may have queued ahead of the network.
const CHUNKS_IN_FLIGHT: usize = 4;

/// Default bound on runs in progress at once; beyond it calls get RESOURCE_EXHAUSTED.
pub const DEFAULT_MAX_CONCURRENT_RUNS: usize = 1024;
/// Once the grace period is over and runs are cancelled, how long their
/// replies (and streams such as a deref in progress) get to go out before the
/// connections are closed.
const TRANSPORT_DRAIN: Duration = Duration::from_secs(2);

/// Server settings; `Default` gives the documented defaults.
#[derive(Clone)]
pub struct ServerConfig {
    /// Run deadline when a request carries no `timeout_secs`.
    pub default_timeout: Duration,
    /// Steps that requests may name.
    pub registry: Arc<StepRegistry>,
    /// Where steps keep session refs.
    pub session_refs: Arc<SessionRefRegistry>,
    /// Per-run data for the step host (for Python: its event loop).
    pub host: Option<Arc<dyn Any + Send + Sync>>,
    /// Largest message accepted or sent.
    pub max_message_bytes: usize,
    /// Runs in progress at once, beyond which calls are refused as busy.
    pub max_concurrent_runs: usize,
    /// How deeply a request's JSON input may nest.
    pub max_json_depth: usize,
    /// Certificate and key (and, for mutual TLS, the client CA); None serves plaintext.
    pub tls: Option<ServerTls>,
    /// Shared secrets, any of which a call may carry (several while rotating);
    /// empty accepts calls without a token.
    pub tokens: Vec<String>,
    /// Allows serving a non-loopback address with neither TLS nor a token.
    pub insecure: bool,
    /// HTTP/2 keepalive ping interval on idle connections; None disables pings.
    pub keepalive_interval: Option<Duration>,
    /// How long a keepalive ping may go unanswered.
    pub keepalive_timeout: Duration,
    /// Events a streaming run buffers before its writers wait for the caller.
    pub stream_buffer: usize,
    /// Hears when each run starts and how it ends (tracing).
    pub observer: Option<Arc<dyn RunObserver>>,
    /// Connections open at once; more are accepted and closed at once.
    pub max_connections: usize,
    /// HTTP/2 streams (calls) one connection may have open at once.
    pub max_concurrent_streams: u32,
    /// Time a new connection has, from accept, to complete the TLS handshake
    /// (under TLS) and send the HTTP/2 preface; it is closed otherwise.
    pub handshake_timeout: Duration,
    /// Time a connection may have no open stream before it is closed
    /// gracefully; None keeps idle connections open.
    pub idle_connection_timeout: Option<Duration>,
    /// Longest pause in a request body before its call fails.
    pub request_body_timeout: Duration,
    /// Request bytes held at once across all connections for messages still
    /// arriving or being decoded; calls past it are refused as busy.
    pub max_buffered_request_bytes: usize,
    /// Also answers the HTTP/JSON routes of the published crate's
    /// `HttpPeerClient` (`POST /v1/peer/...`) on the same port, over HTTP/1.1
    /// and HTTP/2, behind the same token, TLS and limits; off by default.
    pub http_json: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            default_timeout: Duration::from_secs(300),
            registry: StepRegistry::global().clone(),
            session_refs: Arc::new(SessionRefRegistry::default()),
            host: None,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_concurrent_runs: DEFAULT_MAX_CONCURRENT_RUNS,
            max_json_depth: DEFAULT_MAX_JSON_DEPTH,
            tls: None,
            tokens: Vec::new(),
            insecure: false,
            keepalive_interval: Some(DEFAULT_KEEPALIVE_INTERVAL),
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            stream_buffer: DEFAULT_STREAM_BUFFER,
            observer: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            idle_connection_timeout: Some(DEFAULT_IDLE_CONNECTION_TIMEOUT),
            request_body_timeout: DEFAULT_REQUEST_BODY_TIMEOUT,
            max_buffered_request_bytes: DEFAULT_MAX_BUFFERED_REQUEST_BYTES,
            http_json: false,
        }
    }
}

impl ServerConfig {
    /// Refuses settings that cannot work, saying which and why.
    pub fn validate(&self) -> Result<(), PeerError> {
        if self.max_concurrent_runs == 0 {
            return Err(PeerError::Validation(
                "max_concurrent_runs must be at least 1".into(),
            ));
        }
        if self.max_json_depth == 0 || self.max_json_depth > MAX_JSON_DEPTH_CEILING {
            return Err(PeerError::Validation(format!(
                "max_json_depth must be between 1 and {MAX_JSON_DEPTH_CEILING}, got {}",
                self.max_json_depth
            )));
        }
        if self.stream_buffer == 0 {
            return Err(PeerError::Validation(
                "stream_buffer must be at least 1 event".into(),
            ));
        }
        if self.max_message_bytes < 1024 {
            return Err(PeerError::Validation(format!(
                "max_message_bytes must be at least 1024, got {}",
                self.max_message_bytes
            )));
        }
        self.validate_transport()?;
        for token in &self.tokens {
            if token.is_empty() {
                return Err(PeerError::Validation(
                    "the token is empty; pass a non-empty secret or none at all".into(),
                ));
            }
            bearer(token).map_err(PeerError::Validation)?;
        }
        Ok(())
    }
}

impl ServerConfig {
    /// The transport limits: connections, streams, timeouts, buffered bytes.
    fn validate_transport(&self) -> Result<(), PeerError> {
        if self.max_connections == 0 {
            return Err(PeerError::Validation(
                "max_connections must be at least 1".into(),
            ));
        }
        if self.max_concurrent_streams == 0 {
            return Err(PeerError::Validation(
                "max_concurrent_streams must be at least 1".into(),
            ));
        }
        let timeouts = [
            ("handshake_timeout_secs", Some(self.handshake_timeout)),
            ("idle_connection_timeout_secs", self.idle_connection_timeout),
            ("request_body_timeout_secs", Some(self.request_body_timeout)),
        ];
        for (name, timeout) in timeouts {
            if timeout.is_some_and(|timeout| timeout.is_zero()) {
                return Err(PeerError::Validation(format!(
                    "{name} must be a positive number of seconds"
                )));
            }
        }
        // A whole message, with its 5-byte gRPC header, must fit.
        if self.max_buffered_request_bytes < self.max_message_bytes.saturating_add(5) {
            return Err(PeerError::Validation(format!(
                "max_buffered_request_bytes ({}) must be at least max_message_bytes ({}) plus                  5, or the largest message could never arrive; raise max_buffered_request_bytes",
                self.max_buffered_request_bytes, self.max_message_bytes
            )));
        }
        Ok(())
    }
}

/// The `blazen.peer.v1.BlazenPeer` service.
#[derive(Clone)]
pub struct PeerService {
    node_id: Arc<str>,
    config: ServerConfig,
    run_slots: Arc<Semaphore>,
    lifecycle: Arc<Lifecycle>,
    counters: Arc<ServerCounters>,
}

/// A snapshot of what a service counts, for metrics: [`PeerService::metrics`].
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceMetrics {
    /// Runs by how they ended, and in progress.
    pub runs: RunStats,
    /// Run durations by outcome.
    pub run_durations: Vec<(RunOutcome, DurationBuckets)>,
    /// Calls and connections turned away, by reason.
    pub refusals: Vec<(Refusal, u64)>,
    /// Connections open now.
    pub connections_open: u64,
    /// Connections accepted since the server started (refused ones excluded).
    pub connections_accepted: u64,
    /// Session refs held, and their bytes.
    pub session_refs: RefUsage,
}

/// A request that passed every check, ready to run.
struct PreparedRun {
    _slot: OwnedSemaphorePermit,
    steps: Vec<Step>,
    ctx: RunContext,
    start: Event,
    deadline: Duration,
}

impl PeerService {
    /// A service answering as `node_id`.
    pub fn new(node_id: impl Into<Arc<str>>, config: ServerConfig) -> Self {
        Self {
            node_id: node_id.into(),
            run_slots: Arc::new(Semaphore::new(config.max_concurrent_runs)),
            config,
            lifecycle: Arc::default(),
            counters: Arc::default(),
        }
    }

    /// What metrics report: every figure is read from atomics (the refs'
    /// two from one brief lock), so a scrape costs the calls nothing.
    pub fn metrics(&self) -> ServiceMetrics {
        ServiceMetrics {
            runs: self.lifecycle.stats(),
            run_durations: self.lifecycle.durations(),
            refusals: self.counters.refusals(),
            connections_open: self.counters.connections_open(),
            connections_accepted: self.counters.connections_accepted(),
            session_refs: self.config.session_refs.usage(),
        }
    }

    /// How many runs started and how each ended.
    pub fn stats(&self) -> RunStats {
        self.lifecycle.stats()
    }

    /// True once the server running this service began to shut down.
    pub fn is_draining(&self) -> bool {
        self.lifecycle.is_draining()
    }

    /// Runs one request to completion; `Err` only for protocol-level refusals.
    pub async fn invoke(
        &self,
        payload: &[u8],
        caller: Caller,
    ) -> Result<Envelope<SubWorkflowResponse>, PeerError> {
        let run = self.prepare(payload, caller, None)?;
        Ok(self.execute(run).await)
    }

    /// Checks a request and resolves its steps; nothing runs yet.
    fn prepare(
        &self,
        payload: &[u8],
        caller: Caller,
        events: Option<EventStream>,
    ) -> Result<PreparedRun, PeerError> {
        if self.lifecycle.is_draining() {
            return Err(PeerError::Unavailable(format!(
                "peer `{}` is shutting down and starts no new runs; call another peer or retry \
                 once it is back",
                self.node_id
            )));
        }
        let slot = self.run_slots.clone().try_acquire_owned().map_err(|_| {
            PeerError::Busy(format!(
                "peer `{}` is already running its maximum of {} concurrent runs; retry \
                 later, spread calls over more peers, or raise max_concurrent_runs",
                self.node_id, self.config.max_concurrent_runs
            ))
        })?;
        let request = Envelope::<SubWorkflowRequest>::decode(payload)?;
        let parent_run = request
            .extensions
            .get::<ParentRun>()
            .map(|parent| parent.parent_run_id);
        let request = request.body;
        check_json_depth(&request.input_json, self.config.max_json_depth)?;
        // serde_json does not check UTF-8 inside strings it skips, so check it first.
        let input = std::str::from_utf8(&request.input_json)
            .map_err(|err| PeerError::Encode(format!("input_json is not valid UTF-8: {err}")))?;
        serde_json::from_str::<serde::de::IgnoredAny>(input).map_err(|err| {
            PeerError::Encode(format!("input_json is not valid UTF-8 JSON: {err}"))
        })?;
        let node = format!("`{}`", self.node_id);
        let steps =
            self.config
                .registry
                .resolve(&request.workflow_name, &request.step_ids, &node)?;
        let ctx = RunContext::with_session_refs(
            self.node_id.clone(),
            request.workflow_name,
            self.config.host.clone(),
            self.config.session_refs.clone(),
            parent_run,
        );
        ctx.set_caller(caller);
        if let Some(events) = events {
            ctx.attach_event_stream(events);
        }
        let deadline = request
            .timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(self.config.default_timeout);
        Ok(PreparedRun {
            _slot: slot,
            steps,
            ctx,
            start: Event::start_from_json(request.input_json),
            deadline,
        })
    }

    /// Runs a prepared request. Dropping the future (the caller went away)
    /// cancels the run: steps are cancelled and its refs dropped.
    async fn execute(&self, run: PreparedRun) -> Envelope<SubWorkflowResponse> {
        let record = self.lifecycle.begin(&run.ctx, run.steps.len());
        let observation = self
            .config
            .observer
            .as_ref()
            .and_then(|observer| observer.run_started(&run.ctx));
        let shutdown = self.lifecycle.runs_cancelled();
        let shut_down = |step_id: Option<String>| {
            Box::new(WorkflowFailure {
                kind: FailureKind::Cancelled,
                message: format!(
                    "peer `{}` shut down before workflow `{}` finished: the run outlived the \
                     shutdown's grace period and was cancelled",
                    self.node_id,
                    run.ctx.workflow_name()
                ),
                remote_type: None,
                remote_traceback: None,
                step_id,
                node_id: self.node_id.to_string(),
            })
        };
        let outcome = tokio::select! {
            outcome = run_workflow(&run.steps, run.ctx.clone(), run.start, Some(run.deadline)) => outcome,
            () = shutdown => Err(shut_down(None)),
        };
        // A step cancelled while the peer stops (its host's loop cancelling
        // tasks on the way out) was cancelled by the shutdown: say so.
        let outcome = outcome.map_err(|failure| {
            if failure.kind == FailureKind::Cancelled && self.lifecycle.is_draining() {
                shut_down(failure.step_id)
            } else {
                failure
            }
        });
        // Encoded before the record ends: a result that is not JSON is a failed run.
        let result = outcome.and_then(|stop| {
            stop.data.result_json().map_err(|err| {
                Box::new(WorkflowFailure {
                    kind: envelope::FailureKind::ResultNotJson,
                    message: format!("the StopEvent's result could not be encoded as JSON: {err}"),
                    remote_type: None,
                    remote_traceback: None,
                    step_id: None,
                    node_id: self.node_id.to_string(),
                })
            })
        });
        record.end(&result);
        if let Some(observation) = observation {
            observation.ended(result.as_ref().err().map(|failure| failure.as_ref()));
        }
        self.respond(&run.ctx, result)
    }

    fn respond(
        &self,
        ctx: &RunContext,
        result: Result<Vec<u8>, Box<WorkflowFailure>>,
    ) -> Envelope<SubWorkflowResponse> {
        let mut response = Envelope::new(SubWorkflowResponse {
            envelope_version: ENVELOPE_VERSION,
            ..Default::default()
        });
        let outliving = ctx.outliving_refs();
        match result {
            Ok(result_json) => {
                response.body.result_json = Some(result_json.into());
                response.body.state_json = ctx
                    .exported_state()
                    .into_iter()
                    .map(|(key, value)| (key, value.into()))
                    .collect();
                response.body.remote_refs = outliving;
            }
            Err(failure) => {
                // The caller of a failed run never learns these keys.
                for key in outliving.keys() {
                    self.config.session_refs.remove(key);
                }
                response.body.error = Some(failure.message.clone());
                // Encoding a struct of strings into a Vec cannot fail.
                let _ = response.extensions.insert(failure.as_ref());
            }
        }
        response
    }

    /// Logs why a run request was turned away and gives the status to answer.
    fn refusal(&self, err: &PeerError, caller: &Caller) -> Status {
        self.counters.refused(match err {
            PeerError::Busy(_) => Refusal::Busy,
            PeerError::Unavailable(_) => Refusal::Draining,
            _ => Refusal::InvalidRequest,
        });
        let level = match err {
            // Expected while draining; the caller retries elsewhere.
            PeerError::Unavailable(_) => log::Level::Debug,
            _ => log::Level::Warn,
        };
        let caller_node = caller.node_id.as_deref().unwrap_or("");
        log::log!(
            target: TARGET, level,
            node_id = &*self.node_id, caller = caller_node, error_kind = err.kind();
            "refused a run request from `{caller_node}`: {err}"
        );
        err.to_status()
    }

    fn reply<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        body: Envelope<T>,
        what: &str,
    ) -> Result<Response<PostcardResponse>, Status> {
        let postcard_payload = body.encode().map_err(|err| err.to_status())?;
        if postcard_payload.len() > self.config.max_message_bytes {
            return Err(PeerError::MessageTooLarge(format!(
                "{what} of {} bytes exceeds max_message_bytes {} on peer `{}`; raise it on both \
                 sides (PeerServer and PeerClient.connect), or return a session ref instead",
                postcard_payload.len(),
                self.config.max_message_bytes,
                self.node_id
            ))
            .to_status());
        }
        Ok(Response::new(PostcardResponse {
            postcard_payload: postcard_payload.into(),
        }))
    }

    fn find_ref(&self, payload: &[u8]) -> Result<(Uuid, SessionRef, Option<ChunkLimit>), Status> {
        let request = Envelope::<DerefRequest>::decode(payload).map_err(|err| err.to_status())?;
        let limit = request.extensions.get::<ChunkLimit>();
        let key = request.body.ref_uuid;
        let entry = self.config.session_refs.get(&key).ok_or_else(|| {
            PeerError::RefNotFound(format!(
                "session ref {key} not found on node `{}` (released, expired, or never created here)",
                self.node_id
            ))
            .to_status()
        })?;
        Ok((key, entry, limit))
    }

    fn parent_run(payload: &[u8]) -> Result<Uuid, Status> {
        Envelope::<ParentRunRequest>::decode(payload)
            .map(|request| request.body.parent_run_id)
            .map_err(|err| err.to_status())
    }

    fn parent_reply(&self, refs: usize) -> Result<Response<PostcardResponse>, Status> {
        let lease_ms = self
            .config
            .session_refs
            .lease()
            .as_millis()
            .min(u64::MAX as u128) as u64;
        self.reply(
            Envelope::new(ParentRunResponse {
                envelope_version: ENVELOPE_VERSION,
                refs: refs as u64,
                lease_ms,
            }),
            "reply",
        )
    }
}

/// The announced node id and, under mutual TLS, the verified certificate of a call.
fn caller_of<T>(request: &Request<T>) -> Caller {
    let mut caller = Caller::new(
        request
            .metadata()
            .get(NODE_ID_HEADER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned),
        request.peer_certs(),
    );
    caller.trace = TraceContext::from_metadata(request.metadata());
    caller
}

type ItemStream = futures::stream::BoxStream<'static, Result<PostcardResponse, Status>>;

#[tonic::async_trait]
impl BlazenPeer for PeerService {
    async fn invoke_sub_workflow(
        &self,
        request: Request<PostcardRequest>,
    ) -> Result<Response<PostcardResponse>, Status> {
        let caller = caller_of(&request);
        let payload = request.into_inner().postcard_payload;
        let response = AssertUnwindSafe(self.invoke(&payload, caller.clone()))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                let err = PeerError::from_panic(panic.as_ref(), "the peer, running this request,");
                log::error!(target: TARGET, node_id = &*self.node_id; "{err}");
                Err(err)
            })
            .map_err(|err| self.refusal(&err, &caller))?;
        let listed: Vec<Uuid> = response.body.remote_refs.keys().copied().collect();
        self.reply(response, "the response").inspect_err(|_| {
            // The caller never learns these keys.
            for key in &listed {
                self.config.session_refs.remove(key);
            }
        })
    }

    type StreamSubWorkflowEventsStream = ItemStream;

    async fn stream_sub_workflow_events(
        &self,
        request: Request<PostcardRequest>,
    ) -> Result<Response<Self::StreamSubWorkflowEventsStream>, Status> {
        let caller = caller_of(&request);
        let payload = request.into_inner().postcard_payload;
        let events = EventStream::new(self.config.stream_buffer);
        let run = self
            .prepare(&payload, caller.clone(), Some(events.clone()))
            .map_err(|err| self.refusal(&err, &caller))?;
        let service = self.clone();
        let task = tokio::spawn(async move {
            let response = service.execute(run).await;
            Ok(response)
        });
        let feed = StreamFeed::new(
            events,
            task,
            self.node_id.clone(),
            self.config.max_message_bytes,
            self.config.session_refs.clone(),
        );
        Ok(Response::new(Box::pin(feed.into_stream())))
    }

    async fn deref_session_ref(
        &self,
        request: Request<PostcardRequest>,
    ) -> Result<Response<PostcardResponse>, Status> {
        let (key, entry, _) = self.find_ref(&request.into_inner().postcard_payload)?;
        let size = entry.payload.bytes().len();
        if size > self.config.max_message_bytes {
            return Err(PeerError::MessageTooLarge(format!(
                "session ref {key} holds {size} bytes, more than one message may carry \
                 (max_message_bytes {}); fetch it with DerefSessionRefChunks",
                self.config.max_message_bytes
            ))
            .to_status());
        }
        let response = Envelope::new(DerefResponse {
            envelope_version: ENVELOPE_VERSION,
            payload: entry.payload.bytes().to_vec(),
        });
        self.reply(response, &format!("session ref {key}"))
    }

    type DerefSessionRefChunksStream = ItemStream;

    async fn deref_session_ref_chunks(
        &self,
        request: Request<PostcardRequest>,
    ) -> Result<Response<Self::DerefSessionRefChunksStream>, Status> {
        let (_, entry, client_limit) = self.find_ref(&request.into_inner().postcard_payload)?;
        let limit = client_limit
            .map(|limit| usize::try_from(limit.max_message_bytes).unwrap_or(usize::MAX))
            .unwrap_or(usize::MAX)
            .min(self.config.max_message_bytes);
        // Room for the piece's own fields (version, sizes, offset, tag) and protobuf framing.
        let overhead = 64 + entry.type_tag.len();
        let chunk_bytes = CHUNK_BYTES.min(limit.saturating_sub(overhead)).max(1);
        // A bounded channel: the producer waits while the client is slow, so a
        // value never sits in memory twice.
        let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        tokio::spawn(async move {
            let bytes = entry.payload.bytes();
            let total_len = bytes.len() as u64;
            let mut offset = 0;
            loop {
                let end = (offset + chunk_bytes).min(bytes.len());
                let item = DerefChunk::encode_piece(
                    total_len,
                    &entry.type_tag,
                    offset as u64,
                    &bytes[offset..end],
                )
                .map(|postcard_payload| PostcardResponse {
                    postcard_payload: postcard_payload.into(),
                })
                .map_err(|err| err.to_status());
                if tx.send(item).await.is_err() || end == bytes.len() {
                    break;
                }
                offset = end;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn release_session_ref(
        &self,
        request: Request<PostcardRequest>,
    ) -> Result<Response<PostcardResponse>, Status> {
        let payload = request.into_inner().postcard_payload;
        let key = Envelope::<ReleaseRequest>::decode(&payload)
            .map_err(|err| err.to_status())?
            .body
            .ref_uuid;
        let released = self.config.session_refs.remove(&key);
        self.reply(
            Envelope::new(ReleaseResponse {
                envelope_version: ENVELOPE_VERSION,
                released,
            }),
            "reply",
        )
    }

    async fn finish_parent_run(
        &self,
        request: Request<PostcardRequest>,
    ) -> Result<Response<PostcardResponse>, Status> {
        let parent = Self::parent_run(&request.into_inner().postcard_payload)?;
        self.parent_reply(self.config.session_refs.finish_parent(parent))
    }

    async fn renew_parent_lease(
        &self,
        request: Request<PostcardRequest>,
    ) -> Result<Response<PostcardResponse>, Status> {
        let parent = Self::parent_run(&request.into_inner().postcard_payload)?;
        self.parent_reply(self.config.session_refs.renew_parent(parent))
    }

    async fn list_steps(
        &self,
        request: Request<PostcardRequest>,
    ) -> Result<Response<PostcardResponse>, Status> {
        Envelope::<StepsRequest>::decode(&request.into_inner().postcard_payload)
            .map_err(|err| err.to_status())?;
        let (steps, workflows) = self.config.registry.describe();
        self.reply(
            Envelope::new(StepsResponse {
                envelope_version: ENVELOPE_VERSION,
                node_id: self.node_id.to_string(),
                steps,
                workflows,
                draining: self.lifecycle.is_draining(),
            }),
            "the step list",
        )
    }
}

/// A server serving in the background until [`RunningServer::stop`].
pub struct RunningServer {
    local_addr: SocketAddr,
    node_id: Arc<str>,
    lifecycle: Arc<Lifecycle>,
    health: HealthReporter,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    sweeper: JoinHandle<()>,
}

impl RunningServer {
    /// Binds `addr` (port 0 picks a free port) and starts serving `service`.
    pub async fn start(service: PeerService, addr: SocketAddr) -> Result<Self, PeerError> {
        let config = service.config.clone();
        let lifecycle = service.lifecycle.clone();
        let node_id = service.node_id.clone();
        config.validate()?;
        if !addr.ip().is_loopback()
            && config.tls.is_none()
            && config.tokens.is_empty()
            && !config.insecure
        {
            return Err(PeerError::Validation(format!(
                "refusing to serve {addr} without TLS or a token: anyone who can reach it could \
                 run this peer's steps. Pass tls=ServerTls.from_pem(...) and/or token=... (or set \
                 BLAZEN_PEER_TOKEN), bind 127.0.0.1 for local use, or pass insecure=True on a \
                 network you trust"
            )));
        }
        let listener = incoming::bind(addr).map_err(|err| {
            let hint = if err.kind() == std::io::ErrorKind::AddrInUse {
                "; another process is listening there: stop it or pick another port (0 picks a free one)"
            } else {
                ""
            };
            PeerError::transport(format!("cannot listen on {addr}: {err}{hint}"))
        })?;
        let local_addr = listener
            .local_addr()
            .map_err(|err| PeerError::transport(format!("cannot read the bound address: {err}")))?;
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let limit = config.max_message_bytes;
        let sweeper = tokio::spawn(sweep_leases(config.session_refs.clone()));
        let counters = service.counters.clone();
        let json_api = config.http_json.then(|| {
            http_json::JsonApi::new(
                service.clone(),
                TokenCheck::new(&config.tokens).counting_refusals(counters.clone()),
            )
        });
        let grpc = BlazenPeerServer::new(service)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit);
        let grpc = InterceptedService::new(
            grpc,
            TokenCheck::new(&config.tokens).counting_refusals(counters.clone()),
        );
        // Health is outside the token check: probes (Kubernetes, grpc_health_probe)
        // carry no credentials, and the answer reveals nothing but up or draining.
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<BlazenPeerServer<PeerService>>().await;
        // Connections are accepted and served by our own loop (server/incoming.rs,
        // server/connection.rs), which bounds what tonic's would not: connections,
        // handshake time, idle time, request bytes (see server/limits.rs).
        let routes = Routes::new(health_service).add_service(grpc);
        let transport = Arc::new(connection::Transport::new(
            node_id.clone(),
            &config,
            routes,
            json_api,
            counters,
        ));
        log::info!(
            target: TARGET,
            node_id = &*node_id, address:% = local_addr;
            "peer `{node_id}` serving on {local_addr} ({}, {}{})",
            if config.tls.is_some() { "TLS" } else { "plaintext" },
            match config.tokens.len() {
                0 => "no token",
                _ => "token required",
            },
            if config.http_json { ", HTTP/JSON routes on" } else { "" }
        );
        let task = tokio::spawn(async move {
            let (stop_tx, stop_rx) = watch::channel(false);
            let serving = incoming::serve(listener, transport, stop_rx);
            tokio::pin!(serving);
            tokio::select! {
                () = &mut serving => {}
                _ = shutdown_rx => {
                    let _ = stop_tx.send(true);
                    serving.await;
                }
            }
            Ok(())
        });
        Ok(Self {
            local_addr,
            node_id,
            lifecycle,
            health,
            shutdown: Some(shutdown_tx),
            task: Some(task),
            sweeper,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How many runs started and how each ended.
    pub fn stats(&self) -> RunStats {
        self.lifecycle.stats()
    }

    /// True once [`RunningServer::stop`] began.
    pub fn is_draining(&self) -> bool {
        self.lifecycle.is_draining()
    }

    /// Shuts down gracefully: health turns NOT_SERVING and new runs are
    /// refused (UNAVAILABLE) while the listener stays up, so probes and
    /// load balancers see the drain; runs in progress get `grace` to finish
    /// (None: as long as they take), then the rest are cancelled — their
    /// callers get a Cancelled failure — and the server closes.
    pub async fn stop(&mut self, grace: Option<Duration>) -> Result<(), PeerError> {
        if self.task.is_none() {
            return Ok(());
        }
        let node_id = &*self.node_id;
        let in_flight = self.lifecycle.stats().runs_in_flight;
        log::info!(
            target: TARGET,
            node_id = node_id, runs_in_flight = in_flight;
            "peer `{node_id}` draining: {in_flight} {} in progress, grace {}",
            if in_flight == 1 { "run" } else { "runs" },
            grace.map_or("unlimited".into(), |grace| format!("{:.1} s", grace.as_secs_f64()))
        );
        self.lifecycle.start_draining();
        self.health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        self.health
            .set_not_serving::<BlazenPeerServer<PeerService>>()
            .await;
        if !self.lifecycle.wait_idle(grace).await {
            let in_flight = self.lifecycle.stats().runs_in_flight;
            log::warn!(
                target: TARGET,
                node_id = node_id, runs_in_flight = in_flight;
                "peer `{node_id}`: grace period over, cancelling {in_flight} {}",
                if in_flight == 1 { "run" } else { "runs" }
            );
            self.lifecycle.cancel_runs();
            // Cancelled runs end at once; their replies still go out below.
            self.lifecycle.wait_idle(Some(TRANSPORT_DRAIN)).await;
        }
        self.sweeper.abort();
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let Some(mut task) = self.task.take() else {
            return Ok(());
        };
        // tonic's own graceful shutdown waits for every open stream, however long.
        let joined = tokio::time::timeout(TRANSPORT_DRAIN, &mut task).await;
        log::info!(target: TARGET, node_id = node_id; "peer `{node_id}` stopped");
        let joined = match joined {
            Ok(joined) => joined,
            Err(_) => {
                task.abort();
                return Ok(());
            }
        };
        match joined {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(PeerError::transport(format!(
                "server on {} failed: {err}",
                self.local_addr
            ))),
            Err(join) => Err(PeerError::transport(format!(
                "server task on {} ended abnormally: {join}",
                self.local_addr
            ))),
        }
    }
}

/// Frees refs of parents that stopped renewing their lease.
async fn sweep_leases(session_refs: Arc<SessionRefRegistry>) {
    let period =
        (session_refs.lease() / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
    let mut ticks = tokio::time::interval(period);
    loop {
        ticks.tick().await;
        session_refs.sweep_expired();
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.lifecycle.start_draining();
        self.lifecycle.cancel_runs();
        self.sweeper.abort();
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}
