//! `generate_archive` (the SDKs' `create_archive`, `create_zip`, `download_archive_url`,
//! `download_zip_url`, `download_folder`): a ZIP or TGZ of assets chosen by tags, public IDs,
//! prefixes or fully qualified IDs, as stored or through `transformations`. `mode=create`
//! stores it as a raw asset and answers its details; `mode=download` answers the file.
//!
//! The archive is written to a temporary file, entry by entry (each original streamed to
//! disk first), so memory stays bounded whatever the assets' sizes.

use std::io::Write;
use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{json, Value as Json};

use super::{store_upload, Call, Source, UploadRequest};
use crate::db::{AssetKey, AssetRecord, ListQuery};
use crate::error::{ApiError, ApiResult};
use crate::form::{Params, Value};
use crate::kinds::ResourceType;
use crate::media::transform;
use crate::state::AppState;
use crate::storage::md5::Md5;
use crate::storage::temp::temp_path;
use crate::storage::TempBlob;

/// Files one archive holds at most (Cloudinary's limit).
const MAX_FILES: usize = 1000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Zip,
    Tgz,
}

impl Format {
    fn ext(self) -> &'static str {
        match self {
            Format::Zip => "zip",
            Format::Tgz => "tgz",
        }
    }

    fn mime(self) -> &'static str {
        match self {
            Format::Zip => "application/zip",
            Format::Tgz => "application/gzip",
        }
    }
}

/// A removed-on-drop temporary file.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn resource_types(rt: ResourceType) -> Vec<&'static str> {
    match rt {
        ResourceType::Auto | ResourceType::All => vec!["image", "video", "raw"],
        other => vec![other.as_str()],
    }
}

/// The assets the parameters choose, each once, in the order found.
async fn select(state: &AppState, call: &Call) -> ApiResult<Vec<AssetRecord>> {
    let p = &call.params;
    let ty = p.nonempty("type").unwrap_or("upload").to_string();
    let rts = resource_types(call.resource_type);
    let allow_missing = p.truthy("allow_missing");
    let mut out: Vec<AssetRecord> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut push = |rec: AssetRecord, out: &mut Vec<AssetRecord>| {
        // One past the limit is enough to refuse the archive.
        if out.len() <= MAX_FILES && seen.insert(rec.asset_id.clone()) {
            out.push(rec);
        }
    };
    let listed = |tag: Option<String>, prefix: Option<String>, rt: &str| ListQuery {
        cloud: call.cloud.clone(),
        resource_type: Some(rt.to_string()),
        delivery_type: Some(ty.clone()),
        tag,
        prefix,
        max_results: MAX_FILES as i64 + 1,
        ..Default::default()
    };
    let tags = p.items("tags");
    let prefixes = p.items("prefixes");
    let ids = p.items("public_ids");
    let qualified = p.items("fully_qualified_public_ids");
    if tags.len() + prefixes.len() > 100 || ids.len() + qualified.len() > MAX_FILES {
        return Err(ApiError::bad(
            "Too many tags, prefixes or public IDs for one archive",
        ));
    }
    if tags.is_empty() && prefixes.is_empty() && ids.is_empty() && qualified.is_empty() {
        return Err(ApiError::bad(
            "Must supply one of tags, public_ids, prefixes or fully_qualified_public_ids",
        ));
    }
    for rt in &rts {
        for tag in &tags {
            for rec in state
                .meta
                .list_assets(&listed(Some(tag.clone()), None, rt))
                .await?
                .0
            {
                push(rec, &mut out);
            }
        }
        for prefix in &prefixes {
            for rec in state
                .meta
                .list_assets(&listed(None, Some(prefix.clone()), rt))
                .await?
                .0
            {
                push(rec, &mut out);
            }
        }
    }
    let mut keys: Vec<AssetKey> = Vec::new();
    for id in &ids {
        let found = rts.iter().map(|rt| AssetKey {
            cloud: call.cloud.clone(),
            resource_type: rt.to_string(),
            delivery_type: ty.clone(),
            public_id: id.clone(),
        });
        keys.extend(found);
    }
    let mut wanted_ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    for q in &qualified {
        let mut parts = q.splitn(3, '/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(rt), Some(t), Some(id)) if !id.is_empty() => {
                keys.push(AssetKey {
                    cloud: call.cloud.clone(),
                    resource_type: rt.to_string(),
                    delivery_type: t.to_string(),
                    public_id: id.to_string(),
                });
                wanted_ids.push(id);
            }
            _ => {
                return Err(ApiError::bad(format!(
                    "Invalid fully_qualified_public_ids {q}: expected resource_type/type/public_id"
                )))
            }
        }
    }
    for key in keys {
        if let Some(rec) = state.meta.find_asset(&key).await? {
            push(rec, &mut out);
        }
    }
    if !allow_missing {
        for id in wanted_ids {
            if !out.iter().any(|r| r.key.public_id == id) {
                return Err(ApiError::NotFound(format!("Resource not found - {id}")));
            }
        }
    }
    if out.is_empty() {
        return Err(ApiError::NotFound(
            "No resources found for the archive".into(),
        ));
    }
    Ok(out)
}

