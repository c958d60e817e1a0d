//! Native half of `blazen_peer.PeerServer`.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blazen_peer_core::limits::DEFAULT_MAX_JSON_DEPTH;
use blazen_peer_core::observer::RunObserver;
use blazen_peer_core::server::{
    DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_IDLE_CONNECTION_TIMEOUT, DEFAULT_KEEPALIVE_INTERVAL,
    DEFAULT_KEEPALIVE_TIMEOUT, DEFAULT_MAX_BUFFERED_REQUEST_BYTES, DEFAULT_MAX_CONCURRENT_RUNS,
    DEFAULT_MAX_CONCURRENT_STREAMS, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MAX_UPLOAD_BYTES, DEFAULT_REQUEST_BODY_TIMEOUT, DEFAULT_RUN_TIMEOUT,
};
use blazen_peer_core::{
    PeerError, PeerService, RunStats, RunningServer, ServerConfig, ServiceMetrics,
};
use pyo3::prelude::*;

use crate::awaitable;
use crate::errors::IntoPyResult;
use crate::inbox;
use crate::metrics::ServerMetricsRef;
use crate::records::{RunCounts, UploadCounts};
use crate::refs::SessionRefRegistryRef;
use crate::runtime::Owner;
use crate::steps::PyHost;
use crate::tls::ServerTlsRef;
use crate::tracing::PyRunObserver;

enum ServerState {
    Idle,
    Starting,
    Running(RunningServer),
    Stopped,
}

/// A peer server; serves once, from `start` until `stop`.
#[pyclass(frozen, name = "PeerServer", module = "blazen_peer._native")]
pub struct PeerServerRef {
    node_id: String,
    // Everything but the per-start host; checked once, at construction.
    config: ServerConfig,
    state: Arc<Mutex<ServerState>>,
    // Kept after stop, so stats stay readable.
    service: Mutex<Option<PeerService>>,
    // The peers this server's steps may fetch refs from (Python's PeerDirectory).
    directory: Option<Py<PyAny>>,
    owner: Owner,
}

/// A positive, finite number of seconds as a Duration: the one check of every
/// `*_secs` setting Python passes (the core checks counts and sizes).
pub fn seconds(name: &str, secs: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|duration| !duration.is_zero())
        .ok_or_else(|| {
            PeerError::Validation(format!(
                "{name} must be a positive, finite number of seconds, got {secs}"
            ))
        })
        .py_err()
}

/// Transport limits as Python passes them (`PeerServer`'s keywords), read by
/// attribute; their defaults are `PeerServer.DEFAULT_*` below.
#[derive(FromPyObject)]
pub struct TransportOptions {
    max_connections: usize,
    max_concurrent_streams: usize,
    handshake_timeout_secs: f64,
    idle_connection_timeout_secs: Option<f64>,
    request_body_timeout_secs: f64,
    max_buffered_request_bytes: usize,
}

impl TransportOptions {
    /// `config` with these limits; `ServerConfig::validate` checks the rest.
    fn apply(&self, config: ServerConfig) -> PyResult<ServerConfig> {
        let max_concurrent_streams = u32::try_from(self.max_concurrent_streams)
            .map_err(|_| {
                PeerError::Validation(format!(
                    "max_concurrent_streams must be at most {}, got {}",
                    u32::MAX,
                    self.max_concurrent_streams
                ))
            })
            .py_err()?;
        Ok(ServerConfig {
            max_connections: self.max_connections,
            max_concurrent_streams,
            handshake_timeout: seconds("handshake_timeout_secs", self.handshake_timeout_secs)?,
            idle_connection_timeout: self
                .idle_connection_timeout_secs
                .map(|secs| seconds("idle_connection_timeout_secs", secs))
                .transpose()?,
            request_body_timeout: seconds(
                "request_body_timeout_secs",
                self.request_body_timeout_secs,
            )?,
            max_buffered_request_bytes: self.max_buffered_request_bytes,
            ..config
        })
    }
}

fn lock<T>(state: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    state.lock().unwrap_or_else(|poison| poison.into_inner())
}

