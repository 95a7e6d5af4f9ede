//! The Admin API calls SDK users make around uploads: `ping`, `config`, listing and reading
//! resources, and deleting them. HTTP Basic `api_key:api_secret` only (an Upload API signature
//! is not accepted here).

pub mod assets;
pub mod expression;
pub mod mappings;
pub mod plan;
pub mod search;
pub mod streaming;
pub mod transformations;
use serde_json::{json, Map, Value as Json};

use crate::auth::{basic_auth, bearer_auth, Account};
use crate::db::query::{Cond, Filter, NumExpr, SortExpr, TextCol};
use crate::db::{AssetKey, AssetRecord, ListQuery};
use crate::delivery;
use crate::error::{ApiError, ApiResult};
use crate::form::Params;
use crate::state::AppState;
use crate::util::iso_time;

/// Resource types the Admin API lists.
const RESOURCE_TYPES: &[&str] = &["image", "video", "raw"];
/// Deletions answered in one call at most (Cloudinary's limit); more gives `partial`.
const DELETE_BATCH: i64 = 1000;

/// Checks the Basic credentials of an Admin API call.
pub fn authenticate(
    state: &AppState,
    cloud: &str,
    authorization: Option<&str>,
) -> ApiResult<std::sync::Arc<Account>> {
    if !state.accounts().has_cloud(cloud) {
        return Err(ApiError::Unauthorized(format!(
            "Invalid cloud_name {cloud}"
        )));
    }
    if let Some(account) = basic_auth(&state.accounts(), cloud, authorization)? {
        return Ok(account);
    }
    match bearer_auth(&state.accounts(), cloud, authorization)? {
        Some(account) => Ok(account),
        None => Err(ApiError::Unauthorized(
            "Must supply api_key (Admin API calls use HTTP Basic credentials or an OAuth token)"
                .into(),
        )),
    }
}

pub fn ping() -> Json {
    json!({"status": "ok"})
}

/// `GET resources`: the resource types that have assets.
pub async fn resource_types(state: &AppState, cloud: &str) -> ApiResult<Json> {
    let mut types = Vec::new();
    for rt in RESOURCE_TYPES {
        let q = ListQuery {
            cloud: cloud.to_string(),
            resource_type: Some(rt.to_string()),
            max_results: 1,
            ..Default::default()
        };
        if !state.meta.list_assets(&q).await?.0.is_empty() {
            types.push(*rt);
        }
    }
    Ok(json!({"resource_types": types}))
}

/// `GET config`: the cloud name; the settings with `settings=true`.
pub fn config(cloud: &str, params: &Params) -> Json {
    let mut m = Map::new();
    m.insert("cloud_name".into(), json!(cloud));
    if wants(params, "settings") {
        m.insert("settings".into(), json!({"folder_mode": "dynamic"}));
    }
    Json::Object(m)
}

/// The asset object of the Admin API (`tags`/`context` only when present and wanted).
pub fn asset_json(
    state: &AppState,
    account: &Account,
    rec: &AssetRecord,
    with_tags: bool,
    with_context: bool,
) -> Json {
    let mut m = Map::new();
    m.insert("asset_id".into(), json!(rec.asset_id));
    m.insert("public_id".into(), json!(rec.key.public_id));
    if rec.key.resource_type != "raw" {
        if let Some(f) = &rec.format {
            m.insert("format".into(), json!(f));
        }
    }
    m.insert("version".into(), json!(rec.version));
    m.insert("resource_type".into(), json!(rec.key.resource_type));
    m.insert("type".into(), json!(rec.key.delivery_type));
    m.insert("created_at".into(), json!(iso_time(rec.created_at)));
    m.insert("bytes".into(), json!(rec.bytes));
    if rec.key.resource_type != "raw" {
        if let (Some(w), Some(h)) = (rec.width, rec.height) {
            m.insert("width".into(), json!(w));
            m.insert("height".into(), json!(h));
        }
    }
    m.insert("asset_folder".into(), json!(rec.asset_folder));
    m.insert("display_name".into(), json!(rec.display_name));
    let url = delivery::asset_url(
        &state.public_url,
        rec,
        &account.api_secret,
        account.algorithm,
    );
    m.insert("url".into(), json!(url));
    m.insert("secure_url".into(), json!(state.secure_url(&url)));
    m.insert(
        "access_mode".into(),
        rec.extra
            .get("access_mode")
            .cloned()
            .unwrap_or_else(|| json!("public")),
    );
    m.insert("placeholder".into(), json!(false));
    if with_tags && !rec.tags.is_empty() {
        let mut tags = rec.tags.clone();
        tags.sort();
        m.insert("tags".into(), json!(tags));
    }
    if with_context && !rec.context.is_empty() {
        m.insert("context".into(), json!({"custom": rec.context}));
    }
    Json::Object(m)
}

/// The single-resource object: the asset with its tags, context and derived versions.
pub(crate) async fn resource_json(
    state: &AppState,
    account: &Account,
    rec: &AssetRecord,
) -> ApiResult<Json> {
    let mut one = asset_json(state, account, rec, true, true);
    // The details Cloudinary's single-resource answer carries beside the listing fields.
    one["etag"] = json!(rec.etag);
    one["uploaded_at"] = json!(iso_time(rec.created_at));
    one["status"] = json!("active");
    if let (Some(w), Some(h)) = (rec.width, rec.height) {
        if rec.key.resource_type != "raw" {
            one["pixels"] = json!(w.saturating_mul(h));
            if h > 0 {
                one["aspect_ratio"] =
                    json!(((w as f64 / h as f64) * 100_000.0).round() / 100_000.0);
            }
        }
    }
    if let Some(p) = rec.pages {
        one["pages"] = json!(p);
    }
    let backed_up = rec.extra.get("backup") == Some(&json!(true));
    one["backup_bytes"] = json!(if backed_up { rec.bytes } else { 0 });
    one["usage"] = json!({});
    if let Some(m) = rec.extra.get("moderation") {
        one["moderation"] = m.clone();
    }
    if !rec.metadata.is_empty() {
        let fields = crate::metadata::field_map(state, &rec.key.cloud).await?;
        let visible = crate::metadata::visible(&rec.metadata, &fields);
        if !visible.is_empty() {
            one["metadata"] = Json::Object(visible);
        }
    }
    let derived = state.meta.list_derived(&rec.asset_id).await?;
    let signer = crate::upload::response::ResponseSigner {
        secret: account.api_secret.clone(),
        algorithm: account.algorithm,
        api_key: Some(account.api_key.clone()),
    };
    one["derived"] = crate::upload::eager::derived_json(state, rec, &derived, &signer);
    Ok(one)
}

