//! Delivery URLs: building the `url` of an asset and serving
//! `GET /<cloud>/<resource_type>/<type>/[s--SIG--/][<transformations>/][v<version>/]<public_id>[.<ext>]`
//! with conditional GET and byte ranges.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use subtle::ConstantTimeEq;

pub mod cache;
mod derived;
pub mod render;

use crate::auth::{delivery_signature, SignatureAlgorithm};
use crate::db::{AssetKey, AssetRecord};
use crate::error::{ApiError, ApiResult};
use crate::media::transform;
use crate::state::AppState;
use crate::storage::ByteRange;

/// Everything outside `[A-Za-z0-9_.\-/:]` is escaped, as the Python SDK does.
const PATH_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'_')
    .remove(b'.')
    .remove(b'-')
    .remove(b'/')
    .remove(b':');

/// Delivery types an asset may have (and a delivery URL may name).
pub const DELIVERY_TYPES: &[&str] = &["upload", "private", "authenticated"];
/// Delivery types of the images nephos makes itself (the `text`, `sprite` and `multi`
/// methods): public like `upload`, never given by an upload.
pub const GENERATED_TYPES: &[&str] = &["text", "sprite", "multi"];

/// Whether an asset's `access_mode` is `authenticated` (delivered with a signed URL only).
pub fn restricted(rec: &AssetRecord) -> bool {
    rec.extra.get("access_mode").and_then(|m| m.as_str()) == Some("authenticated")
}

/// Whether assets of a delivery type are delivered without a signature.
pub fn is_public(delivery_type: &str) -> bool {
    delivery_type == "upload" || GENERATED_TYPES.contains(&delivery_type)
}

pub fn escape_public_id(public_id: &str) -> String {
    utf8_percent_encode(public_id, PATH_ESCAPE).to_string()
}

/// The delivery URL of an asset's original: signed (`s--…--`) for private and authenticated
/// assets.
pub fn asset_url(
    base: &str,
    rec: &AssetRecord,
    secret: &str,
    algorithm: SignatureAlgorithm,
) -> String {
    derived_url(base, rec, None, None, secret, algorithm)
}

/// The delivery URL of a transformation of an asset (in `format`, else the asset's), signed
/// like the SDKs sign it for private and authenticated assets.
pub fn derived_url(
    base: &str,
    rec: &AssetRecord,
    transformation: Option<&str>,
    format: Option<&str>,
    secret: &str,
    algorithm: SignatureAlgorithm,
) -> String {
    use std::fmt::Write;
    let extension = match rec.key.resource_type.as_str() {
        "raw" => None,
        _ => format.or(rec.format.as_deref()),
    };
    let public_id = utf8_percent_encode(&rec.key.public_id, PATH_ESCAPE);
    // Written into one string (this runs twice for every upload's answer).
    let mut out = String::with_capacity(base.len() + 80 + rec.key.public_id.len() * 2);
    let _ = write!(
        out,
        "{base}/{}/{}/{}/",
        rec.key.cloud, rec.key.resource_type, rec.key.delivery_type
    );
    if !is_public(&rec.key.delivery_type) || restricted(rec) {
        let mut signed = transformation.map(|t| format!("{t}/")).unwrap_or_default();
        let _ = write!(signed, "{public_id}");
        if let Some(f) = extension {
            let _ = write!(signed, ".{f}");
        }
        let _ = write!(
            out,
            "s--{}--/",
            delivery_signature(&signed, secret, algorithm, false)
        );
    }
    if let Some(t) = transformation {
        let _ = write!(out, "{t}/");
    }
    let _ = write!(out, "v{}/{public_id}", rec.version);
    if let Some(f) = extension {
        let _ = write!(out, ".{f}");
    }
    out
}

/// Transformation parameter keys (spec §13.3 and the rest of Cloudinary's short names).
const TRANSFORMATION_KEYS: &[&str] = &[
    "a", "ac", "af", "ar", "b", "bl", "bo", "br", "c", "co", "cs", "d", "dl", "dn", "dpr", "du",
    "e", "eo", "f", "fl", "fn", "fps", "g", "h", "if", "ki", "l", "o", "p", "pg", "q", "r", "so",
    "sp", "t", "u", "vc", "vs", "w", "x", "y", "z",
];

