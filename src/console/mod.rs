//! The media-library console at `/console`: a page, its script and its style sheet, embedded
//! in the binary. It runs in the browser and talks to nephos only through the APIs the SDKs
//! use (Admin and Upload, with the chosen cloud's key and secret as Basic credentials) and the
//! control API (clouds, the request log, resets). It is served where the control API is on,
//! and its strict content policy lets it load nothing from anywhere else.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::ApiError;
use crate::state::AppState;

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/app.css");

/// What the page may load: itself, and images and videos from wherever nephos's delivery URLs
/// point (the public URL may name another host than the one the browser used).
const POLICY: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
    img-src 'self' data: blob: http: https:; media-src 'self' blob: http: https:; \
    form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(script))
        .route("/app.css", get(style))
        .with_state(state)
}

fn asset(state: &AppState, content_type: &'static str, body: &'static str) -> Response {
    if !state.control.enabled {
        return ApiError::NotFound(
            "The console is off where the control API is (nephos listens beyond loopback and no \
             --control-token is set)"
                .into(),
        )
        .into_response();
    }
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

async fn index(State(state): State<AppState>) -> Response {
    asset(&state, "text/html; charset=utf-8", INDEX)
}

async fn script(State(state): State<AppState>) -> Response {
    asset(&state, "text/javascript; charset=utf-8", SCRIPT)
}

async fn style(State(state): State<AppState>) -> Response {
    asset(&state, "text/css; charset=utf-8", STYLE)
}
