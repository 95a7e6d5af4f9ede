//! The Upload API's `upload` action: authentication, presets, the file source, probing,
//! naming, storing (blob first, then the metadata row), and the Cloudinary-shaped answer.

pub mod access;
pub mod actions;
pub mod archive;
pub mod backup;
pub mod breakpoints;
pub mod chunked;
pub mod eager;
pub mod eval;
pub mod generate;
pub mod mapping;
pub mod mirror;
pub mod naming;
pub mod orphans;
pub mod preset;
pub mod response;
pub mod source;

use serde_json::{json, Map, Value as Json};

use crate::auth::Caller;
use crate::db::{AssetKey, AssetRecord, SaveOutcome};
use crate::error::{ApiError, ApiResult};
use crate::form::{Params, Value};
use crate::kinds::DeliveryType;
use crate::media::{self, MediaKind};
use crate::state::AppState;
use crate::storage::new_blob_key;
use crate::util::random_hex;

pub use response::{upload_response, ResponseSigner, UploadAnswer};
pub use source::Source;

/// How long a `delete_token` stays valid.
pub const DELETE_TOKEN_SECS: i64 = 600;

/// Analysis and add-on parameters nephos does not provide: a true value is refused.
const NOT_ENABLED: &[(&str, &str)] = &[
    ("ocr", "OCR text detection"),
    ("raw_convert", "Raw conversion"),
    ("categorization", "Categorization"),
    ("auto_tagging", "Automatic tagging"),
    ("detection", "Object detection"),
    ("background_removal", "Background removal"),
    ("visual_search", "Visual search"),
    ("auto_transcription", "Automatic transcription"),
    ("auto_chaptering", "Automatic chaptering"),
    ("cinemagraph_analysis", "Cinemagraph analysis"),
    ("accessibility_analysis", "Accessibility analysis"),
];

/// Parameters that change what is stored or answered and that nephos does not implement yet.
const NOT_YET: &[&str] = &["callback", "on_success"];

/// Values Cloudinary accepts for its add-on parameters; anything else is refused with
/// Cloudinary's own message before the "not enabled" one.
fn check_addon_values(params: &Params) -> ApiResult<()> {
    const DETECTION: &[&str] = &[
        "coco",
        "lvis",
        "openimages",
        "cld-fashion",
        "cld-text",
        "human-anatomy",
        "unidet",
        "adv_face",
        "aws_rek_face",
        "cld-sports",
        "iab",
        "lvis_v1",
        "cld-interior",
    ];
    const CATEGORIZATION: &[&str] = &[
        "google_tagging",
        "google_video_tagging",
        "imagga_tagging",
        "aws_rek_tagging",
        "aws_rek_video_tagging",
        "azure_video_tagging",
        "google_automl",
        "content_aware",
    ];
    let strip_version = |m: &str| -> String {
        match m.rsplit_once("_v") {
            Some((base, v)) if !v.is_empty() && v.chars().all(|c| c.is_ascii_digit()) => {
                base.to_string()
            }
            _ => m.to_string(),
        }
    };
    if let Some(v) = params.nonempty("raw_convert") {
        let ok = v.split(',').all(|item| {
            let name = item.split(':').next().unwrap_or("").trim();
            matches!(
                name,
                "aspose"
                    | "google_speech"
                    | "extract_text"
                    | "google_translate"
                    | "azure_video_indexer"
            )
        });
        if !ok {
            return Err(ApiError::bad("Raw convert is invalid"));
        }
    }
    if let Some(v) = params.nonempty("categorization") {
        for item in v.split(',').map(str::trim) {
            let name = item.split(':').next().unwrap_or("");
            if !CATEGORIZATION.contains(&name) {
                return Err(ApiError::bad(format!(
                    "Categorization item {item} is not valid"
                )));
            }
        }
    }
    if let Some(v) = params.nonempty("detection") {
        for item in v.split(',').map(str::trim) {
            let model = item.split(':').next().unwrap_or("");
            if !DETECTION.contains(&strip_version(model).as_str()) {
                return Err(ApiError::bad(format!("Detection invalid model '{item}'")));
            }
        }
    }
    if let Some(v) = params.nonempty("background_removal") {
        let name = v.split(':').next().unwrap_or("");
        if !matches!(name, "cloudinary_ai" | "pixelz" | "remove_the_background") {
            return Err(ApiError::bad("Background removal is invalid"));
        }
    }
    if let Some(v) = params.nonempty("ocr") {
        if v.split(':').next() != Some("adv_ocr") {
            return Err(ApiError::bad(format!(
                "Illegal value {v} for parameter ocr"
            )));
        }
    }
    if let Some(v) = params.nonempty("auto_tagging") {
        if !v.parse::<f64>().is_ok_and(|n| (0.0..=1.0).contains(&n)) {
            return Err(ApiError::bad(format!(
                "Illegal value {v} for parameter auto_tagging: must be a number from 0 to 1"
            )));
        }
        if params.nonempty("categorization").is_none() && params.nonempty("detection").is_none() {
            return Err(ApiError::bad(
                "Must use categorization or detection when using auto_tagging",
            ));
        }
    }
    Ok(())
}

