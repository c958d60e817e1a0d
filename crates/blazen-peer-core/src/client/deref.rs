//! Fetching session refs: the v1 unary [`PeerClient::deref`], and
//! [`PeerClient::deref_into`], which streams a ref of any size into a
//! [`ChunkSink`] in pieces checked for order and completeness.
//!
//! The sink decides where the bytes go ([`VecSink`]: memory; the binding: a
//! Python buffer or file), so a large value need not be held twice.

use futures::StreamExt;
use uuid::Uuid;

use super::PeerClient;
use crate::envelope::{
    ChunkLimit, DerefChunk, DerefRequest, DerefResponse, Envelope, ENVELOPE_VERSION,
};
use crate::error::PeerError;

impl PeerClient {
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
            .map_err(|status| self.deref_error(key, &status))?;
        Ok(self
            .decode::<DerefResponse>(&reply.into_inner().postcard_payload)?
            .body
            .payload)
    }

    /// Streams a session ref of any size into `sink`, in bounded pieces. Peers
    /// that only serve the v1 unary deref are read with it instead.
    pub async fn deref_into(&self, key: Uuid, sink: &mut dyn ChunkSink) -> Result<(), PeerError> {
        let mut request = Envelope::new(DerefRequest {
            envelope_version: ENVELOPE_VERSION,
            ref_uuid: key,
        });
        request.extensions.insert(&ChunkLimit {
            max_message_bytes: self.config.max_message_bytes as u64,
        })?;
        let payload = request.encode()?;
        let mut grpc = self.grpc.clone();
        let mut stream = match grpc
            .deref_session_ref_chunks(self.request(payload, None))
            .await
        {
            Ok(reply) => reply.into_inner(),
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                let bytes = self.deref(key).await?;
                sink.begin(bytes.len() as u64, "")?;
                return sink.write(0, &bytes);
            }
            Err(status) => return Err(self.deref_error(key, &status)),
        };
        let mut expected_offset = 0u64;
        let mut total = None;
        while let Some(item) = stream.next().await {
            let item = item.map_err(|status| self.deref_error(key, &status))?;
            let chunk = DerefChunk::decode_piece(&item.postcard_payload).map_err(|err| {
                PeerError::Encode(format!(
                    "peer {} sent a piece we cannot decode: {err}",
                    self.address
                ))
            })?;
            if total.is_none() {
                sink.begin(chunk.total_len, chunk.type_tag)?;
                total = Some(chunk.total_len);
            }
            let end = chunk.offset + chunk.bytes.len() as u64;
            if Some(chunk.total_len) != total
                || chunk.offset != expected_offset
                || end > chunk.total_len
            {
                return Err(PeerError::Encode(format!(
                    "peer {} sent session ref {key} out of order (piece at {} of {}, expected {expected_offset})",
                    self.address, chunk.offset, chunk.total_len
                )));
            }
            sink.write(chunk.offset, chunk.bytes)?;
            expected_offset = end;
        }
        match total {
            Some(total) if total == expected_offset => Ok(()),
            _ => Err(PeerError::transport(format!(
                "peer {} ended session ref {key} after {expected_offset} bytes, before its end",
                self.address
            ))),
        }
    }
}

/// Receives a session ref piece by piece.
pub trait ChunkSink: Send {
    /// Called once, before any piece, with the value's size and codec name
    /// (empty when the peer only speaks the v1 unary deref).
    fn begin(&mut self, total_len: u64, type_tag: &str) -> Result<(), PeerError>;
    /// One contiguous piece; offsets ascend from 0.
    fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<(), PeerError>;
}

/// Collects a value into memory.
#[derive(Debug, Default)]
pub struct VecSink {
    /// The bytes received.
    pub bytes: Vec<u8>,
    /// The value's codec name.
    pub type_tag: String,
}

impl ChunkSink for VecSink {
    fn begin(&mut self, total_len: u64, type_tag: &str) -> Result<(), PeerError> {
        let total_len = usize::try_from(total_len).map_err(|_| {
            PeerError::Encode(format!(
                "a value of {total_len} bytes does not fit in memory here"
            ))
        })?;
        self.bytes = Vec::new();
        self.bytes.try_reserve_exact(total_len).map_err(|_| {
            PeerError::Encode(format!(
                "cannot allocate {total_len} bytes for a session ref"
            ))
        })?;
        self.type_tag = type_tag.to_owned();
        Ok(())
    }

    fn write(&mut self, _offset: u64, bytes: &[u8]) -> Result<(), PeerError> {
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }
}
