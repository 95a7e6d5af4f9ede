//! The Upload API methods besides `upload`: `destroy`, `rename`, `explicit`, `tags` and
//! `context`. All are signed like uploads (or use Basic credentials).

use serde_json::{json, Value as Json};

use super::{naming, parse_pairs, parse_tags, upload_response, Call, Outcome, ResponseSigner};
use crate::db::{AssetKey, AssetRecord, ListQuery, RenameOutcome};
use crate::error::{ApiError, ApiResult};
use crate::form::Params;
use crate::state::AppState;

/// The metadata an `explicit` or Admin `update` call sets (each only when given).
pub struct MetadataUpdate {
    tags: Option<Vec<String>>,
    context: Option<serde_json::Map<String, Json>>,
    /// Structured metadata values, checked against the fields (`null` clears one).
    metadata: Option<serde_json::Map<String, Json>>,
    /// With `clear_invalid`: the fields, to drop stored values they no longer accept.
    fields: Option<serde_json::Map<String, Json>>,
    display_name: Option<String>,
    asset_folder: Option<String>,
    /// `face_coordinates` / `custom_coordinates`: new rectangles, or `None` to clear.
    coordinates: Vec<(&'static str, Option<Json>)>,
}

impl MetadataUpdate {
    /// Reads `tags`, `context`, `metadata` (+ `clear_invalid`), `display_name` and (when
    /// allowed) `asset_folder`.
    pub async fn from_params(
        state: &AppState,
        cloud: &str,
        params: &Params,
        with_asset_folder: bool,
    ) -> ApiResult<MetadataUpdate> {
        let asset_folder = match params.text("asset_folder").filter(|_| with_asset_folder) {
            Some(f) => Some(naming::clean_path("asset_folder", f)?),
            None => None,
        };
        let metadata = match params.text("metadata") {
            Some(m) => Some(crate::metadata::resolve(state, cloud, parse_pairs(m, true)).await?),
            None => None,
        };
        let fields = if params.truthy("clear_invalid") {
            Some(crate::metadata::field_map(state, cloud).await?)
        } else {
            None
        };
        let mut coordinates = Vec::new();
        for name in ["face_coordinates", "custom_coordinates"] {
            match params.text(name) {
                Some("") => coordinates.push((name, None)),
                Some(c) => coordinates.push((name, Some(super::parse_coordinates(name, c)?))),
                None => {}
            }
        }
        Ok(MetadataUpdate {
            coordinates,
            tags: params
                .get("tags")
                .map(|_| parse_tags(&params.items("tags"))),
            context: params.text("context").map(|c| parse_pairs(c, false)),
            metadata,
            fields,
            display_name: params.nonempty("display_name").map(str::to_string),
            asset_folder,
        })
    }

