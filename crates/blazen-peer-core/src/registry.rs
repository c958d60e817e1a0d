//! Which steps and named workflows this process can run. The server resolves a
//! request against it before any step host (Python) is entered.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use futures::future::BoxFuture;

use crate::context::RunContext;
use crate::envelope::{StepInfo, StepPolicies, StepPolicyInfo, WorkflowInfo};
use crate::error::PeerError;
use crate::event::{Event, EventTypes};
use crate::step_policy::{StepPolicy, StepSlot};

/// Why a step call failed.
#[derive(Debug, Clone)]
pub struct StepFailure {
    /// Exception class (or Rust error type) name.
    pub error_type: String,
    /// The error's message.
    pub message: String,
    /// Formatted traceback, when the host has one.
    pub traceback: Option<String>,
    /// True when the step ended because its run was cancelled.
    pub cancelled: bool,
    /// The original error object, for in-process callers that want to chain it.
    pub source: Option<Arc<dyn Any + Send + Sync>>,
}

impl StepFailure {
    /// A failure with a type name and message only.
    pub fn new(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error_type: error_type.into(),
            message: message.into(),
            traceback: None,
            cancelled: false,
            source: None,
        }
    }
}

/// Events a step emitted: none, one, or several to fan out.
pub type StepOutput = Vec<Event>;

/// Something that can run one step call.
pub trait StepHandler: Send + Sync + 'static {
    /// Runs the step on `event`. Dropping the future cancels the call.
    fn invoke(
        &self,
        ctx: RunContext,
        event: Event,
    ) -> BoxFuture<'static, Result<StepOutput, StepFailure>>;
    /// Runs the step holding `slot`, one of its concurrency slots, until the
    /// call is over. By default the slot goes with the future; a host whose
    /// calls outlive their future (a thread that cannot be interrupted) keeps
    /// it until the call really returns, so the limit counts that call too.
    fn invoke_in_slot(
        &self,
        ctx: RunContext,
        event: Event,
        slot: Option<StepSlot>,
    ) -> BoxFuture<'static, Result<StepOutput, StepFailure>> {
        let call = self.invoke(ctx, event);
        Box::pin(async move {
            let _slot = slot;
            call.await
        })
    }
    /// Lets a host compare handlers it registered.
    fn as_any(&self) -> &dyn Any;
}

/// A registered step: its id, the event types it accepts, and its handler.
#[derive(Clone)]
pub struct Step {
    /// Registry id, e.g. `my_app::analyze`.
    pub id: Arc<str>,
    /// Event type names that route to this step.
    pub accepts: Arc<[String]>,
    /// Runs the step.
    pub handler: Arc<dyn StepHandler>,
    /// Its concurrency limit, timeout and retries, shared by every run.
    pub policy: Arc<StepPolicy>,
}

impl Step {
    /// A step without limits (see [`StepPolicy`] for ones with).
    pub fn new(id: &str, accepts: Vec<String>, handler: Arc<dyn StepHandler>) -> Self {
        Self {
            id: id.into(),
            accepts: accepts.into(),
            handler,
            policy: Arc::default(),
        }
    }

    /// True when this step should receive an event of these types.
    pub fn accepts_event(&self, types: &EventTypes) -> bool {
        types.matches(&self.accepts)
    }
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Step")
            .field("id", &self.id)
            .field("accepts", &self.accepts)
            .finish()
    }
}

/// Steps by id and workflows by name.
#[derive(Default)]
pub struct StepRegistry {
    steps: RwLock<HashMap<String, Step>>,
    workflows: RwLock<HashMap<String, Vec<String>>>,
}

