//! Values that stay on this peer and are fetched or released by key.
//!
//! Every ref records the run that created it, the parent run that asked for
//! that run (if the caller said), and its lifetime:
//! - `UntilContextDrop` refs die with their run, however it ends;
//! - `UntilParentFinish` refs live until released, until their parent run
//!   finishes, or until their lease runs out — a crashed parent stops renewing;
//! - `UntilExplicitDrop` refs live until released.

use std::any::Any;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use uuid::Uuid;

use crate::envelope::RemoteRefDescriptor;

/// Default lease of `UntilParentFinish` refs.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(300);

/// When a session ref is purged automatically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RefLifetime {
    /// Purged when the run that created it ends.
    #[default]
    UntilContextDrop,
    /// Lives until released, its parent run finishes, or its lease expires.
    UntilParentFinish,
    /// Lives until released.
    UntilExplicitDrop,
}

impl RefLifetime {
    /// Upper-case name, as the Python enum spells it.
    pub fn name(self) -> &'static str {
        match self {
            RefLifetime::UntilContextDrop => "UNTIL_CONTEXT_DROP",
            RefLifetime::UntilParentFinish => "UNTIL_PARENT_FINISH",
            RefLifetime::UntilExplicitDrop => "UNTIL_EXPLICIT_DROP",
        }
    }

    /// Whether refs of this lifetime outlive their run (and are listed in `remote_refs`).
    pub fn outlives_run(self) -> bool {
        self != RefLifetime::UntilContextDrop
    }
}

/// The stored bytes of a ref; hosts keep their own objects behind it (zero-copy).
pub trait RefPayload: Send + Sync + 'static {
    /// The encoded value.
    fn bytes(&self) -> &[u8];
    /// Lets the host recover its own payload type.
    fn as_any(&self) -> &dyn Any;
}

impl RefPayload for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Who a ref belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RefOwner {
    /// The run that created the ref.
    pub run: Option<Uuid>,
    /// The caller's parent run, when the request named one.
    pub parent: Option<Uuid>,
}

/// One stored value.
#[derive(Clone)]
pub struct SessionRef {
    /// The value.
    pub payload: Arc<dyn RefPayload>,
    /// Codec name for the bytes.
    pub type_tag: String,
    /// When it is purged.
    pub lifetime: RefLifetime,
    /// Creation time on this node.
    pub created_at_epoch_ms: u64,
    /// Creating run and parent.
    pub owner: RefOwner,
    lease_until: Option<Instant>,
}

/// What operators see of a live ref.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefInfo {
    /// Key of the ref.
    pub key: Uuid,
    /// Codec name.
    pub type_tag: String,
    /// Size in bytes.
    pub size: usize,
    /// When it is purged.
    pub lifetime: RefLifetime,
    /// Creation time on this node.
    pub created_at_epoch_ms: u64,
    /// The run that created it.
    pub owner_run: Option<Uuid>,
    /// The caller's parent run.
    pub parent_run: Option<Uuid>,
}

/// What [`SessionRefRegistry::usage`] reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefUsage {
    /// Live refs.
    pub refs: usize,
    /// Bytes their values hold.
    pub bytes: usize,
}

/// Session refs by key; shared between a server and in-process workflows.
pub struct SessionRefRegistry {
    refs: Mutex<Refs>,
    lease: Duration,
}

/// The refs and two indexes, so that the operations on every call's path
/// (ending a run, a parent's lease) cost O(their own refs), not O(live refs).
#[derive(Default)]
struct Refs {
    by_key: HashMap<Uuid, SessionRef>,
    by_run: HashMap<Uuid, Vec<Uuid>>,
    // Refs with a lease (`UntilParentFinish`): all that the parent calls and
    // the lease sweep look at.
    leased: HashSet<Uuid>,
    // Kept as refs come and go, so metrics read it without walking every ref.
    bytes: usize,
}

impl Refs {
    fn insert(&mut self, key: Uuid, entry: SessionRef) {
        if let Some(run) = entry.owner.run {
            self.by_run.entry(run).or_default().push(key);
        }
        if entry.lease_until.is_some() {
            self.leased.insert(key);
        }
        self.bytes += entry.payload.bytes().len();
        self.by_key.insert(key, entry);
    }

