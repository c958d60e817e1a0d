//! `DerefSessionRefChunks` read off the HTTP/2 body directly, each piece's
//! value bytes written into the [`ChunkSink`] from the frames hyper received.
//!
//! tonic's `Streaming` copies every DATA frame into its own buffer (growing,
//! and moving, it as a 1 MiB piece arrives) before prost sees a message; for
//! a large value that was two of the receiver's four passes over the bytes.
//! Here the gRPC framing, the one protobuf field and the piece's postcard
//! header (at most a few dozen bytes, gathered into `head`) are parsed as they
//! arrive, and the value bytes go straight from hyper's buffers to the sink.
//!
//! Copies that remain on this side, and why: the kernel's, from the socket
//! into hyper's read buffer (h2 slices frames out of it without copying), and
//! the sink's, from there into the caller's memory (`bytes`, a buffer) — the
//! one copy any receiver makes. The wire is unchanged: the same request,
//! framing, messages and status, so any peer speaking `blazen.peer.v1` serves it.

use std::future::poll_fn;
use std::pin::Pin;

use http::header::{CONTENT_TYPE, TE};
use http::HeaderValue;
use hyper::body::{Body as _, Bytes, Frame};
use tonic::body::Body;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};
use tower::ServiceExt;

use super::deref::ChunkSink;
use crate::envelope::ENVELOPE_VERSION;
use crate::error::PeerError;

const PATH: &str = "/blazen.peer.v1.BlazenPeer/DerefSessionRefChunks";
/// gRPC frame header: a compression flag and a 4-byte big-endian length.
const FRAME_HEADER: usize = 5;
/// Bytes of a piece's head (protobuf tag and length, postcard fields before
/// the value) gathered before giving up on it: a type tag is a short name.
const MAX_HEAD: usize = 4096;

/// Why a chunk stream stopped short of the value.
pub(super) enum ReadError {
    /// The call failed with this status (before or after some pieces).
    Status(Status),
    /// The pieces did not decode, or not in order.
    Piece(String),
    /// Our sink refused a piece.
    Sink(PeerError),
    /// The stream ended cleanly after this many bytes, short of the value.
    Ended(u64),
}

/// A body of one ready-made gRPC message.
struct Once(Option<Bytes>);

