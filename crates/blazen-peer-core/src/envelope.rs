//! Postcard payloads of `blazen.peer.v1`, byte for byte as docs/wire.md describes.
//!
//! Every payload is `v1 fields ++ [extension block]`. postcard ignores bytes
//! after a struct, so old decoders never see the block; but a struct with
//! extra trailing fields fails on payloads that lack them, even with
//! `#[serde(default)]`. Decoding is therefore explicit and two-part: the v1
//! struct with `take_from_bytes`, then the block only if bytes remain.
//!
//! The block is a postcard `Vec<ExtensionField { tag, value }>`: a decoder skips
//! tags it does not know, so later fields never need another version bump.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use uuid::Uuid;

use crate::error::PeerError;
pub use crate::failure::{FailureKind, NotFoundDetail, WorkflowFailure};
pub use upload::{PutRefDone, PutRefHeader, PutRefPiece, PutRefReady, PIECE_OVERHEAD};

mod upload;

/// The newest payload version this build speaks; older ones are accepted.
pub const ENVELOPE_VERSION: u32 = 1;

/// Reads the envelope version alone: the first field of every payload, one varint.
pub fn peek_version(payload: &[u8]) -> Result<u32, PeerError> {
    if payload.is_empty() {
        return Err(PeerError::Encode(
            "empty payload: expected a postcard envelope starting with its version".into(),
        ));
    }
    postcard::take_from_bytes::<u32>(payload)
        .map(|(version, _)| version)
        .map_err(|err| PeerError::Encode(format!("cannot read the envelope version: {err}")))
}

/// Rejects versions newer than [`ENVELOPE_VERSION`], before anything else is decoded.
pub fn check_version(payload: &[u8]) -> Result<u32, PeerError> {
    let got = peek_version(payload)?;
    if got > ENVELOPE_VERSION {
        return Err(PeerError::EnvelopeVersion {
            got,
            supported: ENVELOPE_VERSION,
        });
    }
    Ok(got)
}

/// One entry of the trailing extension block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ExtensionField {
    tag: u32,
    #[serde(with = "serde_bytes")]
    value: Vec<u8>,
}

/// A typed member of an extension block, identified by its tag.
pub trait Extension: Serialize + DeserializeOwned {
    /// Tag under which the value travels; unique per payload type.
    const TAG: u32;
}

/// The trailing extension block of a payload; empty means "not sent".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    fields: Vec<ExtensionField>,
}

impl Extensions {
    /// True when nothing would be appended to the payload.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Adds or replaces the value for `E::TAG`.
    pub fn insert<E: Extension>(&mut self, value: &E) -> Result<(), PeerError> {
        let bytes = postcard::to_stdvec(value)
            .map_err(|err| PeerError::Encode(format!("extension {}: {err}", E::TAG)))?;
        self.fields.retain(|field| field.tag != E::TAG);
        self.fields.push(ExtensionField {
            tag: E::TAG,
            value: bytes,
        });
        Ok(())
    }

    /// The value for `E::TAG`, if present and decodable by this build.
    pub fn get<E: Extension>(&self) -> Option<E> {
        let field = self.fields.iter().find(|field| field.tag == E::TAG)?;
        postcard::from_bytes(&field.value).ok()
    }

    fn append_to(&self, buf: &mut Vec<u8>) -> Result<(), PeerError> {
        if self.fields.is_empty() {
            return Ok(());
        }
        let block = postcard::to_stdvec(&self.fields)
            .map_err(|err| PeerError::Encode(format!("extension block: {err}")))?;
        buf.extend_from_slice(&block);
        Ok(())
    }

    /// Trailing bytes that do not parse as our block come from some other
    /// peer's extension scheme; like old decoders, we ignore them.
    fn from_trailing(rest: &[u8]) -> Self {
        if rest.is_empty() {
            return Self::default();
        }
        let fields = postcard::from_bytes(rest).unwrap_or_default();
        Self { fields }
    }
}