impl StepRegistry {
    /// The process-wide registry that `@step` and servers use by default.
    pub fn global() -> &'static Arc<StepRegistry> {
        static GLOBAL: OnceLock<Arc<StepRegistry>> = OnceLock::new();
        GLOBAL.get_or_init(|| Arc::new(StepRegistry::default()))
    }

    /// Adds `step`. An id already taken is an error unless `replace`, or unless
    /// `same_handler` says the existing handler is the one being registered.
    pub fn register(
        &self,
        step: Step,
        replace: bool,
        same_handler: impl FnOnce(&dyn StepHandler) -> bool,
    ) -> Result<(), PeerError> {
        let mut steps = write(&self.steps);
        if let Some(existing) = steps.get(&*step.id) {
            if !replace && !same_handler(existing.handler.as_ref()) {
                return Err(PeerError::Validation(format!(
                    "step id `{}` is already registered to a different function; \
                     pick another id or pass replace=True",
                    step.id
                )));
            }
        }
        steps.insert(step.id.to_string(), step);
        Ok(())
    }

    /// Removes a step; true when it was registered.
    pub fn unregister(&self, step_id: &str) -> bool {
        write(&self.steps).remove(step_id).is_some()
    }

    /// The step registered under `step_id`.
    pub fn get(&self, step_id: &str) -> Option<Step> {
        read(&self.steps).get(step_id).cloned()
    }

    /// Registered ids, sorted.
    pub fn step_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = read(&self.steps).keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Declares `name` as the given steps, used when a request names no steps.
    pub fn register_workflow(
        &self,
        name: impl Into<String>,
        step_ids: Vec<String>,
    ) -> Result<(), PeerError> {
        let name = name.into();
        if step_ids.is_empty() {
            return Err(PeerError::Validation(format!(
                "workflow `{name}` must list at least one step id"
            )));
        }
        write(&self.workflows).insert(name, step_ids);
        Ok(())
    }

    /// Declared workflow names, sorted.
    pub fn workflow_names(&self) -> Vec<String> {
        let mut names: Vec<String> = read(&self.workflows).keys().cloned().collect();
        names.sort();
        names
    }

    /// Every step with the event types it accepts, and every workflow with its
    /// steps, both sorted.
    pub fn describe(&self) -> (Vec<StepInfo>, Vec<WorkflowInfo>) {
        let mut steps: Vec<StepInfo> = read(&self.steps)
            .values()
            .map(|step| StepInfo {
                id: step.id.to_string(),
                accepts: step.accepts.to_vec(),
            })
            .collect();
        steps.sort_by(|a, b| a.id.cmp(&b.id));
        let mut workflows: Vec<WorkflowInfo> = read(&self.workflows)
            .iter()
            .map(|(name, step_ids)| WorkflowInfo {
                name: name.clone(),
                step_ids: step_ids.clone(),
            })
            .collect();
        workflows.sort_by(|a, b| a.name.cmp(&b.name));
        (steps, workflows)
    }

    /// The limits of every step that has one, sorted by id, with their use now.
    pub fn policies(&self) -> StepPolicies {
        let mut steps: Vec<StepPolicyInfo> = read(&self.steps)
            .values()
            .filter(|step| {
                let policy = &step.policy;
                policy.max_concurrency().is_some()
                    || policy.timeout().is_some()
                    || policy.retry().is_some()
            })
            .map(|step| StepPolicyInfo {
                id: step.id.to_string(),
                max_concurrency: step.policy.max_concurrency().unwrap_or(0) as u64,
                in_use: step.policy.in_use() as u64,
                timeout_ms: step
                    .policy
                    .timeout()
                    .map(|limit| u64::try_from(limit.as_millis()).unwrap_or(u64::MAX)),
                attempts: step.policy.attempts(),
            })
            .collect();
        steps.sort_by(|a, b| a.id.cmp(&b.id));
        StepPolicies { steps }
    }

    /// The steps to run for a request: `step_ids`, or the workflow's declared
    /// steps when empty. `node` names this registry's owner in error messages.
    pub fn resolve(
        &self,
        workflow_name: &str,
        step_ids: &[String],
        node: &str,
    ) -> Result<Vec<Step>, PeerError> {
        let declared;
        let ids = if step_ids.is_empty() {
            declared = read(&self.workflows)
                .get(workflow_name)
                .cloned()
                .ok_or_else(|| PeerError::UnknownWorkflow {
                    workflow_name: workflow_name.to_owned(),
                    registered: self.workflow_names(),
                    node: node.to_owned(),
                })?;
            &declared[..]
        } else {
            step_ids
        };
        let steps = read(&self.steps);
        ids.iter()
            .map(|id| {
                steps.get(id).cloned().ok_or_else(|| {
                    let mut registered: Vec<String> = steps.keys().cloned().collect();
                    registered.sort();
                    PeerError::UnknownStep {
                        step_id: id.clone(),
                        registered,
                        node: node.to_owned(),
                    }
                })
            })
            .collect()
    }
}

// Registry maps are only ever inserted into or read whole; a panic elsewhere
// cannot leave them inconsistent, so a poisoned lock is still usable.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poison| poison.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|poison| poison.into_inner())
}
