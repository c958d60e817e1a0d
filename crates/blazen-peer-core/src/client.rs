//! A client of the peer service over one multiplexed HTTP/2 channel.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::Request;
use uuid::Uuid;

use futures::StreamExt;

use crate::auth::bearer;
use crate::envelope::{
    ChunkLimit, DerefChunk, DerefRequest, DerefResponse, Envelope, ParentRunRequest,
    ParentRunResponse, ReleaseRequest, ReleaseResponse, StepsRequest, StepsResponse, StreamItem,
    SubWorkflowRequest, SubWorkflowResponse, ENVELOPE_VERSION,
};
use crate::error::PeerError;
use crate::event_stream::StreamedEvent;
use crate::pb::blazen_peer_client::BlazenPeerClient;
use crate::pb::{PostcardRequest, PostcardResponse};
use crate::tls::{handshake_failure, ClientTls};
use crate::tls_connector;
use crate::trace::TraceContext;
use crate::transport::{
    CONNECTION_WINDOW_BYTES, DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_KEEPALIVE_TIMEOUT,
    DEFAULT_MAX_MESSAGE_BYTES, MAX_FRAME_BYTES, STREAM_WINDOW_BYTES,
};

/// Locally reset streams whose late frames h2 ignores quietly (see `connect`).
const CANCELLED_STREAMS_REMEMBERED: usize = 4096;

pub use crate::transport::NODE_ID_HEADER;

/// Longest run deadline the client mirrors as a gRPC deadline (ten years).
const MAX_CLIENT_DEADLINE_SECS: u64 = 10 * 365 * 24 * 3600;

/// Client settings; `Default` gives the documented defaults.
#[derive(Clone)]
pub struct ClientConfig {
    /// Bound on establishing the connection.
    pub connect_timeout: Duration,
    /// Extra time past a run's `timeout_secs` before the client gives up on the call,
    /// so a peer that never answers cannot hang the caller.
    pub deadline_margin: Duration,
    /// Largest message sent or accepted.
    pub max_message_bytes: usize,
    /// Shared secret sent with every call (`authorization: Bearer ...`).
    pub token: Option<String>,
    /// CA to trust and optional client certificate; required for `https://`.
    pub tls: Option<ClientTls>,
    /// HTTP/2 keepalive ping interval while calls are open; None disables pings.
    pub keepalive_interval: Option<Duration>,
    /// How long a keepalive ping may go unanswered before the connection counts as dead.
    pub keepalive_timeout: Duration,
}

// By hand, so that a logged config never shows the token.
impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("connect_timeout", &self.connect_timeout)
            .field("deadline_margin", &self.deadline_margin)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls.is_some())
            .field("keepalive_interval", &self.keepalive_interval)
            .field("keepalive_timeout", &self.keepalive_timeout)
            .finish()
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            deadline_margin: Duration::from_secs(5),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            token: None,
            tls: None,
            keepalive_interval: Some(DEFAULT_KEEPALIVE_INTERVAL),
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
        }
    }
}

/// Per-call settings of a run.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Trace context to send, so the peer's run joins the caller's trace.
    pub trace: Option<TraceContext>,
}

/// What a health check answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Up and starting runs.
    Serving,
    /// Up but starting no runs (shutting down).
    NotServing,
    /// The peer's health service does not know the service asked about.
    ServiceUnknown,
    /// The peer answered with a status we do not know, or none.
    Unknown,
}

/// A connected client; clones share the channel.
#[derive(Clone)]
pub struct PeerClient {
    grpc: BlazenPeerClient<Channel>,
    channel: Channel,
    address: String,
    node_id: String,
    node_header: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    token_header: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    config: ClientConfig,
}

