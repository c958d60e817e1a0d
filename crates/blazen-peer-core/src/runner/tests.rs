use super::*;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::Barrier;

use crate::event::{EventData, EventTypes, JsonEvent, BASE_EVENT, START_EVENT, STOP_EVENT};
use crate::registry::{StepFailure, StepHandler};
use crate::step_policy::{RetryPolicy, StepPolicy};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

type StepResult = Result<StepOutput, StepFailure>;

// The closure-backed step handler (one copy, shared with the other Rust tests).
#[path = "../../tests/support/fn_step.rs"]
mod fn_step;
use fn_step::FnStep;

fn step<F>(id: &str, accepts: &[&str], f: F) -> Step
where
    F: Fn(RunContext, Event) -> BoxFuture<'static, StepResult> + Send + Sync + 'static,
{
    Step::new(
        id,
        accepts.iter().map(|name| name.to_string()).collect(),
        Arc::new(FnStep(f)),
    )
}

/// An event of type `chain[0]` (with `chain[1..]` as ancestors) carrying JSON text.
fn json_event(chain: &[&str], json: &str) -> Event {
    Event {
        types: EventTypes::new(chain.iter().map(|name| name.to_string()).collect()),
        data: Arc::new(JsonEvent(json.as_bytes().to_vec())),
    }
}

