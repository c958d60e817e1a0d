//! `blazen_peer._native`: the private extension module. It only converts
//! values and maps errors; behaviour lives in `blazen-peer-core`, and the public
//! API in the `blazen_peer` Python package.
//!
//! # Where a call crosses threads
//!
//! A round trip between two Python processes (an `async def` caller, an
//! `async def` step) now makes four thread hand-offs besides the two the
//! network makes, where the pure-Rust crate makes none:
//!
//! 1. caller's event loop -> runtime: `awaitable::spawn` queues the call and
//!    wakes the runtime's worker (tokio's driver wake);
//! 2. peer's runtime -> peer's event loop: the step's start is an inbox job,
//!    rung by one byte on a socket the loop watches (`inbox`);
//! 3. peer's event loop -> runtime: the step's outcome goes back through a
//!    oneshot, which wakes the worker to encode and send the reply;
//! 4. caller's runtime -> caller's event loop: the reply is an inbox job too.
//!
//! Each remains because each side has one thread that may run Python (the
//! event loop, which must never block on a socket) and one that drives the
//! sockets (the runtime, which must never wait for the GIL). Measured per
//! call with `/proc/<pid>/task/*/status` (`benches/handoffs.py`), what this
//! design took out:
//!
//! - runtime threads entering Python. Ringing a loop with
//!   `call_soon_threadsafe` meant taking the GIL on a runtime thread, which
//!   waits for the loop's switch interval when the loop is busy and stalls
//!   every task queued behind it; the inbox now rings without the GIL;
//! - the second runtime worker: with two, each crossing woke both (tokio
//!   wakes an idle sibling to steal), about 5 context switches per call per
//!   process instead of 2 (`runtime`);
//! - a turn of the peer's loop: a step hands its outcome over from its own
//!   task instead of a done callback, and on 3.12+ starts eagerly, so a step
//!   that never suspends has replied before its inbox job returns.
//!
//! Evaluated and left: driving a blocking client's call on the calling thread
//! (`Handle::block_on`) keeps the same two crossings (its request still wakes
//! the worker that owns the socket, and the reply still wakes the caller),
//! and skipping tonic's request buffer saves a task poll on the same worker,
//! not a crossing. Running `def` steps on the runtime's one worker would stall
//! every socket behind a slow step; they run on their own threads.

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
