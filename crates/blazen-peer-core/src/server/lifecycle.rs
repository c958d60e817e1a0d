//! What a server knows about its runs as a whole: how many started and how
//! each ended, whether it is draining, and the signal that cancels the runs
//! still going when a shutdown's grace period ends.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};
use uuid::Uuid;

use crate::context::RunContext;
use crate::envelope::{FailureKind, WorkflowFailure};
use crate::log_limit::LogLimit;
use crate::log_target::TARGET;

use super::metrics::{DurationBuckets, RunDurations, RunOutcome};

/// A failed run's WARNING carries its step's traceback at most once per step
/// id per this period: a step failing on every call would otherwise log a
/// screenful per call. The one-line WARNING itself is logged for every run.
const TRACEBACK_LOG_PERIOD: Duration = Duration::from_secs(10);

/// Counts of runs since the server started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Runs that began (requests refused before running are not counted).
    pub runs_started: u64,
    /// Runs that ended with a StopEvent.
    pub runs_succeeded: u64,
    /// Runs that ended with a failure other than cancellation or timeout.
    pub runs_failed: u64,
    /// Runs cancelled: by their caller (cancelled call, closed stream, lost
    /// connection), by a step raising CancelledError, or by shutdown.
    pub runs_cancelled: u64,
    /// Runs stopped at their deadline.
    pub runs_timed_out: u64,
    /// Runs going on now.
    pub runs_in_flight: u64,
}

#[derive(Default)]
struct Counters {
    started: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
    timed_out: AtomicU64,
}

/// Shared by every clone of a service.
pub(crate) struct Lifecycle {
    counters: Counters,
    durations: RunDurations,
    in_flight: AtomicU64,
    draining: AtomicBool,
    // Wakes `wait_idle` when the last run ends.
    idle: Notify,
    cancel_runs: watch::Sender<bool>,
    tracebacks_logged: LogLimit,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            counters: Counters::default(),
            durations: RunDurations::default(),
            in_flight: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            idle: Notify::new(),
            cancel_runs: watch::channel(false).0,
            tracebacks_logged: LogLimit::new(TRACEBACK_LOG_PERIOD),
        }
    }
}

