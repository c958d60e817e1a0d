//! Python functions as core steps. `async def` steps run as tasks on the event
//! loop of the server (or local run) that owns the run; plain `def` steps run
//! on tokio's blocking pool, holding the GIL only while Python code runs.

use std::any::Any;
use std::sync::{Arc, Mutex};

use blazen_peer_core::registry::StepOutput;
use blazen_peer_core::{Event, RunContext, Step, StepFailure, StepHandler, StepRegistry};
use futures::future::BoxFuture;
use pyo3::prelude::*;
use tokio::sync::oneshot;

use crate::context::RunContextRef;
use crate::errors::IntoPyResult;
use crate::events::{self, EventTypesRef};
use crate::{bridge, gil};

fn interpreter_exiting() -> StepFailure {
    StepFailure {
        cancelled: true,
        ..StepFailure::new("CancelledError", "the Python interpreter is shutting down")
    }
}

/// What a run carries for Python steps: the loop that runs `async def` steps.
pub struct PyHost {
    pub event_loop: Py<PyAny>,
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
        let func = self.func.clone();
        if self.is_async {
            Box::pin(invoke_async(func, ctx, event))
        } else {
            Box::pin(invoke_sync(func, ctx, event))
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
) -> Result<StepOutput, StepFailure> {
    let call = tokio::task::spawn_blocking(move || {
        gil::with_python(|py| {
            let outcome = (|| {
                let remote = is_remote(&ctx);
                let ctx = Bound::new(py, RunContextRef { ctx })?.into_any();
                let event = events::to_py(py, &event)?;
                let emitted = bridge::run_sync_step(py, func.bind(py), ctx, event)?;
                collect_events(&emitted, remote)
            })();
            outcome.map_err(|err| bridge::describe_failure(py, err))
        })
        .unwrap_or_else(|| Err(interpreter_exiting()))
    });
    call.await
        .unwrap_or_else(|join| Err(StepFailure::new("WorkerThreadError", join.to_string())))
}

async fn invoke_async(
    func: Arc<Py<PyAny>>,
    ctx: RunContext,
    event: Event,
) -> Result<StepOutput, StepFailure> {
    let (tx, rx) = oneshot::channel();
    let scheduled = gil::with_python(|py| -> PyResult<(Py<Completion>, Py<PyAny>)> {
        let event_loop = ctx
            .host::<PyHost>()
            .map(|host| host.event_loop.clone_ref(py))
            .ok_or_else(|| {
                pyo3::exceptions::PyRuntimeError::new_err(
                    "this run has no event loop for async steps",
                )
            })?;
        let completion = Py::new(py, Completion::new(tx, is_remote(&ctx)))?;
        let ctx_ref = Bound::new(py, RunContextRef { ctx })?;
        let event = events::to_py(py, &event)?;
        event_loop.bind(py).call_method1(
            "call_soon_threadsafe",
            (
                bridge::start_async_step(py)?,
                func.bind(py),
                ctx_ref,
                event,
                completion.clone_ref(py),
            ),
        )?;
        Ok((completion, event_loop))
    });
    let (completion, event_loop) = match scheduled {
        Some(Ok(handles)) => handles,
        Some(Err(err)) => {
            return Err(gil::with_python(|py| bridge::describe_failure(py, err))
                .unwrap_or_else(interpreter_exiting))
        }
        None => return Err(interpreter_exiting()),
    };
    let mut guard = CancelOnDrop {
        completion: Some(completion),
        event_loop,
    };
    let outcome = rx.await;
    guard.completion = None;
    outcome.unwrap_or_else(|_| {
        Err(StepFailure {
            cancelled: true,
            ..StepFailure::new(
                "CancelledError",
                "the event loop running this step closed before the step finished",
            )
        })
    })
}

/// Cancels the asyncio task of a step whose run no longer waits for it.
struct CancelOnDrop {
    completion: Option<Py<Completion>>,
    event_loop: Py<PyAny>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(completion) = self.completion.take() else {
            return;
        };
        // During interpreter shutdown there is nothing left to cancel.
        gil::with_python(|py| {
            let task = completion.get().abandon();
            if let Some(task) = task {
                if let Ok(cancel) = task.bind(py).getattr("cancel") {
                    let _ = self
                        .event_loop
                        .bind(py)
                        .call_method1("call_soon_threadsafe", (cancel,));
                }
            }
        });
    }
}

/// Receives the outcome of one async step call from the event loop thread.
#[pyclass(frozen, module = "blazen_peer._native")]
pub struct Completion {
    state: Mutex<CompletionState>,
    remote: bool,
}

struct CompletionState {
    sender: Option<oneshot::Sender<Result<StepOutput, StepFailure>>>,
    task: Option<Py<PyAny>>,
    abandoned: bool,
}

impl Completion {
    fn new(sender: oneshot::Sender<Result<StepOutput, StepFailure>>, remote: bool) -> Self {
        Self {
            remote,
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

    fn abandon(&self) -> Option<Py<PyAny>> {
        let mut state = self.lock();
        state.abandoned = true;
        state.task.take()
    }

    fn send(&self, outcome: Result<StepOutput, StepFailure>) {
        if let Some(sender) = self.lock().sender.take() {
            let _ = sender.send(outcome);
        }
    }
}

#[pymethods]
impl Completion {
    /// Records the step's task; False means the run gave up and the task must be cancelled.
    fn attach(&self, task: Py<PyAny>) -> bool {
        let mut state = self.lock();
        if state.abandoned {
            return false;
        }
        state.task = Some(task);
        true
    }

    /// Delivers the events a step emitted, as `[(event, event_types), ...]`.
    fn succeed(&self, emitted: Bound<'_, PyAny>) {
        let outcome = collect_events(&emitted, self.remote)
            .map_err(|err| bridge::describe_failure(emitted.py(), err));
        self.send(outcome);
    }

    /// Delivers the exception a step raised.
    fn fail(&self, exc: Bound<'_, PyAny>) {
        let failure = bridge::describe_failure(exc.py(), PyErr::from_value(exc));
        self.send(Err(failure));
    }
}

/// A run whose StopEvent goes on the wire (a caller asked for it).
fn is_remote(ctx: &RunContext) -> bool {
    ctx.caller().is_some()
}

fn collect_events(emitted: &Bound<'_, PyAny>, encode_stop: bool) -> PyResult<StepOutput> {
    emitted
        .try_iter()?
        .map(|pair| {
            let (event, types): (Bound<'_, PyAny>, PyRef<'_, EventTypesRef>) = pair?.extract()?;
            Ok(events::from_py(event, &types, encode_stop))
        })
        .collect()
}

/// Registers `func` as step `step_id` in the process-wide registry.
#[pyfunction]
#[pyo3(signature = (step_id, accepts, func, is_async, replace=false))]
pub fn register_step(
    py: Python<'_>,
    step_id: String,
    accepts: Vec<String>,
    func: Py<PyAny>,
    is_async: bool,
    replace: bool,
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
    let same_func = func.clone_ref(py);
    let step = Step {
        id: step_id.into(),
        accepts: accepts.into(),
        handler: Arc::new(PyStep {
            func: Arc::new(func),
            is_async,
        }),
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