pub(crate) fn refuse_unsupported(params: &Params) -> ApiResult<()> {
    check_addon_values(params)?;
    for (name, label) in NOT_ENABLED {
        if params.nonempty(name).is_some() && params.truthy(name) {
            return Err(ApiError::bad(format!(
                "{label} ({name}) is not enabled for this product environment"
            )));
        }
    }
    for name in NOT_YET {
        if params.nonempty(name).is_some() {
            return Err(ApiError::bad(format!(
                "Parameter {name} is not supported by this server yet"
            )));
        }
    }
    if let Some(m) = params.nonempty("moderation") {
        if m != "manual" {
            return Err(ApiError::bad(format!(
                "Moderation {m} is not enabled for this product environment (only manual is)"
            )));
        }
    }
    Ok(())
}

/// The options that decide how an upload is named and stored, parsed once (a bad value is a
/// 400 before any byte is stored, so a chunked upload fails on its first part).
#[derive(Debug, Clone)]
pub struct UploadOptions {
    pub delivery_type: DeliveryType,
    pub overwrite: bool,
    pub use_filename: bool,
    pub unique_filename: bool,
    pub discard_original_filename: bool,
    pub use_filename_as_display_name: bool,
    pub use_asset_folder_as_public_id_prefix: bool,
    pub return_delete_token: bool,
}

impl UploadOptions {
    /// `signed`: only signed (or Basic, OAuth) uploads may overwrite, and do by default.
    pub fn parse(params: &Params, signed: bool) -> ApiResult<UploadOptions> {
        let ty = params.nonempty("type").unwrap_or("upload");
        let delivery_type =
            DeliveryType::parse(ty, params.get(GENERATED).is_some()).ok_or_else(|| {
                ApiError::bad(format!(
                    "Invalid type {ty}: must be one of upload, private, authenticated"
                ))
            })?;
        let flag = |name: &str, default: bool| -> ApiResult<bool> {
            Ok(params.flag(name)?.unwrap_or(default))
        };
        let overwrite = flag("overwrite", true)?;
        Ok(UploadOptions {
            delivery_type,
            overwrite: signed && overwrite,
            use_filename: flag("use_filename", false)?,
            unique_filename: flag("unique_filename", true)?,
            discard_original_filename: flag("discard_original_filename", false)?,
            use_filename_as_display_name: flag("use_filename_as_display_name", false)?,
            use_asset_folder_as_public_id_prefix: flag(
                "use_asset_folder_as_public_id_prefix",
                false,
            )?,
            return_delete_token: flag("return_delete_token", false)?,
        })
    }
}

/// Splits on separators not preceded by a backslash, then unescapes `\=`, `\|`, `\\`.
fn split_escaped(s: &str, sep: char, limit: Option<usize>) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        let current = out.len() - 1;
        if c == '\\' {
            out[current].push('\\');
            if let Some(n) = chars.next() {
                out[current].push(n);
            }
        } else if c == sep && limit.is_none_or(|l| out.len() < l) {
            out.push(String::new());
        } else {
            out[current].push(c);
        }
    }
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Parses `k=v|k2=v2` (Cloudinary's context/metadata encoding). `json_lists` turns values
/// that are JSON arrays into arrays (structured metadata).
/// A JSON object (`{"k": "v"}`, as JSON bodies may send it) is taken as the map itself;
/// its scalar values become strings.
pub fn parse_pairs(s: &str, json_lists: bool) -> Map<String, Json> {
    if s.trim_start().starts_with('{') {
        if let Ok(Json::Object(obj)) = serde_json::from_str::<Json>(s) {
            return obj
                .into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        Json::String(_) => v,
                        Json::Array(_) if json_lists => v,
                        Json::Null => Json::String(String::new()),
                        other => Json::String(other.to_string()),
                    };
                    (k, v)
                })
                .collect();
        }
    }
    let mut map = Map::new();
    for item in split_escaped(s, '|', None) {
        if item.trim().is_empty() {
            continue;
        }
        let mut kv = split_escaped(&item, '=', Some(2));
        let value = if kv.len() > 1 {
            kv.pop().unwrap_or_default()
        } else {
            String::new()
        };
        let key = unescape(kv.first().map(String::as_str).unwrap_or(""))
            .trim()
            .to_string();
        if key.is_empty() {
            continue;
        }
        let value = unescape(&value);
        let parsed = if json_lists && value.starts_with('[') {
            serde_json::from_str::<Json>(&value).unwrap_or(Json::String(value))
        } else {
            Json::String(value)
        };
        map.insert(key, parsed);
    }
    map
}

