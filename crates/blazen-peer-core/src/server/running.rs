//! A server serving in the background: [`RunningServer::start`] binds,
//! wires the gRPC service, health and the optional HTTP/JSON routes behind the
//! token check onto our own accept loop; [`RunningServer::stop`] drains.
//!
//! Draining is ordered so probes and callers can see it: health turns
//! NOT_SERVING and new runs are refused while the listener stays up, runs get
//! their grace period, then the rest are cancelled and the replies get a short
//! while to go out before the connections close.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Routes;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use super::lease_sweeper::sweep_leases;
use super::lifecycle::{Lifecycle, RunStats};
use super::token_check::TokenCheck;
use super::{connection, http_json, incoming, PeerService};
use crate::error::PeerError;
use crate::log_target::TARGET;
use crate::pb::blazen_peer_server::BlazenPeerServer;

/// Once the grace period is over and runs are cancelled, how long their
/// replies (and streams such as a deref in progress) get to go out before the
/// connections are closed.
const TRANSPORT_DRAIN: Duration = Duration::from_secs(2);

/// A server serving in the background until [`RunningServer::stop`].
pub struct RunningServer {
    local_addr: SocketAddr,
    node_id: Arc<str>,
    lifecycle: Arc<Lifecycle>,
    health: HealthReporter,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    sweeper: JoinHandle<()>,
}

impl RunningServer {
    /// Binds `addr` (port 0 picks a free port) and starts serving `service`.
    pub async fn start(service: PeerService, addr: SocketAddr) -> Result<Self, PeerError> {
        let config = service.config.clone();
        let lifecycle = service.lifecycle.clone();
        let node_id = service.node_id.clone();
        config.validate()?;
        if !addr.ip().is_loopback()
            && config.tls.is_none()
            && config.tokens.is_empty()
            && !config.insecure
        {
            return Err(PeerError::Validation(format!(
                "refusing to serve {addr} without TLS or a token: anyone who can reach it could \
                 run this peer's steps. Pass tls=ServerTls.from_pem(...) and/or token=... (or set \
                 BLAZEN_PEER_TOKEN), bind 127.0.0.1 for local use, or pass insecure=True on a \
                 network you trust"
            )));
        }
        let listener = incoming::bind(addr).map_err(|err| {
            let hint = if err.kind() == std::io::ErrorKind::AddrInUse {
                "; another process is listening there: stop it or pick another port (0 picks a free one)"
            } else {
                ""
            };
            PeerError::transport(format!("cannot listen on {addr}: {err}{hint}"))
        })?;
        let local_addr = listener
            .local_addr()
            .map_err(|err| PeerError::transport(format!("cannot read the bound address: {err}")))?;
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let limit = config.max_message_bytes;
        let sweeper = tokio::spawn(sweep_leases(config.session_refs.clone()));
        let counters = service.counters.clone();
        let json_api = config.http_json.then(|| {
            http_json::JsonApi::new(
                service.clone(),
                TokenCheck::new(&config.tokens).counting_refusals(counters.clone()),
            )
        });
        let grpc = BlazenPeerServer::new(service)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit);
        let grpc = InterceptedService::new(
            grpc,
            TokenCheck::new(&config.tokens).counting_refusals(counters.clone()),
        );
        // Health is outside the token check: probes (Kubernetes, grpc_health_probe)
        // carry no credentials, and the answer reveals nothing but up or draining.
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<BlazenPeerServer<PeerService>>().await;
        // Connections are accepted and served by our own loop (server/incoming.rs,
        // server/connection.rs), which bounds what tonic's would not: connections,
        // handshake time, idle time, request bytes (see server/limits.rs).
        let routes = Routes::new(health_service).add_service(grpc);
        let transport = Arc::new(connection::Transport::new(
            node_id.clone(),
            &config,
            routes,
            json_api,
            counters,
        ));
        log::info!(
            target: TARGET,
            node_id = &*node_id, address:% = local_addr;
            "peer `{node_id}` serving on {local_addr} ({}, {}{})",
            if config.tls.is_some() { "TLS" } else { "plaintext" },
            match config.tokens.len() {
                0 => "no token",
                _ => "token required",
            },
            if config.http_json { ", HTTP/JSON routes on" } else { "" }
        );
        let task = tokio::spawn(async move {
            let (stop_tx, stop_rx) = watch::channel(false);
            let serving = incoming::serve(listener, transport, stop_rx);
            tokio::pin!(serving);
            tokio::select! {
                () = &mut serving => {}
                _ = shutdown_rx => {
                    let _ = stop_tx.send(true);
                    serving.await;
                }
            }
            Ok(())
        });
        Ok(Self {
            local_addr,
            node_id,
            lifecycle,
            health,
            shutdown: Some(shutdown_tx),
            task: Some(task),
            sweeper,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How many runs started and how each ended.
    pub fn stats(&self) -> RunStats {
        self.lifecycle.stats()
    }

    /// True once [`RunningServer::stop`] began.
    pub fn is_draining(&self) -> bool {
        self.lifecycle.is_draining()
    }

    /// Shuts down gracefully: health turns NOT_SERVING and new runs are
    /// refused (UNAVAILABLE) while the listener stays up, so probes and
    /// load balancers see the drain; runs in progress get `grace` to finish
    /// (None: as long as they take), then the rest are cancelled — their
    /// callers get a Cancelled failure — and the server closes.
    pub async fn stop(&mut self, grace: Option<Duration>) -> Result<(), PeerError> {
        if self.task.is_none() {
            return Ok(());
        }
        let node_id = &*self.node_id;
        let in_flight = self.lifecycle.stats().runs_in_flight;
        log::info!(
            target: TARGET,
            node_id = node_id, runs_in_flight = in_flight;
            "peer `{node_id}` draining: {in_flight} {} in progress, grace {}",
            if in_flight == 1 { "run" } else { "runs" },
            grace.map_or("unlimited".into(), |grace| format!("{:.1} s", grace.as_secs_f64()))
        );
        self.lifecycle.start_draining();
        self.health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        self.health
            .set_not_serving::<BlazenPeerServer<PeerService>>()
            .await;
        if !self.lifecycle.wait_idle(grace).await {
            let in_flight = self.lifecycle.stats().runs_in_flight;
            log::warn!(
                target: TARGET,
                node_id = node_id, runs_in_flight = in_flight;
                "peer `{node_id}`: grace period over, cancelling {in_flight} {}",
                if in_flight == 1 { "run" } else { "runs" }
            );
            self.lifecycle.cancel_runs();
            // Cancelled runs end at once; their replies still go out below.
            self.lifecycle.wait_idle(Some(TRANSPORT_DRAIN)).await;
        }
        self.sweeper.abort();
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let Some(mut task) = self.task.take() else {
            return Ok(());
        };
        // tonic's own graceful shutdown waits for every open stream, however long.
        let joined = tokio::time::timeout(TRANSPORT_DRAIN, &mut task).await;
        log::info!(target: TARGET, node_id = node_id; "peer `{node_id}` stopped");
        let joined = match joined {
            Ok(joined) => joined,
            Err(_) => {
                task.abort();
                return Ok(());
            }
        };
        match joined {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(PeerError::transport(format!(
                "server on {} failed: {err}",
                self.local_addr
            ))),
            Err(join) => Err(PeerError::transport(format!(
                "server task on {} ended abnormally: {join}",
                self.local_addr
            ))),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.lifecycle.start_draining();
        self.lifecycle.cancel_runs();
        self.sweeper.abort();
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}
