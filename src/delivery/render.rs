//! Derived images are rendered at most once: stored through the blob store under a key made
//! of the asset's version, the transformation and the format, recorded in the `derived`
//! table, and served from there afterwards. Requests for a derivative being rendered wait for
//! that render instead of starting their own; renders take turns (a semaphore, as many as
//! cores by default) and have a deadline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::Semaphore;

use crate::db::{AssetRecord, DerivedRecord};
use crate::media::transform::{self, Plan};
use crate::state::AppState;
use crate::storage::md5::Md5;

/// Why a render did not give an image: the status and the `X-Cld-Error` reason.
#[derive(Debug, Clone)]
pub struct RenderError(pub StatusCode, pub String);

type Pending = Shared<BoxFuture<'static, Result<Bytes, RenderError>>>;

/// Renders in progress, and the turns they take.
pub struct Renders {
    inflight: Mutex<HashMap<String, Pending>>,
    /// Recently served derivatives' bytes (their keys name immutable content: an asset
    /// version, a transformation, a format), bounded in bytes.
    hot: Mutex<HotCache>,
    turns: Arc<Semaphore>,
    /// The memory renders may use together, in MiB (each takes an estimate of its own).
    memory: Arc<Semaphore>,
    memory_mib: u32,
    /// Renders started (one per derivative made, however many asked for it).
    pub started: std::sync::atomic::AtomicU64,
    /// Derivatives served as stored.
    pub served_stored: std::sync::atomic::AtomicU64,
}

