//! Structured metadata: the account's fields (string, integer, date, enum, set) with their
//! datasources, validation rules and defaults, the conditional metadata rules, and the
//! checking of the values assets carry against them.
//!
//! Fields and rules are documents of the metadata store (kinds [`FIELD`] and [`RULE`]); a
//! field's document is its Admin API answer, datasource entries keep their `state` so that a
//! soft-deleted entry can be restored.

use chrono::NaiveDate;
use serde_json::{json, Map, Value as Json};

use crate::db::DocOutcome;
use crate::error::{ApiError, ApiResult};
use crate::form::Params;
use crate::state::AppState;
use crate::util::random_hex;

const FIELD: &str = "metadata_field";
const RULE: &str = "metadata_rule";
/// One document (named [`ORDER_NAME`]) holding the explicit order of the fields.
const FIELD_ORDER: &str = "metadata_field_order";
const ORDER_NAME: &str = "order";
const TYPES: &[&str] = &["string", "integer", "date", "enum", "set"];
/// What a field create/update may carry (the rest is ignored, as the SDKs send only these).
const FIELD_KEYS: &[&str] = &[
    "type",
    "external_id",
    "label",
    "mandatory",
    "restrictions",
    "default_value",
    "default_disabled",
    "validation",
    "datasource",
    "allow_dynamic_list_values",
];
/// External IDs, labels and datasource values are at most this long.
const MAX_TEXT: usize = 255;
/// Datasource entries a field may have at most.
const MAX_ENTRIES: usize = 3000;
/// Fields (and rules) an account may have at most.
const MAX_FIELDS: usize = 1000;

/// The JSON object of an Admin call: the JSON body, or the form's plain values.
pub fn body_of(json: Option<&Json>, params: &Params) -> Map<String, Json> {
    if let Some(Json::Object(m)) = json {
        return m.clone();
    }
    let mut m = Map::new();
    for name in params.names() {
        let items = params.items(name);
        let v = match params.text(name) {
            Some(t) => json!(t),
            None => json!(items),
        };
        m.insert(name.to_string(), v);
    }
    m
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("Metadata field {id} not found"))
}

fn text_of(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn bool_of(v: Option<&Json>, name: &str) -> ApiResult<Option<bool>> {
    match v {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Bool(b)) => Ok(Some(*b)),
        Some(Json::String(s)) if s == "true" || s == "1" => Ok(Some(true)),
        Some(Json::String(s)) if s == "false" || s == "0" || s.is_empty() => Ok(Some(false)),
        Some(other) => Err(ApiError::bad(format!("Invalid value {other} for {name}"))),
    }
}

fn check_text(name: &str, s: &str) -> ApiResult<()> {
    if s.trim().is_empty() {
        return Err(ApiError::missing(name));
    }
    if s.chars().count() > MAX_TEXT {
        return Err(ApiError::bad(format!(
            "{name} is too long (maximum is {MAX_TEXT} characters)"
        )));
    }
    Ok(())
}

// ----- the fields ------------------------------------------------------------------------

async fn field_order(state: &AppState, cloud: &str) -> ApiResult<Vec<String>> {
    Ok(state
        .meta
        .get_doc(cloud, FIELD_ORDER, ORDER_NAME)
        .await?
        .and_then(|d| serde_json::from_value(d.body).ok())
        .unwrap_or_default())
}

/// The fields of a cloud, in their order.
pub async fn fields(state: &AppState, cloud: &str) -> ApiResult<Vec<Json>> {
    let docs = state.meta.list_docs(cloud, FIELD).await?;
    let order = field_order(state, cloud).await?;
    let mut docs: Vec<_> = docs.into_iter().enumerate().collect();
    docs.sort_by_key(|(created, d)| {
        (
            order
                .iter()
                .position(|n| *n == d.name)
                .unwrap_or(usize::MAX),
            *created,
        )
    });
    Ok(docs.into_iter().map(|(_, d)| d.body).collect())
}