/// A StopEvent whose `result` is the given JSON value text.
fn stop_event(result_json: &str) -> Event {
    json_event(
        &[STOP_EVENT, BASE_EVENT],
        &format!(r#"{{"result":{result_json}}}"#),
    )
}

fn payload(event: &Event) -> serde_json::Value {
    let json = event
        .as_json()
        .expect("test events carry JsonEvent payloads");
    serde_json::from_slice(&json.0).expect("test payloads are JSON")
}

fn ctx() -> RunContext {
    RunContext::new("node-a".into(), "wf", None)
}

fn start(json: &str) -> Event {
    Event::start_from_json(json.as_bytes().to_vec())
}

/// Sets a flag when dropped.
struct DropGuard(Arc<AtomicBool>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------
// Event helpers the runner relies on
// ---------------------------------------------------------------------------

#[test]
fn start_event_chain_and_stop_detection() {
    let start = start("{}");
    assert_eq!(start.types.name(), START_EVENT);
    assert_eq!(start.types.chain(), &[START_EVENT, BASE_EVENT]);
    assert!(!start.types.is_stop());
    // A StopEvent subclass is still a stop.
    let custom_stop = json_event(&["t::MyStop", STOP_EVENT, BASE_EVENT], "{}");
    assert!(custom_stop.types.is_stop());
    assert_eq!(custom_stop.types.name(), "t::MyStop");
    assert_eq!(EventTypes::new(vec![]).name(), BASE_EVENT);
}

#[test]
fn json_event_result_json_extracts_the_result_key() {
    assert_eq!(
        JsonEvent(br#"{"result":{"a":[1,2]},"other":3}"#.to_vec()).result_json(),
        Ok(br#"{"a":[1,2]}"#.to_vec())
    );
    assert_eq!(
        JsonEvent(br#"{"x":1}"#.to_vec()).result_json(),
        Ok(b"null".to_vec())
    );
    assert!(JsonEvent(b"not json".to_vec()).result_json().is_err());
}

// ---------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------

#[tokio::test]
async fn linear_pipeline_ends_at_the_stop_event() {
    let calls = Arc::new(Mutex::new(Vec::<String>::new()));
    let first_calls = calls.clone();
    let second_calls = calls.clone();
    let steps = vec![
        step("t::first", &[START_EVENT], move |ctx, event| {
            let calls = first_calls.clone();
            async move {
                calls
                    .lock()
                    .unwrap()
                    .push(format!("first:{}", event.types.name()));
                assert_eq!(ctx.node_id(), "node-a");
                assert_eq!(ctx.workflow_name(), "wf");
                let n = payload(&event)["n"].as_i64().unwrap();
                let next = json_event(&["t::Mid", BASE_EVENT], &format!(r#"{{"n":{}}}"#, n + 1));
                Ok(vec![next])
            }
            .boxed()
        }),
        step("t::second", &["t::Mid"], move |_ctx, event| {
            let calls = second_calls.clone();
            async move {
                calls
                    .lock()
                    .unwrap()
                    .push(format!("second:{}", event.types.name()));
                let n = payload(&event)["n"].as_i64().unwrap();
                Ok(vec![stop_event(&format!(r#"{{"doubled":{}}}"#, n * 2))])
            }
            .boxed()
        }),
    ];
    let ctx = ctx();
    let stop = run_workflow(&steps, ctx.clone(), start(r#"{"n":2}"#), None)
        .await
        .unwrap();
    assert!(stop.types.is_stop());
    assert_eq!(stop.types.name(), STOP_EVENT);
    assert_eq!(stop.data.result_json(), Ok(br#"{"doubled":6}"#.to_vec()));
    assert_eq!(
        *calls.lock().unwrap(),
        vec![
            "first:blazen::StartEvent".to_string(),
            "second:t::Mid".to_string()
        ]
    );
    assert!(ctx.is_cancelled(), "the context is marked done after a run");
}

#[tokio::test]
async fn steps_share_the_run_context_state() {
    let steps = vec![
        step("t::writer", &[START_EVENT], |ctx, _event| {
            async move {
                ctx.set("count", crate::context::StateValue::Json(b"7".to_vec()));
                Ok(vec![json_event(&["t::Mid", BASE_EVENT], "{}")])
            }
            .boxed()
        }),
        step("t::reader", &["t::Mid"], |ctx, _event| {
            async move {
                let value = match ctx.get("count") {
                    Some(crate::context::StateValue::Json(json)) => {
                        String::from_utf8(json).unwrap()
                    }
                    _ => "missing".into(),
                };
                Ok(vec![stop_event(&value)])
            }
            .boxed()
        }),
    ];
    let ctx = ctx();
    let stop = run_workflow(&steps, ctx.clone(), start("{}"), None)
        .await
        .unwrap();
    assert_eq!(stop.data.result_json(), Ok(b"7".to_vec()));
    assert_eq!(ctx.exported_state().get("count"), Some(&b"7".to_vec()));
}

#[tokio::test(start_paused = true)]
async fn fan_out_runs_accepting_steps_concurrently() {
    // Each part waits on a two-party barrier: it only opens if both calls are
    // in flight at the same time. A sequential runner would hang, and paused
    // time turns that hang into a quick `timeout` failure.
    let barrier = Arc::new(Barrier::new(2));
    let worker_calls = Arc::new(AtomicUsize::new(0));
    let worker_barrier = barrier.clone();
    let counter = worker_calls.clone();
    let steps = vec![
        step("t::split", &[START_EVENT], |_ctx, _event| {
            async move {
                Ok(vec![
                    json_event(&["t::Part", BASE_EVENT], r#"{"i":0}"#),
                    json_event(&["t::Part", BASE_EVENT], r#"{"i":1}"#),
                ])
            }
            .boxed()
        }),
        step("t::worker", &["t::Part"], move |_ctx, event| {
            let barrier = worker_barrier.clone();
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                barrier.wait().await;
                let i = payload(&event)["i"].as_i64().unwrap();
                if i == 0 {
                    Ok(vec![stop_event(r#""both parts met""#)])
                } else {
                    Ok(vec![])
                }
            }
            .boxed()
        }),
    ];
    let run = run_workflow(&steps, ctx(), start("{}"), None);
    let stop = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("fan-out calls did not run concurrently")
        .unwrap();
    assert_eq!(stop.data.result_json(), Ok(br#""both parts met""#.to_vec()));
    assert_eq!(worker_calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn one_event_reaches_every_accepting_step_concurrently() {
    // Two different steps accept the same event; both must be in flight at once.
    let barrier = Arc::new(Barrier::new(2));
    let left_barrier = barrier.clone();
    let right_barrier = barrier.clone();
    let steps = vec![
        step("t::left", &[START_EVENT], move |_ctx, _event| {
            let barrier = left_barrier.clone();
            async move {
                barrier.wait().await;
                Ok(vec![stop_event(r#""left""#)])
            }
            .boxed()
        }),
        step("t::right", &[START_EVENT], move |_ctx, _event| {
            let barrier = right_barrier.clone();
            async move {
                barrier.wait().await;
                Ok(vec![])
            }
            .boxed()
        }),
    ];
    let stop = tokio::time::timeout(
        Duration::from_secs(60),
        run_workflow(&steps, ctx(), start("{}"), None),
    )
    .await
    .expect("both steps accepting the StartEvent should run concurrently")
    .unwrap();
    assert_eq!(stop.data.result_json(), Ok(br#""left""#.to_vec()));
}

#[tokio::test]
async fn base_event_step_receives_every_event_and_subclasses_match() {
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let parent_got = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
    let unrelated_calls = Arc::new(AtomicUsize::new(0));
    let observer_seen = seen.clone();
    let parent_record = parent_got.clone();
    let unrelated_counter = unrelated_calls.clone();
    let steps = vec![
        step("t::first", &[START_EVENT], |_ctx, _event| {
            async move {
                Ok(vec![json_event(
                    &["t::Child", "t::Parent", BASE_EVENT],
                    r#"{"from":"first"}"#,
                )])
            }
            .boxed()
        }),
        step("t::parent", &["t::Parent"], move |_ctx, event| {
            parent_record.lock().unwrap().push(payload(&event));
            async move { Ok(vec![json_event(&["t::Done", BASE_EVENT], "{}")]) }.boxed()
        }),
        step("t::unrelated", &["t::Other"], move |_ctx, _event| {
            unrelated_counter.fetch_add(1, Ordering::SeqCst);
            async move { Ok(vec![]) }.boxed()
        }),
        step("t::observer", &[BASE_EVENT], move |_ctx, event| {
            observer_seen
                .lock()
                .unwrap()
                .push(event.types.name().to_string());
            let done = event.types.name() == "t::Done";
            async move {
                if done {
                    Ok(vec![stop_event(r#""observed""#)])
                } else {
                    Ok(vec![])
                }
            }
            .boxed()
        }),
    ];
    let stop = run_workflow(&steps, ctx(), start("{}"), None)
        .await
        .unwrap();
    assert_eq!(stop.data.result_json(), Ok(br#""observed""#.to_vec()));
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            START_EVENT.to_string(),
            "t::Child".to_string(),
            "t::Done".to_string()
        ]
    );
    assert_eq!(
        *parent_got.lock().unwrap(),
        vec![serde_json::json!({"from": "first"})]
    );
    assert_eq!(unrelated_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn event_nobody_accepts_fails_with_no_accepting_step() {
    let steps = vec![
        step("t::first", &[START_EVENT], |_ctx, _event| {
            async move { Ok(vec![json_event(&["t::Orphan", BASE_EVENT], "{}")]) }.boxed()
        }),
        step(
            "t::other",
            &["t::Unrelated", "t::Another"],
            |_ctx, _event| async move { Ok(vec![]) }.boxed(),
        ),
    ];
    let failure = run_workflow(&steps, ctx(), start("{}"), None)
        .await
        .unwrap_err();
    assert_eq!(failure.kind, FailureKind::NoAcceptingStep);
    assert_eq!(
        failure.message,
        "no step of workflow `wf` accepts event `t::Orphan` emitted by step `t::first`; steps \
         present: [`t::first` (accepts blazen::StartEvent), `t::other` (accepts t::Unrelated | \
         t::Another)]"
    );
    assert_eq!(failure.step_id.as_deref(), Some("t::first"));
    assert_eq!(failure.node_id, "node-a");
    assert_eq!(failure.remote_type, None);
}

#[tokio::test]
async fn start_event_nobody_accepts_fails_before_any_step_runs() {
    let called = Arc::new(AtomicBool::new(false));
    let flag = called.clone();
    let steps = vec![step("t::only", &["t::Mid"], move |_ctx, _event| {
        flag.store(true, Ordering::SeqCst);
        async move { Ok(vec![]) }.boxed()
    })];
    let ctx = ctx();
    let failure = run_workflow(&steps, ctx.clone(), start("{}"), None)
        .await
        .unwrap_err();
    assert_eq!(failure.kind, FailureKind::NoAcceptingStep);
    assert_eq!(
        failure.message,
        "no step of workflow `wf` accepts event `blazen::StartEvent`; steps present: [`t::only` \
         (accepts t::Mid)]"
    );
    assert_eq!(failure.step_id, None);
    assert!(!called.load(Ordering::SeqCst));
    assert!(ctx.is_cancelled());
}

#[tokio::test]
async fn run_without_stop_event_fails_with_no_stop_event() {
    let steps = vec![
        step("t::first", &[START_EVENT], |_ctx, _event| {
            async move { Ok(vec![json_event(&["t::Mid", BASE_EVENT], "{}")]) }.boxed()
        }),
        step("t::second", &["t::Mid"], |_ctx, _event| {
            async move { Ok(vec![]) }.boxed()
        }),
    ];
    let failure = run_workflow(&steps, ctx(), start("{}"), None)
        .await
        .unwrap_err();
    assert_eq!(failure.kind, FailureKind::NoStopEvent);
    assert_eq!(
        failure.message,
        "workflow `wf` on node `node-a` ended without a StopEvent: every step finished and none \
         returned one; the last step to finish was `t::second`, handling `t::Mid`; steps \
         present: [`t::first` (accepts blazen::StartEvent), `t::second` (accepts t::Mid)]"
    );
    assert_eq!(failure.step_id.as_deref(), Some("t::second"));
    assert_eq!(failure.node_id, "node-a");
}

#[tokio::test]
async fn failing_step_fails_the_run_with_step_failed() {
    let steps = vec![
        step("t::first", &[START_EVENT], |_ctx, _event| {
            async move { Ok(vec![json_event(&["t::Mid", BASE_EVENT], "{}")]) }.boxed()
        }),
        step("t::second", &["t::Mid"], |_ctx, _event| {
            async move {
                let mut failure = StepFailure::new("ValueError", "bad input");
                failure.traceback = Some("Traceback (most recent call last): ...".into());
                Err(failure)
            }
            .boxed()
        }),
    ];
    let failure = run_workflow(&steps, ctx(), start("{}"), None)
        .await
        .unwrap_err();
    assert_eq!(failure.kind, FailureKind::StepFailed);
    assert_eq!(failure.step_id.as_deref(), Some("t::second"));
    assert_eq!(failure.remote_type.as_deref(), Some("ValueError"));
    assert_eq!(
        failure.remote_traceback.as_deref(),
        Some("Traceback (most recent call last): ...")
    );
    assert_eq!(
        failure.message,
        "step `t::second` failed on node `node-a` handling `t::Mid`: ValueError: bad input; \
         steps present: [`t::first` (accepts blazen::StartEvent), `t::second` (accepts t::Mid)]"
    );
    assert_eq!(failure.node_id, "node-a");
}

fn with_policy(mut step: Step, policy: StepPolicy) -> Step {
    step.policy = Arc::new(policy);
    step
}

#[tokio::test(start_paused = true)]
async fn a_step_past_its_timeout_fails_the_run_naming_it() {
    let steps = vec![with_policy(
        step("t::hangs", &[START_EVENT], |_ctx, _event| {
            futures::future::pending().boxed()
        }),
        StepPolicy::new(None, Some(std::time::Duration::from_secs(2)), None),
    )];
    let failure = run_workflow(&steps, ctx(), start("{}"), None)
        .await
        .unwrap_err();
    assert_eq!(failure.kind, FailureKind::StepTimeout);
    assert_eq!(failure.step_id.as_deref(), Some("t::hangs"));
    assert!(
        failure.message.contains("within its 2s timeout"),
        "{}",
        failure.message
    );
}

#[tokio::test(start_paused = true)]
async fn retries_run_the_stated_attempts_and_the_failure_counts_them() {
    let tried = Arc::new(AtomicUsize::new(0));
    let counter = tried.clone();
    let steps = vec![with_policy(
        step("t::flaky", &[START_EVENT], move |_ctx, _event| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move { Err(StepFailure::new("ConnectionError", "provider down")) }.boxed()
        }),
        StepPolicy::new(
            None,
            None,
            Some(RetryPolicy {
                attempts: 3,
                backoff: std::time::Duration::from_millis(10),
                multiplier: 2.0,
                max_backoff: std::time::Duration::from_secs(1),
                retry_if: None,
            }),
        ),
    )];
    let failure = run_workflow(&steps, ctx(), start("{}"), None)
        .await
        .unwrap_err();
    assert_eq!(tried.load(Ordering::SeqCst), 3);
    assert_eq!(failure.kind, FailureKind::StepFailed);
    assert!(
        failure.message.contains("failed after 3 attempts"),
        "{}",
        failure.message
    );
}

#[tokio::test]
async fn cancelled_step_failure_is_reported_as_cancelled() {
    let steps = vec![step("t::only", &[START_EVENT], |_ctx, _event| {
        async move {
            let mut failure = StepFailure::new("CancelledError", "");
            failure.cancelled = true;
            Err(failure)
        }
        .boxed()
    })];
    let failure = run_workflow(&steps, ctx(), start("{}"), None)
        .await
        .unwrap_err();
    assert_eq!(failure.kind, FailureKind::Cancelled);
    assert_eq!(failure.step_id.as_deref(), Some("t::only"));
    assert_eq!(failure.remote_type.as_deref(), Some("CancelledError"));
}

#[tokio::test]
async fn first_stop_event_wins_over_later_emitted_events() {
    // A stop listed before other events ends the run; the later ones are never dispatched.
    let later_calls = Arc::new(AtomicUsize::new(0));
    let counter = later_calls.clone();
    let steps = vec![
        step("t::first", &[START_EVENT], |_ctx, _event| {
            async move {
                Ok(vec![
                    stop_event("1"),
                    json_event(&["t::Mid", BASE_EVENT], "{}"),
                ])
            }
            .boxed()
        }),
        step("t::second", &["t::Mid"], move |_ctx, _event| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move { Ok(vec![stop_event("2")]) }.boxed()
        }),
    ];
    let stop = run_workflow(&steps, ctx(), start("{}"), None)
        .await
        .unwrap();
    assert_eq!(stop.data.result_json(), Ok(b"1".to_vec()));
    assert_eq!(later_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn deadline_fails_with_timeout_and_cancels_the_context() {
    let seen_cancelled_at_start = Arc::new(Mutex::new(None));
    let record = seen_cancelled_at_start.clone();
    let steps = vec![step("t::slow", &[START_EVENT], move |ctx, _event| {
        *record.lock().unwrap() = Some(ctx.is_cancelled());
        async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(vec![stop_event("\"too late\"")])
        }
        .boxed()
    })];
    let ctx = ctx();
    let began = tokio::time::Instant::now();
    let failure = run_workflow(
        &steps,
        ctx.clone(),
        start("{}"),
        Some(Duration::from_secs(5)),
    )
    .await
    .unwrap_err();
    let elapsed = began.elapsed();
    assert_eq!(failure.kind, FailureKind::Timeout);
    assert_eq!(
        failure.message,
        "workflow `wf` did not finish within its 5s deadline on node `node-a`"
    );
    assert_eq!(failure.step_id, None);
    assert_eq!(failure.node_id, "node-a");
    assert_eq!(*seen_cancelled_at_start.lock().unwrap(), Some(false));
    assert!(
        ctx.is_cancelled(),
        "context must be cancelled once the run ended"
    );
    assert!(
        elapsed >= Duration::from_secs(5) && elapsed < Duration::from_secs(6),
        "elapsed {elapsed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn run_finishing_before_the_deadline_succeeds() {
    let steps = vec![step("t::quick", &[START_EVENT], |_ctx, _event| {
        async move {
            tokio::time::sleep(Duration::from_secs(4)).await;
            Ok(vec![stop_event("\"in time\"")])
        }
        .boxed()
    })];
    let stop = run_workflow(&steps, ctx(), start("{}"), Some(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(stop.data.result_json(), Ok(br#""in time""#.to_vec()));
}

#[tokio::test]
async fn dropping_the_run_drops_in_flight_step_futures() {
    let started = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicBool::new(false));
    let started_flag = started.clone();
    let dropped_flag = dropped.clone();
    let steps = vec![step("t::forever", &[START_EVENT], move |_ctx, _event| {
        let started = started_flag.clone();
        let guard = DropGuard(dropped_flag.clone());
        async move {
            let _guard = guard;
            started.store(true, Ordering::SeqCst);
            futures::future::pending::<()>().await;
            Ok(vec![])
        }
        .boxed()
    })];
    let ctx = ctx();
    let mut run = Box::pin(run_workflow(&steps, ctx.clone(), start("{}"), None));
    assert!((&mut run).now_or_never().is_none(), "the run cannot finish");
    assert!(started.load(Ordering::SeqCst), "the step future was polled");
    assert!(
        !dropped.load(Ordering::SeqCst),
        "the step future is still alive"
    );
    assert!(!ctx.is_cancelled());
    drop(run);
    assert!(
        dropped.load(Ordering::SeqCst),
        "dropping the run drops the step future"
    );
    assert!(ctx.is_cancelled(), "dropping the run cancels the context");
}
