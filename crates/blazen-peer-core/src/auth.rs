//! The shared-secret token as both ends name it: where it is read from and
//! how it travels. The server's check of it lives in `server::token_check`.

use tonic::metadata::{Ascii, MetadataValue};

/// Environment variable both sides read their token from by default.
pub const TOKEN_ENV: &str = "BLAZEN_PEER_TOKEN";

/// The `authorization` header value that carries `token`.
pub fn bearer(token: &str) -> Result<MetadataValue<Ascii>, String> {
    format!("Bearer {token}")
        .parse()
        .map_err(|_| "the token must be printable ASCII (it travels as gRPC metadata)".to_owned())
}
