//! The gRPC peer service and a server that runs it on a bound listener.
//!
//! This module holds the service itself ([`PeerService`]) and what it counts;
//! the rest is split by what each part is for:
//! - `config`: [`ServerConfig`], its defaults and validation;
//! - `pipeline`: checking, running and answering a run request;
//! - `handlers`: the gRPC methods, one per protocol method;
//! - `deref`: the producer streaming a large session ref in pieces;
//! - `running`: [`RunningServer`], binding, serving and draining;
//! - `upload`: receiving `PutSessionRef` uploads against `max_upload_bytes`;
//! - `lease_sweeper`: freeing the refs of parents whose lease ran out;
//! - `token_check`: refusing calls without one of the server's tokens;
//! - `incoming`, `connection`, `request_body`, `limits`: our own accept loop and
//!   HTTP/2 serving, which bound what tonic's would not;
//! - `http_json`, `stream_feed`, `lifecycle`, `metrics`, `log_throttle`: the
//!   HTTP/JSON routes, the streaming run's feed, run accounting, counters and
//!   log throttling.

use std::sync::Arc;

use tokio::sync::Semaphore;

mod config;
mod connection;
mod deref;
mod handlers;
mod http_json;
mod incoming;
mod lease_sweeper;
mod lifecycle;
mod limits;
mod log_throttle;
mod metrics;
mod pipeline;
mod request_body;
mod running;
mod stream_feed;
mod token_check;
mod upload;

pub use config::{ServerConfig, DEFAULT_MAX_CONCURRENT_RUNS, DEFAULT_RUN_TIMEOUT};
pub use deref::CHUNK_BYTES;
pub use lifecycle::RunStats;
pub use limits::{
    DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_IDLE_CONNECTION_TIMEOUT, DEFAULT_MAX_BUFFERED_REQUEST_BYTES,
    DEFAULT_MAX_CONCURRENT_STREAMS, DEFAULT_MAX_CONNECTIONS, DEFAULT_REQUEST_BODY_TIMEOUT,
    MAX_LOCAL_ERROR_RESET_STREAMS, MAX_PENDING_ACCEPT_RESET_STREAMS,
};
pub use metrics::{DurationBuckets, Refusal, RunOutcome, RUN_DURATION_BOUNDS_SECS};
pub use running::RunningServer;
pub use upload::{UploadUsage, DEFAULT_MAX_UPLOAD_BYTES};

use crate::session_refs::RefUsage;
use lifecycle::Lifecycle;
pub(crate) use metrics::ServerCounters;

pub use crate::transport::{
    CONNECTION_WINDOW_BYTES, DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_KEEPALIVE_TIMEOUT,
    DEFAULT_MAX_MESSAGE_BYTES, MAX_FRAME_BYTES, STREAM_WINDOW_BYTES,
};

/// The `blazen.peer.v1.BlazenPeer` service.
#[derive(Clone)]
pub struct PeerService {
    node_id: Arc<str>,
    config: ServerConfig,
    run_slots: Arc<Semaphore>,
    lifecycle: Arc<Lifecycle>,
    counters: Arc<ServerCounters>,
    uploads: Arc<upload::UploadQuota>,
}

/// A snapshot of what a service counts, for metrics: [`PeerService::metrics`].
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceMetrics {
    /// Runs by how they ended, and in progress.
    pub runs: RunStats,
    /// Run durations by outcome.
    pub run_durations: Vec<(RunOutcome, DurationBuckets)>,
    /// Calls and connections turned away, by reason.
    pub refusals: Vec<(Refusal, u64)>,
    /// Connections open now.
    pub connections_open: u64,
    /// Connections accepted since the server started (refused ones excluded).
    pub connections_accepted: u64,
    /// Session refs held, and their bytes.
    pub session_refs: RefUsage,
}

impl PeerService {
    /// A service answering as `node_id`.
    pub fn new(node_id: impl Into<Arc<str>>, config: ServerConfig) -> Self {
        Self {
            node_id: node_id.into(),
            run_slots: Arc::new(Semaphore::new(config.max_concurrent_runs)),
            uploads: Arc::new(upload::UploadQuota::new(config.max_upload_bytes)),
            config,
            lifecycle: Arc::default(),
            counters: Arc::default(),
        }
    }

    /// What metrics report: every figure is read from atomics (the refs'
    /// two from one brief lock), so a scrape costs the calls nothing.
    pub fn metrics(&self) -> ServiceMetrics {
        ServiceMetrics {
            runs: self.lifecycle.stats(),
            run_durations: self.lifecycle.durations(),
            refusals: self.counters.refusals(),
            connections_open: self.counters.connections_open(),
            connections_accepted: self.counters.connections_accepted(),
            session_refs: self.config.session_refs.usage(),
        }
    }

    /// How many runs started and how each ended.
    pub fn stats(&self) -> RunStats {
        self.lifecycle.stats()
    }

    /// Bytes of uploaded values held, and the uploads still arriving.
    pub fn uploads(&self) -> UploadUsage {
        self.uploads.usage()
    }

    /// True once the server running this service began to shut down.
    pub fn is_draining(&self) -> bool {
        self.lifecycle.is_draining()
    }
}
