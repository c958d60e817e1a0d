//! The one error type of the core, and its mapping to and from gRPC status.

use tonic::{Code, Status};

use crate::failure::{FailureKind, NotFoundDetail, WorkflowFailure};

/// Every failure the core reports.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// Network-level failure: refused, reset, unreachable, deadline passed in transit.
    #[error("{message}")]
    Transport {
        /// What happened, with the address involved.
        message: String,
        /// gRPC status code when the failure came back as a status.
        code: Option<i32>,
        /// False when the peer certainly never started the call (the connection
        /// could not be made, or the peer refused it before running anything),
        /// so sending it to another peer cannot run it twice.
        started: bool,
    },
    /// A requested step id is not registered on the peer.
    #[error("step `{step_id}` is not registered on peer {node}; registered steps: [{}]", registered.join(", "))]
    UnknownStep {
        /// The missing id.
        step_id: String,
        /// Ids the peer has registered.
        registered: Vec<String>,
        /// Where the lookup happened ("`node-b`" or "this process").
        node: String,
    },
    /// `step_ids` was empty and no workflow of that name is declared.
    #[error("workflow `{workflow_name}` is not declared on peer {node} and the request named no steps; declared workflows: [{}]", registered.join(", "))]
    UnknownWorkflow {
        /// The missing workflow name.
        workflow_name: String,
        /// Workflow names the peer has declared.
        registered: Vec<String>,
        /// Where the lookup happened.
        node: String,
    },
    /// A session ref is not (or no longer) held by the peer.
    #[error("{0}")]
    RefNotFound(String),
    /// A message is larger than the configured limit.
    #[error("{0}")]
    MessageTooLarge(String),
    /// A payload's version is newer than this build supports.
    #[error("envelope version {got} is newer than supported {supported}")]
    EnvelopeVersion {
        /// Version found in the payload.
        got: u32,
        /// Newest version this build speaks.
        supported: u32,
    },
    /// A payload or value could not be encoded or decoded.
    #[error("{0}")]
    Encode(String),
    /// TLS configuration or handshake failure.
    #[error("{0}")]
    Tls(String),
    /// The peer refused our credentials.
    #[error("{0}")]
    Authentication(String),
    /// The workflow ran and failed.
    #[error("{}", .0.message)]
    Workflow(Box<WorkflowFailure>),
    /// A deadline passed.
    #[error("{0}")]
    Timeout(String),
    /// A caller-side argument or lifecycle mistake.
    #[error("{0}")]
    Validation(String),
    /// The peer is at its limit of concurrent runs; retrying later may succeed.
    #[error("{0}")]
    Busy(String),
    /// An upload would take the peer past the bytes it lets callers upload
    /// (`max_upload_bytes`); nothing was stored.
    #[error("{0}")]
    Quota(String),
    /// The peer is shutting down and starts no new runs (UNAVAILABLE); callers
    /// see it as a transport failure, which is safe to retry elsewhere.
    #[error("{0}")]
    Unavailable(String),
    /// The peer answered UNIMPLEMENTED for a method beyond the four of v1: it
    /// speaks plain blazen.peer.v1 (the published Rust crate, for one). Nothing ran.
    #[error(
        "peer {node} does not implement {method}: it speaks v1 only; {}",
        unsupported_hint(method)
    )]
    Unsupported {
        /// The gRPC method the peer lacks ("ListSteps", "Health", ...).
        method: String,
        /// The peer's address.
        node: String,
    },
}

