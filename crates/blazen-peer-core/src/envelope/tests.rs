use super::*;

use proptest::prelude::*;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Parses the space-separated hex of docs/wire.md ("01 02 77 66").
fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|byte| u8::from_str_radix(byte, 16).expect("test vector is hex"))
        .collect()
}

const REF_UUID: &str = "12345678-9abc-def0-1234-56789abcdef0";

fn ref_uuid() -> Uuid {
    Uuid::parse_str(REF_UUID).unwrap()
}

/// Encodes `body` without extensions, checks the exact bytes, decodes them
/// back and checks the struct and that no extension block was seen.
fn assert_vector<T>(body: T, expected_hex: &str)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug + Clone,
{
    let expected = hex(expected_hex);
    let encoded = Envelope::new(body.clone()).encode().unwrap();
    assert_eq!(encoded, expected, "encoding of {body:?}");
    // Plain postcard (what every published peer does) gives the same bytes.
    assert_eq!(postcard::to_stdvec(&body).unwrap(), expected);
    let decoded = Envelope::<T>::decode(&expected).unwrap();
    assert_eq!(decoded.body, body);
    assert!(decoded.extensions.is_empty());
    // And a plain postcard decoder reads the same struct.
    assert_eq!(postcard::from_bytes::<T>(&expected).unwrap(), body);
}

fn sample_failure() -> WorkflowFailure {
    WorkflowFailure {
        kind: FailureKind::StepFailed,
        message:
            "step `b::x` failed on node `node-b` handling `blazen::StartEvent`: ValueError: no"
                .into(),
        remote_type: Some("ValueError".into()),
        remote_traceback: Some("Traceback (most recent call last):\n  ...".into()),
        step_id: Some("b::x".into()),
        node_id: "node-b".into(),
    }
}

fn ok_response() -> SubWorkflowResponse {
    SubWorkflowResponse {
        envelope_version: 1,
        result_json: Some(ByteBuf::from(b"\"ok\"".to_vec())),
        ..Default::default()
    }
}

fn failed_response(failure: &WorkflowFailure) -> Envelope<SubWorkflowResponse> {
    let mut envelope = Envelope::new(SubWorkflowResponse {
        envelope_version: 1,
        error: Some(failure.message.clone()),
        ..Default::default()
    });
    envelope.extensions.insert(failure).unwrap();
    envelope
}

/// An extension type unknown to the payload decoder (tag no build uses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FutureExtension {
    level: u64,
    label: String,
}

impl Extension for FutureExtension {
    const TAG: u32 = 77;
}

