//! The cases both of the crate's clients run against a peer of this project,
//! written once over [`PeerCalls`]. The gRPC `BlazenPeerClient` (`cases.rs`)
//! and the HTTP/JSON `HttpPeerClient` (`http_cases.rs`) differ only in how a
//! call is made and how a refusal reads, so a case cannot drift between them.

use blazen_core::session_ref::RegistryKey;
use blazen_peer::protocol::{SubWorkflowRequest, SubWorkflowResponse, ENVELOPE_VERSION};
use serde_json::{json, Value};
use uuid::Uuid;

pub(crate) type Outcome = Result<String, String>;

/// The refusals the cases expect, named as gRPC names them.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Refusal {
    NotFound,
    FailedPrecondition,
}

/// One of the crate's clients. Errors are text because that is all either
/// client gives its caller.
pub(crate) trait PeerCalls {
    async fn invoke(&mut self, request: SubWorkflowRequest) -> Result<SubWorkflowResponse, String>;
    async fn deref(&mut self, key: RegistryKey) -> Result<Vec<u8>, String>;
    async fn release(&mut self, key: RegistryKey) -> Result<bool, String>;
    /// Whether `error` is this transport's wording of `refusal`.
    fn says(&self, error: &str, refusal: Refusal) -> bool;
}

/// The three calls of a client of the crate, which both clients name alike;
/// `$says` is how that client words a refusal.
macro_rules! impl_peer_calls {
    ($client:ty, $says:expr) => {
        impl $crate::calls::PeerCalls for $client {
            async fn invoke(
                &mut self,
                request: blazen_peer::protocol::SubWorkflowRequest,
            ) -> Result<blazen_peer::protocol::SubWorkflowResponse, String> {
                self.invoke_sub_workflow(request)
                    .await
                    .map_err(|err| err.to_string())
            }

            async fn deref(
                &mut self,
                key: blazen_core::session_ref::RegistryKey,
            ) -> Result<Vec<u8>, String> {
                self.deref_session_ref(key)
                    .await
                    .map_err(|err| err.to_string())
            }

            async fn release(
                &mut self,
                key: blazen_core::session_ref::RegistryKey,
            ) -> Result<bool, String> {
                self.release_session_ref(key)
                    .await
                    .map_err(|err| err.to_string())
            }

            fn says(&self, error: &str, refusal: $crate::calls::Refusal) -> bool {
                let says: fn(&str, $crate::calls::Refusal) -> bool = $says;
                says(error, refusal)
            }
        }
    };
}
pub(crate) use impl_peer_calls;

/// Prints one JSON line per case and remembers whether all passed.
pub(crate) struct Report {
    prefix: &'static str,
    all_ok: bool,
}

impl Report {
    pub(crate) fn new(prefix: &'static str) -> Self {
        Self {
            prefix,
            all_ok: true,
        }
    }

    pub(crate) fn check(&mut self, case: &str, outcome: Outcome) {
        self.all_ok &= outcome.is_ok();
        let (ok, detail) = match outcome {
            Ok(detail) => (true, detail),
            Err(detail) => (false, detail),
        };
        let case = format!("{}{case}", self.prefix);
        println!("{}", json!({"case": case, "ok": ok, "detail": detail}));
    }

    pub(crate) fn all_ok(&self) -> bool {
        self.all_ok
    }
}

/// The cases every transport has. Later ones use the ref `remote_refs` made.
pub(crate) async fn run_common(client: &mut impl PeerCalls, report: &mut Report) {
    report.check("pipeline", pipeline(client).await);
    report.check("unknown_step", unknown_step(client).await);
    report.check("workflow_error", workflow_error(client).await);
    report.check("newer_envelope", newer_envelope(client).await);
    match remote_refs(client).await {
        Ok(key) => {
            report.check("remote_refs", Ok(format!("ref {key} listed")));
            report.check("deref", deref(client, key).await);
            report.check("release", release(client, key).await);
        }
        Err(err) => report.check("remote_refs", Err(err)),
    }
}