impl Renders {
    /// `concurrency` 0 means the number of CPU cores; `memory` bytes are shared by the
    /// renders in progress.
    pub fn new(concurrency: usize, memory: u64) -> Renders {
        let memory_mib = u32::try_from((memory >> 20).max(16)).unwrap_or(u32::MAX >> 4);
        let n = if concurrency == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            concurrency
        };
        Renders {
            inflight: Mutex::new(HashMap::new()),
            hot: Mutex::new(HotCache::default()),
            turns: Arc::new(Semaphore::new(n.max(1))),
            memory: Arc::new(Semaphore::new(memory_mib as usize)),
            memory_mib,
            started: Default::default(),
            served_stored: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        match self.inflight.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

/// The identity of a derivative: the asset's version, the transformation and the format.
/// (The stored face and custom coordinates count too: gravities follow them.)
pub fn derived_id(rec: &AssetRecord, transformation: &str, format: &str) -> String {
    let coordinates = |name: &str| {
        rec.extra
            .get(name)
            .map(|v| v.to_string())
            .unwrap_or_default()
    };
    hex::encode(Md5::digest(
        format!(
            "{}|{}|{transformation}|{format}|{}|{}",
            rec.asset_id,
            rec.version_id,
            coordinates("face_coordinates"),
            coordinates("custom_coordinates"),
        )
        .as_bytes(),
    ))
}

/// Where a derivative's bytes are kept.
pub fn derived_key(cloud: &str, id: &str) -> String {
    format!("{cloud}/derived/{id}")
}

/// Bytes of derivatives kept in memory at most.
const HOT_BYTES: usize = 64 * 1024 * 1024;
/// A derivative larger than this is not kept in memory.
const HOT_ITEM_BYTES: usize = 4 * 1024 * 1024;

/// A small least-recently-inserted cache of derivative bytes.
#[derive(Default)]
struct HotCache {
    items: HashMap<String, Bytes>,
    order: std::collections::VecDeque<String>,
    bytes: usize,
}

impl HotCache {
    fn get(&self, key: &str) -> Option<Bytes> {
        self.items.get(key).cloned()
    }

    fn put(&mut self, key: &str, value: Bytes) {
        if value.len() > HOT_ITEM_BYTES || self.items.contains_key(key) {
            return;
        }
        self.bytes += value.len();
        self.items.insert(key.to_string(), value);
        self.order.push_back(key.to_string());
        while self.bytes > HOT_BYTES {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(v) = self.items.remove(&old) {
                self.bytes -= v.len();
            }
        }
    }

    fn forget(&mut self, key: &str) {
        if let Some(v) = self.items.remove(key) {
            self.bytes -= v.len();
            self.order.retain(|k| k != key);
        }
    }
}

impl Renders {
    fn hot(&self) -> std::sync::MutexGuard<'_, HotCache> {
        match self.hot.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Drops a derivative from memory (its record and stored bytes were removed).
    pub fn forget(&self, key: &str) {
        self.hot().forget(key);
    }
}

/// The stored bytes of a derivative, when it was rendered before.
pub async fn stored(state: &AppState, key: &str) -> std::io::Result<Option<Bytes>> {
    let count = || {
        state
            .renders
            .served_stored
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    };
    if let Some(b) = state.renders.hot().get(key) {
        count();
        return Ok(Some(b));
    }
    let Some(found) = crate::storage::read_all(state.blobs.as_ref(), key).await? else {
        return Ok(None);
    };
    count();
    let found = Bytes::from(found);
    state.renders.hot().put(key, found.clone());
    Ok(Some(found))
}

impl Renders {
    /// Renders in progress now.
    pub fn in_progress(&self) -> usize {
        self.lock().len()
    }

    /// Counters for the control API: renders started, derivatives served as stored, renders
    /// in progress.
    pub fn stats(&self) -> serde_json::Value {
        use std::sync::atomic::Ordering::Relaxed;
        serde_json::json!({
            "renders_started": self.started.load(Relaxed),
            "served_stored": self.served_stored.load(Relaxed),
            "renders_in_progress": self.lock().len(),
        })
    }
}

/// The derivative's bytes: rendered now (once, whoever else asks meanwhile), stored and
/// recorded.
pub async fn render(
    state: &AppState,
    rec: &AssetRecord,
    transformation: &str,
    plan: &Plan,
    format: &str,
) -> Result<Bytes, RenderError> {
    let id = derived_id(rec, transformation, format);
    let pending = {
        let mut inflight = state.renders.lock();
        match inflight.get(&id) {
            Some(p) => p.clone(),
            None => {
                // The render runs on its own task: a request that goes away (a closed page)
                // neither stops it nor leaves its turn waiting unpolled. The task removes its
                // entry when it ends.
                let task = tokio::spawn({
                    let (state, rec, id) = (state.clone(), rec.clone(), id.clone());
                    let (transformation, plan, format) =
                        (transformation.to_string(), plan.clone(), format.to_string());
                    async move {
                        let out =
                            run(state.clone(), rec, id.clone(), transformation, plan, format).await;
                        state.renders.lock().remove(&id);
                        out
                    }
                });
                let job = async move {
                    task.await.unwrap_or_else(|e| {
                        tracing::error!(error = %e, "a render task failed");
                        Err(RenderError(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "Internal error".into(),
                        ))
                    })
                }
                .boxed()
                .shared();
                inflight.insert(id.clone(), job.clone());
                job
            }
        }
    };
    pending.await
}

/// Loads the images that `l_<public_id>` / `u_<public_id>` layers name (images of the same
/// cloud, delivery type upload).
async fn load_layers(state: &AppState, cloud: &str, plan: &mut Plan) -> Result<(), RenderError> {
    let max_bytes = state.limits.max_image_pixels.saturating_mul(8);
    for (public_id, data) in plan.image_layers_mut() {
        if let Some(url) = public_id.strip_prefix(transform::FETCH_PREFIX) {
            *data = Some(Arc::new(fetch_layer(state, url).await?));
            continue;
        }
        let missing = || {
            RenderError(
                StatusCode::BAD_REQUEST,
                format!("Overlay image {public_id} not found"),
            )
        };
        let key = crate::db::AssetKey {
            cloud: cloud.to_string(),
            resource_type: "image".into(),
            delivery_type: "upload".into(),
            public_id: public_id.to_string(),
        };
        let found = state.meta.find_asset(&key).await.map_err(|e| {
            tracing::error!(error = %e, "reading an overlay's record failed");
            RenderError(StatusCode::INTERNAL_SERVER_ERROR, "Internal error".into())
        })?;
        let layer = found.ok_or_else(missing)?;
        // A layer never shows what its own URL would need a signature for.
        if super::restricted(&layer) {
            return Err(RenderError(
                StatusCode::BAD_REQUEST,
                format!("Overlay image {public_id} is restricted (access_mode authenticated)"),
            ));
        }
        if layer.bytes.max(0) as u64 > max_bytes {
            return Err(RenderError(
                StatusCode::BAD_REQUEST,
                format!("Overlay image {public_id} is too large"),
            ));
        }
        let bytes = crate::storage::read_all(state.blobs.as_ref(), &layer.blob_key)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "reading an overlay failed");
                RenderError(StatusCode::INTERNAL_SERVER_ERROR, "Internal error".into())
            })?
            .ok_or_else(missing)?;
        *data = Some(Arc::new(bytes));
    }
    Ok(())
}

