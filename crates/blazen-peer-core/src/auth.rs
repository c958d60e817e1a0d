//! The shared-secret token: checked on every call of the peer service before
//! its payload is decoded, compared in constant time.

use subtle::ConstantTimeEq;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Environment variable both sides read their token from by default.
pub const TOKEN_ENV: &str = "BLAZEN_PEER_TOKEN";

/// The `authorization` header value that carries `token`.
pub fn bearer(token: &str) -> Result<MetadataValue<Ascii>, String> {
    format!("Bearer {token}")
        .parse()
        .map_err(|_| "the token must be printable ASCII (it travels as gRPC metadata)".to_owned())
}

/// Refuses calls that do not carry one of the server's tokens; passes all
/// calls when the server has none.
#[derive(Clone)]
pub struct TokenCheck {
    accepted: Vec<Vec<u8>>,
}

impl TokenCheck {
    pub fn new(tokens: &[String]) -> Self {
        Self {
            accepted: tokens
                .iter()
                .map(|token| token.as_bytes().to_vec())
                .collect(),
        }
    }

    /// Compares against every accepted token, without stopping at a match, so
    /// the time taken does not tell which one matched.
    fn accepts(&self, presented: &[u8]) -> bool {
        self.accepted
            .iter()
            .fold(subtle::Choice::from(0), |matched, token| {
                matched | presented.ct_eq(token)
            })
            .into()
    }
}

impl Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        if self.accepted.is_empty() {
            return Ok(request);
        }
        let presented = request
            .metadata()
            .get("authorization")
            .map(|value| value.as_bytes())
            .and_then(|value| value.strip_prefix(b"Bearer "));
        match presented {
            // Neither token ever appears in the message.
            Some(token) if self.accepts(token) => Ok(request),
            Some(_) => Err(Status::unauthenticated(
                "the token in `authorization: Bearer ...` does not match this peer's; \
                 use the peer's token (BLAZEN_PEER_TOKEN or token=)",
            )),
            None => Err(Status::unauthenticated(
                "this peer requires a token: send `authorization: Bearer <token>` \
                 (PeerClient.connect(token=...) or BLAZEN_PEER_TOKEN)",
            )),
        }
    }
}
