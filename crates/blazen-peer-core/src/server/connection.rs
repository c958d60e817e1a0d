//! One accepted connection, from `accept` to close: the TLS handshake and the
//! HTTP/2 preface within a deadline, HTTP/2 served by hyper with our stream and
//! reset limits, an idle timeout, and the per-request plumbing tonic's own
//! server did (connection info for `peer_certs`, `grpc-timeout`), plus request
//! bodies bounded by [`BoundedBody`].

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use hyper::body::{Body as HttpBody, Bytes, Frame, Incoming, SizeHint};
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tonic::body::Body;
use tonic::service::Routes;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};
use tonic::Status;
use tower::ServiceExt;

use super::http_json::{is_grpc, JsonApi};
use super::incoming::Handshake;
use super::limits::{
    MAX_LOCAL_ERROR_RESET_STREAMS, MAX_PENDING_ACCEPT_RESET_STREAMS, READ_BURST_BYTES,
    STREAM_TASK_HEADROOM,
};
use super::log_throttle::{more, Throttle};
use super::metrics::ServerCounters;
use super::request_body::{BoundedBody, RequestBudget};
use super::ServerConfig;
use crate::log_target::TARGET;
use crate::transport::{CONNECTION_WINDOW_BYTES, MAX_FRAME_BYTES, STREAM_WINDOW_BYTES};

/// The client's HTTP/2 connection preface, `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`:
/// a connection that sent this much (after TLS) completed its handshake.
const PREFACE_BYTES: u64 = 24;

/// How long a connection closed for being idle has to acknowledge the GOAWAY
/// (HTTP/2's graceful close waits for a PING round trip) before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The idle timer's period when idle connections are never closed (it is then not polled).
const NEVER: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// What every connection of one server shares.
pub(crate) struct Transport {
    pub(crate) node_id: Arc<str>,
    pub(crate) max_connections: usize,
    pub(crate) counters: Arc<ServerCounters>,
    routes: Routes,
    http2: http2::Builder<TokioExecutor>,
    /// With the HTTP/JSON routes on: HTTP/1.1 too, told from HTTP/2 by the preface.
    auto: Option<auto::Builder<TokioExecutor>>,
    json: Option<Arc<JsonApi>>,
    tls: Option<TlsAcceptor>,
    max_stream_tasks: usize,
    handshake_timeout: Duration,
    idle_timeout: Option<Duration>,
    budget: Arc<RequestBudget>,
    handshake_timeouts: Throttle,
    evictions: Throttle,
    guards: Throttle,
}

/// hyper's HTTP/2 builder and the HTTP/2 half of its auto-detecting builder are
/// different types with the same setters: one list of settings serves both.
macro_rules! tune_http2 {
    ($builder:expr, $config:expr) => {
        $builder
            .timer(TokioTimer::new())
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .max_frame_size(MAX_FRAME_BYTES)
            .max_concurrent_streams($config.max_concurrent_streams)
            .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESET_STREAMS)
            .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESET_STREAMS)
            .keep_alive_interval($config.keepalive_interval)
            .keep_alive_timeout($config.keepalive_timeout)
    };
}

impl Transport {
    pub(crate) fn new(
        node_id: Arc<str>,
        config: &ServerConfig,
        routes: Routes,
        json: Option<JsonApi>,
        counters: Arc<ServerCounters>,
    ) -> Self {
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        tune_http2!(http2, config);
        let auto = json.is_some().then(|| {
            let mut auto = auto::Builder::new(TokioExecutor::new());
            tune_http2!(auto.http2(), config);
            // A request's head must arrive within the handshake timeout;
            // its body then has the body timeout, as over HTTP/2.
            auto.http1()
                .timer(TokioTimer::new())
                .header_read_timeout(config.handshake_timeout);
            auto
        });
        let budget = Arc::new(
            RequestBudget::new(
                node_id.clone(),
                config.max_buffered_request_bytes,
                config.request_body_timeout,
                config.max_message_bytes,
            )
            .counting_refusals(counters.clone()),
        );
        Self {
            max_connections: config.max_connections,
            counters,
            routes: routes.prepare(),
            http2,
            auto,
            json: json.map(Arc::new),
            tls: config
                .tls
                .as_ref()
                .map(|tls| TlsAcceptor::from(tls.rustls())),
            max_stream_tasks: config.max_concurrent_streams as usize + STREAM_TASK_HEADROOM,
            handshake_timeout: config.handshake_timeout,
            idle_timeout: config.idle_connection_timeout,
            budget,
            handshake_timeouts: Throttle::new(),
            evictions: Throttle::new(),
            guards: Throttle::new(),
            node_id,
        }
    }