pub(crate) async fn invoke(
    client: &mut impl PeerCalls,
    steps: &[&str],
    input: &Value,
    timeout_secs: u64,
) -> Result<SubWorkflowResponse, String> {
    let steps = steps.iter().map(|id| (*id).to_owned()).collect();
    let request = SubWorkflowRequest::new("interop", steps, input, Some(timeout_secs))
        .map_err(|err| format!("cannot build the request: {err}"))?;
    client
        .invoke(request)
        .await
        .map_err(|err| format!("call failed: {err}"))
}

pub(crate) fn succeeded(response: &SubWorkflowResponse) -> Result<Value, String> {
    if let Some(error) = &response.error {
        return Err(format!("the run failed: {error}"));
    }
    response
        .result_value()
        .map_err(|err| format!("result is not JSON: {err}"))?
        .ok_or_else(|| "no result".to_owned())
}

/// Two steps chained on the peer (the README's), and the state they export.
async fn pipeline(client: &mut impl PeerCalls) -> Outcome {
    let input = json!({"document": "one two three"});
    let response = invoke(
        client,
        &["my_app::analyze", "my_app::summarize"],
        &input,
        30,
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

/// NOT_FOUND (HTTP 404) naming the step.
async fn unknown_step(client: &mut impl PeerCalls) -> Outcome {
    match invoke(client, &["interop::missing"], &json!({}), 30).await {
        Ok(response) => Err(format!("expected NOT_FOUND, got {response:?}")),
        Err(err) if client.says(&err, Refusal::NotFound) && err.contains("interop::missing") => {
            Ok(err)
        }
        Err(err) => Err(format!("expected NOT_FOUND naming the step, got: {err}")),
    }
}

/// A step that raises: OK with `error` set (and our extension block after it,
/// which the crate's decoder must skip).
async fn workflow_error(client: &mut impl PeerCalls) -> Outcome {
    let response = invoke(client, &["test::boom"], &json!({}), 30).await?;
    match &response.error {
        Some(error) if error.contains("boom") => Ok(error.clone()),
        other => Err(format!("expected an error naming `boom`, got {other:?}")),
    }
}

/// A payload of a newer envelope version: FAILED_PRECONDITION (HTTP 400) with
/// the wire description's text.
async fn newer_envelope(client: &mut impl PeerCalls) -> Outcome {
    let mut request =
        SubWorkflowRequest::new("interop", vec!["test::echo".into()], &json!({}), None)
            .map_err(|err| format!("cannot build the request: {err}"))?;
    request.envelope_version = ENVELOPE_VERSION + 1;
    let expected = format!(
        "envelope version {} is newer than supported {ENVELOPE_VERSION}",
        ENVELOPE_VERSION + 1
    );
    match client.invoke(request).await {
        Ok(response) => Err(format!("expected FAILED_PRECONDITION, got {response:?}")),
        Err(err) if client.says(&err, Refusal::FailedPrecondition) && err.contains(&expected) => {
            Ok(err)
        }
        Err(err) => Err(format!(
            "expected FAILED_PRECONDITION `{expected}`, got: {err}"
        )),
    }
}

/// A step inserting a session ref: its descriptor comes back in `remote_refs`.
async fn remote_refs(client: &mut impl PeerCalls) -> Result<Uuid, String> {
    let input = json!({"kind": "json", "value": {"from": "rust"}});
    let response = invoke(client, &["refs::make_value"], &input, 30).await?;
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
async fn deref(client: &mut impl PeerCalls, key: Uuid) -> Outcome {
    let bytes = client
        .deref(RegistryKey(key))
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
async fn release(client: &mut impl PeerCalls, key: Uuid) -> Outcome {
    let first = client.release(RegistryKey(key)).await;
    let second = client.release(RegistryKey(key)).await;
    let after = client.deref(RegistryKey(key)).await;
    match (&first, &second, &after) {
        (Ok(true), Ok(false), Err(err)) if client.says(err, Refusal::NotFound) => {
            Ok(format!("released, then false, then deref: {err}"))
        }
        _ => Err(format!(
            "release {first:?}, again {second:?}, deref after {after:?}"
        )),
    }
}
