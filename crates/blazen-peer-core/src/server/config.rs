//! What a server is told: [`ServerConfig`], its documented defaults, and the
//! checks that refuse settings which cannot work before anything binds.
//!
//! Validation lives with the settings so that every way of starting a server
//! (the binding, tests, [`RunningServer::start`](super::RunningServer::start))
//! refuses the same things with the same words.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::limits::{
    DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_IDLE_CONNECTION_TIMEOUT, DEFAULT_MAX_BUFFERED_REQUEST_BYTES,
    DEFAULT_MAX_CONCURRENT_STREAMS, DEFAULT_MAX_CONNECTIONS, DEFAULT_REQUEST_BODY_TIMEOUT,
};
use super::upload::DEFAULT_MAX_UPLOAD_BYTES;
use crate::auth::bearer;
use crate::error::PeerError;
use crate::event_stream::DEFAULT_STREAM_BUFFER;
use crate::limits::{DEFAULT_MAX_JSON_DEPTH, MAX_JSON_DEPTH_CEILING};
use crate::observer::RunObserver;
use crate::registry::StepRegistry;
use crate::session_refs::SessionRefRegistry;
use crate::tls::ServerTls;
use crate::transport::{
    check_max_message_bytes, DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_KEEPALIVE_TIMEOUT,
    DEFAULT_MAX_MESSAGE_BYTES,
};

/// Default bound on runs in progress at once; beyond it calls get RESOURCE_EXHAUSTED.
pub const DEFAULT_MAX_CONCURRENT_RUNS: usize = 1024;
/// Run deadline when a request carries no `timeout_secs`.
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(300);

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
    /// Placement labels (`region=eu-west`, `gpu=h100`) that `ListSteps`
    /// reports, for callers that route on them.
    pub labels: BTreeMap<String, String>,
    /// Bytes of uploaded values (`PutSessionRef`) held at once, stored or
    /// still arriving; an upload past it is refused before its bytes are sent.
    pub max_upload_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            default_timeout: DEFAULT_RUN_TIMEOUT,
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
            labels: BTreeMap::new(),
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
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
        check_max_message_bytes(self.max_message_bytes)?;
        self.validate_transport()?;
        for (name, value) in &self.labels {
            if name.is_empty() || name.contains('=') || value.contains('=') {
                return Err(PeerError::Validation(format!(
                    "label `{name}={value}`: a label needs a non-empty name, and neither name \
                     nor value may contain `=`"
                )));
            }
        }
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
