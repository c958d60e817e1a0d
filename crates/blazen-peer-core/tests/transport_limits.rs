//! The server's transport limits, driven by raw HTTP/2 and TCP clients that
//! misbehave on purpose: silent and idle connections, connections past the cap,
//! request bodies that declare a large message and stall, streams past the
//! per-connection limit.

use std::alloc::{GlobalAlloc, Layout, System};
use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use blazen_peer_core::event::{BASE_EVENT, START_EVENT, STOP_EVENT};
use blazen_peer_core::registry::StepOutput;
use blazen_peer_core::{
    envelope, ClientConfig, Event, EventTypes, JsonEvent, PeerClient, PeerService, RunContext,
    RunningServer, ServerConfig, Step, StepFailure, StepHandler, StepRegistry,
};
use futures::future::BoxFuture;
use futures::FutureExt;
use hyper::body::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------
// The largest allocation any thread made while tracking: tonic reserving a
// declared message length shows up here as one allocation of that size.
// ---------------------------------------------------------------------------

struct LargestAlloc;

static TRACKING: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

fn note(size: usize) {
    if TRACKING.load(Ordering::Relaxed) {
        LARGEST.fetch_max(size, Ordering::Relaxed);
    }
}

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for LargestAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: LargestAlloc = LargestAlloc;

// ---------------------------------------------------------------------------
// A server with one step
// ---------------------------------------------------------------------------

const MIB: usize = 1024 * 1024;
const INVOKE: &str = "/blazen.peer.v1.BlazenPeer/InvokeSubWorkflow";
/// Generous bound on waits for what must happen (closing, answering); the
/// server's own deadlines in these tests are a fraction of it.
const PATIENCE: Duration = Duration::from_secs(10);

struct Echo;

impl StepHandler for Echo {
    fn invoke(
        &self,
        _ctx: RunContext,
        event: Event,
    ) -> BoxFuture<'static, Result<StepOutput, StepFailure>> {
        async move {
            let input = event.as_json().expect("wire input is JSON").0.clone();
            let mut result = br#"{"result":"#.to_vec();
            result.extend(input);
            result.push(b'}');
            Ok(vec![Event {
                types: EventTypes::new(vec![STOP_EVENT.into(), BASE_EVENT.into()]),
                data: Arc::new(JsonEvent(result)),
            }])
        }
        .boxed()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

async fn start(config: ServerConfig) -> RunningServer {
    let registry = Arc::new(StepRegistry::default());
    let step = Step::new("t::echo", vec![START_EVENT.to_string()], Arc::new(Echo));
    registry.register(step, false, |_| false).unwrap();
    let config = ServerConfig { registry, ..config };
    RunningServer::start(
        PeerService::new("node-t", config),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap()
}

/// A normal call, which must be served within a second whatever else goes on.
async fn assert_serves(server: &RunningServer) {
    let call = async {
        let client = PeerClient::connect(
            &format!("http://{}", server.local_addr()),
            "node-a",
            ClientConfig::default(),
        )
        .await
        .unwrap();
        let request = envelope::request("wf", vec!["t::echo".into()], b"7".to_vec(), Some(10));
        let response = client.invoke(&request).await.unwrap();
        assert_eq!(response.body.error, None);
        assert_eq!(
            response.body.result_json.as_deref().map(|json| &json[..]),
            Some(&b"7"[..])
        );
    };
    tokio::time::timeout(Duration::from_secs(1), call)
        .await
        .expect("a normal call was not served within 1 s");
}

/// Reads until the server closes the connection; the bytes it sent.
async fn read_until_closed(tcp: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the server did not close the connection");
    received
}

/// The frame types in a stream of HTTP/2 frames (after the server's preface).
fn frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let length = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        types.push(bytes[3]);
        bytes = &bytes[(9 + length).min(bytes.len())..];
    }
    types
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const EMPTY_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];
const GOAWAY: u8 = 7;

/// An HTTP/2 client connection driven by the h2 crate.
async fn h2_client(server: &RunningServer) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(server.local_addr()).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    send.ready().await.unwrap()
}

