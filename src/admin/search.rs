//! The Search API (`resources/search`) and the asset lookups that are not by public ID
//! (`resources/:asset_id`, `resources/by_asset_ids`, `resources/by_asset_folder`).
//!
//! Assets are filtered in memory with [`super::expression`]: a local server holds few enough
//! of them, and every metadata backend answers the same way.

use std::cmp::Ordering;

use base64::Engine as _;
use serde_json::{json, Map, Value as Json};

use super::expression;
use super::{all_assets, asset_json, wants};
use crate::auth::Account;
use crate::db::AssetRecord;
use crate::error::{ApiError, ApiResult};
use crate::form::Params;
use crate::state::AppState;
use crate::util::iso_time;

/// Fields `sort_by` accepts.
const SORT_FIELDS: &[&str] = &[
    // Relevance: every match is as relevant, so it sorts like `created_at`.
    "score",
    "created_at",
    "uploaded_at",
    "last_updated",
    "public_id",
    "asset_id",
    "filename",
    "display_name",
    "folder",
    "asset_folder",
    "resource_type",
    "type",
    "format",
    "bytes",
    "width",
    "height",
    "pixels",
    "aspect_ratio",
    "pages",
    "version",
];

/// Fields `aggregate` counts.
const AGGREGATE_FIELDS: &[&str] = &["resource_type", "type", "format", "tags", "asset_folder"];

