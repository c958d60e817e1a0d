//! The workflow engine: routes each event to every step that accepts it, runs
//! those calls concurrently, and ends at the first StopEvent.

use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};

use crate::context::RunContext;
use crate::envelope::{FailureKind, WorkflowFailure};
use crate::event::Event;
use crate::registry::{Step, StepOutput};
use crate::step_policy::{self, PolicyFailure};

/// Runs `steps` from `start` until a StopEvent, which it returns.
///
/// Dropping the returned future cancels every step call in flight. However the
/// run ends, the context is marked cancelled so synchronous steps can stop.
pub async fn run_workflow(
    steps: &[Step],
    ctx: RunContext,
    start: Event,
    deadline: Option<Duration>,
) -> Result<Event, Box<WorkflowFailure>> {
    // However the run ends — even by this future being dropped — it is finished,
    // and its refs settled, exactly once.
    let guard = FinishOnDrop(ctx.clone());
    let run = drive(steps, &ctx, start);
    let outcome = match deadline {
        None => run.await,
        Some(limit) => match tokio::time::timeout(limit, run).await {
            Ok(outcome) => outcome,
            Err(_) => Err(failure(
                &ctx,
                FailureKind::Timeout,
                format!(
                    "workflow `{}` did not finish within its {}s deadline on node `{}`",
                    ctx.workflow_name(),
                    limit.as_secs_f64(),
                    ctx.node_id()
                ),
                None,
            )),
        },
    };
    guard.0.finish(outcome.is_err());
    outcome
}

struct FinishOnDrop(RunContext);

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        self.0.finish(true);
    }
}

type Call = futures::future::BoxFuture<'static, (Step, Event, Result<StepOutput, PolicyFailure>)>;

async fn drive(
    steps: &[Step],
    ctx: &RunContext,
    start: Event,
) -> Result<Event, Box<WorkflowFailure>> {
    let mut in_flight: FuturesUnordered<Call> = FuturesUnordered::new();
    dispatch(steps, ctx, start, None, &mut in_flight)?;
    let mut last_handled = None;
    while let Some((step, event, outcome)) = in_flight.next().await {
        let emitted = outcome.map_err(|err| step_failed(ctx, steps, &step, &event, err))?;
        for next in emitted {
            if next.types.is_stop() {
                return Ok(next);
            }
            dispatch(steps, ctx, next, Some(&step), &mut in_flight)?;
        }
        last_handled = Some((step, event));
    }
    let ended_on = match &last_handled {
        Some((step, event)) => format!(
            "; the last step to finish was `{}`, handling `{}`",
            step.id,
            event.types.name()
        ),
        None => String::new(),
    };
    Err(failure(
        ctx,
        FailureKind::NoStopEvent,
        format!(
            "workflow `{}` on node `{}` ended without a StopEvent: every step finished and none \
             returned one{ended_on}; steps present: {}",
            ctx.workflow_name(),
            ctx.node_id(),
            describe_steps(steps)
        ),
        last_handled.map(|(step, _)| step.id.to_string()),
    ))
}

fn dispatch(
    steps: &[Step],
    ctx: &RunContext,
    event: Event,
    emitted_by: Option<&Step>,
    in_flight: &mut FuturesUnordered<Call>,
) -> Result<(), Box<WorkflowFailure>> {
    let mut accepted = false;
    for step in steps.iter().filter(|step| step.accepts_event(&event.types)) {
        accepted = true;
        let step = step.clone();
        let event = event.clone();
        let ctx = ctx.clone();
        in_flight.push(Box::pin(async move {
            let outcome =
                step_policy::call(&step.id, &step.policy, &step.handler, ctx, event.clone()).await;
            (step, event, outcome)
        }));
    }
    if accepted {
        return Ok(());
    }
    let origin = match emitted_by {
        Some(step) => format!(" emitted by step `{}`", step.id),
        None => String::new(),
    };
    Err(failure(
        ctx,
        FailureKind::NoAcceptingStep,
        format!(
            "no step of workflow `{}` accepts event `{}`{origin}; steps present: {}",
            ctx.workflow_name(),
            event.types.name(),
            describe_steps(steps)
        ),
        emitted_by.map(|step| step.id.to_string()),
    ))
}

fn step_failed(
    ctx: &RunContext,
    steps: &[Step],
    step: &Step,
    event: &Event,
    err: PolicyFailure,
) -> Box<WorkflowFailure> {
    let (err, attempts) = match err {
        PolicyFailure::Failed { failure, attempts } => (failure, attempts),
        PolicyFailure::TimedOut { limit, attempts } => {
            let tried = if attempts > 1 {
                format!(" (attempt {attempts})")
            } else {
                String::new()
            };
            return failure(
                ctx,
                FailureKind::StepTimeout,
                format!(
                    "step `{}` on node `{}` did not finish within its {}s timeout while \
                     handling `{}`{tried}, and was stopped; raise the step's timeout_secs or \
                     make it faster",
                    step.id,
                    ctx.node_id(),
                    limit.as_secs_f64(),
                    event.types.name(),
                ),
                Some(step.id.to_string()),
            );
        }
    };
    let kind = if err.cancelled {
        FailureKind::Cancelled
    } else {
        FailureKind::StepFailed
    };
    let raised = if err.message.is_empty() {
        err.error_type.clone()
    } else {
        format!("{}: {}", err.error_type, err.message)
    };
    let after = if attempts > 1 {
        format!(" after {attempts} attempts")
    } else {
        String::new()
    };
    let message = if err.cancelled {
        format!(
            "step `{}` on node `{}` was cancelled while handling `{}` ({raised})",
            step.id,
            ctx.node_id(),
            event.types.name(),
        )
    } else {
        format!(
            "step `{}` failed{after} on node `{}` handling `{}`: {raised}; steps present: {}",
            step.id,
            ctx.node_id(),
            event.types.name(),
            describe_steps(steps)
        )
    };
    Box::new(WorkflowFailure {
        kind,
        message,
        remote_type: Some(err.error_type),
        remote_traceback: err.traceback,
        step_id: Some(step.id.to_string()),
        node_id: ctx.node_id().to_owned(),
    })
}

fn failure(
    ctx: &RunContext,
    kind: FailureKind,
    message: String,
    step_id: Option<String>,
) -> Box<WorkflowFailure> {
    Box::new(WorkflowFailure {
        kind,
        message,
        remote_type: None,
        remote_traceback: None,
        step_id,
        node_id: ctx.node_id().to_owned(),
    })
}

fn describe_steps(steps: &[Step]) -> String {
    let listed: Vec<String> = steps
        .iter()
        .map(|step| format!("`{}` (accepts {})", step.id, step.accepts.join(" | ")))
        .collect();
    format!("[{}]", listed.join(", "))
}

#[cfg(test)]
mod tests;
