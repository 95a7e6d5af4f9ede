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
    // An older deleted copy stays restorable as a version.
    if let Some(old) = take(state, &rec.key).await? {
        if old.blob_key != rec.blob_key {
            keep_version(state, &old).await?;
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
    let stored = match state.meta.save_asset(rec.clone(), false).await? {
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

/// Forgets kept copies of an asset (its deleted copy and earlier versions) whose version IDs
/// are listed, or all of them; their files go unless the live asset uses them. Answers the
/// version IDs forgotten.
pub async fn forget(
    state: &AppState,
    cloud: &str,
    asset_id: &str,
    version_ids: &[String],
) -> ApiResult<Vec<String>> {
    let wanted = |r: &AssetRecord| {
        r.asset_id == asset_id && (version_ids.is_empty() || version_ids.contains(&r.version_id))
    };
    let mut gone = Vec::new();
    for (kind, doc) in state
        .meta
        .list_docs(cloud, KIND)
        .await?
        .into_iter()
        .map(|d| (KIND, d))
        .chain(
            state
                .meta
                .list_docs(cloud, VERSIONS)
                .await?
                .into_iter()
                .map(|d| (VERSIONS, d)),
        )
    {
        let Ok(rec) = serde_json::from_value::<AssetRecord>(doc.body) else {
            continue;
        };
        if !wanted(&rec) {
            continue;
        }
        state.meta.delete_doc(cloud, kind, &doc.name).await?;
        let live = state.meta.find_asset(&rec.key).await?;
        if live.is_none_or(|l| l.blob_key != rec.blob_key) {
            let _ = state.blobs.delete(&rec.blob_key).await;
        }
        gone.push(rec.version_id);
    }
    Ok(gone)
}

/// Earlier versions of assets kept by `backup` when they were replaced (documents named
/// `<rt>/<type>/<public_id>/<version_id>`).
const VERSIONS: &str = "version";

fn version_name(key: &AssetKey, version_id: &str) -> String {
    format!("{}/{version_id}", name(key))
}

/// Keeps a replaced version of a backed-up asset (its file stays).
pub async fn keep_version(state: &AppState, rec: &AssetRecord) -> ApiResult<()> {
    let body = serde_json::to_value(rec).map_err(ApiError::internal)?;
    state
        .meta
        .create_doc(
            &rec.key.cloud,
            VERSIONS,
            &version_name(&rec.key, &rec.version_id),
            &body,
            state.now(),
        )
        .await?;
    Ok(())
}

/// The kept earlier versions of an asset and the backup of its deleted copy, newest first.
pub async fn versions(state: &AppState, key: &AssetKey) -> ApiResult<Vec<AssetRecord>> {
    let prefix = format!("{}/", name(key));
    let mut out: Vec<AssetRecord> = state
        .meta
        .list_docs(&key.cloud, VERSIONS)
        .await?
        .into_iter()
        .filter(|d| d.name.starts_with(&prefix))
        .filter_map(|d| serde_json::from_value(d.body).ok())
        .collect();
    if let Some(deleted) = find(state, key).await? {
        out.push(deleted);
    }
    out.sort_by_key(|r| std::cmp::Reverse(r.version));
    Ok(out)
}

/// Makes a kept version of `key` the current one again; the replaced current version is kept
/// in its turn. `None` when there is no such version.
pub async fn restore_version(
    state: &AppState,
    key: &AssetKey,
    version_id: &str,
) -> ApiResult<Option<AssetRecord>> {
    let Some(mut rec) = versions(state, key)
        .await?
        .into_iter()
        .find(|r| r.version_id == version_id)
    else {
        return Ok(None);
    };
    rec.extra.insert("backup".into(), serde_json::json!(true));
    let stored = match state.meta.save_asset(rec.clone(), true).await? {
        SaveOutcome::Created(r) | SaveOutcome::Existing(r) => r,
        SaveOutcome::Replaced { stored, previous } => {
            if previous.blob_key != rec.blob_key {
                keep_version(state, &previous).await?;
            }
            *stored
        }
    };
    state
        .meta
        .delete_doc(&key.cloud, VERSIONS, &version_name(key, version_id))
        .await?;
    if find(state, key)
        .await?
        .is_some_and(|d| d.version_id == version_id)
    {
        state.meta.delete_doc(&key.cloud, KIND, &name(key)).await?;
    }
    Ok(Some(stored))
}

/// The blob keys kept by backups and versions of a cloud.
pub async fn kept_blobs(state: &AppState, cloud: &str) -> ApiResult<Vec<String>> {
    let mut out = Vec::new();
    for kind in [KIND, VERSIONS] {
        for doc in state.meta.list_docs(cloud, kind).await? {
            if let Some(k) = doc.body.get("blob_key").and_then(|v| v.as_str()) {
                out.push(k.to_string());
            }
        }
    }
    Ok(out)
}
