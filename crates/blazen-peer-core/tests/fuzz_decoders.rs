//! Property tests ("fuzzing") of every decoder that reads bytes from a peer.
//!
//! Covered, through the public API only:
//! - `envelope::peek_version` / `check_version`;
//! - `Envelope::<T>::decode` for every payload: `SubWorkflowRequest`,
//!   `SubWorkflowResponse`, `DerefRequest` (= `ReleaseRequest`), `DerefResponse`,
//!   `ReleaseResponse`, `ParentRunRequest`, `ParentRunResponse`, `DerefChunk`;
//! - `DerefChunk::decode_piece` (borrowing; checked against the owned decoder);
//! - the trailing extension block and `Extensions::get` for every extension
//!   (`WorkflowFailure`, `ParentRun`, `ChunkLimit`);
//! - `PeerError::from_status`: the postcard `NotFoundDetail` in
//!   `grpc-status-details-bin` and the parsed FAILED_PRECONDITION message.
//!
//! Properties: arbitrary bytes, truncated valid encodings and mutated valid
//! encodings (flipped bytes, inserted bytes, huge varint length prefixes) never
//! panic, never reserve a large buffer, and return `Ok` or a typed error: an
//! undecodable payload is `PeerError::Encode` (INVALID_ARGUMENT, message naming
//! the payload type), a newer version is `PeerError::EnvelopeVersion`
//! (FAILED_PRECONDITION, docs/wire.md's message), the same for every decoder.
//!
//! Run time: `DEFAULT_CASES` cases per property (a few seconds in total);
//! `PROPTEST_CASES=N` overrides it, like every other `PROPTEST_*` variable.
//! Failing inputs are persisted to `tests/proptest-regressions/fuzz_decoders.txt`
//! and replayed first on later runs; commit that file when it appears.

use std::time::{Duration, Instant};

use blazen_peer_core::envelope::{
    check_version, peek_version, ChunkLimit, DerefChunk, DerefRequest, DerefResponse, Extension,
    FailureKind, NotFoundDetail, ParentRun, ParentRunRequest, ParentRunResponse, PutRefDone,
    PutRefHeader, PutRefPiece, PutRefReady, ReleaseRequest, ReleaseResponse, RemoteRefDescriptor,
    StepInfo, StepsRequest, StepsResponse, StreamItem, SubWorkflowRequest, SubWorkflowResponse,
    WorkflowFailure, WorkflowInfo,
};
use blazen_peer_core::{Envelope, PeerError, ENVELOPE_VERSION};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{FileFailurePersistence, TestCaseError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_bytes::ByteBuf;
use tonic::{Code, Status};
use uuid::Uuid;

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// Cases per property when `PROPTEST_CASES` is not set.
const DEFAULT_CASES: u32 = 3000;

/// Where failing inputs are kept (a `proptest-regressions/` directory next to this file).
const REGRESSIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/proptest-regressions/fuzz_decoders.txt"
);

/// `ProptestConfig::default()` has already applied the `PROPTEST_*` variables;
/// `with_cases` would silently override `PROPTEST_CASES`, so the count is only
/// replaced when that variable is absent. Persistence stays on unless
/// `PROPTEST_DISABLE_FAILURE_PERSISTENCE` turned it off.
fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = DEFAULT_CASES;
    }
    if config.failure_persistence.is_some() {
        config.failure_persistence = Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS)));
    }
    config
}

/// No decode may reserve more than this at once. serde caps a sequence's
/// preallocation at 1 MiB whatever length the input declares, and every other
/// buffer is at most the input's size.
const ALLOCATION_LIMIT: usize = 2 << 20;

/// A decode of a few bytes that takes longer than this is looping or allocating.
const TIME_LIMIT: Duration = Duration::from_secs(2);

// Largest-allocation tracker (this test binary's global allocator).
#[path = "support/peak_alloc.rs"]
mod peak_alloc;

/// Runs `f`; returns its result, the largest single allocation it made, and its duration.
fn measured<R>(f: impl FnOnce() -> R) -> (R, usize, Duration) {
    let start = Instant::now();
    let (result, largest) = peak_alloc::largest_allocation(f);
    (result, largest, start.elapsed())
}

#[test]
fn proptest_cases_env_var_is_honoured() {
    match std::env::var("PROPTEST_CASES") {
        // (An unparseable value makes proptest warn and keep its own default.)
        Ok(value) => {
            if let Ok(cases) = value.parse::<u32>() {
                assert_eq!(config().cases, cases);
            }
        }
        Err(_) => assert_eq!(config().cases, DEFAULT_CASES),
    }
}

// ---------------------------------------------------------------------------
// The decoders, uniformly
// ---------------------------------------------------------------------------

/// Every `Envelope::<T>::decode` instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Request,
    Response,
    Deref,
    Release,
    DerefResp,
    ReleaseResp,
    ParentReq,
    ParentResp,
    Chunk,
    Stream,
    StepsReq,
    Steps,
    PutHeader,
    PutReady,
    PutDone,
}

impl Kind {
    const ALL: [Kind; 15] = [
        Kind::Request,
        Kind::Response,
        Kind::Deref,
        Kind::Release,
        Kind::DerefResp,
        Kind::ReleaseResp,
        Kind::ParentReq,
        Kind::ParentResp,
        Kind::Chunk,
        Kind::Stream,
        Kind::StepsReq,
        Kind::Steps,
        Kind::PutHeader,
        Kind::PutReady,
        Kind::PutDone,
    ];

