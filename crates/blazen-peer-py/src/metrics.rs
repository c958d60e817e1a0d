//! What a server counts, for `blazen_peer._metrics`: one named snapshot per read.

use std::collections::HashMap;

use blazen_peer_core::server::RUN_DURATION_BOUNDS_SECS;
use blazen_peer_core::ServiceMetrics;
use pyo3::prelude::*;

/// A server's figures at one moment: run counts by outcome, run durations
/// per histogram bucket, refusals by reason, connections and session refs.
#[pyclass(
    frozen,
    get_all,
    name = "ServerMetrics",
    module = "blazen_peer._native"
)]
pub struct ServerMetricsRef {
    runs_started: u64,
    runs_succeeded: u64,
    runs_failed: u64,
    runs_cancelled: u64,
    runs_timed_out: u64,
    runs_in_flight: u64,
    /// Upper bounds in seconds of the duration buckets; one more bucket
    /// takes longer runs.
    run_duration_bounds: Vec<f64>,
    /// Runs per duration bucket, by outcome.
    run_duration_counts: HashMap<&'static str, Vec<u64>>,
    /// Their seconds added up, per bucket, by outcome.
    run_duration_seconds: HashMap<&'static str, Vec<f64>>,
    /// Calls and connections turned away, by reason.
    refusals: HashMap<&'static str, u64>,
    connections_open: u64,
    connections_accepted: u64,
    session_refs: usize,
    session_ref_bytes: usize,
}

impl From<ServiceMetrics> for ServerMetricsRef {
    fn from(metrics: ServiceMetrics) -> Self {
        let mut run_duration_counts = HashMap::new();
        let mut run_duration_seconds = HashMap::new();
        for (outcome, buckets) in metrics.run_durations {
            run_duration_counts.insert(outcome.name(), buckets.counts);
            run_duration_seconds.insert(outcome.name(), buckets.seconds);
        }
        Self {
            runs_started: metrics.runs.runs_started,
            runs_succeeded: metrics.runs.runs_succeeded,
            runs_failed: metrics.runs.runs_failed,
            runs_cancelled: metrics.runs.runs_cancelled,
            runs_timed_out: metrics.runs.runs_timed_out,
            runs_in_flight: metrics.runs.runs_in_flight,
            run_duration_bounds: RUN_DURATION_BOUNDS_SECS.to_vec(),
            run_duration_counts,
            run_duration_seconds,
            refusals: metrics
                .refusals
                .into_iter()
                .map(|(why, count)| (why.name(), count))
                .collect(),
            connections_open: metrics.connections_open,
            connections_accepted: metrics.connections_accepted,
            session_refs: metrics.session_refs.refs,
            session_ref_bytes: metrics.session_refs.bytes,
        }
    }
}
