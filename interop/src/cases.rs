//! The crate's gRPC client (`BlazenPeerClient`) against a peer of this project
//! (`tests/peer_app.py`): one JSON line per case, `{"case", "ok", "detail"}`.
//! Each case checks what the crate's client sees, so a failure names the case.
//! The cases HTTP/JSON shares are in `calls.rs`; state and timeouts are run here.

use std::process::ExitCode;

use blazen_peer::client::BlazenPeerClient;
use serde_json::json;
use tonic::Code;

use crate::calls::{impl_peer_calls, invoke, run_common, succeeded, Outcome, Refusal, Report};

/// Every case, in order.
pub async fn run(address: &str) -> ExitCode {
    let mut report = Report::new("");
    let mut client = match BlazenPeerClient::connect(address.to_owned(), "rust-client").await {
        Ok(client) => client,
        Err(err) => {
            report.check(
                "connect",
                Err(format!("cannot connect to {address}: {err}")),
            );
            return ExitCode::FAILURE;
        }
    };
    run_common(&mut client, &mut report).await;
    report.check("state", state(&mut client).await);
    report.check("timeout", timeout(&mut client).await);
    if report.all_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

impl_peer_calls!(BlazenPeerClient, says);

/// The crate's client reports a status as text only: its code's
/// description (tonic's `Display`) and its message.
fn says(error: &str, refusal: Refusal) -> bool {
    let code = match refusal {
        Refusal::NotFound => Code::NotFound,
        Refusal::FailedPrecondition => Code::FailedPrecondition,
    };
    error.contains(code.description())
}

/// Public state keys are exported; `_` keys are not.
async fn state(client: &mut BlazenPeerClient) -> Outcome {
    let response = invoke(client, &["test::state"], &json!({}), 30).await?;
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

/// A run past its `timeout_secs`: OK with `error` naming the deadline.
async fn timeout(client: &mut BlazenPeerClient) -> Outcome {
    let response = invoke(client, &["test::sleep"], &json!({}), 1).await?;
    match &response.error {
        Some(error) if error.contains("1s deadline") => Ok(error.clone()),
        other => Err(format!("expected a timeout error, got {other:?}")),
    }
}