pub async fn list_fields(state: &AppState, cloud: &str, params: &Params) -> ApiResult<Json> {
    let wanted = params.items("external_ids");
    let all = fields(state, cloud).await?;
    let list: Vec<Json> = all
        .into_iter()
        .filter(|f| {
            wanted.is_empty()
                || f["external_id"]
                    .as_str()
                    .is_some_and(|id| wanted.iter().any(|w| w == id))
        })
        .collect();
    Ok(json!({ "metadata_fields": list }))
}

pub async fn get_field(state: &AppState, cloud: &str, id: &str) -> ApiResult<Json> {
    match state.meta.get_doc(cloud, FIELD, id).await? {
        Some(d) => Ok(d.body),
        None => Err(not_found(id)),
    }
}

/// Datasource entries from a request: `{"values": [{"value", "external_id"?}, …]}`.
fn entries_of(v: &Json) -> ApiResult<Vec<(Option<String>, String)>> {
    let values = match v {
        Json::Object(m) => m.get("values").cloned().unwrap_or(Json::Null),
        Json::Array(_) => v.clone(),
        _ => Json::Null,
    };
    let Json::Array(items) = values else {
        return Err(ApiError::bad("datasource must have values"));
    };
    let mut out = Vec::new();
    for item in items {
        let value = item
            .get("value")
            .and_then(text_of)
            .ok_or_else(|| ApiError::bad("Each datasource value must have a value"))?;
        check_text("value", &value)?;
        let id = item.get("external_id").and_then(text_of);
        if let Some(id) = &id {
            check_text("external_id", id)?;
        }
        out.push((id, value));
    }
    Ok(out)
}

/// Merges entries into a datasource: a known external ID is updated in place, the others
/// are appended (with a generated ID when they have none).
fn merge_entries(ds: &mut Vec<Json>, entries: Vec<(Option<String>, String)>) -> ApiResult<()> {
    for (id, value) in entries {
        let found = id
            .as_deref()
            .and_then(|id| ds.iter_mut().find(|e| e["external_id"] == json!(id)));
        match found {
            Some(e) => e["value"] = json!(value),
            None => ds.push(json!({
                "external_id": id.unwrap_or_else(|| random_hex(10)),
                "value": value,
                "state": "active",
            })),
        }
    }
    if ds.len() > MAX_ENTRIES {
        return Err(ApiError::bad(format!(
            "A datasource has at most {MAX_ENTRIES} values"
        )));
    }
    Ok(())
}

fn active_ids(field: &Json) -> Vec<&str> {
    field["datasource"]["values"]
        .as_array()
        .map(|vals| {
            vals.iter()
                .filter(|e| e["state"].as_str().unwrap_or("active") == "active")
                .filter_map(|e| e["external_id"].as_str())
                .collect()
        })
        .unwrap_or_default()
}

/// Checks a validation object for a field type (it is stored as given).
fn check_validation(ty: &str, v: &Json) -> ApiResult<()> {
    if v.is_null() {
        return Ok(());
    }
    let bad = || ApiError::bad(format!("Invalid validation {v} for a {ty} field"));
    let kind = v["type"].as_str().ok_or_else(bad)?;
    match kind {
        "and" => {
            let rules = v["rules"].as_array().ok_or_else(bad)?;
            if rules.is_empty() {
                return Err(bad());
            }
            for r in rules {
                check_validation(ty, r)?;
            }
        }
        "strlen" if ty == "string" => {
            for bound in ["min", "max"] {
                if !v[bound].is_null() && !v[bound].is_u64() {
                    return Err(bad());
                }
            }
            if v["min"].is_null() && v["max"].is_null() {
                return Err(bad());
            }
        }
        "greater_than" | "less_than" if ty == "integer" => {
            v["value"].as_f64().ok_or_else(bad)?;
        }
        "greater_than" | "less_than" if ty == "date" => {
            v["value"].as_str().and_then(parse_date).ok_or_else(bad)?;
        }
        _ => return Err(bad()),
    }
    Ok(())
}

fn parse_date(s: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").ok()
}

