//! Eager transformations (`eager` on upload and explicit): each listed transformation of an
//! image is computed once at upload to report its size, and recorded as a derived version
//! (listed as `derived` by the Admin API). Its URL serves the same bytes, computed from the
//! original on request. With `eager_async` the work happens after the answer, and
//! `eager_notification_url` is told when it is done.

use serde_json::{json, Map, Value as Json};

use super::response::ResponseSigner;
use crate::db::{AssetRecord, DerivedRecord};
use crate::delivery;
use crate::error::{ApiError, ApiResult};
use crate::form::Params;
use crate::media::transform;
use crate::state::AppState;

/// One requested derived version.
#[derive(Debug, Clone)]
pub struct EagerSpec {
    /// The transformation without a trailing format component.
    pub transformation: String,
    /// A format asked for with a trailing `/<format>` component.
    pub format: Option<String>,
    plan: transform::Plan,
}

impl EagerSpec {
    /// A spec for `transformation` (checked) in `format`.
    pub fn new(transformation: &str, format: Option<String>) -> ApiResult<EagerSpec> {
        let plan = transform::parse(transformation)
            .map_err(|m| ApiError::bad(format!("Invalid transformation - {m}")))?;
        Ok(EagerSpec {
            transformation: transformation.to_string(),
            format,
            plan,
        })
    }
}

/// The `eager` parameter: transformations joined by `|`, each optionally ending in
/// `/<format>`. Empty when absent; a transformation nephos cannot apply is a 400.
pub async fn parse(state: &AppState, cloud: &str, params: &Params) -> ApiResult<Vec<EagerSpec>> {
    let Some(text) = params.nonempty("eager") else {
        return Ok(Vec::new());
    };
    let mut specs = Vec::new();
    for item in text.split('|').map(str::trim).filter(|s| !s.is_empty()) {
        let (transformation, format) = match item.rsplit_once('/') {
            Some((t, f)) if transform::OUTPUT_FORMATS.contains(&f) => {
                (t.to_string(), Some(f.to_string()))
            }
            _ if transform::OUTPUT_FORMATS.contains(&item) => {
                (String::new(), Some(item.to_string()))
            }
            _ => (item.to_string(), None),
        };
        let plan = if transformation.is_empty() {
            transform::Plan::default()
        } else {
            // Named transformations (`t_<name>`) are expanded; the derived version keeps the
            // name, as Cloudinary lists it.
            let (expanded, _) =
                crate::admin::transformations::expand_named(state, cloud, &transformation).await?;
            transform::parse(&expanded)
                .map_err(|m| ApiError::bad(format!("Invalid eager transformation - {m}")))?
        };
        specs.push(EagerSpec {
            transformation,
            format,
            plan,
        });
    }
    Ok(specs)
}

/// Checks that the asset can have derived versions before anything is stored.
pub fn check_source(kind: &str, format: Option<&str>) -> ApiResult<()> {
    if kind != "image" {
        return Err(ApiError::bad(format!(
            "Eager transformations apply to images only (this is a {kind} upload)"
        )));
    }
    let f = format.unwrap_or_default();
    if !transform::can_decode(f) {
        return Err(ApiError::bad(format!(
            "Cannot transform {f} images (JPEG, PNG, GIF, WebP, BMP and TIFF can be)"
        )));
    }
    Ok(())
}