/// Removes the stored bytes of derived images whose records are gone.
pub(crate) async fn forget_derived_blobs(state: &AppState, cloud: &str, ids: &[String]) {
    for id in ids {
        let key = crate::delivery::render::derived_key(cloud, id);
        state.renders.forget(&key);
        if let Err(e) = state.blobs.delete(&key).await {
            tracing::warn!(error = %e, %key, "could not remove a derived image");
        }
    }
}

/// `DELETE derived_resources` with `derived_resource_ids[]`.
pub async fn delete_derived(state: &AppState, cloud: &str, params: &Params) -> ApiResult<Json> {
    let ids = params.items("derived_resource_ids");
    if ids.is_empty() {
        return Err(ApiError::missing("derived_resource_ids"));
    }
    let gone = state.meta.delete_derived(cloud, None, &ids).await?;
    forget_derived_blobs(state, cloud, &gone).await;
    let deleted: Map<String, Json> = ids
        .iter()
        .map(|id| {
            let status = if gone.contains(id) {
                "deleted"
            } else {
                "not_found"
            };
            (id.clone(), json!(status))
        })
        .collect();
    Ok(json!({ "deleted": deleted }))
}

fn wants(params: &Params, name: &str) -> bool {
    params
        .text(name)
        .and_then(crate::util::parse_bool)
        .unwrap_or(false)
}

/// A page of an in-memory list: `max_results` (default 10, at most 500) items from the
/// `next_cursor` offset, answered under `key` with the next cursor when more remain.
pub(crate) fn offset_page(items: Vec<Json>, key: &str, params: &Params) -> Json {
    let max = params
        .nonempty("max_results")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(10)
        .clamp(1, 500);
    let start = params
        .nonempty("next_cursor")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let total = items.len();
    let page: Vec<Json> = items.into_iter().skip(start).take(max).collect();
    let mut m = Map::new();
    m.insert(key.into(), Json::Array(page));
    if start.saturating_add(max) < total {
        m.insert("next_cursor".into(), json!((start + max).to_string()));
    }
    Json::Object(m)
}

/// A name of an account setting (transformation, streaming profile): letters, digits and
/// `extra`, at most 255 characters.
pub(crate) fn valid_name(name: &str, extra: &[char]) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
}

/// With `metadata=true`, every listed asset carries its structured metadata (`{}` when none).
async fn add_metadata(
    state: &AppState,
    cloud: &str,
    params: &Params,
    records: &[AssetRecord],
    out: &mut [Json],
) -> ApiResult<()> {
    if !wants(params, "metadata") {
        return Ok(());
    }
    let fields = crate::metadata::field_map(state, cloud).await?;
    for (rec, item) in records.iter().zip(out.iter_mut()) {
        item["metadata"] = Json::Object(crate::metadata::visible(&rec.metadata, &fields));
    }
    Ok(())
}

fn check_rt(rt: &str) -> ApiResult<()> {
    if RESOURCE_TYPES.contains(&rt) {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!("Invalid resource type {rt}")))
    }
}

/// What a `resources/...` path names.
enum Target {
    /// `resources/:rt[/:type]`
    List { rt: String, ty: Option<String> },
    /// `resources/:rt/tags/:tag`
    Tag { rt: String, tag: String },
    /// `resources/:rt/context` (with `key` and optional `value`)
    Context { rt: String },
    /// `resources/:rt/moderations/:kind/:status`
    Moderation {
        rt: String,
        kind: String,
        status: String,
    },
    /// `resources/:rt/:type/:public_id`
    One {
        key_rt: String,
        ty: String,
        public_id: String,
    },
}

/// Asset IDs are 32 lowercase hex digits (never a resource type).
fn is_asset_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn parse_target(rest: &str) -> ApiResult<Target> {
    let segs: Vec<&str> = rest.trim_matches('/').splitn(3, '/').collect();
    let rt = segs.first().copied().unwrap_or("").to_string();
    check_rt(&rt)?;
    Ok(match segs.as_slice() {
        [_] => Target::List { rt, ty: None },
        [_, "context"] => Target::Context { rt },
        [_, ty] => Target::List {
            rt,
            ty: Some(ty.to_string()),
        },
        [_, "tags", tag] => Target::Tag {
            rt,
            tag: tag.to_string(),
        },
        [_, "moderations", rest] => {
            let (kind, status) = rest
                .split_once('/')
                .filter(|(k, s)| !k.is_empty() && !s.is_empty() && !s.contains('/'))
                .ok_or_else(|| ApiError::NotFound(format!("No such resource path: {rest}")))?;
            Target::Moderation {
                rt,
                kind: kind.to_string(),
                status: status.to_string(),
            }
        }
        [_, ty, public_id] => Target::One {
            key_rt: rt,
            ty: ty.to_string(),
            public_id: public_id.to_string(),
        },
        _ => return Err(ApiError::NotFound(format!("No such resource path: {rest}"))),
    })
}

