//! The routes of the control API (`/_nephos/…`) and the guard in front of them.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{json, Value as Json_};
use subtle::ConstantTimeEq;

use super::clouds;
use super::faults::RuleSpec;
use super::log::RequestFilter;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Largest JSON body a control call reads.
const MAX_BODY: usize = 64 * 1024;
/// The header a call must carry when no token is configured.
pub const CONTROL_HEADER: &str = "x-nephos-control";

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/clouds", get(list_clouds).post(create_cloud))
        .route("/clouds/{cloud}", delete(delete_cloud))
        .route("/clouds/{cloud}/reset", post(reset_cloud))
        .route("/clouds/{cloud}/seed", post(seed_cloud))
        .route("/reset", post(reset_all))
        .route("/requests", get(list_requests).delete(clear_requests))
        .route(
            "/notifications",
            get(list_notifications).delete(clear_notifications),
        )
        .route(
            "/faults",
            get(list_faults).post(add_fault).delete(clear_faults),
        )
        .route("/faults/{id}", delete(remove_fault))
        .route("/stats", get(stats))
        .route("/async", get(async_state))
        .route("/async/hold", post(hold))
        .route("/async/release", post(release))
        .fallback(unknown)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Whether a `Host` header names this machine's loopback (a page of another site that
/// resolves its own name to 127.0.0.1 — DNS rebinding — is refused).
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
    else {
        return true;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
    };
    let name = name.to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let control = &state.control;
    if !control.enabled {
        return ApiError::NotFound(format!(
            "No route for {} {} (the control API is off: nephos listens beyond loopback and \
             no --control-token is set)",
            req.method(),
            req.uri().path()
        ))
        .into_response();
    }
    let headers = req.headers();
    if let Some(token) = &control.token {
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
            return ApiError::Unauthorized(
                "The control API needs Authorization: Bearer <control token>".into(),
            )
            .into_response();
        }
    } else {
        if headers.get(CONTROL_HEADER).and_then(|v| v.to_str().ok()) != Some("1") {
            return ApiError::Forbidden(
                "The control API needs the header X-Nephos-Control: 1".into(),
            )
            .into_response();
        }
        // Through a reverse proxy the peer is not who it seems: a token is needed then.
        if [
            "forwarded",
            "x-forwarded-for",
            "x-real-ip",
            "x-forwarded-host",
        ]
        .iter()
        .any(|h| headers.contains_key(*h))
        {
            return ApiError::Forbidden(
                "The control API does not answer proxied requests without --control-token".into(),
            )
            .into_response();
        }
        if !loopback_host(headers) {
            return ApiError::Forbidden(
                "The control API answers only requests addressed to localhost or a loopback \
                 address (or set --control-token)"
                    .into(),
            )
            .into_response();
        }
    }
    let writes = req.method() != axum::http::Method::GET;
    let resp = next.run(req).await;
    if writes {
        state.records.invalidate();
    }
    resp
}

fn body_json<T: serde::de::DeserializeOwned + Default>(body: &Bytes) -> ApiResult<T> {
    if body.len() > MAX_BODY {
        return Err(ApiError::bad(format!(
            "Request body too large (at most {MAX_BODY} bytes)"
        )));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("Invalid JSON body: {e}")))
}

async fn unknown(req: Request) -> ApiError {
    ApiError::NotFound(format!(
        "No route for {} {}",
        req.method(),
        req.uri().path()
    ))
}

async fn index() -> Json<Json_> {
    Json(json!({
        "endpoints": [
            "GET /_nephos/clouds", "POST /_nephos/clouds", "DELETE /_nephos/clouds/<cloud>",
            "POST /_nephos/clouds/<cloud>/reset", "POST /_nephos/clouds/<cloud>/seed",
            "POST /_nephos/reset", "GET|DELETE /_nephos/requests",
            "GET|DELETE /_nephos/notifications", "GET|POST|DELETE /_nephos/faults",
            "DELETE /_nephos/faults/<id>", "GET /_nephos/stats", "GET /_nephos/async",
            "POST /_nephos/async/hold", "POST /_nephos/async/release"
        ]
    }))
}

async fn list_clouds(State(state): State<AppState>) -> Json<Json_> {
    let base = state.api_base.clone();
    let accounts = state.accounts();
    let list: Vec<Json_> = accounts
        .all()
        .iter()
        .map(|a| {
            let mut j = clouds::account_json(a, &base);
            j["configured"] = json!(state.control.configured.contains(a));
            j
        })
        .collect();
    Json(json!({ "clouds": list }))
}

async fn create_cloud(State(state): State<AppState>, body: Bytes) -> ApiResult<Response> {
    let spec: clouds::NewCloud = body_json(&body)?;
    let account = clouds::create(&state, spec).await?;
    tracing::info!(cloud = %account.cloud, "cloud created through the control API");
    Ok((
        StatusCode::CREATED,
        Json(clouds::account_json(&account, &state.api_base)),
    )
        .into_response())
}

async fn delete_cloud(
    State(state): State<AppState>,
    Path(cloud): Path<String>,
) -> ApiResult<Json<Json_>> {
    clouds::delete(&state, &cloud).await?;
    Ok(Json(json!({"deleted": cloud})))
}

