//! Python functions as core steps. `async def` steps run as tasks on the event
//! loop of the server (or local run) that owns the run; plain `def` steps run
//! on the package's daemon worker threads (see `sync_steps`).

use std::any::Any;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blazen_peer_core::registry::StepOutput;
use blazen_peer_core::{
    Event, PeerError, RetryFilter, RetryPolicy, RunContext, Step, StepFailure, StepHandler,
    StepPolicy, StepRegistry, StepSlot,
};
use futures::future::BoxFuture;
use pyo3::exceptions::PyBaseException;
use pyo3::prelude::*;
use pyo3::types::{PyTuple, PyWeakrefReference};
use tokio::sync::oneshot;

use crate::context::RunContextRef;
use crate::errors::IntoPyResult;
use crate::events::{self, EventTypesRef};
use crate::inbox::Inbox;
use crate::{bridge, gil, sync_steps};

/// What a run carries for Python steps: the inbox of the loop that runs
/// `async def` steps, and the server's peer directory (the peers its steps
/// may fetch refs from), when it has one.
pub struct PyHost {
    pub inbox: Inbox,
    pub directory: Option<Py<PyAny>>,
}

struct PyStep {
    // Behind an Arc so a call can take its own handle without the GIL.
    func: Arc<Py<PyAny>>,
    is_async: bool,
}

impl StepHandler for PyStep {
    fn invoke(
        &self,
        ctx: RunContext,
        event: Event,
    ) -> BoxFuture<'static, Result<StepOutput, StepFailure>> {
        self.invoke_in_slot(ctx, event, None)
    }

    fn invoke_in_slot(
        &self,
        ctx: RunContext,
        event: Event,
        slot: Option<StepSlot>,
    ) -> BoxFuture<'static, Result<StepOutput, StepFailure>> {
        let func = self.func.clone();
        if self.is_async {
            // Dropping the future cancels the task: the slot may go with it.
            Box::pin(async move {
                let _slot = slot;
                invoke_async(func, ctx, event).await
            })
        } else {
            // A `def` step runs on after its future is dropped (a timeout): the
            // slot stays with its thread until the step returns.
            Box::pin(invoke_sync(func, ctx, event, slot))
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

async fn invoke_sync(
    func: Arc<Py<PyAny>>,
    ctx: RunContext,
    event: Event,
    slot: Option<StepSlot>,
) -> Result<StepOutput, StepFailure> {
    let remote = is_remote(&ctx);
    sync_steps::run(func, ctx, event, remote, slot).await
}

async fn invoke_async(
    func: Arc<Py<PyAny>>,
    ctx: RunContext,
    event: Event,
) -> Result<StepOutput, StepFailure> {
    let Some(inbox) = ctx.host::<PyHost>().map(|host| host.inbox.clone()) else {
        return Err(StepFailure::new(
            "RuntimeError",
            "this run has no event loop for async steps",
        ));
    };
    let (tx, rx) = oneshot::channel();
    let call = Arc::new(StepCall::new(tx));
    let remote = is_remote(&ctx);
    let launched = call.clone();
    // Dropped unrun (its loop closed) or failing to start, the call still settles.
    let mut unsettled = SettleOnDrop {
        call: Some(call.clone()),
        why: "the event loop that was to run this step closed before the step started",
    };
    // Everything Python happens on the loop thread, in one inbox job.
    inbox.post(Box::new(move |py| {
        if launched.lock().abandoned {
            unsettled.disarm();
            return;
        }
        let started = (|| -> PyResult<()> {
            let completion = Bound::new(
                py,
                Completion {
                    call: launched.clone(),
                    remote,
                },
            )?;
            let ctx_ref = Bound::new(py, RunContextRef { ctx })?;
            let event = events::to_py(py, &event)?;
            bridge::start_async_step(py)?.call1((func.bind(py), ctx_ref, event, completion))?;
            Ok(())
        })();
        if let Err(err) = started {
            launched.send(Err(bridge::describe_failure(py, err)));
        }
        unsettled.disarm();
    }));
    let guard = CancelOnDrop {
        call: Some(call),
        inbox,
    };
    let outcome = rx.await;
    guard.disarm();
    outcome.unwrap_or_else(|_| {
        Err(step_lost(
            "the event loop running this step closed before the step finished",
        ))
    })
}

fn step_lost(why: &str) -> StepFailure {
    StepFailure {
        cancelled: true,
        ..StepFailure::new("CancelledError", why)
    }
}

/// Settles a call with a cancellation unless disarmed (`call` taken) first.
struct SettleOnDrop {
    call: Option<Arc<StepCall>>,
    why: &'static str,
}

impl SettleOnDrop {
    fn disarm(&mut self) {
        self.call = None;
    }
}

impl Drop for SettleOnDrop {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            call.send(Err(step_lost(self.why)));
        }
    }
}