/// What `colors`, `phash`, `quality_analysis` and `image_metadata` (or `media_metadata`,
/// `exif`) ask to be computed from an image: kept with the asset and answered.
pub(crate) async fn analyse(
    state: &AppState,
    content: impl FnOnce() -> std::io::Result<Box<dyn std::io::Read + Send>>,
    size: u64,
    kind: MediaKind,
    params: &Params,
    format: Option<&str>,
    dims: (Option<i64>, Option<i64>),
) -> ApiResult<Map<String, Json>> {
    let want_colors = params.truthy("colors");
    let want_phash = params.truthy("phash");
    let want_meta = ["image_metadata", "media_metadata", "exif"]
        .iter()
        .any(|f| params.truthy(f));
    let want_quality = params.truthy("quality_analysis");
    let mut out = Map::new();
    if !(want_colors || want_phash || want_meta || want_quality) {
        return Ok(out);
    }
    if kind != MediaKind::Image || !media::transform::can_decode(format.unwrap_or_default()) {
        // Only decodable images can be analysed: say so rather than answer nothing.
        if want_colors || want_phash || want_quality {
            return Err(ApiError::bad(format!(
                "Analysis (colors, phash, quality_analysis) is available for JPEG, PNG, GIF, \
                 WebP, BMP and TIFF images, not {}",
                format.unwrap_or(kind.as_str())
            )));
        }
        out.insert("image_metadata".into(), json!({}));
        return Ok(out);
    }
    let max_pixels = state.limits.max_image_pixels;
    if size > max_pixels.saturating_mul(8) {
        return Err(ApiError::bad(format!(
            "The image is too large to analyse ({size} bytes)"
        )));
    }
    let mut reader = content()?;
    let format = format.unwrap_or_default().to_string();
    let (w, h) = (dims.0.unwrap_or(0), dims.1.unwrap_or(0));
    let computed = tokio::task::spawn_blocking(move || {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut bytes).map_err(|e| e.to_string())?;
        let mut out = Map::new();
        if want_colors {
            let (colors, predominant) = media::analysis::colors(&bytes, max_pixels)?;
            out.insert("colors".into(), colors);
            out.insert("predominant".into(), predominant);
        }
        if want_phash {
            out.insert(
                "phash".into(),
                json!(media::analysis::phash(&bytes, max_pixels)?),
            );
        }
        if want_meta {
            let m = media::analysis::image_metadata(&bytes, &format, w, h);
            out.insert("image_metadata".into(), Json::Object(m));
        }
        if want_quality {
            out.insert(
                "quality_analysis".into(),
                media::analysis::quality(&bytes, max_pixels)?,
            );
        }
        Ok::<_, String>(out)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|m| ApiError::bad(format!("Invalid image file - {m}")))?;
    out.extend(computed);
    Ok(out)
}

/// Records an asset folder and its parents as folders, so that they stay until deleted
/// (not only while an asset is in them).
pub(crate) async fn remember_folders(state: &AppState, cloud: &str, folder: &str) -> ApiResult<()> {
    let mut path = String::new();
    for part in folder.split('/').filter(|p| !p.is_empty()) {
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(part);
        state
            .meta
            .create_folder(
                cloud,
                &path,
                &crate::util::folder_external_id(&path),
                state.now(),
            )
            .await?;
    }
    Ok(())
}

/// `faces` of an answer: the face rectangles given for the asset (nephos detects none), each
/// width and height at most the image's.
pub(crate) fn faces_json(rec: &AssetRecord) -> Json {
    let (w, h) = (
        rec.width.unwrap_or(i64::MAX),
        rec.height.unwrap_or(i64::MAX),
    );
    let rects = rec
        .extra
        .get("face_coordinates")
        .and_then(Json::as_array)
        .cloned()
        .unwrap_or_default();
    Json::Array(
        rects
            .iter()
            .filter_map(|r| {
                let n: Vec<i64> = r.as_array()?.iter().filter_map(Json::as_i64).collect();
                (n.len() == 4).then(|| json!([n[0], n[1], n[2].min(w), n[3].min(h)]))
            })
            .collect(),
    )
}

/// Splits a comma-separated tag list.
pub fn parse_tags(items: &[String]) -> Vec<String> {
    items
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// `x,y,w,h|x,y,w,h` into `[[x,y,w,h],…]`.
pub(crate) fn parse_coordinates(name: &str, s: &str) -> ApiResult<Json> {
    let mut rects = Vec::new();
    for rect in s.split('|').map(str::trim).filter(|r| !r.is_empty()) {
        let nums: Result<Vec<i64>, _> = rect.split(',').map(|n| n.trim().parse::<i64>()).collect();
        match nums {
            Ok(n) if n.len() == 4 => rects.push(json!(n)),
            _ => {
                return Err(ApiError::bad(format!(
                    "Invalid {name} - {s}: expected x,y,width,height rectangles separated by |"
                )))
            }
        }
    }
    Ok(Json::Array(rects))
}

/// A chunk's `Content-Range: bytes START-END/TOTAL` (TOTAL may be `-1` or `*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub start: u64,
    pub end: u64,
    pub total: Option<u64>,
}

pub fn parse_content_range(v: &str) -> Option<ContentRange> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.trim().split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    let total = match total.trim() {
        "-1" | "*" => None,
        t => Some(t.parse().ok()?),
    };
    // Sizes stay far from u64's end, so that `end + 1` and offsets never wrap.
    const MAX: u64 = 1 << 60;
    if end < start || end >= MAX || total.is_some_and(|t| t > MAX) {
        return None;
    }
    Some(ContentRange { start, end, total })
}