fn is_transformation(seg: &str) -> bool {
    !seg.is_empty()
        && seg.split(',').all(|item| {
            if item.starts_with('$') {
                return true;
            }
            match item.split_once('_') {
                Some((key, _)) => TRANSFORMATION_KEYS.contains(&key),
                None => false,
            }
        })
}

fn is_version(seg: &str) -> bool {
    seg.len() > 1 && seg.starts_with('v') && seg[1..].chars().all(|c| c.is_ascii_digit())
}

fn decode(seg: &str) -> String {
    percent_decode_str(seg).decode_utf8_lossy().into_owned()
}

fn delivery_error(status: StatusCode, msg: impl Into<String>) -> ApiError {
    ApiError::Delivery(status, msg.into())
}

/// A parsed delivery path.
#[derive(Debug, PartialEq, Eq)]
struct DeliveryPath {
    cloud: String,
    resource_type: String,
    delivery_type: String,
    signature: Option<String>,
    transformation: Option<String>,
    /// The source as it appeared in the URL (escaped), and decoded.
    raw_source: String,
    source: String,
}

fn parse_path(path: &str) -> Option<DeliveryPath> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if segs.len() < 4 {
        return None;
    }
    let (cloud, rt, ty) = (decode(segs[0]), decode(segs[1]), decode(segs[2]));
    let mut rest = &segs[3..];
    let mut signature = None;
    if let Some(first) = rest.first() {
        if first.len() > 5 && first.starts_with("s--") && first.ends_with("--") {
            signature = Some(first[3..first.len() - 2].to_string());
            rest = &rest[1..];
        }
    }
    let mut transformations = Vec::new();
    while rest.len() > 1 && is_transformation(rest[0]) && !is_version(rest[0]) {
        transformations.push(rest[0]);
        rest = &rest[1..];
    }
    if rest.len() > 1 && is_version(rest[0]) {
        rest = &rest[1..];
    }
    if rest.is_empty() || rest.iter().any(|s| s.is_empty()) {
        return None;
    }
    let raw_source = rest.join("/");
    let source = rest.iter().map(|s| decode(s)).collect::<Vec<_>>().join("/");
    Some(DeliveryPath {
        cloud,
        resource_type: rt,
        delivery_type: ty,
        signature,
        transformation: (!transformations.is_empty()).then(|| transformations.join("/")),
        raw_source,
        source,
    })
}

/// Whether `sig` signs `to_sign` with one of the cloud's secrets (SHA-1 or SHA-256, short or
/// long form).
fn signature_valid(state: &AppState, cloud: &str, sig: &str, to_sign: &[String]) -> bool {
    for account in state.accounts().for_cloud(cloud) {
        for text in to_sign {
            let candidates = [
                delivery_signature(text, &account.api_secret, SignatureAlgorithm::Sha1, false),
                delivery_signature(text, &account.api_secret, SignatureAlgorithm::Sha256, false),
                delivery_signature(text, &account.api_secret, SignatureAlgorithm::Sha256, true),
            ];
            if candidates
                .iter()
                .any(|c| bool::from(c.as_bytes().ct_eq(sig.as_bytes())))
            {
                return true;
            }
        }
    }
    false
}

/// Finds the asset a delivery source names: `<public_id>.<ext>` (ext = its format, or another
/// image format to convert to, returned beside the asset), or the public ID as written (raw
/// assets, or a URL without extension).
/// Documents holding the CSS and JSON of sprites (named `<public_id>.css|json`).
pub const SPRITE_FILES: &str = "sprite_file";

/// The CSS or JSON of a sprite (`image/sprite/…/<tag>.css|json`).
async fn sprite_file(
    state: &AppState,
    method: &Method,
    p: &DeliveryPath,
) -> ApiResult<Option<Response>> {
    let mime = match p.source.rsplit_once('.') {
        Some((_, "css")) => "text/css; charset=utf-8",
        Some((_, "json")) => "application/json",
        _ => return Ok(None),
    };
    let doc = state
        .meta
        .get_doc(&p.cloud, SPRITE_FILES, &p.source)
        .await?
        .ok_or_else(|| {
            delivery_error(
                StatusCode::NOT_FOUND,
                format!("Resource not found - {}", p.source),
            )
        })?;
    let body = match doc.body {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    };
    let len = body.len();
    let body = if method == Method::HEAD {
        String::new()
    } else {
        body
    };
    Ok(Some(
        (
            [
                (header::CONTENT_TYPE, mime.to_string()),
                (header::CONTENT_LENGTH, len.to_string()),
            ],
            body,
        )
            .into_response(),
    ))
}

