//! The producer behind `DerefSessionRefChunks`: a session ref of any size
//! sent as a stream of pieces, each within both sides' message limit.
//!
//! Pieces are made lazily, as hyper asks for the next, so a slow client
//! slows the producer and a value is never copied whole into memory a second
//! time. A piece is its postcard header plus a `Bytes` slice sharing the
//! stored value ([`PostcardPiece`]): the one copy this side makes is tonic's,
//! from the value into the HTTP/2 frame (then the kernel's, into the socket).

use futures::stream::{BoxStream, StreamExt};
use tonic::Status;

use crate::envelope::{ChunkLimit, DerefChunk};
use crate::piece::{value_slice, PostcardPiece};
use crate::session_refs::SessionRef;

/// Size of the pieces `DerefSessionRefChunks` sends.
pub const CHUNK_BYTES: usize = 1024 * 1024;

/// The pieces of `entry`, each small enough for the client's limit (when it
/// sent one) and `max_message_bytes`.
pub(super) fn pieces(
    entry: SessionRef,
    client_limit: Option<ChunkLimit>,
    max_message_bytes: usize,
) -> BoxStream<'static, Result<PostcardPiece, Status>> {
    let limit = client_limit
        .map(|limit| usize::try_from(limit.max_message_bytes).unwrap_or(usize::MAX))
        .unwrap_or(usize::MAX)
        .min(max_message_bytes);
    // Room for the piece's own fields (version, sizes, offset, tag) and protobuf framing.
    let overhead = 64 + entry.type_tag.len();
    let chunk_bytes = CHUNK_BYTES.min(limit.saturating_sub(overhead)).max(1);
    // Pieces are made as the network takes them: each is a few bytes of
    // header and a slice sharing the stored value, so nothing is copied
    // until tonic encodes it into its frame.
    let len = entry.payload.bytes().len();
    let count = len.div_ceil(chunk_bytes).max(1);
    futures::stream::iter((0..count).map(move |index| {
        let offset = index * chunk_bytes;
        let end = (offset + chunk_bytes).min(len);
        DerefChunk::encode_head(len as u64, &entry.type_tag, offset as u64, end - offset)
            .map(|head| PostcardPiece::new(head, value_slice(&entry.payload, offset..end)))
            .map_err(|err| err.to_status())
    }))
    .boxed()
}
