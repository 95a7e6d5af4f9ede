//! Cloudinary's hourly Admin API limit: every Admin answer carries
//! `X-FeatureRateLimit-Limit/-Remaining/-Reset`, and a cloud that spent its calls for the hour
//! gets 420 until the next hour starts. The limit is configuration (0 turns it off).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::state::AppState;

/// Calls counted per cloud in the current hour.
#[derive(Default)]
pub struct AdminCalls {
    by_cloud: Mutex<HashMap<String, (i64, u64)>>,
}

/// The first segments of Upload API paths (`/v1_1/<cloud>/<segment>/…`): everything else under
/// `/v1_1/<cloud>/` (and `/v2/`) is the Admin API.
const UPLOAD_SEGMENTS: &[&str] = &[
    "image",
    "video",
    "raw",
    "auto",
    "all",
    "asset",
    "upload",
    "delete_by_token",
];

/// The cloud of an Admin API path.
fn admin_cloud(path: &str) -> Option<&str> {
    let mut segs = path.trim_start_matches('/').split('/');
    match segs.next()? {
        "v1_1" => {
            let cloud = segs.next()?;
            let what = segs.next()?;
            (!UPLOAD_SEGMENTS.contains(&what)).then_some(cloud)
        }
        "v2" => {
            segs.next()?;
            segs.next()
        }
        _ => None,
    }
}

/// Runs an API call through `next` unless its cloud spent its Admin API calls for the hour,
/// and adds the limit's headers to Admin answers.
pub async fn limit<F, Fut>(
    state: &AppState,
    calls: &Arc<AdminCalls>,
    req: Request,
    next: F,
) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let max = state.limits.admin_rate_limit;
    let cloud = match admin_cloud(req.uri().path()) {
        Some(c) if max > 0 && state.accounts().has_cloud(c) => c.to_string(),
        _ => return next(req).await,
    };
    let now = state.now();
    let hour = now.div_euclid(3600);
    let lock = || match calls.by_cloud.lock() {
        Ok(m) => m,
        Err(poisoned) => poisoned.into_inner(),
    };
    let spent = {
        let mut map = lock();
        let entry = map.entry(cloud.clone()).or_insert((hour, 0));
        if entry.0 != hour {
            *entry = (hour, 0);
        }
        entry.1
    };
    let (mut resp, used) = if spent >= max {
        (
            ApiError::RateLimited("Rate Limit Exceeded".into()).into_response(),
            spent,
        )
    } else {
        let resp = next(req).await;
        // Only calls with valid credentials count: nobody else can spend a cloud's quota.
        let used = if resp.status() == axum::http::StatusCode::UNAUTHORIZED {
            spent
        } else {
            let mut map = lock();
            let entry = map.entry(cloud).or_insert((hour, 0));
            if entry.0 != hour {
                *entry = (hour, 0);
            }
            entry.1 = entry.1.saturating_add(1);
            entry.1
        };
        (resp, used)
    };
    let reset = std::time::UNIX_EPOCH + std::time::Duration::from_secs(((hour + 1) * 3600) as u64);
    let headers = resp.headers_mut();
    for (name, value) in [
        ("x-featureratelimit-limit", max.to_string()),
        (
            "x-featureratelimit-remaining",
            max.saturating_sub(used).to_string(),
        ),
        ("x-featureratelimit-reset", httpdate::fmt_http_date(reset)),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::admin_cloud;

    #[test]
    fn admin_paths_are_told_from_upload_paths() {
        assert_eq!(admin_cloud("/v1_1/demo/resources/image"), Some("demo"));
        assert_eq!(admin_cloud("/v1_1/demo/ping"), Some("demo"));
        assert_eq!(admin_cloud("/v2/notifications/demo/messages"), Some("demo"));
        assert_eq!(admin_cloud("/v1_1/demo/image/upload"), None);
        assert_eq!(admin_cloud("/v1_1/demo/upload"), None);
        assert_eq!(admin_cloud("/demo/image/upload/x.png"), None);
    }
}
