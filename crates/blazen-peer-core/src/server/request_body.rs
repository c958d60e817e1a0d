//! Request bodies held to what arrived, to a global budget and to a deadline.
//!
//! tonic's decoder reserves a message's declared length as soon as it reads
//! the 5-byte gRPC frame header (`codec/decode.rs`: `buf.reserve(len)`), so a
//! client declaring 63 MiB and sending ten bytes pinned 63 MiB per stream.
//! [`BoundedBody`] sits between hyper and tonic and holds each message back
//! (as the chunks hyper produced, without copying) until all of it arrived;
//! only then does tonic see the header, reserve the length, and copy the
//! chunks in. So memory follows the bytes received, which are counted against
//! one budget shared by every connection ([`RequestBudget`]); a chunk that
//! does not fit fails its call as busy (nothing ran) and is dropped. A body
//! that pauses longer than the body timeout fails its call too, freeing what
//! it held.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Bytes, Frame};
use tokio::time::{Instant, Sleep};
use tonic::Status;

use super::log_throttle::{more, Throttle};
use super::metrics::{Refusal, ServerCounters};
use crate::error::PeerError;
use crate::log_target::TARGET;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// gRPC frame header: a compression flag and a 4-byte big-endian length.
const GRPC_HEADER_BYTES: usize = 5;

/// Request bytes held by all the bodies of a server, against one cap.
pub(crate) struct RequestBudget {
    node_id: Arc<str>,
    used: AtomicUsize,
    limit: usize,
    timeout: Duration,
    max_message_bytes: usize,
    refusals: Throttle,
    stalls: Throttle,
    counters: Option<Arc<ServerCounters>>,
}

impl RequestBudget {
    pub(crate) fn new(
        node_id: Arc<str>,
        limit: usize,
        timeout: Duration,
        max_message_bytes: usize,
    ) -> Self {
        Self {
            node_id,
            used: AtomicUsize::new(0),
            limit,
            timeout,
            max_message_bytes,
            refusals: Throttle::new(),
            stalls: Throttle::new(),
            counters: None,
        }
    }

    /// Counts each refused call in the server's metrics.
    pub(crate) fn counting_refusals(self, counters: Arc<ServerCounters>) -> Self {
        Self {
            counters: Some(counters),
            ..self
        }
    }

    /// Bytes held right now (for tests and logs).
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn try_take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }

    fn refusal(&self, chunk: usize, remote: Option<SocketAddr>) -> Status {
        if let Some(counters) = &self.counters {
            counters.refused(Refusal::Busy);
        }
        if let Some(held_back) = self.refusals.admit() {
            let used = self.used.load(Ordering::Relaxed);
            log::warn!(
                target: TARGET,
                node_id = &*self.node_id, reason = "max_buffered_request_bytes";
                "refused a call from {}: request bodies already hold {used} of the {} bytes \
                 allowed (max_buffered_request_bytes){}",
                remote.map_or("an unknown address".into(), |addr| addr.to_string()),
                self.limit,
                more(held_back)
            );
        }
        PeerError::Busy(format!(
            "peer `{}` is holding its maximum of {} bytes of incoming request bodies \
             (max_buffered_request_bytes), so the {chunk} bytes just received for this call \
             were dropped and nothing ran; retry later or on another peer, or raise \
             max_buffered_request_bytes",
            self.node_id, self.limit
        ))
        .to_status()
    }

    fn stalled(&self, remote: Option<SocketAddr>) -> Status {
        let secs = self.timeout.as_secs_f64();
        if let Some(held_back) = self.stalls.admit() {
            log::warn!(
                target: TARGET,
                node_id = &*self.node_id, reason = "request_body_timeout";
                "dropped a call from {}: its request body sent nothing for {secs} s \
                 (request_body_timeout_secs){}",
                remote.map_or("an unknown address".into(), |addr| addr.to_string()),
                more(held_back)
            );
        }
        Status::deadline_exceeded(format!(
            "peer `{}` stopped waiting for this call's request: its body sent nothing for \
             {secs} s (request_body_timeout_secs); nothing ran",
            self.node_id
        ))
    }
}

/// Bytes a body holds against the budget; given back when dropped.
struct Charge {
    budget: Arc<RequestBudget>,
    bytes: usize,
}