/// A v1 payload together with its optional extension block.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<T> {
    /// The v1 fields, in the order of docs/wire.md.
    pub body: T,
    /// Appended after the body when non-empty.
    pub extensions: Extensions,
}

impl<T: Serialize + DeserializeOwned> Envelope<T> {
    /// An envelope without extensions.
    pub fn new(body: T) -> Self {
        Self {
            body,
            extensions: Extensions::default(),
        }
    }

    /// Encodes body then extension block.
    pub fn encode(&self) -> Result<Vec<u8>, PeerError> {
        let mut buf = postcard::to_stdvec(&self.body)
            .map_err(|err| PeerError::Encode(format!("cannot encode payload: {err}")))?;
        self.extensions.append_to(&mut buf)?;
        Ok(buf)
    }

    /// Checks the version, then decodes the body and (if bytes remain) the block.
    pub fn decode(payload: &[u8]) -> Result<Self, PeerError> {
        check_version(payload)?;
        let (body, rest) = postcard::take_from_bytes::<T>(payload).map_err(|err| {
            // postcard drops the field's own message (e.g. uuid's "invalid length").
            let detail = match err {
                postcard::Error::SerdeDeCustom => {
                    "a field holds a value its type does not allow (for example a uuid that \
                     is not 16 bytes)"
                        .to_owned()
                }
                other => other.to_string(),
            };
            PeerError::Encode(format!(
                "payload of {} bytes does not decode as {}: {detail}",
                payload.len(),
                short_type_name::<T>()
            ))
        })?;
        Ok(Self {
            body,
            extensions: Extensions::from_trailing(rest),
        })
    }
}

fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

/// Asks a peer to run a sub-workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubWorkflowRequest {
    /// Payload version, [`ENVELOPE_VERSION`] when sent by us.
    pub envelope_version: u32,
    /// Symbolic name of the workflow; also names the declared steps when `step_ids` is empty.
    pub workflow_name: String,
    /// Steps to run, in order; empty means the steps declared for `workflow_name`.
    pub step_ids: Vec<String>,
    /// UTF-8 JSON text of the StartEvent's data.
    #[serde(with = "serde_bytes")]
    pub input_json: Vec<u8>,
    /// Wall-clock bound of the run; `None` takes the server's default.
    pub timeout_secs: Option<u64>,
}

/// Handle of a session ref that stayed on the peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteRefDescriptor {
    /// Node that owns the value.
    pub origin_node_id: String,
    /// Names the codec that turns the bytes back into a value.
    pub type_tag: String,
    /// Creation time on the origin node.
    pub created_at_epoch_ms: u64,
}

/// What a sub-workflow run produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SubWorkflowResponse {
    /// Payload version.
    pub envelope_version: u32,
    /// Exported context state, each value UTF-8 JSON text.
    pub state_json: BTreeMap<String, ByteBuf>,
    /// The terminal StopEvent's `result` as UTF-8 JSON text.
    pub result_json: Option<ByteBuf>,
    /// Session refs that outlive the run.
    pub remote_refs: BTreeMap<Uuid, RemoteRefDescriptor>,
    /// Set when the workflow ran and failed; then the other fields are to be ignored.
    pub error: Option<String>,
}

/// Asks for the bytes of a session ref.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DerefRequest {
    /// Payload version.
    pub envelope_version: u32,
    /// Key of the ref.
    pub ref_uuid: Uuid,
}

/// The bytes of a session ref.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DerefResponse {
    /// Payload version.
    pub envelope_version: u32,
    /// The encoded value.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// Asks the peer to drop a session ref; same bytes as [`DerefRequest`].
pub type ReleaseRequest = DerefRequest;

/// Whether a release found the ref.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseResponse {
    /// Payload version.
    pub envelope_version: u32,
    /// False when the ref was already gone.
    pub released: bool,
}

impl Extension for WorkflowFailure {
    const TAG: u32 = 1;
}

/// The caller's parent run (request extension tag 1): session refs created with
/// `UntilParentFinish` are released when that parent finishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRun {
    /// Id the caller chose for its parent run.
    pub parent_run_id: Uuid,
}

