//! The core's defaults, exported as `_native` constants so that the Python
//! API's keyword defaults are these values rather than copies typed by hand.

use blazen_peer_core::client::DEFAULT_CONNECT_TIMEOUT;
use blazen_peer_core::limits::DEFAULT_MAX_JSON_DEPTH;
use blazen_peer_core::server::{
    DEFAULT_MAX_CONCURRENT_RUNS, DEFAULT_MAX_UPLOAD_BYTES, DEFAULT_RUN_TIMEOUT,
};
use blazen_peer_core::session_refs::DEFAULT_LEASE;
use blazen_peer_core::step_policy::{
    DEFAULT_RETRY_BACKOFF, DEFAULT_RETRY_MAX_BACKOFF, DEFAULT_RETRY_MULTIPLIER,
};
use blazen_peer_core::transport::{
    DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_KEEPALIVE_TIMEOUT, DEFAULT_MAX_MESSAGE_BYTES,
    MIN_MAX_MESSAGE_BYTES,
};
use pyo3::prelude::*;

/// Adds `DEFAULT_*` (and `MIN_MAX_MESSAGE_BYTES`) to the module.
pub fn add(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add("DEFAULT_MAX_MESSAGE_BYTES", DEFAULT_MAX_MESSAGE_BYTES)?;
    module.add("MIN_MAX_MESSAGE_BYTES", MIN_MAX_MESSAGE_BYTES)?;
    module.add(
        "DEFAULT_KEEPALIVE_INTERVAL_SECS",
        DEFAULT_KEEPALIVE_INTERVAL.as_secs_f64(),
    )?;
    module.add(
        "DEFAULT_KEEPALIVE_TIMEOUT_SECS",
        DEFAULT_KEEPALIVE_TIMEOUT.as_secs_f64(),
    )?;
    module.add(
        "DEFAULT_CONNECT_TIMEOUT_SECS",
        DEFAULT_CONNECT_TIMEOUT.as_secs_f64(),
    )?;
    module.add(
        "DEFAULT_RUN_TIMEOUT_SECS",
        DEFAULT_RUN_TIMEOUT.as_secs_f64(),
    )?;
    module.add("DEFAULT_LEASE_SECS", DEFAULT_LEASE.as_secs_f64())?;
    module.add("DEFAULT_MAX_CONCURRENT_RUNS", DEFAULT_MAX_CONCURRENT_RUNS)?;
    module.add("DEFAULT_MAX_JSON_DEPTH", DEFAULT_MAX_JSON_DEPTH)?;
    module.add(
        "DEFAULT_RETRY_BACKOFF_SECS",
        DEFAULT_RETRY_BACKOFF.as_secs_f64(),
    )?;
    module.add("DEFAULT_RETRY_MULTIPLIER", DEFAULT_RETRY_MULTIPLIER)?;
    module.add(
        "DEFAULT_RETRY_MAX_BACKOFF_SECS",
        DEFAULT_RETRY_MAX_BACKOFF.as_secs_f64(),
    )?;
    module.add("DEFAULT_MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD_BYTES)?;
    Ok(())
}
