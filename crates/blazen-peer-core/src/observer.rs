//! A hook around every run a server executes, for hosts that trace runs
//! (the Python binding opens an OpenTelemetry span per run with it).

use crate::context::RunContext;
use crate::envelope::WorkflowFailure;

/// Told when each run starts.
pub trait RunObserver: Send + Sync + 'static {
    /// A run is about to start; the observation returned hears how it ended.
    fn run_started(&self, ctx: &RunContext) -> Option<Box<dyn RunObservation>>;
}

/// One observed run. Dropped without [`RunObservation::ended`], the run was
/// cancelled: its caller went away and the run with it.
pub trait RunObservation: Send {
    /// The run ended: `None` with a StopEvent, else how it failed.
    fn ended(self: Box<Self>, failure: Option<&WorkflowFailure>);
}