/// `POST resources/search` (JSON body) or `GET resources/search` (query).
pub async fn search(
    state: &AppState,
    account: &Account,
    cloud: &str,
    params: &Params,
) -> ApiResult<Json> {
    let started = std::time::Instant::now();
    let expr = parse_expression(params)?;
    // 0 asks only for the count (and aggregations).
    let max = match params.nonempty("max_results") {
        Some("0") => 0,
        _ => max_results(params, 50)?,
    };
    let offset = read_cursor(params)?;
    let sort = sort_keys(params)?;
    let now = state.now();

    let mut found = Vec::new();
    for rec in all_assets(state, cloud, None).await? {
        if hits(&expr, &rec, now)? {
            found.push(rec);
        }
    }
    found.sort_by(|a, b| compare(a, b, &sort));

    let with: Vec<String> = params
        .items("with_field")
        .into_iter()
        .map(|f| f.to_ascii_lowercase())
        .collect();
    let fields: Vec<String> = params
        .items("fields")
        .into_iter()
        .flat_map(|f| {
            f.split(',')
                .map(|s| s.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|f| !f.is_empty())
        .collect();
    let mut out = Map::new();
    out.insert("total_count".into(), json!(found.len()));
    let aggregations = aggregate(params, &found)?;
    let page: Vec<Json> = found
        .iter()
        .skip(offset)
        .take(max)
        .map(|r| search_json(state, account, r, &with, &fields))
        .collect();
    if max > 0 && offset + max < found.len() {
        out.insert("next_cursor".into(), json!(write_cursor(offset + max)));
    }
    out.insert("time".into(), json!(started.elapsed().as_millis() as u64));
    if let Some(a) = aggregations {
        out.insert("aggregations".into(), a);
    }
    out.insert("resources".into(), Json::Array(page));
    Ok(Json::Object(out))
}

/// The `expression` parameter, parsed; none when absent or blank (everything matches).
fn parse_expression(params: &Params) -> ApiResult<Option<expression::Expr>> {
    match params.nonempty("expression").map(str::trim) {
        Some(e) if !e.is_empty() => expression::parse(e)
            .map(Some)
            .map_err(|m| ApiError::bad(format!("Invalid search expression {e}: {m}"))),
        _ => Ok(None),
    }
}

fn hits(
    expr: &Option<expression::Expr>,
    doc: &dyn expression::Searchable,
    now: i64,
) -> ApiResult<bool> {
    match expr {
        Some(e) => expression::matches(e, doc, now)
            .map_err(|m| ApiError::bad(format!("Invalid search expression: {m}"))),
        None => Ok(true),
    }
}

/// One search hit: the Admin API asset object plus the fields search results carry; `tags`,
/// The embedded metadata kept at upload, else what the record tells (format and size).
pub(crate) fn image_metadata_of(rec: &AssetRecord) -> Json {
    if let Some(m) = rec.extra.get("image_metadata") {
        return m.clone();
    }
    if rec.key.resource_type != "image" {
        return json!({});
    }
    Json::Object(crate::media::analysis::image_metadata(
        &[],
        rec.format.as_deref().unwrap_or(""),
        rec.width.unwrap_or(0),
        rec.height.unwrap_or(0),
    ))
}

/// `context` and `metadata` when asked for with `with_field`; only `fields` when given.
fn search_json(
    state: &AppState,
    account: &Account,
    rec: &AssetRecord,
    with: &[String],
    fields: &[String],
) -> Json {
    let wanted = |f: &str| with.iter().any(|w| w == f) || fields.iter().any(|w| w == f);
    let mut obj = asset_json(state, account, rec, false, false);
    let Json::Object(m) = &mut obj else {
        return obj;
    };
    m.insert("folder".into(), json!(rec.asset_folder));
    m.insert("filename".into(), json!(expression::filename(rec)));
    m.insert("uploaded_at".into(), json!(iso_time(rec.created_at)));
    if let (Some(w), Some(h)) = (rec.width, rec.height) {
        if rec.key.resource_type != "raw" && h > 0 {
            m.insert("aspect_ratio".into(), json!(round3(w as f64 / h as f64)));
            m.insert("pixels".into(), json!(w.saturating_mul(h)));
        }
    }
    if let Some(p) = rec.pages {
        if rec.key.resource_type == "image" {
            m.insert("pages".into(), json!(p));
        }
    }
    m.insert("status".into(), json!("active"));
    m.insert("etag".into(), json!(rec.etag));
    if let Some(d) = rec.extra.get("duration") {
        m.insert("duration".into(), d.clone());
    }
    if wanted("tags") {
        let mut tags = rec.tags.clone();
        tags.sort();
        m.insert("tags".into(), json!(tags));
    }
    if wanted("context") && !rec.context.is_empty() {
        m.insert("context".into(), Json::Object(rec.context.clone()));
    }
    if wanted("metadata") {
        m.insert("metadata".into(), Json::Object(rec.metadata.clone()));
    }
    if wanted("image_metadata") {
        m.insert("image_metadata".into(), image_metadata_of(rec));
    }
    if !fields.is_empty() {
        // The identifying fields always come back.
        let keep = |k: &str| {
            matches!(k, "asset_id" | "public_id" | "resource_type" | "type")
                || fields.iter().any(|f| f == k)
                || with.iter().any(|w| w == k)
        };
        m.retain(|k, _| keep(k));
    }
    obj
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn max_results(params: &Params, default: usize) -> ApiResult<usize> {
    match params.nonempty("max_results") {
        None => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=500).contains(n))
            .ok_or_else(|| ApiError::bad(format!("Invalid max_results {v}: must be 1 to 500"))),
    }
}

/// Cursors are opaque: the offset of the next page.
fn write_cursor(offset: usize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("nephos:{offset}"))
}

fn read_cursor(params: &Params) -> ApiResult<usize> {
    let Some(c) = params.nonempty("next_cursor") else {
        return Ok(0);
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("nephos:").and_then(|n| n.parse().ok()))
        .ok_or_else(|| ApiError::bad(format!("Invalid next_cursor {c}")))
}

/// `sort_by`: `[{"field": "asc"|"desc"}, …]` (each item may arrive as JSON text, or as
/// `field` alone); newest first when absent.
fn sort_keys(params: &Params) -> ApiResult<Vec<(String, bool)>> {
    let mut keys = Vec::new();
    for item in params.items("sort_by") {
        let parsed: Option<Map<String, Json>> = serde_json::from_str(&item).ok();
        let pairs: Vec<(String, String)> = match parsed {
            Some(map) => map
                .into_iter()
                .map(|(k, v)| (k, v.as_str().unwrap_or("desc").to_string()))
                .collect(),
            None => vec![(item.clone(), "desc".to_string())],
        };
        for (field, dir) in pairs {
            if !SORT_FIELDS.contains(&field.as_str()) {
                return Err(ApiError::bad(format!("Invalid sort_by field {field}")));
            }
            let ascending = match dir.to_ascii_lowercase().as_str() {
                "asc" => true,
                "desc" => false,
                other => return Err(ApiError::bad(format!("Invalid sort_by direction {other}"))),
            };
            keys.push((field, ascending));
        }
    }
    if keys.is_empty() {
        keys.push(("created_at".into(), false));
    }
    Ok(keys)
}

