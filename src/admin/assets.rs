//! Admin API calls on sets of assets and by asset ID: related assets, access mode,
//! publishing, updating and destroying by asset ID.

use serde_json::{json, Value as Json};

use super::{resource_json, update_resource, Target};
use crate::auth::Account;
use crate::db::{AssetKey, AssetRecord, ListQuery};
use crate::error::{ApiError, ApiResult};
use crate::form::Params;
use crate::state::AppState;

/// Assets one call changes at most.
const MAX_ASSETS: usize = 1000;

/// The asset with this asset ID.
pub async fn find_by_asset_id(
    state: &AppState,
    cloud: &str,
    asset_id: &str,
) -> ApiResult<Option<AssetRecord>> {
    Ok(state.meta.find_asset_by_id(cloud, asset_id).await?)
}

fn not_found(what: &str) -> ApiError {
    ApiError::NotFound(format!("Resource not found - {what}"))
}

/// `PUT resources/<asset_id>`: the update of `POST resources/:rt/:type/:public_id`.
pub async fn update_by_asset_id(
    state: &AppState,
    account: &Account,
    cloud: &str,
    asset_id: &str,
    params: &Params,
) -> ApiResult<Json> {
    let rec = find_by_asset_id(state, cloud, asset_id)
        .await?
        .ok_or_else(|| not_found(asset_id))?;
    let rest = format!(
        "{}/{}/{}",
        rec.key.resource_type, rec.key.delivery_type, rec.key.public_id
    );
    update_resource(state, account, cloud, &rest, params).await
}

/// `POST asset/destroy` with `asset_id`.
pub async fn destroy_by_asset_id(
    state: &AppState,
    cloud: &str,
    params: &Params,
) -> ApiResult<Json> {
    let id = params.required("asset_id")?;
    let found = match find_by_asset_id(state, cloud, id).await? {
        Some(rec) => crate::upload::delete_asset(state, &rec.key).await?,
        None => false,
    };
    Ok(json!({"result": if found { "ok" } else { "not found" }}))
}

/// An asset named `rt/type/public_id` (as related assets name them) or by asset ID.
async fn resolve(state: &AppState, cloud: &str, name: &str) -> ApiResult<Option<AssetRecord>> {
    let mut parts = name.splitn(3, '/');
    if let (Some(rt), Some(ty), Some(id)) = (parts.next(), parts.next(), parts.next()) {
        let key = AssetKey {
            cloud: cloud.to_string(),
            resource_type: rt.to_string(),
            delivery_type: ty.to_string(),
            public_id: id.to_string(),
        };
        return Ok(state.meta.find_asset(&key).await?);
    }
    find_by_asset_id(state, cloud, name).await
}

/// `POST|DELETE resources/related_assets/<rt>/<type>/<public_id>` (or `/<asset_id>`) with
/// `assets_to_relate` / `assets_to_unrelate`: relations go both ways.
pub async fn relate(
    state: &AppState,
    cloud: &str,
    rest: &str,
    params: &Params,
    add: bool,
) -> ApiResult<Json> {
    let source = resolve(state, cloud, rest)
        .await?
        .ok_or_else(|| not_found(rest))?;
    let field = if add {
        "assets_to_relate"
    } else {
        "assets_to_unrelate"
    };
    let others = params.items(field);
    if others.is_empty() {
        return Err(ApiError::missing(field));
    }
    if others.len() > 10 {
        return Err(ApiError::bad(format!("{field} takes at most 10 assets")));
    }
    let mut success = Vec::new();
    let mut failed = Vec::new();
    for name in others {
        let Some(other) = resolve(state, cloud, &name).await? else {
            failed.push(json!({"message": "asset not found", "code": "invalid_asset", "asset": name, "status": 404}));
            continue;
        };
        if other.asset_id == source.asset_id {
            failed.push(json!({"message": "an asset cannot be related to itself", "code": "invalid_asset", "asset": name, "status": 400}));
            continue;
        }
        for (rec, peer) in [(&source, &other.asset_id), (&other, &source.asset_id)] {
            let peer = peer.clone();
            let change = move |r: &mut AssetRecord| {
                let mut list: Vec<Json> = r
                    .extra
                    .get("related")
                    .and_then(Json::as_array)
                    .cloned()
                    .unwrap_or_default();
                list.retain(|v| v.as_str() != Some(peer.as_str()));
                if add {
                    list.push(json!(peer));
                }
                if list.is_empty() {
                    r.extra.remove("related");
                } else {
                    r.extra.insert("related".into(), Json::Array(list));
                }
            };
            state.meta.modify_asset(&rec.key, &change).await?;
        }
        success.push(
            json!({"message": "success", "code": "success_ids", "asset": name, "status": 200}),
        );
    }
    Ok(json!({"success": success, "failed": failed}))
}