/// An entry's file name: the public ID (or original file name) with the format.
fn entry_name(rec: &AssetRecord, format: Option<&str>, p: &Params) -> String {
    let base = if p.truthy("use_original_filename") {
        rec.original_filename
            .clone()
            .unwrap_or_else(|| rec.key.public_id.clone())
    } else {
        rec.key.public_id.clone()
    };
    let base = if p.truthy("flatten_folders") {
        base.rsplit('/').next().unwrap_or(&base).to_string()
    } else {
        base
    };
    match format {
        Some(f) if rec.key.resource_type != "raw" => format!("{base}.{f}"),
        _ => base,
    }
}

/// A name not used yet (`a.png`, `a_1.png`, …).
fn unique(name: String, used: &mut Vec<String>) -> String {
    let mut candidate = name.clone();
    let mut n = 1;
    while used.contains(&candidate) {
        candidate = match name.rsplit_once('.') {
            Some((stem, ext)) => format!("{stem}_{n}.{ext}"),
            None => format!("{name}_{n}"),
        };
        n += 1;
    }
    used.push(candidate.clone());
    candidate
}

async fn blob_to_file(state: &AppState, rec: &AssetRecord, dir: &Path) -> ApiResult<TempFile> {
    let mut stream = state
        .blobs
        .read(&rec.blob_key, None)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("Resource not found - {}", rec.key.public_id)))?;
    let file = TempFile(temp_path(dir));
    let mut out = tokio::fs::File::create(&file.0).await?;
    while let Some(chunk) = stream.next().await {
        tokio::io::AsyncWriteExt::write_all(&mut out, &chunk?).await?;
    }
    tokio::io::AsyncWriteExt::flush(&mut out).await?;
    Ok(file)
}

/// Writes entries to a ZIP or TGZ file.
enum Writer {
    Zip(Box<zip::ZipWriter<std::fs::File>>),
    Tgz(Box<tar::Builder<flate2::write::GzEncoder<std::fs::File>>>),
}

impl Writer {
    fn create(path: &Path, format: Format) -> std::io::Result<Writer> {
        let file = std::fs::File::create(path)?;
        Ok(match format {
            Format::Zip => Writer::Zip(Box::new(zip::ZipWriter::new(file))),
            Format::Tgz => Writer::Tgz(Box::new(tar::Builder::new(flate2::write::GzEncoder::new(
                file,
                flate2::Compression::default(),
            )))),
        })
    }

    fn add(&mut self, name: &str, source: &Path) -> std::io::Result<()> {
        let mut input = std::fs::File::open(source)?;
        match self {
            Writer::Zip(z) => {
                let options = zip::write::SimpleFileOptions::default()
                    .compression_method(zip::CompressionMethod::Deflated)
                    .large_file(input.metadata()?.len() >= u32::MAX as u64);
                z.start_file(name, options).map_err(std::io::Error::other)?;
                std::io::copy(&mut input, z.as_mut())?;
            }
            Writer::Tgz(t) => {
                let mut h = tar::Header::new_gnu();
                h.set_size(input.metadata()?.len());
                h.set_mode(0o644);
                h.set_mtime(0);
                t.append_data(&mut h, name, &mut input)?;
            }
        }
        Ok(())
    }

    fn finish(self) -> std::io::Result<()> {
        match self {
            Writer::Zip(z) => {
                z.finish().map_err(std::io::Error::other)?.flush()?;
            }
            Writer::Tgz(t) => {
                t.into_inner()?.finish()?.flush()?;
            }
        }
        Ok(())
    }
}