impl Charge {
    fn release(&mut self, bytes: usize) {
        let bytes = bytes.min(self.bytes);
        self.bytes -= bytes;
        self.budget.give_back(bytes);
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

/// Where the parser is in the stream of gRPC messages.
enum Parse {
    /// Reading a frame header; `have` of its bytes arrived.
    Header {
        have: usize,
        bytes: [u8; GRPC_HEADER_BYTES],
    },
    /// `left` bytes of the current message are still to come.
    Body { left: usize },
    /// A message over `max_message_bytes`: passed on at once, for tonic to
    /// refuse from its header before reserving anything.
    Passthrough,
}

/// A request body that tonic only sees in whole messages; see the module docs.
pub(crate) struct BoundedBody<B> {
    inner: B,
    remote: Option<SocketAddr>,
    charge: Charge,
    parse: Parse,
    /// Chunks of the message still arriving.
    pending: VecDeque<Bytes>,
    /// Chunks of whole messages, for tonic.
    ready: VecDeque<Bytes>,
    /// Bytes handed to tonic and still charged; tonic decodes them before it
    /// polls again, so they are given back at the next poll.
    delivered: usize,
    trailers: Option<http::HeaderMap>,
    ended: bool,
    /// When the last chunk arrived (or the body began).
    last_progress: Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> BoundedBody<B> {
    pub(crate) fn new(inner: B, budget: Arc<RequestBudget>, remote: Option<SocketAddr>) -> Self {
        Self {
            inner,
            remote,
            charge: Charge { budget, bytes: 0 },
            parse: Parse::Header {
                have: 0,
                bytes: [0; GRPC_HEADER_BYTES],
            },
            pending: VecDeque::new(),
            ready: VecDeque::new(),
            delivered: 0,
            trailers: None,
            ended: false,
            last_progress: Instant::now(),
            timer: None,
        }
    }

    /// Files a chunk: into the message it belongs to, and whole messages into `ready`.
    fn absorb(&mut self, mut chunk: Bytes) {
        while !chunk.is_empty() {
            match &mut self.parse {
                Parse::Passthrough => {
                    self.ready.push_back(chunk);
                    return;
                }
                Parse::Header { have, bytes } => {
                    let take = (GRPC_HEADER_BYTES - *have).min(chunk.len());
                    bytes[*have..*have + take].copy_from_slice(&chunk[..take]);
                    *have += take;
                    if *have < GRPC_HEADER_BYTES {
                        self.pending.push_back(chunk);
                        return;
                    }
                    let declared =
                        u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
                    if declared > self.charge.budget.max_message_bytes {
                        self.parse = Parse::Passthrough;
                        self.ready.extend(self.pending.drain(..));
                        continue;
                    }
                    // This chunk holds the header's last `take` bytes, then the message.
                    self.take_message_bytes(&mut chunk, take + declared);
                }
                Parse::Body { left } => {
                    let left = *left;
                    self.take_message_bytes(&mut chunk, left);
                }
            }
        }
    }

    /// Moves up to `left` bytes of the current message from `chunk` to `pending`.
    fn take_message_bytes(&mut self, chunk: &mut Bytes, left: usize) {
        let n = left.min(chunk.len());
        self.pending.push_back(chunk.split_to(n));
        if n == left {
            self.ready.extend(self.pending.drain(..));
            self.parse = Parse::Header {
                have: 0,
                bytes: [0; GRPC_HEADER_BYTES],
            };
        } else {
            self.parse = Parse::Body { left: left - n };
        }
    }

    /// Whatever is held goes to tonic as it is: at the end of the body, a
    /// truncated message is tonic's to report.
    fn flush(&mut self) {
        self.ready.extend(self.pending.drain(..));
    }

    /// Polls the stall timer; `true` once the body has been silent too long.
    fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = self.last_progress + self.charge.budget.timeout;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx).is_ready()
    }
}

impl<B> Body for BoundedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(chunk) = this.ready.pop_front() {
                this.delivered += chunk.len();
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if this.delivered > 0 {
                this.charge.release(std::mem::take(&mut this.delivered));
            }
            if let Some(trailers) = this.trailers.take() {
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    this.last_progress = Instant::now();
                    match frame.into_data() {
                        Ok(chunk) => {
                            let size = chunk.len();
                            if !this.charge.budget.try_take(size) {
                                this.ended = true;
                                this.pending.clear();
                                this.ready.clear();
                                let status = this.charge.budget.refusal(size, this.remote);
                                return Poll::Ready(Some(Err(status.into())));
                            }
                            this.charge.bytes += size;
                            this.absorb(chunk);
                        }
                        Err(frame) => {
                            if let Ok(trailers) = frame.into_trailers() {
                                this.trailers = Some(trailers);
                            }
                            this.flush();
                            this.ended = true;
                        }
                    }
                }
                Poll::Ready(Some(Err(err))) => {
                    this.ended = true;
                    this.pending.clear();
                    return Poll::Ready(Some(Err(err.into())));
                }
                Poll::Ready(None) => {
                    this.flush();
                    this.ended = true;
                }
                Poll::Pending => {
                    if this.stalled(cx) {
                        this.ended = true;
                        this.pending.clear();
                        let status = this.charge.budget.stalled(this.remote);
                        return Poll::Ready(Some(Err(status.into())));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let nothing_held =
            self.ready.is_empty() && self.pending.is_empty() && self.trailers.is_none();
        nothing_held && (self.ended || self.inner.is_end_stream())
    }
}

/// Why a body could not be read whole.
pub(crate) enum WholeBodyError {
    /// It is longer than the limit.
    TooLarge,
    /// The budget is spent: busy, nothing ran.
    Refused(Status),
    /// It paused longer than the body timeout.
    Stalled(Status),
    /// The connection failed while it arrived.
    Read(String),
}

/// A body read whole, charged against the budget until dropped.
pub(crate) struct WholeBody {
    bytes: Vec<u8>,
    _charge: Charge,
}

impl WholeBody {
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Reads a (non-gRPC) body whole, up to `limit` bytes, each chunk counted
/// against the budget as it arrives and under the same body timeout as
/// [`BoundedBody`].
pub(crate) async fn collect_whole<B>(
    mut body: B,
    budget: &Arc<RequestBudget>,
    remote: Option<SocketAddr>,
    limit: usize,
) -> Result<WholeBody, WholeBodyError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut whole = WholeBody {
        bytes: Vec::new(),
        _charge: Charge {
            budget: budget.clone(),
            bytes: 0,
        },
    };
    loop {
        let next = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx));
        let frame = match tokio::time::timeout(budget.timeout, next).await {
            Err(_) => return Err(WholeBodyError::Stalled(budget.stalled(remote))),
            Ok(None) => return Ok(whole),
            Ok(Some(Err(err))) => return Err(WholeBodyError::Read(err.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        if whole.bytes.len() + chunk.len() > limit {
            return Err(WholeBodyError::TooLarge);
        }
        if !budget.try_take(chunk.len()) {
            return Err(WholeBodyError::Refused(budget.refusal(chunk.len(), remote)));
        }
        whole._charge.bytes += chunk.len();
        whole.bytes.extend_from_slice(&chunk);
    }
}

#[cfg(test)]
mod tests;
