//! Serving a transformed (or format-converted) image: computed on request from the original,
//! with an ETag of its own so browsers revalidate cheaply.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{delivery_error, etag_matches, mime_for, render};
use crate::db::AssetRecord;
use crate::error::{ApiError, ApiResult};
use crate::media::transform::{self, Plan};

use crate::state::AppState;

/// A derivative a request asks for.
pub(super) struct Wanted<'a> {
    pub rec: &'a AssetRecord,
    /// As written in the URL (`None`: a format conversion only).
    pub transformation: Option<&'a str>,
    pub plan: &'a Plan,
    pub format: &'a str,
    /// Whether it may be rendered anew under strict transformations (a signed URL, or named
    /// transformations allowed for strict mode).
    pub allowed: bool,
    /// `f_auto`: the format depends on the request's `Accept`.
    pub vary_accept: bool,
    /// `f_auto`'s choice aside, the format the URL gives: served instead when it is stored
    /// and strict transformations keep the choice from being rendered.
    pub fallback: Option<&'a str>,
}

pub(super) async fn serve(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
    wanted: Wanted<'_>,
) -> ApiResult<Response> {
    let Wanted {
        rec,
        transformation,
        plan,
        format,
        allowed,
        vary_accept,
        fallback,
    } = wanted;
    let source_format = rec.format.clone().unwrap_or_default();
    let video = rec.key.resource_type == "video";
    // `w_auto:breakpoints…:json`: the answer is the breakpoints of the image the rest makes
    // (in `format`), a derivative of its own.
    let mut plan = plan.clone();
    let format = if matches!(plan.auto_width, Some((_, true))) {
        if video {
            return Err(delivery_error(
                StatusCode::BAD_REQUEST,
                "w_auto with json applies to images",
            ));
        }
        plan.format = Some(format.to_string());
        "json"
    } else {
        format
    };
    if !video && !transform::can_decode(&source_format) {
        return Err(delivery_error(
            StatusCode::BAD_REQUEST,
            format!(
                "Cannot transform {source_format} images (JPEG, PNG, GIF, WebP, BMP and TIFF can be)"
            ),
        ));
    }
    // The same original, transformation, format and coordinates always give the same bytes:
    // the derivative's identity is its ETag (and, in the store, its key).
    let t = transformation.unwrap_or("");
    let id = render::derived_id(rec, t, format);
    let etag = format!("\"{id}\"");
    let last_modified = httpdate::fmt_http_date(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(rec.version.max(0) as u64),
    );
    let mut base = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::LAST_MODIFIED, &last_modified)
        .header(header::CACHE_CONTROL, "public, max-age=0, must-revalidate")
        .header("x-content-type-options", "nosniff");
    if vary_accept {
        base = base.header(header::VARY, "Accept");
    }
    if plan.attachment {
        let name = rec
            .key
            .public_id
            .rsplit('/')
            .next()
            .unwrap_or("download")
            .replace(['"', '\\'], "_");
        if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}.{format}\"")) {
            base = base.header(header::CONTENT_DISPOSITION, v);
        }
    }
    let if_none_match = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    if if_none_match.is_some_and(|list| etag_matches(list, &etag)) {
        return base
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .map_err(ApiError::internal);
    }

    let max_pixels = state.limits.max_image_pixels;
    if !video && rec.bytes.max(0) as u64 > max_pixels.saturating_mul(8) {
        return Err(delivery_error(
            StatusCode::BAD_REQUEST,
            format!("The image is too large to transform ({} bytes)", rec.bytes),
        ));
    }
    // A video is read whole to make its pictures: as large as a decoded image may be.
    if video && rec.bytes.max(0) as u64 > state.limits.max_decode_bytes {
        return Err(delivery_error(
            StatusCode::BAD_REQUEST,
            format!(
                "The video is too large to make pictures of ({} bytes; at most {})",
                rec.bytes, state.limits.max_decode_bytes
            ),
        ));
    }
    // Rendered before: served as stored.
    let key = render::derived_key(&rec.key.cloud, &id);
    let mut written = format;
    let bytes = match render::stored(state, &key).await? {
        Some(b) => b,
        None => {
            let kept = match fallback {
                Some(f) if state.limits.strict_transformations && !allowed => {
                    let id = render::derived_id(rec, t, f);
                    let found =
                        render::stored(state, &render::derived_key(&rec.key.cloud, &id)).await?;
                    if found.is_some() {
                        written = f;
                        if let Ok(v) = HeaderValue::from_str(&format!("\"{id}\"")) {
                            if let Some(h) = base.headers_mut() {
                                h.insert(header::ETAG, v);
                            }
                        }
                    }
                    found
                }
                _ => None,
            };
            if let Some(b) = kept {
                b
            } else if state.limits.strict_transformations && !allowed {
                return Err(delivery_error(
                    StatusCode::UNAUTHORIZED,
                    format!(
                        "Transformation {t} is not allowed: strict transformations are on \
                         (sign the URL, or use an eager or named transformation allowed for strict mode)"
                    ),
                ));
            } else {
                render::render(state, rec, t, &plan, format)
                    .await
                    .map_err(|render::RenderError(status, why)| delivery_error(status, why))?
            }
        }
    };
    let written = crate::media::avif_encode::written_format(written, &bytes);
    base = base
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, mime_for(written))
        .header(header::CONTENT_LENGTH, bytes.len());
    if method == Method::HEAD {
        return base.body(Body::empty()).map_err(ApiError::internal);
    }
    Ok(base
        .body(Body::from(bytes))
        .map_err(ApiError::internal)?
        .into_response())
}
