//! Fetching session refs: the v1 unary [`PeerClient::deref`], and
//! [`PeerClient::deref_into`], which streams a ref of any size into a
//! [`ChunkSink`] in pieces checked for order and completeness.
//!
//! The sink decides where the bytes go ([`VecSink`]: memory; the binding: a
//! Python buffer or file), so a large value need not be held twice.

use uuid::Uuid;

use super::deref_wire::{read_chunks, ReadError};
use super::PeerClient;
use crate::envelope::{ChunkLimit, DerefRequest, DerefResponse, Envelope, ENVELOPE_VERSION};
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
        let (metadata, _, ()) = self.with_metadata((), None).into_parts();
        let read = read_chunks(
            self.channel.clone(),
            &payload,
            metadata,
            self.config.max_message_bytes,
            sink,
        )
        .await;
        match read {
            Ok(()) => Ok(()),
            Err(ReadError::Status(status)) if status.code() == tonic::Code::Unimplemented => {
                let bytes = self.deref(key).await?;
                sink.begin(bytes.len() as u64, "")?;
                sink.write(0, &bytes)
            }
            Err(ReadError::Status(status)) => Err(self.deref_error(key, &status)),
            Err(ReadError::Piece(message)) => Err(PeerError::Encode(format!(
                "peer {} sent session ref {key} in a piece we cannot decode: {message}",
                self.address
            ))),
            Err(ReadError::Sink(err)) => Err(err),
            Err(ReadError::Ended(received)) => Err(PeerError::transport(format!(
                "peer {} ended session ref {key} after {received} bytes, before its end",
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
