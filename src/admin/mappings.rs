//! Upload mappings (Admin API `upload_mappings`): a folder name and the URL prefix (template)
//! its assets are fetched from on first delivery. Stored as documents named by folder.

use serde_json::{json, Map, Value as Json};

use crate::error::{ApiError, ApiResult};
use crate::form::Params;
use crate::state::AppState;

use crate::upload::mapping::KIND;

fn not_found(folder: &str) -> ApiError {
    ApiError::NotFound(format!("Upload mapping {folder} not found"))
}

fn folder_of(params: &Params) -> ApiResult<String> {
    let f = params
        .nonempty("folder")
        .ok_or_else(|| ApiError::missing("folder"))?
        .trim_matches('/')
        .to_string();
    if f.is_empty() || f.len() > 255 || f.contains("..") || f.contains('\\') {
        return Err(ApiError::bad(format!("Invalid folder {f}")));
    }
    Ok(f)
}

fn template_of(params: &Params) -> ApiResult<String> {
    let t = params
        .nonempty("template")
        .ok_or_else(|| ApiError::missing("template"))?;
    let lower = t.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) || t.len() > 2048 {
        return Err(ApiError::bad(format!(
            "Invalid template {t}: expected an http(s) URL prefix"
        )));
    }
    Ok(t.to_string())
}

fn mapping_json(folder: &str, body: &Json) -> Json {
    json!({"folder": folder, "template": body["template"]})
}

/// `GET upload_mappings` (all, paged) or `?folder=` (one).
pub async fn get(state: &AppState, cloud: &str, params: &Params) -> ApiResult<Json> {
    if params.nonempty("folder").is_some() {
        let folder = folder_of(params)?;
        let doc = state
            .meta
            .get_doc(cloud, KIND, &folder)
            .await?
            .ok_or_else(|| not_found(&folder))?;
        return Ok(mapping_json(&folder, &doc.body));
    }
    let docs = state.meta.list_docs(cloud, KIND).await?;
    let max = params
        .nonempty("max_results")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(10)
        .clamp(1, 500);
    let start = params
        .nonempty("next_cursor")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let page: Vec<Json> = docs
        .iter()
        .skip(start)
        .take(max)
        .map(|d| mapping_json(&d.name, &d.body))
        .collect();
    let mut m = Map::new();
    m.insert("mappings".into(), Json::Array(page));
    if start + max < docs.len() {
        m.insert("next_cursor".into(), json!((start + max).to_string()));
    }
    Ok(Json::Object(m))
}

pub async fn create(state: &AppState, cloud: &str, params: &Params) -> ApiResult<Json> {
    let folder = folder_of(params)?;
    let template = template_of(params)?;
    let body = json!({"template": template});
    if !state
        .meta
        .create_doc(cloud, KIND, &folder, &body, state.now())
        .await?
    {
        return Err(ApiError::Conflict(format!(
            "Upload mapping {folder} already exists"
        )));
    }
    Ok(json!({"message": "created", "folder": folder}))
}

pub async fn update(state: &AppState, cloud: &str, params: &Params) -> ApiResult<Json> {
    let folder = folder_of(params)?;
    let template = template_of(params)?;
    let change = |doc: &mut Json| {
        doc["template"] = json!(template);
        Ok(())
    };
    match state.meta.modify_doc(cloud, KIND, &folder, &change).await? {
        crate::db::DocOutcome::Changed(_) => Ok(json!({"message": "updated"})),
        crate::db::DocOutcome::Refused(why) => Err(ApiError::bad(why)),
        crate::db::DocOutcome::NotFound => Err(not_found(&folder)),
    }
}

pub async fn delete(state: &AppState, cloud: &str, params: &Params) -> ApiResult<Json> {
    let folder = folder_of(params)?;
    if !state.meta.delete_doc(cloud, KIND, &folder).await? {
        return Err(not_found(&folder));
    }
    Ok(json!({"message": "deleted"}))
}