impl PeerClient {
    /// Connects eagerly, so a peer that is not listening fails here.
    pub async fn connect(
        address: &str,
        node_id: &str,
        config: ClientConfig,
    ) -> Result<Self, PeerError> {
        let secure = address.starts_with("https://");
        if !(secure || address.starts_with("http://")) {
            return Err(PeerError::Validation(format!(
                "`{address}` is not a peer address (it has no scheme); use http://HOST:PORT \
                 or https://HOST:PORT"
            )));
        }
        match (secure, config.tls.is_some()) {
            (false, true) => {
                return Err(PeerError::Validation(format!(
                    "`{address}` is a plaintext address but a TLS config was given; use \
                     https://{} to connect with TLS",
                    &address["http://".len()..]
                )))
            }
            (true, false) => {
                return Err(PeerError::Validation(format!(
                    "`{address}` asks for TLS but no TLS config was given; pass \
                     tls=ClientTls.from_pem(ca=...) naming the CA that signed the peer's certificate"
                )))
            }
            _ => {}
        }
        let token_header = match config.token.as_deref() {
            Some("") => {
                return Err(PeerError::Validation(
                    "the token is empty; pass the peer's token or none at all".into(),
                ))
            }
            Some(token) => Some(bearer(token).map_err(PeerError::Validation)?),
            None => None,
        };
        // With TLS, the connector below encrypts; tonic sees a plain http:// endpoint.
        let endpoint_uri = match secure {
            true => format!("http://{}", &address["https://".len()..]),
            false => address.to_owned(),
        };
        let mut endpoint = Endpoint::from_shared(endpoint_uri)
            .map_err(|err| {
                PeerError::Validation(format!(
                    "`{address}` is not a valid peer address ({err}); use http://HOST:PORT"
                ))
            })?
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .max_frame_size(MAX_FRAME_BYTES)
            .keep_alive_while_idle(false)
            .keep_alive_timeout(config.keepalive_timeout)
            // A call cancelled or timed out here is reset locally; the peer's
            // reply may still be on its way. h2 ignores frames for the last
            // few reset streams and resets the rest again as protocol errors,
            // counted over the connection's life: at hyper's defaults (10
            // remembered, 1,024 errors) a client that cancels and times out
            // calls tore down its own connection, and every call on it, every
            // ~45,000 calls. Remember many (a few dozen bytes each) and set no
            // lifetime cap: the guard is against a misbehaving server, and the
            // peer is one this client chose to call.
            .http2_max_concurrent_reset_streams(CANCELLED_STREAMS_REMEMBERED)
            .http2_max_local_error_reset_streams(None);
        if let Some(interval) = config.keepalive_interval {
            endpoint = endpoint.http2_keep_alive_interval(interval);
        }
        let node_header = node_id.parse().map_err(|_| {
            PeerError::Validation(format!(
                "node_id `{node_id}` must be printable ASCII (it travels as gRPC metadata)"
            ))
        })?;
        let uri = endpoint.uri().clone();
        let host = uri.host().unwrap_or_default().to_owned();
        let connected = match &config.tls {
            None => {
                let authority = format!("{host}:{}", uri.port_u16().unwrap_or(80));
                let connector = tower::service_fn(move |_: http::Uri| {
                    tls_connector::connect_plaintext(authority.clone())
                });
                endpoint.connect_with_connector(connector).await
            }
            Some(tls) => {
                let authority = format!("{host}:{}", uri.port_u16().unwrap_or(443));
                let (tls_config, server_name) = tls.for_host(&host)?;
                let connector = tower::service_fn(move |_: http::Uri| {
                    tls_connector::connect(
                        tls_config.clone(),
                        server_name.clone(),
                        authority.clone(),
                    )
                });
                endpoint.connect_with_connector(connector).await
            }
        };
        let channel = connected.map_err(|err| {
            if let Some(mismatch) = protocol_mismatch(&err, address) {
                return mismatch;
            }
            if let Some(handshake) = handshake_failure(&err) {
                return PeerError::Tls(format!("cannot connect to peer {address}: {handshake}"));
            }
            PeerError::Transport {
                message: format!("cannot connect to peer {address}: {}", error_chain(&err)),
                code: None,
                started: false,
            }
        })?;
        Ok(Self {
            grpc: BlazenPeerClient::new(channel.clone())
                .max_decoding_message_size(config.max_message_bytes)
                .max_encoding_message_size(config.max_message_bytes),
            channel,
            address: address.to_owned(),
            node_id: node_id.to_owned(),
            node_header,
            token_header,
            config,
        })
    }

    /// The address given to [`PeerClient::connect`].
    pub fn address(&self) -> &str {
        &self.address
    }

    /// This client's node id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Sends a request and returns the peer's response, failed workflows included.
    pub async fn invoke(
        &self,
        request: &Envelope<SubWorkflowRequest>,
    ) -> Result<Envelope<SubWorkflowResponse>, PeerError> {
        self.invoke_with(request, &CallOptions::default()).await
    }