/// The cloud, resource type, delivery type and source (public ID with its extension) a
/// delivery path names.
pub fn source_of(path: &str) -> Option<(String, String, String, String)> {
    let p = parse_path(path)?;
    Some((p.cloud, p.resource_type, p.delivery_type, p.source))
}

/// Whether a video's delivery name asks for a picture (poster or animated preview).
fn video_picture(source: &str) -> bool {
    source.rsplit_once('.').is_some_and(|(_, e)| {
        matches!(
            e.to_ascii_lowercase().as_str(),
            "jpg" | "jpeg" | "png" | "webp" | "gif"
        )
    })
}

/// The first segments of the SDKs' other URL forms: `shorten` and the SEO suffixes.
const SHORT_FORMS: &[&str] = &[
    "iu",
    "images",
    "private_images",
    "authenticated_images",
    "videos",
    "files",
];

/// The SDKs' other URL forms as the canonical `/<cloud>/<resource_type>/<type>/…`: `iu`
/// (`shorten`), SEO suffixes (`images/<public_id>/<suffix>.<ext>` and the like: the suffix
/// only names the file, the signature covers `<public_id>.<ext>`) and the root path
/// (`use_root_path`: `/<cloud>/<public_id>`, an image upload). `None`: already canonical.
fn canonical_form(path: &str) -> Option<String> {
    let trimmed = path.trim_start_matches('/');
    let (cloud, rest) = trimmed.split_once('/')?;
    let (head, tail) = rest.split_once('/').unwrap_or((rest, ""));
    // The suffix segment goes; images and videos keep its extension as their format.
    let suffixed = |rt_type: &str, keep_ext: bool| -> Option<String> {
        let (before, suffix) = tail.rsplit_once('/')?;
        match suffix.rsplit_once('.').map(|(_, e)| e) {
            Some(ext) if keep_ext => Some(format!("/{cloud}/{rt_type}/{before}.{ext}")),
            _ => Some(format!("/{cloud}/{rt_type}/{before}")),
        }
    };
    match head {
        "image" | "video" | "raw" | "" => None,
        "iu" => Some(format!("/{cloud}/image/upload/{tail}")),
        "images" => suffixed("image/upload", true),
        "private_images" => suffixed("image/private", true),
        "authenticated_images" => suffixed("image/authenticated", true),
        "videos" => suffixed("video/upload", true),
        "files" => suffixed("raw/upload", false),
        _ => Some(format!("/{cloud}/image/upload/{rest}")),
    }
}

/// The asset a delivery URL of this server names (its original, whatever transformation
/// the URL has), if any: for methods that take URLs of assets (`sprite`, `multi`).
pub async fn asset_of_url(state: &AppState, url: &str) -> ApiResult<Option<AssetRecord>> {
    let Some(path) = url.strip_prefix(&format!("{}/", state.public_url)) else {
        return Ok(None);
    };
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let Some(p) = parse_path(path) else {
        return Ok(None);
    };
    Ok(lookup(state, &p).await.ok().flatten().map(|(rec, _)| rec))
}

/// An asset record for delivery, from the short-lived cache when it is there.
async fn find_cached(state: &AppState, key: &AssetKey) -> ApiResult<Option<AssetRecord>> {
    if let Some(rec) = state.records.get(key) {
        return Ok(Some(rec));
    }
    let generation = state.records.generation();
    let found = state.meta.find_asset_untagged(key).await?;
    if let Some(rec) = &found {
        state.records.put(key, generation, rec);
    }
    Ok(found)
}