impl PeerError {
    /// Short machine-readable name, shared with the Python exception classes.
    pub fn kind(&self) -> &'static str {
        match self {
            PeerError::Transport { .. } => "Transport",
            PeerError::UnknownStep { .. } => "UnknownStep",
            PeerError::UnknownWorkflow { .. } => "UnknownWorkflow",
            PeerError::RefNotFound(_) => "RefNotFound",
            PeerError::MessageTooLarge(_) => "MessageTooLarge",
            PeerError::EnvelopeVersion { .. } => "EnvelopeVersion",
            PeerError::Encode(_) => "Encode",
            PeerError::Tls(_) => "Tls",
            PeerError::Authentication(_) => "Authentication",
            PeerError::Workflow(_) => "Workflow",
            PeerError::Timeout(_) => "Timeout",
            PeerError::Validation(_) => "Validation",
            PeerError::Busy(_) => "Busy",
            PeerError::Quota(_) => "Quota",
            PeerError::Unavailable(_) => "Transport",
            PeerError::Unsupported { .. } => "Unsupported",
        }
    }

    /// A transport error with no status code, after which the call may have started.
    pub fn transport(message: impl Into<String>) -> Self {
        PeerError::Transport {
            message: message.into(),
            code: None,
            started: true,
        }
    }

    /// True when the failed call certainly never started on the peer: it could
    /// not be delivered, or the peer refused it before running anything
    /// (shutting down, busy). Only such calls may be sent elsewhere without
    /// risking a second run.
    pub fn is_not_started(&self) -> bool {
        match self {
            PeerError::Transport { started, .. } => !started,
            PeerError::Busy(_)
            | PeerError::Quota(_)
            | PeerError::Unavailable(_)
            | PeerError::Unsupported { .. } => true,
            _ => false,
        }
    }

    /// A caught panic, as the error the caller gets instead; `who` says where it happened.
    pub fn from_panic(panic: &(dyn std::any::Any + Send), who: &str) -> Self {
        let text = panic
            .downcast_ref::<&str>()
            .map(|text| text.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        PeerError::transport(format!(
            "{who} hit an internal error ({text}); please report it"
        ))
    }

    /// The status a server answers with for this error.
    pub fn to_status(&self) -> Status {
        let message = self.to_string();
        match self {
            PeerError::UnknownStep {
                step_id,
                registered,
                ..
            } => not_found(message, step_id, false, registered),
            PeerError::UnknownWorkflow {
                workflow_name,
                registered,
                ..
            } => not_found(message, workflow_name, true, registered),
            PeerError::RefNotFound(_) => Status::not_found(message),
            PeerError::MessageTooLarge(_) => Status::out_of_range(message),
            PeerError::EnvelopeVersion { .. } => Status::failed_precondition(message),
            PeerError::Encode(_) | PeerError::Validation(_) => Status::invalid_argument(message),
            PeerError::Authentication(_) => Status::unauthenticated(message),
            PeerError::Timeout(_) => Status::deadline_exceeded(message),
            PeerError::Busy(_) => refused_before_running(Code::ResourceExhausted, message, "busy"),
            PeerError::Quota(_) => refused_before_running(Code::ResourceExhausted, message, QUOTA),
            PeerError::Unavailable(_) => {
                refused_before_running(Code::Unavailable, message, "draining")
            }
            PeerError::Unsupported { .. } => Status::unimplemented(message),
            PeerError::Transport { .. } | PeerError::Tls(_) | PeerError::Workflow(_) => {
                Status::internal(message)
            }
        }
    }

    /// Interprets a status a peer answered with; `address` names the peer in messages.
    pub fn from_status(status: &Status, address: &str) -> Self {
        Self::from_method_status(status, address, None)
    }

    /// [`PeerError::from_status`] for a call of `method` (its gRPC name, or
    /// "Health"), so UNIMPLEMENTED can say which method the peer lacks.
    pub fn from_method_status(status: &Status, address: &str, method: Option<&str>) -> Self {
        // Every peer of the protocol serves the four v1 methods; one that
        // lacks a newer method speaks v1 only (tonic answers unknown paths so).
        if let (Code::Unimplemented, Some(method)) = (status.code(), method) {
            return PeerError::Unsupported {
                method: method.to_owned(),
                node: address.to_owned(),
            };
        }
        let message = status.message();
        match status.code() {
            Code::NotFound => match postcard::from_bytes::<NotFoundDetail>(status.details()) {
                Ok(detail) if detail.is_workflow => PeerError::UnknownWorkflow {
                    workflow_name: detail.missing,
                    registered: detail.registered,
                    node: address.to_owned(),
                },
                Ok(detail) => PeerError::UnknownStep {
                    step_id: detail.missing,
                    registered: detail.registered,
                    node: address.to_owned(),
                },
                // A peer in another language (the published Rust crate: "unknown
                // step id `X`") names the step only in its message.
                Err(_) => PeerError::UnknownStep {
                    step_id: quoted_step_id(message).unwrap_or_default(),
                    registered: Vec::new(),
                    node: format!("{address} ({message})"),
                },
            },
            Code::FailedPrecondition => match parse_version_message(message) {
                Some((got, supported)) => PeerError::EnvelopeVersion { got, supported },
                None => PeerError::Transport {
                    message: format!("peer {address} refused the call: {message}"),
                    code: Some(status.code() as i32),
                    started: false,
                },
            },
            Code::InvalidArgument => {
                PeerError::Encode(format!("peer {address} rejected the payload: {message}"))
            }
            Code::Unauthenticated => PeerError::Authentication(format!(
                "peer {address} rejected the credentials: {message}"
            )),
            // Our peer's message already says what to raise; others' may not.
            Code::OutOfRange if message.contains("max_message_bytes") => {
                PeerError::MessageTooLarge(format!("peer {address}: {message}"))
            }
            Code::OutOfRange => PeerError::MessageTooLarge(format!(
                "peer {address} refused an oversized message: {message}; raise max_message_bytes \
                 on both sides (PeerServer and PeerClient.connect), or pass large values as session refs"
            )),
            Code::ResourceExhausted if refusal_reason(status) == Some(QUOTA) => {
                PeerError::Quota(format!("peer {address} refused the upload: {message}"))
            }
            Code::ResourceExhausted if was_refused_before_running(status) => {
                PeerError::Busy(format!("peer {address} is busy: {message}"))
            }
            // Not our server's refusal: a proxy, another implementation, or an
            // HTTP/2 limit. Nothing says the run did not start.
            Code::ResourceExhausted => PeerError::Transport {
                message: format!(
                    "call to peer {address} failed (ResourceExhausted): {message}; the run may \
                     have started"
                ),
                code: Some(Code::ResourceExhausted as i32),
                started: true,
            },
            Code::DeadlineExceeded => PeerError::Timeout(format!(
                "call to peer {address} passed its deadline: {message}"
            )),
            // Our peer answers UNAVAILABLE, marked, before it runs anything (it
            // is shutting down). Unmarked, it may come from anything on the way.
            Code::Unavailable => PeerError::Transport {
                message: format!("peer {address} is unavailable: {message}"),
                code: Some(Code::Unavailable as i32),
                started: !was_refused_before_running(status),
            },
            code => PeerError::Transport {
                message: format!("call to peer {address} failed ({code:?}): {message}"),
                code: Some(code as i32),
                started: true,
            },
        }
    }
}

