//! Blobs no record refers to (a process killed between writing a file and recording it, or
//! between forgetting a record and removing its file) are removed once they are older than
//! `orphan_age_secs`: young ones may belong to an upload still being recorded.

use std::collections::HashSet;
use std::time::Duration;

use crate::state::AppState;

/// Removes the orphaned blobs; answers how many.
pub async fn sweep(state: &AppState) -> anyhow::Result<usize> {
    let age = Duration::from_secs(state.limits.orphan_age_secs);
    let mut referenced: HashSet<String> = state.meta.blob_keys().await?.into_iter().collect();
    for cloud in state.accounts.clouds() {
        referenced.extend(super::backup::kept_blobs(state, cloud).await?);
    }
    let mut removed = 0;
    for key in state.blobs.keys().await? {
        if referenced.contains(&key) {
            continue;
        }
        let old = match state.blobs.modified(&key).await? {
            Some(t) => t.elapsed().unwrap_or_default() >= age,
            None => false,
        };
        // Checked again just before removal: it may have been recorded meanwhile.
        if old && !state.meta.blob_keys().await?.contains(&key) {
            state.blobs.delete(&key).await?;
            removed += 1;
        }
    }
    Ok(removed)
}