/// An authenticated Upload API call: the cloud and resource type of its path, who called,
/// and its parameters.
pub struct Call {
    pub cloud: String,
    pub resource_type: crate::kinds::ResourceType,
    pub caller: Caller,
    pub params: Params,
    /// The body as sent when it was JSON.
    pub json: Option<Json>,
    /// The request text's room in the shared memory budget, held while the call runs.
    pub budget: Vec<tokio::sync::OwnedSemaphorePermit>,
}

/// The request data the upload action needs besides the form.
pub struct UploadRequest<'a> {
    pub cloud: &'a str,
    pub resource_type: &'a str,
    pub content_range: Option<&'a str>,
    /// `X-Unique-Upload-Id` of a chunked upload.
    pub upload_id: Option<&'a str>,
}

/// What the upload action answers: a stored upload, written out field by field, or another
/// JSON answer (a part of a chunked upload, an upload stored later).
pub enum Answer {
    Stored(Box<UploadAnswer>),
    Other(Json),
}

impl serde::Serialize for Answer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Answer::Stored(a) => a.serialize(s),
            Answer::Other(j) => j.serialize(s),
        }
    }
}

impl From<Json> for Answer {
    fn from(j: Json) -> Answer {
        Answer::Other(j)
    }
}

/// Handles `POST /v1_1/:cloud/:resource_type/upload` once the caller is known.
pub async fn upload(
    state: &AppState,
    call: Call,
    file: Option<crate::form::FilePart>,
    content_range: Option<&str>,
    upload_id: Option<&str>,
) -> ApiResult<Answer> {
    let Call {
        cloud,
        resource_type,
        caller,
        params,
        ..
    } = call;
    let req = UploadRequest {
        cloud: &cloud,
        resource_type: resource_type.as_str(),
        content_range,
        upload_id,
    };
    let range = match req.content_range {
        Some(text) => Some(
            parse_content_range(text)
                .ok_or_else(|| ApiError::bad(format!("Invalid Content-Range header - {text}")))?,
        ),
        None => None,
    };
    let (params, _preset) = preset::apply(state.meta.as_ref(), req.cloud, &caller, params).await?;
    refuse_unsupported(&params)?;
    UploadOptions::parse(&params, caller.is_signed())?;
    if let Some(url) = params.nonempty("notification_url") {
        crate::notify::check_url(url)?;
    }
    if params.truthy("async")
        && range.is_some_and(|r| !chunked::is_whole(&r, file.as_ref().map(|f| f.blob.size)))
    {
        return Err(ApiError::bad(
            "Parameter async is not supported for uploads in parts",
        ));
    }
    if let Some(range) = range {
        if !chunked::is_whole(&range, file.as_ref().map(|f| f.blob.size)) {
            // Boxed, as the other rare branches' futures below: an upload's future is only as
            // large as the common path needs (it is moved whole at each level).
            return Box::pin(chunked::part(
                state,
                chunked::PartRequest {
                    req: &req,
                    caller: &caller,
                    params,
                    file,
                    range,
                },
            ))
            .await
            .map(Answer::Other);
        }
    }
    if params.truthy("async") {
        let src = source::resolve(state, file, params.text("file")).await?;
        return Ok(Answer::Other(store_later(state, &req, caller, params, src)));
    }
    let src = source::resolve(state, file, params.text("file")).await?;
    let answer = store_answer(state, &req, &caller, params, src, None).await?;
    Ok(Answer::Stored(Box::new(answer)))
}

/// `async=true`: answers `{"status": "pending", …, "batch_id"}` at once and stores the upload
/// afterwards; `notification_url` then gets the upload notification (with the `batch_id`).
fn store_later(
    state: &AppState,
    req: &UploadRequest<'_>,
    caller: Caller,
    mut params: Params,
    src: Source,
) -> Json {
    let batch_id = random_hex(32);
    let mut pending = Map::new();
    pending.insert("status".into(), json!("pending"));
    pending.insert("resource_type".into(), json!(req.resource_type));
    pending.insert(
        "type".into(),
        json!(params.nonempty("type").unwrap_or("upload")),
    );
    if let Some(id) = params.nonempty("public_id") {
        pending.insert("public_id".into(), json!(id));
    }
    pending.insert("batch_id".into(), json!(batch_id));
    params.set(BATCH_ID, Value::Text(batch_id));
    let (state, cloud, rt) = (
        state.clone(),
        req.cloud.to_string(),
        req.resource_type.to_string(),
    );
    tokio::spawn(async move {
        // The control API may hold background work to let apps test their pending states.
        state.control.hold.wait().await;
        let req = UploadRequest {
            cloud: &cloud,
            resource_type: &rt,
            content_range: None,
            upload_id: None,
        };
        if let Err(e) = store_upload(&state, &req, &caller, params, src, None).await {
            tracing::error!(error = %e, "asynchronous upload failed");
        }
        state.records.invalidate();
    });
    Json::Object(pending)
}

/// Marks the parameters of an image nephos generated (`text`, `sprite`, `multi`), which may
/// have those delivery types (never a client parameter: the name cannot come from a request).
pub(crate) const GENERATED: &str = "\u{0}generated";

/// Carries an async upload's batch ID to its notification (never a client parameter: the
/// name cannot come from a request).
const BATCH_ID: &str = "\u{0}batch_id";

