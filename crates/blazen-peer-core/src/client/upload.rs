//! Uploading: [`PeerClient::put_ref`] streams a value into the peer's session
//! refs over `PutSessionRef`, in pieces the peer sized to both sides' limits.
//!
//! The value is read in place (a host's buffer behind [`RefPayload`]): a
//! piece is a few header bytes and a `Bytes` slice sharing the value
//! ([`PostcardPiece`]), copied once, by tonic's encoder into its HTTP/2 frame
//! (then by the kernel into the socket). A bounded channel keeps only a few
//! pieces ahead of the network, so an upload of any size costs a few pieces of
//! memory on this side.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use uuid::Uuid;

use super::PeerClient;
use crate::envelope::{
    Envelope, PutRefDone, PutRefHeader, PutRefPiece, PutRefReady, RemoteRefDescriptor,
    ENVELOPE_VERSION, PIECE_OVERHEAD,
};
use crate::error::PeerError;
use crate::piece::{value_slice, PostcardPiece};
use crate::session_refs::{RefLifetime, RefPayload};

/// Pieces an upload may have queued ahead of the network.
const PIECES_IN_FLIGHT: usize = 4;

const METHOD: &str = "PutSessionRef";

/// What an upload asks of the peer besides the value.
#[derive(Debug, Clone)]
pub struct PutOptions {
    /// Codec name of the value.
    pub type_tag: String,
    /// `UntilParentFinish` (needs `parent`) or `UntilExplicitDrop`.
    pub lifetime: RefLifetime,
    /// The caller's parent run, which owns an `UntilParentFinish` upload.
    pub parent: Option<Uuid>,
}

impl PeerClient {
    /// Stores `value` in the peer's session refs; returns its key and descriptor.
    pub async fn put_ref(
        &self,
        value: Arc<dyn RefPayload>,
        options: PutOptions,
    ) -> Result<(Uuid, RemoteRefDescriptor), PeerError> {
        let total = value.bytes().len();
        let header = Envelope::new(PutRefHeader {
            envelope_version: ENVELOPE_VERSION,
            total_len: total as u64,
            type_tag: options.type_tag,
            lifetime: options.lifetime.name().to_owned(),
            parent_run_id: options.parent,
            max_message_bytes: self.config.max_message_bytes as u64,
        })
        .encode()?;
        let (pieces, outbound) = mpsc::channel(PIECES_IN_FLIGHT);
        // The channel is new and has room: the header never waits.
        let _ = pieces.try_send(PostcardPiece::from(header));
        let request = self.with_metadata(ReceiverStream::new(outbound), None);
        let mut grpc = self.grpc.clone();
        let mut replies = grpc
            .put_session_ref(request)
            .await
            .map_err(|status| self.status_error(Some(METHOD), &status))?
            .into_inner();
        let ready = replies
            .message()
            .await
            .map_err(|status| self.status_error(Some(METHOD), &status))?
            .ok_or_else(|| {
                PeerError::transport(format!(
                    "peer {} ended the upload before accepting it",
                    self.address
                ))
            })?;
        let ready = self.decode::<PutRefReady>(&ready.postcard_payload)?.body;
        let chunk = usize::try_from(ready.chunk_bytes)
            .unwrap_or(usize::MAX)
            .min(self.config.max_message_bytes.saturating_sub(PIECE_OVERHEAD))
            .max(1);
        let mut offset = 0;
        while offset < total {
            let end = total.min(offset + chunk);
            let head = PutRefPiece::encode_head(offset as u64, end - offset)?;
            let message = PostcardPiece::new(head, value_slice(&value, offset..end));
            // A closed channel means the call ended: its status below says why.
            if pieces.send(message).await.is_err() {
                break;
            }
            offset = end;
        }
        drop(pieces);
        let done = replies
            .message()
            .await
            .map_err(|status| self.status_error(Some(METHOD), &status))?
            .ok_or_else(|| {
                PeerError::transport(format!(
                    "peer {} ended the upload without storing it",
                    self.address
                ))
            })?;
        let done = self.decode::<PutRefDone>(&done.postcard_payload)?.body;
        Ok((done.ref_uuid, done.descriptor))
    }
}
