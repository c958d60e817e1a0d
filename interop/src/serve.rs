//! The crate's own server (`BlazenPeerServer`) with the interop steps.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use blazen_peer::pb::blazen_peer_server::BlazenPeerServer as GrpcService;
use blazen_peer::server::BlazenPeerServer;
use tokio::io::AsyncReadExt;
use tonic::transport::server::TcpIncoming;

/// Node id the server puts in every ref descriptor it hands out.
pub const NODE_ID: &str = "rust-node";

/// Serves on 127.0.0.1:`port` (0 = any free port) until stdin reaches EOF.
pub async fn run(port: u16) -> ExitCode {
    crate::steps::register_all();
    // Bound here, not by `serve(addr)`, so the port is known (and printed)
    // before anyone connects: the tests wait for this line, not for time.
    let incoming = match TcpIncoming::bind(SocketAddr::from(([127, 0, 0, 1], port))) {
        Ok(incoming) => incoming,
        Err(err) => {
            eprintln!("blazen-interop: cannot listen on 127.0.0.1:{port}: {err}");
            return ExitCode::FAILURE;
        }
    };
    let Ok(addr) = incoming.local_addr() else {
        eprintln!("blazen-interop: the listener has no local address");
        return ExitCode::FAILURE;
    };
    let service = GrpcService::new(BlazenPeerServer::new(NODE_ID));
    println!("LISTENING {addr}");
    // A failed flush means nobody reads the line; serving on is still right.
    let _ = std::io::stdout().flush();
    let served = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, stdin_closed())
        .await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("blazen-interop: server failed: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves when stdin reaches end-of-file: the parent closed it or died.
async fn stdin_closed() {
    let mut stdin = tokio::io::stdin();
    let mut buffer = [0u8; 64];
    while let Ok(read) = stdin.read(&mut buffer).await {
        if read == 0 {
            break;
        }
    }
}
