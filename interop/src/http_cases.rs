//! The crate's HTTP/JSON client (`HttpPeerClient`, feature `http-transport`)
//! against a peer of this project serving its routes (`PeerServer(http_json=True)`):
//! the cases of `calls.rs`, and a call without the token, one JSON line each.
//!
//! `HttpPeerClient` sends its requests through an [`HttpClient`] the host
//! supplies (a Worker's `fetch`, reqwest...); here that is [`PlainHttp`], a
//! minimal HTTP/1.1 client that sends the request exactly as built, plus
//! `Authorization: Bearer <token>` when it has a token, as a host's client
//! would add its credentials.

use std::process::ExitCode;
use std::sync::Arc;

use blazen_llm::error::BlazenError;
use blazen_llm::http::{ByteStream, HttpClient, HttpMethod, HttpRequest, HttpResponse};
use blazen_peer::http_client::HttpPeerClient;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::calls::{impl_peer_calls, invoke, run_common, Outcome, Refusal, Report};

/// Every case, in order; with a token, also the call that lacks it.
pub async fn run(base_url: &str, token: Option<String>) -> ExitCode {
    let mut client = HttpPeerClient::new(
        base_url,
        Arc::new(PlainHttp {
            token: token.clone(),
        }),
        "rust-http-client",
    );
    let mut report = Report::new("http_");
    run_common(&mut client, &mut report).await;
    if token.is_some() {
        let mut anonymous =
            HttpPeerClient::new(base_url, Arc::new(PlainHttp { token: None }), "no-token");
        report.check("token_required", token_required(&mut anonymous).await);
    }
    if report.all_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

impl_peer_calls!(HttpPeerClient, says);

/// Our peer answers a refused call with gRPC's status as its HTTP kin.
fn says(error: &str, refusal: Refusal) -> bool {
    let status = match refusal {
        Refusal::NotFound => "HTTP 404",
        Refusal::FailedPrecondition => "HTTP 400",
    };
    error.contains(status)
}

/// Without the peer's token: 401, and nothing ran.
async fn token_required(client: &mut HttpPeerClient) -> Outcome {
    match invoke(client, &["test::echo"], &json!({}), 30).await {
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