    /// [`PeerClient::invoke`] with per-call options.
    pub async fn invoke_with(
        &self,
        request: &Envelope<SubWorkflowRequest>,
        options: &CallOptions,
    ) -> Result<Envelope<SubWorkflowResponse>, PeerError> {
        let deadline = self.deadline_of(request);
        let payload = self.checked_payload(request)?;
        let mut grpc = self.grpc.clone();
        let reply = grpc
            .invoke_sub_workflow(self.run_request(payload, deadline, options))
            .await
            .map_err(|status| self.status_error(None, &status))?;
        self.decode(&reply.into_inner().postcard_payload)
    }

    /// Starts a streaming run: the events its steps write, then its response.
    pub async fn stream(
        &self,
        request: &Envelope<SubWorkflowRequest>,
    ) -> Result<EventReceiver, PeerError> {
        self.stream_with(request, &CallOptions::default()).await
    }

    /// [`PeerClient::stream`] with per-call options.
    pub async fn stream_with(
        &self,
        request: &Envelope<SubWorkflowRequest>,
        options: &CallOptions,
    ) -> Result<EventReceiver, PeerError> {
        let deadline = self.deadline_of(request);
        let payload = self.checked_payload(request)?;
        let mut grpc = self.grpc.clone();
        let reply = grpc
            .stream_sub_workflow_events(self.run_request(payload, deadline, options))
            .await
            .map_err(|status| self.status_error(Some("StreamSubWorkflowEvents"), &status))?;
        Ok(EventReceiver {
            items: reply.into_inner(),
            client: self.clone(),
            done: false,
        })
    }

    /// Fetches the bytes of a session ref held by the peer.
    pub async fn deref(&self, key: Uuid) -> Result<Vec<u8>, PeerError> {
        let payload = Envelope::new(DerefRequest {
            envelope_version: ENVELOPE_VERSION,
            ref_uuid: key,
        })
        .encode()?;
        let mut grpc = self.grpc.clone();
        let reply = grpc
            .deref_session_ref(self.request(payload, None))
            .await
            .map_err(|status| self.deref_error(key, &status))?;
        Ok(self
            .decode::<DerefResponse>(&reply.into_inner().postcard_payload)?
            .body
            .payload)
    }

