//! The proptest strategies for envelope payloads, one copy for the envelope unit
//! tests (`src/envelope/tests.rs`) and the decoder fuzz tests (`fuzz_decoders.rs`).
//! Included with `#[path]` by both: an integration test cannot see `#[cfg(test)]`
//! items of the crate. The including module brings the payload types, `Uuid`,
//! `ByteBuf`, `ENVELOPE_VERSION` and `proptest::prelude::*` into scope; this file
//! takes them from there, so the same text compiles inside and outside the crate.

use super::*;

pub fn arb_version() -> impl Strategy<Value = u32> {
    0..=ENVELOPE_VERSION
}

pub fn arb_uuid() -> impl Strategy<Value = Uuid> {
    any::<[u8; 16]>().prop_map(Uuid::from_bytes)
}

pub fn arb_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

pub fn arb_request() -> impl Strategy<Value = SubWorkflowRequest> {
    (
        arb_version(),
        any::<String>(),
        proptest::collection::vec(any::<String>(), 0..4),
        arb_bytes(48),
        any::<Option<u64>>(),
    )
        .prop_map(
            |(envelope_version, workflow_name, step_ids, input_json, timeout_secs)| {
                SubWorkflowRequest {
                    envelope_version,
                    workflow_name,
                    step_ids,
                    input_json,
                    timeout_secs,
                }
            },
        )
}

pub fn arb_descriptor() -> impl Strategy<Value = RemoteRefDescriptor> {
    (any::<String>(), any::<String>(), any::<u64>()).prop_map(
        |(origin_node_id, type_tag, created_at_epoch_ms)| RemoteRefDescriptor {
            origin_node_id,
            type_tag,
            created_at_epoch_ms,
        },
    )
}

pub fn arb_response() -> impl Strategy<Value = SubWorkflowResponse> {
    (
        arb_version(),
        proptest::collection::btree_map(
            any::<String>(),
            arb_bytes(16).prop_map(ByteBuf::from),
            0..3,
        ),
        proptest::option::of(arb_bytes(16).prop_map(ByteBuf::from)),
        proptest::collection::btree_map(arb_uuid(), arb_descriptor(), 0..3),
        any::<Option<String>>(),
    )
        .prop_map(
            |(envelope_version, state_json, result_json, remote_refs, error)| SubWorkflowResponse {
                envelope_version,
                state_json,
                result_json,
                remote_refs,
                error,
            },
        )
}

pub fn arb_failure_kind() -> impl Strategy<Value = FailureKind> {
    prop_oneof![
        Just(FailureKind::StepFailed),
        Just(FailureKind::NoStopEvent),
        Just(FailureKind::NoAcceptingStep),
        Just(FailureKind::Timeout),
        Just(FailureKind::Cancelled),
        Just(FailureKind::StepTimeout),
        Just(FailureKind::ResultNotJson),
        Just(FailureKind::Other),
    ]
}

pub fn arb_failure() -> impl Strategy<Value = WorkflowFailure> {
    (
        arb_failure_kind(),
        any::<String>(),
        any::<Option<String>>(),
        any::<Option<String>>(),
        any::<Option<String>>(),
        any::<String>(),
    )
        .prop_map(
            |(kind, message, remote_type, remote_traceback, step_id, node_id)| WorkflowFailure {
                kind,
                message,
                remote_type,
                remote_traceback,
                step_id,
                node_id,
            },
        )
}
