//! The Rust steps the crate's server runs for our client. Registered in the
//! crate's global step registry, the only way its server finds steps.

use std::sync::Arc;
use std::time::Duration;

use blazen_core::session_ref::{SessionRefError, SessionRefSerializable};
use blazen_core::step::{StepFn, StepOutput, StepRegistration};
use blazen_core::step_registry::register_step_builder;
use blazen_core::WorkflowError;
use blazen_events::{AnyEvent, Event, StartEvent, StopEvent};
use serde_json::{json, Value};

pub const ECHO: &str = "interop::echo";
pub const STATE: &str = "interop::state";
pub const FAILING: &str = "interop::failing";
pub const SLOW: &str = "interop::slow";
pub const MAKE_REF: &str = "interop::make_ref";

/// Type tag of the refs `interop::make_ref` inserts: raw UTF-8 bytes.
pub const BYTES_TAG: &str = "interop.bytes";

/// Registers every step above.
pub fn register_all() {
    register_step_builder(ECHO, || {
        start_step("echo", |data, _| async move { Ok(data) })
    });
    register_step_builder(STATE, || {
        start_step("state", |data, ctx| async move {
            // The crate's server never exports state: the caller sees none of this.
            ctx.set("count", 3).await;
            ctx.set("input", data).await;
            Ok(json!({"stored": true}))
        })
    });
    register_step_builder(FAILING, || {
        start_step("failing", |_, _| async move {
            Err(WorkflowError::Other(anyhow::anyhow!(
                "interop step failed on purpose"
            )))
        })
    });
    register_step_builder(SLOW, || {
        start_step("slow", |data, _| async move {
            let secs = data.get("secs").and_then(Value::as_u64).unwrap_or(30);
            tokio::time::sleep(Duration::from_secs(secs)).await;
            Ok(data)
        })
    });
    register_step_builder(MAKE_REF, || {
        start_step("make_ref", |data, ctx| async move {
            let text = data
                .get("text")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let key = ctx
                .session_refs_arc()
                .await
                .insert_serializable(Arc::new(Bytes(text.into_bytes())))
                .await
                .map_err(|err| WorkflowError::Other(err.into()))?;
            Ok(json!({"ref": key.0.to_string()}))
        })
    });
}

/// A step taking the StartEvent's data and returning a StopEvent's result.
fn start_step<F, Fut>(name: &str, body: F) -> StepRegistration
where
    F: Fn(Value, blazen_core::Context) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Value, WorkflowError>> + Send + 'static,
{
    let body = Arc::new(body);
    let handler: StepFn = Arc::new(move |event: Box<dyn AnyEvent>, ctx| {
        let body = Arc::clone(&body);
        Box::pin(async move {
            let data = event
                .as_any()
                .downcast_ref::<StartEvent>()
                .map(|start| start.data.clone())
                .unwrap_or(Value::Null);
            let result = body(data, ctx).await?;
            Ok(StepOutput::Single(Box::new(StopEvent { result })))
        })
    });
    StepRegistration {
        name: name.into(),
        accepts: vec![StartEvent::event_type()],
        emits: vec![StopEvent::event_type()],
        handler,
        max_concurrency: 0,
        semaphore: None,
        timeout: None,
        retry_config: None,
    }
}

/// A session ref value the crate's server can serialize for DerefSessionRef.
struct Bytes(Vec<u8>);

impl SessionRefSerializable for Bytes {
    fn blazen_serialize(&self) -> Result<Vec<u8>, SessionRefError> {
        Ok(self.0.clone())
    }

    fn blazen_type_tag(&self) -> &'static str {
        BYTES_TAG
    }
}
