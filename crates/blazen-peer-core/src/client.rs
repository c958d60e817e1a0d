//! A client of the peer service over one multiplexed HTTP/2 channel.
//!
//! This module holds the client itself ([`PeerClient`]); the rest is split by
//! what each part is for:
//! - `connect`: [`ClientConfig`] and connecting;
//! - `rpc`: the calls, and how requests are built and replies decoded;
//! - `stream`: the receiving end of a streaming run;
//! - `deref`: fetching session refs, whole or piece by piece into a [`ChunkSink`];
//! - `upload`: storing a value in the peer's session refs (`PutSessionRef`);
//! - `errors`: what a failed call becomes as a [`PeerError`](crate::PeerError).

use tonic::transport::Channel;

use crate::pb::blazen_peer_client::BlazenPeerClient;

mod connect;
mod deref;
mod deref_wire;
mod errors;
mod rpc;
mod stream;
mod upload;

pub use crate::transport::NODE_ID_HEADER;
pub use connect::{ClientConfig, DEFAULT_CONNECT_TIMEOUT};
pub use deref::{ChunkSink, VecSink};
pub use rpc::{CallOptions, Health};
pub use stream::{EventReceiver, StreamMessage};
pub use upload::PutOptions;

/// A connected client; clones share the channel.
#[derive(Clone)]
pub struct PeerClient {
    grpc: BlazenPeerClient<Channel>,
    channel: Channel,
    address: String,
    node_id: String,
    node_header: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    token_header: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    config: ClientConfig,
}

impl PeerClient {
    /// The address given to [`PeerClient::connect`].
    pub fn address(&self) -> &str {
        &self.address
    }

    /// This client's node id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }
}
