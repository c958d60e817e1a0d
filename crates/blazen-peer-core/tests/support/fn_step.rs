//! `FnStep`: a step handler backed by a closure returning a boxed future, one copy
//! for the runner unit tests (`src/runner/tests.rs`) and the loopback tests
//! (`server_client.rs`). Included with `#[path]` by both: an integration test
//! cannot see `#[cfg(test)]` items of the crate. The including module brings
//! `Event`, `RunContext`, `StepHandler` and its `StepResult` alias into scope.

use std::any::Any;

use futures::future::BoxFuture;

use super::*;

/// A step handler that calls its closure with the run context and the event.
pub struct FnStep<F>(pub F);

impl<F> StepHandler for FnStep<F>
where
    F: Fn(RunContext, Event) -> BoxFuture<'static, StepResult> + Send + Sync + 'static,
{
    fn invoke(&self, ctx: RunContext, event: Event) -> BoxFuture<'static, StepResult> {
        (self.0)(ctx, event)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
