//! Connecting: [`ClientConfig`] and [`PeerClient::connect`], which checks the
//! address, scheme, TLS config and token, tunes the HTTP/2 channel, and dials
//! through our own connector (plaintext or TLS).
//!
//! Connecting is eager, so a peer that is not listening, speaks the other
//! protocol or fails the handshake is reported here, by name, rather than on
//! the first call.

use std::time::Duration;

use tonic::transport::Endpoint;

use super::errors::{error_chain, protocol_mismatch};
use super::PeerClient;
use crate::auth::bearer;
use crate::error::PeerError;
use crate::pb::blazen_peer_client::BlazenPeerClient;
use crate::tls::{handshake_failure, ClientTls};
use crate::tls_connector;
use crate::transport::{
    check_max_message_bytes, CONNECTION_WINDOW_BYTES, DEFAULT_KEEPALIVE_INTERVAL,
    DEFAULT_KEEPALIVE_TIMEOUT, DEFAULT_MAX_MESSAGE_BYTES, MAX_FRAME_BYTES, STREAM_WINDOW_BYTES,
};

/// Default time to establish the connection before `connect` gives up.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Locally reset streams whose late frames h2 ignores quietly (see `connect`).
const CANCELLED_STREAMS_REMEMBERED: usize = 4096;

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
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            deadline_margin: Duration::from_secs(5),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            token: None,
            tls: None,
            keepalive_interval: Some(DEFAULT_KEEPALIVE_INTERVAL),
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
        }
    }
}

impl PeerClient {
    /// Connects eagerly, so a peer that is not listening fails here.
    pub async fn connect(
        address: &str,
        node_id: &str,
        config: ClientConfig,
    ) -> Result<Self, PeerError> {
        check_max_message_bytes(config.max_message_bytes)?;
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
}