/// Whether a normalized value passes a validation object.
fn passes(validation: &Json, value: &Json) -> bool {
    if validation.is_null() {
        return true;
    }
    let equals = validation["equals"].as_bool().unwrap_or(false);
    let order = |limit: &Json| -> Option<std::cmp::Ordering> {
        match (value, limit) {
            (Json::Number(a), Json::Number(b)) => a.as_f64()?.partial_cmp(&b.as_f64()?),
            (Json::String(a), Json::String(b)) => Some(parse_date(a)?.cmp(&parse_date(b)?)),
            _ => None,
        }
    };
    match validation["type"].as_str() {
        Some("and") => validation["rules"]
            .as_array()
            .is_some_and(|rules| rules.iter().all(|r| passes(r, value))),
        Some("strlen") => {
            let len = value.as_str().map(|s| s.chars().count() as u64);
            let min = validation["min"].as_u64().unwrap_or(0);
            let max = validation["max"].as_u64().unwrap_or(u64::MAX);
            len.is_some_and(|l| l >= min && l <= max)
        }
        Some("greater_than") => match order(&validation["value"]) {
            Some(std::cmp::Ordering::Greater) => true,
            Some(std::cmp::Ordering::Equal) => equals,
            _ => false,
        },
        Some("less_than") => match order(&validation["value"]) {
            Some(std::cmp::Ordering::Less) => true,
            Some(std::cmp::Ordering::Equal) => equals,
            _ => false,
        },
        _ => false,
    }
}

/// A value for a field, normalized to its stored form (`None` when invalid). `Json::Null`
/// stays null (it clears the field).
fn normalize(field: &Json, value: &Json) -> Option<Json> {
    if value.is_null() {
        return Some(Json::Null);
    }
    let ty = field["type"].as_str().unwrap_or("");
    let v = match ty {
        "string" => json!(text_of(value)?),
        "integer" => match value {
            Json::Number(n) if n.is_i64() => value.clone(),
            Json::String(s) => json!(s.trim().parse::<i64>().ok()?),
            _ => return None,
        },
        "date" => {
            let s = value.as_str()?;
            json!(parse_date(s)?.format("%Y-%m-%d").to_string())
        }
        "enum" => {
            let id = match value {
                Json::Array(a) if a.len() == 1 => text_of(&a[0])?,
                other => text_of(other)?,
            };
            if !active_ids(field).contains(&id.as_str()) {
                return None;
            }
            json!(id)
        }
        "set" => {
            let ids: Vec<String> = match value {
                Json::Array(a) => a.iter().map(text_of).collect::<Option<_>>()?,
                other => vec![text_of(other)?],
            };
            let active = active_ids(field);
            let mut out: Vec<String> = Vec::new();
            for id in ids {
                if !active.contains(&id.as_str()) {
                    return None;
                }
                if !out.contains(&id) {
                    out.push(id);
                }
            }
            json!(out)
        }
        _ => return None,
    };
    passes(&field["validation"], &v).then_some(v)
}

/// Builds a field's document from a create request.
fn new_field(body: &Map<String, Json>) -> ApiResult<Json> {
    let ty = body
        .get("type")
        .and_then(Json::as_str)
        .ok_or_else(|| ApiError::missing("type"))?;
    if !TYPES.contains(&ty) {
        return Err(ApiError::bad(format!(
            "Invalid type {ty}: must be one of string, integer, date, enum, set"
        )));
    }
    let label = body
        .get("label")
        .and_then(text_of)
        .ok_or_else(|| ApiError::missing("label"))?;
    check_text("label", &label)?;
    let external_id = match body.get("external_id").and_then(text_of) {
        Some(id) => {
            check_text("external_id", &id)?;
            id
        }
        None => random_hex(16),
    };
    let mut field = Map::new();
    field.insert("type".into(), json!(ty));
    field.insert("external_id".into(), json!(external_id));
    field.insert("label".into(), json!(label));
    field.insert("mandatory".into(), json!(false));
    field.insert("default_value".into(), Json::Null);
    field.insert("validation".into(), Json::Null);
    field.insert("default_disabled".into(), json!(false));
    field.insert("restrictions".into(), json!({"readonly_ui": false}));
    field.insert("allow_dynamic_list_values".into(), json!(false));
    if ty == "enum" || ty == "set" {
        // Filled from the request's datasource by `apply_changes`.
        if !body.contains_key("datasource") {
            return Err(ApiError::missing("datasource"));
        }
        field.insert("datasource".into(), json!({ "values": [] }));
    }
    let mut field = Json::Object(field);
    apply_changes(&mut field, body)?;
    Ok(field)
}

