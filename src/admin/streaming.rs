//! Adaptive-streaming profiles (Admin API `streaming_profiles`): Cloudinary's predefined ones
//! and the account's own (documents). A custom profile with a predefined name overrides it
//! until deleted.

use serde_json::{json, Value as Json};

use super::transformations::info;
use crate::error::{ApiError, ApiResult};
use crate::form::Params;
use crate::state::AppState;

const KIND: &str = "streaming_profile";

/// The rungs of Cloudinary's predefined ladders: width, height, bit rate.
const LADDER: &[(u32, u32, &str)] = &[
    (320, 240, "192k"),
    (480, 270, "800k"),
    (640, 360, "2m"),
    (960, 540, "3500k"),
    (1280, 720, "5500k"),
    (1920, 1080, "8500k"),
    (2560, 1440, "16m"),
    (3840, 2160, "35m"),
];

/// The predefined profiles: name, display name, the rungs they use.
const PREDEFINED: &[(&str, &str, &[usize])] = &[
    ("4k", "4K (2160p)", &[0, 1, 2, 3, 4, 5, 6, 7]),
    ("full_hd", "Full HD (1080p)", &[0, 1, 2, 3, 4, 5]),
    ("hd", "HD (720p)", &[0, 1, 2, 3, 4]),
    ("sd", "SD (540p)", &[0, 1, 2, 3]),
    ("full_hd_wifi", "Full HD WiFi (1080p)", &[2, 4, 5]),
    ("full_hd_lean", "Full HD Lean (1080p)", &[0, 2, 5]),
    ("hd_lean", "HD Lean (720p)", &[0, 2, 4]),
];

fn predefined(name: &str) -> Option<Json> {
    let (n, display, rungs) = PREDEFINED.iter().find(|(n, _, _)| *n == name)?;
    let reps: Vec<Json> = rungs
        .iter()
        .map(|i| {
            let (w, h, br) = LADDER[*i];
            json!({"transformation": info(&format!("br_{br},c_limit,h_{h},vc_h264,w_{w}"))})
        })
        .collect();
    Some(json!({
        "name": n,
        "display_name": display,
        "predefined": true,
        "representations": reps,
    }))
}

fn not_found(name: &str) -> ApiError {
    ApiError::NotFound(format!("Streaming profile {name} not found"))
}

/// `representations` as sent: a JSON array (or its text) of `{"transformation": "…"}`.
fn representations(params: &Params, body: Option<&Json>) -> ApiResult<Option<Json>> {
    let given = match body.and_then(|b| b.get("representations")) {
        Some(Json::String(s)) => serde_json::from_str::<Json>(s)
            .map_err(|_| ApiError::bad("representations must be a JSON array"))?,
        Some(v) => v.clone(),
        None => match params.text("representations") {
            Some(s) => serde_json::from_str::<Json>(s)
                .map_err(|_| ApiError::bad("representations must be a JSON array"))?,
            None => return Ok(None),
        },
    };
    let Json::Array(items) = given else {
        return Err(ApiError::bad("representations must be a JSON array"));
    };
    if items.is_empty() || items.len() > 20 {
        return Err(ApiError::bad("representations must have 1 to 20 entries"));
    }
    let mut out = Vec::new();
    for item in items {
        let t = match &item["transformation"] {
            Json::String(s) if !s.is_empty() => info(s),
            Json::Array(a) if !a.is_empty() => Json::Array(a.clone()),
            Json::Object(o) => json!([o]),
            _ => return Err(ApiError::bad("Each representation needs a transformation")),
        };
        out.push(json!({"transformation": t}));
    }
    Ok(Some(Json::Array(out)))
}

async fn profile(state: &AppState, cloud: &str, name: &str) -> ApiResult<Option<Json>> {
    if let Some(d) = state.meta.get_doc(cloud, KIND, name).await? {
        return Ok(Some(d.body));
    }
    Ok(predefined(name))
}

pub async fn list(state: &AppState, cloud: &str) -> ApiResult<Json> {
    let custom = state.meta.list_docs(cloud, KIND).await?;
    let mut data: Vec<Json> = PREDEFINED
        .iter()
        .map(|(n, _, _)| {
            custom
                .iter()
                .find(|d| d.name == *n)
                .map(|d| d.body.clone())
                .or_else(|| predefined(n))
                .unwrap_or(Json::Null)
        })
        .collect();
    data.extend(
        custom
            .into_iter()
            .filter(|d| predefined(&d.name).is_none())
            .map(|d| d.body),
    );
    Ok(json!({ "data": data }))
}

pub async fn get(state: &AppState, cloud: &str, name: &str) -> ApiResult<Json> {
    let p = profile(state, cloud, name)
        .await?
        .ok_or_else(|| not_found(name))?;
    Ok(json!({ "data": p }))
}

pub async fn create(
    state: &AppState,
    cloud: &str,
    params: &Params,
    body: Option<&Json>,
) -> ApiResult<Json> {
    let name = params.required("name")?;
    if !super::valid_name(name, &['_', '-']) {
        return Err(ApiError::bad(format!(
            "Invalid name {name}: use letters, digits, '_' and '-'"
        )));
    }
    if predefined(name).is_some() {
        return Err(ApiError::Conflict(format!(
            "Streaming profile {name} already exists"
        )));
    }
    let reps =
        representations(params, body)?.ok_or_else(|| ApiError::missing("representations"))?;
    let profile = json!({
        "name": name,
        "display_name": params.nonempty("display_name"),
        "predefined": false,
        "representations": reps,
    });
    if !state
        .meta
        .create_doc(cloud, KIND, name, &profile, state.now())
        .await?
    {
        return Err(ApiError::Conflict(format!(
            "Streaming profile {name} already exists"
        )));
    }
    Ok(json!({"message": "created", "data": profile}))
}

pub async fn update(
    state: &AppState,
    cloud: &str,
    name: &str,
    params: &Params,
    body: Option<&Json>,
) -> ApiResult<Json> {
    let reps = representations(params, body)?;
    let display = params.nonempty("display_name").map(str::to_string);
    let change = |p: &mut Json| {
        if let Some(r) = &reps {
            p["representations"] = r.clone();
        }
        if let Some(d) = &display {
            p["display_name"] = json!(d);
        }
        p["predefined"] = json!(false);
        Ok(())
    };
    if let crate::db::DocOutcome::Changed(p) =
        state.meta.modify_doc(cloud, KIND, name, &change).await?
    {
        return Ok(json!({"message": "updated", "data": p}));
    }
    // A predefined profile is overridden by a custom one of its name.
    let mut current = predefined(name).ok_or_else(|| not_found(name))?;
    change(&mut current).map_err(ApiError::bad)?;
    state
        .meta
        .put_doc(cloud, KIND, name, &current, state.now())
        .await?;
    Ok(json!({"message": "updated", "data": current}))
}

pub async fn delete(state: &AppState, cloud: &str, name: &str) -> ApiResult<Json> {
    let removed = state.meta.delete_doc(cloud, KIND, name).await?;
    if !removed && predefined(name).is_none() {
        return Err(not_found(name));
    }
    // Deleting a predefined profile reverts it to Cloudinary's definition.
    Ok(json!({"message": "deleted"}))
}