/// Remote layers are at most this large.
const MAX_FETCHED_LAYER: u64 = 32 * 1024 * 1024;

/// A remote image for `l_fetch:`, fetched under the fetch policy (loopback, private and
/// metadata addresses refused unless allowed), bounded in time and size.
async fn fetch_layer(state: &AppState, url: &str) -> Result<Vec<u8>, RenderError> {
    let failed = |why: String| {
        RenderError(
            StatusCode::BAD_REQUEST,
            format!("Overlay fetch:{url} could not be fetched: {why}"),
        )
    };
    let source = crate::upload::source::resolve(state, None, Some(url))
        .await
        .map_err(|e| failed(e.to_string()))?;
    if source.blob.size > MAX_FETCHED_LAYER {
        return Err(failed(format!("larger than {MAX_FETCHED_LAYER} bytes")));
    }
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut out = Vec::new();
        source
            .blob
            .reader()
            .and_then(|r| r.take(MAX_FETCHED_LAYER).read_to_end(&mut out))
            .map(|_| out)
    })
    .await
    .map_err(|e| failed(e.to_string()))?
    .map_err(|e| failed(e.to_string()))
}

/// `w_auto:breakpoints…:json`: the breakpoints of the image the rest of the plan makes (in
/// the plan's format), smallest first, as JSON.
fn breakpoints_json(
    original: &[u8],
    plan: &Plan,
    settings: &crate::media::breakpoints::Settings,
    max_pixels: u64,
    max_decode: u64,
) -> Result<Vec<u8>, String> {
    let format = plan.format.clone().unwrap_or_else(|| "png".into());
    let out = transform::apply_bounded(original, plan, &format, max_pixels, max_decode)?;
    let width = imagesize::blob_size(&out)
        .map(|s| s.width as u32)
        .map_err(|e| e.to_string())?;
    let mut widths = crate::media::breakpoints::widths(width, out.len() as u64, settings);
    widths.reverse();
    Ok(serde_json::json!({ "breakpoints": widths })
        .to_string()
        .into_bytes())
}

