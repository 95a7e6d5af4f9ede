//! The Search API (`resources/search`) and the asset lookups that are not by public ID
//! (`resources/:asset_id`, `resources/by_asset_ids`, `resources/by_asset_folder`).
//!
//! Assets are filtered in memory with [`super::expression`]: a local server holds few enough
//! of them, and every metadata backend answers the same way.

use std::cmp::Ordering;

use base64::Engine as _;
use serde_json::{json, Map, Value as Json};

use super::{asset_json, wants};
use super::{expression, plan};
use crate::auth::Account;
use crate::db::query::{
    AggField, Cond, Filter, NumExpr, SearchQuery, SortExpr, SortValue, TextCol,
};
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

/// `POST resources/search` (JSON body) or `GET resources/search` (query).
///
/// The expression is compiled into a database filter ([`plan`]): when it selects exactly the
/// matches, the page, the count and the aggregations are each one query; otherwise the
/// candidates it selects are read in order, a batch at a time, and checked against the
/// expression. Cursors hold the last asset's sort values, so pages stay stable under inserts.
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
    let sort = sort_keys(params)?;
    let cursor = read_position(params, &sort)?;
    let aggregate_fields = aggregate_fields(params)?;
    let now = state.now();

    let tag_list = match &expr {
        Some(e) if plan::wants_tag_list(e) => {
            let tags = state.meta.distinct_tags(plan::TAG_LIST_LIMIT + 1).await?;
            (tags.len() as i64 <= plan::TAG_LIST_LIMIT).then_some(tags)
        }
        _ => None,
    };
    let compiled = match &expr {
        Some(e) => plan::Compiler::new(now, tag_list.as_deref())
            .compile(e)
            .map_err(|m| ApiError::bad(format!("Invalid search expression: {m}")))?,
        None => plan::Plan {
            filter: Filter::Const(true),
            exact: true,
        },
    };
    let sql_sort: Option<Vec<(SortExpr, bool)>> = sort
        .iter()
        .map(|(f, asc)| plan::sort_expr(f).map(|s| (s, *asc)))
        .collect();

    let (total, mut page, aggregations) = match &sql_sort {
        Some(order) if compiled.exact => {
            // The page, the count and the aggregations are independent queries: they run
            // at once, each on its own connection, so an answer waits for the slowest only.
            let query = SearchQuery {
                cloud: cloud.to_string(),
                filter: compiled.filter.clone(),
                sort: order.clone(),
                after: cursor.clone(),
                limit: max as i64 + 1,
            };
            let page = async {
                if max > 0 {
                    state.meta.search_assets(&query).await
                } else {
                    Ok(Vec::new())
                }
            };
            let count = state.meta.count_assets(cloud, &compiled.filter);
            // Aggregations one after the other (a search holds three connections at most),
            // each field once.
            let aggs = async {
                let mut out: Vec<(String, _)> = Vec::new();
                for (name, field) in &aggregate_fields {
                    if out.iter().any(|(n, _)| n == name) {
                        continue;
                    }
                    let counts = state
                        .meta
                        .aggregate_assets(cloud, &compiled.filter, *field)
                        .await?;
                    out.push((name.clone(), counts));
                }
                Ok::<_, crate::db::DbError>(out)
            };
            let (page, total, aggs) = tokio::try_join!(page, count, aggs)?;
            (total as usize, page, aggs)
        }
        _ => {
            scan(
                state,
                cloud,
                &compiled.filter,
                sql_sort.as_deref(),
                &expr,
                now,
                &sort,
                cursor.as_ref(),
                max,
                &aggregate_fields,
            )
            .await?
        }
    };

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
    out.insert("total_count".into(), json!(total));
    if max > 0 && page.len() > max {
        page.truncate(max);
        if let Some(last) = page.last() {
            out.insert("next_cursor".into(), json!(write_position(last, &sort)));
        }
    }
    out.insert("time".into(), json!(started.elapsed().as_millis() as u64));
    if !aggregate_fields.is_empty() {
        let mut aggs = Map::new();
        for (name, counts) in aggregations {
            let counts: Map<String, Json> =
                counts.into_iter().map(|(v, n)| (v, json!(n))).collect();
            aggs.insert(name, Json::Object(counts));
        }
        out.insert("aggregations".into(), Json::Object(aggs));
    }
    let page: Vec<Json> = page
        .iter()
        .map(|r| search_json(state, account, r, &with, &fields))
        .collect();
    out.insert("resources".into(), Json::Array(page));
    Ok(Json::Object(out))
}

