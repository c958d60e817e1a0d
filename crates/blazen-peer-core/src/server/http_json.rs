//! The HTTP/JSON routes of the published crate's `HttpPeerClient`
//! (`blazen-peer` 0.7.0, feature `http-transport`), served when
//! [`ServerConfig::http_json`](super::ServerConfig::http_json) is on:
//!
//! - `POST /v1/peer/invoke_sub_workflow`: a `SubWorkflowRequest` as JSON, answered
//!   with a `SubWorkflowResponse` as JSON
//! - `POST /v1/peer/deref_session_ref`: a `DerefRequest`, answered with a `DerefResponse`
//! - `POST /v1/peer/release_session_ref`: a `ReleaseRequest`, answered with a `ReleaseResponse`
//!
//! JSON bodies are serde's default JSON of the protocol structs (bytes fields
//! are arrays of numbers, uuids are strings); the caller's node id comes in
//! `X-Blazen-Peer-Node-Id`. Each request is turned into the gRPC call it
//! stands for (the postcard envelope, the metadata, the connection's info) and
//! handed to the same token check and the same [`BlazenPeer`] handler, so the
//! checks, the run and the errors are the gRPC method's. Failures answer
//! `{"error": "..."}` with the HTTP status closest to the gRPC code.

use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;

use futures::FutureExt;
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::body::Body;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Code, Request, Response, Status};

use super::request_body::{collect_whole, RequestBudget, WholeBodyError};
use super::token_check::TokenCheck;
use super::PeerService;
use crate::envelope::{
    DerefRequest, DerefResponse, Envelope, ReleaseRequest, ReleaseResponse, SubWorkflowRequest,
    SubWorkflowResponse,
};
use crate::log_target::TARGET;
use crate::pb::blazen_peer_server::BlazenPeer;
use crate::pb::{PostcardRequest, PostcardResponse};

/// Path of the run route.
pub(crate) const INVOKE_PATH: &str = "/v1/peer/invoke_sub_workflow";
/// Path of the deref route.
pub(crate) const DEREF_PATH: &str = "/v1/peer/deref_session_ref";
/// Path of the release route.
pub(crate) const RELEASE_PATH: &str = "/v1/peer/release_session_ref";

/// The header `HttpPeerClient` names its caller in.
const HTTP_NODE_ID_HEADER: &str = "x-blazen-peer-node-id";

/// A JSON body may be this many times `max_message_bytes` (plus
/// [`JSON_BODY_SLACK`]): bytes fields travel as arrays of decimal numbers, up
/// to 4 characters per byte. The decoded request must still fit in
/// `max_message_bytes`, as over gRPC.
const JSON_BYTES_PER_BYTE: usize = 4;
const JSON_BODY_SLACK: usize = 64 * 1024;

type HandlerFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Response<PostcardResponse>, Status>> + Send + 'a>>;

/// What the JSON routes need: the service whose handlers they call and its token check.
pub(crate) struct JsonApi {
    service: PeerService,
    tokens: TokenCheck,
    max_message_bytes: usize,
    body_limit: usize,
}

/// A route's answer: status and JSON text.
pub(crate) struct JsonReply {
    status: http::StatusCode,
    body: String,
    allow_post: bool,
}

impl JsonReply {
    fn ok(body: String) -> Self {
        Self {
            status: http::StatusCode::OK,
            body,
            allow_post: false,
        }
    }

    fn error(status: http::StatusCode, message: impl AsRef<str>) -> Self {
        Self {
            status,
            body: serde_json::json!({ "error": message.as_ref() }).to_string(),
            allow_post: false,
        }
    }