impl Extension for ParentRun {
    const TAG: u32 = 1;
}

/// One piece of a session ref streamed by `DerefSessionRefChunks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DerefChunk {
    /// Payload version.
    pub envelope_version: u32,
    /// Size of the whole value.
    pub total_len: u64,
    /// Codec name of the value.
    pub type_tag: String,
    /// Where `bytes` starts in the value.
    pub offset: u64,
    /// This piece.
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

/// The largest piece a client accepts (DerefRequest extension tag 1), so a
/// server with a larger message limit still sends pieces the client can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkLimit {
    /// Largest message the client decodes.
    pub max_message_bytes: u64,
}

impl Extension for ChunkLimit {
    const TAG: u32 = 1;
}

impl DerefChunk {
    /// Encodes one piece straight from the stored value: the bytes are copied
    /// once, into the payload, instead of into a `DerefChunk` first.
    pub fn encode_piece(
        total_len: u64,
        type_tag: &str,
        offset: u64,
        bytes: &[u8],
    ) -> Result<Vec<u8>, PeerError> {
        #[derive(Serialize)]
        struct Piece<'a> {
            envelope_version: u32,
            total_len: u64,
            type_tag: &'a str,
            offset: u64,
            #[serde(with = "serde_bytes")]
            bytes: &'a [u8],
        }
        let piece = Piece {
            envelope_version: ENVELOPE_VERSION,
            total_len,
            type_tag,
            offset,
            bytes,
        };
        postcard::to_stdvec(&piece)
            .map_err(|err| PeerError::Encode(format!("cannot encode a deref piece: {err}")))
    }

    /// The payload of a piece up to its value bytes: followed by the `len`
    /// bytes themselves, it is exactly what [`DerefChunk::encode_piece`] writes.
    pub fn encode_head(
        total_len: u64,
        type_tag: &str,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, PeerError> {
        #[derive(Serialize)]
        struct Head<'a> {
            envelope_version: u32,
            total_len: u64,
            type_tag: &'a str,
            offset: u64,
            // serde_bytes writes a slice's length as this varint.
            len: u64,
        }
        let head = Head {
            envelope_version: ENVELOPE_VERSION,
            total_len,
            type_tag,
            offset,
            len: len as u64,
        };
        postcard::to_stdvec(&head)
            .map_err(|err| PeerError::Encode(format!("cannot encode a deref piece: {err}")))
    }

    /// Decodes one piece without copying its bytes out of the payload.
    pub fn decode_piece(payload: &[u8]) -> Result<DerefPiece<'_>, PeerError> {
        check_version(payload)?;
        postcard::take_from_bytes::<DerefPiece<'_>>(payload)
            .map(|(piece, _extensions)| piece)
            .map_err(|err| {
                PeerError::Encode(format!("payload does not decode as DerefChunk: {err}"))
            })
    }
}

/// A [`DerefChunk`] borrowing its bytes from the payload.
#[derive(Debug, Deserialize)]
pub struct DerefPiece<'a> {
    /// Payload version.
    pub envelope_version: u32,
    /// Size of the whole value.
    pub total_len: u64,
    /// Codec name of the value.
    pub type_tag: &'a str,
    /// Where `bytes` starts in the value.
    pub offset: u64,
    /// This piece.
    pub bytes: &'a [u8],
}

/// Names a parent run (`FinishParentRun`, `RenewParentLease`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRunRequest {
    /// Payload version.
    pub envelope_version: u32,
    /// The parent run.
    pub parent_run_id: Uuid,
}

/// How many refs a parent-run call touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRunResponse {
    /// Payload version.
    pub envelope_version: u32,
    /// Refs released (finish) or renewed (renew).
    pub refs: u64,
    /// The peer's lease, so the caller knows how often to renew.
    pub lease_ms: u64,
}

/// Asks a peer what it can run (`ListSteps`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepsRequest {
    /// Payload version.
    pub envelope_version: u32,
}

