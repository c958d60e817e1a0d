//! [`PostcardPiece`]: the message of the value-carrying streams
//! (`DerefSessionRefChunks` replies, `PutSessionRef` requests).
//!
//! On the wire it is `PostcardRequest` / `PostcardResponse` byte for byte: one
//! `bytes postcard_payload = 1`. build.rs gives those two streams this message
//! name, mapped to this type, so that a piece is sent as its postcard header
//! (a few bytes) followed by a slice of the value ([`PostcardPiece::value`],
//! a `Bytes` that shares the stored value) and is copied once, by tonic's
//! encoder, into the frame it sends, instead of first into a payload `Vec`
//! and then into the frame. A received piece has its whole payload in
//! `postcard_payload` and `value` empty.

use std::sync::Arc;

use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, DecodeContext, WireType};
use prost::DecodeError;

use crate::session_refs::RefPayload;

/// One message: `postcard_payload` followed by `value` form field 1.
#[derive(Clone, PartialEq, Eq, Default, Debug)]
pub struct PostcardPiece {
    /// The payload (all of it, when received), or its leading part when sending.
    pub postcard_payload: Bytes,
    /// The rest of the payload when sending a piece of a value; empty when received.
    pub value: Bytes,
}

impl PostcardPiece {
    /// A message whose payload is `head` followed by `value`.
    pub fn new(head: impl Into<Bytes>, value: Bytes) -> Self {
        Self {
            postcard_payload: head.into(),
            value,
        }
    }

    fn payload_len(&self) -> usize {
        self.postcard_payload.len() + self.value.len()
    }
}

impl From<Vec<u8>> for PostcardPiece {
    fn from(payload: Vec<u8>) -> Self {
        Self::new(payload, Bytes::new())
    }
}

impl prost::Message for PostcardPiece {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        let len = self.payload_len();
        if len == 0 {
            return;
        }
        encoding::encode_key(1, WireType::LengthDelimited, buf);
        encoding::encode_varint(len as u64, buf);
        buf.put_slice(&self.postcard_payload);
        buf.put_slice(&self.value);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag == 1 {
            self.value = Bytes::new();
            encoding::bytes::merge(wire_type, &mut self.postcard_payload, buf, ctx)
        } else {
            encoding::skip_field(wire_type, tag, buf, ctx)
        }
    }

    fn encoded_len(&self) -> usize {
        let len = self.payload_len();
        if len == 0 {
            return 0;
        }
        encoding::key_len(1) + encoding::encoded_len_varint(len as u64) + len
    }

    fn clear(&mut self) {
        self.postcard_payload = Bytes::new();
        self.value = Bytes::new();
    }
}

/// `range` of a stored value as `Bytes`, sharing it (no copy).
pub fn value_slice(payload: &Arc<dyn RefPayload>, range: std::ops::Range<usize>) -> Bytes {
    Bytes::from_owner(Shared(payload.clone())).slice(range)
}

struct Shared(Arc<dyn RefPayload>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        self.0.bytes()
    }
}
