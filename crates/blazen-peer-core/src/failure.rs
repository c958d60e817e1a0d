//! How a failure travels: a failed run's [`WorkflowFailure`] and its
//! [`FailureKind`] (a response extension), and the [`NotFoundDetail`] of an
//! unknown step or workflow (NOT_FOUND status details).
//!
//! Kept apart from `envelope` so that `error`, which converts these to and from
//! [`PeerError`](crate::PeerError), does not import `envelope`, which itself
//! returns `PeerError`. `envelope` re-exports them under their old paths.

use serde::{Deserialize, Serialize};

/// Why a workflow failed, in machine-readable form (response extension tag 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowFailure {
    /// What went wrong; see [`FailureKind`].
    pub kind: FailureKind,
    /// Human-readable summary, the same text as `SubWorkflowResponse.error`.
    pub message: String,
    /// Class name of the exception a step raised.
    pub remote_type: Option<String>,
    /// Formatted traceback of that exception, on the peer.
    pub remote_traceback: Option<String>,
    /// The step that failed, if one did.
    pub step_id: Option<String>,
    /// The node the run executed on.
    pub node_id: String,
}

/// Category of a workflow failure; travels as its name (a string), so peers in
/// other languages can read it and a newer peer can add kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", from = "String")]
pub enum FailureKind {
    /// A step raised.
    StepFailed,
    /// Every step finished and none emitted a StopEvent.
    NoStopEvent,
    /// An event was emitted that no step of the workflow accepts.
    NoAcceptingStep,
    /// The run passed its deadline and was stopped.
    Timeout,
    /// The run was cancelled before it finished.
    Cancelled,
    /// One step passed its own `timeout_secs` and was stopped (`step_id` names it).
    StepTimeout,
    /// The StopEvent's result could not be encoded as JSON.
    ResultNotJson,
    /// A kind this build does not know (sent by a newer peer).
    Other,
}

impl FailureKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::StepFailed => "StepFailed",
            FailureKind::NoStopEvent => "NoStopEvent",
            FailureKind::NoAcceptingStep => "NoAcceptingStep",
            FailureKind::Timeout => "Timeout",
            FailureKind::Cancelled => "Cancelled",
            FailureKind::StepTimeout => "StepTimeout",
            FailureKind::ResultNotJson => "ResultNotJson",
            FailureKind::Other => "Other",
        }
    }
}

impl From<FailureKind> for String {
    fn from(kind: FailureKind) -> Self {
        kind.as_str().to_owned()
    }
}

impl From<String> for FailureKind {
    fn from(name: String) -> Self {
        [
            FailureKind::StepFailed,
            FailureKind::NoStopEvent,
            FailureKind::NoAcceptingStep,
            FailureKind::Timeout,
            FailureKind::Cancelled,
            FailureKind::StepTimeout,
            FailureKind::ResultNotJson,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == name)
        .unwrap_or(FailureKind::Other)
    }
}

/// Status details of NOT_FOUND for unknown steps or workflows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotFoundDetail {
    /// The missing step id, or workflow name when `is_workflow`.
    pub missing: String,
    /// True when a workflow name (not a step id) was unknown.
    pub is_workflow: bool,
    /// What the peer has registered of that kind.
    pub registered: Vec<String>,
}