    pub fn apply(&self, r: &mut AssetRecord) {
        if let Some(t) = &self.tags {
            r.tags = t.clone();
        }
        if let Some(c) = &self.context {
            r.context = c.clone();
        }
        if self.metadata.is_some() || self.fields.is_some() {
            let empty = serde_json::Map::new();
            let values = self.metadata.as_ref().unwrap_or(&empty);
            crate::metadata::merge(&mut r.metadata, values, self.fields.as_ref());
        }
        if let Some(d) = &self.display_name {
            r.display_name = d.clone();
        }
        if let Some(f) = &self.asset_folder {
            r.asset_folder = f.clone();
        }
        for (name, value) in &self.coordinates {
            match value {
                Some(v) => r.extra.insert(name.to_string(), v.clone()),
                None => r.extra.remove(*name),
            };
        }
    }
}

/// Applies a change to each of `ids` that exists; returns those.
async fn change_each(
    state: &AppState,
    call: &Call,
    ty: &str,
    ids: &[String],
    change: &(dyn Fn(&mut AssetRecord) + Send + Sync),
) -> ApiResult<Vec<String>> {
    let mut changed = Vec::new();
    for id in ids {
        if state
            .meta
            .modify_asset(&key(call, ty, id), change)
            .await?
            .is_some()
        {
            changed.push(id.clone());
        }
    }
    Ok(changed)
}

/// IDs a tags/context call processes at most.
const MAX_IDS: usize = 1000;

fn key(call: &Call, delivery_type: &str, public_id: &str) -> AssetKey {
    AssetKey {
        cloud: call.cloud.clone(),
        resource_type: call.resource_type.stored().to_string(),
        delivery_type: delivery_type.to_string(),
        public_id: public_id.to_string(),
    }
}

fn answer(state: &AppState, call: &Call, rec: &AssetRecord) -> ApiResult<Json> {
    let signer = ResponseSigner::for_caller(state, &call.cloud, &call.caller)?;
    Ok(Json::Object(upload_response(
        state,
        rec,
        &signer,
        Outcome::Created,
    )))
}

/// `destroy`: `{"result":"ok"}`, or HTTP 200 `{"result":"not found"}`.
pub async fn destroy(state: &AppState, call: Call) -> ApiResult<Json> {
    let params = &call.params;
    let public_id = params.required("public_id")?;
    let k = key(
        &call,
        params.nonempty("type").unwrap_or("upload"),
        public_id,
    );
    let existing = state.meta.find_asset(&k).await?;
    let found = super::delete_asset(state, &k).await?;
    if let (true, Some(rec)) = (found, existing) {
        let payload = json!({
            "notification_type": "delete",
            "resources": [{
                "resource_type": rec.key.resource_type,
                "type": rec.key.delivery_type,
                "asset_id": rec.asset_id,
                "public_id": rec.key.public_id,
                "version": rec.version,
                "asset_folder": rec.asset_folder,
                "display_name": rec.display_name,
            }],
        });
        notify_triggers(state, &call, "delete", &payload).await?;
    }
    Ok(json!({"result": if found { "ok" } else { "not found" }}))
}

/// Sends a notification to the cloud's triggers for `event`.
async fn notify_triggers(
    state: &AppState,
    call: &Call,
    event: &str,
    payload: &Json,
) -> ApiResult<()> {
    let signer = ResponseSigner::for_caller(state, &call.cloud, &call.caller)?;
    let signer = crate::notify::Signer {
        secret: signer.secret,
        algorithm: signer.algorithm,
    };
    crate::triggers::fire(state, &call.cloud, event, payload, &signer).await;
    Ok(())
}

/// `rename`: moves an asset to another public ID and/or delivery type.
pub async fn rename(state: &AppState, call: Call) -> ApiResult<Json> {
    let params = &call.params;
    let from = params.required("from_public_id")?;
    let to_raw = params.required("to_public_id")?;
    let to = naming::clean_path("public_id", to_raw)?;
    if to.is_empty() {
        return Err(ApiError::missing("to_public_id"));
    }
    let ty = params.nonempty("type").unwrap_or("upload");
    let to_type = params.nonempty("to_type").unwrap_or(ty);
    if crate::kinds::DeliveryType::parse(to_type, false).is_none() {
        return Err(ApiError::bad(format!(
            "Invalid to_type {to_type}: must be one of upload, private, authenticated"
        )));
    }
    let overwrite = params.flag("overwrite")?.unwrap_or(false);
    let outcome = state
        .meta
        .rename_asset(&key(&call, ty, from), &key(&call, to_type, &to), overwrite)
        .await?;
    match outcome {
        RenameOutcome::NotFound => Err(ApiError::NotFound(format!("Resource not found - {from}"))),
        RenameOutcome::TargetExists => {
            Err(ApiError::bad(format!("Resource already exists - {to}")))
        }
        RenameOutcome::Renamed {
            record,
            replaced_blob,
            replaced_derived,
        } => {
            if let Some(blob) = replaced_blob {
                let _ = state.blobs.delete(&blob).await;
            }
            // The replaced asset's derived versions went with its row: their files go too.
            crate::admin::forget_derived_blobs(state, &record.key.cloud, &replaced_derived).await;
            let payload = json!({
                "notification_type": "rename",
                "asset_id": record.asset_id,
                "from_public_id": from,
                "to_public_id": record.key.public_id,
                "resource_type": record.key.resource_type,
                "type": record.key.delivery_type,
                "from_type": ty,
            });
            notify_triggers(state, &call, "rename", &payload).await?;
            answer(state, &call, &record)
        }
    }
}

/// `explicit`: metadata-only updates of an existing asset (tags, context, metadata, …).
pub async fn explicit(state: &AppState, call: Call) -> ApiResult<Json> {
    let params = &call.params;
    super::refuse_unsupported(params)?;
    if params.nonempty("notification_url").is_some() {
        return Err(ApiError::bad(
            "Parameter notification_url is not supported by explicit on this server yet \
             (eager_notification_url is)",
        ));
    }
    if params.truthy("async") {
        return Err(ApiError::bad(
            "Parameter async is not supported by explicit on this server yet (eager_async is)",
        ));
    }
    let eager_specs = super::eager::parse(state, &call.cloud, params).await?;
    let breakpoint_requests = super::breakpoints::parse(params.nonempty("responsive_breakpoints"))?;
    if !eager_specs.is_empty() && call.resource_type.stored() != "image" {
        // Refused before anything changes.
        super::eager::check_source(call.resource_type.as_str(), None)?;
    }
    let eager_notify = params
        .nonempty("eager_notification_url")
        .map(crate::notify::check_url)
        .transpose()?;
    let public_id = params.required("public_id")?;
    let ty = params.nonempty("type").unwrap_or("upload");
    let update = MetadataUpdate::from_params(state, &call.cloud, params, false).await?;
    let change = move |r: &mut AssetRecord| update.apply(r);
    let rec = state
        .meta
        .modify_asset(&key(&call, ty, public_id), &change)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("Resource not found - {public_id}")))?;
    let mut out = answer(state, &call, &rec)?;
    let wanted = [
        "colors",
        "phash",
        "quality_analysis",
        "image_metadata",
        "media_metadata",
    ];
    if wanted.iter().any(|f| params.truthy(f)) {
        // Read only what `analyse` will look at (an image within the size limit).
        let readable = rec.key.resource_type == "image"
            && (rec.bytes.max(0) as u64) <= state.limits.max_image_pixels.saturating_mul(8);
        let bytes = if readable {
            crate::storage::read_all(state.blobs.as_ref(), &rec.blob_key)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("Resource not found - {public_id}")))?
        } else {
            Vec::new()
        };
        let kind = match rec.key.resource_type.as_str() {
            "image" => crate::media::MediaKind::Image,
            "video" => crate::media::MediaKind::Video,
            _ => crate::media::MediaKind::Raw,
        };
        let size = rec.bytes.max(0) as u64;
        let computed = super::analyse(
            state,
            || Ok(Box::new(std::io::Cursor::new(bytes)) as Box<dyn std::io::Read + Send>),
            size,
            kind,
            params,
            rec.format.as_deref(),
            (rec.width, rec.height),
        )
        .await?;
        let keep = computed.clone();
        let change = move |r: &mut AssetRecord| r.extra.extend(keep.clone());
        state.meta.modify_asset(&rec.key, &change).await?;
        for (k, v) in computed {
            out[k.as_str()] = v;
        }
    }
    if params.truthy("faces") {
        out["faces"] = super::faces_json(&rec);
    }
    if !breakpoint_requests.is_empty() {
        let signer = ResponseSigner::for_caller(state, &call.cloud, &call.caller)?;
        out["responsive_breakpoints"] =
            super::breakpoints::compute(state, &rec, &breakpoint_requests, &signer).await?;
    }
    if !eager_specs.is_empty() {
        super::eager::check_source(&rec.key.resource_type, rec.format.as_deref())?;
        let signer = ResponseSigner::for_caller(state, &call.cloud, &call.caller)?;
        if params.truthy("eager_async") {
            super::eager::in_background(
                state.clone(),
                rec,
                eager_specs,
                signer,
                eager_notify,
                crate::util::random_hex(32),
            );
        } else {
            let derived = super::eager::generate(state, &rec, &eager_specs).await?;
            out["eager"] = super::eager::eager_json(state, &rec, &derived, &signer);
        }
    }
    Ok(out)
}