    /// Streams a session ref of any size into `sink`, in bounded pieces. Peers
    /// that only serve the v1 unary deref are read with it instead.
    pub async fn deref_into(&self, key: Uuid, sink: &mut dyn ChunkSink) -> Result<(), PeerError> {
        let mut request = Envelope::new(DerefRequest {
            envelope_version: ENVELOPE_VERSION,
            ref_uuid: key,
        });
        request.extensions.insert(&ChunkLimit {
            max_message_bytes: self.config.max_message_bytes as u64,
        })?;
        let payload = request.encode()?;
        let mut grpc = self.grpc.clone();
        let mut stream = match grpc
            .deref_session_ref_chunks(self.request(payload, None))
            .await
        {
            Ok(reply) => reply.into_inner(),
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                let bytes = self.deref(key).await?;
                sink.begin(bytes.len() as u64, "")?;
                return sink.write(0, &bytes);
            }
            Err(status) => return Err(self.deref_error(key, &status)),
        };
        let mut expected_offset = 0u64;
        let mut total = None;
        while let Some(item) = stream.next().await {
            let item = item.map_err(|status| self.deref_error(key, &status))?;
            let chunk = DerefChunk::decode_piece(&item.postcard_payload).map_err(|err| {
                PeerError::Encode(format!(
                    "peer {} sent a piece we cannot decode: {err}",
                    self.address
                ))
            })?;
            if total.is_none() {
                sink.begin(chunk.total_len, chunk.type_tag)?;
                total = Some(chunk.total_len);
            }
            let end = chunk.offset + chunk.bytes.len() as u64;
            if Some(chunk.total_len) != total
                || chunk.offset != expected_offset
                || end > chunk.total_len
            {
                return Err(PeerError::Encode(format!(
                    "peer {} sent session ref {key} out of order (piece at {} of {}, expected {expected_offset})",
                    self.address, chunk.offset, chunk.total_len
                )));
            }
            sink.write(chunk.offset, chunk.bytes)?;
            expected_offset = end;
        }
        match total {
            Some(total) if total == expected_offset => Ok(()),
            _ => Err(PeerError::transport(format!(
                "peer {} ended session ref {key} after {expected_offset} bytes, before its end",
                self.address
            ))),
        }
    }

    /// The steps and workflows the peer can run. A v1-only peer (no
    /// `ListSteps`) gives [`PeerError::Unsupported`].
    pub async fn list_steps(&self) -> Result<StepsResponse, PeerError> {
        let payload = Envelope::new(StepsRequest {
            envelope_version: ENVELOPE_VERSION,
        })
        .encode()?;
        let mut grpc = self.grpc.clone();
        let reply = grpc
            .list_steps(self.request(payload, None))
            .await
            .map_err(|status| self.status_error(Some("ListSteps"), &status))?;
        Ok(self
            .decode::<StepsResponse>(&reply.into_inner().postcard_payload)?
            .body)
    }

    /// Asks the standard `grpc.health.v1.Health` service about `service`
    /// (empty: the whole server), on this client's connection, within `timeout`.
    pub async fn health(
        &self,
        service: &str,
        timeout: Option<Duration>,
    ) -> Result<Health, PeerError> {
        use tonic_health::pb::health_check_response::ServingStatus;
        let mut health = tonic_health::pb::health_client::HealthClient::new(self.channel.clone());
        let mut request = Request::new(tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        });
        if let Some(timeout) = timeout {
            request.set_timeout(timeout);
        }
        // The request's own deadline does not cover waiting for a reconnect;
        // a probe must answer within `timeout` whatever the connection does.
        let checked = match timeout {
            Some(limit) => tokio::time::timeout(limit, health.check(request))
                .await
                .map_err(|_| {
                    PeerError::Timeout(format!(
                        "health check of peer {} got no answer within {:.1} s",
                        self.address,
                        limit.as_secs_f64()
                    ))
                })?,
            None => health.check(request).await,
        };
        let reply = match checked {
            Ok(reply) => reply,
            // The health service's answer for a service name it does not know.
            Err(status) if status.code() == tonic::Code::NotFound => {
                return Ok(Health::ServiceUnknown)
            }
            Err(status) => return Err(self.status_error(Some("Health"), &status)),
        };
        Ok(match reply.into_inner().status() {
            ServingStatus::Serving => Health::Serving,
            ServingStatus::NotServing => Health::NotServing,
            _ => Health::Unknown,
        })
    }

    /// Releases every `UntilParentFinish` ref of `parent`; returns how many.
    pub async fn finish_parent(&self, parent: Uuid) -> Result<u64, PeerError> {
        let mut grpc = self.grpc.clone();
        let reply = grpc
            .finish_parent_run(self.request(Self::parent_payload(parent)?, None))
            .await
            .map_err(|status| self.status_error(Some("FinishParentRun"), &status))?;
        Ok(self
            .decode::<ParentRunResponse>(&reply.into_inner().postcard_payload)?
            .body
            .refs)
    }

    /// Renews the lease of `parent`'s refs; returns (refs renewed, the peer's lease).
    pub async fn renew_parent(&self, parent: Uuid) -> Result<(u64, Duration), PeerError> {
        let mut grpc = self.grpc.clone();
        let reply = grpc
            .renew_parent_lease(self.request(Self::parent_payload(parent)?, None))
            .await
            .map_err(|status| self.status_error(Some("RenewParentLease"), &status))?;
        let body = self
            .decode::<ParentRunResponse>(&reply.into_inner().postcard_payload)?
            .body;
        Ok((body.refs, Duration::from_millis(body.lease_ms)))
    }

    /// The gRPC deadline: the run's own plus a margin for the reply to arrive.
    fn deadline_of(&self, request: &Envelope<SubWorkflowRequest>) -> Option<Duration> {
        // Past MAX_CLIENT_DEADLINE the server's own deadline is the only bound
        // (tonic cannot encode such a grpc-timeout header anyway).
        request
            .body
            .timeout_secs
            .filter(|secs| *secs <= MAX_CLIENT_DEADLINE_SECS)
            .map(|secs| Duration::from_secs(secs) + self.config.deadline_margin)
    }

    fn checked_payload(
        &self,
        request: &Envelope<SubWorkflowRequest>,
    ) -> Result<Vec<u8>, PeerError> {
        let payload = request.encode()?;
        if payload.len() > self.config.max_message_bytes {
            return Err(PeerError::MessageTooLarge(format!(
                "the request of {} bytes exceeds max_message_bytes {}; raise it on both sides \
                 (PeerClient.connect and PeerServer), or keep large values on the peer as session refs",
                payload.len(),
                self.config.max_message_bytes
            )));
        }
        Ok(payload)
    }

    fn parent_payload(parent: Uuid) -> Result<Vec<u8>, PeerError> {
        Envelope::new(ParentRunRequest {
            envelope_version: ENVELOPE_VERSION,
            parent_run_id: parent,
        })
        .encode()
    }

    fn deref_error(&self, key: Uuid, status: &tonic::Status) -> PeerError {
        match status.code() {
            tonic::Code::NotFound => PeerError::RefNotFound(format!(
                "peer {} does not hold session ref {key}: {}",
                self.address,
                status.message()
            )),
            _ => self.status_error(None, status),
        }
    }

    /// Asks the peer to drop a session ref; false when it was already gone.
    pub async fn release(&self, key: Uuid) -> Result<bool, PeerError> {
        let payload = Envelope::new(ReleaseRequest {
            envelope_version: ENVELOPE_VERSION,
            ref_uuid: key,
        })
        .encode()?;
        let mut grpc = self.grpc.clone();
        let reply = grpc
            .release_session_ref(self.request(payload, None))
            .await
            .map_err(|status| self.status_error(None, &status))?;
        Ok(self
            .decode::<ReleaseResponse>(&reply.into_inner().postcard_payload)?
            .body
            .released)
    }

    fn run_request(
        &self,
        postcard_payload: Vec<u8>,
        deadline: Option<Duration>,
        options: &CallOptions,
    ) -> Request<PostcardRequest> {
        let mut request = self.request(postcard_payload, deadline);
        if let Some(trace) = &options.trace {
            trace.write(request.metadata_mut());
        }
        request
    }

    fn request(
        &self,
        postcard_payload: Vec<u8>,
        deadline: Option<Duration>,
    ) -> Request<PostcardRequest> {
        let mut request = Request::new(PostcardRequest {
            postcard_payload: postcard_payload.into(),
        });
        request
            .metadata_mut()
            .insert(NODE_ID_HEADER, self.node_header.clone());
        if let Some(token) = &self.token_header {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        if let Some(deadline) = deadline {
            request.set_timeout(deadline);
        }
        request
    }

    fn decode<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        payload: &[u8],
    ) -> Result<Envelope<T>, PeerError> {
        Envelope::decode(payload).map_err(|err| match err {
            PeerError::Encode(message) => PeerError::Encode(format!(
                "peer {} sent a reply we cannot decode: {message}",
                self.address
            )),
            other => other,
        })
    }

    /// `method`: the gRPC method called when it is one a v1-only peer lacks.
    fn status_error(&self, method: Option<&str>, status: &tonic::Status) -> PeerError {
        if let Some(mismatch) = protocol_mismatch(status, &self.address) {
            return mismatch;
        }
        if let Some(handshake) = handshake_failure(status) {
            return PeerError::Tls(format!("call to peer {} failed: {handshake}", self.address));
        }
        // A status with a source was made here, from a transport failure; one
        // without came from the peer. A GOAWAY with ENHANCE_YOUR_CALM becomes
        // RESOURCE_EXHAUSTED here: that is HTTP/2 on the way, not the peer
        // saying "busy", and the run may have started.
        if let Some(source) = std::error::Error::source(status) {
            let local = matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::Unknown
                    | tonic::Code::Cancelled
                    | tonic::Code::ResourceExhausted
            );
            if local || never_delivered(source) {
                return PeerError::Transport {
                    message: format!(
                        "call to peer {} failed: {}",
                        self.address,
                        error_chain(source)
                    ),
                    code: Some(status.code() as i32),
                    started: !never_delivered(source),
                };
            }
        }
        PeerError::from_method_status(status, &self.address, method)
    }
}