/// Cancels the asyncio task of a step whose run no longer waits for it.
struct CancelOnDrop {
    call: Option<Arc<StepCall>>,
    inbox: Inbox,
}

impl CancelOnDrop {
    fn disarm(mut self) {
        self.call = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(call) = self.call.take() else {
            return;
        };
        // Not started yet: `attach` will see the flag and cancel the task itself.
        if let Some(task) = call.abandon() {
            self.inbox.post(Box::new(move |py| {
                if let Some(task) = task.bind(py).upgrade() {
                    let _ = task.call_method0("cancel");
                }
            }));
        }
    }
}

/// One async step call, shared by the run (which may abandon it) and the
/// loop thread (which attaches its task and delivers its outcome).
struct StepCall {
    state: Mutex<CompletionState>,
}

struct CompletionState {
    sender: Option<oneshot::Sender<Result<StepOutput, StepFailure>>>,
    // Weak: the run holds this call, and a task it held strongly could never
    // be collected, even once nothing but the run waits for it (a loop
    // closed under it); then the run would wait for it forever.
    task: Option<Py<PyWeakrefReference>>,
    abandoned: bool,
}

impl StepCall {
    fn new(sender: oneshot::Sender<Result<StepOutput, StepFailure>>) -> Self {
        Self {
            state: Mutex::new(CompletionState {
                sender: Some(sender),
                task: None,
                abandoned: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CompletionState> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn abandon(&self) -> Option<Py<PyWeakrefReference>> {
        let mut state = self.lock();
        state.abandoned = true;
        state.task.take()
    }

    /// Delivers the outcome and lets go of the task.
    fn send(&self, outcome: Result<StepOutput, StepFailure>) {
        let (sender, task) = {
            let mut state = self.lock();
            (state.sender.take(), state.task.take())
        };
        drop(task);
        if let Some(sender) = sender {
            let _ = sender.send(outcome);
        }
    }
}

/// Receives the outcome of one async step call on the event loop thread.
#[pyclass(frozen, module = "blazen_peer._native")]
pub struct Completion {
    call: Arc<StepCall>,
    remote: bool,
}

impl Drop for Completion {
    fn drop(&mut self) {
        // Settled already: a no-op. Otherwise the task was destroyed pending
        // (its loop stopped without cancelling it), and its run must not hang.
        self.call.send(Err(step_lost(
            "the step's task was destroyed before it finished (its event loop stopped)",
        )));
    }
}

#[pymethods]
impl Completion {
    /// Records the step's task; False means the run gave up and the task must be cancelled.
    fn attach(&self, task: &Bound<'_, PyAny>) -> PyResult<bool> {
        let task = PyWeakrefReference::new(task)?.unbind();
        let mut state = self.call.lock();
        if state.abandoned {
            return Ok(false);
        }
        // Already settled (it failed while starting): nothing left to cancel.
        if state.sender.is_some() {
            state.task = Some(task);
        }
        Ok(true)
    }

    /// Delivers the events a step emitted, as `[(event, event_types), ...]`.
    fn succeed(&self, emitted: Bound<'_, PyAny>) {
        let outcome = collect_events(&emitted, self.remote)
            .map_err(|err| bridge::describe_failure(emitted.py(), err));
        self.call.send(outcome);
    }

    /// Delivers the exception a step raised.
    fn fail(&self, exc: Bound<'_, PyAny>) {
        let failure = bridge::describe_failure(exc.py(), PyErr::from_value(exc));
        self.call.send(Err(failure));
    }
}

/// A run whose StopEvent goes on the wire (a caller asked for it).
fn is_remote(ctx: &RunContext) -> bool {
    ctx.caller().is_some()
}

pub(crate) fn collect_events(
    emitted: &Bound<'_, PyAny>,
    encode_stop: bool,
) -> PyResult<StepOutput> {
    emitted
        .try_iter()?
        .map(|pair| {
            let (event, types): (Bound<'_, PyAny>, PyRef<'_, EventTypesRef>) = pair?.extract()?;
            Ok(events::from_py(event, &types, encode_stop))
        })
        .collect()
}

/// A step's retry policy as Python passes it (`steps.Retry`, read by attribute).
#[derive(FromPyObject)]
pub struct RetryArgs {
    attempts: u32,
    backoff_secs: f64,
    multiplier: f64,
    max_backoff_secs: f64,
    on: Py<PyTuple>,
}

/// Retries a failure whose exception is an instance of one of the policy's types.
struct ExceptionTypes(Py<PyTuple>);

impl RetryFilter for ExceptionTypes {
    fn should_retry(&self, failure: &StepFailure) -> bool {
        let Some(raised) = failure
            .source
            .as_ref()
            .and_then(|source| source.downcast_ref::<Py<PyBaseException>>())
        else {
            // Not a Python exception (the step could not even start): not
            // one of the types the policy names.
            return false;
        };
        gil::with_python(|py| {
            raised
                .bind(py)
                .is_instance(self.0.bind(py).as_any())
                .unwrap_or(false)
        })
        .unwrap_or(false)
    }
}

fn seconds(name: &str, secs: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(secs)
        .map_err(|_| {
            PeerError::Validation(format!(
                "{name} must be a non-negative number of seconds, got {secs}"
            ))
        })
        .py_err()
}

/// Converts the Python settings; the core checks them (`StepPolicy::checked`).
fn policy(
    step_id: &str,
    max_concurrency: Option<usize>,
    timeout_secs: Option<f64>,
    retry: Option<RetryArgs>,
) -> PyResult<StepPolicy> {
    let timeout = timeout_secs
        .map(|secs| seconds("timeout_secs", secs))
        .transpose()?;
    let retry = retry
        .map(|retry| -> PyResult<RetryPolicy> {
            Ok(RetryPolicy {
                attempts: retry.attempts,
                backoff: seconds("Retry.backoff_secs", retry.backoff_secs)?,
                multiplier: retry.multiplier,
                max_backoff: seconds("Retry.max_backoff_secs", retry.max_backoff_secs)?,
                retry_if: Some(Arc::new(ExceptionTypes(retry.on))),
            })
        })
        .transpose()?;
    StepPolicy::checked(step_id, max_concurrency, timeout, retry).py_err()
}

/// Registers `func` as step `step_id` in the process-wide registry.
#[pyfunction]
#[pyo3(signature = (
    step_id, accepts, func, is_async, replace=false, *, max_concurrency=None, timeout_secs=None,
    retry=None
))]
#[allow(clippy::too_many_arguments)]
pub fn register_step(
    py: Python<'_>,
    step_id: String,
    accepts: Vec<String>,
    func: Py<PyAny>,
    is_async: bool,
    replace: bool,
    max_concurrency: Option<usize>,
    timeout_secs: Option<f64>,
    retry: Option<RetryArgs>,
) -> PyResult<()> {
    if step_id.is_empty() {
        return Err(blazen_peer_core::PeerError::Validation(
            "a step id cannot be empty".into(),
        ))
        .py_err();
    }
    if accepts.is_empty() {
        return Err(blazen_peer_core::PeerError::Validation(format!(
            "step `{step_id}` accepts no event types; annotate its event parameter or pass accepts=[...]"
        )))
        .py_err();
    }
    let policy = policy(&step_id, max_concurrency, timeout_secs, retry)?;
    let same_func = func.clone_ref(py);
    let step = Step {
        policy: Arc::new(policy),
        ..Step::new(
            &step_id,
            accepts,
            Arc::new(PyStep {
                func: Arc::new(func),
                is_async,
            }),
        )
    };
    StepRegistry::global()
        .register(step, replace, |existing| {
            existing
                .as_any()
                .downcast_ref::<PyStep>()
                .is_some_and(|existing| existing.func.is(&same_func))
        })
        .py_err()
}

/// Removes a step; True when it was registered.
#[pyfunction]
pub fn unregister_step(step_id: &str) -> bool {
    StepRegistry::global().unregister(step_id)
}

/// Registered step ids, sorted.
#[pyfunction]
pub fn registered_step_ids() -> Vec<String> {
    StepRegistry::global().step_ids()
}

/// Declares a named workflow, run when a request names no steps.
#[pyfunction]
pub fn register_workflow(name: String, step_ids: Vec<String>) -> PyResult<()> {
    StepRegistry::global()
        .register_workflow(name, step_ids)
        .py_err()
}

/// Declared workflow names, sorted.
#[pyfunction]
pub fn registered_workflows() -> Vec<String> {
    StepRegistry::global().workflow_names()
}
