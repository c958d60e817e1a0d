//! The crate's HTTP/JSON client (`HttpPeerClient`, feature `http-transport`)
//! against a peer of this project serving its routes (`PeerServer(http_json=True)`):
//! the same cases as `cases.rs` where HTTP/JSON has them, one JSON line each.
//!
//! `HttpPeerClient` sends its requests through an [`HttpClient`] the host
//! supplies (a Worker's `fetch`, reqwest...); here that is [`PlainHttp`], a
//! minimal HTTP/1.1 client that sends the request exactly as built, plus
//! `Authorization: Bearer <token>` when it has a token, as a host's client
//! would add its credentials.

use std::process::ExitCode;
use std::sync::Arc;

use blazen_core::session_ref::RegistryKey;
use blazen_llm::error::BlazenError;
use blazen_llm::http::{ByteStream, HttpClient, HttpMethod, HttpRequest, HttpResponse};
use blazen_peer::http_client::HttpPeerClient;
use blazen_peer::protocol::{SubWorkflowRequest, SubWorkflowResponse, ENVELOPE_VERSION};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

type Outcome = Result<String, String>;

/// Every case, in order; with a token, also the call that lacks it.
pub async fn run(base_url: &str, token: Option<String>) -> ExitCode {
    let mut client = HttpPeerClient::new(
        base_url,
        Arc::new(PlainHttp {
            token: token.clone(),
        }),
        "rust-http-client",
    );
    let mut all_ok = true;
    let mut check = |case: &str, outcome: Outcome| {
        all_ok &= outcome.is_ok();
        println!(
            "{}",
            json!({"case": case, "ok": outcome.is_ok(), "detail": outcome.unwrap_or_else(|err| err)})
        );
    };
    check("http_pipeline", pipeline(&mut client).await);
    check("http_unknown_step", unknown_step(&mut client).await);
    check("http_workflow_error", workflow_error(&mut client).await);
    check("http_newer_envelope", newer_envelope(&mut client).await);
    match remote_refs(&mut client).await {
        Ok(key) => {
            check("http_remote_refs", Ok(format!("ref {key} listed")));
            check("http_deref", deref(&mut client, key).await);
            check("http_release", release(&mut client, key).await);
        }
        Err(err) => check("http_remote_refs", Err(err)),
    }
    if token.is_some() {
        let mut anonymous =
            HttpPeerClient::new(base_url, Arc::new(PlainHttp { token: None }), "no-token");
        check("http_token_required", token_required(&mut anonymous).await);
    }
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn invoke(
    client: &mut HttpPeerClient,
    steps: &[&str],
    input: &Value,
) -> Result<SubWorkflowResponse, String> {
    let steps = steps.iter().map(|id| (*id).to_owned()).collect();
    let request = SubWorkflowRequest::new("interop", steps, input, Some(30))
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

/// The README's two steps, and the state they export.
async fn pipeline(client: &mut HttpPeerClient) -> Outcome {
    let input = json!({"document": "one two three"});
    let response = invoke(client, &["my_app::analyze", "my_app::summarize"], &input).await?;
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

/// 404 naming the step (gRPC's NOT_FOUND), its message in `{"error": ...}`.
async fn unknown_step(client: &mut HttpPeerClient) -> Outcome {
    match invoke(client, &["interop::missing"], &json!({})).await {
        Ok(response) => Err(format!("expected HTTP 404, got {response:?}")),
        Err(err) if err.contains("HTTP 404") && err.contains("interop::missing") => Ok(err),
        Err(err) => Err(format!("expected HTTP 404 naming the step, got: {err}")),
    }
}

/// A step that raises: 200 with `error` set.
async fn workflow_error(client: &mut HttpPeerClient) -> Outcome {
    let response = invoke(client, &["test::boom"], &json!({})).await?;
    match &response.error {
        Some(error) if error.contains("boom") => Ok(error.clone()),
        other => Err(format!("expected an error naming `boom`, got {other:?}")),
    }
}

/// A newer envelope version: 400 with WIRE.md's text (gRPC's FAILED_PRECONDITION).
async fn newer_envelope(client: &mut HttpPeerClient) -> Outcome {
    let mut request =
        SubWorkflowRequest::new("interop", vec!["test::echo".into()], &json!({}), None)
            .map_err(|err| format!("cannot build the request: {err}"))?;
    request.envelope_version = ENVELOPE_VERSION + 1;
    let expected = format!(
        "envelope version {} is newer than supported {ENVELOPE_VERSION}",
        ENVELOPE_VERSION + 1
    );
    match client.invoke_sub_workflow(request).await {
        Ok(response) => Err(format!("expected HTTP 400, got {response:?}")),
        Err(err) if err.to_string().contains("HTTP 400") && err.to_string().contains(&expected) => {
            Ok(err.to_string())
        }
        Err(err) => Err(format!("expected HTTP 400 `{expected}`, got: {err}")),
    }
}

/// A step inserting a session ref: its descriptor comes back in `remote_refs`.
async fn remote_refs(client: &mut HttpPeerClient) -> Result<Uuid, String> {
    let input = json!({"kind": "json", "value": {"from": "rust"}});
    let response = invoke(client, &["refs::make_value"], &input).await?;
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
async fn deref(client: &mut HttpPeerClient, key: Uuid) -> Outcome {
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

/// Release: true once, false after; a deref after it is 404.
async fn release(client: &mut HttpPeerClient, key: Uuid) -> Outcome {
    let first = client.release_session_ref(RegistryKey(key)).await;
    let second = client.release_session_ref(RegistryKey(key)).await;
    let after = client.deref_session_ref(RegistryKey(key)).await;
    match (&first, &second, &after) {
        (Ok(true), Ok(false), Err(err)) if err.to_string().contains("HTTP 404") => {
            Ok(format!("released, then false, then deref: {err}"))
        }
        _ => Err(format!(
            "release {first:?}, again {second:?}, deref after {after:?}"
        )),
    }
}

/// Without the peer's token: 401, and nothing ran.
async fn token_required(client: &mut HttpPeerClient) -> Outcome {
    match invoke(client, &["test::echo"], &json!({})).await {
        Ok(response) => Err(format!("expected HTTP 401, got {response:?}")),
        Err(err) if err.contains("HTTP 401") && err.contains("requires a token") => Ok(err),
        Err(err) => Err(format!("expected HTTP 401, got: {err}")),
    }
}

/// One HTTP/1.1 request per connection, sent as `HttpPeerClient` built it.
#[derive(Debug)]
struct PlainHttp {
    token: Option<String>,
}

#[async_trait::async_trait]
impl HttpClient for PlainHttp {
    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, BlazenError> {
        exchange(request, self.token.as_deref())
            .await
            .map_err(BlazenError::request)
    }

    async fn send_streaming(
        &self,
        _request: HttpRequest,
    ) -> Result<(u16, Vec<(String, String)>, ByteStream), BlazenError> {
        Err(BlazenError::unsupported(
            "HttpPeerClient never streams over HTTP",
        ))
    }
}

async fn exchange(request: HttpRequest, token: Option<&str>) -> Result<HttpResponse, String> {
    let rest = request
        .url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{}: only http:// URLs", request.url))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let method = match request.method {
        HttpMethod::Post => "POST",
        other => return Err(format!("HttpPeerClient sent {other:?}, not POST")),
    };
    let body = request.body.unwrap_or_default();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in &request.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    head.push_str("\r\n");
    let mut stream = TcpStream::connect(authority)
        .await
        .map_err(|err| format!("cannot connect to {authority}: {err}"))?;
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|err| err.to_string())?;
    stream
        .write_all(&body)
        .await
        .map_err(|err| err.to_string())?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .await
        .map_err(|err| err.to_string())?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Result<HttpResponse, String> {
    let split = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| format!("no complete response head in {} bytes", raw.len()))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(name, value)| name == "transfer-encoding" && value.contains("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|window| window == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|err| format!("bad chunk size {size_text:?}: {err}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}