/// Candidates read in batches of this many.
const SCAN_BATCH: i64 = 1000;
/// Candidates one search checks at most (the CPU a search may cost is bounded).
const SCAN_LIMIT: usize = 200_000;
/// Matches kept in memory at most when the order is computed here (`filename`).
const SORT_LIMIT: usize = 20_000;

type Counts = Vec<(String, Vec<(String, i64)>)>;

/// The next `limit` assets of a cloud that `filter` selects, in `order`, after the position
/// `after`, which moves to the batch's last asset. Answers the batch and whether it was full
/// (more may follow).
pub(super) async fn next_batch(
    state: &AppState,
    cloud: &str,
    filter: &Filter,
    order: &[(SortExpr, bool)],
    after: &mut Option<(Vec<SortValue>, String)>,
    limit: i64,
) -> ApiResult<(Vec<AssetRecord>, bool)> {
    let batch = state
        .meta
        .search_assets(&SearchQuery {
            cloud: cloud.to_string(),
            filter: filter.clone(),
            sort: order.to_vec(),
            after: after.take(),
            limit,
        })
        .await?;
    if let Some(last) = batch.last() {
        *after = Some((
            order
                .iter()
                .map(|(s, _)| sql_sort_value(last, *s))
                .collect(),
            last.asset_id.clone(),
        ));
    }
    let full = batch.len() as i64 == limit;
    Ok((batch, full))
}

/// A search the database cannot answer exactly: the candidates `filter` selects, checked
/// against the expression one batch at a time, counted and aggregated; the page (one more
/// than `max`) after `cursor`. Memory holds a batch and a page, except when the order is
/// computed here (`sql_sort` none), which keeps every match to sort it.
#[allow(clippy::too_many_arguments)]
async fn scan(
    state: &AppState,
    cloud: &str,
    filter: &Filter,
    sql_sort: Option<&[(SortExpr, bool)]>,
    expr: &Option<expression::Expr>,
    now: i64,
    sort: &[(String, bool)],
    cursor: Option<&(Vec<SortValue>, String)>,
    max: usize,
    aggregate_fields: &[(String, AggField)],
) -> ApiResult<(usize, Vec<AssetRecord>, Counts)> {
    let order = sql_sort
        .map(<[_]>::to_vec)
        .unwrap_or_else(|| vec![(SortExpr::Num(NumExpr::CreatedAt), false)]);
    let mut counts: Vec<std::collections::HashMap<String, i64>> =
        vec![Default::default(); aggregate_fields.len()];
    let mut total = 0usize;
    let mut page: Vec<AssetRecord> = Vec::new();
    let mut after: Option<(Vec<SortValue>, String)> = None;
    let mut scanned = 0usize;
    loop {
        if scanned >= SCAN_LIMIT {
            return Err(ApiError::bad(format!(
                "Search expression too broad: more than {SCAN_LIMIT} assets would have to be \
                 checked one by one (word matches inside public IDs, display names, context and \
                 metadata values are); add a field condition (tags, folder, resource_type, format, \
                 public_id prefix, created_at, bytes, …) to narrow it"
            )));
        }
        let (batch, full) =
            next_batch(state, cloud, filter, &order, &mut after, SCAN_BATCH).await?;
        scanned += batch.len();
        for rec in batch {
            if !hits(expr, &rec, now)? {
                continue;
            }
            total += 1;
            for ((_, field), c) in aggregate_fields.iter().zip(counts.iter_mut()) {
                for v in aggregate_values(&rec, *field) {
                    *c.entry(v).or_default() += 1;
                }
            }
            let keep = sql_sort.is_none()
                || (max > 0
                    && page.len() <= max
                    && cursor.is_none_or(|c| comes_after(&rec, sort, c)));
            if keep {
                if sql_sort.is_none() && page.len() >= SORT_LIMIT {
                    return Err(ApiError::bad(format!(
                        "Cannot sort more than {SORT_LIMIT} matches by filename: narrow the \
                         expression or sort by public_id"
                    )));
                }
                page.push(rec);
            }
        }
        if !full {
            break;
        }
    }
    if sql_sort.is_none() {
        page.sort_by(|a, b| compare(a, b, sort));
        page.retain(|r| cursor.is_none_or(|c| comes_after(r, sort, c)));
        page.truncate(if max == 0 { 0 } else { max + 1 });
    }
    let aggs = aggregate_fields
        .iter()
        .zip(counts)
        .map(|((name, _), c)| {
            let mut c: Vec<(String, i64)> = c.into_iter().collect();
            c.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            (name.clone(), c)
        })
        .collect();
    Ok((total, page, aggs))
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
        let ord = cmp_values(&sort_value(a, field), &sort_value(b, field));
        let ord = if *ascending { ord } else { ord.reverse() };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    // A stable order for equal keys, so pages never repeat or skip an asset.
    b.asset_id.cmp(&a.asset_id)
}