impl hyper::body::Body for Once {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Status>>> {
        std::task::Poll::Ready(self.0.take().map(|bytes| Ok(Frame::data(bytes))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }
}

/// The request message `PostcardRequest { postcard_payload }`, gRPC-framed.
fn framed_request(payload: &[u8]) -> Bytes {
    let mut field = Vec::with_capacity(payload.len() + 16);
    if !payload.is_empty() {
        field.push(0x0a);
        put_varint(&mut field, payload.len() as u64);
        field.extend_from_slice(payload);
    }
    let mut framed = Vec::with_capacity(field.len() + FRAME_HEADER);
    framed.push(0);
    framed.extend_from_slice(&(field.len() as u32).to_be_bytes());
    framed.extend_from_slice(&field);
    framed.into()
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A LEB128 varint at `*at` (protobuf's and postcard's); `None` when `buf`
/// ends inside it.
fn varint(buf: &[u8], at: &mut usize) -> Option<Result<u64, String>> {
    let mut value = 0u64;
    for shift in 0..10 {
        let byte = *buf.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << (7 * shift);
        if byte & 0x80 == 0 {
            return Some(Ok(value));
        }
    }
    Some(Err("a varint longer than 10 bytes".into()))
}

/// A piece's fields before its value bytes.
struct Head {
    total_len: u64,
    type_tag: String,
    offset: u64,
    len: usize,
    /// Bytes of the message the head took.
    consumed: usize,
    /// Bytes of the message after the value (extensions), skipped.
    trailing: usize,
}

/// Parses the head of a message of `message_len` bytes from its first bytes;
/// `Ok(None)`: more bytes are needed.
fn parse_head(buf: &[u8], message_len: usize) -> Result<Option<Head>, String> {
    macro_rules! next {
        ($at:expr) => {
            match varint(buf, $at) {
                None => return Ok(None),
                Some(value) => value?,
            }
        };
    }
    let mut at = 0;
    let Some(&key) = buf.first() else {
        return Ok(None);
    };
    if key != 0x0a {
        return Err(format!(
            "a message starting with protobuf key {key:#x}, not field 1"
        ));
    }
    at += 1;
    let payload_len = next!(&mut at) as usize;
    if at.checked_add(payload_len) != Some(message_len) {
        return Err(format!(
            "a message of {message_len} bytes whose payload field holds {payload_len}"
        ));
    }
    let payload_start = at;
    let version = next!(&mut at);
    if version > u64::from(ENVELOPE_VERSION) {
        return Err(PeerError::EnvelopeVersion {
            got: version as u32,
            supported: ENVELOPE_VERSION,
        }
        .to_string());
    }
    let total_len = next!(&mut at);
    let tag_len = next!(&mut at) as usize;
    let tag_end = at.saturating_add(tag_len);
    if tag_end > message_len {
        return Err("a type tag past the end of its message".into());
    }
    let Some(tag) = buf.get(at..tag_end) else {
        return Ok(None);
    };
    let type_tag = std::str::from_utf8(tag)
        .map_err(|err| format!("a type tag that is not UTF-8: {err}"))?
        .to_owned();
    at = tag_end;
    let offset = next!(&mut at);
    let len = next!(&mut at) as usize;
    let used = at - payload_start;
    let trailing = payload_len
        .checked_sub(used)
        .and_then(|rest| rest.checked_sub(len))
        .ok_or_else(|| format!("a piece of {len} bytes longer than its message"))?;
    Ok(Some(Head {
        total_len,
        type_tag,
        offset,
        len,
        consumed: at,
        trailing,
    }))
}

/// Where the reader is in the stream of messages.
enum Stage {
    /// Gathering a 5-byte gRPC frame header into `head`.
    Frame,
    /// Gathering a piece's head; the message is `len` bytes long.
    Head { len: usize },
    /// `left` value bytes to write, at `at`, then `trailing` to skip.
    Value {
        at: u64,
        left: usize,
        trailing: usize,
    },
    /// Bytes of the message to skip.
    Skip { left: usize },
}

/// Reads pieces into a sink, checking order and completeness.
struct Reader<'a> {
    sink: &'a mut dyn ChunkSink,
    max_message_bytes: usize,
    stage: Stage,
    head: Vec<u8>,
    total: Option<u64>,
    expected: u64,
}

impl Reader<'_> {
    fn feed(&mut self, mut data: &[u8]) -> Result<(), ReadError> {
        while !data.is_empty() {
            match self.stage {
                Stage::Frame => {
                    let take = (FRAME_HEADER - self.head.len()).min(data.len());
                    self.head.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.head.len() == FRAME_HEADER {
                        if self.head[0] != 0 {
                            return Err(ReadError::Piece(
                                "a compressed message, which we never asked for".into(),
                            ));
                        }
                        let len = u32::from_be_bytes([
                            self.head[1],
                            self.head[2],
                            self.head[3],
                            self.head[4],
                        ]) as usize;
                        if len > self.max_message_bytes {
                            return Err(ReadError::Piece(format!(
                                "a message of {len} bytes, over our limit of {}",
                                self.max_message_bytes
                            )));
                        }
                        if len == 0 {
                            return Err(ReadError::Piece("an empty message".into()));
                        }
                        self.head.clear();
                        self.stage = Stage::Head { len };
                    }
                }
                Stage::Head { len } => {
                    let room = len.min(MAX_HEAD) - self.head.len();
                    let take = room.min(data.len());
                    self.head.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    match parse_head(&self.head, len).map_err(ReadError::Piece)? {
                        None if self.head.len() >= len.min(MAX_HEAD) => {
                            return Err(ReadError::Piece(format!(
                                "a piece whose head does not fit in {} bytes",
                                len.min(MAX_HEAD)
                            )));
                        }
                        None => {}
                        Some(head) => self.start_piece(head)?,
                    }
                }
                Stage::Value { at, left, trailing } => {
                    let take = left.min(data.len());
                    self.sink
                        .write(at, &data[..take])
                        .map_err(ReadError::Sink)?;
                    data = &data[take..];
                    self.stage = Self::after_value(at + take as u64, left - take, trailing);
                }
                Stage::Skip { left } => {
                    let take = left.min(data.len());
                    data = &data[take..];
                    self.stage = if left == take {
                        Stage::Frame
                    } else {
                        Stage::Skip { left: left - take }
                    };
                }
            }
        }
        Ok(())
    }