    fn evicted(&self, remote: SocketAddr) {
        if let Some(held_back) = self.evictions.admit() {
            log::warn!(
                target: TARGET,
                node_id = &*self.node_id, reason = "evicted_handshake";
                "closed a connection from {remote} that had not completed its handshake, to \
                 make room for a new one (max_connections or the open-file limit reached){}",
                more(held_back)
            );
        }
    }

    /// A connection ended with an error: the client going away is routine, our
    /// HTTP/2 guards closing it (GOAWAY, e.g. ENHANCE_YOUR_CALM) is not.
    fn connection_failed(&self, remote: SocketAddr, err: &(dyn std::error::Error + 'static)) {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(cause) = source {
            if let Some(h2) = cause.downcast_ref::<h2::Error>() {
                if h2.is_go_away() && h2.is_library() {
                    if let Some(held_back) = self.guards.admit() {
                        log::warn!(
                            target: TARGET,
                            node_id = &*self.node_id, reason = "http2_guard";
                            "closed the connection from {remote}, failing the calls in flight \
                             on it: {h2}{}",
                            more(held_back)
                        );
                    }
                    return;
                }
                break;
            }
            source = cause.source();
        }
        log::debug!(
            target: TARGET,
            node_id = &*self.node_id;
            "connection from {remote} ended: {err}"
        );
    }

    fn handshake_timed_out(&self, remote: SocketAddr, what: &str) {
        if let Some(held_back) = self.handshake_timeouts.admit() {
            log::warn!(
                target: TARGET,
                node_id = &*self.node_id, reason = "handshake_timeout";
                "closed a connection from {remote}: {what} within {} s \
                 (handshake_timeout_secs){}",
                self.handshake_timeout.as_secs_f64(),
                more(held_back)
            );
        }
    }
}

/// Serves one accepted connection until it closes; `_slot` is its place
/// among `max_connections`, given back when this returns.
pub(crate) async fn serve_connection(
    transport: Arc<Transport>,
    tcp: TcpStream,
    remote: SocketAddr,
    _slot: OwnedSemaphorePermit,
    handshake: Arc<Handshake>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _open = transport.counters.connection_opened();
    let deadline = Instant::now() + transport.handshake_timeout;
    let Some(acceptor) = transport.tls.clone() else {
        let info = PeerInfo::Plain(tcp.connect_info());
        return drive(&transport, tcp, info, remote, deadline, handshake, shutdown).await;
    };
    let tls_handshake = tokio::time::timeout_at(deadline, acceptor.accept(tcp));
    let tls = tokio::select! {
        result = tls_handshake => match result {
            Ok(Ok(tls)) => tls,
            Ok(Err(err)) => {
                log::debug!(
                    target: TARGET,
                    node_id = &*transport.node_id;
                    "TLS handshake with {remote} failed: {err}"
                );
                return;
            }
            Err(_) => {
                transport.handshake_timed_out(remote, "the TLS handshake did not complete");
                return;
            }
        },
        () = handshake.evict.notified() => {
            transport.evicted(remote);
            return;
        }
        _ = shutdown.wait_for(|stop| *stop) => return,
    };
    let info = PeerInfo::Tls(tls.connect_info());
    drive(&transport, tls, info, remote, deadline, handshake, shutdown).await
}

/// Serves HTTP/2 (and, with the JSON routes on, HTTP/1.1) on an established
/// (and, under TLS, handshaken) stream.
async fn drive<IO>(
    transport: &Arc<Transport>,
    io: IO,
    info: PeerInfo,
    remote: SocketAddr,
    deadline: Instant,
    handshake: Arc<Handshake>,
    shutdown: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let streams = Arc::new(StreamCount::new(transport.max_stream_tasks));
    let io = ConnIo::new(io, handshake.clone(), streams.clone());
    let service = PeerConnection {
        routes: transport.routes.clone(),
        json: transport.json.clone(),
        info,
        remote,
        streams: streams.clone(),
        budget: transport.budget.clone(),
    };
    let watch = Watch {
        transport,
        remote,
        deadline,
        handshake,
        streams,
    };
    match &transport.auto {
        Some(auto) => {
            let conn = auto.serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            watch
                .run(conn, |conn| conn.graceful_shutdown(), shutdown)
                .await;
        }
        None => {
            let conn = transport.http2.serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            watch
                .run(conn, |conn| conn.graceful_shutdown(), shutdown)
                .await;
        }
    }
}

