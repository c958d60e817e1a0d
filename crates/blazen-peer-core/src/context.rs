//! Per-run state shared by every step of one run.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use uuid::Uuid;

use crate::envelope::RemoteRefDescriptor;
use crate::event_stream::EventStream;
use crate::session_refs::SessionRefRegistry;
use rustls::pki_types::CertificateDer;

use crate::tls::PeerIdentity;
use crate::trace::TraceContext;
use crate::usage::{RunUsage, UsageEvent};

/// A value stored with `ctx.set`.
#[derive(Clone)]
pub enum StateValue {
    /// UTF-8 JSON text; exported unless the key starts with `_`.
    Json(Vec<u8>),
    /// A host object that never leaves the process (only under `_` keys).
    Opaque(Arc<dyn Any + Send + Sync>),
}

/// Handle to one run's identity, state and cancellation flag; cheap to clone.
#[derive(Clone)]
pub struct RunContext(Arc<Inner>);

struct Inner {
    run_id: Uuid,
    node_id: Arc<str>,
    workflow_name: String,
    state: Mutex<HashMap<String, StateValue>>,
    cancelled: AtomicBool,
    finished: AtomicBool,
    host: Option<Arc<dyn Any + Send + Sync>>,
    session_refs: Arc<SessionRefRegistry>,
    parent_run: Option<Uuid>,
    outliving_refs: Mutex<BTreeMap<Uuid, RemoteRefDescriptor>>,
    caller: OnceLock<Caller>,
    events: OnceLock<EventStream>,
    run_trace: OnceLock<TraceContext>,
    usage: Mutex<RunUsage>,
}

/// Who asked for a run, as far as the transport can tell.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The node id the caller announced (`x-blazen-node-id`); not verified.
    pub node_id: Option<String>,
    /// The caller's TLS client certificate chain, verified by the handshake (mutual TLS).
    pub certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
    /// The W3C trace context the call carried, for the host's tracing.
    pub trace: Option<TraceContext>,
    // Parsed on first use: most steps never look, and calls should not pay for it.
    identity: OnceLock<Option<Arc<PeerIdentity>>>,
}

impl Caller {
    /// A caller as the transport saw it.
    pub fn new(
        node_id: Option<String>,
        certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
    ) -> Self {
        Self {
            node_id,
            certificates,
            trace: None,
            identity: OnceLock::new(),
        }
    }

    /// What the caller's certificate says, under mutual TLS.
    pub fn identity(&self) -> Option<&Arc<PeerIdentity>> {
        self.identity
            .get_or_init(|| {
                self.certificates
                    .as_deref()
                    .and_then(|chain| PeerIdentity::from_chain(chain))
            })
            .as_ref()
    }
}

impl RunContext {
    /// A fresh run on `node_id`. `host` carries what the step host needs per
    /// run (for Python: the event loop that runs async steps).
    pub fn new(
        node_id: Arc<str>,
        workflow_name: impl Into<String>,
        host: Option<Arc<dyn Any + Send + Sync>>,
    ) -> Self {
        Self::with_session_refs(node_id, workflow_name, host, Arc::default(), None)
    }

    /// A fresh run keeping its session refs in `session_refs`, on behalf of `parent_run`.
    pub fn with_session_refs(
        node_id: Arc<str>,
        workflow_name: impl Into<String>,
        host: Option<Arc<dyn Any + Send + Sync>>,
        session_refs: Arc<SessionRefRegistry>,
        parent_run: Option<Uuid>,
    ) -> Self {
        Self(Arc::new(Inner {
            run_id: Uuid::new_v4(),
            node_id,
            workflow_name: workflow_name.into(),
            state: Mutex::new(HashMap::new()),
            cancelled: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            host,
            session_refs,
            parent_run,
            outliving_refs: Mutex::new(BTreeMap::new()),
            caller: OnceLock::new(),
            events: OnceLock::new(),
            run_trace: OnceLock::new(),
            usage: Mutex::new(RunUsage::default()),
        }))
    }

    /// Records who asked for this run; only the first call counts.
    pub fn set_caller(&self, caller: Caller) {
        let _ = self.0.caller.set(caller);
    }

