//! Read-only records the native module hands to Python, read by attribute.
//!
//! Named fields rather than positional tuples, so a field added on one side
//! cannot shift the meaning of the others. The only Python object any of them
//! holds is a `bytes` (FetchedBytes), which references nothing, so none can be
//! part of a cycle and the garbage collector has nothing to traverse.

use std::collections::BTreeMap;

use blazen_peer_core::envelope::{
    Envelope, PeerLabels, RemoteRefDescriptor, StepPolicies, StepPolicyInfo, StepsResponse,
};
use blazen_peer_core::server::UploadUsage;
use blazen_peer_core::usage::RunUsage;
use blazen_peer_core::{PeerIdentity, RefInfo, RunStats, StreamedEvent};
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
    max_concurrency: Option<u64>,
    in_use: u64,
    timeout_secs: Option<f64>,
    attempts: u32,
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
    labels: BTreeMap<String, String>,
}

impl From<Envelope<StepsResponse>> for StepListing {
    fn from(envelope: Envelope<StepsResponse>) -> Self {
        // A v1 peer (or one with nothing to say) sends neither extension:
        // no limits, no labels.
        let policies: BTreeMap<String, StepPolicyInfo> = envelope
            .extensions
            .get::<StepPolicies>()
            .unwrap_or_default()
            .steps
            .into_iter()
            .map(|policy| (policy.id.clone(), policy))
            .collect();
        let labels = envelope
            .extensions
            .get::<PeerLabels>()
            .unwrap_or_default()
            .labels;
        let listed = envelope.body;
        Self {
            node_id: listed.node_id,
            steps: listed
                .steps
                .into_iter()
                .map(|step| {
                    let policy = policies.get(&step.id);
                    ListedStep {
                        max_concurrency: policy
                            .map(|policy| policy.max_concurrency)
                            .filter(|limit| *limit > 0),
                        in_use: policy.map_or(0, |policy| policy.in_use),
                        timeout_secs: policy
                            .and_then(|policy| policy.timeout_ms)
                            .map(|ms| ms as f64 / 1000.0),
                        attempts: policy.map_or(1, |policy| policy.attempts.max(1)),
                        id: step.id,
                        accepts: step.accepts,
                    }
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
            labels,
        }
    }
}

/// An event a step of a local run wrote with `write_event_to_stream`.
#[pyclass(frozen, name = "WrittenEvent", module = "blazen_peer._native")]
pub struct WrittenEvent {
    #[pyo3(get)]
    event_type: String,
    data: Vec<u8>,
}

#[pymethods]
impl WrittenEvent {
    /// The event's fields as UTF-8 JSON text.
    #[getter]
    fn data_json<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.data)
    }
}

impl From<StreamedEvent> for WrittenEvent {
    fn from(event: StreamedEvent) -> Self {
        Self {
            event_type: event.event_type,
            data: event.data_json,
        }
    }
}

/// A run's usage of one provider and model.
#[derive(Clone)]
#[pyclass(frozen, get_all, name = "ModelUsage", module = "blazen_peer._native")]
pub struct ModelUsageRecord {
    provider: String,
    model: String,
    input_tokens: u64,
    output_tokens: u64,
    total_tokens: u64,
    cost_usd: f64,
    calls: u64,
}

/// A run's usage totals, its sub-runs' included.
#[pyclass(frozen, get_all, name = "UsageTotals", module = "blazen_peer._native")]
pub struct UsageTotals {
    input_tokens: u64,
    output_tokens: u64,
    cost_usd: f64,
    by_model: Vec<ModelUsageRecord>,
}

impl From<&RunUsage> for UsageTotals {
    fn from(usage: &RunUsage) -> Self {
        Self {
            input_tokens: usage.input_tokens(),
            output_tokens: usage.output_tokens(),
            cost_usd: usage.cost_usd(),
            by_model: usage
                .by_model
                .iter()
                .map(|((provider, model), used)| ModelUsageRecord {
                    provider: provider.clone(),
                    model: model.clone(),
                    input_tokens: used.input_tokens,
                    output_tokens: used.output_tokens,
                    total_tokens: used.total_tokens,
                    cost_usd: used.cost_usd,
                    calls: used.calls,
                })
                .collect(),
        }
    }
}
