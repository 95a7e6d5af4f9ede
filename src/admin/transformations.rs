//! The Admin API `transformations` endpoints: named transformations (stored as documents) and
//! the transformations derived versions were made with, each described as `info` (one object
//! of long parameter names per component).

use serde_json::{json, Map, Value as Json};

use crate::error::{ApiError, ApiResult};
use crate::form::Params;
use crate::media::transform;
use crate::state::AppState;

const KIND: &str = "transformation";

/// Cloudinary's short transformation keys and their long names.
const LONG_NAMES: &[(&str, &str)] = &[
    ("w", "width"),
    ("h", "height"),
    ("c", "crop"),
    ("g", "gravity"),
    ("x", "x"),
    ("y", "y"),
    ("q", "quality"),
    ("f", "fetch_format"),
    ("e", "effect"),
    ("a", "angle"),
    ("r", "radius"),
    ("o", "opacity"),
    ("b", "background"),
    ("bo", "border"),
    ("l", "overlay"),
    ("u", "underlay"),
    ("br", "bit_rate"),
    ("vc", "video_codec"),
    ("ac", "audio_codec"),
    ("af", "audio_frequency"),
    ("fps", "fps"),
    ("dpr", "dpr"),
    ("ar", "aspect_ratio"),
    ("fl", "flags"),
    ("t", "transformation"),
    ("co", "color"),
    ("d", "default_image"),
    ("z", "zoom"),
    ("pg", "page"),
    ("sp", "streaming_profile"),
    ("so", "start_offset"),
    ("eo", "end_offset"),
    ("du", "duration"),
    ("dl", "delay"),
    ("cs", "color_space"),
    ("dn", "density"),
    ("ki", "keyframe_interval"),
    ("$", "variables"),
];

/// `c_scale,w_100/e_sepia` → `[{"crop": "scale", "width": 100}, {"effect": "sepia"}]`; whole
/// numbers become JSON numbers.
pub fn info(transformation: &str) -> Json {
    let components: Vec<Json> = transformation
        .split('/')
        .filter(|c| !c.is_empty())
        .map(|component| {
            let mut m = Map::new();
            for item in component.split(',') {
                let (key, value) = item.split_once('_').unwrap_or((item, ""));
                let name = LONG_NAMES
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, n)| *n)
                    .unwrap_or(key);
                let v = match value.parse::<i64>() {
                    Ok(n) if !value.starts_with('+') && !value.starts_with("-0") => json!(n),
                    _ => json!(value),
                };
                m.insert(name.to_string(), v);
            }
            Json::Object(m)
        })
        .collect();
    Json::Array(components)
}

fn not_found(t: &str) -> ApiError {
    ApiError::NotFound(format!("Transformation {t} not found"))
}

/// A name as the API takes it: `t_<name>` and `<name>` are the same transformation.
fn bare(name: &str) -> &str {
    name.strip_prefix("t_").unwrap_or(name)
}

/// Checks a transformation string nephos can apply (so that a named transformation means
/// something nephos can make).
fn check_string(t: &str) -> ApiResult<()> {
    let without_format = match t.rsplit_once('/') {
        Some((rest, f)) if transform::OUTPUT_FORMATS.contains(&f) || f.is_empty() => rest,
        _ => t,
    };
    if without_format.is_empty() {
        return Err(ApiError::bad("Transformation is empty"));
    }
    transform::parse(without_format)
        .map_err(|m| ApiError::bad(format!("Invalid transformation - {m}")))?;
    Ok(())
}

/// `GET transformations`: named transformations and those derived versions were made with.
pub async fn list(state: &AppState, cloud: &str, params: &Params) -> ApiResult<Json> {
    let named_only = params.text("named").and_then(crate::util::parse_bool);
    let docs = state.meta.list_docs(cloud, KIND).await?;
    let derived = state.meta.derived_of_cloud(cloud, None).await?;
    let mut out: Vec<Json> = Vec::new();
    if named_only != Some(false) {
        for d in &docs {
            let t = d.body["transformation"].as_str().unwrap_or("");
            out.push(json!({
                "name": if d.body["named"] == json!(true) { format!("t_{}", d.name) } else { d.name.clone() },
                "allowed_for_strict": d.body["allowed_for_strict"],
                "used": derived.iter().any(|r| r.transformation == t),
                "named": d.body["named"],
            }));
        }
    }
    if named_only != Some(true) {
        let mut seen: Vec<&str> = Vec::new();
        for r in &derived {
            let t = r.transformation.as_str();
            if t.is_empty() || seen.contains(&t) || docs.iter().any(|d| d.name == t) {
                continue;
            }
            seen.push(t);
            out.push(json!({"name": t, "allowed_for_strict": false, "used": true, "named": false}));
        }
    }
    Ok(super::offset_page(out, "transformations", params))
}