fn compare(a: &AssetRecord, b: &AssetRecord, keys: &[(String, bool)]) -> Ordering {
    for (field, ascending) in keys {
        let ord = sort_value(a, field).cmp_with(&sort_value(b, field));
        let ord = if *ascending { ord } else { ord.reverse() };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    // A stable order for equal keys, so pages never repeat or skip an asset.
    b.asset_id.cmp(&a.asset_id)
}

enum SortValue {
    Text(String),
    Number(f64),
}

impl SortValue {
    fn cmp_with(&self, other: &SortValue) -> Ordering {
        match (self, other) {
            (SortValue::Text(a), SortValue::Text(b)) => a.cmp(b),
            (SortValue::Number(a), SortValue::Number(b)) => a.total_cmp(b),
            (SortValue::Number(_), SortValue::Text(_)) => Ordering::Less,
            (SortValue::Text(_), SortValue::Number(_)) => Ordering::Greater,
        }
    }
}

fn sort_value(r: &AssetRecord, field: &str) -> SortValue {
    let num = |v: Option<i64>| SortValue::Number(v.map(|v| v as f64).unwrap_or(-1.0));
    match field {
        "public_id" => SortValue::Text(r.key.public_id.clone()),
        "asset_id" => SortValue::Text(r.asset_id.clone()),
        "filename" => SortValue::Text(expression::filename(r)),
        "display_name" => SortValue::Text(r.display_name.clone()),
        "folder" | "asset_folder" => SortValue::Text(r.asset_folder.clone()),
        "resource_type" => SortValue::Text(r.key.resource_type.clone()),
        "type" => SortValue::Text(r.key.delivery_type.clone()),
        "format" => SortValue::Text(r.format.clone().unwrap_or_default()),
        "bytes" => num(Some(r.bytes)),
        "width" => num(r.width),
        "height" => num(r.height),
        "pixels" => num(r.width.zip(r.height).map(|(w, h)| w.saturating_mul(h))),
        "aspect_ratio" => SortValue::Number(
            r.width
                .zip(r.height)
                .filter(|(_, h)| *h > 0)
                .map(|(w, h)| w as f64 / h as f64)
                .unwrap_or(-1.0),
        ),
        "pages" => num(r.pages),
        "version" => num(Some(r.version)),
        _ => num(Some(r.created_at)),
    }
}

/// `aggregate`: value counts over all matches, e.g. `{"format": {"png": 3, "jpg": 1}}`.
fn aggregate(params: &Params, found: &[AssetRecord]) -> ApiResult<Option<Json>> {
    let names = params.items("aggregate");
    if names.is_empty() {
        return Ok(None);
    }
    let mut out = Map::new();
    for name in names {
        if !AGGREGATE_FIELDS.contains(&name.as_str()) {
            return Err(ApiError::bad(format!("Invalid aggregate field {name}")));
        }
        let mut counts: Map<String, Json> = Map::new();
        for r in found {
            let values: Vec<String> = match name.as_str() {
                "resource_type" => vec![r.key.resource_type.clone()],
                "type" => vec![r.key.delivery_type.clone()],
                "format" => r.format.iter().cloned().collect(),
                "tags" => r.tags.clone(),
                _ => vec![r.asset_folder.clone()],
            };
            for v in values {
                let n = counts.get(&v).and_then(Json::as_u64).unwrap_or(0) + 1;
                counts.insert(v, json!(n));
            }
        }
        out.insert(name, Json::Object(counts));
    }
    Ok(Some(Json::Object(out)))
}

/// `GET resources/:asset_id`: the same object as the lookup by public ID.
pub async fn by_asset_id(
    state: &AppState,
    account: &Account,
    cloud: &str,
    asset_id: &str,
) -> ApiResult<Json> {
    let rec = super::assets::find_by_asset_id(state, cloud, asset_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("Resource not found - {asset_id}")))?;
    super::resource_json(state, account, &rec).await
}

