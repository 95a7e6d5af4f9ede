//! The HTTP layer: router, request IDs, health, and the glue from routes to the upload and
//! delivery modules.

pub mod call;
pub mod extract;
mod file_data;
pub mod ratelimit;
pub mod server;
pub mod tls;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;

use tower_http::cors::{Cors, CorsLayer};

use crate::admin;
use crate::error::{ApiError, ApiResult};
use crate::kinds::ResourceType;
use crate::metadata;
use crate::state::AppState;
use crate::upload::{self, actions};
use call::{Admin, Lenient, Open, Signed, UploadCall};

/// The whole application as one service. An API call (anything outside the control API and
/// the console) goes straight through its stages, outermost first: the request ID, the panic
/// guard, [`observe`], CORS, `%2F` decoding (before routing), the Admin API rate limit, then
/// the routes. The control API and the console are routed apart: no CORS (browsers cannot
/// call them cross-origin) and not recorded among the requests the control API reports.
#[derive(Clone)]
pub struct App(Arc<AppParts>);

struct AppParts {
    state: AppState,
    /// `/_nephos…` and `/console…`; what they do not route falls back to the API.
    control: Router,
    /// The API behind CORS.
    api: Cors<Routed>,
    /// The API itself, and the headers CORS gives every answer that is not a preflight's
    /// when any origin is allowed (the default): such calls skip the CORS layer.
    routed: Routed,
    any_origin_headers: Option<[(axum::http::HeaderName, HeaderValue); 2]>,
}

pub fn app(state: AppState, cors_origins: &[String]) -> App {
    let routed = Routed {
        state: state.clone(),
        calls: Arc::new(ratelimit::AdminCalls::default()),
        routes: api_routes(state.clone()),
    };
    let api = tower::Layer::layer(&cors(cors_origins), routed.clone());
    let any_origin_headers = cors_origins.is_empty().then(|| {
        use axum::http::header;
        [
            (
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSED_HEADERS),
            ),
            (
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            ),
        ]
    });
    App(Arc::new_cyclic(|me: &std::sync::Weak<AppParts>| {
        let me = me.clone();
        let fallback = tower::service_fn(move |req: Request| {
            let me = me.upgrade();
            async move {
                Ok::<_, std::convert::Infallible>(match me {
                    Some(parts) => through_api(&parts, req).await,
                    None => StatusCode::SERVICE_UNAVAILABLE.into_response(),
                })
            }
        });
        let control = Router::new()
            .nest("/_nephos", crate::control::api::router(state.clone()))
            // The browser console: served by nephos itself, where the control API is on.
            .nest("/console", crate::console::router(state.clone()))
            .route(
                "/console/",
                get(|| async { axum::response::Redirect::permanent("/console") }),
            )
            .fallback_service(fallback);
        AppParts {
            state,
            control,
            api,
            routed,
            any_origin_headers,
        }
    }))
}