/// `yyyy-mm-dd hh:mm:ss` (UTC, as the SDKs document), ISO 8601, or Unix seconds.
fn parse_time(v: &str) -> Option<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(v) {
        return Some(t.timestamp());
    }
    for fmt in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(v, fmt) {
            return Some(t.and_utc().timestamp());
        }
        if let Ok(d) = chrono::NaiveDate::parse_from_str(v, fmt) {
            return d.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp());
        }
    }
    // Node's SDK sends a `Date` as JavaScript prints it: `Sun Nov 29 2026 16:35:45 GMT+0000 (…)`.
    let js = v.split(" (").next().unwrap_or(v);
    if let Ok(t) = chrono::DateTime::parse_from_str(js, "%a %b %d %Y %H:%M:%S GMT%z") {
        return Some(t.timestamp());
    }
    v.parse::<i64>().ok()
}

fn page_query(cloud: &str, params: &Params) -> ApiResult<ListQuery> {
    let max_results = match params.nonempty("max_results") {
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=500).contains(n))
            .ok_or_else(|| ApiError::bad(format!("Invalid max_results {v}: must be 1 to 500")))?,
        None => 10,
    };
    let ascending = match params.nonempty("direction") {
        None => false,
        Some(d) if d.eq_ignore_ascii_case("asc") || d == "1" => true,
        Some(d) if d.eq_ignore_ascii_case("desc") || d == "-1" => false,
        Some(d) => {
            return Err(ApiError::bad(format!(
                "Invalid direction {d}: must be asc or desc"
            )))
        }
    };
    let start_at = match params.nonempty("start_at") {
        None => None,
        Some(v) => Some(parse_time(v).ok_or_else(|| {
            ApiError::bad(format!(
                "Invalid start_at {v}: expected yyyy-mm-dd hh:mm:ss or an ISO 8601 time"
            ))
        })?),
    };
    Ok(ListQuery {
        cloud: cloud.to_string(),
        max_results,
        cursor: params.nonempty("next_cursor").map(str::to_string),
        ascending,
        start_at,
        ..Default::default()
    })
}

/// `GET resources/...`: a listing or one asset.
pub async fn get_resources(
    state: &AppState,
    account: &Account,
    cloud: &str,
    rest: &str,
    params: &Params,
) -> ApiResult<Json> {
    match rest.trim_matches('/') {
        "search" => return search::search(state, account, cloud, params).await,
        "by_asset_ids" => return search::by_asset_ids(state, account, cloud, params).await,
        "by_asset_folder" => return search::by_asset_folder(state, account, cloud, params).await,
        id if is_asset_id(id) => {
            // By asset ID: the same answer (and options) as by public ID.
            let rec = assets::find_by_asset_id(state, cloud, id)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("Resource not found - {id}")))?;
            let by_id = format!(
                "{}/{}/{}",
                rec.key.resource_type, rec.key.delivery_type, rec.key.public_id
            );
            return Box::pin(get_resources(state, account, cloud, &by_id, params)).await;
        }
        _ => {}
    }
    let target = parse_target(rest)?;
    let mut q = page_query(cloud, params)?;
    match target {
        Target::One {
            key_rt,
            ty,
            public_id,
        } => {
            let key = AssetKey {
                cloud: cloud.to_string(),
                resource_type: key_rt,
                delivery_type: ty,
                public_id: public_id.clone(),
            };
            let Some(rec) = state.meta.find_asset(&key).await? else {
                // A deleted asset with a backup is answered as a placeholder.
                let rec = crate::upload::backup::find(state, &key)
                    .await?
                    .ok_or_else(|| {
                        ApiError::NotFound(format!("Resource not found - {public_id}"))
                    })?;
                let mut one = asset_json(state, account, &rec, false, false);
                one["bytes"] = json!(0);
                one["placeholder"] = json!(true);
                one["backup"] = json!(true);
                return Ok(one);
            };
            let mut one = resource_json(state, account, &rec).await?;
            let stored = |name: &str| rec.extra.get(name).cloned().unwrap_or_else(|| json!([]));
            if wants(params, "faces") {
                one["faces"] = stored("face_coordinates");
            }
            let wanted: Vec<&str> = [
                ("colors", "colors"),
                ("colors", "predominant"),
                ("phash", "phash"),
            ]
            .iter()
            .filter(|(flag, _)| wants(params, flag))
            .map(|(_, key)| *key)
            .collect();
            if !wanted.is_empty() {
                let computed = if wanted.iter().all(|k| rec.extra.contains_key(*k)) {
                    Map::new()
                } else {
                    analysis_of(state, &rec).await?
                };
                for k in wanted {
                    one[k] = rec
                        .extra
                        .get(k)
                        .or(computed.get(k))
                        .cloned()
                        .unwrap_or(Json::Null);
                }
            }
            if wants(params, "image_metadata")
                || wants(params, "media_metadata")
                || wants(params, "exif")
            {
                one["image_metadata"] = search::image_metadata_of(&rec);
            }
            if wants(params, "versions") {
                let mut list = vec![version_json(&rec, false)];
                for v in crate::upload::backup::versions(state, &rec.key).await? {
                    list.push(version_json(&v, true));
                }
                one["versions"] = Json::Array(list);
            }
            if wants(params, "related") {
                one["related_assets"] = assets::related_json(state, &rec).await?;
            }
            if wants(params, "coordinates") {
                one["coordinates"] = json!({
                    "faces": stored("face_coordinates"),
                    "custom": stored("custom_coordinates"),
                });
            }
            return Ok(one);
        }
        Target::List { rt, ty } => {
            q.resource_type = Some(rt);
            q.delivery_type = ty;
            q.prefix = params.nonempty("prefix").map(str::to_string);
            let mut ids = params.items("public_ids");
            // One value with commas: the comma-joined form (clients generated from
            // Cloudinary's OpenAPI description send the list so).
            if ids.len() == 1 && ids[0].contains(',') {
                ids = ids[0]
                    .split(',')
                    .map(|i| i.trim().to_string())
                    .filter(|i| !i.is_empty())
                    .collect();
            }
            if !ids.is_empty() {
                q.public_ids = Some(ids);
                q.max_results = 1000;
            }
        }
        Target::Tag { rt, tag } => {
            q.resource_type = Some(rt);
            q.tag = Some(tag);
        }
        Target::Context { rt } => {
            return by_context(state, account, cloud, &rt, params, q.max_results).await;
        }
        Target::Moderation { rt, kind, status } => {
            let filter = candidates(&rt, TextCol::ExtraJson, "moderation");
            let records =
                first_matching(state, cloud, filter, q.max_results.max(0) as usize, |r| {
                    let m = r.extra.get("moderation").and_then(|m| m.get(0));
                    m.is_some_and(|m| m["kind"] == json!(kind) && m["status"] == json!(status))
                })
                .await?;
            let with_context = wants(params, "context");
            return listing(state, account, cloud, params, &records, None, with_context).await;
        }
    }
    let (records, cursor) = state.meta.list_assets(&q).await.map_err(|e| match e {
        crate::db::DbError::Corrupt(msg) if msg.starts_with("invalid cursor") => ApiError::bad(msg),
        other => other.into(),
    })?;
    let with_context = wants(params, "context");
    listing(
        state,
        account,
        cloud,
        params,
        &records,
        cursor,
        with_context,
    )
    .await
}