/// Computes, stores and records the derived versions of `rec` (the same renders delivery URLs
/// make: a later GET of one is served as stored).
pub async fn generate(
    state: &AppState,
    rec: &AssetRecord,
    specs: &[EagerSpec],
) -> ApiResult<Vec<DerivedRecord>> {
    let source_format = rec.format.clone().unwrap_or_default();
    let mut out = Vec::new();
    for spec in specs {
        let format = transform::output_format(&spec.plan, spec.format.as_deref(), &source_format);
        let bytes =
            crate::delivery::render::render(state, rec, &spec.transformation, &spec.plan, &format)
                .await
                .map_err(|crate::delivery::render::RenderError(status, m)| {
                    if status == axum::http::StatusCode::INTERNAL_SERVER_ERROR {
                        ApiError::internal(m)
                    } else {
                        ApiError::bad(format!(
                            "Eager transformation {} failed: {m}",
                            spec.transformation
                        ))
                    }
                })?;
        let dims = imagesize::blob_size(&bytes).ok();
        out.push(DerivedRecord {
            id: crate::delivery::render::derived_id(rec, &spec.transformation, &format),
            cloud: rec.key.cloud.clone(),
            asset_id: rec.asset_id.clone(),
            transformation: spec.transformation.clone(),
            format,
            bytes: bytes.len() as i64,
            width: dims.as_ref().map(|d| d.width as i64),
            height: dims.as_ref().map(|d| d.height as i64),
            created_at: state.now(),
        });
    }
    // Recorded again (the render records it too; a render already kept is not redone).
    state.meta.put_derived(&out).await?;
    Ok(out)
}

fn url(state: &AppState, rec: &AssetRecord, d: &DerivedRecord, signer: &ResponseSigner) -> String {
    let t = (!d.transformation.is_empty()).then_some(d.transformation.as_str());
    delivery::derived_url(
        &state.public_url,
        rec,
        t,
        Some(&d.format),
        &signer.secret,
        signer.algorithm,
    )
}

/// The `eager` entries of an upload or explicit answer.
pub fn eager_json(
    state: &AppState,
    rec: &AssetRecord,
    derived: &[DerivedRecord],
    signer: &ResponseSigner,
) -> Json {
    Json::Array(
        derived
            .iter()
            .map(|d| {
                let u = url(state, rec, d, signer);
                let mut m = Map::new();
                m.insert("transformation".into(), json!(d.transformation));
                if let (Some(w), Some(h)) = (d.width, d.height) {
                    m.insert("width".into(), json!(w));
                    m.insert("height".into(), json!(h));
                }
                m.insert("bytes".into(), json!(d.bytes));
                m.insert("format".into(), json!(d.format));
                m.insert("url".into(), json!(u));
                m.insert("secure_url".into(), json!(state.secure_url(&u)));
                Json::Object(m)
            })
            .collect(),
    )
}

/// The `derived` list of the Admin API's resource.
pub fn derived_json(
    state: &AppState,
    rec: &AssetRecord,
    derived: &[DerivedRecord],
    signer: &ResponseSigner,
) -> Json {
    Json::Array(
        derived
            .iter()
            .map(|d| {
                let u = url(state, rec, d, signer);
                json!({"transformation": d.transformation, "format": d.format, "bytes": d.bytes,
                       "id": d.id, "secure_url": state.secure_url(&u), "url": u})
            })
            .collect(),
    )
}

/// Runs the eager work after the answer: records the derived versions, then notifies
/// `notify_to` (when given) with an `eager` notification.
pub fn in_background(
    state: AppState,
    rec: AssetRecord,
    specs: Vec<EagerSpec>,
    signer: ResponseSigner,
    notify_to: Option<reqwest::Url>,
    batch_id: String,
) {
    tokio::spawn(async move {
        // The control API may hold background work to let apps test their pending states.
        state.control.hold.wait().await;
        match generate(&state, &rec, &specs).await {
            Ok(derived) => {
                if let Some(url) = notify_to {
                    let payload = json!({
                        "notification_type": "eager",
                        "eager": eager_json(&state, &rec, &derived, &signer),
                        "public_id": rec.key.public_id,
                        "batch_id": batch_id,
                    });
                    crate::notify::send(
                        &state,
                        &rec.key.cloud,
                        url,
                        payload,
                        crate::notify::Signer {
                            secret: signer.secret.clone(),
                            algorithm: signer.algorithm,
                        },
                    )
                    .await;
                }
            }
            Err(e) => {
                tracing::error!(public_id = %rec.key.public_id, error = %e, "eager transformations failed")
            }
        }
    });
}