/// Paths of the control API and the console (as the router nests them).
fn is_control(path: &str) -> bool {
    ["/_nephos", "/console"].iter().any(|p| {
        path.strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

impl<B> tower::Service<axum::http::Request<B>> for App
where
    B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures_util::future::BoxFuture<'static, Result<Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        use futures_util::FutureExt;
        let parts = self.0.clone();
        let req = req.map(axum::body::Body::new);
        Box::pin(async move {
            // Adds `X-Request-Id` to every answer (the Python SDK copies it into upload
            // results).
            let id = crate::error::RequestId::new();
            let answer = crate::error::REQUEST_ID.scope(id, async {
                let run = async {
                    if is_control(req.uri().path()) {
                        answer_of(parts.control.clone(), req).await
                    } else {
                        through_api(&parts, req).await
                    }
                };
                // A bug must never take a connection down without an answer: a panic
                // becomes a 500 in the API's error shape.
                match std::panic::AssertUnwindSafe(run).catch_unwind().await {
                    Ok(r) => r,
                    Err(panic) => panic_answer(panic),
                }
            });
            let mut resp = answer.await;
            if let Ok(v) = HeaderValue::from_str(id.as_str()) {
                resp.headers_mut().insert("x-request-id", v);
            }
            Ok(resp)
        })
    }
}

/// An API call: observed, then CORS and the routes.
async fn through_api(parts: &AppParts, req: Request) -> Response {
    let mut resp = observe(&parts.state, req, |req| async move {
        match &parts.any_origin_headers {
            Some(headers) if req.method() != Method::OPTIONS => {
                // What the CORS layer adds to such an answer, without the layer.
                let mut resp = answer_of(parts.routed.clone(), req).await;
                for (name, value) in headers {
                    resp.headers_mut().insert(name, value.clone());
                }
                resp
            }
            _ => answer_of(parts.api.clone(), req).await,
        }
    })
    .await;
    // What CORS's answer depends on (the layer's own would be joined anew for each answer).
    resp.headers_mut().append(
        axum::http::header::VARY,
        HeaderValue::from_static(
            "origin, access-control-request-method, access-control-request-headers",
        ),
    );
    resp
}

/// The answer of a service that always answers.
async fn answer_of<S>(service: S, req: Request) -> Response
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>,
{
    match tower::ServiceExt::oneshot(service, req).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

/// The API behind CORS: `%2F` decoded, the rate limit, the routes.
#[derive(Clone)]
struct Routed {
    state: AppState,
    calls: Arc<ratelimit::AdminCalls>,
    routes: Router,
}

impl tower::Service<Request> for Routed {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures_util::future::BoxFuture<'static, Result<Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let this = self.clone();
        // Path decoding must happen before routing.
        let req = decode_slashes(req);
        if is_upload(&req) {
            // The busiest route goes straight to its handler, as the router would send it
            // (uploads are not rate-limited), without matching the other routes.
            return Box::pin(async move {
                Ok(
                    axum::handler::Handler::<_, AppState>::call(upload_action, req, this.state)
                        .await,
                )
            });
        }
        Box::pin(async move {
            let answer = ratelimit::limit(&this.state, &this.calls, req, |req| {
                answer_of(this.routes.clone(), req)
            })
            .await;
            Ok(answer)
        })
    }
}

/// Logs one line per request (method, path, status, duration, request id, cloud), records it
/// for the control API, and applies the injected faults that do not look at parameters.
async fn observe<F, Fut>(state: &AppState, req: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    use crate::control::log::{cloud_of, Capture, RequestEntry, CAPTURE};
    let started = std::time::Instant::now();
    let at_ms = chrono::Utc::now().timestamp_millis();
    let route = crate::metrics::route_of(req.uri().path());
    let http_method = req.method().clone();
    let bytes_in = content_length(req.headers()).unwrap_or(0);
    let _uploading = (route == "upload").then(|| state.metrics.upload_started());
    let from_console = req.headers().contains_key("x-nephos-console");
    // The method, path and cloud live in the capture while the request is answered (fault
    // rules read them there) and come back out for the log.
    let path = req.uri().path().to_string();
    let capture = std::sync::Arc::new(std::sync::Mutex::new(Capture {
        method: http_method.as_str().to_string(),
        cloud: cloud_of(&path),
        path,
        ..Default::default()
    }));
    let control = state.control.clone();
    let resp = CAPTURE
        .scope(capture.clone(), async {
            if !control.faults.is_empty() {
                let effect = crate::control::log::current().and_then(|(method, path, cloud)| {
                    control.faults.check(&method, &path, cloud.as_deref(), None)
                });
                if let Some(effect) = effect {
                    if let Some(d) = effect.delay {
                        tokio::time::sleep(d).await;
                    }
                    if let Some(answer) = effect.answer {
                        return answer.into_response();
                    }
                }
            }
            next(req).await
        })
        .await;
    let Capture {
        method,
        path,
        cloud,
        params,
        error,
    } = match capture.lock() {
        Ok(mut c) => std::mem::take(&mut *c),
        Err(p) => std::mem::take(&mut *p.into_inner()),
    };
    // A call that may have written: delivery reads records afresh.
    if !matches!(method.as_str(), "GET" | "HEAD" | "OPTIONS") {
        state.records.invalidate();
    }
    let seconds = started.elapsed().as_secs_f64();
    let ms = seconds * 1000.0;
    let status = resp.status().as_u16();
    let bytes_out = content_length(resp.headers());
    state
        .metrics
        .observe(route, &http_method, status, seconds, bytes_in, bytes_out);
    let request_id = crate::error::REQUEST_ID
        .try_with(|id| id.as_str().to_string())
        .unwrap_or_default();
    let cloud_shown = cloud.as_deref().unwrap_or("-");
    if path == "/health" {
        tracing::debug!(target: "nephos::request", %method, %path, status, ms = format!("{ms:.1}"), %request_id, "request");
    } else {
        tracing::info!(target: "nephos::request", %method, %path, status, ms = format!("{ms:.1}"), %request_id, cloud = %cloud_shown, "request");
    }
    if control.enabled {
        control.requests.push(RequestEntry {
            seq: 0,
            at_ms,
            request_id,
            method,
            path,
            cloud,
            params,
            status,
            error,
            duration_ms: ms,
            console: from_console,
        });
    }
    resp
}

/// The `Content-Length` of a request or response.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(axum::http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// `/metrics`: the Prometheus text exposition, when it is on (with its bearer token when one
/// is configured).
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let not_found =
        || crate::error::ApiError::NotFound("Not found - /metrics".into()).into_response();
    match &state.metrics_access {
        None => return not_found(),
        Some(Some(token)) => {
            let given = headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            let ok = given.is_some_and(|g| {
                use subtle::ConstantTimeEq;
                g.as_bytes().ct_eq(token.as_bytes()).into()
            });
            if !ok {
                return (
                    axum::http::StatusCode::UNAUTHORIZED,
                    [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
                    "a bearer token is required for /metrics\n",
                )
                    .into_response();
            }
        }
        Some(None) => {}
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(&state),
    )
        .into_response()
}

/// Node's SDK encodes a path given as one string as one segment (`resources%2Fsearch`,
/// `folders/a%2Fb`): under `/v1_1/`, `%2F` is a path separator (public IDs, folders and tags
/// never contain `%`, so this is unambiguous). Other escapes are left to the extractors.
fn decode_slashes(mut req: Request) -> Request {
    let uri = req.uri();
    let encoded_slash = |w: &[u8]| w[0] == b'%' && w[1] == b'2' && (w[2] | 0x20) == b'f';
    if !uri.path().starts_with("/v1_1/") || !uri.path().as_bytes().windows(3).any(encoded_slash) {
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

/// `POST /v1_1/<cloud>/upload` or `POST /v1_1/<cloud>/<image|video|raw|auto>/upload`: the
/// paths the router gives to [`upload_action`] and to no other route.
fn is_upload(req: &Request) -> bool {
    if req.method() != Method::POST {
        return false;
    }
    let Some(rest) = req.uri().path().strip_prefix("/v1_1/") else {
        return false;
    };
    let mut segs = rest.split('/');
    let cloud = segs.next().unwrap_or("");
    let second = segs.next().unwrap_or("");
    let third = segs.next();
    if cloud.is_empty() || segs.next().is_some() {
        return false;
    }
    match third {
        None => second == "upload",
        Some(action) => action == "upload" && matches!(second, "image" | "video" | "raw" | "auto"),
    }
}

/// Every API route and the rule it authenticates with (the extractor its handler takes:
/// [`Admin`], [`Signed`], [`UploadCall`] or [`Open`]).
fn api_routes(state: AppState) -> Router {
    use axum::routing::{delete, put};
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        // Upload API (signed, Basic, or an unsigned preset for `upload`).
        .route("/v1_1/{cloud}/upload", post(upload_action))
        .route("/v1_1/{cloud}/{resource_type}/upload", post(upload_action))
        .route("/v1_1/{cloud}/{resource_type}/destroy", post(destroy))
        .route("/v1_1/{cloud}/{resource_type}/rename", post(rename))
        .route("/v1_1/{cloud}/{resource_type}/explicit", post(explicit))
        .route("/v1_1/{cloud}/{resource_type}/tags", post(tags))
        .route("/v1_1/{cloud}/{resource_type}/context", post(context))
        .route("/v1_1/{cloud}/{resource_type}/text", post(text_action))
        .route(
            "/v1_1/{cloud}/{resource_type}/sprite",
            post(sprite_action).get(sprite_download),
        )
        .route(
            "/v1_1/{cloud}/{resource_type}/multi",
            post(multi_action).get(multi_download),
        )
        .route(
            "/v1_1/{cloud}/{resource_type}/explode",
            post(explode_action),
        )
        .route(
            "/v1_1/{cloud}/{resource_type}/create_slideshow",
            post(create_slideshow),
        )
        .route(
            "/v1_1/{cloud}/{resource_type}/generate_archive",
            post(generate_archive).get(generate_archive),
        )
        .route(
            "/v1_1/{cloud}/{resource_type}/metadata",
            post(metadata_action),
        )
        .route("/v1_1/{cloud}/{resource_type}/download", get(download))
        .route("/v1_1/{cloud}/delete_by_token", post(delete_by_token))
        .route("/v1_1/{cloud}/download_backup", get(download_backup))
        .route(
            "/v1_1/{cloud}/{resource_type}/delete_by_token",
            post(delete_by_token),
        )
        // Admin API (Basic credentials).
        .route("/v1_1/{cloud}/ping", get(admin_ping))
        .route("/v1_1/{cloud}/config", get(admin_config))
        .route("/v1_1/{cloud}/usage", get(admin_usage))
        .route("/v1_1/{cloud}/usage/{date}", get(admin_usage_on))
        .route(
            "/v1_1/{cloud}/resources",
            get(admin_resource_types).delete(admin_delete_by_asset_ids),
        )
        .route(
            "/v1_1/{cloud}/resources/{*rest}",
            get(admin_get_resources)
                .delete(admin_delete_resources)
                .post(admin_update_resource)
                .put(admin_update_by_asset_id),
        )
        .route(
            "/v1_1/{cloud}/resources/related_assets/{*rest}",
            post(related_add).delete(related_delete),
        )
        .route("/v1_1/{cloud}/asset/destroy", post(destroy_by_asset_id))
        .route(
            "/v1_1/{cloud}/derived_resources",
            delete(admin_delete_derived),
        )
        .route("/v1_1/{cloud}/tags/{resource_type}", get(admin_tags))
        .route("/v1_1/{cloud}/folders", get(admin_root_folders))
        .route(
            "/v1_1/{cloud}/folders/search",
            get(admin_search_folders).post(admin_search_folders),
        )
        .route(
            "/v1_1/{cloud}/folders/{*path}",
            get(admin_sub_folders)
                .post(admin_create_folder)
                .put(admin_rename_folder)
                .delete(admin_delete_folder),
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
            "/v1_1/{cloud}/transformations",
            get(transformations_get)
                .post(transformation_create)
                .put(transformation_update)
                .delete(transformation_delete),
        )
        .route(
            "/v1_1/{cloud}/streaming_profiles",
            get(streaming_profiles).post(streaming_profile_create),
        )
        .route(
            "/v1_1/{cloud}/streaming_profiles/{name}",
            get(streaming_profile)
                .put(streaming_profile_update)
                .delete(streaming_profile_delete),
        )
        .route(
            "/v1_1/{cloud}/upload_mappings",
            get(mappings_get)
                .post(mapping_create)
                .put(mapping_update)
                .delete(mapping_delete),
        )
        .route(
            "/v1_1/{cloud}/triggers",
            get(triggers_list).post(trigger_create),
        )
        .route(
            "/v1_1/{cloud}/triggers/{id}",
            put(trigger_update).delete(trigger_delete),
        )
        .route("/v1_1/{cloud}/triggers/{id}/test", post(trigger_test))
        .route("/v2/notifications/{cloud}/messages", get(poll_messages))
        .route("/v2/notifications/{cloud}/messages/ack", post(poll_ack))
        .route(
            "/v1_1/{cloud}/metadata_fields",
            get(metadata_fields).post(metadata_field_create),
        )
        .route(
            "/v1_1/{cloud}/metadata_fields/order",
            put(metadata_fields_order),
        )
        .route(
            "/v1_1/{cloud}/metadata_fields/{id}",
            get(metadata_field)
                .put(metadata_field_update)
                .delete(metadata_field_delete),
        )
        .route(
            "/v1_1/{cloud}/metadata_fields/{id}/datasource",
            put(datasource_update).delete(datasource_delete),
        )
        .route(
            "/v1_1/{cloud}/metadata_fields/{id}/datasource_restore",
            post(datasource_restore),
        )
        .route(
            "/v1_1/{cloud}/metadata_fields/{id}/datasource/order",
            post(datasource_order),
        )
        .route(
            "/v1_1/{cloud}/metadata_rules",
            get(metadata_rules).post(metadata_rule_create),
        )
        .route(
            "/v1_1/{cloud}/metadata_rules/{id}",
            put(metadata_rule_update).delete(metadata_rule_delete),
        )
        .fallback(fallback)
        .method_not_allowed_fallback(fallback)
        .with_state(state)
}

/// Cross-origin requests: browsers may upload (unsigned presets, signatures made by the
/// page's own server) and read delivery URLs from any origin, as with Cloudinary, but never
/// with credentials: no cookies, no `Authorization` header — a web page the developer visits
/// cannot drive the Admin API of a local nephos.
/// The headers a page's script may read from an API answer.
const EXPOSED_HEADERS: &str = "x-request-id,x-cld-error,x-featureratelimit-limit,\
    x-featureratelimit-remaining,x-featureratelimit-reset,content-length,content-range,etag";

fn cors(origins: &[String]) -> CorsLayer {
    use axum::http::header::{HeaderName, CONTENT_RANGE, CONTENT_TYPE, RANGE};
    use tower_http::cors::AllowOrigin;
    let allow = if origins.is_empty() {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        )
    };
    CorsLayer::new()
        .allow_origin(allow)
        // Sent by `through_api` as one static header.
        .vary([])
        .allow_methods([Method::GET, Method::HEAD, Method::POST, Method::OPTIONS])
        .allow_headers([
            CONTENT_TYPE,
            CONTENT_RANGE,
            RANGE,
            HeaderName::from_static("x-unique-upload-id"),
            HeaderName::from_static("x-requested-with"),
        ])
        .expose_headers(
            EXPOSED_HEADERS
                .split(',')
                .map(HeaderName::from_static)
                .collect::<Vec<_>>(),
        )
}

fn panic_answer(detail: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let text = detail
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| detail.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into());
    ApiError::Internal(format!("panic: {text}")).into_response()
}

async fn health(State(state): State<AppState>) -> Response {
    // Each check answers within two seconds: a database that does not answer is reported,
    // never waited for.
    let limit = std::time::Duration::from_secs(2);
    let timed_out = || "no answer within 2 s".to_string();
    let db = tokio::time::timeout(limit, state.meta.ping())
        .await
        .map_err(|_| timed_out())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let blobs = tokio::time::timeout(limit, state.blobs.health())
        .await
        .map_err(|_| timed_out())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let tmp = tokio::time::timeout(limit, tokio::fs::metadata(&state.tmp_dir))
        .await
        .map_err(|_| timed_out())
        .and_then(|r| r.map(|_| ()).map_err(|e| e.to_string()));
    match (&db, &blobs, &tmp) {
        (Ok(()), Ok(()), Ok(())) => Json(json!({"status": "ok"})).into_response(),
        _ => {
            let reason = |r: Result<(), String>| r.err().unwrap_or_else(|| "ok".into());
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({
                    "status": "unavailable",
                    "database": reason(db),
                    "storage": reason(blobs),
                    "temp_dir": reason(tmp),
                })),
            )
                .into_response()
        }
    }
}

