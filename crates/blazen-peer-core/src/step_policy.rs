//! What the engine's `StepRegistration` calls `max_concurrency`, `timeout` and
//! `retry_config`: how one step is called, whichever run calls it.
//!
//! The concurrency slots belong to the registered step, not to a run, so the
//! limit holds across every run of the process (a GPU step that may run once
//! at a time stays once at a time however many callers there are). A call
//! waits for its slot on a semaphore, never polling; the wait needs no bound
//! of its own, since the run's deadline drops the whole run, waiters included.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::context::RunContext;
use crate::error::PeerError;
use crate::event::Event;
use crate::registry::{StepFailure, StepHandler, StepOutput};

/// One of a step's concurrency slots, held by a call until it returns.
pub type StepSlot = OwnedSemaphorePermit;

/// Wait before a step's second attempt, unless its retry policy says otherwise.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(500);
/// Factor by which the wait grows after each further attempt.
pub const DEFAULT_RETRY_MULTIPLIER: f64 = 2.0;
/// Longest wait between two attempts.
pub const DEFAULT_RETRY_MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Decides whether a failed attempt is worth another (the host knows its
/// exception types; the core only counts).
pub trait RetryFilter: Send + Sync + 'static {
    /// True when `failure` may be retried.
    fn should_retry(&self, failure: &StepFailure) -> bool;
}

/// How often a failing step is tried, and how long it waits in between.
#[derive(Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 means no retry).
    pub attempts: u32,
    /// Wait before the second attempt.
    pub backoff: Duration,
    /// Factor applied to the wait after each further attempt.
    pub multiplier: f64,
    /// Longest wait between two attempts.
    pub max_backoff: Duration,
    /// Which failures are retried; None: every failure but a cancellation.
    pub retry_if: Option<Arc<dyn RetryFilter>>,
}

impl RetryPolicy {
    /// The wait after attempt `attempt` (1-based) failed.
    fn wait_after(&self, attempt: u32) -> Duration {
        let factor = self
            .multiplier
            .max(1.0)
            .powi(attempt.saturating_sub(1) as i32);
        let secs = self.backoff.as_secs_f64() * factor;
        Duration::try_from_secs_f64(secs)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }

    fn retries(&self, failure: &StepFailure) -> bool {
        !failure.cancelled
            && self
                .retry_if
                .as_ref()
                .is_none_or(|filter| filter.should_retry(failure))
    }
}

impl std::fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("attempts", &self.attempts)
            .field("backoff", &self.backoff)
            .field("multiplier", &self.multiplier)
            .field("max_backoff", &self.max_backoff)
            .field("filtered", &self.retry_if.is_some())
            .finish()
    }
}

/// A step's limits. The default has none: unlimited, no timeout, one attempt.
#[derive(Debug, Default)]
pub struct StepPolicy {
    max_concurrency: Option<usize>,
    slots: Option<Arc<Semaphore>>,
    timeout: Option<Duration>,
    retry: Option<RetryPolicy>,
}

impl StepPolicy {
    /// A policy; `max_concurrency` 0 or None means unlimited.
    pub fn new(
        max_concurrency: Option<usize>,
        timeout: Option<Duration>,
        retry: Option<RetryPolicy>,
    ) -> Self {
        let max_concurrency = max_concurrency.filter(|limit| *limit > 0);
        Self {
            max_concurrency,
            slots: max_concurrency.map(|limit| Arc::new(Semaphore::new(limit))),
            timeout,
            retry,
        }
    }

    /// A policy as a host registers it, refused with a message naming `step_id`
    /// and the setting when it cannot work: a limit of 0 (omit it for none), a
    /// zero timeout, no attempt at all, a backoff that shrinks.
    pub fn checked(
        step_id: &str,
        max_concurrency: Option<usize>,
        timeout: Option<Duration>,
        retry: Option<RetryPolicy>,
    ) -> Result<Self, PeerError> {
        let refuse = |what: String| Err(PeerError::Validation(format!("step `{step_id}`: {what}")));
        if max_concurrency == Some(0) {
            return refuse("max_concurrency must be at least 1 (omit it for no limit)".into());
        }
        if timeout.is_some_and(|limit| limit.is_zero()) {
            return refuse("timeout_secs must be positive (omit it for no timeout)".into());
        }
        if let Some(retry) = &retry {
            if retry.attempts == 0 {
                return refuse(
                    "Retry.attempts counts the first attempt too, so it must be at least 1".into(),
                );
            }
            if !retry.multiplier.is_finite() || retry.multiplier < 1.0 {
                return refuse(format!(
                    "Retry.multiplier must be a finite number of at least 1, got {}",
                    retry.multiplier
                ));
            }
        }
        Ok(Self::new(max_concurrency, timeout, retry))
    }

    /// Most calls of the step running at once in this process; None: unlimited.
    pub fn max_concurrency(&self) -> Option<usize> {
        self.max_concurrency
    }

    /// Calls holding a slot now (0 when unlimited: nothing is counted).
    pub fn in_use(&self) -> usize {
        match (&self.slots, self.max_concurrency) {
            (Some(slots), Some(limit)) => limit.saturating_sub(slots.available_permits()),
            _ => 0,
        }
    }