#[pymethods]
impl PeerServerRef {
    #[new]
    #[pyo3(signature = (
        node_id,
        default_timeout_secs=DEFAULT_RUN_TIMEOUT.as_secs_f64(),
        session_refs=None,
        max_message_bytes=DEFAULT_MAX_MESSAGE_BYTES,
        *,
        max_concurrent_runs=DEFAULT_MAX_CONCURRENT_RUNS,
        max_json_depth=DEFAULT_MAX_JSON_DEPTH,
        tls=None,
        tokens=Vec::new(),
        insecure=false,
        keepalive_interval_secs=Some(DEFAULT_KEEPALIVE_INTERVAL.as_secs_f64()),
        keepalive_timeout_secs=DEFAULT_KEEPALIVE_TIMEOUT.as_secs_f64(),
        run_started=None,
        transport=None,
        http_json=false,
        labels=BTreeMap::new(),
        max_upload_bytes=DEFAULT_MAX_UPLOAD_BYTES,
        peer_directory=None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        node_id: String,
        default_timeout_secs: f64,
        session_refs: Option<PyRef<'_, SessionRefRegistryRef>>,
        max_message_bytes: usize,
        max_concurrent_runs: usize,
        max_json_depth: usize,
        tls: Option<PyRef<'_, ServerTlsRef>>,
        tokens: Vec<String>,
        insecure: bool,
        keepalive_interval_secs: Option<f64>,
        keepalive_timeout_secs: f64,
        run_started: Option<Py<PyAny>>,
        transport: Option<TransportOptions>,
        http_json: bool,
        labels: BTreeMap<String, String>,
        max_upload_bytes: usize,
        peer_directory: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        if node_id.is_empty() {
            return Err(PeerError::Validation("node_id cannot be empty".into())).py_err();
        }
        let default_timeout = seconds("default_timeout_secs", default_timeout_secs)?;
        let config = ServerConfig {
            default_timeout,
            session_refs: session_refs
                .map(|refs| refs.registry.clone())
                .unwrap_or_default(),
            max_message_bytes,
            max_concurrent_runs,
            max_json_depth,
            tls: tls.map(|tls| tls.config.clone()),
            tokens,
            insecure,
            keepalive_interval: keepalive_interval_secs
                .map(|secs| seconds("keepalive_interval_secs", secs))
                .transpose()?,
            keepalive_timeout: seconds("keepalive_timeout_secs", keepalive_timeout_secs)?,
            observer: run_started
                .map(|run_started| Arc::new(PyRunObserver { run_started }) as Arc<dyn RunObserver>),
            http_json,
            labels,
            max_upload_bytes,
            ..ServerConfig::default()
        };
        let config = match transport {
            Some(transport) => transport.apply(config)?,
            None => config,
        };
        config.validate().py_err()?;
        Ok(Self {
            node_id,
            config,
            state: Arc::new(Mutex::new(ServerState::Idle)),
            service: Mutex::new(None),
            directory: peer_directory,
            owner: Owner::here(),
        })
    }

    /// Largest message accepted or sent.
    #[classattr]
    const DEFAULT_MAX_MESSAGE_BYTES: usize = DEFAULT_MAX_MESSAGE_BYTES;
    /// Connections open at once; more are accepted and closed at once.
    #[classattr]
    const DEFAULT_MAX_CONNECTIONS: usize = DEFAULT_MAX_CONNECTIONS;
    /// HTTP/2 streams (calls) one connection may have open at once.
    #[classattr]
    const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = DEFAULT_MAX_CONCURRENT_STREAMS;
    /// Seconds a new connection has to complete TLS and send the HTTP/2 preface.
    #[classattr]
    const DEFAULT_HANDSHAKE_TIMEOUT_SECS: f64 = DEFAULT_HANDSHAKE_TIMEOUT.as_secs_f64();
    /// Seconds a connection may have no call in progress before it is closed.
    #[classattr]
    const DEFAULT_IDLE_CONNECTION_TIMEOUT_SECS: f64 = DEFAULT_IDLE_CONNECTION_TIMEOUT.as_secs_f64();
    /// Longest pause in a request body, in seconds, before its call fails.
    #[classattr]
    const DEFAULT_REQUEST_BODY_TIMEOUT_SECS: f64 = DEFAULT_REQUEST_BODY_TIMEOUT.as_secs_f64();
    /// Request bytes held at once, across connections, for messages still arriving.
    #[classattr]
    const DEFAULT_MAX_BUFFERED_REQUEST_BYTES: usize = DEFAULT_MAX_BUFFERED_REQUEST_BYTES;

    /// This server's node id.
    #[getter]
    fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Binds `address` and serves in the background; async steps run on `event_loop`.
    fn start<'py>(
        &self,
        py: Python<'py>,
        address: &str,
        event_loop: Py<PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.owner.check("PeerServer").py_err()?;
        let addr = parse_listen_address(address).py_err()?;
        {
            let mut state = lock(&self.state);
            match &*state {
                ServerState::Idle => *state = ServerState::Starting,
                ServerState::Starting | ServerState::Running(_) => {
                    return Err(PeerError::Validation(format!(
                        "PeerServer `{}` is already serving; a server serves once (create another to listen elsewhere)",
                        self.node_id
                    )))
                    .py_err()
                }
                ServerState::Stopped => {
                    return Err(PeerError::Validation(format!(
                        "PeerServer `{}` was stopped; create a new PeerServer to serve again",
                        self.node_id
                    )))
                    .py_err()
                }
            }
        }
        let config = ServerConfig {
            host: Some(Arc::new(PyHost {
                inbox: inbox::for_loop(py, event_loop.bind(py))?,
                directory: self
                    .directory
                    .as_ref()
                    .map(|directory| directory.clone_ref(py)),
            })),
            ..self.config.clone()
        };
        let service = PeerService::new(self.node_id.as_str(), config);
        *lock(&self.service) = Some(service.clone());
        let state = self.state.clone();
        awaitable::spawn(py, async move {
            match RunningServer::start(service, addr).await {
                Ok(running) => {
                    let bound = running.local_addr().to_string();
                    *lock(&state) = ServerState::Running(running);
                    Ok(bound)
                }
                Err(err) => {
                    *lock(&state) = ServerState::Idle;
                    Err(err)
                }
            }
        })
    }

    /// Drains and stops (see `RunningServer::stop`); `grace_secs` None waits
    /// for every run. Idempotent: a second call waits for nothing.
    #[pyo3(signature = (grace_secs=None))]
    fn stop<'py>(&self, py: Python<'py>, grace_secs: Option<f64>) -> PyResult<Bound<'py, PyAny>> {
        self.owner.check("PeerServer").py_err()?;
        let grace = grace_secs
            .map(|secs| {
                Duration::try_from_secs_f64(secs).map_err(|_| {
                    PeerError::Validation(format!(
                        "grace must be a non-negative number of seconds or None, got {secs}"
                    ))
                })
            })
            .transpose()
            .py_err()?;
        let previous = std::mem::replace(&mut *lock(&self.state), ServerState::Stopped);
        awaitable::spawn(py, async move {
            if let ServerState::Running(mut running) = previous {
                running.stop(grace).await?;
            }
            Ok(())
        })
    }

    /// `(runs_started, runs_succeeded, runs_failed, runs_cancelled, runs_timed_out,
    /// runs_in_flight)`.
    fn stats(&self) -> RunCounts {
        lock(&self.service)
            .as_ref()
            .map(PeerService::stats)
            .unwrap_or_default()
            .into()
    }

    /// Everything metrics report; before `start`, no run and no connection.
    fn metrics(&self) -> ServerMetricsRef {
        let service = lock(&self.service).clone();
        service
            .as_ref()
            .map(PeerService::metrics)
            .unwrap_or_else(|| ServiceMetrics {
                runs: RunStats::default(),
                run_durations: Vec::new(),
                refusals: Vec::new(),
                connections_open: 0,
                connections_accepted: 0,
                session_refs: self.config.session_refs.usage(),
            })
            .into()
    }

    /// Bytes of uploaded values held, and the uploads still arriving; zeros before `start`.
    fn uploads(&self) -> UploadCounts {
        lock(&self.service)
            .as_ref()
            .map(PeerService::uploads)
            .unwrap_or_default()
            .into()
    }

    /// The registry this server's runs keep session refs in.
    #[getter]
    fn session_refs(&self) -> SessionRefRegistryRef {
        SessionRefRegistryRef {
            registry: self.config.session_refs.clone(),
        }
    }

    /// True from the start of `stop` on: new runs are refused, health says NOT_SERVING.
    #[getter]
    fn draining(&self) -> bool {
        lock(&self.service)
            .as_ref()
            .is_some_and(PeerService::is_draining)
    }

    /// True between a successful `start` and `stop`.
    #[getter]
    fn serving(&self) -> bool {
        matches!(*lock(&self.state), ServerState::Running(_))
    }
}

fn parse_listen_address(address: &str) -> Result<SocketAddr, PeerError> {
    let invalid = |why: &str| {
        PeerError::Validation(format!(
            "`{address}` is not a listen address ({why}); use HOST:PORT such as 127.0.0.1:50051 \
             or 0.0.0.0:50051 (port 0 picks a free port)"
        ))
    };
    if address.contains("://") {
        return Err(invalid("a server listens on HOST:PORT, not a URL"));
    }
    if let Ok(addr) = address.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let mut resolved = address
        .to_socket_addrs()
        .map_err(|err| invalid(&err.to_string()))?;
    resolved
        .next()
        .ok_or_else(|| invalid("the host name resolves to no address"))
}
