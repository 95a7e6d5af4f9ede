//! Backups: an asset uploaded with `backup=true` is kept when deleted (its file and its record,
//! as a `backup` document named by resource type, delivery type and public ID). The Admin API
//! answers it as a placeholder (`bytes: 0`, `placeholder: true`) and `restore` brings it back.

use crate::db::{AssetKey, AssetRecord, SaveOutcome};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

const KIND: &str = "backup";

fn name(key: &AssetKey) -> String {
    format!(
        "{}/{}/{}",
        key.resource_type, key.delivery_type, key.public_id
    )
}

/// Records `rec` as the backup of its key (replacing an older one, whose file goes).
pub async fn keep(state: &AppState, rec: &AssetRecord) -> ApiResult<()> {
    let body = serde_json::to_value(rec).map_err(ApiError::internal)?;
    let n = name(&rec.key);
    if let Some(old) = take(state, &rec.key).await? {
        if old.blob_key != rec.blob_key {
            let _ = state.blobs.delete(&old.blob_key).await;
        }
    }
    state
        .meta
        .create_doc(&rec.key.cloud, KIND, &n, &body, state.now())
        .await?;
    Ok(())
}

/// The backup of a deleted asset, if any.
pub async fn find(state: &AppState, key: &AssetKey) -> ApiResult<Option<AssetRecord>> {
    let Some(doc) = state.meta.get_doc(&key.cloud, KIND, &name(key)).await? else {
        return Ok(None);
    };
    serde_json::from_value(doc.body)
        .map(Some)
        .map_err(|e| ApiError::internal(format!("corrupt backup of {}: {e}", name(key))))
}

async fn take(state: &AppState, key: &AssetKey) -> ApiResult<Option<AssetRecord>> {
    let found = find(state, key).await?;
    if found.is_some() {
        state.meta.delete_doc(&key.cloud, KIND, &name(key)).await?;
    }
    Ok(found)
}

/// What `restore` did for one public ID.
pub enum Restored {
    /// The asset as it now is (it existed, or its backup was stored again).
    Asset(Box<AssetRecord>),
    NoBackup,
}

/// Restores the backup of `key` unless the asset exists.
pub async fn restore(state: &AppState, key: &AssetKey) -> ApiResult<Restored> {
    if let Some(rec) = state.meta.find_asset(key).await? {
        return Ok(Restored::Asset(Box::new(rec)));
    }
    let Some(rec) = find(state, key).await? else {
        return Ok(Restored::NoBackup);
    };
    let stored = match state.meta.save_asset(&rec, false).await? {
        SaveOutcome::Created(r) | SaveOutcome::Existing(r) => r,
        SaveOutcome::Replaced { stored, .. } => *stored,
    };
    if stored.blob_key == rec.blob_key {
        state.meta.delete_doc(&key.cloud, KIND, &name(key)).await?;
    }
    Ok(Restored::Asset(Box::new(stored)))
}

/// The backups of a cloud whose asset IDs are listed.
pub async fn by_asset_ids(
    state: &AppState,
    cloud: &str,
    asset_ids: &[String],
) -> ApiResult<Vec<AssetRecord>> {
    let mut out = Vec::new();
    for doc in state.meta.list_docs(cloud, KIND).await? {
        if let Ok(rec) = serde_json::from_value::<AssetRecord>(doc.body) {
            if asset_ids.contains(&rec.asset_id) {
                out.push(rec);
            }
        }
    }
    Ok(out)
}

/// Forgets the backup of a deleted asset (and its file); false when there was none.
pub async fn forget(state: &AppState, rec: &AssetRecord) -> ApiResult<bool> {
    let Some(kept) = take(state, &rec.key).await? else {
        return Ok(false);
    };
    // The file stays while a live asset still uses it.
    let live = state.meta.find_asset(&kept.key).await?;
    if live.is_none_or(|l| l.blob_key != kept.blob_key) {
        let _ = state.blobs.delete(&kept.blob_key).await;
    }
    Ok(true)
}