async fn run(
    state: AppState,
    rec: AssetRecord,
    id: String,
    transformation: String,
    plan: Plan,
    format: String,
) -> Result<Bytes, RenderError> {
    // A render that finished between this request's look at the store and its look at the
    // renders in progress has already stored it.
    let key = derived_key(&rec.key.cloud, &id);
    if let Ok(Some(done)) = stored(&state, &key).await {
        return Ok(done);
    }
    state
        .renders
        .started
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let deadline = Duration::from_secs(state.limits.render_timeout_secs.max(1));
    let started = tokio::time::Instant::now();
    let busy = || {
        RenderError(
            StatusCode::from_u16(420).unwrap_or(StatusCode::TOO_MANY_REQUESTS),
            format!(
                "Too many transformations in progress: none finished within {} s",
                deadline.as_secs()
            ),
        )
    };
    let turn = tokio::time::timeout(deadline, state.renders.turns.clone().acquire_owned())
        .await
        .map_err(|_| busy())?
        .map_err(|_| busy())?;
    // Working memory: about 16 bytes a source pixel at the peak (a decoded copy and the
    // floating-point buffers of filters); big sources wait for room instead of adding up.
    let pixels = rec.width.unwrap_or(0).max(0) as u64 * rec.height.unwrap_or(0).max(0) as u64;
    let mut bytes_needed = pixels.saturating_mul(16);
    if format == "avif" {
        // The AV1 encoder's own buffers, for a picture up to AVIF's size limit.
        let avif = crate::media::avif_encode::MAX_PIXELS.min(pixels.max(1 << 20));
        bytes_needed += avif * crate::media::avif_encode::BYTES_PER_PIXEL;
    }
    let need = ((bytes_needed >> 20) as u32).clamp(1, state.renders.memory_mib);
    let left = deadline.saturating_sub(started.elapsed());
    let room = tokio::time::timeout(left, state.renders.memory.clone().acquire_many_owned(need))
        .await
        .map_err(|_| busy())?
        .map_err(|_| busy())?;
    let internal = |e: &dyn std::fmt::Display| {
        tracing::error!(error = %e, "rendering a derived image failed");
        RenderError(StatusCode::INTERNAL_SERVER_ERROR, "Internal error".into())
    };
    let original = crate::storage::read_all(state.blobs.as_ref(), &rec.blob_key)
        .await
        .map_err(|e| internal(&e))?
        .ok_or_else(|| {
            RenderError(
                StatusCode::NOT_FOUND,
                format!("Resource not found - {}", rec.key.public_id),
            )
        })?;
    let max_pixels = state.limits.max_image_pixels;
    let max_decode = state.limits.max_decode_bytes;
    let mut plan = plan;
    load_layers(&state, &rec.key.cloud, &mut plan).await?;
    let rects = |name: &str| -> Vec<[f64; 4]> {
        rec.extra
            .get(name)
            .and_then(|v| v.as_array())
            .map(|list| {
                list.iter()
                    .filter_map(|r| {
                        let r = r.as_array()?;
                        let n = |i: usize| r.get(i).and_then(|v| v.as_f64());
                        Some([n(0)?, n(1)?, n(2)?, n(3)?])
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    plan.set_focus(
        &rects("face_coordinates"),
        &rects("custom_coordinates"),
        rec.width.unwrap_or(0) as f64,
        rec.height.unwrap_or(0) as f64,
    );
    let fmt = format.clone();
    let video = rec.key.resource_type == "video";
    let dims = (
        rec.width.unwrap_or(0).max(0) as u64,
        rec.height.unwrap_or(0).max(0) as u64,
    );
    let stop_at = std::time::Instant::now() + deadline.saturating_sub(started.elapsed());
    let job = tokio::task::spawn_blocking(move || {
        // The turn and the room are held until the work ends, even when the answer has gone.
        let _turn = turn;
        let _room = room;
        let out = transform::with_deadline(stop_at, || {
            if let Some((settings, true)) = plan.auto_width.take() {
                breakpoints_json(&original, &plan, &settings, max_pixels, max_decode)
            } else if video {
                crate::media::video::render(&original, &plan, &fmt, max_pixels, dims, max_decode)
            } else {
                transform::apply_bounded(&original, &plan, &fmt, max_pixels, max_decode)
            }
        })?;
        let dims = imagesize::blob_size(&out)
            .map(|s| (s.width as i64, s.height as i64))
            .ok();
        Ok::<_, String>((out, dims))
    });
    let left = deadline.saturating_sub(started.elapsed());
    let (bytes, dims) = tokio::time::timeout(left, job)
        .await
        .map_err(|_| {
            RenderError(
                StatusCode::from_u16(420).unwrap_or(StatusCode::TOO_MANY_REQUESTS),
                format!(
                    "The transformation took longer than {} s",
                    deadline.as_secs()
                ),
            )
        })?
        .map_err(|e| internal(&e))?
        .map_err(|m| {
            // Stopped at its deadline (the same moment the wait above gave up): as that is.
            let status = if m == transform::PAST_DEADLINE {
                StatusCode::from_u16(420).unwrap_or(StatusCode::TOO_MANY_REQUESTS)
            } else {
                StatusCode::BAD_REQUEST
            };
            RenderError(status, m)
        })?;
    let bytes = Bytes::from(bytes);
    // Kept for the next request (up to a number per asset, so that endless variants cannot
    // fill the disk); a failure to keep it only costs a render later.
    let kept_already = state
        .meta
        .list_derived(&rec.asset_id)
        .await
        .map(|d| d.len())
        .unwrap_or(usize::MAX);
    if kept_already >= state.limits.max_derived_per_asset {
        tracing::debug!(asset_id = %rec.asset_id, "derived image served, not kept: the asset has its maximum");
        return Ok(bytes);
    }
    let kept = async {
        let blob = crate::storage::temp::blob_from_bytes(&state.tmp_dir, bytes.to_vec(), u64::MAX)
            .await
            .map_err(|e| e.to_string())?;
        state
            .blobs
            .put(&key, blob)
            .await
            .map_err(|e| e.to_string())?;
        state
            .meta
            .put_derived(&[DerivedRecord {
                id: id.clone(),
                cloud: rec.key.cloud.clone(),
                asset_id: rec.asset_id.clone(),
                transformation: transformation.clone(),
                format: crate::media::avif_encode::written_format(&format, &bytes).to_string(),
                bytes: bytes.len() as i64,
                width: dims.map(|d| d.0),
                height: dims.map(|d| d.1),
                created_at: state.now(),
            }])
            .await
            .map_err(|e| e.to_string())
    };
    if let Err(e) = kept.await {
        tracing::warn!(error = %e, %key, "a derived image could not be kept");
    }
    Ok(bytes)
}
