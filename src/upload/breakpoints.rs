//! `responsive_breakpoints` on upload and explicit: for each requested entry (an optional
//! `transformation` and `format`, `min_width`, `max_width`, `bytes_step`, `max_images`,
//! `create_derived`), the widths worth delivering the image at, each with its size and URL.

use serde_json::{json, Map, Value as Json};

use super::ResponseSigner;
use crate::db::{AssetRecord, DerivedRecord};
use crate::delivery;
use crate::error::{ApiError, ApiResult};
use crate::media::breakpoints::{widths, Settings};
use crate::media::transform;
use crate::state::AppState;
use crate::storage::md5::Md5;

/// Entries one request may ask for.
const MAX_ENTRIES: usize = 10;

/// One requested set of breakpoints.
#[derive(Debug, Clone)]
pub struct Request {
    transformation: String,
    format: Option<String>,
    settings: Settings,
    create_derived: bool,
}

fn number(v: &Json, name: &str, default: u64) -> ApiResult<u64> {
    match v.get(name) {
        None | Some(Json::Null) => Ok(default),
        Some(Json::Number(n)) => n
            .as_u64()
            .ok_or_else(|| ApiError::bad(format!("Invalid responsive_breakpoints {name}"))),
        Some(Json::String(s)) => s
            .parse()
            .map_err(|_| ApiError::bad(format!("Invalid responsive_breakpoints {name}"))),
        Some(_) => Err(ApiError::bad(format!(
            "Invalid responsive_breakpoints {name}"
        ))),
    }
}

/// Parses the `responsive_breakpoints` parameter (a JSON object or array of them); refuses
/// what cannot be computed before anything is stored.
pub fn parse(raw: Option<&str>) -> ApiResult<Vec<Request>> {
    let Some(raw) = raw.filter(|r| !r.trim().is_empty()) else {
        return Ok(Vec::new());
    };
    let v: Json = serde_json::from_str(raw).map_err(|_| {
        ApiError::bad("Invalid responsive_breakpoints: expected a JSON object or array")
    })?;
    let items = match v {
        Json::Array(a) => a,
        o @ Json::Object(_) => vec![o],
        _ => {
            return Err(ApiError::bad(
                "Invalid responsive_breakpoints: expected a JSON object or array",
            ))
        }
    };
    if items.len() > MAX_ENTRIES {
        return Err(ApiError::bad(format!(
            "responsive_breakpoints has at most {MAX_ENTRIES} entries"
        )));
    }
    let d = Settings::default();
    items
        .iter()
        .map(|item| {
            if !item.is_object() {
                return Err(ApiError::bad(
                    "Invalid responsive_breakpoints: each entry is a JSON object",
                ));
            }
            let transformation = item
                .get("transformation")
                .and_then(Json::as_str)
                .unwrap_or("")
                .to_string();
            if !transformation.is_empty() {
                transform::parse(&transformation).map_err(|m| {
                    ApiError::bad(format!(
                        "Invalid responsive_breakpoints transformation - {m}"
                    ))
                })?;
            }
            let format = item
                .get("format")
                .and_then(Json::as_str)
                .filter(|f| !f.is_empty())
                .map(|f| f.to_ascii_lowercase());
            if let Some(f) = &format {
                if !transform::OUTPUT_FORMATS.contains(&f.as_str()) {
                    return Err(ApiError::bad(format!(
                        "Invalid responsive_breakpoints format {f}"
                    )));
                }
            }
            let settings = Settings {
                min_width: number(item, "min_width", u64::from(d.min_width))?
                    .try_into()
                    .map_err(|_| ApiError::bad("Invalid responsive_breakpoints min_width"))?,
                max_width: number(item, "max_width", u64::from(d.max_width))?
                    .try_into()
                    .map_err(|_| ApiError::bad("Invalid responsive_breakpoints max_width"))?,
                bytes_step: number(item, "bytes_step", d.bytes_step)?,
                max_images: number(item, "max_images", d.max_images as u64)? as usize,
            };
            settings
                .check()
                .map_err(|m| ApiError::bad(format!("Invalid responsive_breakpoints: {m}")))?;
            let create_derived = match item.get("create_derived") {
                Some(Json::Bool(b)) => *b,
                Some(Json::String(s)) => crate::util::parse_bool(s).unwrap_or(false),
                _ => false,
            };
            Ok(Request {
                transformation,
                format,
                settings,
                create_derived,
            })
        })
        .collect()
}

