//! Sends the core's log records to Python's `logging`, logger `blazen_peer`,
//! with node id, run id, workflow and step as `extra` attributes of each record
//! (pyo3-log's `kv` support). Records come from runtime threads, so each
//! passes the same exit gate as every other entry into Python.

use std::sync::OnceLock;

use blazen_peer_core::log_target::TARGET;
use log::{LevelFilter, Log, Metadata, Record};
use pyo3::prelude::*;
use pyo3_log::{Caching, Logger, ResetHandle};

use crate::gil;

static LEVELS: OnceLock<ResetHandle> = OnceLock::new();

struct GatedLogger(Logger);

impl Log for GatedLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        // Levels are cached, so a disabled record never takes the GIL.
        if self.0.enabled(record.metadata()) {
            gil::while_open(|| self.0.log(record));
        }
    }

    fn flush(&self) {}
}

/// Installs the bridge once per process (module import).
pub fn install(py: Python<'_>) -> PyResult<()> {
    // Only our own target: dependencies' records would cost a GIL hand-off each.
    let logger = Logger::new(py, Caching::LoggersAndLevels)?
        .filter(LevelFilter::Off)
        .filter_target(TARGET.to_owned(), LevelFilter::Trace);
    let levels = logger.reset_handle();
    if log::set_boxed_logger(Box::new(GatedLogger(logger))).is_ok() {
        log::set_max_level(LevelFilter::Trace);
        let _ = LEVELS.set(levels);
    }
    Ok(())
}

/// Forgets cached logger levels, so `setLevel` calls made since take effect
/// (servers and clients call it when they start).
#[pyfunction]
pub fn refresh_log_levels() {
    if let Some(levels) = LEVELS.get() {
        levels.reset();
    }
}