async fn reset_cloud(
    State(state): State<AppState>,
    Path(cloud): Path<String>,
) -> ApiResult<Json<Json_>> {
    Ok(Json(clouds::reset(&state, &cloud).await?))
}

#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedBody {
    path: Option<String>,
}

async fn seed_cloud(
    State(state): State<AppState>,
    Path(cloud): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Json_>> {
    let spec: SeedBody = body_json(&body)?;
    let dir = match spec.path {
        Some(p) => std::path::PathBuf::from(p),
        None => state.control.seed_dir.clone().ok_or_else(|| {
            ApiError::bad("Give the folder to upload as {\"path\": …} (no --seed folder is set)")
        })?,
    };
    Ok(Json(clouds::seed(&state, &cloud, &dir).await?))
}

async fn reset_all(State(state): State<AppState>) -> ApiResult<Json<Json_>> {
    Ok(Json(clouds::reset_all(&state).await?))
}

#[derive(serde::Deserialize)]
struct RequestQuery {
    cloud: Option<String>,
    method: Option<String>,
    path: Option<String>,
    path_prefix: Option<String>,
    status: Option<u16>,
    /// Unix seconds or milliseconds, or an RFC 3339 time.
    since: Option<String>,
    limit: Option<usize>,
}

fn parse_since(s: &str) -> ApiResult<i64> {
    if let Ok(n) = s.parse::<i64>() {
        // Seconds until the year 5138; milliseconds after.
        return Ok(if n < 100_000_000_000 { n * 1000 } else { n });
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|_| ApiError::bad(format!("Invalid since {s:?}: Unix time or RFC 3339")))
}

/// A query string as `T`; a bad one is a 400 in the API's error shape.
fn query<T: serde::de::DeserializeOwned>(raw: Option<String>) -> ApiResult<T> {
    serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::bad(format!("Invalid query: {e}")))
}

async fn list_requests(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Json_>> {
    let q: RequestQuery = query(raw)?;
    let filter = RequestFilter {
        cloud: q.cloud,
        method: q.method,
        path_prefix: q.path_prefix.or(q.path),
        status: q.status,
        since_ms: q.since.as_deref().map(parse_since).transpose()?,
        limit: q.limit.unwrap_or(100).min(super::log::CAPACITY),
    };
    let list: Vec<Json_> = state
        .control
        .requests
        .list(&filter)
        .iter()
        .map(|e| e.to_json())
        .collect();
    Ok(Json(json!({ "requests": list })))
}

async fn clear_requests(State(state): State<AppState>) -> Json<Json_> {
    state.control.requests.clear();
    Json(json!({"cleared": true}))
}

#[derive(serde::Deserialize)]
struct NotificationQuery {
    cloud: Option<String>,
    limit: Option<usize>,
}

async fn list_notifications(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Json_>> {
    let q: NotificationQuery = query(raw)?;
    let limit = q.limit.unwrap_or(100).min(super::log::CAPACITY);
    Ok(Json(json!({
        "notifications": state.control.notifications.list(q.cloud.as_deref(), limit)
    })))
}

async fn clear_notifications(State(state): State<AppState>) -> Json<Json_> {
    state.control.notifications.clear();
    Json(json!({"cleared": true}))
}

async fn list_faults(State(state): State<AppState>) -> Json<Json_> {
    Json(json!({ "faults": state.control.faults.list() }))
}

async fn add_fault(State(state): State<AppState>, body: Bytes) -> ApiResult<Response> {
    let spec: RuleSpec = body_json(&body)?;
    let rule = state.control.faults.add(spec).map_err(ApiError::bad)?;
    Ok((StatusCode::CREATED, Json(rule)).into_response())
}

async fn clear_faults(State(state): State<AppState>) -> Json<Json_> {
    state.control.faults.clear();
    Json(json!({"cleared": true}))
}

async fn remove_fault(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Json_>> {
    if !state.control.faults.remove(&id) {
        return Err(ApiError::NotFound(format!("Fault {id} not found")));
    }
    Ok(Json(json!({"deleted": id})))
}

async fn stats(State(state): State<AppState>) -> Json<Json_> {
    Json(json!({ "derived": state.renders.stats() }))
}

async fn async_state(State(state): State<AppState>) -> Json<Json_> {
    Json(json!({"held": state.control.hold.is_held()}))
}

async fn hold(State(state): State<AppState>) -> Json<Json_> {
    state.control.hold.set(true);
    Json(json!({"held": true}))
}

async fn release(State(state): State<AppState>) -> Json<Json_> {
    state.control.hold.set(false);
    Json(json!({"held": false}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(h: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(axum::http::header::HOST, h.parse().unwrap());
        m
    }

    #[test]
    fn only_loopback_hosts() {
        for ok in [
            "127.0.0.1:8777",
            "localhost:1",
            "[::1]:80",
            "app.localhost",
            "127.1.2.3",
        ] {
            assert!(loopback_host(&host(ok)), "{ok}");
        }
        for bad in [
            "evil.example:8777",
            "10.0.0.1",
            "[::2]:8",
            "localhost.evil.com",
        ] {
            assert!(!loopback_host(&host(bad)), "{bad}");
        }
    }
}
