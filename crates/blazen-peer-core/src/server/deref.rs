//! The producer behind `DerefSessionRefChunks`: a session ref of any size
//! sent as a stream of pieces, each within both sides' message limit.
//!
//! A bounded channel sits between the producer and the network, so a slow
//! client slows the producer and a value is never copied whole into memory a
//! second time.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::envelope::{ChunkLimit, DerefChunk};
use crate::pb::PostcardResponse;
use crate::session_refs::SessionRef;

/// Size of the pieces `DerefSessionRefChunks` sends.
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// Pieces a deref stream may have queued ahead of the network.
const CHUNKS_IN_FLIGHT: usize = 4;

/// The pieces of `entry`, each small enough for the client's limit (when it
/// sent one) and `max_message_bytes`.
pub(super) fn pieces(
    entry: SessionRef,
    client_limit: Option<ChunkLimit>,
    max_message_bytes: usize,
) -> ReceiverStream<Result<PostcardResponse, Status>> {
    let limit = client_limit
        .map(|limit| usize::try_from(limit.max_message_bytes).unwrap_or(usize::MAX))
        .unwrap_or(usize::MAX)
        .min(max_message_bytes);
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
    ReceiverStream::new(rx)
}
