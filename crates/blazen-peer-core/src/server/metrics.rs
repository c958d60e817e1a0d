//! Figures for metrics that calls, runs and connections keep as they go.
//! Atomics only: keeping them costs a few uncontended adds per call, and a
//! reader (a metrics scrape) takes a snapshot whenever it likes, without
//! stopping anyone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Upper bounds, in seconds, of the run duration histogram's buckets; one
/// more bucket takes the runs longer than the last. From a millisecond (a
/// trivial step) to the default run deadline (300 s).
pub const RUN_DURATION_BOUNDS_SECS: [f64; 17] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];
const BUCKETS: usize = RUN_DURATION_BOUNDS_SECS.len() + 1;

/// How a run ended, as the run counters tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Ended with a StopEvent.
    Succeeded,
    /// A step raised, no StopEvent came, the result was not JSON...
    Failed,
    /// Cancelled by its caller, by a step, or by shutdown.
    Cancelled,
    /// Stopped at its deadline.
    TimedOut,
}

impl RunOutcome {
    /// Every outcome, in the order snapshots list them.
    pub const ALL: [RunOutcome; 4] = [
        RunOutcome::Succeeded,
        RunOutcome::Failed,
        RunOutcome::Cancelled,
        RunOutcome::TimedOut,
    ];

    /// The name metrics label it with.
    pub fn name(self) -> &'static str {
        match self {
            RunOutcome::Succeeded => "succeeded",
            RunOutcome::Failed => "failed",
            RunOutcome::Cancelled => "cancelled",
            RunOutcome::TimedOut => "timed_out",
        }
    }
}

/// Why a call or a connection was turned away before anything ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// At max_concurrent_runs, or request bodies at max_buffered_request_bytes.
    Busy,
    /// The server is shutting down.
    Draining,
    /// No token, or a wrong one.
    Unauthenticated,
    /// A run request that cannot run: unknown step, input not JSON or too deep...
    InvalidRequest,
    /// At max_connections: the connection was closed at once.
    ConnectionLimit,
}

impl Refusal {
    /// Every reason, in the order snapshots list them.
    pub const ALL: [Refusal; 5] = [
        Refusal::Busy,
        Refusal::Draining,
        Refusal::Unauthenticated,
        Refusal::InvalidRequest,
        Refusal::ConnectionLimit,
    ];

    /// The name metrics label it with.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Busy => "busy",
            Refusal::Draining => "draining",
            Refusal::Unauthenticated => "unauthenticated",
            Refusal::InvalidRequest => "invalid_request",
            Refusal::ConnectionLimit => "connection_limit",
        }
    }
}

/// Run durations of one outcome, bucket by bucket (see
/// [`RUN_DURATION_BOUNDS_SECS`]): how many runs, and their seconds added up.
/// Per-bucket sums let a reader replay each bucket as runs of its mean
/// duration, which lands them in the right bucket and keeps the total exact.
#[derive(Debug, Clone, PartialEq)]
pub struct DurationBuckets {
    /// Runs per bucket.
    pub counts: Vec<u64>,
    /// Seconds of those runs, per bucket.
    pub seconds: Vec<f64>,
}

/// Counters shared by a service and the server running it.
#[derive(Default)]
pub(crate) struct ServerCounters {
    refusals: [AtomicU64; Refusal::ALL.len()],
    connections_open: AtomicU64,
    connections_accepted: AtomicU64,
}

impl ServerCounters {
    pub(crate) fn refused(&self, why: Refusal) {
        self.refusals[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn refusals(&self) -> Vec<(Refusal, u64)> {
        Refusal::ALL
            .iter()
            .map(|&why| (why, self.refusals[why as usize].load(Ordering::Relaxed)))
            .collect()
    }

    /// Counts a connection as open until the guard drops.
    pub(crate) fn connection_opened(self: &Arc<Self>) -> OpenConnection {
        self.connections_accepted.fetch_add(1, Ordering::Relaxed);
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self.clone())
    }

    pub(crate) fn connections_open(&self) -> u64 {
        self.connections_open.load(Ordering::Relaxed)
    }

    pub(crate) fn connections_accepted(&self) -> u64 {
        self.connections_accepted.load(Ordering::Relaxed)
    }
}

/// One connection counted as open.
pub(crate) struct OpenConnection(Arc<ServerCounters>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Bucket {
    count: AtomicU64,
    nanos: AtomicU64,
}

/// The run duration histogram, one per outcome.
#[derive(Default)]
pub(crate) struct RunDurations {
    buckets: [[Bucket; BUCKETS]; RunOutcome::ALL.len()],
}

impl RunDurations {
    pub(crate) fn record(&self, outcome: RunOutcome, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        // Upper bounds are inclusive, as in Prometheus (`le`) and OpenTelemetry.
        let index = RUN_DURATION_BOUNDS_SECS.partition_point(|&bound| bound < secs);
        let bucket = &self.buckets[outcome as usize][index];
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        bucket.nanos.fetch_add(nanos, Ordering::Relaxed);
        bucket.count.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Vec<(RunOutcome, DurationBuckets)> {
        RunOutcome::ALL
            .iter()
            .map(|&outcome| {
                let buckets = &self.buckets[outcome as usize];
                let snapshot = DurationBuckets {
                    counts: buckets
                        .iter()
                        .map(|bucket| bucket.count.load(Ordering::Relaxed))
                        .collect(),
                    seconds: buckets
                        .iter()
                        .map(|bucket| bucket.nanos.load(Ordering::Relaxed) as f64 / 1e9)
                        .collect(),
                };
                (outcome, snapshot)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_the_bucket_whose_bound_is_at_or_above_them() {
        let durations = RunDurations::default();
        durations.record(RunOutcome::Failed, Duration::from_millis(1));
        durations.record(RunOutcome::Failed, Duration::from_micros(1001));
        durations.record(RunOutcome::Failed, Duration::from_secs(1000));
        let snapshot = durations.snapshot();
        let (outcome, failed) = &snapshot[1];
        assert_eq!(*outcome, RunOutcome::Failed);
        assert_eq!(failed.counts[0], 1);
        assert_eq!(failed.counts[1], 1);
        assert_eq!(failed.counts[BUCKETS - 1], 1);
        assert_eq!(failed.counts.iter().sum::<u64>(), 3);
        assert!((failed.seconds[BUCKETS - 1] - 1000.0).abs() < 1e-9);
        assert_eq!(snapshot[0].1.counts.iter().sum::<u64>(), 0);
    }

    #[test]
    fn an_open_connection_counts_until_dropped() {
        let counters = Arc::new(ServerCounters::default());
        let open = counters.connection_opened();
        let _other = counters.connection_opened();
        assert_eq!(counters.connections_open(), 2);
        drop(open);
        assert_eq!(counters.connections_open(), 1);
        assert_eq!(counters.connections_accepted(), 2);
        counters.refused(Refusal::Busy);
        assert_eq!(counters.refusals()[0], (Refusal::Busy, 1));
    }
}
