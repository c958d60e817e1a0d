//! A client of the peer service over one multiplexed HTTP/2 channel.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::Request;
use uuid::Uuid;

use crate::envelope::{
    DerefRequest, DerefResponse, Envelope, ReleaseRequest, ReleaseResponse, SubWorkflowRequest,
    SubWorkflowResponse, ENVELOPE_VERSION,
};
use crate::error::PeerError;
use crate::pb::blazen_peer_client::BlazenPeerClient;
use crate::pb::PostcardRequest;

/// Metadata key carrying the caller's node id, for the peer's logs.
pub const NODE_ID_HEADER: &str = "x-blazen-node-id";

/// Longest run deadline the client mirrors as a gRPC deadline (ten years).
const MAX_CLIENT_DEADLINE_SECS: u64 = 10 * 365 * 24 * 3600;

/// Client settings; `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Bound on establishing the connection.
    pub connect_timeout: Duration,
    /// Extra time past a run's `timeout_secs` before the client gives up on the call,
    /// so a peer that never answers cannot hang the caller.
    pub deadline_margin: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            deadline_margin: Duration::from_secs(5),
        }
    }
}

/// A connected client; clones share the channel.
#[derive(Clone)]
pub struct PeerClient {
    grpc: BlazenPeerClient<Channel>,
    address: String,
    node_id: String,
    node_header: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    config: ClientConfig,
}

impl PeerClient {
    /// Connects eagerly, so a peer that is not listening fails here.
    pub async fn connect(
        address: &str,
        node_id: &str,
        config: ClientConfig,
    ) -> Result<Self, PeerError> {
        if !(address.starts_with("http://") || address.starts_with("https://")) {
            return Err(PeerError::Validation(format!(
                "`{address}` is not a peer address (it has no scheme); use http://HOST:PORT \
                 or https://HOST:PORT"
            )));
        }
        let endpoint = Endpoint::from_shared(address.to_owned())
            .map_err(|err| {
                PeerError::Validation(format!(
                    "`{address}` is not a valid peer address ({err}); use http://HOST:PORT"
                ))
            })?
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true);
        let node_header = node_id.parse().map_err(|_| {
            PeerError::Validation(format!(
                "node_id `{node_id}` must be printable ASCII (it travels as gRPC metadata)"
            ))
        })?;
        let channel = endpoint.connect().await.map_err(|err| {
            PeerError::transport(format!(
                "cannot connect to peer {address}: {}",
                error_chain(&err)
            ))
        })?;
        Ok(Self {
            grpc: BlazenPeerClient::new(channel)
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX),
            address: address.to_owned(),
            node_id: node_id.to_owned(),
            node_header,
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
        // Past MAX_CLIENT_DEADLINE the server's own deadline is the only bound
        // (tonic cannot encode such a grpc-timeout header anyway).
        let deadline = request
            .body
            .timeout_secs
            .filter(|secs| *secs <= MAX_CLIENT_DEADLINE_SECS)
            .map(|secs| Duration::from_secs(secs) + self.config.deadline_margin);
        let payload = request.encode()?;
        let mut grpc = self.grpc.clone();
        let reply = grpc
            .invoke_sub_workflow(self.request(payload, deadline))
            .await
            .map_err(|status| self.status_error(&status))?;
        self.decode(&reply.into_inner().postcard_payload)
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
            .map_err(|status| match status.code() {
                tonic::Code::NotFound => PeerError::RefNotFound(format!(
                    "peer {} does not hold session ref {key}: {}",
                    self.address,
                    status.message()
                )),
                _ => self.status_error(&status),
            })?;
        Ok(self
            .decode::<DerefResponse>(&reply.into_inner().postcard_payload)?
            .body
            .payload)
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
            .map_err(|status| self.status_error(&status))?;
        Ok(self
            .decode::<ReleaseResponse>(&reply.into_inner().postcard_payload)?
            .body
            .released)
    }

    fn request(
        &self,
        postcard_payload: Vec<u8>,
        deadline: Option<Duration>,
    ) -> Request<PostcardRequest> {
        let mut request = Request::new(PostcardRequest { postcard_payload });
        request
            .metadata_mut()
            .insert(NODE_ID_HEADER, self.node_header.clone());
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

    fn status_error(&self, status: &tonic::Status) -> PeerError {
        if status.code() == tonic::Code::Unavailable || status.code() == tonic::Code::Unknown {
            if let Some(source) = std::error::Error::source(status) {
                return PeerError::Transport {
                    message: format!(
                        "call to peer {} failed: {}",
                        self.address,
                        error_chain(source)
                    ),
                    code: Some(status.code() as i32),
                };
            }
        }
        PeerError::from_status(status, &self.address)
    }
}

/// "outer: inner: root" — tonic's top-level transport errors say only "transport error".
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