/// A page of listed assets as the Admin API answers it (`tags`, `metadata`, `moderations`
/// when asked for; `context` when `with_context`).
async fn listing(
    state: &AppState,
    account: &Account,
    cloud: &str,
    params: &Params,
    records: &[AssetRecord],
    cursor: Option<String>,
    with_context: bool,
) -> ApiResult<Json> {
    // `fields`: only those (and the identifying ones, which always come back); naming `tags`
    // or `context` brings them as `tags=true`/`context=true` would.
    let fields: Vec<String> = params
        .items("fields")
        .iter()
        .flat_map(|f| f.split(','))
        .map(|f| f.trim().to_string())
        .filter(|f| !f.is_empty())
        .collect();
    let named = |f: &str| fields.iter().any(|x| x == f);
    let with_tags = wants(params, "tags") || named("tags");
    let with_context = with_context || named("context");
    let mut resources: Vec<Json> = records
        .iter()
        .map(|r| asset_json(state, account, r, with_tags, with_context))
        .collect();
    add_metadata(state, cloud, params, records, &mut resources).await?;
    if wants(params, "moderations") {
        for (r, item) in records.iter().zip(resources.iter_mut()) {
            if let Some(m) = r.extra.get("moderation") {
                item["moderation"] = m.clone();
            }
        }
    }
    if !fields.is_empty() {
        for item in resources.iter_mut() {
            if let Json::Object(m) = item {
                m.retain(|k, _| {
                    matches!(
                        k.as_str(),
                        "asset_id" | "public_id" | "resource_type" | "type"
                    ) || fields.iter().any(|f| f == k)
                });
            }
        }
    }
    let mut m = Map::new();
    m.insert("resources".into(), Json::Array(resources));
    if let Some(c) = cursor {
        m.insert("next_cursor".into(), json!(c));
    }
    Ok(Json::Object(m))
}

/// The first `max` assets of a cloud, newest first, among the candidates `filter` selects
/// that `keep` accepts; read a batch at a time (memory holds a batch and the answer).
pub(crate) async fn first_matching(
    state: &AppState,
    cloud: &str,
    filter: Filter,
    max: usize,
    keep: impl Fn(&AssetRecord) -> bool,
) -> ApiResult<Vec<AssetRecord>> {
    const BATCH: i64 = 1000;
    let order = vec![(SortExpr::Num(NumExpr::CreatedAt), false)];
    let mut out = Vec::new();
    let mut after = None;
    while out.len() < max {
        let (batch, full) =
            search::next_batch(state, cloud, &filter, &order, &mut after, BATCH).await?;
        out.extend(batch.into_iter().filter(|r| keep(r)).take(max - out.len()));
        if !full {
            break;
        }
    }
    Ok(out)
}

/// Assets of one resource type whose JSON column contains `needle` (ASCII letters in any
/// case), or all of them when the needle cannot be looked for in JSON text as it is.
fn candidates(rt: &str, col: TextCol, needle: &str) -> Filter {
    let of_type = Filter::Cond(Cond::Text {
        col: TextCol::ResourceType,
        value: rt.to_string(),
        prefix: false,
        fold: false,
    });
    let lowered = needle.to_ascii_lowercase();
    if lowered.is_empty() || !plan::json_safe(&lowered) {
        return of_type;
    }
    Filter::and(vec![
        of_type,
        Filter::Cond(Cond::Contains {
            col,
            value: lowered,
        }),
    ])
}

/// `resources/:rt/context?key=K[&value=V]`: assets whose context has the key (and value),
/// newest first, scanning the resource type's assets.
async fn by_context(
    state: &AppState,
    account: &Account,
    cloud: &str,
    rt: &str,
    params: &Params,
    max: i64,
) -> ApiResult<Json> {
    let key = params.required("key")?;
    let value = params.text("value").filter(|v| !v.is_empty());
    let filter = candidates(rt, TextCol::ContextJson, key);
    let records = first_matching(state, cloud, filter, max.max(0) as usize, |r| {
        match (r.context.get(key), value) {
            (Some(v), Some(want)) => v.as_str() == Some(want),
            (Some(_), None) => true,
            (None, _) => false,
        }
    })
    .await?;
    listing(state, account, cloud, params, &records, None, true).await
}