/// What a streaming run sends.
#[derive(Debug)]
pub enum StreamMessage {
    /// An event a step wrote.
    Event(StreamedEvent),
    /// The run's response; the last message.
    Done(Envelope<SubWorkflowResponse>),
}

/// The receiving end of [`PeerClient::stream`]. Dropping it cancels the call,
/// and with it the run on the peer.
pub struct EventReceiver {
    items: tonic::Streaming<PostcardResponse>,
    client: PeerClient,
    done: bool,
}

impl EventReceiver {
    /// The next message; None after [`StreamMessage::Done`].
    pub async fn next(&mut self) -> Result<Option<StreamMessage>, PeerError> {
        if self.done {
            return Ok(None);
        }
        loop {
            let item = self
                .items
                .message()
                .await
                .map_err(|status| {
                    self.client
                        .status_error(Some("StreamSubWorkflowEvents"), &status)
                })?
                .ok_or_else(|| {
                    PeerError::transport(format!(
                        "peer {} ended the event stream before the run's response",
                        self.client.address
                    ))
                })?;
            let item = self
                .client
                .decode::<StreamItem>(&item.postcard_payload)?
                .body;
            match item.kind {
                StreamItem::EVENT => {
                    return Ok(Some(StreamMessage::Event(StreamedEvent {
                        event_type: item.event_type,
                        data_json: item.payload,
                    })))
                }
                StreamItem::DONE => {
                    self.done = true;
                    let response = self.client.decode(&item.payload)?;
                    return Ok(Some(StreamMessage::Done(response)));
                }
                // A kind added by a newer peer: nothing this client can show.
                _ => continue,
            }
        }
    }
}

