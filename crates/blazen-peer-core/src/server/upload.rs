//! The receiving end of `PutSessionRef`: a value streamed into this peer's
//! session refs, held against a per-server bound on uploaded bytes.
//!
//! The whole size is reserved against the bound, and the buffer allocated
//! once at that size, when the header arrives: a refusal comes before the
//! caller sends a byte, and memory grows only as pieces land in place. The
//! value is stored only once every byte arrived, so an upload cut off midway
//! leaves nothing behind; its reservation goes with it. A stored upload
//! carries its reservation ([`Uploaded`]), so the bound is given back exactly
//! when the registry, or the last reader, lets the value go.
//!
//! Copies on this side: the kernel's, into hyper's read buffer; tonic's, as
//! its `Streaming` decoder gathers each 1 MiB piece into one buffer (it copies
//! every DATA frame, and the pieces must be whole to decode); and ours, from
//! the piece into the value's buffer. The last is the one any receiver makes;
//! tonic's could go only by reading the HTTP/2 body ourselves, as the client's
//! deref does (client/deref_wire.rs), which for a bidi call here would mean
//! replacing tonic's server dispatch, token check and reply encoding for this
//! method. Fresh memory for the value costs a page fault per 4 KiB besides.

use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use uuid::Uuid;

use super::deref::CHUNK_BYTES;
use super::PeerService;
use crate::envelope::{
    Envelope, PutRefDone, PutRefHeader, PutRefPiece, PutRefReady, ENVELOPE_VERSION, PIECE_OVERHEAD,
};
use crate::error::PeerError;
use crate::pb::PostcardResponse;
use crate::piece::PostcardPiece;
use crate::session_refs::{RefLifetime, RefOwner, RefPayload};

/// Default bound on the bytes of uploaded values a server holds at once
/// (stored, and reserved by uploads still arriving).
pub const DEFAULT_MAX_UPLOAD_BYTES: usize = 4 << 30;

/// What [`PeerService::uploads`] reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UploadUsage {
    /// Bytes of uploaded values held, and reserved by uploads in progress.
    pub bytes_held: u64,
    /// Uploads whose bytes are still arriving.
    pub in_progress: u64,
    /// Bytes those uploads received so far.
    pub bytes_arriving: u64,
}

/// The bytes uploads hold, against `max_upload_bytes`.
#[derive(Debug)]
pub(crate) struct UploadQuota {
    limit: usize,
    held: AtomicUsize,
    in_progress: AtomicUsize,
    arriving: AtomicUsize,
}

impl UploadQuota {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            held: AtomicUsize::new(0),
            in_progress: AtomicUsize::new(0),
            arriving: AtomicUsize::new(0),
        }
    }

    pub(crate) fn usage(&self) -> UploadUsage {
        UploadUsage {
            bytes_held: self.held.load(Ordering::Acquire) as u64,
            in_progress: self.in_progress.load(Ordering::Acquire) as u64,
            bytes_arriving: self.arriving.load(Ordering::Acquire) as u64,
        }
    }

    fn reserve(self: &Arc<Self>, bytes: usize) -> Option<QuotaHold> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .ok()?;
        Some(QuotaHold {
            quota: self.clone(),
            bytes,
        })
    }
}

/// A share of the quota, given back when dropped.
struct QuotaHold {
    quota: Arc<UploadQuota>,
    bytes: usize,
}