fn cmp_values(a: &SortValue, b: &SortValue) -> Ordering {
    match (a, b) {
        (SortValue::Text(a), SortValue::Text(b)) => a.cmp(b),
        (SortValue::Num(a), SortValue::Num(b)) => a.total_cmp(b),
        (SortValue::Num(_), SortValue::Text(_)) => Ordering::Less,
        (SortValue::Text(_), SortValue::Num(_)) => Ordering::Greater,
    }
}

/// Whether an asset comes after the position of a cursor in the order of `keys`.
fn comes_after(
    r: &AssetRecord,
    keys: &[(String, bool)],
    cursor: &(Vec<SortValue>, String),
) -> bool {
    for ((field, ascending), at) in keys.iter().zip(&cursor.0) {
        let ord = cmp_values(&sort_value(r, field), at);
        let ord = if *ascending { ord } else { ord.reverse() };
        if ord != Ordering::Equal {
            return ord == Ordering::Greater;
        }
    }
    r.asset_id < cursor.1
}

fn sort_value(r: &AssetRecord, field: &str) -> SortValue {
    if field == "filename" {
        return SortValue::Text(expression::filename(r));
    }
    match plan::sort_expr(field) {
        Some(s) => sql_sort_value(r, s),
        None => SortValue::Num(r.created_at as f64),
    }
}

/// The value the database sorts an asset by (missing numbers as -1).
fn sql_sort_value(r: &AssetRecord, s: SortExpr) -> SortValue {
    let num = |v: Option<i64>| SortValue::Num(v.map(|v| v as f64).unwrap_or(-1.0));
    match s {
        SortExpr::Text(col) => SortValue::Text(match col {
            TextCol::PublicId => r.key.public_id.clone(),
            TextCol::AssetId => r.asset_id.clone(),
            TextCol::DisplayName => r.display_name.clone(),
            TextCol::AssetFolder => r.asset_folder.clone(),
            TextCol::ResourceType => r.key.resource_type.clone(),
            TextCol::DeliveryType => r.key.delivery_type.clone(),
            TextCol::Format => r.format.clone().unwrap_or_default(),
            TextCol::Etag => r.etag.clone(),
            TextCol::ContextJson | TextCol::MetadataJson | TextCol::ExtraJson => String::new(),
        }),
        SortExpr::Num(n) => match n {
            NumExpr::Bytes => num(Some(r.bytes)),
            NumExpr::Width => num(r.width),
            NumExpr::Height => num(r.height),
            NumExpr::Pages => num(r.pages),
            NumExpr::Version => num(Some(r.version)),
            NumExpr::CreatedAt => num(Some(r.created_at)),
            NumExpr::Pixels => num(r.width.zip(r.height).map(|(w, h)| w.saturating_mul(h))),
            NumExpr::AspectRatio => SortValue::Num(
                r.width
                    .zip(r.height)
                    .filter(|(_, h)| *h > 0)
                    .map(|(w, h)| w as f64 / h as f64)
                    .unwrap_or(-1.0),
            ),
        },
    }
}