/// What watches a connection while hyper serves it.
struct Watch<'a> {
    transport: &'a Arc<Transport>,
    remote: SocketAddr,
    deadline: Instant,
    handshake: Arc<Handshake>,
    streams: Arc<StreamCount>,
}

impl Watch<'_> {
    /// Drives `conn` to its end, closing it when the preface is late, when it
    /// was evicted before its handshake, when idle, and on shutdown.
    async fn run<C, E>(
        self,
        mut conn: Pin<&mut C>,
        graceful_shutdown: impl Fn(Pin<&mut C>),
        mut shutdown: watch::Receiver<bool>,
    ) where
        C: Future<Output = Result<(), E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Watch {
            transport,
            remote,
            deadline,
            handshake,
            streams,
        } = self;
        let preface_timer = tokio::time::sleep_until(deadline);
        tokio::pin!(preface_timer);
        let mut awaiting_preface = true;
        let idle_timer = tokio::time::sleep(transport.idle_timeout.unwrap_or(NEVER));
        tokio::pin!(idle_timer);
        let mut closing = false;
        let close_grace = tokio::time::sleep(NEVER);
        tokio::pin!(close_grace);
        let mut idle_closing = false;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(err) = result {
                        let err: Box<dyn std::error::Error + Send + Sync> = err.into();
                        transport.connection_failed(remote, &*err);
                    }
                    return;
                }
                () = &mut preface_timer, if awaiting_preface => {
                    if !handshake.done.load(Ordering::Acquire) {
                        transport.handshake_timed_out(remote, "no HTTP/2 preface arrived");
                        return;
                    }
                    awaiting_preface = false;
                }
                () = handshake.evict.notified(), if awaiting_preface => {
                    if !handshake.done.load(Ordering::Acquire) {
                        transport.evicted(remote);
                        return;
                    }
                }
                () = &mut idle_timer, if transport.idle_timeout.is_some() && !closing => {
                    let timeout = transport.idle_timeout.unwrap_or(NEVER);
                    match streams.idle_for() {
                        Some(idle) if idle >= timeout => {
                            log::debug!(
                                target: TARGET,
                                node_id = &*transport.node_id;
                                "closing the connection from {remote}: no call for {} s \
                                 (idle_connection_timeout_secs)",
                                timeout.as_secs_f64()
                            );
                            graceful_shutdown(conn.as_mut());
                            closing = true;
                            close_grace.as_mut().reset(Instant::now() + IDLE_CLOSE_GRACE);
                            idle_closing = true;
                        }
                        Some(idle) => idle_timer.as_mut().reset(Instant::now() + (timeout - idle)),
                        None => idle_timer.as_mut().reset(Instant::now() + timeout),
                    }
                }
                () = &mut close_grace, if idle_closing => {
                    // It had no stream open: nothing is lost by closing it now.
                    return;
                }
                changed = shutdown.changed(), if !closing => {
                    if changed.is_err() || *shutdown.borrow() {
                        graceful_shutdown(conn.as_mut());
                        closing = true;
                    }
                }
            }
        }
    }
}

/// Who is on the other end, as tonic's own server records it in each
/// request's extensions (`Request::remote_addr`, `Request::peer_certs`).
#[derive(Clone)]
enum PeerInfo {
    Plain(TcpConnectInfo),
    Tls(TlsConnectInfo<TcpConnectInfo>),
}

impl PeerInfo {
    fn insert_into(&self, extensions: &mut http::Extensions) {
        match self {
            PeerInfo::Plain(tcp) => {
                extensions.insert(tcp.clone());
            }
            PeerInfo::Tls(tls) => {
                extensions.insert(tls.get_ref().clone());
                extensions.insert(tls.clone());
            }
        }
    }
}

/// Streams of one connection whose work is in progress, and since when it
/// has had none.
struct StreamCount {
    open: AtomicUsize,
    /// Streams accepted so far.
    accepted: AtomicU64,
    born: Instant,
    /// Nanoseconds after `born` when the last stream closed.
    last_closed: AtomicU64,
    /// Past this many, the connection is not read until some end.
    limit: usize,
    /// The connection's reader, waiting for streams to end.
    reader: AtomicWaker,
}