/// `GET transformations?transformation=<name or string>`.
pub async fn get(state: &AppState, cloud: &str, params: &Params) -> ApiResult<Json> {
    let t = params.required("transformation")?;
    let doc = state.meta.get_doc(cloud, KIND, bare(t)).await?;
    let (name, string, allowed, named) = match &doc {
        Some(d) => (
            if d.body["named"] == json!(true) {
                format!("t_{}", d.name)
            } else {
                d.name.clone()
            },
            d.body["transformation"].as_str().unwrap_or("").to_string(),
            d.body["allowed_for_strict"].clone(),
            d.body["named"].clone(),
        ),
        None => (t.to_string(), t.to_string(), json!(false), json!(false)),
    };
    let mut derived = state.meta.derived_of_cloud(cloud, Some(&string)).await?;
    if doc.is_none() && derived.is_empty() {
        return Err(not_found(t));
    }
    if let Some(d) = &doc {
        if d.body["named"] == json!(true) {
            derived.extend(state.meta.derived_of_cloud(cloud, Some(&d.name)).await?);
        }
    }
    let mut list = Vec::new();
    for d in derived.iter().take(500) {
        list.push(json!({
            "id": d.id,
            "format": d.format,
            "bytes": d.bytes,
            "asset_id": d.asset_id,
        }));
    }
    Ok(json!({
        "name": name,
        "allowed_for_strict": allowed,
        "used": !derived.is_empty(),
        "named": named,
        "info": info(&string),
        "derived": list,
    }))
}

/// `POST transformations` (`name`, `transformation`): a named transformation; a name equal to
/// its transformation string records an unnamed one.
pub async fn create(state: &AppState, cloud: &str, params: &Params) -> ApiResult<Json> {
    let name = params.required("name")?;
    let t = params.required("transformation")?;
    check_string(&expand_named(state, cloud, t).await?.0)?;
    let named = name != t;
    let key = if named { bare(name) } else { name };
    if named && !super::valid_name(key, &['_', '-', '.']) {
        return Err(ApiError::bad(format!(
            "Invalid name {name}: use letters, digits, '_', '-' and '.'"
        )));
    }
    let allowed = params
        .text("allowed_for_strict")
        .and_then(crate::util::parse_bool)
        .unwrap_or(false);
    let body = json!({"transformation": t, "named": named, "allowed_for_strict": allowed});
    if !state
        .meta
        .create_doc(cloud, KIND, key, &body, state.now())
        .await?
    {
        return Err(ApiError::Conflict(format!(
            "Transformation {name} already exists"
        )));
    }
    Ok(json!({"message": "created"}))
}

/// `PUT transformations`: `allowed_for_strict`, and `unsafe_update` (a new definition of a
/// named transformation).
pub async fn update(state: &AppState, cloud: &str, params: &Params) -> ApiResult<Json> {
    let t = params.required("transformation")?;
    let new_def = params.nonempty("unsafe_update").map(str::to_string);
    if let Some(d) = &new_def {
        check_string(&expand_named(state, cloud, d).await?.0)?;
    }
    let allowed = params
        .text("allowed_for_strict")
        .and_then(crate::util::parse_bool);
    let change = |doc: &mut Json| {
        if let Some(d) = &new_def {
            if doc["named"] != json!(true) {
                return Err("unsafe_update applies to named transformations only".to_string());
            }
            doc["transformation"] = json!(d);
        }
        if let Some(a) = allowed {
            doc["allowed_for_strict"] = json!(a);
        }
        Ok(())
    };
    match state.meta.modify_doc(cloud, KIND, bare(t), &change).await? {
        crate::db::DocOutcome::Changed(_) => Ok(json!({"message": "updated"})),
        crate::db::DocOutcome::Refused(why) => Err(ApiError::bad(why)),
        crate::db::DocOutcome::NotFound => {
            // An unnamed transformation in use: recorded so that its settings persist.
            if new_def.is_some()
                || state
                    .meta
                    .derived_of_cloud(cloud, Some(t))
                    .await?
                    .is_empty()
            {
                return Err(not_found(t));
            }
            let body = json!({"transformation": t, "named": false,
                              "allowed_for_strict": allowed.unwrap_or(false)});
            state
                .meta
                .create_doc(cloud, KIND, t, &body, state.now())
                .await?;
            Ok(json!({"message": "updated"}))
        }
    }
}