type JsonResult = ApiResult<Json<Value>>;

async fn upload_action(State(state): State<AppState>, up: UploadCall) -> ApiResult<Response> {
    let UploadCall {
        call,
        file,
        content_range,
        upload_id,
    } = up;
    let out = upload::upload(
        &state,
        call,
        file,
        content_range.as_deref(),
        upload_id.as_deref(),
    )
    .await?;
    // Written into a buffer of about an answer's size at once (axum's `Json` starts small and
    // grows it several times).
    let mut text = Vec::with_capacity(1024);
    serde_json::to_writer(&mut text, &out).map_err(ApiError::internal)?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        text,
    )
        .into_response())
}

async fn destroy(State(state): State<AppState>, Signed(call, _): Signed) -> JsonResult {
    Ok(Json(actions::destroy(&state, call).await?))
}

async fn rename(State(state): State<AppState>, Signed(call, _): Signed) -> JsonResult {
    Ok(Json(actions::rename(&state, call).await?))
}

async fn explicit(State(state): State<AppState>, Signed(call, _): Signed) -> JsonResult {
    Ok(Json(actions::explicit(&state, call).await?))
}

async fn tags(State(state): State<AppState>, Signed(call, _): Signed<Lenient>) -> JsonResult {
    Ok(Json(actions::tags(&state, call).await?))
}