/// `DELETE resources/:rt/:type` (public_ids, prefix or all) and `DELETE resources/:rt/tags/:tag`.
/// Assets are deleted one by one (row, then file); if one fails, the answer reports exactly
/// what was deleted before it, with `partial: true`.
pub async fn delete_resources(
    state: &AppState,
    cloud: &str,
    rest: &str,
    params: &Params,
) -> ApiResult<Json> {
    if let Some(asset_id) = rest.trim_matches('/').strip_prefix("backup/") {
        return assets::delete_backup(state, cloud, asset_id, params).await;
    }
    let key_of = |rt: &str, ty: &str, id: &str| AssetKey {
        cloud: cloud.to_string(),
        resource_type: rt.to_string(),
        delivery_type: ty.to_string(),
        public_id: id.to_string(),
    };
    let mut query = ListQuery {
        cloud: cloud.to_string(),
        max_results: DELETE_BATCH,
        ..Default::default()
    };
    let keys: Vec<AssetKey>;
    let mut more: Option<String> = None;
    match parse_target(rest)? {
        Target::List { rt, ty } => {
            let ty = ty.unwrap_or_else(|| "upload".into());
            let ids = params.items("public_ids");
            if !ids.is_empty() {
                keys = ids
                    .iter()
                    .take(DELETE_BATCH as usize)
                    .map(|id| key_of(&rt, &ty, id))
                    .collect();
            } else if params.nonempty("prefix").is_some() || wants(params, "all") {
                query.resource_type = Some(rt);
                query.delivery_type = Some(ty);
                query.prefix = params.nonempty("prefix").map(str::to_string);
                let (recs, next) = state.meta.list_assets(&query).await?;
                more = next;
                keys = recs.into_iter().map(|r| r.key).collect();
            } else {
                return Err(ApiError::missing("public_ids"));
            }
        }
        Target::Tag { rt, tag } => {
            query.resource_type = Some(rt);
            query.tag = Some(tag);
            let (recs, next) = state.meta.list_assets(&query).await?;
            more = next;
            keys = recs.into_iter().map(|r| r.key).collect();
        }
        Target::One { .. } | Target::Context { .. } | Target::Moderation { .. } => {
            return Err(ApiError::NotFound(
                "Use DELETE resources/:resource_type/:type".into(),
            ))
        }
    }
    let labelled: Vec<(String, AssetKey)> =
        keys.into_iter().map(|k| (k.public_id.clone(), k)).collect();
    delete_keys(state, labelled, wants(params, "keep_original"), more).await
}

/// `DELETE resources` with `asset_ids[]`: the report is keyed by asset ID.
pub async fn delete_by_asset_ids(
    state: &AppState,
    cloud: &str,
    params: &Params,
) -> ApiResult<Json> {
    let ids = search::asset_ids(params)?;
    let mut labelled = Vec::new();
    for id in ids.iter().take(DELETE_BATCH as usize) {
        let key = assets::find_by_asset_id(state, cloud, id)
            .await?
            .map(|r| r.key)
            // An unknown asset ID names no asset: a key nothing can have.
            .unwrap_or_else(|| AssetKey {
                cloud: cloud.to_string(),
                resource_type: String::new(),
                delivery_type: String::new(),
                public_id: String::new(),
            });
        labelled.push((id.clone(), key));
    }
    delete_keys(state, labelled, wants(params, "keep_original"), None).await
}

/// `keep_original`: only the derived versions go. (found, original removed, derived removed)
async fn keep_original_only(state: &AppState, key: &AssetKey) -> ApiResult<(bool, bool, usize)> {
    match state.meta.find_asset(key).await? {
        Some(r) => {
            let gone = state
                .meta
                .delete_derived(&r.key.cloud, Some(&r.asset_id), &[])
                .await?;
            forget_derived_blobs(state, &r.key.cloud, &gone).await;
            Ok((true, false, gone.len()))
        }
        None => Ok((false, false, 0)),
    }
}

/// The asset and its derived versions. (found, original removed, derived removed)
async fn delete_with_derived(state: &AppState, key: &AssetKey) -> ApiResult<(bool, bool, usize)> {
    let derived = match state.meta.find_asset(key).await? {
        Some(r) => state.meta.list_derived(&r.asset_id).await?.len(),
        None => 0,
    };
    let found = crate::upload::delete_asset(state, key).await?;
    Ok((found, found, if found { derived } else { 0 }))
}

/// Deletes assets one by one, stopping at the first failure, and reports exactly what went.
/// With `keep_original` only derived versions go, and nephos makes none: nothing is removed.
async fn delete_keys(
    state: &AppState,
    keys: Vec<(String, AssetKey)>,
    keep_original: bool,
    more: Option<String>,
) -> ApiResult<Json> {
    let mut deleted = Map::new();
    let mut counts = Map::new();
    let mut failed = false;
    for (label, key) in &keys {
        let result = if key.public_id.is_empty() {
            Ok((false, false, 0))
        } else if keep_original {
            keep_original_only(state, key).await
        } else {
            delete_with_derived(state, key).await
        };
        match result {
            Ok((found, removed, derived)) => {
                deleted.insert(
                    label.clone(),
                    json!(if found { "deleted" } else { "not_found" }),
                );
                counts.insert(
                    label.clone(),
                    json!({"original": i64::from(removed), "derived": derived}),
                );
            }
            Err(e) => {
                tracing::error!(asset = %label, error = %e, "deleting stopped");
                failed = true;
                break;
            }
        }
    }
    let mut out =
        json!({"deleted": deleted, "deleted_counts": counts, "partial": more.is_some() || failed});
    if let Some(cursor) = more {
        // Deleted rows are gone: calling again (with or without this cursor) continues.
        out["next_cursor"] = json!(cursor);
    }
    Ok(out)
}