fn public_ids(params: &Params) -> ApiResult<Vec<String>> {
    let ids: Vec<String> = params
        .items("public_ids")
        .into_iter()
        .filter(|s| !s.trim().is_empty())
        .take(MAX_IDS)
        .collect();
    if ids.is_empty() {
        return Err(ApiError::missing("public_ids"));
    }
    Ok(ids)
}

/// `tags`: add, remove, replace, remove_all, set_exclusive.
pub async fn tags(state: &AppState, call: Call) -> ApiResult<Json> {
    let params = &call.params;
    let command = params.required("command")?.to_string();
    if !["add", "remove", "replace", "remove_all", "set_exclusive"].contains(&command.as_str()) {
        return Err(ApiError::bad(format!(
            "Invalid command - {command}. Must be one of: add, remove, replace, remove_all, set_exclusive"
        )));
    }
    let mut given = parse_tags(&params.items("tag"));
    given.extend(parse_tags(&params.items("tags")));
    if command != "remove_all" && given.is_empty() {
        return Err(ApiError::missing("tag"));
    }
    let ids = public_ids(params)?;
    let ty = params.nonempty("type").unwrap_or("upload").to_string();
    if command == "set_exclusive" {
        // The tag leaves every other asset of this resource type and delivery type.
        for tag in &given {
            loop {
                let q = ListQuery {
                    cloud: call.cloud.clone(),
                    resource_type: Some(call.resource_type.stored().to_string()),
                    delivery_type: Some(ty.clone()),
                    tag: Some(tag.clone()),
                    max_results: 1000,
                    ..Default::default()
                };
                let (holders, _) = state.meta.list_assets(&q).await?;
                let others: Vec<AssetRecord> = holders
                    .into_iter()
                    .filter(|r| !ids.contains(&r.key.public_id))
                    .collect();
                if others.is_empty() {
                    break;
                }
                for r in others {
                    let t = tag.clone();
                    let drop_tag = move |a: &mut AssetRecord| a.tags.retain(|x| *x != t);
                    state.meta.modify_asset(&r.key, &drop_tag).await?;
                }
            }
        }
    }
    let change = move |r: &mut AssetRecord| match command.as_str() {
        "add" | "set_exclusive" => r.tags.extend(given.iter().cloned()),
        "remove" => r.tags.retain(|t| !given.contains(t)),
        "replace" => r.tags = given.clone(),
        _ => r.tags.clear(),
    };
    let changed = change_each(state, &call, &ty, &ids, &change).await?;
    Ok(json!({"public_ids": changed}))
}

