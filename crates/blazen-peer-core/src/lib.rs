//! Core of blazen-peer: the `blazen.peer.v1` protocol, its gRPC server and
//! client, the step and session-ref registries, and the workflow runner.
//!
//! Nothing here knows about Python. Step hosts plug in through
//! [`registry::StepHandler`] and carry their payloads as [`event::EventData`],
//! so the binding crate only converts values and maps errors.

pub mod auth;
pub mod client;
pub mod context;
pub mod envelope;
pub mod error;
pub mod event;
pub mod event_stream;
mod failure;
pub mod limits;
pub mod log_limit;
pub mod log_target;
pub mod observer;
pub mod piece;
pub mod registry;
pub mod runner;
pub mod server;
pub mod session_refs;
pub mod step_policy;
pub mod tls;
mod tls_connector;
pub mod trace;
pub mod transport;
pub mod usage;

/// Code generated from `proto/blazen_peer.proto`.
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("blazen.peer.v1");
}

pub use client::{
    CallOptions, ChunkSink, ClientConfig, EventReceiver, PeerClient, StreamMessage, VecSink,
};
pub use context::{Caller, RunContext, StateValue};
pub use envelope::{Envelope, ENVELOPE_VERSION};
pub use error::PeerError;
pub use event::{Event, EventData, EventTypes, JsonEvent};
pub use event_stream::{EventStream, StreamedEvent};
pub use registry::{Step, StepFailure, StepHandler, StepRegistry};
pub use server::{PeerService, RunStats, RunningServer, ServerConfig, ServiceMetrics};
pub use session_refs::{RefInfo, RefLifetime, RefOwner, RefPayload, RefUsage, SessionRefRegistry};
pub use step_policy::{RetryFilter, RetryPolicy, StepPolicy, StepSlot};
pub use tls::{ClientTls, PeerIdentity, Pem, ServerTls};
pub use trace::TraceContext;