    fn after_value(at: u64, left: usize, trailing: usize) -> Stage {
        match (left, trailing) {
            (0, 0) => Stage::Frame,
            (0, left) => Stage::Skip { left },
            (left, trailing) => Stage::Value { at, left, trailing },
        }
    }

    /// Checks a piece's place, then writes the value bytes already in `head`.
    fn start_piece(&mut self, head: Head) -> Result<(), ReadError> {
        if self.total.is_none() {
            self.sink
                .begin(head.total_len, &head.type_tag)
                .map_err(ReadError::Sink)?;
            self.total = Some(head.total_len);
        }
        let end = head.offset.checked_add(head.len as u64);
        if Some(head.total_len) != self.total
            || head.offset != self.expected
            || end.is_none_or(|end| end > head.total_len)
        {
            return Err(ReadError::Piece(format!(
                "out of order (piece at {} of {}, expected {})",
                head.offset, head.total_len, self.expected
            )));
        }
        self.expected = head.offset + head.len as u64;
        let rest = std::mem::take(&mut self.head);
        self.stage = Self::after_value(head.offset, head.len, head.trailing);
        let result = self.feed(&rest[head.consumed..]);
        self.head = rest;
        self.head.clear();
        result
    }

    /// The value's size, once the stream ended between messages.
    fn finished(&self) -> Option<u64> {
        match self.stage {
            Stage::Frame if self.head.is_empty() => self.total,
            _ => None,
        }
    }
}

/// What tonic infers from an HTTP status when a response carries no gRPC status.
fn http_status(status: http::StatusCode) -> Status {
    let code = match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502..=504 => Code::Unavailable,
        _ => Code::Unknown,
    };
    Status::new(code, format!("HTTP status {status} from the peer"))
}