/// `context`: add (merge; an empty value removes the key) or remove_all.
pub async fn context(state: &AppState, call: Call) -> ApiResult<Json> {
    let params = &call.params;
    let command = params.required("command")?.to_string();
    if command != "add" && command != "remove_all" {
        return Err(ApiError::bad(format!(
            "Invalid command - {command}. Must be one of: add, remove_all"
        )));
    }
    let pairs = match command.as_str() {
        "add" => Some(parse_pairs(params.required("context")?, false)),
        _ => None,
    };
    let ids = public_ids(params)?;
    let ty = params.nonempty("type").unwrap_or("upload").to_string();
    let change = move |r: &mut AssetRecord| match &pairs {
        Some(p) => {
            for (k, v) in p {
                if v.as_str() == Some("") {
                    r.context.remove(k);
                } else {
                    r.context.insert(k.clone(), v.clone());
                }
            }
        }
        None => r.context.clear(),
    };
    let changed = change_each(state, &call, &ty, &ids, &change).await?;
    Ok(json!({"public_ids": changed}))
}

/// `metadata` (`update_metadata`): sets structured metadata values on assets; with
/// `clear_invalid`, stored values their fields no longer accept are dropped.
pub async fn metadata(state: &AppState, call: Call) -> ApiResult<Json> {
    let params = &call.params;
    let raw = params.required("metadata")?;
    let values = crate::metadata::resolve(state, &call.cloud, parse_pairs(raw, true)).await?;
    let fields = if params.truthy("clear_invalid") {
        Some(crate::metadata::field_map(state, &call.cloud).await?)
    } else {
        None
    };
    let ids = public_ids(params)?;
    let ty = params.nonempty("type").unwrap_or("upload").to_string();
    let change = move |r: &mut AssetRecord| {
        crate::metadata::merge(&mut r.metadata, &values, fields.as_ref())
    };
    let changed = change_each(state, &call, &ty, &ids, &change).await?;
    Ok(json!({"public_ids": changed}))
}