/// Applies the changeable keys of a create/update request to a field, then checks the result.
fn apply_changes(field: &mut Json, body: &Map<String, Json>) -> ApiResult<()> {
    let ty = field["type"].as_str().unwrap_or("").to_string();
    if let Some(label) = body.get("label").and_then(text_of) {
        check_text("label", &label)?;
        field["label"] = json!(label);
    }
    for flag in ["mandatory", "default_disabled", "allow_dynamic_list_values"] {
        if let Some(b) = bool_of(body.get(flag), flag)? {
            field[flag] = json!(b);
        }
    }
    if let Some(r) = body.get("restrictions") {
        let Json::Object(given) = r else {
            return Err(ApiError::bad("restrictions must be an object"));
        };
        for (k, v) in given {
            field["restrictions"][k] = v.clone();
        }
    }
    if let Some(v) = body.get("validation") {
        check_validation(&ty, v)?;
        field["validation"] = v.clone();
    }
    if let Some(ds) = body.get("datasource") {
        if ty == "enum" || ty == "set" {
            let Json::Array(mut values) = field["datasource"]["values"].take() else {
                return Err(ApiError::internal("datasource without values"));
            };
            merge_entries(&mut values, entries_of(ds)?)?;
            field["datasource"] = json!({ "values": values });
        }
    }
    if let Some(d) = body.get("default_value") {
        field["default_value"] = d.clone();
    }
    // The default (as now stored) must satisfy the field as it now is.
    let default = field["default_value"].clone();
    if !default.is_null() {
        match normalize(field, &default) {
            Some(v) => field["default_value"] = v,
            None => return Err(ApiError::bad("default_value is invalid")),
        }
    }
    if field["mandatory"] == json!(true) && field["default_value"].is_null() {
        return Err(ApiError::bad(
            "default_value is required for a mandatory field",
        ));
    }
    Ok(())
}

fn only_field_keys(body: Map<String, Json>) -> Map<String, Json> {
    body.into_iter()
        .filter(|(k, _)| FIELD_KEYS.contains(&k.as_str()))
        .collect()
}

pub async fn create_field(
    state: &AppState,
    cloud: &str,
    body: Map<String, Json>,
) -> ApiResult<Json> {
    let field = new_field(&only_field_keys(body))?;
    let id = field["external_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if state.meta.list_docs(cloud, FIELD).await?.len() >= MAX_FIELDS {
        return Err(ApiError::bad(format!(
            "An account has at most {MAX_FIELDS} metadata fields"
        )));
    }
    if !state
        .meta
        .create_doc(cloud, FIELD, &id, &field, state.now())
        .await?
    {
        return Err(ApiError::bad(format!("external id {id} already exists")));
    }
    state.fields.forget(cloud);
    Ok(field)
}

/// Applies a change to a field under its lock; a refusal becomes a 400.
async fn change_field(
    state: &AppState,
    cloud: &str,
    id: &str,
    change: &(dyn Fn(&mut Json) -> ApiResult<()> + Send + Sync),
) -> ApiResult<Json> {
    let wrapped = |doc: &mut Json| change(doc).map_err(|e| e.to_string());
    let outcome = state.meta.modify_doc(cloud, FIELD, id, &wrapped).await?;
    state.fields.forget(cloud);
    match outcome {
        DocOutcome::Changed(v) => Ok(v),
        DocOutcome::NotFound => Err(not_found(id)),
        DocOutcome::Refused(why) => Err(ApiError::bad(why)),
    }
}

pub async fn update_field(
    state: &AppState,
    cloud: &str,
    id: &str,
    body: Map<String, Json>,
) -> ApiResult<Json> {
    let mut body = only_field_keys(body);
    // The external ID and the type of a field never change.
    body.remove("external_id");
    body.remove("type");
    change_field(state, cloud, id, &|f: &mut Json| apply_changes(f, &body)).await
}

