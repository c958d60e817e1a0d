//! Where the core's log records go. Everything logs under one target, which
//! the Python binding routes to the `blazen_peer` logger; each record carries
//! its node id, run id, workflow and step as key-values, so a handler can
//! filter or index on them.

/// The `log` target of every record this crate writes.
pub const TARGET: &str = "blazen_peer";