/// `delete_by_token`: deletes the asset a `delete_token` names; the token is the only
/// credential, usable once, for ten minutes after the upload.
pub async fn delete_by_token(state: &AppState, cloud: &str, params: &Params) -> ApiResult<Json> {
    let token = params.required("token")?.to_string();
    let key = state
        .meta
        .take_delete_token(cloud, &token, state.now())
        .await?
        .ok_or_else(|| ApiError::bad("Stale or invalid delete token"))?;
    super::delete_asset(state, &key).await?;
    Ok(json!({"result": "ok"}))
}

/// `GET download` (the SDKs' `private_download_url`): a signed link to an asset of any
/// delivery type, as stored or converted to `format`; `attachment=1` makes it a download;
/// `expires_at` (Unix seconds) ends it early.
pub async fn download(
    state: &AppState,
    call: Call,
    method: &axum::http::Method,
    headers: &axum::http::HeaderMap,
) -> ApiResult<axum::response::Response> {
    let params = &call.params;
    if let Some(exp) = params.nonempty("expires_at") {
        let exp: i64 = exp
            .parse()
            .map_err(|_| ApiError::bad(format!("Invalid expires_at {exp}")))?;
        if exp < state.now() {
            return Err(ApiError::bad("The download link has expired (expires_at)"));
        }
    }
    let public_id = params.required("public_id")?;
    let ty = params.nonempty("type").unwrap_or("upload");
    let rec = state
        .meta
        .find_asset(&key(&call, ty, public_id))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("Resource not found - {public_id}")))?;
    let format = params.nonempty("format");
    let mut resp = crate::delivery::serve_asset(state, method, headers, &rec, format).await?;
    if params.truthy("attachment") {
        let name = public_id
            .rsplit('/')
            .next()
            .unwrap_or(public_id)
            .replace(['"', '\\'], "_");
        let file = match format.or(rec.format.as_deref()) {
            Some(f) if rec.key.resource_type != "raw" => format!("{name}.{f}"),
            _ => name,
        };
        if let Ok(v) =
            axum::http::HeaderValue::from_str(&format!("attachment; filename=\"{file}\""))
        {
            resp.headers_mut()
                .insert(axum::http::header::CONTENT_DISPOSITION, v);
        }
    }
    Ok(resp)
}

/// `GET download_backup?asset_id=…&version_id=…` (the SDKs' `download_backedup_asset`): the
/// file of one kept version of an asset.
pub async fn download_backup(
    state: &AppState,
    call: Call,
    method: &axum::http::Method,
    headers: &axum::http::HeaderMap,
) -> ApiResult<axum::response::Response> {
    let asset_id = call.params.required("asset_id")?;
    let version_id = call.params.required("version_id")?;
    let rec = crate::admin::assets::find_by_asset_id(state, &call.cloud, asset_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("Resource not found - {asset_id}")))?;
    let kept = super::backup::versions(state, &rec.key).await?;
    let version = std::iter::once(rec)
        .chain(kept)
        .find(|v| v.version_id == version_id)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "Version {version_id} of asset {asset_id} not found"
            ))
        })?;
    crate::delivery::serve_asset(state, method, headers, &version, None).await
}