    fn remove(&mut self, key: &Uuid) -> Option<SessionRef> {
        let entry = self.by_key.remove(key)?;
        self.bytes -= entry.payload.bytes().len();
        self.leased.remove(key);
        if let Some(run) = entry.owner.run {
            if let Some(keys) = self.by_run.get_mut(&run) {
                keys.retain(|other| other != key);
                if keys.is_empty() {
                    self.by_run.remove(&run);
                }
            }
        }
        Some(entry)
    }

    /// Removes the refs whose keys the caller will never learn (those of a
    /// failed run, or listed in a reply that could not be sent): nobody could
    /// fetch or release them. The values are returned, to be freed once the
    /// lock is released.
    fn remove_unlearned<'a>(
        &mut self,
        keys: impl IntoIterator<Item = &'a Uuid>,
    ) -> Vec<SessionRef> {
        keys.into_iter()
            .filter_map(|key| self.remove(key))
            .collect()
    }

    /// Removes the leased refs that match.
    fn remove_leased(&mut self, matches: impl Fn(&SessionRef) -> bool) -> Vec<SessionRef> {
        let keys: Vec<Uuid> = self
            .leased
            .iter()
            .filter(|key| self.by_key.get(key).is_some_and(&matches))
            .copied()
            .collect();
        keys.iter().filter_map(|key| self.remove(key)).collect()
    }
}

impl Default for SessionRefRegistry {
    fn default() -> Self {
        Self::with_lease(DEFAULT_LEASE)
    }
}

impl std::fmt::Debug for SessionRefRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRefRegistry")
            .field("len", &self.lock().by_key.len())
            .field("lease", &self.lease)
            .finish()
    }
}

fn now_epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_millis() as u64)
        .unwrap_or(0)
}

impl SessionRefRegistry {
    /// A registry whose `UntilParentFinish` refs expire `lease` after their last renewal.
    pub fn with_lease(lease: Duration) -> Self {
        Self {
            refs: Mutex::new(Refs::default()),
            lease,
        }
    }

    /// The lease given to `UntilParentFinish` refs.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Stores a value under a fresh key.
    pub fn insert(
        &self,
        payload: Arc<dyn RefPayload>,
        type_tag: impl Into<String>,
        lifetime: RefLifetime,
        owner: RefOwner,
    ) -> Uuid {
        let key = Uuid::new_v4();
        let lease_until =
            (lifetime == RefLifetime::UntilParentFinish).then(|| Instant::now() + self.lease);
        let entry = SessionRef {
            payload,
            type_tag: type_tag.into(),
            lifetime,
            created_at_epoch_ms: now_epoch_ms(),
            owner,
            lease_until,
        };
        self.lock().insert(key, entry);
        key
    }

    /// Stores plain bytes with the default lifetime and no owner.
    pub fn insert_bytes(&self, bytes: Vec<u8>, type_tag: impl Into<String>) -> Uuid {
        self.insert(
            Arc::new(bytes),
            type_tag,
            RefLifetime::UntilExplicitDrop,
            RefOwner::default(),
        )
    }

    /// The value under `key`. Reading does not renew a lease: only the parent
    /// renews it, so polling a crashed parent's ref cannot keep it alive.
    pub fn get(&self, key: &Uuid) -> Option<SessionRef> {
        let mut refs = self.lock();
        let entry = refs.by_key.get(key)?;
        if entry
            .lease_until
            .is_some_and(|until| until <= Instant::now())
        {
            let expired = refs.remove(key);
            drop(refs);
            drop(expired);
            return None;
        }
        Some(entry.clone())
    }

    /// Drops the value; true when it was present.
    pub fn remove(&self, key: &Uuid) -> bool {
        let removed = self.lock().remove(key);
        removed.is_some()
    }