/// Receives a session ref piece by piece.
pub trait ChunkSink: Send {
    /// Called once, before any piece, with the value's size and codec name
    /// (empty when the peer only speaks the v1 unary deref).
    fn begin(&mut self, total_len: u64, type_tag: &str) -> Result<(), PeerError>;
    /// One contiguous piece; offsets ascend from 0.
    fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<(), PeerError>;
}

/// Collects a value into memory.
#[derive(Debug, Default)]
pub struct VecSink {
    /// The bytes received.
    pub bytes: Vec<u8>,
    /// The value's codec name.
    pub type_tag: String,
}

impl ChunkSink for VecSink {
    fn begin(&mut self, total_len: u64, type_tag: &str) -> Result<(), PeerError> {
        let total_len = usize::try_from(total_len).map_err(|_| {
            PeerError::Encode(format!(
                "a value of {total_len} bytes does not fit in memory here"
            ))
        })?;
        self.bytes = Vec::new();
        self.bytes.try_reserve_exact(total_len).map_err(|_| {
            PeerError::Encode(format!(
                "cannot allocate {total_len} bytes for a session ref"
            ))
        })?;
        self.type_tag = type_tag.to_owned();
        Ok(())
    }

    fn write(&mut self, _offset: u64, bytes: &[u8]) -> Result<(), PeerError> {
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }
}

/// The error for a peer that speaks the other protocol than `address` asks for.
fn protocol_mismatch(err: &(dyn std::error::Error + 'static), address: &str) -> Option<PeerError> {
    let mismatch = tls_connector::ProtocolMismatch::find(err)?;
    let host_port = address
        .split_once("://")
        .map_or(address, |(_, rest)| rest)
        .trim_end_matches('/');
    Some(PeerError::Tls(match mismatch {
        tls_connector::ProtocolMismatch::SpeaksTls => format!(
            "the peer at {address} speaks TLS: use https://{host_port} and a CA \
             (ClientTls.from_pem / --tls-ca)"
        ),
        tls_connector::ProtocolMismatch::NotTls => format!(
            "the peer at {address} does not speak TLS (it answered in plaintext): use \
             http://{host_port} and no CA (drop tls= / --tls-ca)"
        ),
    }))
}

/// "outer: inner: root" — tonic's top-level transport errors say only "transport error".
/// True when a local call failure happened before the request could reach
/// the peer: the connection could not be made, or the peer refused the HTTP/2
/// stream before processing it (RFC 9113 §8.7: REFUSED_STREAM is safe to retry).
fn never_delivered(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(err) = cause {
        if err.is::<tonic::ConnectError>() {
            return true;
        }
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            if h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return true;
            }
        }
        // hyper: the request was dropped before the connection ever sent it
        // (the connection closed while it was queued).
        if err
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return true;
        }
        cause = err.source();
    }
    false
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