/// Metadata key our server sets on a refusal made before running anything
/// (busy, draining), so a caller can tell it from the same status code raised
/// by a proxy or an HTTP/2 limit after the run may have started. Its value
/// says which refusal; peers that do not know the key ignore it.
pub const REFUSED_BEFORE_RUNNING: &str = "blazen-refused-before-running";

fn refused_before_running(code: Code, message: String, why: &'static str) -> Status {
    let mut status = Status::new(code, message);
    status.metadata_mut().insert(
        REFUSED_BEFORE_RUNNING,
        tonic::metadata::MetadataValue::from_static(why),
    );
    status
}

/// The mark of a refused upload: over the peer's `max_upload_bytes`.
const QUOTA: &str = "quota";

fn was_refused_before_running(status: &Status) -> bool {
    status.metadata().contains_key(REFUSED_BEFORE_RUNNING)
}

fn refusal_reason(status: &Status) -> Option<&str> {
    status
        .metadata()
        .get(REFUSED_BEFORE_RUNNING)
        .and_then(|value| value.to_str().ok())
}

fn not_found(message: String, missing: &str, is_workflow: bool, registered: &[String]) -> Status {
    let detail = NotFoundDetail {
        missing: missing.to_owned(),
        is_workflow,
        registered: registered.to_vec(),
    };
    let details = postcard::to_stdvec(&detail).unwrap_or_default();
    Status::with_details(Code::NotFound, message, details.into())
}

/// What to do instead, per method a v1-only peer lacks.
fn unsupported_hint(method: &str) -> &'static str {
    match method {
        "ListSteps" => "call its steps by id (a PeerPool routes to it by trying), or upgrade the peer",
        "Health" => "probe it with a call instead (a PeerPool does), or upgrade the peer",
        "StreamSubWorkflowEvents" => {
            "run the workflow with invoke_sub_workflow / run_remote_workflow (no events), or upgrade the peer"
        }
        "PutSessionRef" => {
            "pass the value in the call's input instead (within max_message_bytes), or upgrade the peer"
        }
        "FinishParentRun" | "RenewParentLease" => {
            "release its refs one by one with release_session_ref (parent_run() does), or upgrade the peer"
        }
        _ => "use the v1 methods only, or upgrade the peer",
    }
}

/// The step id in a NOT_FOUND message without details: the first `quoted`
/// word, as in the published Rust crate's "unknown step id `X`".
fn quoted_step_id(message: &str) -> Option<String> {
    let (_, rest) = message.split_once('`')?;
    let (id, _) = rest.split_once('`')?;
    (!id.is_empty()).then(|| id.to_owned())
}