pub async fn delete_field(state: &AppState, cloud: &str, id: &str) -> ApiResult<Json> {
    let deleted = state.meta.delete_doc(cloud, FIELD, id).await?;
    state.fields.forget(cloud);
    if !deleted {
        return Err(not_found(id));
    }
    Ok(json!({"message": "ok"}))
}

/// The active entries of a datasource as the datasource calls answer them.
fn datasource_answer(field: &Json) -> Json {
    let values: Vec<Json> = field["datasource"]["values"]
        .as_array()
        .map(|vals| {
            vals.iter()
                .filter(|e| e["state"].as_str().unwrap_or("active") == "active")
                .map(|e| json!({"external_id": e["external_id"], "value": e["value"]}))
                .collect()
        })
        .unwrap_or_default();
    json!({ "values": values })
}

fn with_datasource(
    f: &mut Json,
    change: impl Fn(&mut Vec<Json>) -> ApiResult<()>,
) -> ApiResult<()> {
    let id = f["external_id"].clone();
    let Json::Array(values) = &mut f["datasource"]["values"] else {
        return Err(ApiError::bad(format!(
            "Metadata field {} has no datasource",
            id.as_str().unwrap_or("")
        )));
    };
    change(values)
}

/// `PUT metadata_fields/:id/datasource`: merges entries.
pub async fn update_datasource(
    state: &AppState,
    cloud: &str,
    id: &str,
    body: Map<String, Json>,
) -> ApiResult<Json> {
    let entries = entries_of(&Json::Object(body))?;
    let change = |f: &mut Json| {
        with_datasource(f, |values| merge_entries(values, entries.clone()))?;
        let default = f["default_value"].clone();
        if !default.is_null() && normalize(f, &default).is_none() {
            return Err(ApiError::bad("default_value is invalid"));
        }
        Ok(())
    };
    Ok(datasource_answer(
        &change_field(state, cloud, id, &change).await?,
    ))
}

fn external_ids(body: &Map<String, Json>) -> ApiResult<Vec<String>> {
    let ids: Vec<String> = match body.get("external_ids") {
        Some(Json::Array(a)) => a.iter().filter_map(text_of).collect(),
        Some(other) => text_of(other).into_iter().collect(),
        None => Vec::new(),
    };
    if ids.is_empty() {
        return Err(ApiError::missing("external_ids"));
    }
    Ok(ids)
}

/// `DELETE metadata_fields/:id/datasource` (soft: the entries become inactive) and
/// `POST …/datasource_restore` (active again).
pub async fn set_entries_state(
    state: &AppState,
    cloud: &str,
    id: &str,
    body: Map<String, Json>,
    active: bool,
) -> ApiResult<Json> {
    let ids = external_ids(&body)?;
    let new_state = if active { "active" } else { "inactive" };
    let change = |f: &mut Json| {
        with_datasource(f, |values| {
            for e in values.iter_mut() {
                if e["external_id"]
                    .as_str()
                    .is_some_and(|x| ids.iter().any(|i| i == x))
                {
                    e["state"] = json!(new_state);
                }
            }
            Ok(())
        })
    };
    Ok(datasource_answer(
        &change_field(state, cloud, id, &change).await?,
    ))
}

fn descending(body: &Map<String, Json>) -> ApiResult<bool> {
    match body.get("direction").and_then(Json::as_str) {
        None | Some("asc") => Ok(false),
        Some("desc") => Ok(true),
        Some(other) => Err(ApiError::bad(format!(
            "Invalid direction {other}: must be asc or desc"
        ))),
    }
}

/// `POST metadata_fields/:id/datasource/order` (`order_by=value`).
pub async fn order_datasource(
    state: &AppState,
    cloud: &str,
    id: &str,
    body: Map<String, Json>,
) -> ApiResult<Json> {
    match body.get("order_by").and_then(Json::as_str) {
        Some("value") => {}
        Some(other) => {
            return Err(ApiError::bad(format!(
                "Invalid order_by {other}: must be value"
            )))
        }
        None => return Err(ApiError::missing("order_by")),
    }
    let desc = descending(&body)?;
    let change = |f: &mut Json| {
        with_datasource(f, |values| {
            values.sort_by(|a, b| {
                let o = a["value"]
                    .as_str()
                    .unwrap_or("")
                    .cmp(b["value"].as_str().unwrap_or(""));
                if desc {
                    o.reverse()
                } else {
                    o
                }
            });
            Ok(())
        })
    };
    Ok(datasource_answer(
        &change_field(state, cloud, id, &change).await?,
    ))
}