async fn context(State(state): State<AppState>, Signed(call, _): Signed<Lenient>) -> JsonResult {
    Ok(Json(actions::context(&state, call).await?))
}

async fn metadata_action(
    State(state): State<AppState>,
    Signed(call, _): Signed<Lenient>,
) -> JsonResult {
    Ok(Json(actions::metadata(&state, call).await?))
}

async fn sprite_action(State(state): State<AppState>, Signed(call, _): Signed) -> JsonResult {
    Ok(Json(upload::generate::sprite(&state, call).await?))
}

async fn multi_action(State(state): State<AppState>, Signed(call, _): Signed) -> JsonResult {
    Ok(Json(upload::generate::multi(&state, call).await?))
}

/// `GET …/sprite?mode=download` (the SDKs' `download_generated_sprite`), signed in the query.
async fn sprite_download(
    State(state): State<AppState>,
    headers: HeaderMap,
    Signed(call, _): Signed,
) -> ApiResult<Response> {
    upload::generate::download(&state, call, &headers, "sprite").await
}

/// `GET …/multi?mode=download` (the SDKs' `download_multi`), signed in the query.
async fn multi_download(
    State(state): State<AppState>,
    headers: HeaderMap,
    Signed(call, _): Signed,
) -> ApiResult<Response> {
    upload::generate::download(&state, call, &headers, "multi").await
}