/// A failed run's error text, as the failure it describes, for a response
/// without our failure extension (a v1 peer's): that crate writes "workflow
/// timed out after Ns" for a run past its `timeout_secs`, and nothing else
/// machine-readable.
pub fn failure_from_text(message: &str, node: &str) -> WorkflowFailure {
    let kind = if message.starts_with("workflow timed out after ") {
        FailureKind::Timeout
    } else {
        FailureKind::StepFailed
    };
    WorkflowFailure {
        kind,
        message: message.to_owned(),
        remote_type: None,
        remote_traceback: None,
        step_id: None,
        node_id: node.to_owned(),
    }
}

/// Reads `envelope version X is newer than supported Y`, the text docs/wire.md fixes.
fn parse_version_message(message: &str) -> Option<(u32, u32)> {
    let rest = message.strip_prefix("envelope version ")?;
    let (got, supported) = rest.split_once(" is newer than supported ")?;
    Some((got.trim().parse().ok()?, supported.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_status_round_trips() {
        let err = PeerError::EnvelopeVersion {
            got: 7,
            supported: 1,
        };
        let status = err.to_status();
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(
            status.message(),
            "envelope version 7 is newer than supported 1"
        );
        match PeerError::from_status(&status, "peer") {
            PeerError::EnvelopeVersion { got, supported } => assert_eq!((got, supported), (7, 1)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn only_our_marked_refusals_count_as_never_started() {
        let busy = PeerError::Busy("full".into()).to_status();
        assert!(matches!(
            PeerError::from_status(&busy, "b"),
            PeerError::Busy(_)
        ));
        let draining = PeerError::Unavailable("draining".into()).to_status();
        assert!(PeerError::from_status(&draining, "b").is_not_started());
        for code in [Code::ResourceExhausted, Code::Unavailable] {
            let foreign = PeerError::from_status(&Status::new(code, "calm down"), "b");
            assert!(
                matches!(foreign, PeerError::Transport { started: true, .. }),
                "{code:?} without our mark must not claim the run never started: {foreign:?}"
            );
        }
    }

    #[test]
    fn unknown_step_status_carries_registered_ids() {
        let err = PeerError::UnknownStep {
            step_id: "x::y".into(),
            registered: vec!["a::b".into()],
            node: "`node-b`".into(),
        };
        let status = err.to_status();
        assert_eq!(status.code(), Code::NotFound);
        assert!(status.message().contains("x::y") && status.message().contains("a::b"));
        match PeerError::from_status(&status, "http://b") {
            PeerError::UnknownStep {
                step_id,
                registered,
                ..
            } => {
                assert_eq!(step_id, "x::y");
                assert_eq!(registered, vec!["a::b".to_string()]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// The published Rust crate (v1 only) sends NOT_FOUND without details.
    #[test]
    fn a_v1_unknown_step_names_the_step_from_its_message() {
        let status = Status::not_found("unknown step id `interop::missing`");
        match PeerError::from_status(&status, "http://rust") {
            PeerError::UnknownStep { step_id, .. } => assert_eq!(step_id, "interop::missing"),
            other => panic!("unexpected {other:?}"),
        }
        let unquoted = PeerError::from_status(&Status::not_found("no such step"), "http://rust");
        assert!(matches!(unquoted, PeerError::UnknownStep { step_id, .. } if step_id.is_empty()));
    }

    #[test]
    fn unimplemented_newer_methods_say_the_peer_speaks_v1_only() {
        let status = Status::unimplemented("");
        let err = PeerError::from_method_status(&status, "http://rust", Some("ListSteps"));
        assert_eq!(err.kind(), "Unsupported");
        assert!(err.is_not_started());
        let text = err.to_string();
        assert!(
            text.starts_with("peer http://rust does not implement ListSteps: it speaks v1 only"),
            "{text}"
        );
        // Without a method (a v1 call), UNIMPLEMENTED stays a transport failure.
        let plain = PeerError::from_status(&status, "http://rust");
        assert_eq!(plain.kind(), "Transport");
    }

    #[test]
    fn a_v1_timeout_text_is_a_timeout() {
        let failure = failure_from_text("workflow timed out after 1s", "");
        assert_eq!(failure.kind, FailureKind::Timeout);
        let failure = failure_from_text("workflow error: step 'x' failed: boom", "");
        assert_eq!(failure.kind, FailureKind::StepFailed);
    }
}