/// Add-on and analysis parameters that `update` refuses (nephos does not provide them).
const UPDATE_ADDONS: &[&str] = &[
    "auto_tagging",
    "categorization",
    "detection",
    "ocr",
    "raw_convert",
    "background_removal",
    "visual_search",
];

/// `POST resources/:rt/:type/:public_id` (`update`): tags, context, metadata, display name,
/// asset folder.
pub async fn update_resource(
    state: &AppState,
    account: &Account,
    cloud: &str,
    rest: &str,
    params: &Params,
) -> ApiResult<Json> {
    if rest.trim_matches('/') == "search" {
        return search::search(state, account, cloud, params).await;
    }
    if let Some(answer) = assets::special_post(state, account, cloud, rest, params).await? {
        return Ok(answer);
    }
    if let Some(target) = rest.trim_matches('/').strip_suffix("/restore") {
        if let Target::List { rt, ty } = parse_target(target)? {
            let ty = ty.unwrap_or_else(|| "upload".into());
            return restore(state, account, cloud, &rt, &ty, params).await;
        }
    }
    let Target::One {
        key_rt,
        ty,
        public_id,
    } = parse_target(rest)?
    else {
        return Err(ApiError::NotFound(format!("No such resource path: {rest}")));
    };
    for name in UPDATE_ADDONS {
        if let Some(v) = params.nonempty(name) {
            return Err(ApiError::bad(format!(
                "Illegal value {v} for parameter {name}: it is not enabled for this product environment"
            )));
        }
    }
    let update =
        crate::upload::actions::MetadataUpdate::from_params(state, cloud, params, true).await?;
    let moderation = match params.nonempty("moderation_status") {
        Some(s @ ("approved" | "rejected" | "pending")) => Some(s.to_string()),
        Some(other) => {
            return Err(ApiError::bad(format!(
                "Illegal value {other} for parameter moderation_status: must be approved, rejected or pending"
            )))
        }
        None => None,
    };
    let now = iso_time(state.now());
    let change = move |r: &mut AssetRecord| {
        update.apply(r);
        if let Some(status) = &moderation {
            let kind = r
                .extra
                .get("moderation")
                .and_then(|m| m[0]["kind"].as_str())
                .unwrap_or("manual")
                .to_string();
            r.extra.insert(
                "moderation".into(),
                json!([{"kind": kind, "status": status, "updated_at": now}]),
            );
        }
    };
    let key = AssetKey {
        cloud: cloud.to_string(),
        resource_type: key_rt,
        delivery_type: ty,
        public_id: public_id.clone(),
    };
    let rec = state
        .meta
        .modify_asset(&key, &change)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("Resource not found - {public_id}")))?;
    crate::upload::remember_folders(state, cloud, &rec.asset_folder).await?;
    resource_json(state, account, &rec).await
}

/// Colours and perceptual hash of an image asset, computed from its file.
async fn analysis_of(state: &AppState, rec: &AssetRecord) -> ApiResult<Map<String, Json>> {
    if rec.key.resource_type != "image"
        || !crate::media::transform::can_decode(rec.format.as_deref().unwrap_or(""))
    {
        return Ok(Map::new());
    }
    let max_pixels = state.limits.max_image_pixels;
    if rec.bytes.max(0) as u64 > max_pixels.saturating_mul(8) {
        return Ok(Map::new());
    }
    let Some(bytes) = crate::storage::read_all(state.blobs.as_ref(), &rec.blob_key).await? else {
        return Ok(Map::new());
    };
    tokio::task::spawn_blocking(move || {
        let mut out = Map::new();
        if let Ok((colors, predominant)) = crate::media::analysis::colors(&bytes, max_pixels) {
            out.insert("colors".into(), colors);
            out.insert("predominant".into(), predominant);
        }
        if let Ok(h) = crate::media::analysis::phash(&bytes, max_pixels) {
            out.insert("phash".into(), json!(h));
        }
        out
    })
    .await
    .map_err(ApiError::internal)
}

/// One entry of a resource's `versions`.
fn version_json(rec: &AssetRecord, restorable: bool) -> Json {
    json!({
        "version_id": rec.version_id,
        "version": rec.version.to_string(),
        "format": rec.format,
        "size": rec.bytes,
        "time": iso_time(rec.created_at),
        "restorable": restorable,
    })
}

/// `POST resources/:rt/:type/restore` with `public_ids` (and optionally `versions`, one
/// version ID each): each answered by its public ID with the restored asset, or
/// `{"error": "no_backup"}`.
async fn restore(
    state: &AppState,
    account: &Account,
    cloud: &str,
    rt: &str,
    ty: &str,
    params: &Params,
) -> ApiResult<Json> {
    let ids = params.items("public_ids");
    if ids.is_empty() {
        return Err(ApiError::missing("public_ids"));
    }
    let versions = params.items("versions");
    let mut out = Map::new();
    for (i, id) in ids.iter().enumerate().take(DELETE_BATCH as usize) {
        let key = AssetKey {
            cloud: cloud.to_string(),
            resource_type: rt.to_string(),
            delivery_type: ty.to_string(),
            public_id: id.clone(),
        };
        if let Some(version) = versions.get(i).filter(|v| !v.is_empty()) {
            let answer = match crate::upload::backup::restore_version(state, &key, version).await? {
                Some(rec) => resource_json(state, account, &rec).await?,
                None => json!({"error": "no_backup"}),
            };
            out.insert(id.clone(), answer);
            continue;
        }
        let answer = match crate::upload::backup::restore(state, &key).await? {
            crate::upload::backup::Restored::Asset(rec) => {
                resource_json(state, account, &rec).await?
            }
            crate::upload::backup::Restored::NoBackup => json!({"error": "no_backup"}),
        };
        out.insert(id.clone(), answer);
    }
    Ok(Json::Object(out))
}