async fn lookup(
    state: &AppState,
    p: &DeliveryPath,
) -> ApiResult<Option<(AssetRecord, Option<String>)>> {
    let key = |public_id: &str| AssetKey {
        cloud: p.cloud.clone(),
        resource_type: p.resource_type.clone(),
        delivery_type: p.delivery_type.clone(),
        public_id: public_id.to_string(),
    };
    if p.resource_type != "raw" {
        if let Some((stem, ext)) = p.source.rsplit_once('.') {
            if let Some(rec) = find_cached(state, &key(stem)).await? {
                let ext = ext.to_ascii_lowercase();
                let fmt = rec.format.clone().unwrap_or_default();
                let same = ext == fmt
                    || (ext == "jpeg" && fmt == "jpg")
                    || (ext == "tif" && fmt == "tiff");
                if same {
                    return Ok(Some((rec, Some(ext))));
                }
                if find_cached(state, &key(&p.source)).await?.is_none() {
                    if (p.resource_type == "image" || p.resource_type == "video")
                        && transform::OUTPUT_FORMATS.contains(&ext.as_str())
                    {
                        return Ok(Some((rec, Some(ext))));
                    }
                    return Err(delivery_error(
                        StatusCode::BAD_REQUEST,
                        format!("Format conversion from {fmt} to {ext} is not supported"),
                    ));
                }
            }
        }
    }
    Ok(find_cached(state, &key(&p.source))
        .await?
        .map(|r| (r, None)))
}

fn content_type(rec: &AssetRecord) -> &'static str {
    let ext = match rec.key.resource_type.as_str() {
        "raw" => rec
            .key
            .public_id
            .rsplit_once('.')
            .map(|(_, e)| e.to_ascii_lowercase())
            .unwrap_or_default(),
        _ => rec.format.clone().unwrap_or_default(),
    };
    mime_for(&ext)
}

/// The media type of a format or file extension.
pub(crate) fn mime_for(ext: &str) -> &'static str {
    match ext {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "bmp" => "image/bmp",
        "tif" | "tiff" => "image/tiff",
        "ico" => "image/x-icon",
        "avif" => "image/avif",
        "heic" | "heif" => "image/heif",
        "svg" => "image/svg+xml",
        "psd" => "image/vnd.adobe.photoshop",
        "jxl" => "image/jxl",
        "pdf" => "application/pdf",
        "mp4" | "m4v" => "video/mp4",
        "mov" => "video/quicktime",
        "webm" => "video/webm",
        "mkv" => "video/x-matroska",
        "avi" => "video/x-msvideo",
        "flv" => "video/x-flv",
        "3gp" => "video/3gpp",
        "ogv" => "video/ogg",
        "ogg" => "audio/ogg",
        "mp3" => "audio/mpeg",
        "m4a" => "audio/mp4",
        "wav" => "audio/wav",
        "flac" => "audio/flac",
        "txt" => "text/plain; charset=utf-8",
        "json" => "application/json",
        "csv" => "text/csv",
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css",
        "js" => "text/javascript",
        "xml" => "application/xml",
        "zip" => "application/zip",
        _ => "application/octet-stream",
    }
}

/// Parses a single `bytes=` range against `len`. `Err(())` means unsatisfiable.
fn parse_range(value: &str, len: u64) -> Option<Result<ByteRange, ()>> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None; // several ranges: answer with the whole file
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 || len == 0 {
            return Some(Err(()));
        }
        ByteRange {
            start: len.saturating_sub(n),
            end: len - 1,
        }
    } else {
        let start: u64 = a.parse().ok()?;
        let end: u64 = if b.is_empty() {
            len.saturating_sub(1)
        } else {
            b.parse().ok()?
        };
        if start >= len || end < start {
            return Some(Err(()));
        }
        ByteRange {
            start,
            end: end.min(len - 1),
        }
    };
    Some(Ok(range))
}

fn etag_matches(list: &str, etag: &str) -> bool {
    list.split(',').any(|t| {
        let t = t.trim().trim_start_matches("W/");
        t == "*" || t == etag
    })
}