/// What [`build`] made: the file, its size and MD5, the numbers of files and assets.
type Built = (TempFile, u64, String, usize, usize);

/// Builds the archive.
async fn build(state: &AppState, call: &Call, format: Format) -> ApiResult<Built> {
    let p = &call.params;
    let assets = select(state, call).await?;
    let transformations: Vec<String> = p
        .nonempty("transformations")
        .map(|t| {
            t.split('|')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let mut plans = Vec::new();
    for t in &transformations {
        let (body, fmt) = match t.rsplit_once('/') {
            Some((b, f)) if transform::OUTPUT_FORMATS.contains(&f) => (b.to_string(), Some(f)),
            _ => (t.clone(), None),
        };
        let plan = transform::parse(&body)
            .map_err(|m| ApiError::bad(format!("Invalid transformations - {m}")))?;
        plans.push((t.clone(), plan, fmt.map(str::to_string)));
    }
    let files = assets.len() * plans.len().max(1);
    if files > MAX_FILES {
        return Err(ApiError::bad(format!(
            "Too many files for one archive ({files}; at most {MAX_FILES})"
        )));
    }
    let total: u64 = assets.iter().map(|a| a.bytes.max(0) as u64).sum();
    if total > state.limits.max_file_bytes {
        return Err(ApiError::bad(format!(
            "The archive would be too large ({total} bytes; at most {})",
            state.limits.max_file_bytes
        )));
    }
    let out = TempFile(temp_path(&state.tmp_dir));
    let mut writer = {
        let path = out.0.clone();
        tokio::task::spawn_blocking(move || Writer::create(&path, format))
            .await
            .map_err(ApiError::internal)??
    };
    let mut used = Vec::new();
    let mut count = 0usize;
    let mut written = 0u64;
    for rec in &assets {
        if rec.key.resource_type == "image"
            && !plans.is_empty()
            && rec.bytes.max(0) as u64 > state.limits.max_image_pixels.saturating_mul(8)
        {
            return Err(ApiError::bad(format!(
                "{} is too large to transform",
                rec.key.public_id
            )));
        }
        let original = blob_to_file(state, rec, &state.tmp_dir).await?;
        // Entry names and files; `made` holds the transformed files until they are added.
        let mut entries: Vec<(String, PathBuf)> = Vec::new();
        let mut made: Vec<TempFile> = Vec::new();
        if plans.is_empty() {
            let name = unique(entry_name(rec, rec.format.as_deref(), p), &mut used);
            entries.push((name, original.0.clone()));
        } else if rec.key.resource_type == "image"
            && transform::can_decode(rec.format.as_deref().unwrap_or(""))
        {
            for (t, plan, fmt) in &plans {
                let source = rec.format.clone().unwrap_or_default();
                let out_format = transform::output_format(plan, fmt.as_deref(), &source);
                let (src, plan, of) = (original.0.clone(), plan.clone(), out_format.clone());
                let max_pixels = state.limits.max_image_pixels;
                let bytes = tokio::task::spawn_blocking(move || {
                    let data = std::fs::read(&src).map_err(|e| e.to_string())?;
                    transform::apply(&data, &plan, &of, max_pixels)
                })
                .await
                .map_err(ApiError::internal)?
                .map_err(|m| ApiError::bad(format!("Transformation {t} failed: {m}")))?;
                written += bytes.len() as u64;
                if written > state.limits.max_file_bytes {
                    return Err(ApiError::bad("The archive would be too large"));
                }
                let file = TempFile(temp_path(&state.tmp_dir));
                tokio::fs::write(&file.0, &bytes).await?;
                let name = entry_name(rec, Some(&out_format), p);
                let name = if p.truthy("skip_transformation_name")
                    || p.truthy("flatten_transformations")
                {
                    name
                } else {
                    format!("{}/{name}", t.replace('/', "_"))
                };
                entries.push((unique(name, &mut used), file.0.clone()));
                made.push(file);
            }
        } else if !p.truthy("allow_missing") {
            return Err(ApiError::bad(format!(
                "Transformations apply to images only ({} is a {} asset)",
                rec.key.public_id, rec.key.resource_type
            )));
        }
        for (name, path) in entries {
            writer = tokio::task::spawn_blocking(move || {
                writer.add(&name, &path)?;
                Ok::<_, std::io::Error>(writer)
            })
            .await
            .map_err(ApiError::internal)??;
            count += 1;
        }
        drop((original, made));
    }
    let path = out.0.clone();
    let (size, md5) = tokio::task::spawn_blocking(move || {
        writer.finish()?;
        let mut file = std::fs::File::open(&path)?;
        let mut h = Md5::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut size = 0u64;
        loop {
            let n = std::io::Read::read(&mut file, &mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            size += n as u64;
        }
        Ok::<_, std::io::Error>((size, hex::encode(h.finalize())))
    })
    .await
    .map_err(ApiError::internal)??;
    Ok((out, size, md5, count, assets.len()))
}

fn format_of(p: &Params) -> ApiResult<Format> {
    match p.nonempty("target_format") {
        None | Some("zip") => Ok(Format::Zip),
        Some("tgz") => Ok(Format::Tgz),
        Some(other) => Err(ApiError::bad(format!(
            "Invalid target_format {other}: must be zip or tgz"
        ))),
    }
}

/// `POST|GET …/generate_archive`.
pub async fn generate(state: &AppState, call: Call) -> ApiResult<Response> {
    let p = &call.params;
    if let Some(exp) = p.nonempty("expires_at") {
        let exp: i64 = exp
            .parse()
            .map_err(|_| ApiError::bad(format!("Invalid expires_at {exp}")))?;
        if exp < state.now() {
            return Err(ApiError::bad("The archive link has expired (expires_at)"));
        }
    }
    if p.truthy("async") {
        return Err(ApiError::bad(
            "Parameter async is not supported by generate_archive on this server",
        ));
    }
    let format = format_of(p)?;
    let mode = p.nonempty("mode").unwrap_or("create");
    if !["create", "download", "create_and_download"].contains(&mode) {
        return Err(ApiError::bad(format!(
            "Invalid mode {mode}: must be create, download or create_and_download"
        )));
    }
    let (file, size, md5, file_count, resource_count) = build(state, &call, format).await?;
    if mode == "download" {
        return download(file, size, format);
    }
    let public_id = match p.nonempty("target_public_id") {
        Some(id) => super::naming::clean_path("target_public_id", id)?,
        None => format!("{}.{}", crate::util::random_hex(10), format.ext()),
    };
    // The stored copy takes the file over; the download (if any) reads it back from the store.
    let path = file.0.clone();
    std::mem::forget(file);
    let blob = TempBlob::adopt(path, size, md5);
    let mut params = Params::default();
    params.set("public_id", Value::Text(public_id));
    params.set("overwrite", Value::Text("true".into()));
    let tags = p.items("target_tags");
    if !tags.is_empty() {
        params.set("tags", Value::Text(tags.join(",")));
    }
    if let Some(f) = p.nonempty("target_asset_folder") {
        params.set("asset_folder", Value::Text(f.to_string()));
    }
    let req = UploadRequest {
        cloud: &call.cloud,
        resource_type: "raw",
        content_range: None,
        upload_id: None,
    };
    let src = Source {
        blob,
        filename: None,
    };
    let mut answer = store_upload(state, &req, &call.caller, params, src, None).await?;
    answer["resource_count"] = json!(resource_count);
    answer["file_count"] = json!(file_count);
    if mode == "create_and_download" {
        let key = AssetKey {
            cloud: call.cloud.clone(),
            resource_type: "raw".into(),
            delivery_type: "upload".into(),
            public_id: answer["public_id"].as_str().unwrap_or("").to_string(),
        };
        let rec = state
            .meta
            .find_asset(&key)
            .await?
            .ok_or_else(|| ApiError::internal("stored archive vanished"))?;
        let file = blob_to_file(state, &rec, &state.tmp_dir).await?;
        return download(file, size, format);
    }
    Ok(axum::Json::<Json>(answer).into_response())
}

fn download(file: TempFile, size: u64, format: Format) -> ApiResult<Response> {
    // The open file keeps its content readable after the name is removed.
    let handle = std::fs::File::open(&file.0)?;
    drop(file);
    let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(handle));
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.mime()),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"archive.{}\"",
        format.ext()
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}