/// `GET tags/:rt`.
pub async fn list_tags(
    state: &AppState,
    cloud: &str,
    rt: &str,
    params: &Params,
) -> ApiResult<Json> {
    check_rt(rt)?;
    let q = page_query(cloud, params)?;
    let (tags, cursor) = state
        .meta
        .list_tags(
            cloud,
            rt,
            params.nonempty("prefix"),
            q.max_results,
            q.cursor.as_deref(),
        )
        .await?;
    let mut m = Map::new();
    m.insert("tags".into(), json!(tags));
    if let Some(c) = cursor {
        m.insert("next_cursor".into(), json!(c));
    }
    Ok(Json::Object(m))
}

/// `GET usage`: real counts and bytes; what nephos does not meter (bandwidth, requests,
/// transformations) is reported as zero usage.
pub async fn usage(state: &AppState, cloud: &str, date: Option<&str>) -> ApiResult<Json> {
    // `usage/<dd-mm-yyyy>`: nephos keeps no history, so any day reports today's figures.
    if let Some(d) = date {
        chrono::NaiveDate::parse_from_str(d, "%d-%m-%Y")
            .map_err(|_| ApiError::bad(format!("Invalid date {d}: expected dd-mm-yyyy")))?;
    }
    let (objects, bytes) = state.meta.usage(cloud).await?;
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    Ok(json!({
        "plan": "nephos",
        "last_updated": today,
        "transformations": {"usage": 0, "credits_usage": 0.0},
        "objects": {"usage": objects},
        "bandwidth": {"usage": 0, "credits_usage": 0.0},
        "storage": {"usage": bytes, "credits_usage": 0.0},
        "requests": 0,
        "resources": objects,
        "derived_resources": 0,
        "media_limits": {
            "image_max_size_bytes": state.limits.max_upload_bytes,
            "video_max_size_bytes": state.limits.max_upload_bytes,
            "raw_max_size_bytes": state.limits.max_upload_bytes,
            "image_max_px": 0,
            "asset_max_total_px": 0
        }
    }))
}

/// Preset fields that are not upload settings.
const PRESET_FIELDS: &[&str] = &[
    "name",
    "unsigned",
    "disallow_public_id",
    "live",
    "timestamp",
    "signature",
    "api_key",
];
const BOOLEAN_SETTINGS: &[&str] = &[
    "overwrite",
    "use_filename",
    "unique_filename",
    "discard_original_filename",
    "use_filename_as_display_name",
    "use_asset_folder_as_public_id_prefix",
    "invalidate",
    "backup",
    "return_delete_token",
];

/// Settings as the Admin API shows them: booleans as booleans, lists as arrays, context as
/// an object.
fn settings_json(settings: &Map<String, Json>) -> Json {
    let mut out = Map::new();
    for (k, v) in settings {
        let text = crate::upload::preset::setting_text(v);
        let shown = match (k.as_str(), &text) {
            (k, Some(t)) if BOOLEAN_SETTINGS.contains(&k) => crate::util::parse_bool(t)
                .map(Json::Bool)
                .unwrap_or_else(|| v.clone()),
            ("tags" | "allowed_formats", Some(t)) => {
                json!(crate::upload::parse_tags(std::slice::from_ref(t)))
            }
            ("context", Some(t)) => Json::Object(crate::upload::parse_pairs(t, false)),
            _ => v.clone(),
        };
        out.insert(k.clone(), shown);
    }
    Json::Object(out)
}

fn preset_json(p: &crate::db::Preset) -> Json {
    json!({
        "name": p.name,
        "unsigned": p.unsigned,
        "settings": settings_json(&p.settings),
        "external_id": p.external_id,
    })
}

/// Upload settings of a create/update body (JSON values as sent; lists as arrays).
fn settings_from(params: &Params) -> Map<String, Json> {
    let mut m = Map::new();
    for name in params.names() {
        if PRESET_FIELDS.contains(&name) {
            continue;
        }
        match params.get(name) {
            Some(crate::form::Value::Text(t)) => {
                m.insert(name.to_string(), json!(t));
            }
            Some(crate::form::Value::List(items)) => {
                m.insert(name.to_string(), json!(items));
            }
            None => {}
        }
    }
    m
}

pub async fn list_presets(state: &AppState, cloud: &str) -> ApiResult<Json> {
    let presets: Vec<Json> = state
        .meta
        .list_presets(cloud)
        .await?
        .iter()
        .map(preset_json)
        .collect();
    Ok(json!({"presets": presets}))
}

pub async fn get_preset(state: &AppState, cloud: &str, name: &str) -> ApiResult<Json> {
    let p = state
        .meta
        .get_preset(cloud, name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("Upload preset {name} not found")))?;
    Ok(preset_json(&p))
}

pub async fn create_preset(state: &AppState, cloud: &str, params: &Params) -> ApiResult<Json> {
    let name = match params.nonempty("name") {
        Some(n) => n.to_string(),
        None => crate::util::random_alnum(8),
    };
    if name.contains('/') || name.chars().any(|c| c.is_control()) {
        return Err(ApiError::bad(format!("Invalid upload preset name {name}")));
    }
    if state.meta.get_preset(cloud, &name).await?.is_some() {
        return Err(ApiError::Conflict(format!(
            "Upload preset {name} already exists"
        )));
    }
    let preset = crate::db::Preset {
        cloud: cloud.to_string(),
        name: name.clone(),
        unsigned: params.flag("unsigned")?.unwrap_or(false),
        disallow_public_id: params.flag("disallow_public_id")?.unwrap_or(false),
        settings: settings_from(params),
        external_id: crate::util::random_hex(16),
        created_at: state.now(),
    };
    state.meta.put_preset(&preset).await?;
    Ok(json!({"message": "created", "name": name, "external_id": preset.external_id}))
}

