//! Transport settings both ends of a connection share: HTTP/2 windows and
//! frame size, the default message limit and keepalive, and the metadata key
//! naming the caller.
//!
//! They live here, not in `server` or `client`, so that neither side imports
//! the other: the client tunes its channel with the same windows the server
//! advertises, and the server reads the header the client writes. `server`
//! and `client` re-export them under their old paths.

use std::time::Duration;

use crate::error::PeerError;

/// Default bound on one gRPC message, both directions.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Smallest message limit either end accepts: below it even small calls fail.
pub const MIN_MAX_MESSAGE_BYTES: usize = 1024;
/// HTTP/2 flow-control windows: large enough that big values stream at memory speed.
pub const STREAM_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
/// Connection-wide HTTP/2 window.
pub const CONNECTION_WINDOW_BYTES: u32 = 32 * 1024 * 1024;
/// Largest HTTP/2 frame we accept: at the 16 KiB default a 1 GiB value takes
/// ~130,000 reads; at 1 MiB, ~1,000.
pub const MAX_FRAME_BYTES: u32 = 1024 * 1024;

/// Default HTTP/2 keepalive: a ping after this much silence on a connection...
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// ...which must be answered within this long, or the connection is dropped.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Metadata key carrying the caller's node id, for the peer's logs.
pub const NODE_ID_HEADER: &str = "x-blazen-node-id";

/// Refuses a message limit below [`MIN_MAX_MESSAGE_BYTES`]; the one check
/// for both the server's and the client's `max_message_bytes`.
pub fn check_max_message_bytes(max_message_bytes: usize) -> Result<(), PeerError> {
    if max_message_bytes < MIN_MAX_MESSAGE_BYTES {
        return Err(PeerError::Validation(format!(
            "max_message_bytes must be at least {MIN_MAX_MESSAGE_BYTES}, got {max_message_bytes}"
        )));
    }
    Ok(())
}
