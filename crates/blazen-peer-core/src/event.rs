//! Events as the runner sees them: a chain of type names for routing and an
//! opaque payload that only the step host (Python, or Rust tests) looks inside.

use std::any::Any;
use std::sync::Arc;

/// Wire name of the event every run starts with.
pub const START_EVENT: &str = "blazen::StartEvent";
/// Wire name of the event that ends a run.
pub const STOP_EVENT: &str = "blazen::StopEvent";
/// Wire name of the base every event type derives from.
pub const BASE_EVENT: &str = "blazen::Event";

/// An event type and its ancestors, most derived first. A step that accepts any
/// name in the chain accepts the event, which is how a subclass matches its base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTypes(Arc<[String]>);

impl EventTypes {
    /// Builds a chain; the first name is the event's own type.
    pub fn new(chain: Vec<String>) -> Self {
        Self(chain.into())
    }

    /// The event's own type name.
    pub fn name(&self) -> &str {
        self.0.first().map(String::as_str).unwrap_or(BASE_EVENT)
    }

    /// The whole chain.
    pub fn chain(&self) -> &[String] {
        &self.0
    }

    /// True for StopEvent and its subclasses.
    pub fn is_stop(&self) -> bool {
        self.0.iter().any(|name| name == STOP_EVENT)
    }

    /// True when the chain contains any of `accepted`.
    pub fn matches(&self, accepted: &[String]) -> bool {
        self.0.iter().any(|name| accepted.contains(name))
    }

    fn start() -> Self {
        Self::new(vec![START_EVENT.into(), BASE_EVENT.into()])
    }
}

/// What the runner needs from an event's payload.
pub trait EventData: Any + Send + Sync {
    /// UTF-8 JSON of a StopEvent's `result`, for the wire.
    fn result_json(&self) -> Result<Vec<u8>, String>;
    /// Lets the step host recover its own payload type.
    fn as_any(&self) -> &dyn Any;
}

/// A routed event.
#[derive(Clone)]
pub struct Event {
    /// Type chain used for routing.
    pub types: EventTypes,
    /// Host-specific payload.
    pub data: Arc<dyn EventData>,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("type", &self.types.name())
            .finish()
    }
}

impl Event {
    /// The StartEvent of a run whose input arrived as JSON text.
    pub fn start_from_json(input_json: Vec<u8>) -> Self {
        Self {
            types: EventTypes::start(),
            data: Arc::new(JsonEvent(input_json)),
        }
    }

    /// A StartEvent whose payload the host already built.
    pub fn start_with(data: Arc<dyn EventData>) -> Self {
        Self {
            types: EventTypes::start(),
            data,
        }
    }

    /// The JSON payload, when the event still is JSON text.
    pub fn as_json(&self) -> Option<&JsonEvent> {
        self.data.as_any().downcast_ref::<JsonEvent>()
    }
}

/// A payload that is still UTF-8 JSON text: a StartEvent's input from the
/// wire, or, for a StopEvent, an object whose `result` key is the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonEvent(pub Vec<u8>);

impl EventData for JsonEvent {
    fn result_json(&self) -> Result<Vec<u8>, String> {
        let value: serde_json::Value =
            serde_json::from_slice(&self.0).map_err(|err| err.to_string())?;
        let result = value
            .get("result")
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        serde_json::to_vec(&result).map_err(|err| err.to_string())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