/// A cursor: the sort values and asset ID of a page's last asset.
fn write_position(r: &AssetRecord, keys: &[(String, bool)]) -> String {
    let values: Vec<SortValue> = keys.iter().map(|(f, _)| sort_value(r, f)).collect();
    let body = json!({ "v": values, "id": r.asset_id });
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(body.to_string())
}

/// The position of `next_cursor`, which must come from a search with the same order.
fn read_position(
    params: &Params,
    keys: &[(String, bool)],
) -> ApiResult<Option<(Vec<SortValue>, String)>> {
    let Some(c) = params.nonempty("next_cursor") else {
        return Ok(None);
    };
    let invalid = || ApiError::bad(format!("Invalid next_cursor {c}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .map_err(|_| invalid())?;
    #[derive(serde::Deserialize)]
    struct Position {
        v: Vec<SortValue>,
        id: String,
    }
    let p: Position = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    if p.v.len() != keys.len() {
        return Err(invalid());
    }
    for ((field, _), v) in keys.iter().zip(&p.v) {
        let text = matches!(plan::sort_expr(field), Some(SortExpr::Text(_)) | None);
        match v {
            SortValue::Text(_) if text => {}
            SortValue::Num(n) if !text && n.is_finite() => {}
            _ => return Err(invalid()),
        }
    }
    Ok(Some((p.v, p.id)))
}

/// The `aggregate` fields asked for.
fn aggregate_fields(params: &Params) -> ApiResult<Vec<(String, AggField)>> {
    params
        .items("aggregate")
        .into_iter()
        .map(|name| {
            let field = match name.as_str() {
                "resource_type" => AggField::ResourceType,
                "type" => AggField::DeliveryType,
                "format" => AggField::Format,
                "tags" => AggField::Tags,
                "asset_folder" => AggField::AssetFolder,
                _ => return Err(ApiError::bad(format!("Invalid aggregate field {name}"))),
            };
            Ok((name, field))
        })
        .collect()
}

/// The values of an aggregated field in one asset.
fn aggregate_values(r: &AssetRecord, field: AggField) -> Vec<String> {
    match field {
        AggField::ResourceType => vec![r.key.resource_type.clone()],
        AggField::DeliveryType => vec![r.key.delivery_type.clone()],
        AggField::Format => r.format.iter().cloned().collect(),
        AggField::Tags => r.tags.clone(),
        AggField::AssetFolder => vec![r.asset_folder.clone()],
    }
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
    let ascending = match params.nonempty("direction") {
        None => false,
        Some(d) => matches!(d.to_ascii_lowercase().as_str(), "asc" | "1"),
    };
    let keys = [("created_at".to_string(), ascending)];
    let cursor = read_position(params, &keys)?;
    let mut found = state
        .meta
        .search_assets(&SearchQuery {
            cloud: cloud.to_string(),
            filter: Filter::Cond(Cond::Text {
                col: TextCol::AssetFolder,
                value: folder,
                prefix: false,
                fold: false,
            }),
            sort: vec![(SortExpr::Num(NumExpr::CreatedAt), ascending)],
            after: cursor,
            limit: max as i64 + 1,
        })
        .await?;
    let mut out = Map::new();
    if found.len() > max {
        found.truncate(max);
        if let Some(last) = found.last() {
            out.insert("next_cursor".into(), json!(write_position(last, &keys)));
        }
    }
    let resources: Vec<Json> = found
        .iter()
        .map(|r| listed(state, account, r, params))
        .collect();
    out.insert("resources".into(), Json::Array(resources));
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