    /// The type name the decoder's error message carries.
    fn type_name(self) -> &'static str {
        match self {
            Kind::Request => "SubWorkflowRequest",
            Kind::Response => "SubWorkflowResponse",
            // ReleaseRequest is an alias of DerefRequest.
            Kind::Deref | Kind::Release => "DerefRequest",
            Kind::DerefResp => "DerefResponse",
            Kind::ReleaseResp => "ReleaseResponse",
            Kind::ParentReq => "ParentRunRequest",
            Kind::ParentResp => "ParentRunResponse",
            Kind::Chunk => "DerefChunk",
            Kind::Stream => "StreamItem",
            Kind::StepsReq => "StepsRequest",
            Kind::Steps => "StepsResponse",
            Kind::PutHeader => "PutRefHeader",
            Kind::PutReady => "PutRefReady",
            Kind::PutDone => "PutRefDone",
        }
    }

    /// Decodes `bytes` as this payload; on success returns the body re-encoded
    /// (after reading every extension from the block, which must not panic).
    fn decode(self, bytes: &[u8]) -> Result<Vec<u8>, PeerError> {
        match self {
            Kind::Request => decode_as::<SubWorkflowRequest>(bytes),
            Kind::Response => decode_as::<SubWorkflowResponse>(bytes),
            Kind::Deref => decode_as::<DerefRequest>(bytes),
            Kind::Release => decode_as::<ReleaseRequest>(bytes),
            Kind::DerefResp => decode_as::<DerefResponse>(bytes),
            Kind::ReleaseResp => decode_as::<ReleaseResponse>(bytes),
            Kind::ParentReq => decode_as::<ParentRunRequest>(bytes),
            Kind::ParentResp => decode_as::<ParentRunResponse>(bytes),
            Kind::Chunk => decode_as::<DerefChunk>(bytes),
            Kind::Stream => decode_as::<StreamItem>(bytes),
            Kind::StepsReq => decode_as::<StepsRequest>(bytes),
            Kind::Steps => decode_as::<StepsResponse>(bytes),
            Kind::PutHeader => decode_as::<PutRefHeader>(bytes),
            Kind::PutReady => decode_as::<PutRefReady>(bytes),
            Kind::PutDone => decode_as::<PutRefDone>(bytes),
        }
    }
}

fn decode_as<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Result<Vec<u8>, PeerError> {
    let envelope = Envelope::<T>::decode(bytes)?;
    // Whatever the block held, looking an extension up is total.
    let _ = envelope.extensions.get::<WorkflowFailure>();
    let _ = envelope.extensions.get::<ParentRun>();
    let _ = envelope.extensions.get::<ChunkLimit>();
    Ok(Envelope::new(envelope.body)
        .encode()
        .expect("a decoded body re-encodes"))
}

/// Checks one decoder's outcome against the version the payload starts with.
fn check_outcome(
    what: &str,
    type_name: &str,
    bytes: &[u8],
    version: &Result<u32, PeerError>,
    result: &Result<Vec<u8>, PeerError>,
) -> Result<(), TestCaseError> {
    match (version, result) {
        (Ok(v), Ok(body)) => {
            prop_assert!(*v <= ENVELOPE_VERSION, "{what}: accepted version {v}");
            // The re-encoded body carries the same version and is no longer than
            // the payload (over-long varints in the input re-encode shorter).
            prop_assert_eq!(
                peek_version(body).ok(),
                Some(*v),
                "{}: version changed",
                what
            );
            prop_assert!(
                body.len() <= bytes.len(),
                "{what}: body longer than payload"
            );
        }
        (Ok(v), Err(PeerError::EnvelopeVersion { got, supported })) => {
            prop_assert!(*v > ENVELOPE_VERSION, "{what}: version {v} refused");
            prop_assert_eq!((*got, *supported), (*v, ENVELOPE_VERSION), "{}", what);
            let err = result.as_ref().unwrap_err();
            prop_assert_eq!(
                err.to_string(),
                format!("envelope version {v} is newer than supported {ENVELOPE_VERSION}")
            );
            prop_assert_eq!(err.to_status().code(), Code::FailedPrecondition);
        }
        (Ok(v), Err(err @ PeerError::Encode(message))) => {
            prop_assert!(
                *v <= ENVELOPE_VERSION,
                "{what}: version {v} not refused as newer"
            );
            prop_assert!(
                message.contains(type_name),
                "{what}: message does not name {type_name}: {message}"
            );
            prop_assert_eq!(err.to_status().code(), Code::InvalidArgument);
        }
        (Err(PeerError::Encode(_)), Err(err @ PeerError::Encode(message))) => {
            // No version to read: empty, or an unterminated / over-long varint.
            prop_assert!(
                message.contains("empty payload") || message.contains("envelope version"),
                "{what}: message does not say the version is unreadable: {message}"
            );
            prop_assert_eq!(err.to_status().code(), Code::InvalidArgument);
        }
        (version, result) => {
            prop_assert!(
                false,
                "{what}: unexpected outcome {result:?} for version {version:?}"
            );
        }
    }
    Ok(())
}