pub async fn update_preset(
    state: &AppState,
    cloud: &str,
    name: &str,
    params: &Params,
) -> ApiResult<Json> {
    let mut p = state
        .meta
        .get_preset(cloud, name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("Upload preset {name} not found")))?;
    if let Some(u) = params.flag("unsigned")? {
        p.unsigned = u;
    }
    if let Some(d) = params.flag("disallow_public_id")? {
        p.disallow_public_id = d;
    }
    p.settings.extend(settings_from(params));
    state.meta.put_preset(&p).await?;
    Ok(json!({"message": "updated"}))
}

pub async fn delete_preset(state: &AppState, cloud: &str, name: &str) -> ApiResult<Json> {
    if state.meta.delete_preset(cloud, name).await? {
        Ok(json!({"message": "deleted"}))
    } else {
        Err(ApiError::NotFound(format!(
            "Upload preset {name} not found"
        )))
    }
}

/// Folder paths of a cloud with every parent of each path included.
async fn all_folders(
    state: &AppState,
    cloud: &str,
) -> ApiResult<std::collections::BTreeSet<String>> {
    let mut out = std::collections::BTreeSet::new();
    for path in state.meta.folder_paths(cloud).await? {
        let mut acc = String::new();
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(seg);
            out.insert(acc.clone());
        }
    }
    Ok(out)
}

fn folder_json(path: &str) -> Json {
    let name = path.rsplit('/').next().unwrap_or(path);
    let external_id = crate::util::folder_external_id(path);
    json!({"name": name, "path": path, "external_id": external_id})
}

/// `GET folders` (root) and `GET folders/:path` (its subfolders).
pub async fn list_folders(state: &AppState, cloud: &str, path: Option<&str>) -> ApiResult<Json> {
    let all = all_folders(state, cloud).await?;
    let parent = path
        .map(|p| p.trim_matches('/').to_string())
        .filter(|p| !p.is_empty());
    if let Some(p) = &parent {
        if !all.contains(p) {
            return Err(ApiError::NotFound(format!(
                "Can't find folder with path {p}"
            )));
        }
    }
    let folders: Vec<Json> = all
        .iter()
        .filter(|f| match &parent {
            None => !f.contains('/'),
            Some(p) => f
                .strip_prefix(&format!("{p}/"))
                .is_some_and(|rest| !rest.is_empty() && !rest.contains('/')),
        })
        .map(|f| folder_json(f))
        .collect();
    let total = folders.len();
    Ok(json!({"folders": folders, "next_cursor": null, "total_count": total}))
}

/// `POST folders/:path`: creates the folder (and its parents).
pub async fn create_folder(state: &AppState, cloud: &str, path: &str) -> ApiResult<Json> {
    let path = crate::upload::naming::clean_path("folder", path)?;
    if path.is_empty() {
        return Err(ApiError::missing("folder"));
    }
    if all_folders(state, cloud).await?.contains(&path) {
        return Err(ApiError::Conflict(format!("Folder {path} already exists")));
    }
    let external_id = folder_json(&path)["external_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    state
        .meta
        .create_folder(cloud, &path, &external_id, state.now())
        .await?;
    let name = path.rsplit('/').next().unwrap_or(&path).to_string();
    Ok(json!({"success": true, "path": path, "name": name, "external_id": external_id}))
}

/// `PUT folders/:path` with `to_folder`: moves the folder, its subfolders and the assets in
/// them (their `asset_folder`; public IDs and URLs do not change).
pub async fn rename_folder(state: &AppState, cloud: &str, from: &str, to: &str) -> ApiResult<Json> {
    let from = from.trim_matches('/').to_string();
    let to = crate::upload::naming::clean_path("to_folder", to)?;
    if to.is_empty() {
        return Err(ApiError::missing("to_folder"));
    }
    let all = all_folders(state, cloud).await?;
    if !all.contains(&from) {
        return Err(ApiError::NotFound(format!(
            "Can't find folder with path {from}"
        )));
    }
    if to == from || to.starts_with(&format!("{from}/")) {
        return Err(ApiError::bad(format!(
            "Cannot move folder {from} into itself ({to})"
        )));
    }
    if all.contains(&to) {
        return Err(ApiError::Conflict(format!("Folder {to} already exists")));
    }
    let external_id = folder_json(&to)["external_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    state
        .meta
        .rename_folders(cloud, &from, &to, &external_id, state.now())
        .await?;
    let name = |p: &str| p.rsplit('/').next().unwrap_or(p).to_string();
    Ok(json!({
        "from": {"name": name(&from), "path": from},
        "to": {"name": name(&to), "path": to},
    }))
}

/// `DELETE folders/:path`: only when no asset lives in it or below.
pub async fn delete_folder(state: &AppState, cloud: &str, path: &str) -> ApiResult<Json> {
    let path = path.trim_matches('/').to_string();
    let all = all_folders(state, cloud).await?;
    if !all.contains(&path) {
        return Err(ApiError::NotFound(format!(
            "Can't find folder with path {path}"
        )));
    }
    if state.meta.folder_has_assets(cloud, &path).await? {
        return Err(ApiError::bad(format!("Folder {path} is not empty")));
    }
    state.meta.delete_folders(cloud, &path).await?;
    let deleted: Vec<&String> = all
        .iter()
        .filter(|f| **f == path || f.starts_with(&format!("{path}/")))
        .collect();
    Ok(json!({"deleted": deleted}))
}