/// `related_assets` of a resource answer (with `related=true`).
pub async fn related_json(state: &AppState, rec: &AssetRecord) -> ApiResult<Json> {
    let ids: Vec<String> = rec
        .extra
        .get("related")
        .and_then(Json::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if ids.is_empty() {
        return Ok(json!([]));
    }
    let mut out = Vec::new();
    for id in ids.iter().take(MAX_ASSETS) {
        if let Some(r) = find_by_asset_id(state, &rec.key.cloud, id).await? {
            out.push(json!({
                "asset_id": r.asset_id,
                "public_id": r.key.public_id,
                "resource_type": r.key.resource_type,
                "type": r.key.delivery_type,
            }));
        }
    }
    Ok(Json::Array(out))
}

/// The assets of `rt/type` chosen by `public_ids`, `prefix` or `tag`.
async fn chosen(
    state: &AppState,
    cloud: &str,
    rt: &str,
    ty: &str,
    params: &Params,
) -> ApiResult<Vec<AssetRecord>> {
    let ids = params.items("public_ids");
    if !ids.is_empty() {
        let mut out = Vec::new();
        for id in ids.iter().take(MAX_ASSETS) {
            let key = AssetKey {
                cloud: cloud.to_string(),
                resource_type: rt.to_string(),
                delivery_type: ty.to_string(),
                public_id: id.clone(),
            };
            if let Some(r) = state.meta.find_asset(&key).await? {
                out.push(r);
            }
        }
        return Ok(out);
    }
    let (prefix, tag) = (params.nonempty("prefix"), params.nonempty("tag"));
    if prefix.is_none() && tag.is_none() {
        return Err(ApiError::missing("public_ids, prefix or tag"));
    }
    let q = ListQuery {
        cloud: cloud.to_string(),
        resource_type: Some(rt.to_string()),
        delivery_type: Some(ty.to_string()),
        prefix: prefix.map(str::to_string),
        tag: tag.map(str::to_string),
        max_results: MAX_ASSETS as i64,
        ..Default::default()
    };
    Ok(state.meta.list_assets(&q).await?.0)
}

async fn set_access_mode(state: &AppState, rec: &AssetRecord, mode: &str) -> ApiResult<()> {
    let mode = mode.to_string();
    let change = move |r: &mut AssetRecord| {
        r.extra.insert("access_mode".into(), json!(mode));
    };
    state.meta.modify_asset(&rec.key, &change).await?;
    Ok(())
}

/// `POST resources/:rt/:type/update_access_mode` (`access_mode` public or authenticated;
/// `public_ids`, `prefix` or `tag`).
pub async fn update_access_mode(
    state: &AppState,
    cloud: &str,
    rt: &str,
    ty: &str,
    params: &Params,
) -> ApiResult<Json> {
    let mode = params.required("access_mode")?;
    if mode != "public" && mode != "authenticated" {
        return Err(ApiError::bad(format!(
            "Invalid access_mode {mode}: must be public or authenticated"
        )));
    }
    let mut updated = Vec::new();
    for rec in chosen(state, cloud, rt, ty, params).await? {
        set_access_mode(state, &rec, mode).await?;
        updated.push(json!({"public_id": rec.key.public_id, "access_mode": mode}));
    }
    Ok(json!({"updated": updated, "failed": []}))
}

/// `POST resources/:rt/publish_resources` (`public_ids`, `prefix` or `tag`; `type`): the
/// assets become public.
pub async fn publish(
    state: &AppState,
    account: &Account,
    cloud: &str,
    rt: &str,
    params: &Params,
) -> ApiResult<Json> {
    let ty = params.nonempty("type").unwrap_or("upload");
    let mut published = Vec::new();
    for rec in chosen(state, cloud, rt, ty, params).await? {
        set_access_mode(state, &rec, "public").await?;
        let mut fresh = rec.clone();
        fresh.extra.insert("access_mode".into(), json!("public"));
        published.push(resource_json(state, account, &fresh).await?);
    }
    Ok(json!({"published": published, "failed": []}))
}

/// `POST resources/restore` with `asset_ids`: each answered by its asset ID.
pub async fn restore_by_asset_ids(
    state: &AppState,
    account: &Account,
    cloud: &str,
    params: &Params,
) -> ApiResult<Json> {
    let ids = params.items("asset_ids");
    if ids.is_empty() {
        return Err(ApiError::missing("asset_ids"));
    }
    let backups = crate::upload::backup::by_asset_ids(state, cloud, &ids).await?;
    let mut out = serde_json::Map::new();
    for id in ids.iter().take(MAX_ASSETS) {
        let answer = match find_by_asset_id(state, cloud, id).await? {
            Some(rec) => resource_json(state, account, &rec).await?,
            None => match backups.iter().find(|b| b.asset_id == *id) {
                Some(b) => match crate::upload::backup::restore(state, &b.key).await? {
                    crate::upload::backup::Restored::Asset(rec) => {
                        resource_json(state, account, &rec).await?
                    }
                    crate::upload::backup::Restored::NoBackup => json!({"error": "no_backup"}),
                },
                None => json!({"error": "no_backup"}),
            },
        };
        out.insert(id.clone(), answer);
    }
    Ok(Json::Object(out))
}

/// `DELETE resources/backup/<asset_id>` (`version_ids`, else all): forgets kept copies.
pub async fn delete_backup(
    state: &AppState,
    cloud: &str,
    asset_id: &str,
    params: &Params,
) -> ApiResult<Json> {
    let versions = params.items("version_ids");
    let deleted = crate::upload::backup::forget(state, cloud, asset_id, &versions).await?;
    if deleted.is_empty() {
        return Err(ApiError::NotFound(format!("No backup of asset {asset_id}")));
    }
    Ok(json!({"asset_id": asset_id, "deleted_version_ids": deleted}))
}

/// Routes the POST forms of `resources/…` that are not an update of one asset.
pub async fn special_post(
    state: &AppState,
    account: &Account,
    cloud: &str,
    rest: &str,
    params: &Params,
) -> ApiResult<Option<Json>> {
    let rest = rest.trim_matches('/');
    match rest {
        "restore" => {
            return restore_by_asset_ids(state, account, cloud, params)
                .await
                .map(Some)
        }
        "visual_search" => {
            return Err(ApiError::bad(
                "Visual search (visual_search) is not enabled for this product environment",
            ))
        }
        _ => {}
    }
    if let Some(target) = rest.strip_suffix("/update_access_mode") {
        if let Target::List { rt, ty } = super::parse_target(target)? {
            let ty = ty.unwrap_or_else(|| "upload".into());
            return update_access_mode(state, cloud, &rt, &ty, params)
                .await
                .map(Some);
        }
    }
    if let Some(rt) = rest.strip_suffix("/publish_resources") {
        if let Target::List { rt, ty: None } = super::parse_target(rt)? {
            return publish(state, account, cloud, &rt, params).await.map(Some);
        }
    }
    Ok(None)
}