    pub(crate) fn into_response(self) -> http::Response<Body> {
        let mut response = http::Response::new(Body::new(self.body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        if self.allow_post {
            headers.insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
        }
        if self.status == http::StatusCode::UNAUTHORIZED {
            headers.insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// Whether a request is gRPC (by its content type); the rest are the JSON routes'.
pub(crate) fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"))
}

impl JsonApi {
    pub(crate) fn new(service: PeerService, tokens: TokenCheck) -> Self {
        let max_message_bytes = service.config.max_message_bytes;
        Self {
            service,
            tokens,
            max_message_bytes,
            body_limit: max_message_bytes
                .saturating_mul(JSON_BYTES_PER_BYTE)
                .saturating_add(JSON_BODY_SLACK),
        }
    }

    /// Answers one request; never panics out (a panic answers 500).
    pub(crate) async fn handle(
        &self,
        parts: http::request::Parts,
        body: Incoming,
        budget: Arc<RequestBudget>,
        remote: SocketAddr,
    ) -> JsonReply {
        AssertUnwindSafe(self.route(parts, body, budget, remote))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                let err = crate::error::PeerError::from_panic(
                    panic.as_ref(),
                    "the peer, answering an HTTP/JSON request,",
                );
                log::error!(target: TARGET, node_id = &*self.service.node_id; "{err}");
                JsonReply::error(http::StatusCode::INTERNAL_SERVER_ERROR, err.to_string())
            })
    }

    async fn route(
        &self,
        parts: http::request::Parts,
        body: Incoming,
        budget: Arc<RequestBudget>,
        remote: SocketAddr,
    ) -> JsonReply {
        let path = parts.uri.path();
        if ![INVOKE_PATH, DEREF_PATH, RELEASE_PATH].contains(&path) {
            return JsonReply::error(
                http::StatusCode::NOT_FOUND,
                format!(
                    "no route {path} on this peer; its HTTP/JSON routes are POST {INVOKE_PATH}, \
                     POST {DEREF_PATH} and POST {RELEASE_PATH} (gRPC calls carry content-type \
                     application/grpc)"
                ),
            );
        }
        if parts.method != http::Method::POST {
            let mut reply = JsonReply::error(
                http::StatusCode::METHOD_NOT_ALLOWED,
                format!("{path} takes POST, not {}", parts.method),
            );
            reply.allow_post = true;
            return reply;
        }
        // Before the body is read: the token check, as for a gRPC call.
        let mut metadata = MetadataMap::from_headers(parts.headers.clone());
        if let Some(node) = parts.headers.get(HTTP_NODE_ID_HEADER) {
            if let Ok(value) = MetadataValue::try_from(node.as_bytes()) {
                metadata.insert(crate::transport::NODE_ID_HEADER, value);
            }
        }
        let mut call = Request::new(());
        *call.metadata_mut() = metadata;
        *call.extensions_mut() = parts.extensions;
        let call = match self.tokens.clone().call(call) {
            Ok(call) => call,
            Err(status) => return status_reply(&status),
        };
        let is_json = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .is_some_and(|value| value.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            // Also keeps browsers from posting here cross-site without a preflight.
            return JsonReply::error(
                http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("{path} takes a JSON body: send `Content-Type: application/json`"),
            );
        }
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.body_limit as u64) {
            return self.too_large(path);
        }
        let whole = match collect_whole(body, &budget, Some(remote), self.body_limit).await {
            Ok(whole) => whole,
            Err(WholeBodyError::TooLarge) => return self.too_large(path),
            Err(WholeBodyError::Refused(status)) => return status_reply(&status),
            Err(WholeBodyError::Stalled(status)) => {
                return JsonReply::error(http::StatusCode::REQUEST_TIMEOUT, status.message())
            }
            Err(WholeBodyError::Read(err)) => {
                return JsonReply::error(
                    http::StatusCode::BAD_REQUEST,
                    format!("could not read the request body: {err}"),
                )
            }
        };
        let (metadata, extensions, ()) = call.into_parts();
        let service = &self.service;
        match path {
            INVOKE_PATH => {
                self.call::<SubWorkflowRequest, SubWorkflowResponse>(
                    whole.bytes(),
                    metadata,
                    extensions,
                    "SubWorkflowRequest",
                    |request| service.invoke_sub_workflow(request),
                )
                .await
            }
            DEREF_PATH => {
                self.call::<DerefRequest, DerefResponse>(
                    whole.bytes(),
                    metadata,
                    extensions,
                    "DerefRequest",
                    |request| service.deref_session_ref(request),
                )
                .await
            }
            _ => {
                self.call::<ReleaseRequest, ReleaseResponse>(
                    whole.bytes(),
                    metadata,
                    extensions,
                    "ReleaseRequest",
                    |request| service.release_session_ref(request),
                )
                .await
            }
        }
    }

    fn too_large(&self, path: &str) -> JsonReply {
        JsonReply::error(
            http::StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the body of {path} exceeds {} bytes, the JSON size allowed for max_message_bytes \
                 {} on peer `{}`; send less, or return a session ref instead",
                self.body_limit, self.max_message_bytes, self.service.node_id
            ),
        )
    }

