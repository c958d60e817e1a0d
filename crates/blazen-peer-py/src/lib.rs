//! `blazen_peer._native`: the private extension module. It only converts
//! values and maps errors; behaviour lives in `blazen-peer-core`, and the public
//! API in the `blazen_peer` Python package.

mod awaitable;
mod bridge;
mod client;
mod context;
mod defaults;
mod errors;
mod events;
mod gil;
mod inbox;
mod logging;
mod metrics;
mod records;
mod refs;
mod runtime;
mod server;
mod steps;
mod streaming;
mod sync_steps;
mod tls;
mod tracing;
mod workflow;

use pyo3::prelude::*;

#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    logging::install(module.py())?;
    module.add("ENVELOPE_VERSION", blazen_peer_core::ENVELOPE_VERSION)?;
    defaults::add(module)?;
    module.add_class::<events::EventTypesRef>()?;
    module.add_class::<context::RunContextRef>()?;
    module.add_class::<steps::Completion>()?;
    module.add_class::<sync_steps::SyncStepCall>()?;
    module.add_class::<server::PeerServerRef>()?;
    module.add_class::<metrics::ServerMetricsRef>()?;
    module.add_class::<records::RunCounts>()?;
    module.add_class::<records::RefRecord>()?;
    module.add_class::<records::FetchedBytes>()?;
    module.add_class::<records::FetchedSize>()?;
    module.add_class::<records::UploadCounts>()?;
    module.add_class::<refs::RefBuffer>()?;
    module.add_class::<records::RemoteRefEntry>()?;
    module.add_class::<records::CallerIdentity>()?;
    module.add_class::<records::ListedStep>()?;
    module.add_class::<records::ListedWorkflow>()?;
    module.add_class::<records::StepListing>()?;
    module.add_class::<records::WrittenEvent>()?;
    module.add_class::<records::ModelUsageRecord>()?;
    module.add_class::<records::UsageTotals>()?;
    module.add_class::<client::PeerClientRef>()?;
    module.add_class::<client::ResponseRef>()?;
    module.add_class::<streaming::EventStreamRef>()?;
    module.add_class::<workflow::LocalRunRef>()?;
    module.add_class::<refs::SessionRefRegistryRef>()?;
    module.add_class::<awaitable::AbortOnCancel>()?;
    module.add_class::<inbox::LoopInbox>()?;
    module.add_class::<tls::ServerTlsRef>()?;
    module.add_class::<tls::ClientTlsRef>()?;
    module.add_function(wrap_pyfunction!(gil::close_python_gate, module)?)?;
    module.add_function(wrap_pyfunction!(logging::refresh_log_levels, module)?)?;
    module.add_function(wrap_pyfunction!(awaitable::_panic_probe, module)?)?;
    module.add_function(wrap_pyfunction!(steps::register_step, module)?)?;
    module.add_function(wrap_pyfunction!(sync_steps::next_sync_step, module)?)?;
    module.add_function(wrap_pyfunction!(sync_steps::sync_step_worker_left, module)?)?;
    module.add_function(wrap_pyfunction!(steps::unregister_step, module)?)?;
    module.add_function(wrap_pyfunction!(steps::registered_step_ids, module)?)?;
    module.add_function(wrap_pyfunction!(steps::register_workflow, module)?)?;
    module.add_function(wrap_pyfunction!(steps::registered_workflows, module)?)?;
    Ok(())
}