/// Calls `DerefSessionRefChunks` with `payload` and `metadata` and streams
/// the value into `sink`, every byte of it or an error.
pub(super) async fn read_chunks(
    channel: tonic::transport::Channel,
    payload: &[u8],
    metadata: MetadataMap,
    max_message_bytes: usize,
    sink: &mut dyn ChunkSink,
) -> Result<(), ReadError> {
    let mut request = http::Request::new(Body::new(Once(Some(framed_request(payload)))));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = http::Uri::from_static(PATH);
    *request.version_mut() = http::Version::HTTP_2;
    let headers = request.headers_mut();
    *headers = metadata.into_headers();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(TE, HeaderValue::from_static("trailers"));
    let response = channel
        .oneshot(request)
        .await
        .map_err(|err| ReadError::Status(Status::from_error(err.into())))?;
    let (parts, mut body) = response.into_parts();
    if let Some(status) = Status::from_header_map(&parts.headers) {
        if status.code() != Code::Ok {
            return Err(ReadError::Status(status));
        }
    } else if parts.status != http::StatusCode::OK {
        return Err(ReadError::Status(http_status(parts.status)));
    }
    let mut reader = Reader {
        sink,
        max_message_bytes,
        stage: Stage::Frame,
        head: Vec::with_capacity(64),
        total: None,
        expected: 0,
    };
    let mut trailers = None;
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(ReadError::Status)?;
        match frame.into_data() {
            Ok(data) => reader.feed(&data)?,
            Err(frame) => {
                if let Ok(map) = frame.into_trailers() {
                    trailers = Some(map);
                }
            }
        }
    }
    match trailers.as_ref().and_then(Status::from_header_map) {
        Some(status) if status.code() != Code::Ok => return Err(ReadError::Status(status)),
        Some(_) => {}
        None if parts.headers.contains_key("grpc-status") => {}
        None => {
            return Err(ReadError::Status(Status::internal(
                "the peer ended the stream without a gRPC status",
            )))
        }
    }
    match reader.finished() {
        Some(total) if total == reader.expected => Ok(()),
        _ => Err(ReadError::Ended(reader.expected)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::VecSink;
    use crate::envelope::DerefChunk;

    /// The gRPC body a server sends for `value` in pieces of `chunk` bytes,
    /// each payload followed by `extra` (an extension block we skip).
    fn body(value: &[u8], chunk: usize, extra: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (index, piece) in value.chunks(chunk).enumerate() {
            let mut payload = DerefChunk::encode_piece(
                value.len() as u64,
                "bytes",
                (index * chunk) as u64,
                piece,
            )
            .unwrap();
            payload.extend_from_slice(extra);
            out.extend_from_slice(&framed_request(&payload));
        }
        out
    }

    fn read(body: &[u8], split: usize) -> Result<VecSink, ReadError> {
        let mut sink = VecSink::default();
        let mut reader = Reader {
            sink: &mut sink,
            max_message_bytes: 1 << 20,
            stage: Stage::Frame,
            head: Vec::new(),
            total: None,
            expected: 0,
        };
        for part in body.chunks(split) {
            reader.feed(part)?;
        }
        match reader.finished() {
            Some(total) if total == reader.expected => Ok(sink),
            _ => Err(ReadError::Ended(reader.expected)),
        }
    }

    #[test]
    fn pieces_arrive_whole_however_the_frames_split_them() {
        let value: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        for extra in [&b""[..], &b"\x00\x07ext"[..]] {
            let body = body(&value, 1024, extra);
            for split in [1, 2, 3, 5, 7, 64, 1000, 1029, body.len()] {
                let sink = read(&body, split).unwrap_or_else(|_| panic!("split {split}"));
                assert_eq!(sink.bytes, value, "split {split}");
                assert_eq!(sink.type_tag, "bytes");
            }
        }
    }

    #[test]
    fn an_empty_value_is_one_empty_piece() {
        let empty = framed_request(&DerefChunk::encode_piece(0, "", 0, b"").unwrap());
        let sink = read(&empty, 3).ok().unwrap();
        assert!(sink.bytes.is_empty());
        assert!(matches!(read(&[], 3), Err(ReadError::Ended(0))));
    }

    #[test]
    fn pieces_out_of_order_cut_short_or_malformed_are_refused() {
        let value = vec![1u8; 3000];
        let whole = body(&value, 1024, b"");
        let first =
            framed_request(&DerefChunk::encode_piece(3000, "bytes", 0, &value[..1024]).unwrap());
        let skipped = [
            first.clone(),
            framed_request(&DerefChunk::encode_piece(3000, "bytes", 2048, &value[..952]).unwrap()),
        ]
        .concat();
        assert!(
            matches!(read(&skipped, 100), Err(ReadError::Piece(m)) if m.contains("out of order"))
        );
        assert!(matches!(read(&first, 100), Err(ReadError::Ended(1024))));
        assert!(matches!(
            read(&whole[..whole.len() - 10], 100),
            Err(ReadError::Ended(_))
        ));
        let mut compressed = whole.clone();
        compressed[0] = 1;
        assert!(matches!(read(&compressed, 100), Err(ReadError::Piece(_))));
        let mut other_field = whole.clone();
        other_field[FRAME_HEADER] = 0x12;
        assert!(matches!(read(&other_field, 100), Err(ReadError::Piece(_))));
        let past_end =
            framed_request(&DerefChunk::encode_piece(10, "bytes", 0, &value[..20]).unwrap());
        assert!(matches!(read(&past_end, 100), Err(ReadError::Piece(_))));
    }
}