fn assert_encode_error<T: std::fmt::Debug>(result: Result<T, PeerError>, what: &str) {
    match result {
        Err(PeerError::Encode(message)) => assert!(!message.is_empty(), "{what}: empty message"),
        other => panic!("{what}: expected PeerError::Encode, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// docs/wire.md "Test vectors"
// ---------------------------------------------------------------------------

#[test]
fn vector_request_with_step_and_timeout() {
    assert_vector(
        SubWorkflowRequest {
            envelope_version: 1,
            workflow_name: "wf".into(),
            step_ids: vec!["a::b".into()],
            input_json: br#"{"x":1}"#.to_vec(),
            timeout_secs: Some(30),
        },
        "01 02 77 66 01 04 61 3a 3a 62 07 7b 22 78 22 3a 31 7d 01 1e",
    );
}

#[test]
fn vector_request_empty_steps_no_timeout() {
    assert_vector(
        SubWorkflowRequest {
            envelope_version: 1,
            workflow_name: "wf".into(),
            step_ids: vec![],
            input_json: b"{}".to_vec(),
            timeout_secs: None,
        },
        "01 02 77 66 00 02 7b 7d 00",
    );
}

#[test]
fn request_helper_builds_the_first_vector() {
    let envelope = request("wf", vec!["a::b".into()], br#"{"x":1}"#.to_vec(), Some(30));
    assert_eq!(
        envelope.encode().unwrap(),
        hex("01 02 77 66 01 04 61 3a 3a 62 07 7b 22 78 22 3a 31 7d 01 1e")
    );
}

#[test]
fn vector_response_ok_only() {
    assert_vector(ok_response(), "01 00 01 04 22 6f 6b 22 00 00");
}

#[test]
fn vector_response_with_state_and_remote_ref() {
    let mut state_json = BTreeMap::new();
    state_json.insert("k".to_string(), ByteBuf::from(b"42".to_vec()));
    let mut remote_refs = BTreeMap::new();
    remote_refs.insert(
        ref_uuid(),
        RemoteRefDescriptor {
            origin_node_id: "node-b".into(),
            type_tag: "bytes".into(),
            created_at_epoch_ms: 128,
        },
    );
    assert_vector(
        SubWorkflowResponse {
            envelope_version: 1,
            state_json,
            result_json: Some(ByteBuf::from(b"\"ok\"".to_vec())),
            remote_refs,
            error: None,
        },
        "01 01 01 6b 02 34 32 01 04 22 6f 6b 22 01 10 12 34 56 78 9a bc de f0 12 34 56 78 9a bc \
         de f0 06 6e 6f 64 65 2d 62 05 62 79 74 65 73 80 01 00",
    );
}

#[test]
fn vector_deref_and_release_request() {
    let bytes = "01 10 12 34 56 78 9a bc de f0 12 34 56 78 9a bc de f0";
    let body = DerefRequest {
        envelope_version: 1,
        ref_uuid: ref_uuid(),
    };
    assert_vector(body.clone(), bytes);
    // ReleaseRequest is the same struct, hence the same bytes.
    let release: ReleaseRequest = body;
    assert_vector(release, bytes);
}

#[test]
fn vector_deref_response() {
    assert_vector(
        DerefResponse {
            envelope_version: 1,
            payload: b"abc".to_vec(),
        },
        "01 03 61 62 63",
    );
}

#[test]
fn vector_release_response() {
    assert_vector(
        ReleaseResponse {
            envelope_version: 1,
            released: true,
        },
        "01 01",
    );
    assert_vector(
        ReleaseResponse {
            envelope_version: 1,
            released: false,
        },
        "01 00",
    );
}

#[test]
fn uuid_travels_as_length_16_then_big_endian_bytes() {
    let encoded = postcard::to_stdvec(&ref_uuid()).unwrap();
    assert_eq!(encoded.len(), 17);
    assert_eq!(encoded[0], 0x10);
    assert_eq!(&encoded[1..], ref_uuid().as_bytes());
}

// ---------------------------------------------------------------------------
// Version rules
// ---------------------------------------------------------------------------

#[test]
fn peek_version_reads_the_first_varint_only() {
    assert_eq!(peek_version(&hex("01")).unwrap(), 1);
    assert_eq!(peek_version(&hex("00 ff ff")).unwrap(), 0);
    assert_eq!(peek_version(&hex("02 ff")).unwrap(), 2);
    // 300 as LEB128, followed by garbage that is never looked at.
    assert_eq!(peek_version(&hex("ac 02 ff ff")).unwrap(), 300);
}

#[test]
fn peek_version_errors_on_empty_and_unterminated_varints() {
    assert_encode_error(peek_version(&[]), "empty");
    assert_encode_error(peek_version(&hex("80")), "unterminated varint");
    assert_encode_error(peek_version(&hex("ff ff ff ff")), "unterminated varint");
    // Six bytes cannot be a u32 varint.
    assert_encode_error(
        peek_version(&hex("ff ff ff ff ff 01")),
        "overlong u32 varint",
    );
}

#[test]
fn check_version_accepts_zero_and_one() {
    assert_eq!(check_version(&hex("00")).unwrap(), 0);
    assert_eq!(check_version(&hex("01 02 77 66")).unwrap(), 1);
    assert_eq!(ENVELOPE_VERSION, 1);
}

#[test]
fn check_version_rejects_newer_versions() {
    match check_version(&hex("02")) {
        Err(PeerError::EnvelopeVersion { got, supported }) => assert_eq!((got, supported), (2, 1)),
        other => panic!("expected EnvelopeVersion, got {other:?}"),
    }
    match check_version(&hex("80 01")) {
        Err(PeerError::EnvelopeVersion { got, supported }) => {
            assert_eq!((got, supported), (128, 1))
        }
        other => panic!("expected EnvelopeVersion, got {other:?}"),
    }
    assert_encode_error(check_version(&[]), "empty payload");
}

#[test]
fn decode_rejects_version_2_with_the_wire_message() {
    let mut payload = hex("01 02 77 66 01 04 61 3a 3a 62 07 7b 22 78 22 3a 31 7d 01 1e");
    payload[0] = 2;
    let err = Envelope::<SubWorkflowRequest>::decode(&payload).unwrap_err();
    match &err {
        PeerError::EnvelopeVersion { got, supported } => assert_eq!((*got, *supported), (2, 1)),
        other => panic!("expected EnvelopeVersion, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "envelope version 2 is newer than supported 1"
    );
    assert_eq!(err.kind(), "EnvelopeVersion");
    assert_eq!(err.to_status().code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        err.to_status().message(),
        "envelope version 2 is newer than supported 1"
    );
}

#[test]
fn version_is_checked_before_the_rest_is_decoded() {
    // A v2 payload whose remainder is not a v1 struct at all still reports the version.
    for decode in [
        Envelope::<SubWorkflowRequest>::decode(&hex("02 ff ff ff")).map(|_| ()),
        Envelope::<SubWorkflowResponse>::decode(&hex("02")).map(|_| ()),
        Envelope::<DerefRequest>::decode(&hex("02 03")).map(|_| ()),
    ] {
        match decode {
            Err(PeerError::EnvelopeVersion {
                got: 2,
                supported: 1,
            }) => {}
            other => panic!("expected EnvelopeVersion, got {other:?}"),
        }
    }
}

#[test]
fn decode_accepts_version_zero_and_one() {
    for version in [0u8, 1] {
        let mut payload = hex("01 02 77 66 00 02 7b 7d 00");
        payload[0] = version;
        let decoded = Envelope::<SubWorkflowRequest>::decode(&payload).unwrap();
        assert_eq!(decoded.body.envelope_version, u32::from(version));
        assert_eq!(decoded.body.workflow_name, "wf");
        assert_eq!(decoded.body.input_json, b"{}");
        assert_eq!(decoded.body.timeout_secs, None);
    }
}

#[test]
fn empty_payload_is_an_encode_error() {
    assert_encode_error(Envelope::<SubWorkflowRequest>::decode(&[]), "request");
    assert_encode_error(Envelope::<SubWorkflowResponse>::decode(&[]), "response");
    assert_encode_error(Envelope::<DerefRequest>::decode(&[]), "deref");
    assert_encode_error(Envelope::<DerefResponse>::decode(&[]), "deref response");
    assert_encode_error(Envelope::<ReleaseResponse>::decode(&[]), "release response");
}

#[test]
fn every_truncation_of_every_vector_is_an_encode_error() {
    fn check<T: Serialize + DeserializeOwned + std::fmt::Debug>(vector: &str) {
        let full = hex(vector);
        assert!(Envelope::<T>::decode(&full).is_ok(), "full vector {vector}");
        for len in 0..full.len() {
            assert_encode_error(
                Envelope::<T>::decode(&full[..len]),
                &format!("{len} bytes of {vector}"),
            );
        }
    }
    check::<SubWorkflowRequest>("01 02 77 66 01 04 61 3a 3a 62 07 7b 22 78 22 3a 31 7d 01 1e");
    check::<SubWorkflowRequest>("01 02 77 66 00 02 7b 7d 00");
    check::<SubWorkflowResponse>("01 00 01 04 22 6f 6b 22 00 00");
    check::<SubWorkflowResponse>(
        "01 01 01 6b 02 34 32 01 04 22 6f 6b 22 01 10 12 34 56 78 9a bc de f0 12 34 56 78 9a bc \
         de f0 06 6e 6f 64 65 2d 62 05 62 79 74 65 73 80 01 00",
    );
    check::<DerefRequest>("01 10 12 34 56 78 9a bc de f0 12 34 56 78 9a bc de f0");
    check::<DerefResponse>("01 03 61 62 63");
    check::<ReleaseResponse>("01 01");
}

#[test]
fn decode_error_names_the_payload_type_and_length() {
    let err = Envelope::<SubWorkflowRequest>::decode(&hex("01 02 77")).unwrap_err();
    let PeerError::Encode(message) = err else {
        panic!("expected Encode, got {err:?}");
    };
    assert!(
        message.starts_with("payload of 3 bytes does not decode as SubWorkflowRequest: "),
        "{message}"
    );
}

#[path = "../../tests/support/peak_alloc.rs"]
mod peak_alloc;
use peak_alloc::largest_allocation;

#[test]
fn huge_declared_lengths_fail_without_allocating() {
    const LIMIT: usize = 2 << 20;
    let cases = [
        // step_ids declares u32::MAX elements.
        "01 02 77 66 ff ff ff ff 0f",
        // workflow_name declares u32::MAX bytes.
        "01 ff ff ff ff 0f 77 66",
        // input_json declares u32::MAX bytes.
        "01 02 77 66 00 ff ff ff ff 0f",
        // u64::MAX bytes.
        "01 02 77 66 00 ff ff ff ff ff ff ff ff ff 01",
    ];
    for case in cases {
        let payload = hex(case);
        let (result, largest) =
            largest_allocation(|| Envelope::<SubWorkflowRequest>::decode(&payload));
        assert_encode_error(result, case);
        assert!(largest < LIMIT, "{case}: allocated {largest} bytes");
    }
    let payload = hex("01 ff ff ff ff 0f");
    let (result, largest) =
        largest_allocation(|| Envelope::<SubWorkflowResponse>::decode(&payload));
    assert_encode_error(result, "response with u32::MAX state entries");
    assert!(largest < LIMIT, "allocated {largest} bytes");
}

#[test]
fn huge_extension_block_count_is_ignored_without_allocating() {
    let mut payload = Envelope::new(ok_response()).encode().unwrap();
    payload.extend_from_slice(&hex("ff ff ff ff 0f 01 02"));
    let (result, largest) =
        largest_allocation(|| Envelope::<SubWorkflowResponse>::decode(&payload));
    let decoded = result.unwrap();
    assert_eq!(decoded.body, ok_response());
    assert!(decoded.extensions.is_empty());
    assert!(largest < 2 << 20, "allocated {largest} bytes");
}

// ---------------------------------------------------------------------------
// Two-part extension decoding
// ---------------------------------------------------------------------------

#[test]
fn extension_block_is_appended_after_the_v1_fields() {
    let failure = sample_failure();
    let envelope = failed_response(&failure);
    let bytes = envelope.encode().unwrap();
    let body_only = postcard::to_stdvec(&envelope.body).unwrap();
    assert!(bytes.len() > body_only.len());
    assert_eq!(&bytes[..body_only.len()], &body_only[..]);
    // The block: one field, tag 1, then the failure as a byte string.
    let failure_bytes = postcard::to_stdvec(&failure).unwrap();
    let mut block = vec![0x01, 0x01];
    block.extend(postcard::to_stdvec(&failure_bytes).unwrap());
    assert_eq!(&bytes[body_only.len()..], &block[..]);
    // The kind travels by name: length 10, then "StepFailed".
    assert_eq!(&failure_bytes[..11], b"\x0aStepFailed");
}

#[test]
fn old_decoder_reads_a_response_carrying_an_extension() {
    let failure = sample_failure();
    let envelope = failed_response(&failure);
    let bytes = envelope.encode().unwrap();
    // What a v1-only peer does: plain postcard, trailing block ignored.
    let old: SubWorkflowResponse = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(old, envelope.body);
    assert_eq!(old.error.as_deref(), Some(failure.message.as_str()));
    assert_eq!(old.result_json, None);
}

#[test]
fn new_decoder_reads_plain_v1_bytes_without_a_block() {
    let plain = hex("01 00 01 04 22 6f 6b 22 00 00");
    let decoded = Envelope::<SubWorkflowResponse>::decode(&plain).unwrap();
    assert_eq!(decoded.body, ok_response());
    assert!(decoded.extensions.is_empty());
    assert_eq!(decoded.extensions, Extensions::default());
    assert_eq!(decoded.extensions.get::<WorkflowFailure>(), None);

    // The same for a request: v1 bytes of a published client, no block.
    let plain = hex("01 02 77 66 00 02 7b 7d 00");
    let decoded = Envelope::<SubWorkflowRequest>::decode(&plain).unwrap();
    assert!(decoded.extensions.is_empty());
}

#[test]
fn extension_round_trips() {
    let failure = sample_failure();
    let envelope = failed_response(&failure);
    let bytes = envelope.encode().unwrap();
    let decoded = Envelope::<SubWorkflowResponse>::decode(&bytes).unwrap();
    assert_eq!(decoded, envelope);
    assert_eq!(decoded.extensions.get::<WorkflowFailure>(), Some(failure));
    // Re-encoding gives the same bytes.
    assert_eq!(decoded.encode().unwrap(), bytes);
}

#[test]
fn every_failure_kind_round_trips() {
    for kind in [
        FailureKind::StepFailed,
        FailureKind::NoStopEvent,
        FailureKind::NoAcceptingStep,
        FailureKind::Timeout,
        FailureKind::Cancelled,
        FailureKind::ResultNotJson,
        FailureKind::Other,
    ] {
        let failure = WorkflowFailure {
            kind,
            remote_type: None,
            remote_traceback: None,
            step_id: None,
            ..sample_failure()
        };
        let bytes = failed_response(&failure).encode().unwrap();
        let decoded = Envelope::<SubWorkflowResponse>::decode(&bytes).unwrap();
        assert_eq!(decoded.extensions.get::<WorkflowFailure>(), Some(failure));
    }
}

#[test]
fn insert_replaces_the_value_under_the_same_tag() {
    let mut extensions = Extensions::default();
    assert!(extensions.is_empty());
    extensions.insert(&sample_failure()).unwrap();
    let second = WorkflowFailure {
        kind: FailureKind::Timeout,
        ..sample_failure()
    };
    extensions.insert(&second).unwrap();
    assert_eq!(extensions.get::<WorkflowFailure>(), Some(second));
    let mut envelope = Envelope::new(ok_response());
    envelope.extensions = extensions;
    let bytes = envelope.encode().unwrap();
    let body_len = postcard::to_stdvec(&ok_response()).unwrap().len();
    // One field only in the block.
    assert_eq!(bytes[body_len], 0x01);
}

#[test]
fn unknown_extension_tags_are_skipped() {
    let failure = sample_failure();
    let mut envelope = failed_response(&failure);
    let future = FutureExtension {
        level: 9,
        label: "from a newer peer".into(),
    };
    envelope.extensions.insert(&future).unwrap();
    let bytes = envelope.encode().unwrap();

    let decoded = Envelope::<SubWorkflowResponse>::decode(&bytes).unwrap();
    assert_eq!(decoded.body, envelope.body);
    // The known tag still decodes next to the unknown one.
    assert_eq!(decoded.extensions.get::<WorkflowFailure>(), Some(failure));

    // A block holding only an unknown tag gives no WorkflowFailure.
    let mut only_unknown = Envelope::new(ok_response());
    only_unknown.extensions.insert(&future).unwrap();
    let bytes = only_unknown.encode().unwrap();
    let decoded = Envelope::<SubWorkflowResponse>::decode(&bytes).unwrap();
    assert_eq!(decoded.body, ok_response());
    assert_eq!(decoded.extensions.get::<WorkflowFailure>(), None);
    assert_eq!(decoded.extensions.get::<FutureExtension>(), Some(future));
}

#[test]
fn undecodable_value_under_a_known_tag_is_none() {
    let mut payload = Envelope::new(ok_response()).encode().unwrap();
    // One field, tag 1, value = 2 bytes that are not a WorkflowFailure (variant 99).
    payload.extend_from_slice(&hex("01 01 02 63 00"));
    let decoded = Envelope::<SubWorkflowResponse>::decode(&payload).unwrap();
    assert_eq!(decoded.body, ok_response());
    assert_eq!(decoded.extensions.get::<WorkflowFailure>(), None);
}

#[test]
fn garbage_trailing_bytes_are_ignored() {
    let garbage_tails = [
        "ff",
        "ff ff ff ff ff ff ff ff ff ff ff",
        // Claims 5 fields, holds none.
        "05",
        // One field whose value claims 200 bytes.
        "01 01 c8 01 00",
        // One field with an unterminated tag varint.
        "01 80",
    ];
    for tail in garbage_tails {
        let mut payload = Envelope::new(ok_response()).encode().unwrap();
        payload.extend_from_slice(&hex(tail));
        let decoded = Envelope::<SubWorkflowResponse>::decode(&payload).unwrap();
        assert_eq!(decoded.body, ok_response(), "tail {tail}");
        assert!(decoded.extensions.is_empty(), "tail {tail}");
        assert_eq!(decoded.extensions.get::<WorkflowFailure>(), None);

        let mut payload = hex("01 02 77 66 00 02 7b 7d 00");
        payload.extend_from_slice(&hex(tail));
        let decoded = Envelope::<SubWorkflowRequest>::decode(&payload).unwrap();
        assert_eq!(decoded.body.workflow_name, "wf", "tail {tail}");
        assert!(decoded.extensions.is_empty(), "tail {tail}");
    }
}

#[test]
fn empty_extensions_add_no_bytes() {
    let mut envelope = Envelope::new(ok_response());
    envelope.extensions = Extensions::default();
    assert_eq!(
        envelope.encode().unwrap(),
        hex("01 00 01 04 22 6f 6b 22 00 00")
    );
}

// ---------------------------------------------------------------------------
// What proto/blazen_peer.proto documents for other-language peers
// ---------------------------------------------------------------------------

/// Fails: proto/blazen_peer.proto documents response tag 1 as
/// `WorkflowFailure { kind: String, ... }` with kind one of "StepFailed", ...,
/// but `FailureKind` is a Rust enum that postcard writes as a varint variant
/// index (StepFailed = `00`), so a peer following the proto comment is not
/// understood (and cannot read ours).
#[test]
fn workflow_failure_kind_is_the_string_the_proto_documents() {
    let documented = (
        "StepFailed",
        "boom",
        Some("ValueError"),
        None::<String>,
        Some("b::x"),
        "node-b",
    );
    let value = postcard::to_stdvec(&documented).unwrap();
    let mut payload = Envelope::new(SubWorkflowResponse {
        envelope_version: 1,
        error: Some("boom".into()),
        ..Default::default()
    })
    .encode()
    .unwrap();
    payload.extend(postcard::to_stdvec(&vec![(1u32, ByteBuf::from(value.clone()))]).unwrap());
    let decoded = Envelope::<SubWorkflowResponse>::decode(&payload).unwrap();
    let ours = WorkflowFailure {
        kind: FailureKind::StepFailed,
        message: "boom".into(),
        remote_type: Some("ValueError".into()),
        remote_traceback: None,
        step_id: Some("b::x".into()),
        node_id: "node-b".into(),
    };
    assert_eq!(
        postcard::to_stdvec(&ours).unwrap(),
        value,
        "our encoding of tag 1"
    );
    assert_eq!(decoded.extensions.get::<WorkflowFailure>(), Some(ours));
}

/// Fails: proto/blazen_peer.proto documents the NOT_FOUND details as postcard
/// `UnknownStepDetail { step_id: String, registered: Vec<String> }`, but
/// error.rs sends and expects `NotFoundDetail { missing, is_workflow: bool,
/// registered }`. A documented detail from another peer loses its step id
/// (from_status falls back to `step_id: ""`), and a peer decoding ours as
/// documented reads `is_workflow` as the count and gets no registered ids.
#[test]
fn unknown_step_details_are_the_ones_the_proto_documents() {
    let documented = (
        "b::missing",
        false,
        vec!["a::b".to_string(), "c::d".to_string()],
    );
    let status = tonic::Status::with_details(
        tonic::Code::NotFound,
        "step `b::missing` is not registered",
        postcard::to_stdvec(&documented).unwrap().into(),
    );
    match PeerError::from_status(&status, "http://peer") {
        PeerError::UnknownStep {
            step_id,
            registered,
            ..
        } => {
            assert_eq!(step_id, "b::missing");
            assert_eq!(registered, documented.2);
        }
        other => panic!("expected UnknownStep, got {other:?}"),
    }
    let ours = PeerError::UnknownStep {
        step_id: "b::missing".into(),
        registered: documented.2.clone(),
        node: "`node-b`".into(),
    }
    .to_status();
    let read: (String, bool, Vec<String>) = postcard::from_bytes(ours.details()).unwrap();
    assert_eq!(read, ("b::missing".to_string(), false, documented.2));
}

// ---------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------

// The payload strategies (one copy, shared with tests/fuzz_decoders.rs).
#[path = "../../tests/support/strategies.rs"]
mod strategies;
use strategies::{arb_failure, arb_request, arb_response};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn prop_request_round_trips(body in arb_request()) {
        let envelope = Envelope::new(body.clone());
        let bytes = envelope.encode().unwrap();
        prop_assert_eq!(&bytes, &postcard::to_stdvec(&body).unwrap());
        prop_assert_eq!(peek_version(&bytes).unwrap(), body.envelope_version);
        let decoded = Envelope::<SubWorkflowRequest>::decode(&bytes).unwrap();
        prop_assert_eq!(decoded, envelope);
    }

    #[test]
    fn prop_response_round_trips(
        body in arb_response(),
        failure in proptest::option::of(arb_failure()),
    ) {
        let mut envelope = Envelope::new(body.clone());
        if let Some(failure) = &failure {
            envelope.extensions.insert(failure).unwrap();
        }
        let bytes = envelope.encode().unwrap();
        let decoded = Envelope::<SubWorkflowResponse>::decode(&bytes).unwrap();
        prop_assert_eq!(&decoded, &envelope);
        prop_assert_eq!(decoded.extensions.get::<WorkflowFailure>(), failure);
        // An old decoder sees the same v1 fields.
        prop_assert_eq!(postcard::from_bytes::<SubWorkflowResponse>(&bytes).unwrap(), body);
    }

    #[test]
    fn prop_trailing_bytes_never_change_the_request_body(
        body in arb_request(),
        tail in proptest::collection::vec(any::<u8>(), 0..32),
    ) {
        let mut bytes = Envelope::new(body.clone()).encode().unwrap();
        bytes.extend_from_slice(&tail);
        let decoded = Envelope::<SubWorkflowRequest>::decode(&bytes).unwrap();
        prop_assert_eq!(decoded.body, body);
    }

    #[test]
    fn prop_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
        match Envelope::<SubWorkflowRequest>::decode(&bytes) {
            Ok(decoded) => {
                prop_assert!(decoded.body.envelope_version <= ENVELOPE_VERSION);
                // Whatever decoded re-encodes to a prefix-compatible payload.
                let again = Envelope::<SubWorkflowRequest>::decode(&decoded.encode().unwrap()).unwrap();
                prop_assert_eq!(again.body, decoded.body);
            }
            Err(PeerError::EnvelopeVersion { got, supported }) => {
                prop_assert!(got > supported);
                prop_assert_eq!(supported, ENVELOPE_VERSION);
            }
            Err(PeerError::Encode(_)) => {}
            Err(other) => prop_assert!(false, "unexpected error kind {:?}", other),
        }
        // The other payload types must not panic either.
        let _ = Envelope::<SubWorkflowResponse>::decode(&bytes);
        let _ = Envelope::<DerefRequest>::decode(&bytes);
        let _ = Envelope::<DerefResponse>::decode(&bytes);
        let _ = Envelope::<ReleaseResponse>::decode(&bytes);
    }

    #[test]
    fn prop_arbitrary_bytes_after_version_one_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..96),
    ) {
        // Forces the body decoder (not just the version check) to see random input.
        let mut payload = vec![0x01];
        payload.extend_from_slice(&bytes);
        match Envelope::<SubWorkflowRequest>::decode(&payload) {
            Ok(decoded) => prop_assert_eq!(decoded.body.envelope_version, 1),
            Err(PeerError::Encode(_)) => {}
            Err(other) => prop_assert!(false, "unexpected error kind {:?}", other),
        }
        let _ = Envelope::<SubWorkflowResponse>::decode(&payload);
    }
}

#[test]
fn a_borrowed_deref_piece_encodes_like_the_owned_struct() {
    let owned = DerefChunk {
        envelope_version: ENVELOPE_VERSION,
        total_len: 10,
        type_tag: "bytes".into(),
        offset: 4,
        bytes: b"abc".to_vec(),
    };
    let borrowed = DerefChunk::encode_piece(10, "bytes", 4, b"abc").unwrap();
    assert_eq!(borrowed, Envelope::new(owned.clone()).encode().unwrap());
    assert_eq!(
        Envelope::<DerefChunk>::decode(&borrowed).unwrap().body,
        owned
    );
}

#[test]
fn piece_heads_are_the_pieces_up_to_their_bytes() {
    let value = vec![7u8; 300];
    let mut deref = DerefChunk::encode_head(1000, "bytes", 200, value.len()).unwrap();
    deref.extend_from_slice(&value);
    assert_eq!(
        deref,
        DerefChunk::encode_piece(1000, "bytes", 200, &value).unwrap()
    );
    let mut upload = crate::envelope::PutRefPiece::encode_head(200, value.len()).unwrap();
    upload.extend_from_slice(&value);
    assert_eq!(
        upload,
        crate::envelope::PutRefPiece::encode(200, &value).unwrap()
    );
}

#[test]
fn a_postcard_piece_is_a_postcard_request_on_the_wire() {
    use prost::Message;
    let head = b"head".to_vec();
    let value = vec![9u8; 200];
    let piece = crate::piece::PostcardPiece::new(head.clone(), value.clone().into());
    let whole: Vec<u8> = [head, value].concat();
    let request = crate::pb::PostcardRequest {
        postcard_payload: whole.clone().into(),
    };
    assert_eq!(piece.encode_to_vec(), request.encode_to_vec());
    assert_eq!(piece.encoded_len(), request.encoded_len());
    let decoded = crate::piece::PostcardPiece::decode(&request.encode_to_vec()[..]).unwrap();
    assert_eq!(&decoded.postcard_payload[..], &whole[..]);
    assert!(decoded.value.is_empty());
    assert!(crate::piece::PostcardPiece::default()
        .encode_to_vec()
        .is_empty());
}

#[test]
fn stream_items_have_the_documented_layout() {
    // proto/blazen_peer.proto: StreamItem { envelope_version, kind, event_type, payload }.
    let event = Envelope::new(StreamItem::event("a.B", b"{}".to_vec()))
        .encode()
        .unwrap();
    assert_eq!(
        event,
        [0x01, 0x01, 0x03, b'a', b'.', b'B', 0x02, b'{', b'}']
    );
    let response = Envelope::new(SubWorkflowResponse {
        envelope_version: ENVELOPE_VERSION,
        result_json: Some(serde_bytes::ByteBuf::from(b"\"ok\"".to_vec())),
        ..Default::default()
    });
    let done = Envelope::new(StreamItem::done(&response).unwrap())
        .encode()
        .unwrap();
    // DONE carries the exact bytes InvokeSubWorkflow would answer.
    let inner = response.encode().unwrap();
    assert_eq!(&done[..4], &[0x01, 0x02, 0x00, inner.len() as u8]);
    assert_eq!(&done[4..], &inner[..]);
    let decoded = Envelope::<StreamItem>::decode(&done).unwrap().body;
    assert_eq!(decoded.kind, StreamItem::DONE);
    assert_eq!(
        Envelope::<SubWorkflowResponse>::decode(&decoded.payload).unwrap(),
        response
    );
}