/// `PUT metadata_fields/order` (`order_by` label, external_id or created_at).
pub async fn order_fields(
    state: &AppState,
    cloud: &str,
    body: Map<String, Json>,
) -> ApiResult<Json> {
    let by = body
        .get("order_by")
        .and_then(Json::as_str)
        .ok_or_else(|| ApiError::missing("order_by"))?;
    if !["label", "external_id", "created_at"].contains(&by) {
        return Err(ApiError::bad(format!(
            "Invalid order_by {by}: must be one of label, external_id, created_at"
        )));
    }
    let desc = descending(&body)?;
    let mut docs = state.meta.list_docs(cloud, FIELD).await?;
    docs.sort_by(|a, b| {
        let o = match by {
            "created_at" => a.created_at.cmp(&b.created_at),
            key => a.body[key]
                .as_str()
                .unwrap_or("")
                .cmp(b.body[key].as_str().unwrap_or("")),
        };
        if desc {
            o.reverse()
        } else {
            o
        }
    });
    let names: Vec<String> = docs.iter().map(|d| d.name.clone()).collect();
    state
        .meta
        .put_doc(cloud, FIELD_ORDER, ORDER_NAME, &json!(names), state.now())
        .await?;
    let list: Vec<Json> = docs.into_iter().map(|d| d.body).collect();
    Ok(json!({ "metadata_fields": list }))
}

// ----- the values of assets ----------------------------------------------------------------

/// The live fields of a cloud by external ID.
pub async fn field_map(state: &AppState, cloud: &str) -> ApiResult<Map<String, Json>> {
    if let Some(fields) = state.fields.get(cloud) {
        return Ok(fields);
    }
    let fields: Map<String, Json> = state
        .meta
        .list_docs(cloud, FIELD)
        .await?
        .into_iter()
        .map(|d| (d.name, d.body))
        .collect();
    state.fields.put(cloud, &fields);
    Ok(fields)
}

/// When each cloud's fields were read, and what they were.
type CachedFields = std::collections::HashMap<String, (std::time::Instant, Map<String, Json>)>;

/// The fields of each cloud, cached for a few seconds (every upload reads them for the
/// defaults); this process forgets a cloud's entry when it changes one of its fields.
#[derive(Default)]
pub struct FieldCache {
    by_cloud: std::sync::Mutex<CachedFields>,
}

/// How long cached fields are trusted (another process sees a change within this time).
const FIELD_CACHE_SECS: u64 = 5;

impl FieldCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, CachedFields> {
        match self.by_cloud.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn get(&self, cloud: &str) -> Option<Map<String, Json>> {
        self.lock()
            .get(cloud)
            .filter(|(at, _)| at.elapsed().as_secs() < FIELD_CACHE_SECS)
            .map(|(_, f)| f.clone())
    }

    fn put(&self, cloud: &str, fields: &Map<String, Json>) {
        self.lock().insert(
            cloud.to_string(),
            (std::time::Instant::now(), fields.clone()),
        );
    }

    pub fn forget(&self, cloud: &str) {
        self.lock().remove(cloud);
    }
}

/// Checks `metadata` values (`{external_id: raw value}`, as parsed from the wire) against the
/// cloud's fields: each becomes its stored form; an empty value becomes `null` (clear).
pub async fn resolve(
    state: &AppState,
    cloud: &str,
    given: Map<String, Json>,
) -> ApiResult<Map<String, Json>> {
    if given.is_empty() {
        return Ok(given);
    }
    let fields = field_map(state, cloud).await?;
    let mut out = Map::new();
    for (id, raw) in given {
        let field = fields
            .get(&id)
            .ok_or_else(|| ApiError::bad(format!("Metadata field {id} does not exist")))?;
        let raw = match raw {
            Json::String(s) if s.is_empty() => Json::Null,
            other => other,
        };
        if raw.is_null() && field["mandatory"] == json!(true) {
            return Err(ApiError::bad(format!(
                "Metadata field {id} is mandatory and cannot be cleared"
            )));
        }
        let value = normalize(field, &raw).ok_or_else(|| {
            ApiError::bad(format!(
                "Value {} is invalid for metadata field {id}",
                shown(&raw)
            ))
        })?;
        out.insert(id, value);
    }
    Ok(out)
}

