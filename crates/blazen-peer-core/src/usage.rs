//! LLM usage and cost: the engine's `UsageEvent` (`blazen::UsageEvent`, same
//! fields, same JSON) that steps emit, and the totals a run keeps of them.
//!
//! Totals travel in a response's extension block ([`RunUsage`], tag 2), so
//! peers that do not know it skip it and a v1 peer's response reads as zero
//! usage. A run adds the totals of the sub-runs it delegated to, so a chain of
//! peers reports its whole cost at the top.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::envelope::Extension;
use crate::error::PeerError;

/// The engine's event type name of a usage record.
pub const USAGE_EVENT_TYPE: &str = "blazen::UsageEvent";

/// One provider call's usage, as the engine's `blazen_events::UsageEvent`
/// serializes it (JSON); only the fields totals need are read, the rest are
/// kept for the stream as the step wrote them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UsageEvent {
    /// The provider that served the call.
    pub provider: String,
    /// The model identifier.
    pub model: String,
    /// Prompt / input tokens billed.
    #[serde(default)]
    pub prompt_tokens: u32,
    /// Completion / output tokens billed.
    #[serde(default)]
    pub completion_tokens: u32,
    /// Total tokens billed.
    #[serde(default)]
    pub total_tokens: u32,
    /// Cost in USD, when known.
    #[serde(default)]
    pub cost_usd: Option<f64>,
}

impl UsageEvent {
    /// Reads the JSON of a `blazen::UsageEvent`.
    pub fn from_json(json: &[u8]) -> Result<Self, PeerError> {
        serde_json::from_slice(json)
            .map_err(|err| PeerError::Encode(format!("not a {USAGE_EVENT_TYPE}: {err}")))
    }
}

/// Usage of one provider and model within a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelUsage {
    /// Prompt / input tokens.
    pub input_tokens: u64,
    /// Completion / output tokens.
    pub output_tokens: u64,
    /// Total tokens, as the providers reported them.
    pub total_tokens: u64,
    /// Cost in USD (finite, positive costs only).
    pub cost_usd: f64,
    /// Usage records counted.
    pub calls: u64,
}

impl ModelUsage {
    fn add(&mut self, other: &ModelUsage) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.total_tokens = self.total_tokens.saturating_add(other.total_tokens);
        self.cost_usd += other.cost_usd;
        self.calls = self.calls.saturating_add(other.calls);
    }
}

/// A run's usage totals, by `(provider, model)`, its sub-runs' included
/// (SubWorkflowResponse extension tag 2).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunUsage {
    /// Usage per provider and model.
    pub by_model: BTreeMap<(String, String), ModelUsage>,
}

impl Extension for RunUsage {
    const TAG: u32 = 2;
}

impl RunUsage {
    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.by_model.is_empty()
    }

    /// Counts one usage record. The engine folds only finite, positive costs
    /// into its total; so does this.
    pub fn record(&mut self, event: &UsageEvent) {
        let cost = event
            .cost_usd
            .filter(|cost| cost.is_finite() && *cost > 0.0)
            .unwrap_or(0.0);
        self.by_model
            .entry((event.provider.clone(), event.model.clone()))
            .or_default()
            .add(&ModelUsage {
                input_tokens: event.prompt_tokens.into(),
                output_tokens: event.completion_tokens.into(),
                total_tokens: event.total_tokens.into(),
                cost_usd: cost,
                calls: 1,
            });
    }

    /// Adds another run's totals (a sub-run's) to these.
    pub fn absorb(&mut self, other: &RunUsage) {
        for (key, usage) in &other.by_model {
            self.by_model.entry(key.clone()).or_default().add(usage);
        }
    }

    /// Input tokens over every model.
    pub fn input_tokens(&self) -> u64 {
        self.by_model.values().map(|usage| usage.input_tokens).sum()
    }

    /// Output tokens over every model.
    pub fn output_tokens(&self) -> u64 {
        self.by_model
            .values()
            .map(|usage| usage.output_tokens)
            .sum()
    }

    /// Cost in USD over every model.
    pub fn cost_usd(&self) -> f64 {
        self.by_model.values().map(|usage| usage.cost_usd).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Envelope, SubWorkflowResponse};

    fn event(model: &str, prompt: u32, completion: u32, cost: Option<f64>) -> UsageEvent {
        UsageEvent {
            provider: "openai".into(),
            model: model.into(),
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            cost_usd: cost,
        }
    }

    #[test]
    fn reads_the_engines_json() {
        let json = br#"{"provider":"openai","model":"gpt-4o-mini","modality":"Llm",
            "prompt_tokens":100,"completion_tokens":50,"total_tokens":150,"reasoning_tokens":0,
            "cached_input_tokens":0,"audio_input_tokens":0,"audio_output_tokens":0,
            "image_count":0,"audio_seconds":0.0,"video_seconds":0.0,"cost_usd":0.00025,
            "latency_ms":432,"run_id":"00000000-0000-0000-0000-000000000000"}"#;
        let read = UsageEvent::from_json(json).unwrap();
        assert_eq!(read, event("gpt-4o-mini", 100, 50, Some(0.00025)));
        assert!(UsageEvent::from_json(b"{}").is_err());
    }

    #[test]
    fn totals_add_up_and_skip_costs_that_are_not_positive() {
        let mut usage = RunUsage::default();
        usage.record(&event("a", 10, 5, Some(0.5)));
        usage.record(&event("a", 1, 1, Some(f64::NAN)));
        usage.record(&event("b", 2, 3, Some(-1.0)));
        let mut parent = RunUsage::default();
        parent.record(&event("b", 100, 0, Some(0.25)));
        parent.absorb(&usage);
        assert_eq!((parent.input_tokens(), parent.output_tokens()), (113, 9));
        assert_eq!(parent.cost_usd(), 0.75);
        assert_eq!(parent.by_model[&("openai".into(), "a".into())].calls, 2);
    }

    #[test]
    fn travels_in_the_response_extension_and_old_responses_read_as_none() {
        let mut usage = RunUsage::default();
        usage.record(&event("a", 10, 5, Some(0.5)));
        let mut response = Envelope::new(SubWorkflowResponse::default());
        response.extensions.insert(&usage).unwrap();
        let decoded = Envelope::<SubWorkflowResponse>::decode(&response.encode().unwrap()).unwrap();
        assert_eq!(decoded.extensions.get::<RunUsage>(), Some(usage));
        let plain = Envelope::new(SubWorkflowResponse::default())
            .encode()
            .unwrap();
        let decoded = Envelope::<SubWorkflowResponse>::decode(&plain).unwrap();
        assert_eq!(decoded.extensions.get::<RunUsage>(), None);
    }
}