impl StreamCount {
    fn new(limit: usize) -> Self {
        Self {
            open: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            born: Instant::now(),
            last_closed: AtomicU64::new(0),
            limit,
            reader: AtomicWaker::new(),
        }
    }

    fn opened(self: &Arc<Self>) -> StreamGuard {
        self.accepted.fetch_add(1, Ordering::AcqRel);
        self.open.fetch_add(1, Ordering::AcqRel);
        StreamGuard(self.clone())
    }

    /// How long the connection has had no open stream; None while it has one.
    fn idle_for(&self) -> Option<Duration> {
        if self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        let closed = self.born + Duration::from_nanos(self.last_closed.load(Ordering::Acquire));
        Some(Instant::now().saturating_duration_since(closed))
    }

    /// Ready while the connection may be read; otherwise registers `cx` to be
    /// woken once enough streams ended.
    fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.open.load(Ordering::Acquire) < self.limit {
            return Poll::Ready(());
        }
        self.reader.register(cx.waker());
        // A stream may have ended between the check and the registration.
        if self.open.load(Ordering::Acquire) < self.limit {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// Counts one open stream until the response is done or abandoned.
struct StreamGuard(Arc<StreamCount>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let since_born = Instant::now().saturating_duration_since(self.0.born);
        let nanos = u64::try_from(since_born.as_nanos()).unwrap_or(u64::MAX);
        self.0.last_closed.fetch_max(nanos, Ordering::AcqRel);
        let was = self.0.open.fetch_sub(1, Ordering::AcqRel);
        if was == self.0.limit {
            self.0.reader.wake();
        }
    }
}

/// The service hyper calls for each stream of one connection.
#[derive(Clone)]
struct PeerConnection {
    routes: Routes,
    json: Option<Arc<JsonApi>>,
    info: PeerInfo,
    remote: SocketAddr,
    streams: Arc<StreamCount>,
    budget: Arc<RequestBudget>,
}

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<TrackedBody>, Infallible>> + Send>>;

impl hyper::service::Service<http::Request<Incoming>> for PeerConnection {
    type Response = http::Response<TrackedBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, request: http::Request<Incoming>) -> Self::Future {
        let guard = self.streams.opened();
        let (mut parts, body) = request.into_parts();
        self.info.insert_into(&mut parts.extensions);
        if let Some(json) = self.json.clone().filter(|_| !is_grpc(&parts.headers)) {
            let budget = self.budget.clone();
            let remote = self.remote;
            return Box::pin(async move {
                let reply = json.handle(parts, body, budget, remote).await;
                Ok(reply.into_response().map(|body| TrackedBody {
                    body,
                    _guard: guard,
                }))
            });
        }
        let timeout = grpc_timeout(&parts.headers);
        let body = BoundedBody::new(body, self.budget.clone(), Some(self.remote));
        let call = self
            .routes
            .clone()
            .oneshot(http::Request::from_parts(parts, body));
        Box::pin(async move {
            let response = match timeout {
                None => call.await,
                Some(timeout) => match tokio::time::timeout(timeout, call).await {
                    Ok(response) => response,
                    // What tonic's own server answers when a call outlives its grpc-timeout.
                    Err(_) => Ok(Status::cancelled("Timeout expired").into_http()),
                },
            };
            let response = match response {
                Ok(response) => response,
                Err(never) => match never {},
            };
            Ok(response.map(|body| TrackedBody {
                body,
                _guard: guard,
            }))
        })
    }
}

/// A response body that keeps its stream counted as open until it is done.
pub(crate) struct TrackedBody {
    body: Body,
    _guard: StreamGuard,
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The `grpc-timeout` a caller set, per the gRPC over HTTP/2 spec
/// (`^\d{1,8}[HMSmun]$`); None when absent or malformed, as tonic does.
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 60 * 60),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// The connection's I/O as hyper sees it: notes when the client's HTTP/2
/// preface has arrived, stops after [`READ_BURST_BYTES`] read in a row until
/// the streams they opened have all been accepted, and reads nothing while
/// too many streams are still in progress.
///
/// h2 reads all it can before the server accepts a stream, then reads again
/// before each following accept; so after a burst, reads stay pending for as
/// long as each attempt finds a stream accepted since the previous one, that
/// is until h2's queue of streams to accept is empty.
struct ConnIo<IO> {
    io: IO,
    read: u64,
    handshake: Arc<Handshake>,
    streams: Arc<StreamCount>,
    /// Bytes read since the last time a read was pending.
    burst: usize,
    /// After a burst: the count of accepted streams at the last attempt.
    draining: Option<u64>,
}