fn chain(base: &str, width: u32) -> String {
    if base.is_empty() {
        format!("c_scale,w_{width}")
    } else {
        format!("{base}/c_scale,w_{width}")
    }
}

/// Computes the breakpoints of `rec` for each request (and records derived versions where
/// `create_derived` asks for them); the `responsive_breakpoints` of the answer.
pub async fn compute(
    state: &AppState,
    rec: &AssetRecord,
    requests: &[Request],
    signer: &ResponseSigner,
) -> ApiResult<Json> {
    super::eager::check_source(&rec.key.resource_type, rec.format.as_deref())?;
    let original = crate::storage::read_all(state.blobs.as_ref(), &rec.blob_key)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("Resource not found - {}", rec.key.public_id)))?;
    let source_format = rec.format.clone().unwrap_or_default();
    let max_pixels = state.limits.max_image_pixels;
    let mut out = Vec::new();
    let mut derived = Vec::new();
    for r in requests {
        let format = r.format.clone().unwrap_or_else(|| source_format.clone());
        let (bytes, req, fmt) = (original.clone(), r.clone(), format.clone());
        // Every breakpoint is made for real: its size is the size of the file delivered.
        let images = tokio::task::spawn_blocking(move || {
            let render = |t: &str| -> Result<(u32, u32, usize), String> {
                let plan = if t.is_empty() {
                    transform::Plan::default()
                } else {
                    transform::parse(t)?
                };
                let out = transform::apply(&bytes, &plan, &fmt, max_pixels)?;
                let size = imagesize::blob_size(&out).map_err(|e| e.to_string())?;
                Ok((size.width as u32, size.height as u32, out.len()))
            };
            let (w, _, size) = render(&req.transformation)?;
            let mut images = Vec::new();
            for bw in widths(w, size as u64, &req.settings) {
                let (iw, ih, ib) = render(&chain(&req.transformation, bw))?;
                images.push((bw, iw, ih, ib));
            }
            Ok::<_, String>(images)
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(|m| ApiError::bad(format!("Responsive breakpoints failed: {m}")))?;
        let mut list = Vec::new();
        for (bw, iw, ih, ib) in images {
            let t = chain(&r.transformation, bw);
            let url = delivery::derived_url(
                &state.public_url,
                rec,
                Some(&t),
                Some(&format),
                &signer.secret,
                signer.algorithm,
            );
            list.push(json!({
                "width": iw,
                "height": ih,
                "bytes": ib,
                "url": url,
                "secure_url": state.secure_url(&url),
            }));
            if r.create_derived {
                derived.push(DerivedRecord {
                    id: hex::encode(Md5::digest(
                        format!("{}/{t}/{format}", rec.asset_id).as_bytes(),
                    )),
                    cloud: rec.key.cloud.clone(),
                    asset_id: rec.asset_id.clone(),
                    transformation: t,
                    format: format.clone(),
                    bytes: ib as i64,
                    width: Some(i64::from(iw)),
                    height: Some(i64::from(ih)),
                    created_at: state.now(),
                });
            }
        }
        let mut m = Map::new();
        m.insert("breakpoints".into(), Json::Array(list));
        m.insert("transformation".into(), json!(r.transformation));
        out.push(Json::Object(m));
    }
    if !derived.is_empty() {
        state.meta.put_derived(&derived).await?;
    }
    Ok(Json::Array(out))
}