    /// Drops the refs of `keys`, which the caller will never learn: those of
    /// a failed run, or listed in a reply that could not be sent. The one
    /// place this rule lives; values are freed after the lock is released.
    pub(crate) fn drop_unlearned<'a>(&self, keys: impl IntoIterator<Item = &'a Uuid>) {
        let purged = self.lock().remove_unlearned(keys);
        drop(purged);
    }

    /// Number of live refs.
    pub fn len(&self) -> usize {
        self.sweep_expired();
        self.lock().by_key.len()
    }

    /// True when no ref is alive.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by live refs.
    pub fn total_bytes(&self) -> usize {
        self.sweep_expired();
        self.lock().bytes
    }

    /// Refs held and their bytes, without sweeping expired leases first (the
    /// server's sweeper does that): cheap enough for every metrics scrape.
    pub fn usage(&self) -> RefUsage {
        let refs = self.lock();
        RefUsage {
            refs: refs.by_key.len(),
            bytes: refs.bytes,
        }
    }

    /// Every live ref, oldest first.
    pub fn list(&self) -> Vec<RefInfo> {
        self.sweep_expired();
        let mut infos: Vec<RefInfo> = self
            .lock()
            .by_key
            .iter()
            .map(|(key, entry)| RefInfo {
                key: *key,
                type_tag: entry.type_tag.clone(),
                size: entry.payload.bytes().len(),
                lifetime: entry.lifetime,
                created_at_epoch_ms: entry.created_at_epoch_ms,
                owner_run: entry.owner.run,
                parent_run: entry.owner.parent,
            })
            .collect();
        infos.sort_by_key(|info| (info.created_at_epoch_ms, info.key));
        infos
    }

    /// Ends `run`: drops its `UntilContextDrop` refs (all of its refs when `failed`,
    /// since the caller of a failed run never learns their keys) and returns the
    /// descriptors of the refs that outlive it.
    pub fn finish_run(
        &self,
        run: Uuid,
        failed: bool,
        origin_node_id: &str,
    ) -> BTreeMap<Uuid, RemoteRefDescriptor> {
        let mut refs = self.lock();
        let keys = refs.by_run.remove(&run).unwrap_or_default();
        if failed {
            let purged = refs.remove_unlearned(&keys);
            drop(refs);
            drop(purged);
            return BTreeMap::new();
        }
        let mut purged = Vec::new();
        let mut outliving = BTreeMap::new();
        for key in keys {
            let Some(entry) = refs.by_key.get(&key) else {
                continue;
            };
            if !entry.lifetime.outlives_run() {
                purged.extend(refs.remove(&key));
            } else {
                let descriptor = RemoteRefDescriptor {
                    origin_node_id: origin_node_id.to_owned(),
                    type_tag: entry.type_tag.clone(),
                    created_at_epoch_ms: entry.created_at_epoch_ms,
                };
                outliving.insert(key, descriptor);
            }
        }
        drop(refs);
        drop(purged);
        outliving
    }

    /// Releases every `UntilParentFinish` ref of `parent`; returns how many.
    pub fn finish_parent(&self, parent: Uuid) -> usize {
        self.purge_leased(|entry| {
            entry.owner.parent == Some(parent) && entry.lifetime == RefLifetime::UntilParentFinish
        })
    }

    /// Renews the lease of every ref of `parent`; returns how many.
    pub fn renew_parent(&self, parent: Uuid) -> usize {
        let until = Instant::now() + self.lease;
        let mut refs = self.lock();
        let Refs { by_key, leased, .. } = &mut *refs;
        let mut renewed = 0;
        for key in leased.iter() {
            if let Some(entry) = by_key.get_mut(key) {
                if entry.owner.parent == Some(parent) {
                    entry.lease_until = Some(until);
                    renewed += 1;
                }
            }
        }
        renewed
    }

    /// Drops refs whose lease ran out; returns how many.
    pub fn sweep_expired(&self) -> usize {
        let now = Instant::now();
        self.purge_leased(|entry| entry.lease_until.is_some_and(|until| until <= now))
    }

    /// The wire descriptor of the ref under `key`.
    pub fn descriptor(&self, key: &Uuid, origin_node_id: &str) -> Option<RemoteRefDescriptor> {
        self.lock()
            .by_key
            .get(key)
            .map(|entry| RemoteRefDescriptor {
                origin_node_id: origin_node_id.to_owned(),
                type_tag: entry.type_tag.clone(),
                created_at_epoch_ms: entry.created_at_epoch_ms,
            })
    }

    /// Removes matching leased refs. Their payloads are dropped after the lock
    /// is released: a host payload may need the GIL to drop, and a thread
    /// holding the GIL may be waiting for this lock.
    fn purge_leased(&self, matches: impl Fn(&SessionRef) -> bool) -> usize {
        let purged = self.lock().remove_leased(matches);
        purged.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Refs> {
        // Each operation is one map call, so a poisoned lock holds a valid map.
        self.refs
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

#[cfg(test)]
mod tests;
