//! Upload mappings at delivery ("auto upload", Cloudinary's lazy migration): a delivery URL
//! of an `image|video|raw/upload` asset under a mapped folder that does not exist yet fetches
//! `<template><rest of the path>` once, stores it as an upload under that public ID, and is
//! then served like any asset.

use super::{source, store_upload, UploadRequest};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::form::{Params, Value};
use crate::state::AppState;

/// The kind of the documents holding upload mappings (named by folder).
pub const KIND: &str = "upload_mapping";

/// The template of the mapping whose folder starts `public_id` (the longest), with the rest
/// of the ID.
async fn mapping_for(
    state: &AppState,
    cloud: &str,
    public_id: &str,
) -> ApiResult<Option<(String, String)>> {
    let docs = state.meta.list_docs(cloud, KIND).await?;
    Ok(docs
        .iter()
        .filter_map(|d| {
            let rest = public_id.strip_prefix(&d.name)?.strip_prefix('/')?;
            let template = d.body["template"].as_str()?;
            Some((d.name.len(), template.to_string(), rest.to_string()))
        })
        .max_by_key(|(len, _, _)| *len)
        .map(|(_, t, rest)| (t, rest)))
}

/// Fetches and stores the asset a delivery path names when it is missing and under a mapped
/// folder; true when it was stored.
pub async fn auto_upload(state: &AppState, path: &str) -> ApiResult<bool> {
    let Some((cloud, rt, ty, source)) = crate::delivery::source_of(path) else {
        return Ok(false);
    };
    if ty != "upload" || !["image", "video", "raw"].contains(&rt.as_str()) {
        return Ok(false);
    }
    let Some((template, rest)) = mapping_for(state, &cloud, &source).await? else {
        return Ok(false);
    };
    // The rest names a file under the template: nothing that could leave it (no dot
    // segments, no escapes that would become them, no query, no other host or port).
    let refused = || {
        ApiError::Delivery(
            axum::http::StatusCode::BAD_REQUEST,
            format!("Invalid mapped path {rest}"),
        )
    };
    if rest.is_empty()
        || rest.contains(['?', '#', '@', '\\', '%', ':'])
        || rest.starts_with('/')
        || rest
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(refused());
    }
    let Some(account) = state.accounts().primary(&cloud).cloned() else {
        return Ok(false);
    };
    let base = reqwest::Url::parse(&template).map_err(|_| refused())?;
    let url = reqwest::Url::parse(&format!("{template}{rest}")).map_err(|_| refused())?;
    if url.scheme() != base.scheme()
        || url.host_str() != base.host_str()
        || url.port_or_known_default() != base.port_or_known_default()
        || !url.path().starts_with(base.path())
    {
        return Err(refused());
    }
    let src = source::resolve(state, None, Some(url.as_str())).await?;
    // Images and videos are named without their extension, raw files with it.
    let public_id = match (rt.as_str(), source.rsplit_once('.')) {
        ("raw", _) | (_, None) => source.clone(),
        (_, Some((stem, _))) => stem.to_string(),
    };
    let mut params = Params::default();
    params.set("public_id", Value::Text(public_id));
    params.set("overwrite", Value::Text("false".into()));
    let req = UploadRequest {
        cloud: &cloud,
        resource_type: &rt,
        content_range: None,
        upload_id: None,
    };
    let algorithm = account.algorithm;
    let caller = Caller::Key { account, algorithm };
    store_upload(state, &req, &caller, params, src, None).await?;
    Ok(true)
}