/// Slideshows are rendered videos, which nephos does not make: refused after authentication.
async fn create_slideshow(Signed(_, _): Signed) -> JsonResult {
    Err(ApiError::bad(
        "create_slideshow is not supported by this server (it does not render videos)",
    ))
}

async fn explode_action(State(state): State<AppState>, Signed(call, _): Signed) -> JsonResult {
    Ok(Json(upload::generate::explode(&state, call).await?))
}

async fn text_action(State(state): State<AppState>, Signed(call, _): Signed) -> JsonResult {
    Ok(Json(upload::generate::text(&state, call).await?))
}

async fn generate_archive(
    State(state): State<AppState>,
    Signed(call, _): Signed,
) -> ApiResult<Response> {
    upload::archive::generate(&state, call).await
}

/// `GET …/download` (the SDKs' `private_download_url`), signed in the query.
async fn download_backup(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    Signed(call, _): Signed,
) -> ApiResult<Response> {
    actions::download_backup(&state, call, &method, &headers).await
}

async fn download(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    Signed(call, _): Signed,
) -> ApiResult<Response> {
    if call.resource_type == ResourceType::Auto {
        return Err(ApiError::NotFound(
            "Invalid resource type auto: must be one of image, video, raw".into(),
        ));
    }
    actions::download(&state, call, &method, &headers).await
}

async fn delete_by_token(State(state): State<AppState>, open: Open) -> JsonResult {
    Ok(Json(
        actions::delete_by_token(&state, &open.cloud, &open.params).await?,
    ))
}

async fn admin_ping(_: Admin) -> JsonResult {
    Ok(Json(admin::ping()))
}

async fn admin_config(call: Admin) -> JsonResult {
    Ok(Json(admin::config(&call.cloud, &call.params)))
}

async fn admin_usage(State(state): State<AppState>, call: Admin) -> JsonResult {
    Ok(Json(admin::usage(&state, &call.cloud, None).await?))
}

async fn admin_usage_on(
    State(state): State<AppState>,
    Path((_, date)): Path<(String, String)>,
    call: Admin,
) -> JsonResult {
    Ok(Json(admin::usage(&state, &call.cloud, Some(&date)).await?))
}

async fn admin_resource_types(State(state): State<AppState>, call: Admin) -> JsonResult {
    Ok(Json(admin::resource_types(&state, &call.cloud).await?))
}

async fn admin_delete_by_asset_ids(State(state): State<AppState>, call: Admin) -> JsonResult {
    Ok(Json(
        admin::delete_by_asset_ids(&state, &call.cloud, &call.params).await?,
    ))
}

async fn admin_get_resources(
    State(state): State<AppState>,
    Path((_, rest)): Path<(String, String)>,
    call: Admin,
) -> JsonResult {
    let out = admin::get_resources(&state, &call.account, &call.cloud, &rest, &call.params).await?;
    Ok(Json(out))
}

async fn admin_delete_resources(
    State(state): State<AppState>,
    Path((_, rest)): Path<(String, String)>,
    call: Admin,
) -> JsonResult {
    Ok(Json(
        admin::delete_resources(&state, &call.cloud, &rest, &call.params).await?,
    ))
}

