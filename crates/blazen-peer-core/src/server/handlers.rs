//! The methods of `blazen.peer.v1.BlazenPeer`: each decodes its request,
//! asks the pipeline, the session-ref registry or the step registry, and
//! encodes the reply within the message limit.
//!
//! Kept thin on purpose: what a run does is in `pipeline`, how a large ref is
//! sent is in `deref`, so a handler reads as the protocol describes the method.

use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use super::pipeline::caller_of;
use super::stream_feed::StreamFeed;
use super::{deref, PeerService};
use crate::envelope::{
    ChunkLimit, DerefRequest, DerefResponse, Envelope, ParentRunRequest, ParentRunResponse,
    PeerLabels, ReleaseRequest, ReleaseResponse, StepsRequest, StepsResponse, ENVELOPE_VERSION,
};
use crate::error::PeerError;
use crate::event_stream::EventStream;
use crate::log_target::TARGET;
use crate::pb::blazen_peer_server::BlazenPeer;
use crate::pb::{PostcardRequest, PostcardResponse};
use crate::session_refs::SessionRef;

impl PeerService {
    /// Encodes a reply, refused (RESOURCE_EXHAUSTED) past the message limit;
    /// `what` names it in the refusal.
    pub(super) fn reply<T: serde::Serialize + serde::de::DeserializeOwned>(
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

type ItemStream = futures::stream::BoxStream<'static, Result<PostcardResponse, Status>>;
type PieceStream = futures::stream::BoxStream<'static, Result<crate::piece::PostcardPiece, Status>>;

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
        self.reply(response, "the response")
            .inspect_err(|_| self.config.session_refs.drop_unlearned(&listed))
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

    type DerefSessionRefChunksStream = PieceStream;

    async fn deref_session_ref_chunks(
        &self,
        request: Request<PostcardRequest>,
    ) -> Result<Response<Self::DerefSessionRefChunksStream>, Status> {
        let (_, entry, client_limit) = self.find_ref(&request.into_inner().postcard_payload)?;
        let pieces = deref::pieces(entry, client_limit, self.config.max_message_bytes);
        Ok(Response::new(pieces))
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

    type PutSessionRefStream = ItemStream;

    async fn put_session_ref(
        &self,
        request: Request<Streaming<crate::piece::PostcardPiece>>,
    ) -> Result<Response<Self::PutSessionRefStream>, Status> {
        let replies = self.accept_upload(request.into_inner()).await?;
        Ok(Response::new(Box::pin(replies)))
    }

    async fn list_steps(
        &self,
        request: Request<PostcardRequest>,
    ) -> Result<Response<PostcardResponse>, Status> {
        Envelope::<StepsRequest>::decode(&request.into_inner().postcard_payload)
            .map_err(|err| err.to_status())?;
        let (steps, workflows) = self.config.registry.describe();
        let mut listing = Envelope::new(StepsResponse {
            envelope_version: ENVELOPE_VERSION,
            node_id: self.node_id.to_string(),
            steps,
            workflows,
            draining: self.lifecycle.is_draining(),
        });
        let policies = self.config.registry.policies();
        if !policies.steps.is_empty() {
            listing
                .extensions
                .insert(&policies)
                .map_err(|err| err.to_status())?;
        }
        if !self.config.labels.is_empty() {
            let labels = PeerLabels {
                labels: self.config.labels.clone(),
            };
            listing
                .extensions
                .insert(&labels)
                .map_err(|err| err.to_status())?;
        }
        self.reply(listing, "the step list")
    }
}