/// The required `asset_ids[]` list.
pub(super) fn asset_ids(params: &Params) -> ApiResult<Vec<String>> {
    let ids = params.items("asset_ids");
    if ids.is_empty() {
        return Err(ApiError::missing("asset_ids"));
    }
    Ok(ids)
}

/// `GET resources/by_asset_ids?asset_ids[]=…`.
pub async fn by_asset_ids(
    state: &AppState,
    account: &Account,
    cloud: &str,
    params: &Params,
) -> ApiResult<Json> {
    let ids = asset_ids(params)?;
    let mut resources = Vec::new();
    for id in ids.iter().take(500) {
        if let Some(r) = super::assets::find_by_asset_id(state, cloud, id).await? {
            resources.push(listed(state, account, &r, params));
        }
    }
    Ok(json!({ "resources": resources }))
}

/// An asset in a listing, with tags and context when the call asked for them.
fn listed(state: &AppState, account: &Account, r: &AssetRecord, params: &Params) -> Json {
    asset_json(
        state,
        account,
        r,
        wants(params, "tags"),
        wants(params, "context"),
    )
}

/// `GET resources/by_asset_folder?asset_folder=…`: the assets directly in that folder.
pub async fn by_asset_folder(
    state: &AppState,
    account: &Account,
    cloud: &str,
    params: &Params,
) -> ApiResult<Json> {
    let folder = params
        .text("asset_folder")
        .ok_or_else(|| ApiError::missing("asset_folder"))?
        .trim_matches('/')
        .to_string();
    let max = max_results(params, 50)?;
    let offset = read_cursor(params)?;
    let ascending = match params.nonempty("direction") {
        None => false,
        Some(d) => matches!(d.to_ascii_lowercase().as_str(), "asc" | "1"),
    };
    let mut found: Vec<AssetRecord> = all_assets(state, cloud, None)
        .await?
        .into_iter()
        .filter(|r| r.asset_folder == folder)
        .collect();
    found.sort_by(|a, b| compare(a, b, &[("created_at".to_string(), ascending)]));
    let resources: Vec<Json> = found
        .iter()
        .skip(offset)
        .take(max)
        .map(|r| listed(state, account, r, params))
        .collect();
    let mut out = Map::new();
    out.insert("resources".into(), Json::Array(resources));
    if offset + max < found.len() {
        out.insert("next_cursor".into(), json!(write_cursor(offset + max)));
    }
    Ok(Json::Object(out))
}

/// `POST folders/search`: folders whose `name`, `path` or `id` match the expression, sorted by
/// path (or `sort_by` on `name`/`path`), paged like asset search.
pub async fn search_folders(state: &AppState, cloud: &str, params: &Params) -> ApiResult<Json> {
    let started = std::time::Instant::now();
    let expr = parse_expression(params)?;
    let max = max_results(params, 50)?;
    let offset = read_cursor(params)?;
    let mut descending = false;
    let mut by_name = false;
    for item in params.items("sort_by") {
        let map: Map<String, Json> = serde_json::from_str(&item).unwrap_or_default();
        for (field, dir) in map {
            by_name = match field.as_str() {
                "name" => true,
                "path" => false,
                other => return Err(ApiError::bad(format!("Invalid sort_by field {other}"))),
            };
            descending = dir.as_str() == Some("desc");
        }
    }
    let now = state.now();
    let mut found = Vec::new();
    for path in super::all_folders(state, cloud).await? {
        let folder = super::folder_json(&path);
        let doc = expression::FolderDoc {
            path: &path,
            external_id: folder["external_id"].as_str().unwrap_or_default(),
        };
        if hits(&expr, &doc, now)? {
            found.push(folder);
        }
    }
    let key = if by_name { "name" } else { "path" };
    found.sort_by(|a, b| {
        let ord = a[key].as_str().cmp(&b[key].as_str());
        if descending {
            ord.reverse()
        } else {
            ord
        }
    });
    let mut out = Map::new();
    out.insert("total_count".into(), json!(found.len()));
    out.insert("time".into(), json!(started.elapsed().as_millis() as u64));
    if offset + max < found.len() {
        out.insert("next_cursor".into(), json!(write_cursor(offset + max)));
    }
    let page: Vec<Json> = found.into_iter().skip(offset).take(max).collect();
    out.insert("folders".into(), Json::Array(page));
    Ok(Json::Object(out))
}
