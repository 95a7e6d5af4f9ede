//! Blobs no record refers to (a process killed between writing a file and recording it, or
//! between forgetting a record and removing its file) are removed once they are older than
//! `orphan_age_secs`: young ones may belong to an upload still being recorded.

use std::collections::HashSet;
use std::time::Duration;

use crate::state::AppState;

/// Every blob key a record refers to: assets, and the backups and versions of the
/// configured clouds.
async fn referenced(state: &AppState) -> anyhow::Result<HashSet<String>> {
    let mut keys: HashSet<String> = state.meta.blob_keys().await?.into_iter().collect();
    for cloud in state.accounts().clouds() {
        keys.extend(super::backup::kept_blobs(state, cloud).await?);
        // Rendered derived images are kept while their record is.
        for d in state.meta.derived_of_cloud(cloud, None).await? {
            keys.insert(crate::delivery::render::derived_key(cloud, &d.id));
        }
    }
    Ok(keys)
}

/// Removes the orphaned blobs; answers how many. Only blobs of configured clouds are
/// considered (blob keys start with the cloud): another cloud's backups are not known here.
pub async fn sweep(state: &AppState) -> anyhow::Result<usize> {
    let age = Duration::from_secs(state.limits.orphan_age_secs);
    let clouds: Vec<String> = state
        .accounts()
        .clouds()
        .iter()
        .map(|c| format!("{c}/"))
        .collect();
    let keys = state.blobs.keys().await?;
    let known = referenced(state).await?;
    let live = super::chunked::live_sessions(state).await?;
    if known.is_empty() && !keys.is_empty() {
        // Files but no record at all: more likely another database than a store of orphans.
        tracing::warn!(
            files = keys.len(),
            "no record refers to any stored file: not sweeping"
        );
        return Ok(0);
    }
    let mut candidates = Vec::new();
    for key in keys {
        if known.contains(&key) || !clouds.iter().any(|c| key.starts_with(c.as_str())) {
            continue;
        }
        // Parts of chunked uploads kept for other instances go with their session; only those
        // of sessions that no longer exist are orphans.
        if let Some(session) = super::chunked::kept_part_session(&key) {
            if live.contains(session) {
                continue;
            }
        }
        // A file that cannot be looked at is left alone (and does not stop the sweep).
        if let Ok(Some(t)) = state.blobs.modified(&key).await {
            if t.elapsed().unwrap_or_default() >= age {
                candidates.push(key);
            }
        }
    }
    if candidates.is_empty() {
        return Ok(0);
    }
    // Read again, after the candidates: a file recorded (or moved to a backup) meanwhile stays.
    let known = referenced(state).await?;
    let mut removed = 0;
    for key in candidates.into_iter().filter(|k| !known.contains(k)) {
        match state.blobs.delete(&key).await {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!(%key, error = %e, "could not remove an orphaned file"),
        }
    }
    Ok(removed)
}