impl Lifecycle {
    pub(crate) fn stats(&self) -> RunStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Acquire);
        RunStats {
            runs_started: load(&self.counters.started),
            runs_succeeded: load(&self.counters.succeeded),
            runs_failed: load(&self.counters.failed),
            runs_cancelled: load(&self.counters.cancelled),
            runs_timed_out: load(&self.counters.timed_out),
            runs_in_flight: load(&self.in_flight),
        }
    }

    /// Run durations so far, by outcome.
    pub(crate) fn durations(&self) -> Vec<(RunOutcome, DurationBuckets)> {
        self.durations.snapshot()
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Counts a run as started; the record counts (and logs) how it ended.
    pub(crate) fn begin(self: &Arc<Self>, ctx: &RunContext, steps: usize) -> RunRecord {
        self.counters.started.fetch_add(1, Ordering::AcqRel);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let (node_id, run_id, workflow) = (ctx.node_id(), ctx.run_id(), ctx.workflow_name());
        log::debug!(
            target: TARGET,
            node_id = node_id, run_id:% = run_id, workflow = workflow, steps = steps;
            "run {run_id} of workflow `{workflow}` started ({steps} steps)"
        );
        RunRecord {
            lifecycle: self.clone(),
            ended: false,
            // A handle, not copies: every run pays for the record, few log.
            ctx: ctx.clone(),
            began: Instant::now(),
        }
    }

    /// Waits until no run is going on, or `limit` passed; true when idle.
    pub(crate) async fn wait_idle(&self, limit: Option<Duration>) -> bool {
        let idle = async {
            loop {
                let notified = self.idle.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.in_flight.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        match limit {
            None => {
                idle.await;
                true
            }
            Some(limit) => tokio::time::timeout(limit, idle).await.is_ok(),
        }
    }

    /// Ends every run still going (the grace period is over).
    pub(crate) fn cancel_runs(&self) {
        self.cancel_runs.send_replace(true);
    }

    /// Resolves when [`Lifecycle::cancel_runs`] is called.
    pub(crate) fn runs_cancelled(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut cancelled = self.cancel_runs.subscribe();
        async move {
            // The sender lives as long as the service; without it, never cancel.
            if cancelled.wait_for(|cancel| *cancel).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// One run in progress. Dropped without [`RunRecord::end`] — the caller went
/// away and the run with it — it counts as cancelled.
pub(crate) struct RunRecord {
    lifecycle: Arc<Lifecycle>,
    ended: bool,
    ctx: RunContext,
    began: Instant,
}

impl RunRecord {
    pub(crate) fn end<T>(mut self, outcome: &Result<T, Box<WorkflowFailure>>) {
        let counters = &self.lifecycle.counters;
        let (counter, ended) = match outcome {
            Ok(_) => (&counters.succeeded, RunOutcome::Succeeded),
            Err(failure) => match failure.kind {
                FailureKind::Cancelled => (&counters.cancelled, RunOutcome::Cancelled),
                FailureKind::Timeout => (&counters.timed_out, RunOutcome::TimedOut),
                _ => (&counters.failed, RunOutcome::Failed),
            },
        };
        counter.fetch_add(1, Ordering::AcqRel);
        self.lifecycle.durations.record(ended, self.began.elapsed());
        self.ended = true;
        self.log_end(outcome.as_ref().err().map(|failure| failure.as_ref()));
    }

    fn labels(&self) -> (&str, Uuid, &str) {
        (
            self.ctx.node_id(),
            self.ctx.run_id(),
            self.ctx.workflow_name(),
        )
    }

    fn log_end(&self, failure: Option<&WorkflowFailure>) {
        let elapsed_ms = self.began.elapsed().as_secs_f64() * 1e3;
        let (node_id, run_id, workflow) = self.labels();
        let Some(failure) = failure else {
            log::debug!(
                target: TARGET,
                node_id = node_id, run_id:% = run_id, workflow = workflow,
                elapsed_ms = elapsed_ms, outcome = "succeeded";
                "run {run_id} of workflow `{workflow}` succeeded in {elapsed_ms:.1} ms"
            );
            return;
        };
        let step = failure.step_id.as_deref().unwrap_or("");
        let outcome = format!("{:?}", failure.kind);
        // A failing step is the application's news, not the peer's: warn;
        // cancellations and deadlines are the caller's doing: info.
        let level = match failure.kind {
            FailureKind::Cancelled | FailureKind::Timeout => log::Level::Info,
            _ => log::Level::Warn,
        };
        let traceback = match failure.remote_traceback.as_deref() {
            Some(traceback) if level == log::Level::Warn => self.traceback_note(step, traceback),
            _ => String::new(),
        };
        log::log!(
            target: TARGET, level,
            node_id = node_id, run_id:% = run_id, workflow = workflow, step = step,
            elapsed_ms = elapsed_ms, outcome = outcome.as_str();
            "run {run_id} of workflow `{workflow}` ended {outcome} after {elapsed_ms:.1} ms: {}{traceback}",
            failure.message
        );
    }

    /// What follows a failed run's one-line message: the step's traceback on
    /// following lines, or, when one was logged for this step less than
    /// [`TRACEBACK_LOG_PERIOD`] ago, a note that it was held back.
    fn traceback_note(&self, step: &str, traceback: &str) -> String {
        match self.lifecycle.tracebacks_logged.admit(step) {
            Some(0) => format!("\n{}", traceback.trim_end()),
            Some(1) => format!(
                "\n{}\n(1 more traceback of this step held back)",
                traceback.trim_end()
            ),
            Some(held_back) => format!(
                "\n{}\n({held_back} more tracebacks of this step held back)",
                traceback.trim_end()
            ),
            None => format!(
                " (traceback held back: one per step per {} s)",
                TRACEBACK_LOG_PERIOD.as_secs()
            ),
        }
    }
}

impl Drop for RunRecord {
    fn drop(&mut self) {
        if !self.ended {
            self.lifecycle
                .counters
                .cancelled
                .fetch_add(1, Ordering::AcqRel);
            self.lifecycle
                .durations
                .record(RunOutcome::Cancelled, self.began.elapsed());
            let (node_id, run_id, workflow) = self.labels();
            log::info!(
                target: TARGET,
                node_id = node_id, run_id:% = run_id, workflow = workflow, outcome = "Cancelled";
                "run {run_id} of workflow `{workflow}` cancelled: its caller went away"
            );
        }
        if self.lifecycle.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.lifecycle.idle.notify_waiters();
        }
    }
}