fn shown(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The metadata of a new asset: the given values, then every field's default the request
/// did not set (unless the field's default is disabled).
pub async fn for_new_asset(
    state: &AppState,
    cloud: &str,
    given: Map<String, Json>,
) -> ApiResult<Map<String, Json>> {
    let fields = field_map(state, cloud).await?;
    if fields.is_empty() && given.is_empty() {
        return Ok(given);
    }
    let mut values = resolve(state, cloud, given).await?;
    for (id, field) in fields {
        if values.contains_key(&id)
            || field["default_value"].is_null()
            || field["default_disabled"] == json!(true)
        {
            continue;
        }
        values.insert(id, field["default_value"].clone());
    }
    values.retain(|_, v| !v.is_null());
    Ok(values)
}

/// Merges resolved values into an asset's metadata (`null` removes a field); with
/// `clear_invalid`, values that no longer satisfy their field are dropped.
pub fn merge(
    target: &mut Map<String, Json>,
    values: &Map<String, Json>,
    fields: Option<&Map<String, Json>>,
) {
    for (k, v) in values {
        if v.is_null() {
            target.remove(k);
        } else {
            target.insert(k.clone(), v.clone());
        }
    }
    if let Some(fields) = fields {
        target.retain(|k, v| {
            fields
                .get(k)
                .is_some_and(|f| normalize(f, v).is_some_and(|n| n == *v))
        });
    }
}

/// An asset's metadata as answered: the values of fields that still exist.
pub fn visible(values: &Map<String, Json>, fields: &Map<String, Json>) -> Map<String, Json> {
    values
        .iter()
        .filter(|(k, _)| fields.contains_key(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

// ----- conditional metadata rules ----------------------------------------------------------

fn rule_not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("Metadata rule {id} not found"))
}

pub async fn list_rules(state: &AppState, cloud: &str) -> ApiResult<Json> {
    let rules: Vec<Json> = state
        .meta
        .list_docs(cloud, RULE)
        .await?
        .into_iter()
        .map(|d| d.body)
        .collect();
    Ok(json!({ "metadata_rules": rules }))
}

fn apply_rule_changes(rule: &mut Json, body: &Map<String, Json>) -> ApiResult<()> {
    for key in ["metadata_field_id", "name"] {
        if let Some(v) = body.get(key) {
            let t = text_of(v).ok_or_else(|| ApiError::bad(format!("Invalid {key}")))?;
            check_text(key, &t)?;
            rule[key] = json!(t);
        }
    }
    for key in ["condition", "result"] {
        if let Some(v) = body.get(key) {
            if !v.is_object() {
                return Err(ApiError::bad(format!("{key} must be an object")));
            }
            rule[key] = v.clone();
        }
    }
    if let Some(s) = body.get("state") {
        match s.as_str() {
            Some(st @ ("active" | "inactive")) => rule["state"] = json!(st),
            _ => return Err(ApiError::bad("Invalid state: must be active or inactive")),
        }
    }
    Ok(())
}

pub async fn create_rule(
    state: &AppState,
    cloud: &str,
    body: Map<String, Json>,
) -> ApiResult<Json> {
    for key in ["metadata_field_id", "name", "condition", "result"] {
        if !body.contains_key(key) {
            return Err(ApiError::missing(key));
        }
    }
    let existing = state.meta.list_docs(cloud, RULE).await?;
    if existing.len() >= MAX_FIELDS {
        return Err(ApiError::bad(format!(
            "An account has at most {MAX_FIELDS} metadata rules"
        )));
    }
    let id = body
        .get("external_id")
        .and_then(text_of)
        .unwrap_or_else(|| random_hex(16));
    check_text("external_id", &id)?;
    let mut rule = json!({
        "external_id": id,
        "metadata_field_id": Json::Null,
        "name": Json::Null,
        "condition": {},
        "result": {},
        "state": "active",
        "position": existing.len() + 1,
    });
    apply_rule_changes(&mut rule, &body)?;
    if !state
        .meta
        .create_doc(cloud, RULE, &id, &rule, state.now())
        .await?
    {
        return Err(ApiError::bad(format!("external id {id} already exists")));
    }
    Ok(rule)
}

pub async fn update_rule(
    state: &AppState,
    cloud: &str,
    id: &str,
    body: Map<String, Json>,
) -> ApiResult<Json> {
    let change = |r: &mut Json| apply_rule_changes(r, &body).map_err(|e| e.to_string());
    match state.meta.modify_doc(cloud, RULE, id, &change).await? {
        DocOutcome::Changed(v) => Ok(v),
        DocOutcome::NotFound => Err(rule_not_found(id)),
        DocOutcome::Refused(why) => Err(ApiError::bad(why)),
    }
}

pub async fn delete_rule(state: &AppState, cloud: &str, id: &str) -> ApiResult<Json> {
    if !state.meta.delete_doc(cloud, RULE, id).await? {
        return Err(rule_not_found(id));
    }
    Ok(json!({"success": true}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(ty: &str, validation: Json) -> Json {
        json!({"type": ty, "validation": validation, "datasource": {"values": [
            {"external_id": "a", "value": "A", "state": "active"},
            {"external_id": "b", "value": "B", "state": "inactive"},
            {"external_id": "1", "value": "One", "state": "active"},
        ]}})
    }

    #[test]
    fn values_are_normalized_by_type() {
        let int = field(
            "integer",
            json!({"type": "less_than", "value": 5, "equals": true}),
        );
        assert_eq!(normalize(&int, &json!("5")), Some(json!(5)));
        assert_eq!(normalize(&int, &json!("6")), None);
        assert_eq!(normalize(&int, &json!("x")), None);
        let date = field(
            "date",
            json!({"type": "and", "rules": [
                {"type": "greater_than", "equals": false, "value": "2026-01-01"},
                {"type": "less_than", "equals": false, "value": "2026-02-01"}]}),
        );
        assert_eq!(
            normalize(&date, &json!("2026-01-15")),
            Some(json!("2026-01-15"))
        );
        assert_eq!(normalize(&date, &json!("2026-01-01")), None);
        assert_eq!(normalize(&date, &json!("2026-13-01")), None);
        let set = field("set", Json::Null);
        assert_eq!(
            normalize(&set, &json!([1, "a", "a"])),
            Some(json!(["1", "a"]))
        );
        assert_eq!(normalize(&set, &json!(["b"])), None, "inactive entry");
        let en = field("enum", Json::Null);
        assert_eq!(normalize(&en, &json!("a")), Some(json!("a")));
        assert_eq!(
            normalize(&en, &json!("A")),
            None,
            "values are named by external ID"
        );
        let s = field("string", json!({"type": "strlen", "min": 2, "max": 3}));
        assert_eq!(normalize(&s, &json!("ab")), Some(json!("ab")));
        assert_eq!(normalize(&s, &json!("abcd")), None);
    }

    #[test]
    fn validations_are_checked_for_the_type() {
        assert!(check_validation("integer", &json!({"type": "less_than", "value": 5})).is_ok());
        assert!(check_validation("string", &json!({"type": "less_than", "value": 5})).is_err());
        assert!(check_validation("date", &json!({"type": "greater_than", "value": "x"})).is_err());
        assert!(check_validation("string", &json!({"type": "and", "rules": []})).is_err());
    }

    #[test]
    fn datasource_merge_updates_in_place_and_appends() {
        let mut ds = vec![json!({"external_id": "x", "value": "v2", "state": "active"})];
        merge_entries(
            &mut ds,
            vec![(Some("x".into()), "v1".into()), (None, "v3".into())],
        )
        .unwrap();
        assert_eq!(ds[0]["value"], json!("v1"));
        assert_eq!(ds.len(), 2);
        assert!(ds[1]["external_id"].as_str().is_some_and(|s| !s.is_empty()));
    }
}