/// What a peer can run: its steps and declared workflows, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepsResponse {
    /// Payload version.
    pub envelope_version: u32,
    /// The peer's node id.
    pub node_id: String,
    /// Registered steps, by id.
    pub steps: Vec<StepInfo>,
    /// Declared workflows, by name.
    pub workflows: Vec<WorkflowInfo>,
    /// True while the peer shuts down and starts no new runs.
    pub draining: bool,
}

/// A registered step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepInfo {
    /// Registry id, e.g. `my_app::analyze`.
    pub id: String,
    /// Event type names that route to it.
    pub accepts: Vec<String>,
}

/// Each step's limits and current use (StepsResponse extension tag 1), apart
/// from `StepInfo` so that other peers' decoders, which read `StepInfo` as two
/// fields, never see them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepPolicies {
    /// One entry per step that has a limit, sorted by id.
    pub steps: Vec<StepPolicyInfo>,
}

impl Extension for StepPolicies {
    const TAG: u32 = 1;
}

/// One step's limits as `ListSteps` reports them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepPolicyInfo {
    /// The step's id.
    pub id: String,
    /// Most calls running at once across the peer's runs; 0: unlimited.
    pub max_concurrency: u64,
    /// Calls holding a slot when the list was made.
    pub in_use: u64,
    /// Per-attempt timeout in milliseconds, if any.
    pub timeout_ms: Option<u64>,
    /// Attempts in all (1: no retry).
    pub attempts: u32,
}

/// The peer's placement labels, e.g. `region=eu-west` (StepsResponse
/// extension tag 2); callers route on them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerLabels {
    /// Label names and values, sorted by name.
    pub labels: BTreeMap<String, String>,
}

impl Extension for PeerLabels {
    const TAG: u32 = 2;
}

/// A declared workflow: the steps a request naming no steps runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowInfo {
    /// Workflow name.
    pub name: String,
    /// Its steps, in order.
    pub step_ids: Vec<String>,
}

/// One item of a `StreamSubWorkflowEvents` stream: an event a step wrote with
/// `write_event_to_stream`, or, last, the run's whole response.
///
/// A kind number rather than a postcard enum, so a newer peer can add kinds and
/// older clients skip them (postcard cannot skip an unknown enum variant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamItem {
    /// Payload version.
    pub envelope_version: u32,
    /// [`StreamItem::EVENT`] or [`StreamItem::DONE`]; decoders skip others.
    pub kind: u32,
    /// EVENT: the event's type name (e.g. `my_app.Progress`). DONE: empty.
    pub event_type: String,
    /// EVENT: UTF-8 JSON object of the event's fields. DONE: the encoded
    /// `SubWorkflowResponse` payload (extension block included), the same bytes
    /// `InvokeSubWorkflow` would have answered.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

impl StreamItem {
    /// An event written by a step.
    pub const EVENT: u32 = 1;
    /// The terminal item: the run's response.
    pub const DONE: u32 = 2;

    /// An event item.
    pub fn event(event_type: impl Into<String>, data_json: Vec<u8>) -> Self {
        Self {
            envelope_version: ENVELOPE_VERSION,
            kind: Self::EVENT,
            event_type: event_type.into(),
            payload: data_json,
        }
    }

    /// The terminal item carrying `response`.
    pub fn done(response: &Envelope<SubWorkflowResponse>) -> Result<Self, PeerError> {
        Ok(Self {
            envelope_version: ENVELOPE_VERSION,
            kind: Self::DONE,
            event_type: String::new(),
            payload: response.encode()?,
        })
    }
}

/// Builds a v1 request envelope.
pub fn request(
    workflow_name: impl Into<String>,
    step_ids: Vec<String>,
    input_json: Vec<u8>,
    timeout_secs: Option<u64>,
) -> Envelope<SubWorkflowRequest> {
    Envelope::new(SubWorkflowRequest {
        envelope_version: ENVELOPE_VERSION,
        workflow_name: workflow_name.into(),
        step_ids,
        input_json,
        timeout_secs,
    })
}

#[cfg(test)]
mod tests;