/// Runs every decoder on `bytes` and checks each outcome, its allocations and time.
fn check_all_decoders(bytes: &[u8]) -> Result<(), TestCaseError> {
    let version = peek_version(bytes);
    match (&version, check_version(bytes)) {
        (Ok(v), Ok(checked)) => prop_assert!(*v <= ENVELOPE_VERSION && checked == *v),
        (Ok(v), Err(PeerError::EnvelopeVersion { got, .. })) => {
            prop_assert!(*v > ENVELOPE_VERSION && got == *v)
        }
        (Err(PeerError::Encode(_)), Err(PeerError::Encode(_))) => {}
        (version, checked) => prop_assert!(false, "peek {version:?} vs check {checked:?}"),
    }
    for kind in Kind::ALL {
        let (result, largest, elapsed) = measured(|| kind.decode(bytes));
        prop_assert!(
            largest < ALLOCATION_LIMIT,
            "{kind:?}: allocated {largest} bytes for a {}-byte payload",
            bytes.len()
        );
        prop_assert!(elapsed < TIME_LIMIT, "{kind:?}: took {elapsed:?}");
        check_outcome(
            &format!("{kind:?}"),
            kind.type_name(),
            bytes,
            &version,
            &result,
        )?;
    }
    // ReleaseRequest and ParentRunRequest have DerefRequest's layout: same verdict.
    let deref = Kind::Deref.decode(bytes).ok();
    prop_assert_eq!(Kind::ParentReq.decode(bytes).ok(), deref.clone());
    prop_assert_eq!(Kind::Release.decode(bytes).ok(), deref);

    // The borrowing piece decoder agrees with the owned DerefChunk decoder.
    let (piece, largest, elapsed) = measured(|| {
        DerefChunk::decode_piece(bytes).map(|piece| {
            postcard::to_stdvec(&DerefChunk {
                envelope_version: piece.envelope_version,
                total_len: piece.total_len,
                type_tag: piece.type_tag.to_owned(),
                offset: piece.offset,
                bytes: piece.bytes.to_vec(),
            })
            .expect("a decoded piece re-encodes")
        })
    });
    prop_assert!(
        largest < ALLOCATION_LIMIT,
        "decode_piece allocated {largest} bytes"
    );
    prop_assert!(elapsed < TIME_LIMIT, "decode_piece took {elapsed:?}");
    check_outcome("decode_piece", "DerefChunk", bytes, &version, &piece)?;

    // An upload's piece decoder (borrowing too) fails cleanly on anything.
    let (upload_piece, largest, elapsed) = measured(|| {
        PutRefPiece::decode(bytes)
            .map(|piece| postcard::to_stdvec(&piece).expect("a decoded piece re-encodes"))
    });
    prop_assert!(
        largest < ALLOCATION_LIMIT,
        "PutRefPiece::decode allocated {largest} bytes"
    );
    prop_assert!(elapsed < TIME_LIMIT, "PutRefPiece::decode took {elapsed:?}");
    check_outcome(
        "PutRefPiece::decode",
        "PutRefPiece",
        bytes,
        &version,
        &upload_piece,
    )?;
    let owned = Kind::Chunk.decode(bytes);
    match (&piece, &owned) {
        (Ok(piece), Ok(owned)) => prop_assert_eq!(piece, owned),
        (Err(_), Err(_)) => {}
        _ => prop_assert!(false, "decode_piece {piece:?} vs DerefChunk {owned:?}"),
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Valid payloads
// ---------------------------------------------------------------------------

/// A valid payload: body (with an optional extension block) and where the body ends.
#[derive(Debug, Clone)]
struct Valid {
    kind: Kind,
    bytes: Vec<u8>,
    body_len: usize,
}

fn valid<T: Serialize + DeserializeOwned>(kind: Kind, envelope: Envelope<T>) -> Valid {
    let body_len = postcard::to_stdvec(&envelope.body)
        .expect("valid bodies encode")
        .len();
    Valid {
        kind,
        bytes: envelope.encode().expect("valid payloads encode"),
        body_len,
    }
}

fn with_extension<T, E: Extension>(body: T, extension: Option<E>) -> Envelope<T>
where
    T: Serialize + DeserializeOwned,
{
    let mut envelope = Envelope::new(body);
    if let Some(extension) = extension {
        envelope.extensions.insert(&extension).unwrap();
    }
    envelope
}

// The payload strategies (one copy, shared with the envelope unit tests).
#[path = "support/strategies.rs"]
mod strategies;
use strategies::{arb_bytes, arb_failure, arb_request, arb_response, arb_uuid, arb_version};

fn arb_valid() -> impl Strategy<Value = Valid> {
    prop_oneof![
        (
            arb_request(),
            proptest::option::of(arb_uuid().prop_map(|parent_run_id| ParentRun { parent_run_id }))
        )
            .prop_map(|(body, ext)| valid(Kind::Request, with_extension(body, ext))),
        (arb_response(), proptest::option::of(arb_failure()))
            .prop_map(|(body, ext)| valid(Kind::Response, with_extension(body, ext))),
        (
            arb_version(),
            arb_uuid(),
            proptest::option::of(any::<u64>())
        )
            .prop_map(|(envelope_version, ref_uuid, limit)| {
                let ext = limit.map(|max_message_bytes| ChunkLimit { max_message_bytes });
                valid(
                    Kind::Deref,
                    with_extension(
                        DerefRequest {
                            envelope_version,
                            ref_uuid,
                        },
                        ext,
                    ),
                )
            }),
        (arb_version(), arb_uuid()).prop_map(|(envelope_version, ref_uuid)| {
            valid(
                Kind::Release,
                Envelope::new(DerefRequest {
                    envelope_version,
                    ref_uuid,
                }),
            )
        }),
        (arb_version(), arb_bytes(48)).prop_map(|(envelope_version, payload)| {
            valid(
                Kind::DerefResp,
                Envelope::new(DerefResponse {
                    envelope_version,
                    payload,
                }),
            )
        }),
        (arb_version(), any::<bool>()).prop_map(|(envelope_version, released)| {
            valid(
                Kind::ReleaseResp,
                Envelope::new(ReleaseResponse {
                    envelope_version,
                    released,
                }),
            )
        }),
        (arb_version(), arb_uuid()).prop_map(|(envelope_version, parent_run_id)| {
            valid(
                Kind::ParentReq,
                Envelope::new(ParentRunRequest {
                    envelope_version,
                    parent_run_id,
                }),
            )
        }),
        (arb_version(), any::<u64>(), any::<u64>()).prop_map(
            |(envelope_version, refs, lease_ms)| {
                valid(
                    Kind::ParentResp,
                    Envelope::new(ParentRunResponse {
                        envelope_version,
                        refs,
                        lease_ms,
                    }),
                )
            }
        ),
        (
            arb_version(),
            any::<u64>(),
            any::<String>(),
            any::<u64>(),
            arb_bytes(48)
        )
            .prop_map(|(envelope_version, total_len, type_tag, offset, bytes)| {
                valid(
                    Kind::Chunk,
                    Envelope::new(DerefChunk {
                        envelope_version,
                        total_len,
                        type_tag,
                        offset,
                        bytes,
                    }),
                )
            }),
        (arb_version(), any::<u32>(), any::<String>(), arb_bytes(48)).prop_map(
            |(envelope_version, kind, event_type, payload)| {
                valid(
                    Kind::Stream,
                    Envelope::new(StreamItem {
                        envelope_version,
                        kind,
                        event_type,
                        payload,
                    }),
                )
            }
        ),
        arb_version().prop_map(|envelope_version| valid(
            Kind::StepsReq,
            Envelope::new(StepsRequest { envelope_version })
        )),
        (
            arb_version(),
            any::<String>(),
            proptest::collection::vec(
                (
                    any::<String>(),
                    proptest::collection::vec(any::<String>(), 0..3)
                )
                    .prop_map(|(id, accepts)| StepInfo { id, accepts }),
                0..4
            ),
            proptest::collection::vec(
                (
                    any::<String>(),
                    proptest::collection::vec(any::<String>(), 0..3)
                )
                    .prop_map(|(name, step_ids)| WorkflowInfo { name, step_ids }),
                0..3
            ),
            any::<bool>(),
        )
            .prop_map(|(envelope_version, node_id, steps, workflows, draining)| {
                valid(
                    Kind::Steps,
                    Envelope::new(StepsResponse {
                        envelope_version,
                        node_id,
                        steps,
                        workflows,
                        draining,
                    }),
                )
            }),
        (
            arb_version(),
            any::<u64>(),
            any::<String>(),
            any::<String>(),
            proptest::option::of(arb_uuid()),
            any::<u64>(),
        )
            .prop_map(
                |(envelope_version, total_len, type_tag, lifetime, parent_run_id, max)| {
                    valid(
                        Kind::PutHeader,
                        Envelope::new(PutRefHeader {
                            envelope_version,
                            total_len,
                            type_tag,
                            lifetime,
                            parent_run_id,
                            max_message_bytes: max,
                        }),
                    )
                }
            ),
        (arb_version(), any::<u64>()).prop_map(|(envelope_version, chunk_bytes)| {
            valid(
                Kind::PutReady,
                Envelope::new(PutRefReady {
                    envelope_version,
                    chunk_bytes,
                }),
            )
        }),
        (arb_version(), arb_uuid(), any::<String>(), any::<u64>()).prop_map(
            |(envelope_version, ref_uuid, origin_node_id, created_at_epoch_ms)| {
                valid(
                    Kind::PutDone,
                    Envelope::new(PutRefDone {
                        envelope_version,
                        ref_uuid,
                        descriptor: RemoteRefDescriptor {
                            origin_node_id,
                            type_tag: "bytes".into(),
                            created_at_epoch_ms,
                        },
                    }),
                )
            }
        ),
    ]
}

// ---------------------------------------------------------------------------
// Mutations
// ---------------------------------------------------------------------------

fn varint(mut value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// Lengths no 10-byte input can hold: 4 GiB - 1, 4 GiB, 2^62, u64::MAX,
/// and an unterminated / over-long varint.
fn huge_varints() -> Vec<Vec<u8>> {
    vec![
        varint(u64::from(u32::MAX)),
        varint(1 << 32),
        varint(1 << 62),
        varint(u64::MAX),
        vec![0xff; 11],
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    /// XOR one byte with a non-zero mask.
    Flip(Index, u8),
    /// Overwrite one byte.
    Set(Index, u8),
    /// Insert bytes.
    Insert(Index, Vec<u8>),
    /// Insert a huge varint (usually where a length or count is read).
    InsertHuge(Index, Index),
    /// Replace the bytes from a position with a huge varint and a short tail.
    OverwriteHuge(Index, Index, Vec<u8>),
    /// Remove one byte.
    Remove(Index),
    /// Cut the payload.
    Truncate(Index),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 1..=u8::MAX).prop_map(|(at, mask)| Mutation::Flip(at, mask)),
        (
            any::<Index>(),
            prop_oneof![
                Just(0x02u8),
                Just(0x05),
                Just(0x80),
                Just(0xff),
                any::<u8>()
            ]
        )
            .prop_map(|(at, byte)| Mutation::Set(at, byte)),
        (any::<Index>(), arb_bytes(8)).prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        (any::<Index>(), any::<Index>()).prop_map(|(at, which)| Mutation::InsertHuge(at, which)),
        (any::<Index>(), any::<Index>(), arb_bytes(4))
            .prop_map(|(at, which, tail)| Mutation::OverwriteHuge(at, which, tail)),
        any::<Index>().prop_map(Mutation::Remove),
        any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    // Positions in 0..=len (insertions may append).
    let at = |index: &Index, len: usize| index.index(len + 1);
    match mutation {
        Mutation::Flip(index, mask) if !bytes.is_empty() => {
            let i = index.index(bytes.len());
            bytes[i] ^= mask;
        }
        Mutation::Set(index, byte) if !bytes.is_empty() => {
            let i = index.index(bytes.len());
            bytes[i] = *byte;
        }
        Mutation::Insert(index, inserted) => {
            let i = at(index, bytes.len());
            bytes.splice(i..i, inserted.iter().copied());
        }
        Mutation::InsertHuge(index, which) => {
            let huge = huge_varints();
            let i = at(index, bytes.len());
            bytes.splice(i..i, which.get(&huge).iter().copied());
        }
        Mutation::OverwriteHuge(index, which, tail) => {
            let huge = huge_varints();
            let i = at(index, bytes.len());
            bytes.truncate(i);
            let huge: &Vec<u8> = which.get(&huge);
            bytes.extend_from_slice(huge);
            bytes.extend_from_slice(tail);
        }
        Mutation::Remove(index) if !bytes.is_empty() => {
            let i = index.index(bytes.len());
            bytes.remove(i);
        }
        Mutation::Truncate(index) => {
            let i = at(index, bytes.len());
            bytes.truncate(i);
        }
        _ => {}
    }
}

/// A postcard extension block of arbitrary fields: count, then (tag, value) pairs.
fn raw_block(fields: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let mut out = varint(fields.len() as u64);
    for (tag, value) in fields {
        out.extend(varint(u64::from(*tag)));
        out.extend(varint(value.len() as u64));
        out.extend_from_slice(value);
    }
    out
}

fn arb_fields() -> impl Strategy<Value = Vec<(u32, Vec<u8>)>> {
    proptest::collection::vec(
        (
            prop_oneof![Just(1u32), Just(2), any::<u32>()],
            prop_oneof![
                arb_bytes(24),
                // A valid value for tag 1 of some payload.
                arb_failure().prop_map(|failure| postcard::to_stdvec(&failure).unwrap()),
                arb_uuid().prop_map(|uuid| postcard::to_stdvec(&ParentRun {
                    parent_run_id: uuid
                })
                .unwrap()),
                any::<u64>().prop_map(|max| postcard::to_stdvec(&ChunkLimit {
                    max_message_bytes: max
                })
                .unwrap()),
            ],
        ),
        0..4,
    )
}

/// What `Extensions::get::<E>` must return for a well-formed block: the first
/// field under `E::TAG`, if its value decodes as `E`.
fn expected_extension<E: Extension>(fields: &[(u32, Vec<u8>)]) -> Option<E> {
    let (_, value) = fields.iter().find(|(tag, _)| *tag == E::TAG)?;
    postcard::from_bytes(value).ok()
}

fn arb_details() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        arb_bytes(64),
        (
            any::<String>(),
            any::<bool>(),
            proptest::collection::vec(any::<String>(), 0..4),
            proptest::collection::vec(arb_mutation(), 0..3)
        )
            .prop_map(|(missing, is_workflow, registered, mutations)| {
                let mut bytes = postcard::to_stdvec(&NotFoundDetail {
                    missing,
                    is_workflow,
                    registered,
                })
                .unwrap();
                for mutation in &mutations {
                    apply(&mut bytes, mutation);
                }
                bytes
            }),
    ]
}

/// What may follow the v1 fields: garbage, a huge varint, or a (mutated) block.
fn arb_tail() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        arb_bytes(64),
        (any::<Index>(), arb_bytes(8)).prop_map(|(which, rest)| {
            let mut tail = which.get(&huge_varints()).clone();
            tail.extend(rest);
            tail
        }),
        (
            arb_fields(),
            proptest::collection::vec(arb_mutation(), 0..3)
        )
            .prop_map(|(fields, mutations)| {
                let mut block = raw_block(&fields);
                for mutation in &mutations {
                    apply(&mut block, mutation);
                }
                block
            }),
    ]
}