/// Opens a gRPC call whose message declares `declared` bytes and sends the
/// header and `sent` bytes of it, leaving the body open.
async fn stalled_call(
    send: &mut h2::client::SendRequest<Bytes>,
    declared: usize,
    sent: usize,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let request = http::Request::post(format!("http://localhost{INVOKE}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    *send = send.clone().ready().await.unwrap();
    let (response, mut body) = send.send_request(request, false).unwrap();
    let mut data = vec![0u8];
    data.extend_from_slice(&(declared as u32).to_be_bytes());
    data.resize(5 + sent, 1);
    body.reserve_capacity(data.len());
    body.send_data(data.into(), false).unwrap();
    (response, body)
}

/// The grpc-status a call ended with (in its headers or trailers).
async fn grpc_status(response: h2::client::ResponseFuture) -> i32 {
    let response = tokio::time::timeout(PATIENCE, response)
        .await
        .expect("the server did not answer the call")
        .expect("the call failed at the HTTP/2 level");
    let status = |headers: &http::HeaderMap| {
        headers
            .get("grpc-status")
            .map(|value| value.to_str().unwrap().parse::<i32>().unwrap())
    };
    if let Some(code) = status(response.headers()) {
        return code;
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        chunk.unwrap();
    }
    let trailers = body.trailers().await.unwrap().expect("trailers");
    status(&trailers).expect("grpc-status")
}

// ---------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_handshake_deadline() {
    let server = start(ServerConfig {
        handshake_timeout: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let mut silent = TcpStream::connect(server.local_addr()).await.unwrap();
    // Part of the preface is not the preface.
    let mut partial = TcpStream::connect(server.local_addr()).await.unwrap();
    partial.write_all(&PREFACE[..10]).await.unwrap();
    read_until_closed(&mut silent).await;
    read_until_closed(&mut partial).await;
    assert_serves(&server).await;
}

#[tokio::test]
async fn a_connection_that_sent_its_preface_outlives_the_handshake_deadline() {
    let server = start(ServerConfig {
        handshake_timeout: Duration::from_millis(200),
        idle_connection_timeout: Some(Duration::from_secs(2)),
        ..Default::default()
    })
    .await;
    let mut tcp = TcpStream::connect(server.local_addr()).await.unwrap();
    tcp.write_all(PREFACE).await.unwrap();
    tcp.write_all(&EMPTY_SETTINGS).await.unwrap();
    let started = tokio::time::Instant::now();
    let received = read_until_closed(&mut tcp).await;
    // Closed by the idle timeout, gracefully, and not by the handshake deadline.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        frame_types(&received).contains(&GOAWAY),
        "{:?}",
        frame_types(&received)
    );
}

#[tokio::test]
async fn an_idle_connection_is_closed_with_goaway_and_the_client_reconnects() {
    let server = start(ServerConfig {
        idle_connection_timeout: Some(Duration::from_millis(300)),
        ..Default::default()
    })
    .await;
    let mut tcp = TcpStream::connect(server.local_addr()).await.unwrap();
    tcp.write_all(PREFACE).await.unwrap();
    tcp.write_all(&EMPTY_SETTINGS).await.unwrap();
    let received = read_until_closed(&mut tcp).await;
    assert!(
        frame_types(&received).contains(&GOAWAY),
        "{:?}",
        frame_types(&received)
    );

    let client = PeerClient::connect(
        &format!("http://{}", server.local_addr()),
        "node-a",
        ClientConfig::default(),
    )
    .await
    .unwrap();
    let request = envelope::request("wf", vec!["t::echo".into()], b"1".to_vec(), Some(10));
    for _ in 0..3 {
        client.invoke(&request).await.unwrap();
        // Past the idle timeout: the server closed the connection; the next call reconnects.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    client.invoke(&request).await.unwrap();
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_at_once() {
    let server = start(ServerConfig {
        max_connections: 3,
        handshake_timeout: Duration::from_secs(30),
        ..Default::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut tcp = TcpStream::connect(server.local_addr()).await.unwrap();
        // The server's SETTINGS: this connection has a slot.
        let mut settings = [0u8; 9];
        tcp.read_exact(&mut settings).await.unwrap();
        assert_eq!(settings[3], 4, "a SETTINGS frame");
        held.push(tcp);
    }
    for _ in 0..5 {
        let mut refused = TcpStream::connect(server.local_addr()).await.unwrap();
        let received = read_until_closed(&mut refused).await;
        assert!(received.is_empty(), "a refused connection gets nothing");
    }
    // A slot freed is a slot taken again.
    drop(held.pop());
    tokio::time::timeout(PATIENCE, async {
        loop {
            let mut tcp = TcpStream::connect(server.local_addr()).await.unwrap();
            let mut settings = [0u8; 9];
            if tcp.read_exact(&mut settings).await.is_ok() {
                break;
            }
        }
    })
    .await
    .expect("the freed slot was never given to a new connection");
}

#[tokio::test]
async fn at_the_cap_a_connection_silent_for_a_second_makes_room_for_a_new_one() {
    let server = start(ServerConfig {
        max_connections: 4,
        handshake_timeout: Duration::from_secs(30),
        ..Default::default()
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(server.local_addr()).await.unwrap());
    }
    // The server's rule: a connection silent for a second may be evicted.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_serves(&server).await;
    let mut closed = 0;
    for tcp in &mut silent {
        let mut buf = [0u8; 64];
        loop {
            match tokio::time::timeout(Duration::from_millis(50), tcp.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => {
                    closed += 1;
                    break;
                }
                Ok(Ok(_)) => continue,
                Err(_) => break,
            }
        }
    }
    assert!(closed >= 1, "no silent connection made room");
}

// ---------------------------------------------------------------------------
// Request bodies and streams
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_declared_message_length_is_not_reserved_before_it_arrives() {
    let server = start(ServerConfig::default()).await;
    let mut send = h2_client(&server).await;
    LARGEST.store(0, Ordering::Relaxed);
    TRACKING.store(true, Ordering::Relaxed);
    let mut calls = Vec::new();
    for _ in 0..40 {
        calls.push(stalled_call(&mut send, 63 * MIB, 64 * 1024).await);
    }
    // Every body arrived at the server, and a normal call goes through meanwhile.
    assert_serves(&server).await;
    TRACKING.store(false, Ordering::Relaxed);
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(
        largest < 8 * MIB,
        "the server allocated {largest} bytes at once for bodies of 64 KiB declaring 63 MiB"
    );
    drop(calls);
}

#[tokio::test]
async fn a_stalled_body_is_answered_with_deadline_exceeded() {
    let server = start(ServerConfig {
        request_body_timeout: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let mut send = h2_client(&server).await;
    let (response, _body) = stalled_call(&mut send, MIB, 1000).await;
    assert_eq!(
        grpc_status(response).await,
        tonic::Code::DeadlineExceeded as i32
    );
    assert_serves(&server).await;
}

#[tokio::test]
async fn bodies_past_the_buffered_bytes_cap_are_refused_as_busy() {
    let server = start(ServerConfig {
        max_message_bytes: MIB,
        max_buffered_request_bytes: MIB + 64 * 1024,
        ..Default::default()
    })
    .await;
    let mut send = h2_client(&server).await;
    let (_held, _body) = stalled_call(&mut send, MIB, 900 * 1024).await;
    // Let the first body's bytes reach the server before the second's.
    assert_serves(&server).await;
    let (refused, _body) = stalled_call(&mut send, MIB, 500 * 1024).await;
    assert_eq!(
        grpc_status(refused).await,
        tonic::Code::ResourceExhausted as i32
    );
}

#[tokio::test]
async fn streams_past_max_concurrent_streams_wait_their_turn() {
    let server = start(ServerConfig {
        max_concurrent_streams: 2,
        ..Default::default()
    })
    .await;
    let mut send = h2_client(&server).await;
    let mut stalled = Vec::new();
    for _ in 0..2 {
        stalled.push(stalled_call(&mut send, MIB, 10).await);
    }
    tokio::time::timeout(PATIENCE, async {
        while send.current_max_send_streams() != 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the server's SETTINGS never said 2 streams");
    // A third call on the same connection waits for one of the two to end.
    let (waiting, _body) = stalled_call(&mut send, 1, 1).await;
    let early = tokio::time::timeout(Duration::from_millis(300), waiting).await;
    assert!(
        early.is_err(),
        "a third stream was served while two were open"
    );
    drop(stalled);
    assert_serves(&server).await;
}
