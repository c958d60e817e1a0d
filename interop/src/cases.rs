//! The crate's client (`BlazenPeerClient`) against a peer of this project
//! (`tests/peer_app.py`): one JSON line per case, `{"case", "ok", "detail"}`.
//! Each case checks what the crate's client sees, so a failure names the case.

use std::process::ExitCode;

use blazen_core::session_ref::RegistryKey;
use blazen_peer::client::BlazenPeerClient;
use blazen_peer::protocol::{SubWorkflowRequest, SubWorkflowResponse, ENVELOPE_VERSION};
use serde_json::{json, Value};
use tonic::Code;
use uuid::Uuid;

type Outcome = Result<String, String>;

/// Every case, in order. Later cases use the ref made by `remote_refs`.
pub async fn run(address: &str) -> ExitCode {
    let mut client = match BlazenPeerClient::connect(address.to_owned(), "rust-client").await {
        Ok(client) => client,
        Err(err) => {
            report(
                "connect",
                Err(format!("cannot connect to {address}: {err}")),
            );
            return ExitCode::FAILURE;
        }
    };
    let mut all_ok = true;
    let mut check = |case: &str, outcome: Outcome| {
        all_ok &= outcome.is_ok();
        report(case, outcome);
    };
    check("pipeline", pipeline(&mut client).await);
    check("state", state(&mut client).await);
    check("unknown_step", unknown_step(&mut client).await);
    check("workflow_error", workflow_error(&mut client).await);
    check("newer_envelope", newer_envelope(&mut client).await);
    check("timeout", timeout(&mut client).await);
    match remote_refs(&mut client).await {
        Ok(key) => {
            check("remote_refs", Ok(format!("ref {key} listed")));
            check("deref", deref(&mut client, key).await);
            check("release", release(&mut client, key).await);
        }
        Err(err) => check("remote_refs", Err(err)),
    }
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn report(case: &str, outcome: Outcome) {
    let (ok, detail) = match outcome {
        Ok(detail) => (true, detail),
        Err(detail) => (false, detail),
    };
    println!("{}", json!({"case": case, "ok": ok, "detail": detail}));
}

async fn invoke(
    client: &mut BlazenPeerClient,
    steps: &[&str],
    input: &Value,
    timeout_secs: Option<u64>,
) -> Result<SubWorkflowResponse, String> {
    let steps = steps.iter().map(|id| (*id).to_owned()).collect();
    let request = SubWorkflowRequest::new("interop", steps, input, timeout_secs)
        .map_err(|err| format!("cannot build the request: {err}"))?;
    client
        .invoke_sub_workflow(request)
        .await
        .map_err(|err| format!("call failed: {err}"))
}

fn succeeded(response: &SubWorkflowResponse) -> Result<Value, String> {
    if let Some(error) = &response.error {
        return Err(format!("the run failed: {error}"));
    }
    response
        .result_value()
        .map_err(|err| format!("result is not JSON: {err}"))?
        .ok_or_else(|| "no result".to_owned())
}

/// Two steps chained on the peer (the README's), and the state they export.
async fn pipeline(client: &mut BlazenPeerClient) -> Outcome {
    let input = json!({"document": "one two three"});
    let response = invoke(
        client,
        &["my_app::analyze", "my_app::summarize"],
        &input,
        Some(30),
    )
    .await?;
    let result = succeeded(&response)?;
    let expected = json!({"words": 3, "summary": "one two three"});
    if result != expected {
        return Err(format!("result {result}, expected {expected}"));
    }
    let state = response
        .state_values()
        .map_err(|err| format!("state is not JSON: {err}"))?;
    match state.get("language") {
        Some(language) if language == "en" => Ok(format!("result {result}, state {state:?}")),
        _ => Err(format!("state {state:?} lacks language=en")),
    }
}

/// Public state keys are exported; `_` keys are not.
async fn state(client: &mut BlazenPeerClient) -> Outcome {
    let response = invoke(client, &["test::state"], &json!({}), Some(30)).await?;
    succeeded(&response)?;
    let state = response
        .state_values()
        .map_err(|err| format!("state is not JSON: {err}"))?;
    let expected_nested = json!({"a": [1, 2, null], "ok": true});
    if state.get("count") != Some(&json!(3)) || state.get("nested") != Some(&expected_nested) {
        return Err(format!("state {state:?}"));
    }
    if state.contains_key("_secret") {
        return Err(format!("a private key was exported: {state:?}"));
    }
    Ok(format!("state {state:?}"))
}

/// The crate's client reports a status as text only: its code's description
/// (tonic's `Display`) and its message.
fn has_status(text: &str, code: Code) -> bool {
    text.contains(code.description())
}

/// NOT_FOUND naming the step.
async fn unknown_step(client: &mut BlazenPeerClient) -> Outcome {
    match invoke(client, &["interop::missing"], &json!({}), Some(30)).await {
        Ok(response) => Err(format!("expected NOT_FOUND, got {response:?}")),
        Err(err) if has_status(&err, Code::NotFound) && err.contains("interop::missing") => Ok(err),
        Err(err) => Err(format!("expected NOT_FOUND naming the step, got: {err}")),
    }
}

/// A step that raises: OK with `error` set (and our extension block after it).
async fn workflow_error(client: &mut BlazenPeerClient) -> Outcome {
    let response = invoke(client, &["test::boom"], &json!({}), Some(30)).await?;
    match &response.error {
        Some(error) if error.contains("boom") => Ok(error.clone()),
        other => Err(format!("expected an error naming `boom`, got {other:?}")),
    }
}

/// A payload of a newer envelope version: FAILED_PRECONDITION with WIRE.md's text.
async fn newer_envelope(client: &mut BlazenPeerClient) -> Outcome {
    let mut request =
        SubWorkflowRequest::new("interop", vec!["test::echo".into()], &json!({}), None)
            .map_err(|err| format!("cannot build the request: {err}"))?;
    request.envelope_version = ENVELOPE_VERSION + 1;
    let expected = format!(
        "envelope version {} is newer than supported {ENVELOPE_VERSION}",
        ENVELOPE_VERSION + 1
    );
    match client.invoke_sub_workflow(request).await {
        Ok(response) => Err(format!("expected FAILED_PRECONDITION, got {response:?}")),
        Err(err)
            if has_status(&err.to_string(), Code::FailedPrecondition)
                && err.to_string().contains(&expected) =>
        {
            Ok(err.to_string())
        }
        Err(err) => Err(format!(
            "expected FAILED_PRECONDITION `{expected}`, got: {err}"
        )),
    }
}

/// A run past its `timeout_secs`: OK with `error` naming the deadline.
async fn timeout(client: &mut BlazenPeerClient) -> Outcome {
    let response = invoke(client, &["test::sleep"], &json!({}), Some(1)).await?;
    match &response.error {
        Some(error) if error.contains("1s deadline") => Ok(error.clone()),
        other => Err(format!("expected a timeout error, got {other:?}")),
    }
}

/// A step inserting a session ref: its descriptor comes back in `remote_refs`.
async fn remote_refs(client: &mut BlazenPeerClient) -> Result<Uuid, String> {
    let input = json!({"kind": "json", "value": {"from": "rust"}});
    let response = invoke(client, &["refs::make_value"], &input, Some(30)).await?;
    let result = succeeded(&response)?;
    let key: Uuid = result
        .as_str()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| format!("result {result} is not a ref key"))?;
    let descriptor = response
        .remote_refs
        .get(&key)
        .ok_or_else(|| format!("ref {key} not in remote_refs {:?}", response.remote_refs))?;
    if descriptor.origin_node_id.is_empty() || descriptor.type_tag.is_empty() {
        return Err(format!("descriptor {descriptor:?} lacks a node or a tag"));
    }
    Ok(key)
}

/// The ref's bytes: the JSON value, as this project encodes a JSON ref.
async fn deref(client: &mut BlazenPeerClient, key: Uuid) -> Outcome {
    let bytes = client
        .deref_session_ref(RegistryKey(key))
        .await
        .map_err(|err| format!("deref failed: {err}"))?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|err| format!("deref gave {} bytes that are not JSON: {err}", bytes.len()))?;
    if value == json!({"from": "rust"}) {
        Ok(format!("deref gave {value}"))
    } else {
        Err(format!("deref gave {value}"))
    }
}

/// Release: true once, false after; a deref after it is NOT_FOUND.
async fn release(client: &mut BlazenPeerClient, key: Uuid) -> Outcome {
    let first = client.release_session_ref(RegistryKey(key)).await;
    let second = client.release_session_ref(RegistryKey(key)).await;
    let after = client.deref_session_ref(RegistryKey(key)).await;
    match (&first, &second, &after) {
        (Ok(true), Ok(false), Err(err)) if has_status(&err.to_string(), Code::NotFound) => {
            Ok(format!("released, then false, then deref: {err}"))
        }
        _ => Err(format!(
            "release {first:?}, again {second:?}, deref after {after:?}"
        )),
    }
}