    /// How long one attempt may run.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The retry policy, if any.
    pub fn retry(&self) -> Option<&RetryPolicy> {
        self.retry.as_ref()
    }

    /// Attempts in all (1 without a retry policy).
    pub fn attempts(&self) -> u32 {
        self.retry.as_ref().map_or(1, |retry| retry.attempts.max(1))
    }
}

/// Why a call under a policy failed.
#[derive(Debug)]
pub enum PolicyFailure {
    /// The step failed on its last attempt.
    Failed {
        /// The last attempt's failure.
        failure: StepFailure,
        /// Attempts that ran.
        attempts: u32,
    },
    /// An attempt passed the step's timeout and was stopped; timeouts are not
    /// retried, since a `def` step cannot be stopped, only told to stop.
    TimedOut {
        /// The step's timeout.
        limit: Duration,
        /// Attempts that ran, the timed-out one included.
        attempts: u32,
    },
}

/// Calls `handler` under `policy`: tries up to the policy's attempts, each in
/// a concurrency slot and within its timeout, logging each retry.
pub async fn call(
    step_id: &str,
    policy: &StepPolicy,
    handler: &Arc<dyn StepHandler>,
    ctx: RunContext,
    event: Event,
) -> Result<StepOutput, PolicyFailure> {
    let attempts = policy.attempts();
    let mut attempt = 1;
    loop {
        // A slot per attempt, not per call: a step waiting out its backoff
        // leaves the slot to the calls queued behind it.
        // Closed never: the semaphore lives as long as the policy that owns it.
        let slot = match &policy.slots {
            Some(slots) => slots.clone().acquire_owned().await.ok(),
            None => None,
        };
        let call = handler.invoke_in_slot(ctx.clone(), event.clone(), slot);
        let outcome = match policy.timeout {
            None => call.await,
            Some(limit) => match tokio::time::timeout(limit, call).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    return Err(PolicyFailure::TimedOut {
                        limit,
                        attempts: attempt,
                    })
                }
            },
        };
        let failure = match outcome {
            Ok(emitted) => return Ok(emitted),
            Err(failure) => failure,
        };
        let retry = match &policy.retry {
            Some(retry) if attempt < attempts && retry.retries(&failure) => retry,
            _ => {
                return Err(PolicyFailure::Failed {
                    failure,
                    attempts: attempt,
                })
            }
        };
        let wait = retry.wait_after(attempt);
        log::warn!(
            target: crate::log_target::TARGET,
            "step `{step_id}` of run {} failed on attempt {attempt} of {attempts} ({}: {}); \
             retrying in {:.3}s",
            ctx.run_id(),
            failure.error_type,
            failure.message,
            wait.as_secs_f64(),
        );
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempts,
            backoff: Duration::from_millis(100),
            multiplier: 2.0,
            max_backoff: Duration::from_millis(300),
            retry_if: None,
        }
    }

    #[test]
    fn backoff_grows_by_its_multiplier_up_to_its_ceiling() {
        let policy = retry(5);
        assert_eq!(policy.wait_after(1), Duration::from_millis(100));
        assert_eq!(policy.wait_after(2), Duration::from_millis(200));
        assert_eq!(policy.wait_after(3), Duration::from_millis(300));
        assert_eq!(policy.wait_after(9), Duration::from_millis(300));
    }

    #[test]
    fn cancellations_are_never_retried() {
        let cancelled = StepFailure {
            cancelled: true,
            ..StepFailure::new("CancelledError", "")
        };
        assert!(!retry(3).retries(&cancelled));
        assert!(retry(3).retries(&StepFailure::new("ValueError", "x")));
    }

    #[test]
    fn settings_that_cannot_work_are_refused_naming_the_step() {
        let refused = |policy: Result<StepPolicy, PeerError>| match policy {
            Err(PeerError::Validation(message)) => message,
            other => panic!("expected a refusal, got {other:?}"),
        };
        let zero = refused(StepPolicy::checked("gpu::embed", Some(0), None, None));
        assert!(
            zero.starts_with("step `gpu::embed`: max_concurrency"),
            "{zero}"
        );
        let instant = refused(StepPolicy::checked("s", None, Some(Duration::ZERO), None));
        assert!(
            instant.contains("timeout_secs must be positive"),
            "{instant}"
        );
        let none = refused(StepPolicy::checked("s", None, None, Some(retry(0))));
        assert!(none.contains("Retry.attempts"), "{none}");
        let shrinking = RetryPolicy {
            multiplier: 0.5,
            ..retry(2)
        };
        let shrinks = refused(StepPolicy::checked("s", None, None, Some(shrinking)));
        assert!(shrinks.contains("Retry.multiplier"), "{shrinks}");
        assert!(StepPolicy::checked("s", Some(1), None, Some(retry(2))).is_ok());
    }

    #[test]
    fn zero_means_unlimited_and_in_use_counts_held_slots() {
        assert_eq!(StepPolicy::new(Some(0), None, None).max_concurrency(), None);
        let policy = StepPolicy::new(Some(2), None, None);
        let held = policy.slots.clone().unwrap().try_acquire_owned().unwrap();
        assert_eq!(policy.in_use(), 1);
        drop(held);
        assert_eq!(policy.in_use(), 0);
    }
}