async fn admin_update_resource(
    State(state): State<AppState>,
    Path((_, rest)): Path<(String, String)>,
    call: Admin,
) -> JsonResult {
    let out =
        admin::update_resource(&state, &call.account, &call.cloud, &rest, &call.params).await?;
    Ok(Json(out))
}

async fn admin_update_by_asset_id(
    State(state): State<AppState>,
    Path((_, asset_id)): Path<(String, String)>,
    call: Admin,
) -> JsonResult {
    Ok(Json(
        admin::assets::update_by_asset_id(
            &state,
            &call.account,
            &call.cloud,
            &asset_id,
            &call.params,
        )
        .await?,
    ))
}

async fn related_add(
    State(state): State<AppState>,
    Path((_, rest)): Path<(String, String)>,
    call: Admin,
) -> JsonResult {
    Ok(Json(
        admin::assets::relate(&state, &call.cloud, &rest, &call.params, true).await?,
    ))
}

async fn related_delete(
    State(state): State<AppState>,
    Path((_, rest)): Path<(String, String)>,
    call: Admin,
) -> JsonResult {
    Ok(Json(
        admin::assets::relate(&state, &call.cloud, &rest, &call.params, false).await?,
    ))
}

async fn destroy_by_asset_id(State(state): State<AppState>, Signed(call, _): Signed) -> JsonResult {
    Ok(Json(
        admin::assets::destroy_by_asset_id(&state, &call.cloud, &call.params).await?,
    ))
}

async fn admin_delete_derived(State(state): State<AppState>, call: Admin) -> JsonResult {
    Ok(Json(
        admin::delete_derived(&state, &call.cloud, &call.params).await?,
    ))
}

async fn admin_tags(
    State(state): State<AppState>,
    Path((_, rt)): Path<(String, String)>,
    call: Admin,
) -> JsonResult {
    Ok(Json(
        admin::list_tags(&state, &call.cloud, &rt, &call.params).await?,
    ))
}

async fn admin_root_folders(State(state): State<AppState>, call: Admin) -> JsonResult {
    Ok(Json(admin::list_folders(&state, &call.cloud, None).await?))
}

async fn admin_search_folders(State(state): State<AppState>, call: Admin) -> JsonResult {
    Ok(Json(
        admin::search::search_folders(&state, &call.cloud, &call.params).await?,
    ))
}

async fn admin_sub_folders(
    State(state): State<AppState>,
    Path((_, path)): Path<(String, String)>,
    call: Admin,
) -> JsonResult {
    Ok(Json(
        admin::list_folders(&state, &call.cloud, Some(&path)).await?,
    ))
}

async fn admin_create_folder(
    State(state): State<AppState>,
    Path((_, path)): Path<(String, String)>,
    call: Admin,
) -> JsonResult {
    Ok(Json(
        admin::create_folder(&state, &call.cloud, &path).await?,
    ))
}

async fn admin_rename_folder(
    State(state): State<AppState>,
    Path((_, path)): Path<(String, String)>,
    call: Admin,
) -> JsonResult {
    let to = call.params.required("to_folder")?;
    Ok(Json(
        admin::rename_folder(&state, &call.cloud, &path, to).await?,
    ))
}

async fn admin_delete_folder(
    State(state): State<AppState>,
    Path((_, path)): Path<(String, String)>,
    call: Admin,
) -> JsonResult {
    Ok(Json(
        admin::delete_folder(&state, &call.cloud, &path).await?,
    ))
}

async fn admin_presets(State(state): State<AppState>, call: Admin) -> JsonResult {
    Ok(Json(admin::list_presets(&state, &call.cloud).await?))
}

async fn admin_create_preset(State(state): State<AppState>, call: Admin) -> JsonResult {
    Ok(Json(
        admin::create_preset(&state, &call.cloud, &call.params).await?,
    ))
}

async fn admin_preset(
    State(state): State<AppState>,
    Path((_, name)): Path<(String, String)>,
    call: Admin,
) -> JsonResult {
    Ok(Json(admin::get_preset(&state, &call.cloud, &name).await?))
}

async fn admin_update_preset(
    State(state): State<AppState>,
    Path((_, name)): Path<(String, String)>,
    call: Admin,
) -> JsonResult {
    Ok(Json(
        admin::update_preset(&state, &call.cloud, &name, &call.params).await?,
    ))
}

async fn admin_delete_preset(
    State(state): State<AppState>,
    Path((_, name)): Path<(String, String)>,
    call: Admin,
) -> JsonResult {
    Ok(Json(
        admin::delete_preset(&state, &call.cloud, &name).await?,
    ))
}

fn body(call: &Admin) -> serde_json::Map<String, Value> {
    metadata::body_of(call.json.as_ref(), &call.params)
}

async fn metadata_fields(State(state): State<AppState>, call: Admin) -> JsonResult {
    Ok(Json(
        metadata::list_fields(&state, &call.cloud, &call.params).await?,
    ))
}

async fn metadata_field_create(State(state): State<AppState>, call: Admin) -> JsonResult {
    Ok(Json(
        metadata::create_field(&state, &call.cloud, body(&call)).await?,
    ))
}