    /// Decodes the JSON request, makes it the gRPC call's payload, runs the
    /// gRPC handler, and gives its answer back as JSON.
    async fn call<'s, Req, Resp>(
        &'s self,
        json: &[u8],
        metadata: MetadataMap,
        extensions: http::Extensions,
        what: &str,
        handler: impl FnOnce(Request<PostcardRequest>) -> HandlerFuture<'s>,
    ) -> JsonReply
    where
        Req: Serialize + DeserializeOwned,
        Resp: Serialize + DeserializeOwned,
    {
        let request: Req = match serde_json::from_slice(json) {
            Ok(request) => request,
            Err(err) => {
                return JsonReply::error(
                    http::StatusCode::BAD_REQUEST,
                    format!("the request body is not a {what} as JSON: {err}"),
                )
            }
        };
        let payload = match Envelope::new(request).encode() {
            Ok(payload) => payload,
            Err(err) => return JsonReply::error(http::StatusCode::BAD_REQUEST, err.to_string()),
        };
        if payload.len() > self.max_message_bytes {
            return JsonReply::error(
                http::StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the {what} of {} bytes exceeds max_message_bytes {} on peer `{}`; send \
                     less, or raise it",
                    payload.len(),
                    self.max_message_bytes,
                    self.service.node_id
                ),
            );
        }
        let request = Request::from_parts(
            metadata,
            extensions,
            PostcardRequest {
                postcard_payload: payload.into(),
            },
        );
        let response = match handler(request).await {
            Ok(response) => response,
            Err(status) => return status_reply(&status),
        };
        let payload = response.into_inner().postcard_payload;
        match Envelope::<Resp>::decode(&payload) {
            Ok(envelope) => match serde_json::to_string(&envelope.body) {
                Ok(text) => JsonReply::ok(text),
                Err(err) => JsonReply::error(
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot encode the response as JSON: {err}"),
                ),
            },
            Err(err) => JsonReply::error(http::StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
        }
    }
}

/// The gRPC handler's error as the HTTP status closest to its code.
fn status_reply(status: &Status) -> JsonReply {
    use http::StatusCode as S;
    let code = match status.code() {
        Code::Ok => S::OK,
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => S::BAD_REQUEST,
        Code::Unauthenticated => S::UNAUTHORIZED,
        Code::PermissionDenied => S::FORBIDDEN,
        Code::NotFound => S::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => S::CONFLICT,
        Code::ResourceExhausted | Code::Unavailable => S::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => S::GATEWAY_TIMEOUT,
        Code::Unimplemented => S::NOT_IMPLEMENTED,
        Code::Cancelled | Code::Unknown | Code::Internal | Code::DataLoss => {
            S::INTERNAL_SERVER_ERROR
        }
    };
    JsonReply::error(code, status.message())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_map_to_fitting_http_statuses() {
        let cases = [
            (Status::not_found("x"), 404),
            (Status::unauthenticated("x"), 401),
            (Status::invalid_argument("x"), 400),
            (Status::resource_exhausted("x"), 503),
            (Status::unavailable("x"), 503),
            (Status::deadline_exceeded("x"), 504),
            (Status::internal("x"), 500),
        ];
        for (status, http) in cases {
            assert_eq!(status_reply(&status).status.as_u16(), http, "{status:?}");
        }
        let reply = status_reply(&Status::not_found("unknown step id `x`"));
        let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(body, serde_json::json!({"error": "unknown step id `x`"}));
    }

    #[test]
    fn only_grpc_content_types_are_grpc() {
        let mut headers = http::HeaderMap::new();
        assert!(!is_grpc(&headers));
        headers.insert("content-type", "application/json".parse().unwrap());
        assert!(!is_grpc(&headers));
        headers.insert("content-type", "application/grpc+proto".parse().unwrap());
        assert!(is_grpc(&headers));
    }

    #[test]
    fn the_crate_clients_json_decodes_into_our_structs() {
        // Exactly what blazen-peer 0.7.0's HttpPeerClient sends (serde_json of its structs).
        let invoke = br#"{"envelope_version":1,"workflow_name":"w","step_ids":["a::b"],"input_json":[123,125],"timeout_secs":null}"#;
        let request: SubWorkflowRequest = serde_json::from_slice(invoke).unwrap();
        assert_eq!(request.input_json, b"{}");
        let deref = br#"{"envelope_version":1,"ref_uuid":"67e55044-10b1-426f-9247-bb680e5fe0c8"}"#;
        let request: DerefRequest = serde_json::from_slice(deref).unwrap();
        assert_eq!(
            request.ref_uuid.to_string(),
            "67e55044-10b1-426f-9247-bb680e5fe0c8"
        );
        // A bytes field may also be given as a string (curl users): its UTF-8 bytes.
        let typed = br#"{"envelope_version":1,"workflow_name":"w","step_ids":[],"input_json":"{\"a\": 1}","timeout_secs":5}"#;
        let request: SubWorkflowRequest = serde_json::from_slice(typed).unwrap();
        assert_eq!(request.input_json, br#"{"a": 1}"#);
        let response = DerefResponse {
            envelope_version: 1,
            payload: vec![1, 2],
        };
        assert_eq!(
            serde_json::to_string(&response).unwrap(),
            r#"{"envelope_version":1,"payload":[1,2]}"#
        );
    }
}