impl<IO> ConnIo<IO> {
    fn new(io: IO, handshake: Arc<Handshake>, streams: Arc<StreamCount>) -> Self {
        Self {
            io,
            read: 0,
            handshake,
            streams,
            burst: 0,
            draining: None,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for ConnIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(seen) = self.draining {
            let accepted = self.streams.accepted.load(Ordering::Acquire);
            if accepted != seen {
                // Still accepting what the burst opened.
                self.draining = Some(accepted);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.draining = None;
            self.burst = 0;
        } else if self.burst >= READ_BURST_BYTES {
            self.draining = Some(self.streams.accepted.load(Ordering::Acquire));
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if self.streams.poll_room(cx).is_pending() {
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut self.io).poll_read(cx, buf);
        if result.is_pending() {
            self.burst = 0;
            return result;
        }
        let n = buf.filled().len() - before;
        self.burst += n;
        if self.read < PREFACE_BYTES {
            self.read += n as u64;
            if self.read >= PREFACE_BYTES {
                self.handshake.done.store(true, Ordering::Release);
            }
        }
        result
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for ConnIo<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_follows_the_spec() {
        let parse = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("grpc-timeout", value.parse().unwrap());
            grpc_timeout(&headers)
        };
        assert_eq!(parse("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse("9n"), Some(Duration::from_nanos(9)));
        assert_eq!(parse("99999999S"), Some(Duration::from_secs(99_999_999)));
        for bad in ["S", "5", "5x", "123456789S", "-1S", "1.5S"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }

    #[test]
    fn reading_waits_while_too_many_streams_are_in_progress() {
        let streams = Arc::new(StreamCount::new(2));
        let waker = futures::task::noop_waker_ref();
        let mut cx = Context::from_waker(waker);
        let first = streams.opened();
        assert!(streams.poll_room(&mut cx).is_ready());
        let second = streams.opened();
        let third = streams.opened();
        assert!(
            streams.poll_room(&mut cx).is_pending(),
            "3 streams, room for 2"
        );
        drop(third);
        assert!(
            streams.poll_room(&mut cx).is_pending(),
            "still at the limit"
        );
        drop(second);
        assert!(streams.poll_room(&mut cx).is_ready());
        drop(first);
    }

    /// Endless bytes, 8 KiB per read.
    struct Endless;

    impl AsyncRead for Endless {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let n = buf.remaining().min(8192);
            buf.put_slice(&vec![0; n]);
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn after_a_burst_reading_waits_until_every_stream_it_opened_was_accepted() {
        let handshake = Arc::new(Handshake::new_for_tests());
        let streams = Arc::new(StreamCount::new(1 << 20));
        let mut io = ConnIo::new(Endless, handshake.clone(), streams.clone());
        let waker = futures::task::noop_waker_ref();
        let mut cx = Context::from_waker(waker);
        let mut buf = vec![0u8; 8192];
        let mut read = |io: &mut ConnIo<Endless>| {
            let mut buf = ReadBuf::new(&mut buf);
            Pin::new(io).poll_read(&mut cx, &mut buf).is_ready()
        };
        let mut burst = 0;
        while read(&mut io) {
            burst += 8192;
            assert!(burst <= READ_BURST_BYTES + 8192, "read on past the burst");
        }
        assert!(burst >= READ_BURST_BYTES);
        assert!(
            handshake.done.load(Ordering::Acquire),
            "the preface arrived"
        );
        // The server accepts what the burst opened, trying to read before each stream.
        let mut guards = Vec::new();
        for _ in 0..3 {
            guards.push(streams.opened());
            assert!(!read(&mut io), "streams are still being accepted");
        }
        // No stream accepted since the last attempt: the queue is empty, read on.
        assert!(read(&mut io));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_from_the_end_of_its_last_stream() {
        let streams = Arc::new(StreamCount::new(10));
        let first = streams.opened();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(streams.idle_for(), None, "a stream is open");
        let second = streams.opened();
        drop(first);
        assert_eq!(streams.idle_for(), None, "one stream is still open");
        tokio::time::advance(Duration::from_secs(3)).await;
        drop(second);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(streams.idle_for(), Some(Duration::from_secs(2)));
    }
}