fn check_extensions<T: Serialize + DeserializeOwned>(
    bytes: &[u8],
    fields: &[(u32, Vec<u8>)],
) -> Result<(), TestCaseError> {
    let envelope =
        Envelope::<T>::decode(bytes).map_err(|err| TestCaseError::fail(format!("{err:?}")))?;
    let extensions = &envelope.extensions;
    prop_assert_eq!(
        extensions.get::<WorkflowFailure>(),
        expected_extension::<WorkflowFailure>(fields)
    );
    prop_assert_eq!(
        extensions.get::<ParentRun>(),
        expected_extension::<ParentRun>(fields)
    );
    prop_assert_eq!(
        extensions.get::<ChunkLimit>(),
        expected_extension::<ChunkLimit>(fields)
    );
    prop_assert_eq!(extensions.is_empty(), fields.is_empty());
    Ok(())
}

fn arb_status_code() -> impl Strategy<Value = Code> {
    prop_oneof![
        Just(Code::NotFound),
        Just(Code::FailedPrecondition),
        (0i32..20).prop_map(Code::from),
    ]
}

/// Arbitrary text, and docs/wire.md's version message with arbitrary / numeric parts.
fn arb_status_message() -> impl Strategy<Value = String> {
    fn wire<T: std::fmt::Display>((got, supported): (T, T)) -> String {
        format!("envelope version {got} is newer than supported {supported}")
    }
    prop_oneof![
        any::<String>(),
        (any::<String>(), any::<String>()).prop_map(wire),
        (any::<u64>(), any::<u64>()).prop_map(wire),
        (any::<u32>(), any::<u32>()).prop_map(wire),
    ]
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// Arbitrary bytes: every decoder returns Ok or a typed error, consistently.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in arb_bytes(512)) {
        check_all_decoders(&bytes)?;
    }

    /// Arbitrary bytes after a valid version byte, so the bodies (not just the
    /// version check) see random input.
    #[test]
    fn arbitrary_bytes_after_a_valid_version_never_panic(
        version in arb_version(),
        tail in arb_bytes(512),
    ) {
        let mut bytes = vec![version as u8];
        bytes.extend_from_slice(&tail);
        check_all_decoders(&bytes)?;
    }

    /// A valid payload decodes to itself; cut anywhere inside its v1 fields it
    /// is an Encode error; cut inside its extension block the body survives.
    #[test]
    fn truncated_valid_payloads_fail_cleanly(valid in arb_valid(), cut in any::<Index>()) {
        let full = valid.kind.decode(&valid.bytes).unwrap();
        prop_assert_eq!(&full[..], &valid.bytes[..valid.body_len]);
        let cut = cut.index(valid.bytes.len() + 1);
        let prefix = &valid.bytes[..cut];
        match valid.kind.decode(prefix) {
            Ok(body) => {
                let body_len = valid.body_len;
                prop_assert!(cut >= body_len, "{cut}-byte prefix of {body_len}-byte body decoded");
                prop_assert_eq!(&body[..], &valid.bytes[..valid.body_len]);
            }
            Err(PeerError::Encode(message)) => {
                prop_assert!(cut < valid.body_len, "{cut}-byte prefix with body failed: {message}");
            }
            Err(other) => prop_assert!(false, "prefix of {cut} bytes: {other:?}"),
        }
        check_all_decoders(prefix)?;
    }

    /// Mutated valid payloads (flipped / set / inserted / removed bytes, huge
    /// varints inserted or overwriting a length) never panic or over-allocate.
    #[test]
    fn mutated_valid_payloads_never_panic(
        valid in arb_valid(),
        mutations in proptest::collection::vec(arb_mutation(), 1..4),
    ) {
        let mut bytes = valid.bytes.clone();
        for mutation in &mutations {
            apply(&mut bytes, mutation);
        }
        check_all_decoders(&bytes)?;
    }

    /// Whatever follows the v1 fields (garbage, a truncated block, a block with
    /// huge counts or lengths) never changes the body and never fails the decode.
    #[test]
    fn trailing_bytes_never_fail_the_decode(
        valid in arb_valid(),
        tail in arb_tail(),
    ) {
        let mut bytes = valid.bytes[..valid.body_len].to_vec();
        bytes.extend_from_slice(&tail);
        let (result, largest, _) = measured(|| valid.kind.decode(&bytes));
        prop_assert!(largest < ALLOCATION_LIMIT, "allocated {largest} bytes");
        let body = result.map_err(|err| TestCaseError::fail(format!("{err:?}")))?;
        prop_assert_eq!(&body[..], &valid.bytes[..valid.body_len]);
        check_all_decoders(&bytes)?;
    }

    /// A well-formed block of arbitrary fields: `get` returns the first field
    /// under its tag when that value decodes, and None otherwise.
    #[test]
    fn extension_lookup_is_total(valid in arb_valid(), fields in arb_fields()) {
        let mut bytes = valid.bytes[..valid.body_len].to_vec();
        bytes.extend_from_slice(&raw_block(&fields));
        match valid.kind {
            Kind::Request => check_extensions::<SubWorkflowRequest>(&bytes, &fields)?,
            Kind::Response => check_extensions::<SubWorkflowResponse>(&bytes, &fields)?,
            Kind::Deref | Kind::Release => check_extensions::<DerefRequest>(&bytes, &fields)?,
            Kind::DerefResp => check_extensions::<DerefResponse>(&bytes, &fields)?,
            Kind::ReleaseResp => check_extensions::<ReleaseResponse>(&bytes, &fields)?,
            Kind::ParentReq => check_extensions::<ParentRunRequest>(&bytes, &fields)?,
            Kind::ParentResp => check_extensions::<ParentRunResponse>(&bytes, &fields)?,
            Kind::Chunk => check_extensions::<DerefChunk>(&bytes, &fields)?,
            Kind::Stream => check_extensions::<StreamItem>(&bytes, &fields)?,
            Kind::StepsReq => check_extensions::<StepsRequest>(&bytes, &fields)?,
            Kind::Steps => check_extensions::<StepsResponse>(&bytes, &fields)?,
            Kind::PutHeader => check_extensions::<PutRefHeader>(&bytes, &fields)?,
            Kind::PutReady => check_extensions::<PutRefReady>(&bytes, &fields)?,
            Kind::PutDone => check_extensions::<PutRefDone>(&bytes, &fields)?,
        }
    }

    /// A status's details and message come from the peer: any NOT_FOUND maps to
    /// UnknownStep / UnknownWorkflow, any FAILED_PRECONDITION to EnvelopeVersion
    /// (when the message is docs/wire.md's) or Transport, and nothing panics.
    #[test]
    fn status_details_never_panic(
        code in arb_status_code(),
        details in arb_details(),
        message in arb_status_message(),
    ) {
        let status = Status::with_details(code, message.clone(), details.clone().into());
        let (result, largest, _) = measured(|| PeerError::from_status(&status, "http://peer"));
        prop_assert!(largest < ALLOCATION_LIMIT, "allocated {largest} bytes");
        match (code, &result) {
            (Code::NotFound, PeerError::UnknownStep { .. } | PeerError::UnknownWorkflow { .. }) => {
                match postcard::from_bytes::<NotFoundDetail>(&details) {
                    Ok(detail) => match &result {
                        PeerError::UnknownWorkflow { workflow_name, registered, .. } => {
                            prop_assert!(detail.is_workflow);
                            prop_assert_eq!(workflow_name, &detail.missing);
                            prop_assert_eq!(registered, &detail.registered);
                        }
                        PeerError::UnknownStep { step_id, registered, .. } => {
                            prop_assert!(!detail.is_workflow);
                            prop_assert_eq!(step_id, &detail.missing);
                            prop_assert_eq!(registered, &detail.registered);
                        }
                        _ => unreachable!(),
                    },
                    Err(_) => prop_assert!(
                        matches!(result, PeerError::UnknownStep { .. }),
                        "undecodable details gave {:?}",
                        result
                    ),
                }
            }
            (Code::FailedPrecondition, PeerError::EnvelopeVersion { .. }) => {
                // Parsed from docs/wire.md's text (numbers may carry spaces or a `+`).
                prop_assert!(message.starts_with("envelope version "), "{message}");
                prop_assert!(message.contains(" is newer than supported "), "{message}");
            }
            (Code::FailedPrecondition, PeerError::Transport { code: Some(c), .. }) => {
                prop_assert_eq!(*c, Code::FailedPrecondition as i32);
            }
            (Code::NotFound | Code::FailedPrecondition, other) => {
                prop_assert!(false, "{code:?} mapped to {other:?}");
            }
            _ => {}
        }
        prop_assert!(!result.to_string().is_empty());
    }
}