/// `DELETE transformations`: a named transformation, or the derived versions made with a
/// transformation string.
pub async fn delete(state: &AppState, cloud: &str, params: &Params) -> ApiResult<Json> {
    let t = params.required("transformation")?;
    let removed_doc = state.meta.delete_doc(cloud, KIND, bare(t)).await?;
    let derived = state.meta.derived_of_cloud(cloud, Some(t)).await?;
    let ids: Vec<String> = derived.iter().map(|d| d.id.clone()).collect();
    if !ids.is_empty() {
        let gone = state.meta.delete_derived(cloud, None, &ids).await?;
        super::forget_derived_blobs(state, cloud, &gone).await;
    }
    if !removed_doc && ids.is_empty() {
        return Err(not_found(t));
    }
    Ok(json!({"message": "deleted"}))
}

/// Named transformations one transformation may name at most (each is a lookup).
const MAX_NAMES: usize = 32;

/// Named transformations nest at most this deep.
const MAX_NESTING: usize = 5;

/// Replaces every `t_<name>` (and `t_<a>.<b>`, applied in turn) with the named
/// transformation's string; answers the expanded transformation and whether it used only
/// named transformations allowed for strict mode.
pub async fn expand_named(state: &AppState, cloud: &str, t: &str) -> ApiResult<(String, bool)> {
    expand_at(state, cloud, t, 0).await
}

fn expand_at<'a>(
    state: &'a AppState,
    cloud: &'a str,
    t: &'a str,
    depth: usize,
) -> futures_util::future::BoxFuture<'a, ApiResult<(String, bool)>> {
    use futures_util::FutureExt;
    async move {
        if !t.contains("t_") {
            return Ok((t.to_string(), false));
        }
        if depth >= MAX_NESTING {
            return Err(ApiError::bad(format!(
                "Named transformations nest at most {MAX_NESTING} deep"
            )));
        }
        let mut components: Vec<String> = Vec::new();
        let mut strict_ok = true;
        let mut looked_up = 0usize;
        for component in t.split('/') {
            let mut plain: Vec<&str> = Vec::new();
            let mut named: Vec<String> = Vec::new();
            for item in component.split(',') {
                let Some(names) = item.strip_prefix("t_") else {
                    plain.push(item);
                    continue;
                };
                // `t_a.b` applies a, then b (unless a name with the dot exists).
                let whole = state
                    .meta
                    .get_doc(cloud, KIND, names)
                    .await?
                    .is_some_and(|d| d.body["named"] == json!(true));
                let parts: Vec<&str> = if whole {
                    vec![names]
                } else {
                    names.split('.').collect()
                };
                looked_up += parts.len();
                if looked_up > MAX_NAMES {
                    return Err(ApiError::bad(format!(
                        "Too many named transformations (at most {MAX_NAMES})"
                    )));
                }
                for name in parts {
                    let doc = state
                        .meta
                        .get_doc(cloud, KIND, name)
                        .await?
                        .filter(|d| d.body["named"] == json!(true))
                        .ok_or_else(|| {
                            ApiError::bad(format!("Transformation t_{name} not found"))
                        })?;
                    strict_ok &= doc.body["allowed_for_strict"] == json!(true);
                    let string = doc.body["transformation"].as_str().unwrap_or("");
                    // A trailing bare format (`…/jpg`) is the format step `f_jpg`.
                    let string = match string.rsplit_once('/') {
                        Some((rest, f)) if transform::OUTPUT_FORMATS.contains(&f) => {
                            format!("{rest}/f_{f}")
                        }
                        _ => string.to_string(),
                    };
                    let (inner, _) = expand_at(state, cloud, &string, depth + 1).await?;
                    named.push(inner);
                }
            }
            if !plain.is_empty() {
                strict_ok = false;
            }
            match (named.len(), plain.is_empty()) {
                (0, _) => components.push(component.to_string()),
                // Alone in its component: the named steps replace it.
                (_, true) => components.extend(named),
                // Beside other parameters: one step merged with them when it is one step,
                // else the named steps come first.
                (1, false) if !named[0].contains('/') => {
                    components.push(format!("{},{}", named[0], plain.join(",")))
                }
                _ => {
                    components.extend(named);
                    components.push(plain.join(","));
                }
            }
        }
        Ok((components.join("/"), strict_ok))
    }
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_names_every_parameter() {
        assert_eq!(
            info("c_scale,l_text:arial_20:hi,w_100"),
            json!([{"crop": "scale", "overlay": "text:arial_20:hi", "width": 100}])
        );
        assert_eq!(
            info("br_5m,c_limit,h_1200,w_1200/e_sepia"),
            json!([{"bit_rate": "5m", "crop": "limit", "height": 1200, "width": 1200},
                   {"effect": "sepia"}])
        );
    }
}
