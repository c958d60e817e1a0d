//! Payloads of `PutSessionRef`, the upload of a value into a peer's session
//! refs (docs/wire.md, "New methods"): a header, the peer's answer sizing the
//! pieces, the pieces, and the key the value is stored under.
//!
//! A new method's payloads, so their fields are ours to choose; they keep the
//! envelope version first, like every payload, and may grow an extension block.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{check_version, RemoteRefDescriptor, ENVELOPE_VERSION};
use crate::error::PeerError;

/// First message of an upload: what is coming and who it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRefHeader {
    /// Payload version.
    pub envelope_version: u32,
    /// Size of the whole value.
    pub total_len: u64,
    /// Codec name of the value.
    pub type_tag: String,
    /// `UNTIL_PARENT_FINISH` (needs `parent_run_id`) or `UNTIL_EXPLICIT_DROP`.
    pub lifetime: String,
    /// The caller's parent run, which owns an `UNTIL_PARENT_FINISH` upload.
    pub parent_run_id: Option<Uuid>,
    /// Largest message the client sends, so pieces fit both sides.
    pub max_message_bytes: u64,
}

/// The peer accepted the header; pieces may be at most `chunk_bytes` long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRefReady {
    /// Payload version.
    pub envelope_version: u32,
    /// Bytes of value per piece.
    pub chunk_bytes: u64,
}

/// The value is stored: its key and descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRefDone {
    /// Payload version.
    pub envelope_version: u32,
    /// Key of the stored ref.
    pub ref_uuid: Uuid,
    /// Its descriptor, as `remote_refs` would list it.
    pub descriptor: RemoteRefDescriptor,
}

/// One piece of an uploaded value, borrowing its bytes from the message.
#[derive(Debug, Serialize, Deserialize)]
pub struct PutRefPiece<'a> {
    /// Payload version.
    pub envelope_version: u32,
    /// Where `bytes` starts in the value.
    pub offset: u64,
    /// This piece.
    #[serde(with = "serde_bytes")]
    #[serde(borrow)]
    pub bytes: &'a [u8],
}

impl<'a> PutRefPiece<'a> {
    /// Encodes a piece straight from the caller's buffer: the one copy an
    /// upload makes on the sending side.
    pub fn encode(offset: u64, bytes: &[u8]) -> Result<Vec<u8>, PeerError> {
        let piece = PutRefPiece {
            envelope_version: ENVELOPE_VERSION,
            offset,
            bytes,
        };
        postcard::to_stdvec(&piece)
            .map_err(|err| PeerError::Encode(format!("cannot encode an upload piece: {err}")))
    }

    /// A piece's payload up to its value bytes: followed by the `len` bytes
    /// themselves, it is exactly what [`PutRefPiece::encode`] writes.
    pub fn encode_head(offset: u64, len: usize) -> Result<Vec<u8>, PeerError> {
        // serde_bytes writes a slice's length as the same varint as this u64.
        postcard::to_stdvec(&(ENVELOPE_VERSION, offset, len as u64))
            .map_err(|err| PeerError::Encode(format!("cannot encode an upload piece: {err}")))
    }

    /// Decodes a piece without copying its bytes out of the message.
    pub fn decode(payload: &'a [u8]) -> Result<Self, PeerError> {
        check_version(payload)?;
        postcard::take_from_bytes::<PutRefPiece<'a>>(payload)
            .map(|(piece, _extensions)| piece)
            .map_err(|err| {
                PeerError::Encode(format!("payload does not decode as PutRefPiece: {err}"))
            })
    }
}

/// Bytes a piece's own fields and framing take besides its value bytes:
/// version, offset, length prefix, and the protobuf field around the payload.
pub const PIECE_OVERHEAD: usize = 64;
