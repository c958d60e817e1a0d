//! Error classification: what a failed call or connection becomes as a
//! [`PeerError`], from the status and the chain of errors behind it.
//!
//! The distinctions matter to callers deciding whether to retry: a request
//! that never left ([`never_delivered`]) is safe to send again; a transport
//! failure after it left may have started the run; a status without a source
//! came from the peer itself.

use uuid::Uuid;

use super::PeerClient;
use crate::error::PeerError;
use crate::tls::handshake_failure;
use crate::tls_connector;

impl PeerClient {
    /// A failed deref: NOT_FOUND names the ref; the rest as any call.
    pub(super) fn deref_error(&self, key: Uuid, status: &tonic::Status) -> PeerError {
        match status.code() {
            tonic::Code::NotFound => PeerError::RefNotFound(format!(
                "peer {} does not hold session ref {key}: {}",
                self.address,
                status.message()
            )),
            _ => self.status_error(None, status),
        }
    }

    /// `method`: the gRPC method called when it is one a v1-only peer lacks.
    pub(super) fn status_error(&self, method: Option<&str>, status: &tonic::Status) -> PeerError {
        if let Some(mismatch) = protocol_mismatch(status, &self.address) {
            return mismatch;
        }
        if let Some(handshake) = handshake_failure(status) {
            return PeerError::Tls(format!("call to peer {} failed: {handshake}", self.address));
        }
        // A status with a source was made here, from a transport failure; one
        // without came from the peer. A GOAWAY with ENHANCE_YOUR_CALM becomes
        // RESOURCE_EXHAUSTED here: that is HTTP/2 on the way, not the peer
        // saying "busy", and the run may have started.
        if let Some(source) = std::error::Error::source(status) {
            let local = matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::Unknown
                    | tonic::Code::Cancelled
                    | tonic::Code::ResourceExhausted
            );
            if local || never_delivered(source) {
                return PeerError::Transport {
                    message: format!(
                        "call to peer {} failed: {}",
                        self.address,
                        error_chain(source)
                    ),
                    code: Some(status.code() as i32),
                    started: !never_delivered(source),
                };
            }
        }
        PeerError::from_method_status(status, &self.address, method)
    }
}

/// The error for a peer that speaks the other protocol than `address` asks for.
pub(super) fn protocol_mismatch(
    err: &(dyn std::error::Error + 'static),
    address: &str,
) -> Option<PeerError> {
    let mismatch = tls_connector::ProtocolMismatch::find(err)?;
    let host_port = address
        .split_once("://")
        .map_or(address, |(_, rest)| rest)
        .trim_end_matches('/');
    Some(PeerError::Tls(match mismatch {
        tls_connector::ProtocolMismatch::SpeaksTls => format!(
            "the peer at {address} speaks TLS: use https://{host_port} and a CA \
             (ClientTls.from_pem / --tls-ca)"
        ),
        tls_connector::ProtocolMismatch::NotTls => format!(
            "the peer at {address} does not speak TLS (it answered in plaintext): use \
             http://{host_port} and no CA (drop tls= / --tls-ca)"
        ),
    }))
}

/// True when a local call failure happened before the request could reach
/// the peer: the connection could not be made, or the peer refused the HTTP/2
/// stream before processing it (RFC 9113 §8.7: REFUSED_STREAM is safe to retry).
fn never_delivered(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(err) = cause {
        if err.is::<tonic::ConnectError>() {
            return true;
        }
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            if h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return true;
            }
        }
        // hyper: the request was dropped before the connection ever sent it
        // (the connection closed while it was queued).
        if err
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return true;
        }
        cause = err.source();
    }
    false
}

/// "outer: inner: root" — tonic's top-level transport errors say only "transport error".
pub(super) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
