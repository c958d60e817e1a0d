//! The request pipeline of a run: check a request and claim a run slot
//! ([`PeerService::prepare`]), run it under the shutdown's cancellation
//! ([`PeerService::execute`]), and turn its outcome into the response,
//! settling the refs a failed run leaves behind.
//!
//! Both run methods, unary and streaming, and the HTTP/JSON routes go through
//! here, so a request is checked and answered the same way whichever way it came.

use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tonic::{Request, Status};

use super::metrics::Refusal;
use super::PeerService;
use crate::context::{Caller, RunContext};
use crate::envelope::{
    Envelope, FailureKind, ParentRun, SubWorkflowRequest, SubWorkflowResponse, WorkflowFailure,
    ENVELOPE_VERSION,
};
use crate::error::PeerError;
use crate::event::Event;
use crate::event_stream::EventStream;
use crate::limits::check_json_depth;
use crate::log_target::TARGET;
use crate::registry::Step;
use crate::runner::run_workflow;
use crate::trace::TraceContext;
use crate::transport::NODE_ID_HEADER;

/// A request that passed every check, ready to run.
pub(super) struct PreparedRun {
    _slot: OwnedSemaphorePermit,
    steps: Vec<Step>,
    ctx: RunContext,
    start: Event,
    deadline: Duration,
}

impl PeerService {
    /// Runs one request to completion; `Err` only for protocol-level refusals.
    pub async fn invoke(
        &self,
        payload: &[u8],
        caller: Caller,
    ) -> Result<Envelope<SubWorkflowResponse>, PeerError> {
        let run = self.prepare(payload, caller, None)?;
        Ok(self.execute(run).await)
    }

    /// Checks a request and resolves its steps; nothing runs yet.
    pub(super) fn prepare(
        &self,
        payload: &[u8],
        caller: Caller,
        events: Option<EventStream>,
    ) -> Result<PreparedRun, PeerError> {
        if self.lifecycle.is_draining() {
            return Err(PeerError::Unavailable(format!(
                "peer `{}` is shutting down and starts no new runs; call another peer or retry \
                 once it is back",
                self.node_id
            )));
        }
        let slot = self.run_slots.clone().try_acquire_owned().map_err(|_| {
            PeerError::Busy(format!(
                "peer `{}` is already running its maximum of {} concurrent runs; retry \
                 later, spread calls over more peers, or raise max_concurrent_runs",
                self.node_id, self.config.max_concurrent_runs
            ))
        })?;
        let request = Envelope::<SubWorkflowRequest>::decode(payload)?;
        let parent_run = request
            .extensions
            .get::<ParentRun>()
            .map(|parent| parent.parent_run_id);
        let request = request.body;
        check_json_depth(&request.input_json, self.config.max_json_depth)?;
        // serde_json does not check UTF-8 inside strings it skips, so check it first.
        let input = std::str::from_utf8(&request.input_json)
            .map_err(|err| PeerError::Encode(format!("input_json is not valid UTF-8: {err}")))?;
        serde_json::from_str::<serde::de::IgnoredAny>(input).map_err(|err| {
            PeerError::Encode(format!("input_json is not valid UTF-8 JSON: {err}"))
        })?;
        let node = format!("`{}`", self.node_id);
        let steps =
            self.config
                .registry
                .resolve(&request.workflow_name, &request.step_ids, &node)?;
        let ctx = RunContext::with_session_refs(
            self.node_id.clone(),
            request.workflow_name,
            self.config.host.clone(),
            self.config.session_refs.clone(),
            parent_run,
        );
        ctx.set_caller(caller);
        if let Some(events) = events {
            ctx.attach_event_stream(events);
        }
        let deadline = request
            .timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(self.config.default_timeout);
        Ok(PreparedRun {
            _slot: slot,
            steps,
            ctx,
            start: Event::start_from_json(request.input_json),
            deadline,
        })
    }