impl Drop for QuotaHold {
    fn drop(&mut self) {
        self.quota.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// An upload while its bytes arrive, counted in [`UploadUsage`].
struct Arrival {
    quota: Arc<UploadQuota>,
    received: usize,
}

impl Arrival {
    fn new(quota: Arc<UploadQuota>) -> Self {
        quota.in_progress.fetch_add(1, Ordering::AcqRel);
        Self { quota, received: 0 }
    }

    fn add(&mut self, bytes: usize) {
        self.received += bytes;
        self.quota.arriving.fetch_add(bytes, Ordering::AcqRel);
    }
}

impl Drop for Arrival {
    fn drop(&mut self) {
        self.quota
            .arriving
            .fetch_sub(self.received, Ordering::AcqRel);
        self.quota.in_progress.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A stored upload: its bytes and its share of the quota.
struct Uploaded {
    bytes: Vec<u8>,
    _hold: QuotaHold,
}

impl RefPayload for Uploaded {
    fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// An upload whose header was accepted, waiting for its pieces.
struct Receiving {
    inbound: Streaming<PostcardPiece>,
    buffer: Vec<u8>,
    total: usize,
    hold: QuotaHold,
    arrival: Arrival,
    type_tag: String,
    lifetime: RefLifetime,
    owner: RefOwner,
}

fn invalid(message: String) -> Status {
    PeerError::Encode(message).to_status()
}

/// The lifetimes an upload may have: there is no run for it to die with.
fn upload_lifetime(name: &str, parent: Option<Uuid>) -> Result<RefLifetime, PeerError> {
    match (name, parent) {
        ("UNTIL_PARENT_FINISH", Some(_)) => Ok(RefLifetime::UntilParentFinish),
        ("UNTIL_PARENT_FINISH", None) => Err(PeerError::Validation(
            "an UNTIL_PARENT_FINISH upload needs the caller's parent run; upload inside \
             `async with client.parent_run()`, or ask for UNTIL_EXPLICIT_DROP"
                .into(),
        )),
        ("UNTIL_EXPLICIT_DROP", _) => Ok(RefLifetime::UntilExplicitDrop),
        (other, _) => Err(PeerError::Validation(format!(
            "an upload's lifetime must be UNTIL_PARENT_FINISH or UNTIL_EXPLICIT_DROP, got \
             `{other}` (an upload belongs to no run, so it cannot end with one)"
        ))),
    }
}

impl PeerService {
    /// Reads the header, reserves the value's size and answers `PutRefReady`;
    /// the pieces are then received in a task of their own, which answers
    /// `PutRefDone` once every byte arrived.
    pub(super) async fn accept_upload(
        &self,
        mut inbound: Streaming<PostcardPiece>,
    ) -> Result<ReceiverStream<Result<PostcardResponse, Status>>, Status> {
        if self.lifecycle.is_draining() {
            return Err(PeerError::Unavailable(format!(
                "peer `{}` is shutting down and takes no uploads; upload to another peer",
                self.node_id
            ))
            .to_status());
        }
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| invalid("the upload ended before its header".into()))?;
        let header = Envelope::<PutRefHeader>::decode(&first.postcard_payload)
            .map_err(|err| err.to_status())?
            .body;
        let lifetime =
            upload_lifetime(&header.lifetime, header.parent_run_id).map_err(|e| e.to_status())?;
        let too_large = || {
            PeerError::Quota(format!(
                "an upload of {} bytes would take peer `{}` past its max_upload_bytes of {} \
                 ({} held now); release refs it holds, or raise max_upload_bytes on the peer",
                header.total_len,
                self.node_id,
                self.uploads.limit,
                self.uploads.usage().bytes_held
            ))
            .to_status()
        };
        let total = usize::try_from(header.total_len).map_err(|_| too_large())?;
        let hold = self.uploads.reserve(total).ok_or_else(too_large)?;
        let mut buffer = Vec::new();
        buffer.try_reserve_exact(total).map_err(|_| {
            PeerError::Quota(format!(
                "peer `{}` cannot allocate {total} bytes for an upload",
                self.node_id
            ))
            .to_status()
        })?;
        let limit = usize::try_from(header.max_message_bytes)
            .unwrap_or(usize::MAX)
            .min(self.config.max_message_bytes);
        let chunk_bytes = CHUNK_BYTES.min(limit.saturating_sub(PIECE_OVERHEAD)).max(1);
        let ready = Envelope::new(PutRefReady {
            envelope_version: ENVELOPE_VERSION,
            chunk_bytes: chunk_bytes as u64,
        })
        .encode()
        .map_err(|err| err.to_status())?;
        let receiving = Receiving {
            inbound,
            buffer,
            total,
            hold,
            arrival: Arrival::new(self.uploads.clone()),
            type_tag: header.type_tag,
            lifetime,
            owner: RefOwner {
                run: None,
                parent: header.parent_run_id,
            },
        };
        let (tx, rx) = mpsc::channel(2);
        // The channel is new and has room: the first reply never waits.
        let _ = tx.try_send(Ok(PostcardResponse {
            postcard_payload: ready.into(),
        }));
        let service = self.clone();
        tokio::spawn(async move {
            match service.receive_upload(receiving).await {
                Ok((key, done)) => {
                    // A caller gone before the key reached it can never release it.
                    if tx.send(Ok(done)).await.is_err() {
                        service.config.session_refs.drop_unlearned([&key]);
                    }
                }
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }

    async fn receive_upload(
        &self,
        mut upload: Receiving,
    ) -> Result<(Uuid, PostcardResponse), Status> {
        while let Some(message) = upload.inbound.message().await? {
            let piece =
                PutRefPiece::decode(&message.postcard_payload).map_err(|e| e.to_status())?;
            let at = upload.buffer.len();
            if piece.offset != at as u64 || at + piece.bytes.len() > upload.total {
                return Err(invalid(format!(
                    "an upload piece of {} bytes at offset {} does not follow the {at} bytes \
                     received of the {} announced",
                    piece.bytes.len(),
                    piece.offset,
                    upload.total
                )));
            }
            upload.buffer.extend_from_slice(piece.bytes);
            upload.arrival.add(piece.bytes.len());
        }
        if upload.buffer.len() != upload.total {
            return Err(invalid(format!(
                "the upload ended after {} of its {} bytes; nothing was stored",
                upload.buffer.len(),
                upload.total
            )));
        }
        let payload = Uploaded {
            bytes: upload.buffer,
            _hold: upload.hold,
        };
        let refs = &self.config.session_refs;
        let key = refs.insert(
            Arc::new(payload),
            upload.type_tag,
            upload.lifetime,
            upload.owner,
        );
        let descriptor = refs.descriptor(&key, &self.node_id).ok_or_else(|| {
            PeerError::RefNotFound(format!("uploaded ref {key} was released at once")).to_status()
        })?;
        let done = Envelope::new(PutRefDone {
            envelope_version: ENVELOPE_VERSION,
            ref_uuid: key,
            descriptor,
        })
        .encode()
        .map_err(|err| err.to_status())?;
        let done = PostcardResponse {
            postcard_payload: done.into(),
        };
        Ok((key, done))
    }
}
