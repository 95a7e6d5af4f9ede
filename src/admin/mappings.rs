//! Upload mappings (Admin API `upload_mappings`): a folder name and the URL prefix (template)
//! its assets are fetched from on first delivery. Stored as documents named by folder.

use serde_json::{json, Value as Json};

use crate::error::{ApiError, ApiResult};
use crate::form::Params;
use crate::state::AppState;

use crate::upload::mapping::KIND;

fn not_found(folder: &str) -> ApiError {
    ApiError::NotFound(format!("Upload mapping {folder} not found"))
}

fn folder_of(params: &Params) -> ApiResult<String> {
    let f = params.required("folder")?.trim_matches('/').to_string();
    if f.is_empty() || f.len() > 255 || f.contains("..") || f.contains('\\') {
        return Err(ApiError::bad(format!("Invalid folder {f}")));
    }
    Ok(f)
}

fn template_of(params: &Params) -> ApiResult<String> {
    let t = params.required("template")?;
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
    let list: Vec<Json> = docs
        .iter()
        .map(|d| mapping_json(&d.name, &d.body))
        .collect();
    Ok(super::offset_page(list, "mappings", params))
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
