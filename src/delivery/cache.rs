//! Asset records read by delivery, kept for a moment: a hot delivery URL costs no database
//! round trip. An entry is trusted for two seconds at most and not at all once this process
//! has answered any request that may write (every method but GET, HEAD and OPTIONS, a control
//! call, a finished asynchronous upload): those bump the generation. Only found records are
//! kept, so a new asset is seen at once. On PostgreSQL, which several instances may share, the
//! cache is off: an overwrite by another instance removes the blob a cached record names.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::db::{AssetKey, AssetRecord};

/// How long an entry is trusted.
const FRESH: Duration = Duration::from_secs(2);
/// Entries kept at most (all are dropped when full).
const MAX_ENTRIES: usize = 10_000;

type Entries = HashMap<(String, String, String, String), (u64, Instant, AssetRecord)>;

pub struct RecordCache {
    generation: AtomicU64,
    entries: Mutex<Entries>,
    enabled: bool,
}

impl Default for RecordCache {
    fn default() -> RecordCache {
        RecordCache::new(true)
    }
}

fn key_of(k: &AssetKey) -> (String, String, String, String) {
    (
        k.cloud.clone(),
        k.resource_type.clone(),
        k.delivery_type.clone(),
        k.public_id.clone(),
    )
}

impl RecordCache {
    /// A cache; `enabled: false` keeps nothing.
    pub fn new(enabled: bool) -> RecordCache {
        RecordCache {
            generation: AtomicU64::new(0),
            entries: Mutex::new(HashMap::new()),
            enabled,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        match self.entries.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Something may have been written: nothing cached is trusted any more.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn get(&self, key: &AssetKey) -> Option<AssetRecord> {
        let generation = self.generation.load(Ordering::Acquire);
        let entries = self.lock();
        let (g, at, rec) = entries.get(&key_of(key))?;
        (*g == generation && at.elapsed() < FRESH).then(|| rec.clone())
    }

    /// Keeps a record read at `generation` (the generation before the read: a write during
    /// the read makes it stale at once).
    pub fn put(&self, key: &AssetKey, generation: u64, rec: &AssetRecord) {
        if !self.enabled {
            return;
        }
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(key_of(key), (generation, Instant::now(), rec.clone()));
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}
