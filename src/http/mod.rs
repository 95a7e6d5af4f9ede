//! The HTTP layer: router, request IDs, health, and the glue from routes to the upload and
//! delivery modules.

pub mod extract;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tower_http::cors::CorsLayer;
use tower_http::trace::TraceLayer;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::upload::{self, UploadRequest};
use extract::{read_form, BodyLimits};

/// The resource types of the Upload API routes.
const RESOURCE_TYPES: &[&str] = &["image", "video", "raw", "auto"];

pub fn router(state: AppState) -> Router {
    // Path decoding must happen before routing, so it wraps the routed service.
    let routes = tower::util::MapRequest::new(api_routes(state), decode_slashes);
    Router::new()
        .fallback_service(routes)
        .layer(CorsLayer::very_permissive())
        .layer(TraceLayer::new_for_http())
        .layer(middleware::from_fn(request_id))
}

/// Node's SDK encodes a path given as one string as one segment (`resources%2Fsearch`,
/// `folders/a%2Fb`): under `/v1_1/`, `%2F` is a path separator (public IDs, folders and tags
/// never contain `%`, so this is unambiguous). Other escapes are left to the extractors.
fn decode_slashes(mut req: Request) -> Request {
    let uri = req.uri();
    if !uri.path().starts_with("/v1_1/") || !uri.path().to_ascii_lowercase().contains("%2f") {
        return req;
    }
    let path = uri.path().replace("%2F", "/").replace("%2f", "/");
    let rebuilt = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    if let Ok(pq) = rebuilt.parse::<axum::http::uri::PathAndQuery>() {
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = Some(pq);
        if let Ok(new) = Uri::from_parts(parts) {
            *req.uri_mut() = new;
        }
    }
    req
}

fn api_routes(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1_1/{cloud}/upload", post(upload_auto))
        .route("/v1_1/{cloud}/ping", get(admin_ping))
        .route("/v1_1/{cloud}/config", get(admin_config))
        .route(
            "/v1_1/{cloud}/resources/{*rest}",
            get(admin_get_resources)
                .delete(admin_delete_resources)
                .post(admin_update_resource),
        )
        .route("/v1_1/{cloud}/tags/{resource_type}", get(admin_tags))
        .route("/v1_1/{cloud}/folders", get(admin_root_folders))
        .route(
            "/v1_1/{cloud}/folders/{*path}",
            get(admin_sub_folders)
                .post(admin_create_folder)
                .put(admin_rename_folder)
                .delete(admin_delete_folder),
        )
        .route("/v1_1/{cloud}/delete_by_token", post(delete_by_token))
        .route("/v1_1/{cloud}/usage", get(admin_usage))
        .route(
            "/v1_1/{cloud}/derived_resources",
            axum::routing::delete(admin_delete_derived),
        )
        .route(
            "/v1_1/{cloud}/resources",
            get(admin_resource_types).delete(admin_delete_by_asset_ids),
        )
        .route(
            "/v1_1/{cloud}/upload_presets",
            get(admin_presets).post(admin_create_preset),
        )
        .route(
            "/v1_1/{cloud}/upload_presets/{name}",
            get(admin_preset)
                .put(admin_update_preset)
                .delete(admin_delete_preset),
        )
        .route(
            "/v1_1/{cloud}/{resource_type}/{action}",
            post(upload_api).get(upload_api_get),
        )
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Adds `X-Request-Id` to every response (the Python SDK copies it into upload results).
async fn request_id(req: Request, next: Next) -> Response {
    let id = crate::util::random_hex(16);
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

async fn health(State(state): State<AppState>) -> Response {
    let db = state.meta.ping().await;
    let blobs = state.blobs.health().await;
    let tmp = tokio::fs::metadata(&state.tmp_dir).await.map(|_| ());
    match (&db, &blobs, &tmp) {
        (Ok(()), Ok(()), Ok(())) => Json(json!({"status": "ok"})).into_response(),
        _ => {
            let reason = |r: Result<(), String>| r.err().unwrap_or_else(|| "ok".into());
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({
                    "status": "unavailable",
                    "database": reason(db.map_err(|e| e.to_string())),
                    "storage": reason(blobs.map_err(|e| e.to_string())),
                    "temp_dir": reason(tmp.map_err(|e| e.to_string())),
                })),
            )
                .into_response()
        }
    }
}