/// Deletes one asset: the row first, then its file (so no row is ever left without a file).
/// An asset uploaded with `backup=true` keeps its file and record when deleted (a backup
/// document), so that `restore` can bring it back.
pub async fn delete_asset(state: &AppState, key: &AssetKey) -> ApiResult<bool> {
    let Some(found) = state.meta.find_asset(key).await? else {
        return Ok(false);
    };
    let backed_up = found.extra.get("backup") == Some(&json!(true));
    if backed_up {
        backup::keep(state, &found).await?;
    }
    match state.meta.delete_asset(key).await? {
        // The derived versions go with the asset: their records with its row, their files here.
        Some((rec, derived)) => {
            if !backed_up {
                if let Err(e) = state.blobs.delete(&rec.blob_key).await {
                    tracing::warn!(key = %rec.blob_key, error = %e, "could not remove a deleted asset's file");
                }
            }
            crate::admin::forget_derived_blobs(state, &rec.key.cloud, &derived).await;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Probes, names and stores an upload from its resolved source, and builds the answer (as a
/// JSON value). `public_id` overrides the naming rules (a chunked upload decided it at its
/// first part).
pub async fn store_upload(
    state: &AppState,
    req: &UploadRequest<'_>,
    caller: &Caller,
    params: Params,
    src: Source,
    public_id: Option<String>,
) -> ApiResult<Json> {
    let answer = store_answer(state, req, caller, params, src, public_id).await?;
    Ok(Json::Object(answer.to_map()))
}

/// [`store_upload`], with the answer to be written out as it is.
pub async fn store_answer(
    state: &AppState,
    req: &UploadRequest<'_>,
    caller: &Caller,
    mut params: Params,
    src: Source,
    public_id: Option<String>,
) -> ApiResult<UploadAnswer> {
    let opts = UploadOptions::parse(&params, caller.is_signed())?;

    if src.blob.size == 0 {
        return Err(ApiError::bad("Empty file"));
    }
    let info = match src.blob.bytes() {
        Some(bytes) => media::probe(std::io::Cursor::new(bytes.as_ref()))?,
        None => {
            let reader = src.blob.reader()?;
            tokio::task::spawn_blocking(move || media::probe(std::io::BufReader::new(reader)))
                .await
                .map_err(ApiError::internal)??
        }
    };

    let kind = match req.resource_type {
        "auto" => info.kind,
        "image" if info.kind != MediaKind::Image => {
            return Err(ApiError::bad("Invalid image file"))
        }
        "image" => MediaKind::Image,
        "video" if info.kind != MediaKind::Video => {
            return Err(ApiError::bad("Invalid video file"))
        }
        "video" => MediaKind::Video,
        _ => MediaKind::Raw,
    };
    if let Some(code) = params.nonempty("eval").map(str::to_string) {
        let mut resource_info = Map::new();
        resource_info.insert("resource_type".into(), json!(kind.as_str()));
        resource_info.insert("bytes".into(), json!(src.blob.size));
        for (k, v) in [
            ("width", info.width),
            ("height", info.height),
            ("pages", info.pages),
        ] {
            if let Some(v) = v {
                resource_info.insert(k.into(), json!(v));
            }
        }
        if let Some(f) = &info.format {
            resource_info.insert("format".into(), json!(f));
        }
        let options = eval::run(&code, &resource_info)?;
        eval::apply(&mut params, options);
        refuse_unsupported(&params)?;
    }
    let given = params
        .text("metadata")
        .map(|m| parse_pairs(m, true))
        .unwrap_or_default();
    let metadata = crate::metadata::for_new_asset(state, req.cloud, given).await?;

    let split = params
        .nonempty("filename_override")
        .or(src.filename.as_deref())
        .map(naming::split_filename);
    let format = match kind {
        MediaKind::Raw => None,
        _ => info.format.clone(),
    };
    if let Some(allowed) = params.nonempty("allowed_formats") {
        let allowed: Vec<String> = allowed
            .split(',')
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect();
        // With `format`, the upload is converted: the target format is what must be allowed.
        let actual = params
            .nonempty("format")
            .map(|f| f.trim_start_matches('.').to_ascii_lowercase())
            .or_else(|| format.clone())
            .or_else(|| split.as_ref().and_then(|(_, e)| e.clone()))
            .unwrap_or_default();
        let same = |a: &str| {
            a == actual || (a == "jpeg" && actual == "jpg") || (a == "tif" && actual == "tiff")
        };
        if !allowed.iter().any(|a| same(a)) {
            let shown = if actual.is_empty() {
                "(none)".to_string()
            } else {
                actual
            };
            return Err(ApiError::bad(format!(
                "{} format {shown} not allowed",
                capitalized(kind.as_str())
            )));
        }
    }
    // An incoming `transformation` or a `format` other than the file's converts the image
    // before it is stored.
    let wanted_format = params
        .nonempty("format")
        .map(|f| f.trim_start_matches('.').to_ascii_lowercase());
    let same_format = |f: &str| {
        format.as_deref() == Some(f)
            || (f == "jpeg" && format.as_deref() == Some("jpg"))
            || (f == "tif" && format.as_deref() == Some("tiff"))
    };
    let converts = wanted_format.as_deref().is_some_and(|f| !same_format(f));
    // Named transformations (`t_<name>`) in it are expanded first.
    let incoming = match params.nonempty("transformation") {
        Some(t) => Some(
            crate::admin::transformations::expand_named(state, req.cloud, t)
                .await?
                .0,
        ),
        None => None,
    };
    let incoming = incoming.as_deref();
    let (mut src, info, format) = if incoming.is_some() || converts {
        if kind != MediaKind::Image {
            return Err(ApiError::bad(format!(
                "Incoming transformations and format conversion apply to images only (this is a {} upload)",
                kind.as_str()
            )));
        }
        let converted = Box::pin(convert_incoming(
            state,
            src,
            incoming,
            wanted_format.as_deref(),
            format.as_deref(),
        ))
        .await?;
        let format = converted.1.format.clone();
        (converted.0, converted.1, format)
    } else {
        (src, info, format)
    };

    let eager_specs = eager::parse(state, req.cloud, &params).await?;
    let breakpoint_requests = breakpoints::parse(params.nonempty("responsive_breakpoints"))?;
    if !breakpoint_requests.is_empty() && kind != MediaKind::Image {
        return Err(ApiError::bad("Responsive breakpoints apply to images only"));
    }
    if !eager_specs.is_empty() {
        eager::check_source(kind.as_str(), format.as_deref())?;
    }
    let eager_notify = params
        .nonempty("eager_notification_url")
        .map(crate::notify::check_url)
        .transpose()?;

    let asset_folder_param = params
        .text("asset_folder")
        .map(|f| naming::clean_path("asset_folder", f))
        .transpose()?;
    let folder_param = params.nonempty("folder").map(str::to_string);
    let prefix_param = params
        .nonempty("public_id_prefix")
        .map(str::to_string)
        .or_else(|| {
            (opts.use_asset_folder_as_public_id_prefix && folder_param.is_none())
                .then(|| asset_folder_param.clone())
                .flatten()
                .filter(|f| !f.is_empty())
        });
    let public_id = match public_id {
        Some(id) => id,
        None => naming::compose(&naming::NameParts {
            public_id: params.text("public_id"),
            folder: folder_param.as_deref(),
            public_id_prefix: prefix_param.as_deref(),
            use_filename: opts.use_filename,
            unique_filename: opts.unique_filename,
            filename: split.as_ref().map(naming::borrowed),
            raw: kind == MediaKind::Raw,
        })?,
    };
    let asset_folder = match asset_folder_param {
        Some(f) => f,
        None => match &folder_param {
            Some(f) => naming::clean_path("folder", f)?,
            None => String::new(),
        },
    };
    let display_name = match params.nonempty("display_name") {
        Some(d) => d.to_string(),
        None if opts.use_filename_as_display_name && split.is_some() => {
            split.as_ref().map(|(s, _)| s.clone()).unwrap_or_default()
        }
        None => public_id
            .rsplit('/')
            .next()
            .unwrap_or(&public_id)
            .to_string(),
    };

    let mut extra = analyse(
        state,
        || Ok(Box::new(src.blob.reader()?) as Box<dyn std::io::Read + Send>),
        src.blob.size,
        kind,
        &params,
        format.as_deref(),
        (info.width, info.height),
    )
    .await?;
    if kind == MediaKind::Video {
        extra.extend(info.video_fields(src.blob.size as i64));
    }
    if let Some(m) = params.nonempty("access_mode") {
        if m != "public" && m != "authenticated" {
            return Err(ApiError::bad(format!(
                "Invalid access_mode {m}: must be public or authenticated"
            )));
        }
        extra.insert("access_mode".into(), json!(m));
    }
    if params.truthy("backup") {
        extra.insert("backup".into(), json!(true));
    }
    if let Some(ac) = params.nonempty("access_control") {
        let v: Json = serde_json::from_str(ac).map_err(|_| {
            ApiError::bad(format!(
                "Invalid access_control - {ac}: expected a JSON array"
            ))
        })?;
        extra.insert("access_control".into(), v);
    }
    if params.nonempty("moderation").is_some() {
        extra.insert(
            "moderation".into(),
            json!([{"kind": "manual", "status": "pending"}]),
        );
    }
    for name in ["face_coordinates", "custom_coordinates"] {
        if let Some(c) = params.nonempty(name) {
            extra.insert(name.into(), parse_coordinates(name, c)?);
        }
    }
    if let Some(r) = params.nonempty("regions") {
        let v: Json = serde_json::from_str(r)
            .map_err(|_| ApiError::bad(format!("Invalid regions - {r}: expected a JSON object")))?;
        extra.insert("regions".into(), v);
    }

    // A file without an MD5 yet is hashed now; content in memory is hashed with its row.
    if src.blob.path().is_some() {
        src.blob.ensure_md5().await?;
    }
    let now = state.now();
    // An upload sent to the store as it arrived is already there under its version's key.
    let version_id = match &src.blob.stored {
        Some(stored) => stored.version_id().to_string(),
        None => random_hex(16),
    };
    let blob_key = new_blob_key(req.cloud, &version_id);
    let record = AssetRecord {
        asset_id: crate::util::new_asset_id(),
        key: AssetKey {
            cloud: req.cloud.to_string(),
            resource_type: kind.as_str().to_string(),
            delivery_type: opts.delivery_type.as_str().to_string(),
            public_id,
        },
        version: now.max(1),
        version_id,
        format,
        width: if kind == MediaKind::Raw {
            None
        } else {
            info.width
        },
        height: if kind == MediaKind::Raw {
            None
        } else {
            info.height
        },
        pages: match kind {
            MediaKind::Image => info.pages.or(Some(1)),
            MediaKind::Video => Some(0),
            MediaKind::Raw => None,
        },
        bytes: src.blob.size as i64,
        etag: src.blob.md5.clone(),
        created_at: now,
        original_filename: if opts.discard_original_filename {
            None
        } else {
            split.map(|(stem, _)| stem)
        },
        display_name,
        asset_folder,
        tags: parse_tags(&params.items("tags")),
        context: params
            .text("context")
            .map(|c| parse_pairs(c, false))
            .unwrap_or_default(),
        metadata,
        extra,
        blob_key,
        api_key: caller.api_key().map(str::to_string),
    };
    let record = Box::pin(store(state, record, src.blob, opts.overwrite)).await?;
    remember_folders(state, &record.0.key.cloud, &record.0.asset_folder).await?;
    if record.1 == Outcome::Overwritten {
        // The derived versions of the previous original no longer apply.
        let gone = state
            .meta
            .delete_derived(&record.0.key.cloud, Some(&record.0.asset_id), &[])
            .await?;
        crate::admin::forget_derived_blobs(state, &record.0.key.cloud, &gone).await;
    }
    let signer = ResponseSigner::for_caller(state, req.cloud, caller)?;
    let (record, outcome) = record;
    let mut answer = UploadAnswer::new(state, record, &signer, outcome);
    if params.truthy("faces") {
        answer.insert("faces", faces_json(answer.record()));
    }
    if !breakpoint_requests.is_empty() {
        let list = Box::pin(breakpoints::compute(
            state,
            answer.record(),
            &breakpoint_requests,
            &signer,
        ))
        .await?;
        answer.insert("responsive_breakpoints", list);
    }
    if !eager_specs.is_empty() && outcome != Outcome::Existing {
        if params.truthy("eager_async") {
            eager::in_background(
                state.clone(),
                answer.record().clone(),
                eager_specs,
                signer.clone(),
                eager_notify,
                random_hex(32),
            );
        } else {
            let derived = Box::pin(eager::generate(state, answer.record(), &eager_specs)).await?;
            let list = eager::eager_json(state, answer.record(), &derived, &signer);
            answer.insert("eager", list);
        }
    }
    if opts.return_delete_token {
        // A token anyone holding it can use once, within ten minutes, to delete the asset.
        let token = random_hex(20);
        state
            .meta
            .put_delete_token(
                &token,
                &answer.record().key,
                state.now() + DELETE_TOKEN_SECS,
            )
            .await?;
        answer.insert("delete_token", json!(token));
    }
    let notification_url = params
        .nonempty("notification_url")
        .map(crate::notify::check_url)
        .transpose()?;
    // The notification is the answer and two fields more: made only when someone gets it.
    if notification_url.is_none() && !crate::triggers::any_for(state, req.cloud, "upload").await {
        return Ok(answer);
    }
    let mut payload = answer.to_map();
    payload.insert("notification_type".into(), json!("upload"));
    if let Some(batch) = params.nonempty(BATCH_ID) {
        payload.insert("batch_id".into(), json!(batch));
    }
    let payload = Json::Object(payload);
    let notify_signer = crate::notify::Signer {
        secret: signer.secret.clone(),
        algorithm: signer.algorithm,
    };
    if let Some(url) = notification_url {
        Box::pin(crate::notify::send(
            state,
            req.cloud,
            url,
            payload.clone(),
            notify_signer.clone(),
        ))
        .await;
    }
    Box::pin(crate::triggers::fire(
        state,
        req.cloud,
        "upload",
        &payload,
        &notify_signer,
    ))
    .await;
    Ok(answer)
}

/// Applies an incoming transformation (and/or converts to `wanted`) to an uploaded image,
/// returning the new file and what it is.
async fn convert_incoming(
    state: &AppState,
    src: Source,
    transformation: Option<&str>,
    wanted: Option<&str>,
    current: Option<&str>,
) -> ApiResult<(Source, media::MediaInfo)> {
    use crate::media::transform;
    let current = current.unwrap_or_default().to_string();
    if !transform::can_decode(&current) {
        return Err(ApiError::bad(format!(
            "Cannot transform {current} images (JPEG, PNG, GIF, WebP, BMP and TIFF can be)"
        )));
    }
    if let Some(w) = wanted {
        // AVIF is delivered, not stored: nephos could not transform an AVIF original.
        if !transform::OUTPUT_FORMATS.contains(&w) || w == "avif" {
            return Err(ApiError::bad(format!(
                "Parameter format ({w}) is not a format this server converts to (jpg, png, webp, gif, bmp, tiff)"
            )));
        }
    }
    let plan = match transformation {
        Some(t) => transform::parse(t).map_err(ApiError::bad)?,
        None => transform::Plan::default(),
    };
    let out_format = transform::output_format(&plan, wanted, &current);
    let max_pixels = state.limits.max_image_pixels;
    // The image is decoded in memory: its file may not be larger than its pixels allow.
    if src.blob.size > max_pixels.saturating_mul(8) {
        return Err(ApiError::bad(format!(
            "The image is too large to transform ({} bytes)",
            src.blob.size
        )));
    }
    let mut reader = src.blob.reader()?;
    let capacity = usize::try_from(src.blob.size).unwrap_or(0);
    let bytes = tokio::task::spawn_blocking(move || {
        let mut original = Vec::with_capacity(capacity);
        reader.read_to_end(&mut original).map_err(ApiError::from)?;
        transform::apply(&original, &plan, &out_format, max_pixels).map_err(ApiError::bad)
    })
    .await
    .map_err(ApiError::internal)??;
    let info = media::probe(std::io::Cursor::new(&bytes))?;
    let blob =
        crate::storage::temp::blob_from_bytes(&state.tmp_dir, bytes, state.limits.max_upload_bytes)
            .await
            .map_err(|e| ApiError::bad(e.to_string()))?;
    Ok((
        Source {
            blob,
            filename: src.filename,
        },
        info,
    ))
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// How an upload ended with respect to an earlier asset of the same public ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Overwritten,
    Existing,
}

/// Stores the blob, then the row; on any failure nothing half-done remains, and a replaced
/// blob is removed only after the new row is committed.
async fn store(
    state: &AppState,
    record: AssetRecord,
    blob: crate::storage::TempBlob,
    overwrite: bool,
) -> ApiResult<(AssetRecord, Outcome)> {
    if !overwrite {
        if let Some(existing) = state.meta.find_asset(&record.key).await? {
            return Ok((existing, Outcome::Existing));
        }
    }
    // Content held in memory without an MD5 yet is hashed where its row is written.
    let unhashed = match blob.bytes() {
        Some(content) if record.etag.is_empty() => Some(content.clone()),
        _ => None,
    };
    state.blobs.put(&record.blob_key, blob).await?;
    let blob_key = record.blob_key.clone();
    let saved = match unhashed {
        Some(content) => {
            state
                .meta
                .save_asset_hashing(record, content, overwrite)
                .await
        }
        None => state.meta.save_asset(record, overwrite).await,
    };
    let saved = match saved {
        Ok(s) => s,
        Err(e) => {
            let _ = state.blobs.delete(&blob_key).await;
            return Err(e.into());
        }
    };
    Ok(match saved {
        SaveOutcome::Created(r) => (r, Outcome::Created),
        SaveOutcome::Replaced { stored, previous } => {
            let backed_up = |r: &AssetRecord| r.extra.get("backup") == Some(&json!(true));
            if backed_up(&previous) || backed_up(&stored) {
                // With backups, the replaced version is kept (restorable, listed in `versions`).
                backup::keep_version(state, &previous).await?;
            } else if let Err(e) = state.blobs.delete(&previous.blob_key).await {
                tracing::warn!(key = %previous.blob_key, error = %e, "could not remove a replaced blob");
            }
            (*stored, Outcome::Overwritten)
        }
        SaveOutcome::Existing(r) => {
            let _ = state.blobs.delete(&blob_key).await;
            (r, Outcome::Existing)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_round_trip() {
        let m = parse_pairs("alt=x\\=y\\|z|caption=hi|empty=|n", false);
        assert_eq!(m["alt"], "x=y|z");
        assert_eq!(m["caption"], "hi");
        assert_eq!(m["empty"], "");
        assert_eq!(m["n"], "");
        let m = parse_pairs("caption=some caption|alt=alternative\\|alt\\=a", false);
        assert_eq!(m["alt"], "alternative|alt=a");
        let o = parse_pairs(r#"{"color":"red","n":3,"tags":["a","b"]}"#, true);
        assert_eq!(o["color"], "red");
        assert_eq!(o["n"], "3");
        assert_eq!(o["tags"], serde_json::json!(["a", "b"]));
        let m = parse_pairs("f1=v1|f2=[\"x\",\"y\\=z\"]", true);
        assert_eq!(m["f2"], json!(["x", "y=z"]));
    }

    #[test]
    fn content_ranges() {
        assert_eq!(
            parse_content_range("bytes 0-5242879/-1"),
            Some(ContentRange {
                start: 0,
                end: 5242879,
                total: None
            })
        );
        assert_eq!(
            parse_content_range("bytes 10-19/20"),
            Some(ContentRange {
                start: 10,
                end: 19,
                total: Some(20)
            })
        );
        assert_eq!(parse_content_range("bytes 5-4/20"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
        // Ranges near u64's end would wrap `end + 1`.
        assert_eq!(
            parse_content_range("bytes 18446744073709551614-18446744073709551615/-1"),
            None
        );
        assert_eq!(parse_content_range("bytes 0-1/18446744073709551615"), None);
    }

    #[test]
    fn tags_are_split_and_trimmed() {
        assert_eq!(
            parse_tags(&["a, b c,,d".into(), "e".into()]),
            vec!["a", "b c", "d", "e"]
        );
    }
}