/// Serves a delivery URL.
pub async fn serve(
    state: &AppState,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    // The private-CDN form has no cloud segment (`/<rt>/<type>/…`): with a single cloud
    // configured, it is that cloud's.
    let accounts = state.accounts();
    let clouds = accounts.clouds();
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let rooted;
    let path = if clouds.len() == 1
        && (["image", "video", "raw"].contains(&first) || SHORT_FORMS.contains(&first))
        && !state.accounts().has_cloud(first)
    {
        rooted = format!("/{}{path}", clouds[0]);
        rooted.as_str()
    } else {
        path
    };
    let canonical;
    let path = match canonical_form(path) {
        Some(c) => {
            canonical = c;
            canonical.as_str()
        }
        None => path,
    };
    let mut p = parse_path(path)
        .ok_or_else(|| delivery_error(StatusCode::NOT_FOUND, "Resource not found"))?;
    if !state.accounts().has_cloud(&p.cloud) {
        let hint = if ["image", "video", "raw"].contains(&p.cloud.as_str()) {
            " (URLs without a cloud name, as private_cdn builds them, work only when one cloud \
             is configured)"
        } else {
            ""
        };
        return Err(delivery_error(
            StatusCode::NOT_FOUND,
            format!("Unknown cloud {}{hint}", p.cloud),
        ));
    }
    if !["image", "video", "raw"].contains(&p.resource_type.as_str()) {
        return Err(delivery_error(
            StatusCode::NOT_FOUND,
            format!("Invalid resource type {}", p.resource_type),
        ));
    }
    let ty = p.delivery_type.as_str();
    if !DELIVERY_TYPES.contains(&ty) && !GENERATED_TYPES.contains(&ty) {
        return Err(delivery_error(
            StatusCode::NOT_FOUND,
            format!("Delivery type {} is not supported", p.delivery_type),
        ));
    }
    // Sprites and multis were made with their transformation: the URL only names it (the
    // signature, when there is one, still covers it).
    let generated = GENERATED_TYPES.contains(&ty);
    // Strict transformations: only named ones allowed for it (or signed URLs) render anew.
    let mut strict_allowed = false;
    let plan = match &p.transformation {
        _ if generated => None,
        // A video's transformations make its poster or preview (an image extension).
        Some(t) if p.resource_type == "video" && !video_picture(&p.source) => {
            return Err(delivery_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "Transformations of videos are supported for their pictures only \
                     (.jpg, .png, .webp, .gif): {t}"
                ),
            ))
        }
        Some(t) if p.resource_type != "image" && p.resource_type != "video" => {
            return Err(delivery_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "Transformations of {} assets are not supported yet: {t}",
                    p.resource_type
                ),
            ))
        }
        Some(t) => {
            let (expanded, named_ok) =
                crate::admin::transformations::expand_named(state, &p.cloud, t)
                    .await
                    .map_err(|e| match e {
                        ApiError::Internal(_) => e,
                        e => delivery_error(StatusCode::BAD_REQUEST, e.to_string()),
                    })?;
            strict_allowed = named_ok;
            Some(
                transform::parse(&expanded)
                    .map_err(|m| delivery_error(StatusCode::BAD_REQUEST, m))?,
            )
        }
        None => None,
    };
    match &p.signature {
        Some(sig) => {
            // What the SDKs sign: the transformation (when there is one) and the source.
            let prefix = p
                .transformation
                .as_ref()
                .map(|t| format!("{t}/"))
                .unwrap_or_default();
            let candidates = vec![
                format!("{prefix}{}", p.raw_source),
                format!("{prefix}{}", p.source),
                format!("{prefix}{}", escape_public_id(&p.source)),
            ];
            if !signature_valid(state, &p.cloud, sig, &candidates) {
                return Err(delivery_error(
                    StatusCode::UNAUTHORIZED,
                    "Invalid signature",
                ));
            }
        }
        None if !is_public(&p.delivery_type) => {
            return Err(delivery_error(
                StatusCode::UNAUTHORIZED,
                format!("A signed URL is required for {} assets", p.delivery_type),
            ));
        }
        None => {}
    }
    if generated {
        p.transformation = None;
        if p.delivery_type == "sprite" {
            if let Some(r) = sprite_file(state, method, &p).await? {
                return Ok(r);
            }
        }
    }
    let (rec, ext) = lookup(state, &p).await?.ok_or_else(|| {
        delivery_error(
            StatusCode::NOT_FOUND,
            format!("Resource not found - {}", p.source),
        )
    })?;
    if p.signature.is_none() && restricted(&rec) {
        return Err(delivery_error(
            StatusCode::UNAUTHORIZED,
            "A signed URL is required for assets with access_mode authenticated",
        ));
    }
    let source_format = rec.format.clone().unwrap_or_default();
    let converts = ext.as_deref().is_some_and(|e| {
        let e = if e == "jpeg" {
            "jpg"
        } else if e == "tif" {
            "tiff"
        } else {
            e
        };
        e != source_format
    });
    if plan.is_some() || converts {
        let plan = plan.unwrap_or_default();
        let mut format = transform::output_format(&plan, ext.as_deref(), &source_format);
        // `f_auto`: AVIF for browsers that take it (a still picture: animations stay animated
        // as WebP), else WebP (lossy for photographs, lossless for lossless sources unless
        // `q_`/`fl_lossy` say otherwise), else the format as asked; the answer varies with
        // `Accept`.
        let auto = plan.format.as_deref() == Some("auto");
        // What the URL gives without `f_auto`'s choice (served as stored when strict
        // transformations keep the chosen one from being rendered).
        let asked = format.clone();
        if auto {
            let accept = headers
                .get(axum::http::header::ACCEPT)
                .and_then(|a| a.to_str().ok())
                .unwrap_or("");
            let animated = rec.pages.unwrap_or(1) > 1 && plan.page.is_none();
            if accept.contains("image/avif") && !animated && rec.key.resource_type == "image" {
                format = "avif".into();
            } else if accept.contains("image/webp") {
                format = "webp".into();
            }
        }
        let wanted = derived::Wanted {
            rec: &rec,
            transformation: p.transformation.as_deref(),
            plan: &plan,
            format: &format,
            allowed: p.signature.is_some() || strict_allowed,
            vary_accept: auto,
            fallback: (asked != format).then_some(asked.as_str()),
        };
        return derived::serve(state, method, headers, wanted).await;
    }
    serve_original(state, method, headers, &rec).await
}