fn body_limits(state: &AppState) -> BodyLimits {
    BodyLimits {
        max_file_bytes: state.limits.max_upload_bytes,
        max_field_bytes: state.limits.max_field_bytes,
        placement: None,
    }
}

async fn upload_auto(
    State(state): State<AppState>,
    Path(cloud): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    run_upload(&state, &cloud, "auto", &uri, &headers, body).await
}

/// GET on an Upload API route: only `download` (signed, in the query).
async fn upload_api_get(
    State(state): State<AppState>,
    Path((cloud, resource_type, action)): Path<(String, String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    if action != "download" {
        return Err(ApiError::MethodNotAllowed(format!(
            "Method {method} is not allowed for {}",
            uri.path()
        )));
    }
    if !RESOURCE_TYPES.contains(&resource_type.as_str()) || resource_type == "auto" {
        return Err(ApiError::NotFound(format!(
            "Invalid resource type {resource_type}: must be one of image, video, raw"
        )));
    }
    let params = crate::form::parse_query(uri.query());
    let req = UploadRequest {
        cloud: &cloud,
        resource_type: &resource_type,
        authorization: header_text(&headers, header::AUTHORIZATION.as_str()),
        content_range: None,
        upload_id: None,
    };
    upload::actions::download(&state, &req, &params, &method, &headers).await
}

async fn upload_api(
    State(state): State<AppState>,
    Path((cloud, resource_type, action)): Path<(String, String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    if !RESOURCE_TYPES.contains(&resource_type.as_str()) {
        return Err(ApiError::NotFound(format!(
            "Invalid resource type {resource_type}: must be one of image, video, raw, auto"
        )));
    }
    match action.as_str() {
        "upload" => run_upload(&state, &cloud, &resource_type, &uri, &headers, body).await,
        "delete_by_token" => {
            let form = read_form(&headers, uri.query(), body, &state.tmp_dir, &body_limits(&state)).await?;
            Ok(Json(upload::actions::delete_by_token(&state, &cloud, form).await?).into_response())
        }
        "destroy" | "rename" | "explicit" | "tags" | "context" => {
            let form = read_form(&headers, uri.query(), body, &state.tmp_dir, &body_limits(&state)).await?;
            let req = UploadRequest {
                cloud: &cloud,
                resource_type: &resource_type,
                authorization: header_text(&headers, header::AUTHORIZATION.as_str()),
                content_range: None,
                upload_id: None,
            };
            use upload::actions;
            let out = match action.as_str() {
                "destroy" => actions::destroy(&state, &req, form).await?,
                "rename" => actions::rename(&state, &req, form).await?,
                "explicit" => actions::explicit(&state, &req, form).await?,
                "tags" => actions::tags(&state, &req, form).await?,
                _ => actions::context(&state, &req, form).await?,
            };
            Ok(Json(out).into_response())
        }
        other => Err(ApiError::NotFound(format!(
            "Unknown Upload API action {other} (this server implements: upload, destroy, rename, explicit, tags, context, delete_by_token)"
        ))),
    }
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn run_upload(
    state: &AppState,
    cloud: &str,
    resource_type: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let content_range = header_text(headers, "content-range");
    let upload_id = header_text(headers, "x-unique-upload-id").filter(|v| !v.is_empty());
    let mut limits = body_limits(state);
    if let Some(range) = content_range.and_then(upload::parse_content_range) {
        if !upload::chunked::is_whole(&range, None) {
            limits.placement = Some(std::sync::Arc::new(upload::chunked::Placement {
                state: state.clone(),
                cloud: cloud.to_string(),
                upload_id: upload_id.map(str::to_string),
                authorization: header_text(headers, header::AUTHORIZATION.as_str())
                    .map(str::to_string),
                range,
            }));
        }
    }
    let form = read_form(headers, uri.query(), body, &state.tmp_dir, &limits).await?;
    let req = UploadRequest {
        cloud,
        resource_type,
        authorization: header_text(headers, header::AUTHORIZATION.as_str()),
        content_range,
        upload_id,
    };
    let result = upload::upload(state, req, form).await?;
    Ok(Json(result).into_response())
}

async fn admin_ping(
    State(state): State<AppState>,
    Path(cloud): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    crate::admin::authenticate(
        &state,
        &cloud,
        header_text(&headers, header::AUTHORIZATION.as_str()),
    )?;
    Ok(Json(crate::admin::ping()).into_response())
}

async fn admin_config(
    State(state): State<AppState>,
    Path(cloud): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    crate::admin::authenticate(
        &state,
        &cloud,
        header_text(&headers, header::AUTHORIZATION.as_str()),
    )?;
    Ok(Json(crate::admin::config(&cloud)).into_response())
}

async fn admin_get_resources(
    State(state): State<AppState>,
    Path((cloud, rest)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let account = crate::admin::authenticate(
        &state,
        &cloud,
        header_text(&headers, header::AUTHORIZATION.as_str()),
    )?;
    let form = read_form(
        &headers,
        uri.query(),
        body,
        &state.tmp_dir,
        &body_limits(&state),
    )
    .await?;
    let out = crate::admin::get_resources(&state, &account, &cloud, &rest, &form.params).await?;
    Ok(Json(out).into_response())
}

async fn admin_delete_resources(
    State(state): State<AppState>,
    Path((cloud, rest)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    crate::admin::authenticate(
        &state,
        &cloud,
        header_text(&headers, header::AUTHORIZATION.as_str()),
    )?;
    let form = read_form(
        &headers,
        uri.query(),
        body,
        &state.tmp_dir,
        &body_limits(&state),
    )
    .await?;
    let out = crate::admin::delete_resources(&state, &cloud, &rest, &form.params).await?;
    Ok(Json(out).into_response())
}

/// An authenticated Admin API call: the account and the request's parameters.
async fn admin_call(
    state: &AppState,
    cloud: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<(crate::auth::Account, crate::form::Params)> {
    let account = crate::admin::authenticate(
        state,
        cloud,
        header_text(headers, header::AUTHORIZATION.as_str()),
    )?;
    let form = read_form(
        headers,
        uri.query(),
        body,
        &state.tmp_dir,
        &body_limits(state),
    )
    .await?;
    Ok((account, form.params))
}

async fn admin_update_resource(
    State(state): State<AppState>,
    Path((cloud, rest)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let (account, params) = admin_call(&state, &cloud, &uri, &headers, body).await?;
    let out = crate::admin::update_resource(&state, &account, &cloud, &rest, &params).await?;
    Ok(Json(out).into_response())
}

async fn admin_tags(
    State(state): State<AppState>,
    Path((cloud, rt)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let (_, params) = admin_call(&state, &cloud, &uri, &headers, body).await?;
    Ok(Json(crate::admin::list_tags(&state, &cloud, &rt, &params).await?).into_response())
}

async fn admin_delete_derived(
    State(state): State<AppState>,
    Path(cloud): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let (_, params) = admin_call(&state, &cloud, &uri, &headers, body).await?;
    Ok(Json(crate::admin::delete_derived(&state, &cloud, &params).await?).into_response())
}

async fn admin_delete_by_asset_ids(
    State(state): State<AppState>,
    Path(cloud): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let (_, params) = admin_call(&state, &cloud, &uri, &headers, body).await?;
    Ok(Json(crate::admin::delete_by_asset_ids(&state, &cloud, &params).await?).into_response())
}

async fn admin_resource_types(
    State(state): State<AppState>,
    Path(cloud): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    admin_call(&state, &cloud, &uri, &headers, body).await?;
    Ok(Json(crate::admin::resource_types(&state, &cloud).await?).into_response())
}

async fn admin_usage(
    State(state): State<AppState>,
    Path(cloud): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    admin_call(&state, &cloud, &uri, &headers, body).await?;
    Ok(Json(crate::admin::usage(&state, &cloud).await?).into_response())
}

async fn admin_presets(
    State(state): State<AppState>,
    Path(cloud): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    admin_call(&state, &cloud, &uri, &headers, body).await?;
    Ok(Json(crate::admin::list_presets(&state, &cloud).await?).into_response())
}

async fn admin_create_preset(
    State(state): State<AppState>,
    Path(cloud): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let (_, params) = admin_call(&state, &cloud, &uri, &headers, body).await?;
    Ok(Json(crate::admin::create_preset(&state, &cloud, &params).await?).into_response())
}

async fn admin_preset(
    State(state): State<AppState>,
    Path((cloud, name)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    admin_call(&state, &cloud, &uri, &headers, body).await?;
    Ok(Json(crate::admin::get_preset(&state, &cloud, &name).await?).into_response())
}

async fn admin_update_preset(
    State(state): State<AppState>,
    Path((cloud, name)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let (_, params) = admin_call(&state, &cloud, &uri, &headers, body).await?;
    Ok(Json(crate::admin::update_preset(&state, &cloud, &name, &params).await?).into_response())
}

async fn admin_delete_preset(
    State(state): State<AppState>,
    Path((cloud, name)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    admin_call(&state, &cloud, &uri, &headers, body).await?;
    Ok(Json(crate::admin::delete_preset(&state, &cloud, &name).await?).into_response())
}

async fn delete_by_token(
    State(state): State<AppState>,
    Path(cloud): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let form = read_form(
        &headers,
        uri.query(),
        body,
        &state.tmp_dir,
        &body_limits(&state),
    )
    .await?;
    Ok(Json(upload::actions::delete_by_token(&state, &cloud, form).await?).into_response())
}

async fn admin_root_folders(
    State(state): State<AppState>,
    Path(cloud): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    admin_call(&state, &cloud, &uri, &headers, body).await?;
    Ok(Json(crate::admin::list_folders(&state, &cloud, None).await?).into_response())
}

async fn admin_sub_folders(
    State(state): State<AppState>,
    Path((cloud, path)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let (_, params) = admin_call(&state, &cloud, &uri, &headers, body).await?;
    if path == "search" {
        let out = crate::admin::search::search_folders(&state, &cloud, &params).await?;
        return Ok(Json(out).into_response());
    }
    Ok(Json(crate::admin::list_folders(&state, &cloud, Some(&path)).await?).into_response())
}

async fn admin_create_folder(
    State(state): State<AppState>,
    Path((cloud, path)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let (_, params) = admin_call(&state, &cloud, &uri, &headers, body).await?;
    if path == "search" {
        let out = crate::admin::search::search_folders(&state, &cloud, &params).await?;
        return Ok(Json(out).into_response());
    }
    Ok(Json(crate::admin::create_folder(&state, &cloud, &path).await?).into_response())
}

async fn admin_rename_folder(
    State(state): State<AppState>,
    Path((cloud, path)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let (_, params) = admin_call(&state, &cloud, &uri, &headers, body).await?;
    let to = params
        .nonempty("to_folder")
        .ok_or_else(|| ApiError::missing("to_folder"))?;
    Ok(Json(crate::admin::rename_folder(&state, &cloud, &path, to).await?).into_response())
}

async fn admin_delete_folder(
    State(state): State<AppState>,
    Path((cloud, path)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    admin_call(&state, &cloud, &uri, &headers, body).await?;
    Ok(Json(crate::admin::delete_folder(&state, &cloud, &path).await?).into_response())
}

/// A known route called with another method: the same JSON error shape as every API error.
async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    ApiError::MethodNotAllowed(format!("Method {method} is not allowed for {}", uri.path()))
        .into_response()
}

/// GET/HEAD of anything else outside `/v1_1/` is a delivery URL; the rest are unknown routes
/// (answered in the API's JSON error shape, which the SDKs can read).
async fn fallback(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let api = uri.path().starts_with("/v1_1/");
    if !api && (method == Method::GET || method == Method::HEAD) {
        return match crate::delivery::serve(&state, &method, uri.path(), &headers).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
    }
    ApiError::NotFound(format!("No route for {method} {}", uri.path())).into_response()
}
