//! Read-only records the native module hands to Python, read by attribute.
//!
//! Named fields rather than positional tuples, so a field added on one side
//! cannot shift the meaning of the others. The only Python object any of them
//! holds is a `bytes` (FetchedBytes), which references nothing, so none can be
//! part of a cycle and the garbage collector has nothing to traverse.

use blazen_peer_core::envelope::{RemoteRefDescriptor, StepsResponse};
use blazen_peer_core::server::UploadUsage;
use blazen_peer_core::{PeerIdentity, RefInfo, RunStats};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// Runs since a server started, by how they ended.
#[pyclass(frozen, get_all, name = "RunCounts", module = "blazen_peer._native")]
pub struct RunCounts {
    runs_started: u64,
    runs_succeeded: u64,
    runs_failed: u64,
    runs_cancelled: u64,
    runs_timed_out: u64,
    runs_in_flight: u64,
}

impl From<RunStats> for RunCounts {
    fn from(stats: RunStats) -> Self {
        Self {
            runs_started: stats.runs_started,
            runs_succeeded: stats.runs_succeeded,
            runs_failed: stats.runs_failed,
            runs_cancelled: stats.runs_cancelled,
            runs_timed_out: stats.runs_timed_out,
            runs_in_flight: stats.runs_in_flight,
        }
    }
}

/// Uploaded values a server holds, and the uploads still arriving.
#[pyclass(frozen, get_all, name = "UploadCounts", module = "blazen_peer._native")]
pub struct UploadCounts {
    bytes_held: u64,
    in_progress: u64,
    bytes_arriving: u64,
}

impl From<UploadUsage> for UploadCounts {
    fn from(usage: UploadUsage) -> Self {
        Self {
            bytes_held: usage.bytes_held,
            in_progress: usage.in_progress,
            bytes_arriving: usage.bytes_arriving,
        }
    }
}

/// A session ref fetched from a peer: its bytes and the type tag its codec reads.
#[pyclass(frozen, get_all, name = "FetchedBytes", module = "blazen_peer._native")]
pub struct FetchedBytes {
    pub type_tag: String,
    pub data: Py<PyBytes>,
}

/// A session ref streamed into a caller's buffer: how many bytes it filled,
/// and the type tag its codec reads.
#[pyclass(frozen, get_all, name = "FetchedSize", module = "blazen_peer._native")]
pub struct FetchedSize {
    pub type_tag: String,
    pub size: u64,
}

/// One live session ref of a registry.
#[pyclass(frozen, get_all, name = "RefRecord", module = "blazen_peer._native")]
pub struct RefRecord {
    key: String,
    type_tag: String,
    size: usize,
    lifetime: &'static str,
    created_at_epoch_ms: u64,
    owner_run: Option<String>,
    parent_run: Option<String>,
}

impl From<RefInfo> for RefRecord {
    fn from(info: RefInfo) -> Self {
        Self {
            key: info.key.to_string(),
            type_tag: info.type_tag,
            size: info.size,
            lifetime: info.lifetime.name(),
            created_at_epoch_ms: info.created_at_epoch_ms,
            owner_run: info.owner_run.map(|run| run.to_string()),
            parent_run: info.parent_run.map(|run| run.to_string()),
        }
    }
}

/// A ref a response lists: it stays on `origin_node_id` under `key`.
#[pyclass(
    frozen,
    get_all,
    name = "RemoteRefEntry",
    module = "blazen_peer._native"
)]
pub struct RemoteRefEntry {
    key: String,
    origin_node_id: String,
    type_tag: String,
    created_at_epoch_ms: u64,
}

impl RemoteRefEntry {
    pub fn new(key: String, descriptor: &RemoteRefDescriptor) -> Self {
        Self {
            key,
            origin_node_id: descriptor.origin_node_id.clone(),
            type_tag: descriptor.type_tag.clone(),
            created_at_epoch_ms: descriptor.created_at_epoch_ms,
        }
    }
}

/// The verified TLS client certificate of a caller.
#[pyclass(frozen, name = "CallerIdentity", module = "blazen_peer._native")]
pub struct CallerIdentity {
    #[pyo3(get)]
    subject: String,
    #[pyo3(get)]
    common_name: Option<String>,
    #[pyo3(get)]
    dns_names: Vec<String>,
    #[pyo3(get)]
    uris: Vec<String>,
    der: Vec<u8>,
}

#[pymethods]
impl CallerIdentity {
    /// The certificate itself (DER).
    #[getter]
    fn certificate_der<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.der)
    }
}

impl From<&PeerIdentity> for CallerIdentity {
    fn from(identity: &PeerIdentity) -> Self {
        Self {
            subject: identity.subject.clone(),
            common_name: identity.common_name.clone(),
            dns_names: identity.dns_names.clone(),
            uris: identity.uris.clone(),
            der: identity.certificate_der.clone(),
        }
    }
}

/// A step a peer lists, with the event types it accepts.
#[derive(Clone)]
#[pyclass(frozen, get_all, name = "ListedStep", module = "blazen_peer._native")]
pub struct ListedStep {
    id: String,
    accepts: Vec<String>,
}

/// A workflow a peer lists, by name, with its steps.
#[derive(Clone)]
#[pyclass(
    frozen,
    get_all,
    name = "ListedWorkflow",
    module = "blazen_peer._native"
)]
pub struct ListedWorkflow {
    name: String,
    step_ids: Vec<String>,
}

/// `ListSteps`' answer.
#[pyclass(frozen, get_all, name = "StepListing", module = "blazen_peer._native")]
pub struct StepListing {
    node_id: String,
    steps: Vec<ListedStep>,
    workflows: Vec<ListedWorkflow>,
    draining: bool,
}

impl From<StepsResponse> for StepListing {
    fn from(listed: StepsResponse) -> Self {
        Self {
            node_id: listed.node_id,
            steps: listed
                .steps
                .into_iter()
                .map(|step| ListedStep {
                    id: step.id,
                    accepts: step.accepts,
                })
                .collect(),
            workflows: listed
                .workflows
                .into_iter()
                .map(|workflow| ListedWorkflow {
                    name: workflow.name,
                    step_ids: workflow.step_ids,
                })
                .collect(),
            draining: listed.draining,
        }
    }
}