    /// Makes this a streaming run: events steps write go to `events`.
    /// Only the first call counts.
    pub fn attach_event_stream(&self, events: EventStream) {
        let _ = self.0.events.set(events);
    }

    /// Where `write_event_to_stream` sends events; None when nobody streams this run.
    pub fn event_stream(&self) -> Option<&EventStream> {
        self.0.events.get()
    }

    /// Who asked for this run; None for local runs.
    pub fn caller(&self) -> Option<&Caller> {
        self.0.caller.get()
    }

    /// Where this run's session refs live.
    pub fn session_refs(&self) -> &Arc<SessionRefRegistry> {
        &self.0.session_refs
    }

    /// Sets the trace context the run's steps work under (the run's own span,
    /// opened by a tracing observer). Only the first call counts.
    pub fn set_run_trace(&self, trace: TraceContext) {
        let _ = self.0.run_trace.set(trace);
    }

    /// The trace context the run's steps work under: the run's span when a
    /// tracer opened one, else the one the caller sent.
    pub fn run_trace(&self) -> Option<&TraceContext> {
        self.0
            .run_trace
            .get()
            .or_else(|| self.caller()?.trace.as_ref())
    }

    /// The caller's parent run, when the request named one.
    pub fn parent_run(&self) -> Option<Uuid> {
        self.0.parent_run
    }

    /// Refs this run created that outlive it; known once the run finished.
    pub fn outliving_refs(&self) -> BTreeMap<Uuid, RemoteRefDescriptor> {
        self.0
            .outliving_refs
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// Ends the run once: marks it cancelled for lingering sync steps and
    /// settles its session refs (all of them are dropped when it `failed`).
    pub(crate) fn finish(&self, failed: bool) {
        if self.0.finished.swap(true, Ordering::AcqRel) {
            return;
        }
        self.cancel();
        if let Some(events) = self.event_stream() {
            events.close_writers();
        }
        let outliving = self
            .0
            .session_refs
            .finish_run(self.0.run_id, failed, &self.0.node_id);
        *self
            .0
            .outliving_refs
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = outliving;
    }

    /// Counts a usage record a step emitted (`ctx.emit_usage`).
    pub fn record_usage(&self, event: &UsageEvent) {
        self.usage_lock().record(event);
    }

    /// Adds the totals of a sub-run this run delegated to.
    pub fn absorb_usage(&self, sub_run: &RunUsage) {
        self.usage_lock().absorb(sub_run);
    }

    /// The run's usage so far, its sub-runs' included.
    pub fn usage(&self) -> RunUsage {
        self.usage_lock().clone()
    }

    fn usage_lock(&self) -> std::sync::MutexGuard<'_, RunUsage> {
        // Each update is one whole addition: a poisoned lock holds consistent totals.
        self.0
            .usage
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Unique id of this run.
    pub fn run_id(&self) -> Uuid {
        self.0.run_id
    }

    /// Node executing the run.
    pub fn node_id(&self) -> &str {
        &self.0.node_id
    }

    /// Name the run was requested under.
    pub fn workflow_name(&self) -> &str {
        &self.0.workflow_name
    }

    /// The host data given at creation, if it is of type `T`.
    pub fn host<T: Any>(&self) -> Option<&T> {
        self.0.host.as_deref()?.downcast_ref::<T>()
    }

    /// Stores `value` under `key`; JSON under a public key is exported.
    pub fn set(&self, key: impl Into<String>, value: StateValue) {
        self.lock_state().insert(key.into(), value);
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<StateValue> {
        self.lock_state().get(key).cloned()
    }

    /// Every key not starting with `_` whose value is JSON.
    pub fn exported_state(&self) -> BTreeMap<String, Vec<u8>> {
        self.lock_state()
            .iter()
            .filter(|(key, _)| !key.starts_with('_'))
            .filter_map(|(key, value)| match value {
                StateValue::Json(json) => Some((key.clone(), json.clone())),
                StateValue::Opaque(_) => None,
            })
            .collect()
    }

    /// True once the run has ended or was cancelled; long synchronous steps poll it.
    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::Acquire)
    }

    pub(crate) fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::Release);
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, HashMap<String, StateValue>> {
        // A panic while holding this lock cannot leave the map half-written
        // (every operation is a single insert or read), so poisoning is ignored.
        self.0
            .state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}
