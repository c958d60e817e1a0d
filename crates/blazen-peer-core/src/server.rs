//! The gRPC peer service and a server that runs it on a bound listener.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::context::RunContext;
use crate::envelope::{
    self, DerefRequest, DerefResponse, Envelope, ReleaseRequest, ReleaseResponse,
    SubWorkflowRequest, SubWorkflowResponse, WorkflowFailure, ENVELOPE_VERSION,
};
use crate::error::PeerError;
use crate::event::Event;
use crate::pb::blazen_peer_server::{BlazenPeer, BlazenPeerServer};
use crate::pb::{PostcardRequest, PostcardResponse};
use crate::registry::StepRegistry;
use crate::runner::run_workflow;
use crate::session_refs::SessionRefRegistry;

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
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            default_timeout: Duration::from_secs(300),
            registry: StepRegistry::global().clone(),
            session_refs: Arc::new(SessionRefRegistry::default()),
            host: None,
        }
    }
}

/// The `blazen.peer.v1.BlazenPeer` service.
#[derive(Clone)]
pub struct PeerService {
    node_id: Arc<str>,
    config: ServerConfig,
}

impl PeerService {
    /// A service answering as `node_id`.
    pub fn new(node_id: impl Into<Arc<str>>, config: ServerConfig) -> Self {
        Self {
            node_id: node_id.into(),
            config,
        }
    }

    /// Runs one request to completion; `Err` only for protocol-level refusals.
    pub async fn invoke(&self, payload: &[u8]) -> Result<Envelope<SubWorkflowResponse>, PeerError> {
        let request = Envelope::<SubWorkflowRequest>::decode(payload)?.body;
        serde_json::from_slice::<serde::de::IgnoredAny>(&request.input_json).map_err(|err| {
            PeerError::Encode(format!("input_json is not valid UTF-8 JSON: {err}"))
        })?;
        let node = format!("`{}`", self.node_id);
        let steps =
            self.config
                .registry
                .resolve(&request.workflow_name, &request.step_ids, &node)?;
        let ctx = RunContext::new(
            self.node_id.clone(),
            request.workflow_name,
            self.config.host.clone(),
        );
        let deadline = request
            .timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(self.config.default_timeout);
        let start = Event::start_from_json(request.input_json);
        let outcome = run_workflow(&steps, ctx.clone(), start, Some(deadline)).await;
        Ok(self.respond(&ctx, outcome))
    }

    fn respond(
        &self,
        ctx: &RunContext,
        outcome: Result<Event, Box<WorkflowFailure>>,
    ) -> Envelope<SubWorkflowResponse> {
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
        let mut response = Envelope::new(SubWorkflowResponse {
            envelope_version: ENVELOPE_VERSION,
            ..Default::default()
        });
        match result {
            Ok(result_json) => {
                response.body.result_json = Some(result_json.into());
                response.body.state_json = ctx
                    .exported_state()
                    .into_iter()
                    .map(|(key, value)| (key, value.into()))
                    .collect();
            }
            Err(failure) => {
                response.body.error = Some(failure.message.clone());
                // Encoding a struct of strings into a Vec cannot fail.
                let _ = response.extensions.insert(failure.as_ref());
            }
        }
        response
    }
}

fn reply<T: serde::Serialize + serde::de::DeserializeOwned>(
    body: Envelope<T>,
) -> Result<Response<PostcardResponse>, Status> {
    let postcard_payload = body.encode().map_err(|err| err.to_status())?;
    Ok(Response::new(PostcardResponse { postcard_payload }))
}

#[tonic::async_trait]
impl BlazenPeer for PeerService {
    async fn invoke_sub_workflow(
        &self,
        request: Request<PostcardRequest>,
    ) -> Result<Response<PostcardResponse>, Status> {
        let payload = request.into_inner().postcard_payload;
        let response = self.invoke(&payload).await.map_err(|err| err.to_status())?;
        reply(response)
    }

    type StreamSubWorkflowEventsStream =
        futures::stream::BoxStream<'static, Result<PostcardResponse, Status>>;

    async fn stream_sub_workflow_events(
        &self,
        _request: Request<PostcardRequest>,
    ) -> Result<Response<Self::StreamSubWorkflowEventsStream>, Status> {
        Err(Status::unimplemented(
            "StreamSubWorkflowEvents is not served by this peer version; use InvokeSubWorkflow",
        ))
    }

    async fn deref_session_ref(
        &self,
        request: Request<PostcardRequest>,
    ) -> Result<Response<PostcardResponse>, Status> {
        let payload = request.into_inner().postcard_payload;
        let key = Envelope::<DerefRequest>::decode(&payload)
            .map_err(|err| err.to_status())?
            .body
            .ref_uuid;
        let entry = self.config.session_refs.get(&key).ok_or_else(|| {
            PeerError::RefNotFound(format!(
                "session ref {key} not found on node `{}` (released, expired, or never created here)",
                self.node_id
            ))
            .to_status()
        })?;
        reply(Envelope::new(DerefResponse {
            envelope_version: ENVELOPE_VERSION,
            payload: entry.bytes.to_vec(),
        }))
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
        reply(Envelope::new(ReleaseResponse {
            envelope_version: ENVELOPE_VERSION,
            released: self.config.session_refs.remove(&key),
        }))
    }
}

/// A server serving in the background until [`RunningServer::stop`].
pub struct RunningServer {
    local_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl RunningServer {
    /// Binds `addr` (port 0 picks a free port) and starts serving `service`.
    pub async fn start(service: PeerService, addr: SocketAddr) -> Result<Self, PeerError> {
        let listener = TcpListener::bind(addr).await.map_err(|err| {
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
        // Without TCP_NODELAY, Nagle's algorithm and delayed ACKs add ~40 ms to small replies.
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let router =
            tonic::transport::Server::builder().add_service(BlazenPeerServer::new(service));
        let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
            let _ = shutdown_rx.await;
        }));
        Ok(Self {
            local_addr,
            shutdown: Some(shutdown_tx),
            task: Some(task),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, waits for in-flight calls, and returns once the server is down.
    pub async fn stop(&mut self) -> Result<(), PeerError> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        match self.task.take() {
            Some(task) => match task.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(err)) => Err(PeerError::transport(format!(
                    "server on {} failed: {err}",
                    self.local_addr
                ))),
                Err(join) => Err(PeerError::transport(format!(
                    "server task on {} ended abnormally: {join}",
                    self.local_addr
                ))),
            },
            None => Ok(()),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}