    /// Runs a prepared request. Dropping the future (the caller went away)
    /// cancels the run: steps are cancelled and its refs dropped.
    pub(super) async fn execute(&self, run: PreparedRun) -> Envelope<SubWorkflowResponse> {
        let record = self.lifecycle.begin(&run.ctx, run.steps.len());
        let observation = self
            .config
            .observer
            .as_ref()
            .and_then(|observer| observer.run_started(&run.ctx));
        let shutdown = self.lifecycle.runs_cancelled();
        let shut_down = |step_id: Option<String>| {
            Box::new(WorkflowFailure {
                kind: FailureKind::Cancelled,
                message: format!(
                    "peer `{}` shut down before workflow `{}` finished: the run outlived the \
                     shutdown's grace period and was cancelled",
                    self.node_id,
                    run.ctx.workflow_name()
                ),
                remote_type: None,
                remote_traceback: None,
                step_id,
                node_id: self.node_id.to_string(),
            })
        };
        let outcome = tokio::select! {
            outcome = run_workflow(&run.steps, run.ctx.clone(), run.start, Some(run.deadline)) => outcome,
            () = shutdown => Err(shut_down(None)),
        };
        // A step cancelled while the peer stops (its host's loop cancelling
        // tasks on the way out) was cancelled by the shutdown: say so.
        let outcome = outcome.map_err(|failure| {
            if failure.kind == FailureKind::Cancelled && self.lifecycle.is_draining() {
                shut_down(failure.step_id)
            } else {
                failure
            }
        });
        // Encoded before the record ends: a result that is not JSON is a failed run.
        let result = outcome.and_then(|stop| {
            stop.data.result_json().map_err(|err| {
                Box::new(WorkflowFailure {
                    kind: FailureKind::ResultNotJson,
                    message: format!("the StopEvent's result could not be encoded as JSON: {err}"),
                    remote_type: None,
                    remote_traceback: None,
                    step_id: None,
                    node_id: self.node_id.to_string(),
                })
            })
        });
        record.end(&result);
        if let Some(observation) = observation {
            observation.ended(result.as_ref().err().map(|failure| failure.as_ref()));
        }
        self.respond(&run.ctx, result)
    }

    fn respond(
        &self,
        ctx: &RunContext,
        result: Result<Vec<u8>, Box<WorkflowFailure>>,
    ) -> Envelope<SubWorkflowResponse> {
        let mut response = Envelope::new(SubWorkflowResponse {
            envelope_version: ENVELOPE_VERSION,
            ..Default::default()
        });
        let outliving = ctx.outliving_refs();
        match result {
            Ok(result_json) => {
                response.body.result_json = Some(result_json.into());
                response.body.state_json = ctx
                    .exported_state()
                    .into_iter()
                    .map(|(key, value)| (key, value.into()))
                    .collect();
                response.body.remote_refs = outliving;
            }
            Err(failure) => {
                self.config.session_refs.drop_unlearned(outliving.keys());
                response.body.error = Some(failure.message.clone());
                // Encoding a struct of strings into a Vec cannot fail.
                let _ = response.extensions.insert(failure.as_ref());
            }
        }
        // A failed run's usage was spent all the same, so both outcomes carry it.
        let usage = ctx.usage();
        if !usage.is_empty() {
            // Encoding maps of strings and numbers into a Vec cannot fail.
            let _ = response.extensions.insert(&usage);
        }
        response
    }

    /// Logs why a run request was turned away and gives the status to answer.
    pub(super) fn refusal(&self, err: &PeerError, caller: &Caller) -> Status {
        self.counters.refused(match err {
            PeerError::Busy(_) => Refusal::Busy,
            PeerError::Unavailable(_) => Refusal::Draining,
            _ => Refusal::InvalidRequest,
        });
        let level = match err {
            // Expected while draining; the caller retries elsewhere.
            PeerError::Unavailable(_) => log::Level::Debug,
            _ => log::Level::Warn,
        };
        let caller_node = caller.node_id.as_deref().unwrap_or("");
        log::log!(
            target: TARGET, level,
            node_id = &*self.node_id, caller = caller_node, error_kind = err.kind();
            "refused a run request from `{caller_node}`: {err}"
        );
        err.to_status()
    }
}

/// The announced node id and, under mutual TLS, the verified certificate of a call.
pub(super) fn caller_of<T>(request: &Request<T>) -> Caller {
    let mut caller = Caller::new(
        request
            .metadata()
            .get(NODE_ID_HEADER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned),
        request.peer_certs(),
    );
    caller.trace = TraceContext::from_metadata(request.metadata());
    caller
}
