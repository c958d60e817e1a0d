//! The calls of a connected client: runs (unary and streaming), ref
//! release and parent leases, the step list and health, and how each request
//! is built (node id, token, deadline, trace) and each reply decoded.
//!
//! Every method clones the channel's client, so calls from clones of one
//! [`PeerClient`] run concurrently over the same connection.

use std::time::Duration;

use tonic::Request;
use uuid::Uuid;

use super::stream::EventReceiver;
use super::PeerClient;
use crate::envelope::{
    Envelope, ParentRunRequest, ParentRunResponse, ReleaseRequest, ReleaseResponse, StepsRequest,
    StepsResponse, SubWorkflowRequest, SubWorkflowResponse, ENVELOPE_VERSION,
};
use crate::error::PeerError;
use crate::pb::PostcardRequest;
use crate::trace::TraceContext;
use crate::transport::NODE_ID_HEADER;

/// Longest run deadline the client mirrors as a gRPC deadline (ten years).
const MAX_CLIENT_DEADLINE_SECS: u64 = 10 * 365 * 24 * 3600;

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

impl PeerClient {
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

    /// The steps and workflows the peer can run. A v1-only peer (no
    /// `ListSteps`) gives [`PeerError::Unsupported`].
    /// The answer's extension block carries the step limits and the peer's
    /// labels, when it has any (a v1 peer's has neither).
    pub async fn list_steps(&self) -> Result<Envelope<StepsResponse>, PeerError> {
        let payload = Envelope::new(StepsRequest {
            envelope_version: ENVELOPE_VERSION,
        })
        .encode()?;
        let mut grpc = self.grpc.clone();
        let reply = grpc
            .list_steps(self.request(payload, None))
            .await
            .map_err(|status| self.status_error(Some("ListSteps"), &status))?;
        self.decode::<StepsResponse>(&reply.into_inner().postcard_payload)
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

    pub(super) fn request(
        &self,
        postcard_payload: Vec<u8>,
        deadline: Option<Duration>,
    ) -> Request<PostcardRequest> {
        let message = PostcardRequest {
            postcard_payload: postcard_payload.into(),
        };
        self.with_metadata(message, deadline)
    }

    /// `message` (one payload, or a stream of them) with the node id, the
    /// token and the deadline every call carries.
    pub(super) fn with_metadata<T>(&self, message: T, deadline: Option<Duration>) -> Request<T> {
        let mut request = Request::new(message);
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

    pub(super) fn decode<T: serde::Serialize + serde::de::DeserializeOwned>(
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
}
