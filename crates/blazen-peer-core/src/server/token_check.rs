//! The server's token check: run on every call of the peer service before its
//! payload is decoded, compared in constant time.

use std::sync::Arc;
use std::time::Duration;

use subtle::ConstantTimeEq;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use super::metrics::{Refusal, ServerCounters};
use crate::log_limit::{held_back_note, LogLimit};
use crate::log_target::TARGET;

/// One refusal line per client address per this long: a client with a bad
/// token opens a stream per call, and each would otherwise log.
const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(10);

/// Refuses calls that do not carry one of the server's tokens; passes all
/// calls when the server has none.
#[derive(Clone)]
pub(crate) struct TokenCheck {
    accepted: Vec<Vec<u8>>,
    refusals_logged: Arc<LogLimit>,
    counters: Option<Arc<ServerCounters>>,
}

impl TokenCheck {
    pub(crate) fn new(tokens: &[String]) -> Self {
        Self {
            accepted: tokens
                .iter()
                .map(|token| token.as_bytes().to_vec())
                .collect(),
            refusals_logged: Arc::new(LogLimit::new(REFUSAL_LOG_PERIOD)),
            counters: None,
        }
    }

    /// Counts each refused call in the server's metrics.
    pub(crate) fn counting_refusals(self, counters: Arc<ServerCounters>) -> Self {
        Self {
            counters: Some(counters),
            ..self
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
        // Neither token ever appears in a message or a log.
        let (refused, message) = match presented {
            Some(token) if self.accepts(token) => return Ok(request),
            Some(_) => (
                "a wrong token",
                "the token in `authorization: Bearer ...` does not match this peer's; \
                 use the peer's token (BLAZEN_PEER_TOKEN or token=)",
            ),
            None => (
                "no token",
                "this peer requires a token: send `authorization: Bearer <token>` \
                 (PeerClient.connect(token=...) or BLAZEN_PEER_TOKEN)",
            ),
        };
        if let Some(counters) = &self.counters {
            counters.refused(Refusal::Unauthenticated);
        }
        let from = request
            .remote_addr()
            .map_or_else(|| "an unknown address".to_owned(), |addr| addr.to_string());
        // Per host, not per port: a client reconnects from a new port each time.
        let host = request
            .remote_addr()
            .map_or_else(String::new, |addr| addr.ip().to_string());
        if let Some(held_back) = self.refusals_logged.admit(&host) {
            log::warn!(
                target: TARGET,
                remote_addr = from.as_str();
                "refused a call from {from}: it carried {refused}{}",
                held_back_note(held_back)
            );
        }
        Err(Status::unauthenticated(message))
    }
}