async fn metadata_fields_order(State(state): State<AppState>, call: Admin) -> JsonResult {
    Ok(Json(
        metadata::order_fields(&state, &call.cloud, body(&call)).await?,
    ))
}

async fn metadata_field(
    State(state): State<AppState>,
    Path((_, id)): Path<(String, String)>,
    call: Admin,
) -> JsonResult {
    Ok(Json(metadata::get_field(&state, &call.cloud, &id).await?))
}

async fn metadata_field_update(
    State(state): State<AppState>,
    Path((_, id)): Path<(String, String)>,
    call: Admin,
) -> JsonResult {
    Ok(Json(
        metadata::update_field(&state, &call.cloud, &id, body(&call)).await?,
    ))
}

async fn metadata_field_delete(
    State(state): State<AppState>,
    Path((_, id)): Path<(String, String)>,
    call: Admin,
) -> JsonResult {
    Ok(Json(
        metadata::delete_field(&state, &call.cloud, &id).await?,
    ))
}

async fn datasource_update(
    State(state): State<AppState>,
    Path((_, id)): Path<(String, String)>,
    call: Admin,
) -> JsonResult {
    Ok(Json(
        metadata::update_datasource(&state, &call.cloud, &id, body(&call)).await?,
    ))
}

async fn datasource_delete(
    State(state): State<AppState>,
    Path((_, id)): Path<(String, String)>,
    call: Admin,
) -> JsonResult {
    Ok(Json(
        metadata::set_entries_state(&state, &call.cloud, &id, body(&call), false).await?,
    ))
}

async fn datasource_restore(
    State(state): State<AppState>,
    Path((_, id)): Path<(String, String)>,
    call: Admin,
) -> JsonResult {
    Ok(Json(
        metadata::set_entries_state(&state, &call.cloud, &id, body(&call), true).await?,
    ))
}

async fn datasource_order(
    State(state): State<AppState>,
    Path((_, id)): Path<(String, String)>,
    call: Admin,
) -> JsonResult {
    Ok(Json(
        metadata::order_datasource(&state, &call.cloud, &id, body(&call)).await?,
    ))
}

async fn metadata_rules(State(state): State<AppState>, call: Admin) -> JsonResult {
    Ok(Json(metadata::list_rules(&state, &call.cloud).await?))
}

async fn metadata_rule_create(State(state): State<AppState>, call: Admin) -> JsonResult {
    Ok(Json(
        metadata::create_rule(&state, &call.cloud, body(&call)).await?,
    ))
}

async fn metadata_rule_update(
    State(state): State<AppState>,
    Path((_, id)): Path<(String, String)>,
    call: Admin,
) -> JsonResult {
    Ok(Json(
        metadata::update_rule(&state, &call.cloud, &id, body(&call)).await?,
    ))
}

async fn metadata_rule_delete(
    State(state): State<AppState>,
    Path((_, id)): Path<(String, String)>,
    call: Admin,
) -> JsonResult {
    Ok(Json(metadata::delete_rule(&state, &call.cloud, &id).await?))
}

async fn transformations_get(State(state): State<AppState>, call: Admin) -> JsonResult {
    use admin::transformations as t;
    Ok(Json(if call.params.nonempty("transformation").is_some() {
        t::get(&state, &call.cloud, &call.params).await?
    } else {
        t::list(&state, &call.cloud, &call.params).await?
    }))
}

async fn transformation_create(State(state): State<AppState>, call: Admin) -> JsonResult {
    Ok(Json(
        admin::transformations::create(&state, &call.cloud, &call.params).await?,
    ))
}

async fn transformation_update(State(state): State<AppState>, call: Admin) -> JsonResult {
    Ok(Json(
        admin::transformations::update(&state, &call.cloud, &call.params).await?,
    ))
}

async fn transformation_delete(State(state): State<AppState>, call: Admin) -> JsonResult {
    Ok(Json(
        admin::transformations::delete(&state, &call.cloud, &call.params).await?,
    ))
}

async fn streaming_profiles(State(state): State<AppState>, call: Admin) -> JsonResult {
    Ok(Json(admin::streaming::list(&state, &call.cloud).await?))
}

async fn streaming_profile_create(State(state): State<AppState>, call: Admin) -> JsonResult {
    Ok(Json(
        admin::streaming::create(&state, &call.cloud, &call.params, call.json.as_ref()).await?,
    ))
}

async fn streaming_profile(
    State(state): State<AppState>,
    Path((_, name)): Path<(String, String)>,
    call: Admin,
) -> JsonResult {
    Ok(Json(
        admin::streaming::get(&state, &call.cloud, &name).await?,
    ))
}

async fn streaming_profile_update(
    State(state): State<AppState>,
    Path((_, name)): Path<(String, String)>,
    call: Admin,
) -> JsonResult {
    Ok(Json(
        admin::streaming::update(&state, &call.cloud, &name, &call.params, call.json.as_ref())
            .await?,
    ))
}

async fn streaming_profile_delete(
    State(state): State<AppState>,
    Path((_, name)): Path<(String, String)>,
    call: Admin,
) -> JsonResult {
    Ok(Json(
        admin::streaming::delete(&state, &call.cloud, &name).await?,
    ))
}

