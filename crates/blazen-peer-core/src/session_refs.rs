//! Values that stay on this peer and are fetched or released by key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use uuid::Uuid;

use crate::envelope::RemoteRefDescriptor;

/// One stored value.
#[derive(Debug, Clone)]
pub struct SessionRef {
    /// Encoded value.
    pub bytes: Arc<[u8]>,
    /// Codec name for the bytes.
    pub type_tag: String,
    /// Creation time on this node.
    pub created_at_epoch_ms: u64,
}

/// Session refs by key; shared between a server and in-process workflows.
#[derive(Debug, Default)]
pub struct SessionRefRegistry {
    refs: Mutex<HashMap<Uuid, SessionRef>>,
}

impl SessionRefRegistry {
    /// Stores `bytes` under a fresh key.
    pub fn insert(&self, bytes: Arc<[u8]>, type_tag: impl Into<String>) -> Uuid {
        let key = Uuid::new_v4();
        let created_at_epoch_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|since| since.as_millis() as u64)
            .unwrap_or(0);
        let entry = SessionRef {
            bytes,
            type_tag: type_tag.into(),
            created_at_epoch_ms,
        };
        self.lock().insert(key, entry);
        key
    }

    /// The value under `key`.
    pub fn get(&self, key: &Uuid) -> Option<SessionRef> {
        self.lock().get(key).cloned()
    }

    /// Drops the value; true when it was present.
    pub fn remove(&self, key: &Uuid) -> bool {
        self.lock().remove(key).is_some()
    }

    /// Number of live refs.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no ref is alive.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The wire descriptor of the ref under `key`.
    pub fn descriptor(&self, key: &Uuid, origin_node_id: &str) -> Option<RemoteRefDescriptor> {
        self.lock().get(key).map(|entry| RemoteRefDescriptor {
            origin_node_id: origin_node_id.to_owned(),
            type_tag: entry.type_tag.clone(),
            created_at_epoch_ms: entry.created_at_epoch_ms,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, SessionRef>> {
        // Each operation is one map call, so a poisoned lock holds a valid map.
        self.refs
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}