/// Serves an asset as stored, or converted to another image `format`.
pub async fn serve_asset(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
    rec: &AssetRecord,
    format: Option<&str>,
) -> ApiResult<Response> {
    let source_format = rec.format.clone().unwrap_or_default();
    match format.map(|f| f.to_ascii_lowercase()) {
        Some(f) if rec.key.resource_type == "image" && !f.is_empty() => {
            if !transform::OUTPUT_FORMATS.contains(&f.as_str()) {
                return Err(delivery_error(
                    StatusCode::BAD_REQUEST,
                    format!("Format conversion from {source_format} to {f} is not supported"),
                ));
            }
            let plan = transform::Plan::default();
            let out = transform::output_format(&plan, Some(&f), &source_format);
            if out == source_format {
                return serve_original(state, method, headers, rec).await;
            }
            let wanted = derived::Wanted {
                rec,
                transformation: None,
                plan: &plan,
                format: &out,
                allowed: true,
                vary_accept: false,
                fallback: None,
            };
            derived::serve(state, method, headers, wanted).await
        }
        _ => serve_original(state, method, headers, rec).await,
    }
}

/// Serves an asset's stored bytes, with validators, conditional GET, ranges and HEAD.
pub(crate) async fn serve_original(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
    rec: &AssetRecord,
) -> ApiResult<Response> {
    let len = state.blobs.size(&rec.blob_key).await?.ok_or_else(|| {
        delivery_error(
            StatusCode::NOT_FOUND,
            format!("Resource not found - {}", rec.key.public_id),
        )
    })?;
    let etag = format!("\"{}\"", rec.etag);
    let last_modified = httpdate::fmt_http_date(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(rec.version.max(0) as u64),
    );
    let mut base = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::LAST_MODIFIED, &last_modified)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, "public, max-age=0, must-revalidate")
        .header(header::CONTENT_TYPE, content_type(rec));
    let h = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let not_modified = match h(header::IF_NONE_MATCH) {
        Some(list) => etag_matches(list, &etag),
        None => h(header::IF_MODIFIED_SINCE)
            .and_then(|s| httpdate::parse_http_date(s).ok())
            .map(|since| {
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(rec.version.max(0) as u64)
                    <= since
            })
            .unwrap_or(false),
    };
    if not_modified {
        return base
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .map_err(ApiError::internal);
    }
    let range_applies = match h(header::IF_RANGE) {
        Some(v) => v == etag || v == last_modified,
        None => true,
    };
    let range = if range_applies {
        h(header::RANGE).and_then(|r| parse_range(r, len))
    } else {
        None
    };
    let (status, range) = match range {
        Some(Err(())) => {
            return Response::builder()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .body(Body::empty())
                .map_err(ApiError::internal);
        }
        Some(Ok(r)) => {
            base = base.header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{len}", r.start, r.end),
            );
            (StatusCode::PARTIAL_CONTENT, Some(r))
        }
        None => (StatusCode::OK, None),
    };
    let body_len = range.map(|r| r.end - r.start + 1).unwrap_or(len);
    base = base.status(status).header(header::CONTENT_LENGTH, body_len);
    if method == Method::HEAD {
        return base.body(Body::empty()).map_err(ApiError::internal);
    }
    let stream = state
        .blobs
        .read(&rec.blob_key, range)
        .await?
        .ok_or_else(|| {
            delivery_error(
                StatusCode::NOT_FOUND,
                format!("Resource not found - {}", rec.key.public_id),
            )
        })?;
    let mut resp = base
        .body(Body::from_stream(stream))
        .map_err(ApiError::internal)?;
    resp.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    Ok(resp.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_url_forms_become_canonical() {
        let c = |p: &str| canonical_form(p);
        assert_eq!(c("/demo/image/upload/x.png"), None);
        assert_eq!(
            c("/demo/iu/w_10/v1/x.png").as_deref(),
            Some("/demo/image/upload/w_10/v1/x.png")
        );
        assert_eq!(
            c("/demo/v1/a/x.png").as_deref(),
            Some("/demo/image/upload/v1/a/x.png")
        );
        assert_eq!(
            c("/demo/images/s--abc--/w_10/v1/a/x/nice.png").as_deref(),
            Some("/demo/image/upload/s--abc--/w_10/v1/a/x.png")
        );
        assert_eq!(
            c("/demo/authenticated_images/a/x/nice.jpg").as_deref(),
            Some("/demo/image/authenticated/a/x.jpg")
        );
        assert_eq!(
            c("/demo/files/v1/doc.pdf/terms").as_deref(),
            Some("/demo/raw/upload/v1/doc.pdf")
        );
    }

    #[test]
    fn parses_delivery_paths() {
        let p = parse_path("/demo/image/upload/v1700000000/folder/my%20id.png").unwrap();
        assert_eq!(p.source, "folder/my id.png");
        assert_eq!(p.raw_source, "folder/my%20id.png");
        assert_eq!(p.transformation, None);
        let p = parse_path("/demo/image/authenticated/s--lGdq5NKO--/c_fill,w_100/v1/sample.jpg")
            .unwrap();
        assert_eq!(p.signature.as_deref(), Some("lGdq5NKO"));
        assert_eq!(p.transformation.as_deref(), Some("c_fill,w_100"));
        let p = parse_path("/demo/raw/upload/my_folder/doc.pdf").unwrap();
        assert_eq!(
            (p.transformation, p.source.as_str()),
            (None, "my_folder/doc.pdf")
        );
        let p = parse_path("/demo/image/upload/s----SjmNDA--/image.jpg").unwrap();
        assert_eq!(p.signature.as_deref(), Some("--SjmNDA"));
        assert!(parse_path("/demo/image/upload").is_none());
        assert!(parse_path("/demo/image/upload/a//b").is_none());
    }

    #[test]
    fn ranges() {
        assert_eq!(
            parse_range("bytes=0-4", 10),
            Some(Ok(ByteRange { start: 0, end: 4 }))
        );
        assert_eq!(
            parse_range("bytes=5-", 10),
            Some(Ok(ByteRange { start: 5, end: 9 }))
        );
        assert_eq!(
            parse_range("bytes=-3", 10),
            Some(Ok(ByteRange { start: 7, end: 9 }))
        );
        assert_eq!(
            parse_range("bytes=8-100", 10),
            Some(Ok(ByteRange { start: 8, end: 9 }))
        );
        assert_eq!(parse_range("bytes=10-", 10), Some(Err(())));
        assert_eq!(parse_range("bytes=0-1,3-4", 10), None);
    }

    #[test]
    fn escapes_like_the_python_sdk() {
        assert_eq!(
            escape_public_id("folder/my id&é"),
            "folder/my%20id%26%C3%A9"
        );
    }
}