async fn mappings_get(State(state): State<AppState>, call: Admin) -> JsonResult {
    Ok(Json(
        admin::mappings::get(&state, &call.cloud, &call.params).await?,
    ))
}

async fn mapping_create(State(state): State<AppState>, call: Admin) -> JsonResult {
    Ok(Json(
        admin::mappings::create(&state, &call.cloud, &call.params).await?,
    ))
}

async fn mapping_update(State(state): State<AppState>, call: Admin) -> JsonResult {
    Ok(Json(
        admin::mappings::update(&state, &call.cloud, &call.params).await?,
    ))
}

async fn mapping_delete(State(state): State<AppState>, call: Admin) -> JsonResult {
    Ok(Json(
        admin::mappings::delete(&state, &call.cloud, &call.params).await?,
    ))
}

async fn triggers_list(State(state): State<AppState>, call: Admin) -> JsonResult {
    Ok(Json(
        crate::triggers::list(&state, &call.cloud, &call.params).await?,
    ))
}

async fn trigger_create(State(state): State<AppState>, call: Admin) -> JsonResult {
    Ok(Json(
        crate::triggers::create(&state, &call.cloud, &call.params).await?,
    ))
}

async fn trigger_update(
    State(state): State<AppState>,
    Path((_, id)): Path<(String, String)>,
    call: Admin,
) -> JsonResult {
    Ok(Json(
        crate::triggers::update(&state, &call.cloud, &id, &call.params).await?,
    ))
}

async fn trigger_delete(
    State(state): State<AppState>,
    Path((_, id)): Path<(String, String)>,
    call: Admin,
) -> JsonResult {
    Ok(Json(
        crate::triggers::delete(&state, &call.cloud, &id).await?,
    ))
}

async fn trigger_test(
    State(state): State<AppState>,
    Path((_, id)): Path<(String, String)>,
    call: Admin,
) -> JsonResult {
    Ok(Json(crate::triggers::test(&state, &call.cloud, &id).await?))
}

async fn poll_messages(State(state): State<AppState>, call: Admin) -> JsonResult {
    Ok(Json(
        crate::triggers::messages(&state, &call.cloud, &call.params).await?,
    ))
}

async fn poll_ack(State(state): State<AppState>, call: Admin) -> JsonResult {
    Ok(Json(
        crate::triggers::ack(&state, &call.cloud, &call.params).await?,
    ))
}

/// GET/HEAD of anything else outside `/v1_1/` is a delivery URL; the rest are unknown routes,
/// whatever the method (answered 404 in the API's JSON error shape, which the SDKs can read).
async fn fallback(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let api = uri.path().starts_with("/v1_1/") || uri.path().starts_with("/v2/");
    if !api && (method == Method::GET || method == Method::HEAD) {
        let first = crate::delivery::serve(&state, &method, uri.path(), &headers).await;
        let missing = matches!(&first, Err(e) if e.status() == StatusCode::NOT_FOUND);
        if !missing {
            return first.unwrap_or_else(|e| e.into_response());
        }
        // A missing asset under an upload mapping is fetched once, then served.
        return match upload::mapping::auto_upload(&state, uri.path()).await {
            Ok(true) => crate::delivery::serve(&state, &method, uri.path(), &headers)
                .await
                .unwrap_or_else(|e| e.into_response()),
            Ok(false) => first.unwrap_or_else(|e| e.into_response()),
            Err(e @ ApiError::Internal(_)) => e.into_response(),
            Err(e) => ApiError::Delivery(e.status(), e.to_string()).into_response(),
        };
    }
    ApiError::NotFound(format!("No route for {method} {}", uri.path())).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upload_paths_are_told_from_the_others() {
        let cases = [
            ("POST", "/v1_1/demo/image/upload", true),
            ("POST", "/v1_1/demo/video/upload", true),
            ("POST", "/v1_1/demo/raw/upload", true),
            ("POST", "/v1_1/demo/auto/upload", true),
            ("POST", "/v1_1/demo/upload", true),
            ("POST", "/v1_1/my%20cloud/image/upload", true),
            // Another method, another action, or a path the router matches elsewhere.
            ("GET", "/v1_1/demo/image/upload", false),
            ("PUT", "/v1_1/demo/upload", false),
            ("POST", "/v1_1/demo/image/destroy", false),
            ("POST", "/v1_1/demo/resources/upload", false),
            ("POST", "/v1_1/demo/tags/upload", false),
            ("POST", "/v1_1/demo/all/upload", false),
            // Not a route at all: left to the router's answer.
            ("POST", "/v1_1//image/upload", false),
            ("POST", "/v1_1//upload", false),
            ("POST", "/v1_1/demo/image/upload/", false),
            ("POST", "/v1_1/demo/upload/", false),
            ("POST", "/v1_1/demo/image/upload/x", false),
            ("POST", "/v1_1/demo", false),
            ("POST", "/v2/demo/image/upload", false),
            ("POST", "/demo/image/upload", false),
        ];
        for (method, path, want) in cases {
            let req = Request::builder()
                .method(method)
                .uri(path)
                .body(axum::body::Body::empty())
                .unwrap();
            assert_eq!(is_upload(&req), want, "{method} {path}");
        }
    }
}