// ---------------------------------------------------------------------------
// Fixed hostile inputs
// ---------------------------------------------------------------------------

fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|byte| u8::from_str_radix(byte, 16).expect("hex"))
        .collect()
}

/// Inputs declaring a length or count no input of a few bytes can hold, at
/// every length-prefixed field of every payload: each must fail fast, as an
/// Encode error naming its type, without reserving the declared size.
#[test]
fn huge_declared_lengths_fail_fast_without_allocating() {
    let uuid = " 12 34 56 78 9a bc de f0 12 34 56 78 9a bc de f0";
    // (payload, prefix before the huge varint, a few bytes after it)
    let sites: Vec<(Kind, String, &str)> = vec![
        (Kind::Request, "01".into(), "77 66 00 00"), // workflow_name
        (Kind::Request, "01 02 77 66".into(), "01 61"), // step_ids count
        (Kind::Request, "01 02 77 66 01".into(), "61 62"), // one step id
        (Kind::Request, "01 02 77 66 00".into(), "7b 7d 00"), // input_json
        (Kind::Response, "01".into(), "01 6b 00"),   // state_json count
        (Kind::Response, "01 01".into(), "6b 00"),   // a state key
        (Kind::Response, "01 01 01 6b".into(), "34 32"), // a state value
        (Kind::Response, "01 00 01".into(), "22 6f 6b 22"), // result_json
        (Kind::Response, "01 00 00".into(), "10 12 34"), // remote_refs count
        (Kind::Response, "01 00 00 01".into(), "12 34 56"), // a ref's uuid
        (Kind::Response, format!("01 00 00 01 10{uuid}"), "6e 6f"), // origin_node_id
        (Kind::Response, format!("01 00 00 01 10{uuid} 00"), "62 79"), // type_tag
        (Kind::Response, "01 00 00 00 01".into(), "62 61 64"), // error
        (Kind::Deref, "01".into(), "12 34 56 78"),   // ref_uuid
        (Kind::Release, "01".into(), "12 34 56 78"), // ref_uuid
        (Kind::ParentReq, "01".into(), "12 34 56 78"), // parent_run_id
        (Kind::DerefResp, "01".into(), "61 62 63"),  // payload
        (Kind::Chunk, "01 05".into(), "62 79 74 65 73"), // type_tag
        (Kind::Chunk, "01 05 00 00".into(), "61 62 63"), // bytes
    ];
    let mut checked = 0;
    for (kind, prefix, suffix) in &sites {
        for huge in huge_varints() {
            let mut payload = hex(prefix);
            payload.extend_from_slice(&huge);
            payload.extend(hex(suffix));
            let (result, largest, elapsed) = measured(|| kind.decode(&payload));
            let what = format!("{kind:?} {payload:02x?}");
            assert!(elapsed < TIME_LIMIT, "{what}: took {elapsed:?}");
            assert!(
                largest < ALLOCATION_LIMIT,
                "{what}: allocated {largest} bytes"
            );
            match result {
                Err(PeerError::Encode(message)) => {
                    assert!(message.contains(kind.type_name()), "{what}: {message}")
                }
                other => panic!("{what}: expected an Encode error, got {other:?}"),
            }
            if *kind == Kind::Chunk {
                let (piece, largest, elapsed) =
                    measured(|| DerefChunk::decode_piece(&payload).map(|_| ()));
                assert!(elapsed < TIME_LIMIT && largest < ALLOCATION_LIMIT, "{what}");
                assert!(
                    matches!(piece, Err(PeerError::Encode(_))),
                    "{what}: {piece:?}"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, sites.len() * huge_varints().len());

    // The 10-byte input of the brief: 4 GiB declared, 4 bytes present.
    let payload = hex("01 80 80 80 80 10 61 62 63 64");
    assert_eq!(payload.len(), 10);
    let (result, largest, elapsed) =
        measured(|| Envelope::<DerefResponse>::decode(&payload).map(|_| ()));
    assert!(matches!(result, Err(PeerError::Encode(_))), "{result:?}");
    assert!(elapsed < TIME_LIMIT, "took {elapsed:?}");
    assert!(largest < 1024, "allocated {largest} bytes");
}

/// A block declaring huge counts or value lengths is ignored like any other
/// unparseable trailer: the body decodes, the extensions are empty.
#[test]
fn huge_extension_block_lengths_are_ignored_without_allocating() {
    let body = hex("01 02 77 66 00 02 7b 7d 00");
    for huge in huge_varints() {
        // A tag of u32::MAX is a valid (unknown) tag; anything larger is not.
        let tag_is_u32 = huge == varint(u64::from(u32::MAX));
        for (block, parses) in [
            // field count
            ([huge.clone(), hex("01 02 61 62")].concat(), false),
            // one field with a huge tag
            ([hex("01"), huge.clone(), hex("01 61")].concat(), tag_is_u32),
            // one field whose value length is huge
            ([hex("01 01"), huge.clone(), hex("61 62")].concat(), false),
        ] {
            let payload = [body.clone(), block].concat();
            let (result, largest, elapsed) =
                measured(|| Envelope::<SubWorkflowRequest>::decode(&payload));
            let decoded = result.unwrap_or_else(|err| panic!("{payload:02x?}: {err:?}"));
            assert_eq!(decoded.extensions.is_empty(), !parses, "{payload:02x?}");
            assert!(decoded.extensions.get::<ParentRun>().is_none());
            assert_eq!(decoded.body.workflow_name, "wf");
            assert!(
                elapsed < TIME_LIMIT && largest < ALLOCATION_LIMIT,
                "{payload:02x?}"
            );
        }
    }
}

/// Wrong types where docs/wire.md fixes one: each an Encode error naming the type.
#[test]
fn wrong_types_are_encode_errors() {
    let uuid = "12 34 56 78 9a bc de f0 12 34 56 78 9a bc de f0";
    let cases: Vec<(Kind, String, &str)> = vec![
        (
            Kind::Request,
            "01 02 77 66 00 02 7b 7d 05 1e".into(),
            "Option tag 5",
        ),
        (
            Kind::Request,
            "01 02 77 66 00 02 7b 7d 02".into(),
            "Option tag 2",
        ),
        (
            Kind::Request,
            "01 02 ff fe 00 02 7b 7d 00".into(),
            "workflow_name not UTF-8",
        ),
        (
            Kind::Request,
            "01 02 77 66 01 02 c3 28 02 7b 7d 00".into(),
            "step id not UTF-8",
        ),
        (
            Kind::Request,
            "01 02 77 66 00 02 7b 7d 01 ff ff ff ff ff ff ff ff ff 7f".into(),
            "timeout_secs overflows u64",
        ),
        (Kind::ReleaseResp, "01 02".into(), "bool 2"),
        (Kind::ReleaseResp, "01 ff".into(), "bool 0xff"),
        (
            Kind::Deref,
            "01 04 77 66 77 66".into(),
            "a 4-byte string where the uuid goes",
        ),
        (Kind::Deref, format!("01 11 {uuid} 00"), "a 17-byte uuid"),
        (Kind::Deref, format!("01 0f {uuid}"), "a 15-byte uuid"),
        (Kind::ParentReq, "01 00".into(), "an empty uuid"),
        (
            Kind::Response,
            "01 00 03".into(),
            "Option tag 3 for result_json",
        ),
        (
            Kind::Response,
            "01 00 00 00 07".into(),
            "Option tag 7 for error",
        ),
        (
            Kind::Response,
            "01 01 02 c3 28 00 00 00 00".into(),
            "state key not UTF-8",
        ),
        (
            Kind::Chunk,
            "01 05 02 c3 28 00 00".into(),
            "type_tag not UTF-8",
        ),
        (
            Kind::ParentResp,
            "01 05 ff ff ff ff ff ff ff ff ff ff 01".into(),
            "over-long u64",
        ),
    ];
    for (kind, payload, what) in &cases {
        let payload = hex(payload);
        match kind.decode(&payload) {
            Err(err @ PeerError::Encode(_)) => {
                let message = err.to_string();
                assert!(message.contains(kind.type_name()), "{what}: {message}");
                assert_eq!(err.to_status().code(), Code::InvalidArgument, "{what}");
            }
            other => panic!("{what}: expected an Encode error, got {other:?}"),
        }
    }
    // The borrowing decoder refuses the same bad type_tag.
    assert!(matches!(
        DerefChunk::decode_piece(&hex("01 05 02 c3 28 00 00")),
        Err(PeerError::Encode(_))
    ));
}

/// Versions: 2 and a huge u32 are FAILED_PRECONDITION with docs/wire.md's message,
/// for every decoder; a version that overflows u32 is unreadable (Encode).
#[test]
fn newer_and_unreadable_versions() {
    for (version, bytes) in [(2u32, varint(2)), (u32::MAX, varint(u64::from(u32::MAX)))] {
        // Followed by an otherwise valid DerefRequest body and by garbage alike.
        for tail in [
            hex("10 12 34 56 78 9a bc de f0 12 34 56 78 9a bc de f0"),
            hex("ff 05"),
        ] {
            let payload = [bytes.clone(), tail].concat();
            for kind in Kind::ALL {
                match kind.decode(&payload) {
                    Err(err @ PeerError::EnvelopeVersion { .. }) => {
                        assert_eq!(
                            err.to_string(),
                            format!("envelope version {version} is newer than supported 1")
                        );
                        assert_eq!(err.to_status().code(), Code::FailedPrecondition);
                    }
                    other => panic!("{kind:?} {payload:02x?}: {other:?}"),
                }
            }
            assert!(matches!(
                DerefChunk::decode_piece(&payload),
                Err(PeerError::EnvelopeVersion { got, .. }) if got == version
            ));
        }
    }
    for payload in [
        varint(1 << 32),
        varint(u64::MAX),
        vec![0xff; 11],
        vec![0x80],
        vec![],
    ] {
        for kind in Kind::ALL {
            match kind.decode(&payload) {
                Err(err @ PeerError::Encode(_)) => {
                    assert_eq!(err.to_status().code(), Code::InvalidArgument)
                }
                other => panic!("{kind:?} {payload:02x?}: {other:?}"),
            }
        }
    }
}
