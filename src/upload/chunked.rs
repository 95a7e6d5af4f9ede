//! Cloudinary's chunked uploads: every part is a complete, separately authenticated upload
//! request with `Content-Range: bytes START-END/TOTAL` (TOTAL may be `-1` until the last part)
//! and `X-Unique-Upload-Id` (or, in the legacy form, keyed by `public_id`).
//!
//! Parts are kept as files under `<data_dir>/chunks/<session>/`, recorded in the metadata
//! database under the session's lock, and joined with in-kernel copies when the ranges cover
//! the whole file. The MD5 etag runs along with parts that arrive in order; otherwise the
//! assembled file is read once to hash it.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};
use serde_json::{json, Map, Value as Json};

use super::{naming, ContentRange, Source, UploadRequest};
use crate::auth::Caller;
use crate::db::{ChunkDecision, ChunkPart, ChunkSession};
use crate::error::{ApiError, ApiResult};
use crate::form::{FilePart, Params};
use crate::state::AppState;
use crate::storage::{Hashing, TempBlob};
use crate::util::random_hex;

/// Every part but the last must have at least this many bytes (5 MiB).
pub const MIN_PART_BYTES: u64 = 5 * 1024 * 1024;
/// A claimed assembly older than this is considered abandoned (its process died).
const ASSEMBLY_TIMEOUT_SECS: i64 = 600;

/// The session key of a chunked upload.
pub fn session_id(cloud: &str, upload_id: Option<&str>, public_id: Option<&str>) -> String {
    let source = match upload_id {
        Some(id) => format!("{cloud}\nid\n{id}"),
        None => format!("{cloud}\npublic_id\n{}", public_id.unwrap_or("")),
    };
    hex::encode(sha1::Sha1::digest(source.as_bytes()))
}

/// Whether a Content-Range describes a whole file in one request.
pub fn is_whole(r: &ContentRange, part_len: Option<u64>) -> bool {
    r.start == 0 && r.total == Some(r.end + 1) && part_len.is_none_or(|l| l == r.end + 1)
}

/// How the body of a part is hashed while it streams in: the first part starts a fresh MD5,
/// a part that continues the in-order prefix continues it; other parts are not hashed.
/// Returns the mode and whether it extends the running hash.
pub fn hashing_for(
    state: &AppState,
    cloud: &str,
    upload_id: Option<&str>,
    r: &ContentRange,
) -> (Hashing, bool) {
    if r.start == 0 {
        return (Hashing::Fresh, true);
    }
    let Some(id) = upload_id else {
        return (Hashing::Off, false);
    };
    let sid = session_id(cloud, Some(id), None);
    let map = state.chunk_hashes.lock().unwrap_or_else(|e| e.into_inner());
    match map.get(&sid) {
        Some((next, md5)) if *next == r.start => (Hashing::Continue(md5.clone()), true),
        _ => (Hashing::Off, false),
    }
}

/// Bytes covered by the union of the parts' ranges.
fn covered(parts: &[ChunkPart]) -> i64 {
    let mut ranges: Vec<(i64, i64)> = parts.iter().map(|p| (p.start, p.end)).collect();
    ranges.sort();
    let mut total = 0;
    let mut cur: Option<(i64, i64)> = None;
    for (s, e) in ranges {
        match cur {
            Some((cs, ce)) if s <= ce + 1 => cur = Some((cs, ce.max(e))),
            Some((cs, ce)) => {
                total += ce - cs + 1;
                cur = Some((s, e));
            }
            None => cur = Some((s, e)),
        }
    }
    if let Some((cs, ce)) = cur {
        total += ce - cs + 1;
    }
    total
}

/// Whether `parts` cover `0..total` and include the part ending the file.
fn complete(parts: &[ChunkPart], total: Option<i64>) -> bool {
    match total {
        Some(t) => {
            parts.iter().any(|p| p.end + 1 == t)
                && parts.iter().all(|p| p.end < t)
                && parts.iter().any(|p| p.start == 0)
                && covered(parts) == t
        }
        None => false,
    }
}

/// Whether two parts hold the same bytes where their ranges overlap.
fn overlap_agrees(
    dir: &Path,
    old: &ChunkPart,
    new: &ChunkPart,
    new_path: &Path,
) -> std::io::Result<bool> {
    let start = old.start.max(new.start);
    let end = old.end.min(new.end);
    if start > end {
        return Ok(true);
    }
    let len = (end - start + 1) as u64;
    let mut a = std::fs::File::open(dir.join(&old.file))?;
    let mut b = std::fs::File::open(new_path)?;
    a.seek(SeekFrom::Start((start - old.start) as u64))?;
    b.seek(SeekFrom::Start((start - new.start) as u64))?;
    let (mut ba, mut bb) = (vec![0u8; 256 * 1024], vec![0u8; 256 * 1024]);
    let mut left = len;
    while left > 0 {
        let n = left.min(ba.len() as u64) as usize;
        a.read_exact(&mut ba[..n])?;
        b.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
        left -= n as u64;
    }
    Ok(true)
}

/// A part being recorded, as the rules see it.
struct Incoming<'a> {
    part: &'a ChunkPart,
    /// The size the part's Content-Range tells (None for `-1`).
    total: Option<i64>,
    identity: &'a str,
    /// The session's folder and the part's file in it.
    dir: &'a Path,
    path: &'a Path,
    now: i64,
}

/// The decision about a new part, taken under the session lock.
fn decide(session: &ChunkSession, parts: &[ChunkPart], inc: &Incoming<'_>) -> ChunkDecision {
    let (new, new_total, identity, dir, new_path, now) = (
        inc.part,
        inc.total,
        inc.identity,
        inc.dir,
        inc.path,
        inc.now,
    );
    if session.identity != identity {
        return ChunkDecision::Reject(
            "This chunked upload was started with another API key or upload preset".into(),
        );
    }
    if let (Some(old), Some(new_t)) = (session.total, new_total) {
        if old != new_t {
            return ChunkDecision::Reject(format!(
                "Inconsistent total size in Content-Range: the upload is {old} bytes, this part says {new_t}"
            ));
        }
    }
    let total = session.total.or(new_total);
    if let Some(t) = total {
        if let Some(p) = parts.iter().find(|p| p.end >= t) {
            return ChunkDecision::Reject(format!(
                "Inconsistent total size in Content-Range: bytes {}-{} were received for a {t}-byte upload",
                p.start, p.end
            ));
        }
    }
    let mut duplicate = false;
    for old in parts
        .iter()
        .filter(|p| p.start <= new.end && new.start <= p.end)
    {
        match overlap_agrees(dir, old, new, new_path) {
            Ok(true) => {
                if old.start == new.start && old.end == new.end {
                    duplicate = true;
                }
            }
            Ok(false) => {
                return ChunkDecision::Reject(format!(
                    "Part bytes {}-{} overlaps bytes {}-{} received earlier with different content",
                    new.start, new.end, old.start, old.end
                ))
            }
            Err(e) => {
                return ChunkDecision::Reject(format!("Could not compare overlapping parts: {e}"))
            }
        }
    }
    let mut after: Vec<ChunkPart> = parts.to_vec();
    if !duplicate {
        after.push(new.clone());
    }
    let claimable = session.state == "open" || now - session.state_since > ASSEMBLY_TIMEOUT_SECS;
    let claim = claimable && complete(&after, total);
    if duplicate {
        ChunkDecision::Duplicate { claim }
    } else {
        ChunkDecision::Accept {
            total: new_total,
            claim,
        }
    }
}

fn session_dir(state: &AppState, session_id: &str) -> PathBuf {
    state.chunk_dir.join(session_id)
}

/// Joins the parts into one temporary file (in-kernel copies where the platform has them).
fn assemble(dir: &Path, parts: &[ChunkPart], total: u64, out_path: &Path) -> std::io::Result<()> {
    let mut sorted = parts.to_vec();
    sorted.sort_by_key(|p| (p.start, p.end));
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out_path)?;
    let mut offset: u64 = 0;
    for p in &sorted {
        let (start, end) = (p.start as u64, p.end as u64);
        if end < offset {
            continue;
        }
        if start > offset {
            return Err(std::io::Error::other(format!("gap before byte {start}")));
        }
        let mut f = std::fs::File::open(dir.join(&p.file))?;
        f.seek(SeekFrom::Start(offset - start))?;
        let want = end - offset + 1;
        let copied = std::io::copy(&mut f.take(want), &mut out)?;
        if copied != want {
            return Err(std::io::Error::other(format!(
                "part {start}-{end} is shorter than recorded"
            )));
        }
        offset = end + 1;
    }
    if offset != total {
        return Err(std::io::Error::other(format!(
            "assembled {offset} bytes of {total}"
        )));
    }
    out.sync_data()?;
    Ok(())
}

fn md5_of_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut md5 = Md5::new();
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        md5.update(&buf[..n]);
    }
    Ok(hex::encode(md5.finalize()))
}

/// Removes a session's rows, files and running hash.
pub async fn discard_session(state: &AppState, session_id: &str) {
    if let Err(e) = state.meta.delete_chunk_session(session_id).await {
        tracing::warn!(session = session_id, error = %e, "could not delete an upload session");
    }
    let _ = tokio::fs::remove_dir_all(session_dir(state, session_id)).await;
    state
        .chunk_hashes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(session_id);
}

/// Everything a part request brings.
pub struct PartRequest<'a> {
    pub req: &'a UploadRequest<'a>,
    pub caller: &'a Caller,
    pub params: Params,
    pub file: Option<FilePart>,
    pub range: ContentRange,
    /// Whether the part's body extended the running MD5 of the session.
    pub hashed_in_order: bool,
}

/// Handles one part of a chunked upload.
pub async fn part(state: &AppState, p: PartRequest<'_>) -> ApiResult<Json> {
    let PartRequest {
        req,
        caller,
        params,
        file,
        range,
        hashed_in_order,
    } = p;
    let file = file.ok_or_else(|| {
        ApiError::bad("Chunked uploads need the file bytes in a multipart file part")
    })?;
    let len = file.blob.size;
    if len != range.end - range.start + 1 {
        return Err(ApiError::bad(format!(
            "Invalid Content-Range header - bytes {}-{}: the part has {len} bytes",
            range.start, range.end
        )));
    }
    if let Some(t) = range.total {
        if range.end >= t {
            return Err(ApiError::bad(format!(
                "Invalid Content-Range header - bytes {}-{}/{t}: the range ends after the file",
                range.start, range.end
            )));
        }
        if t > state.limits.max_file_bytes {
            return Err(ApiError::bad(format!(
                "File size too large. Got {t}. Maximum is {}.",
                state.limits.max_file_bytes
            )));
        }
    }
    if range.end + 1 > state.limits.max_file_bytes {
        return Err(ApiError::bad(format!(
            "File size too large. Got {}. Maximum is {}.",
            range.end + 1,
            state.limits.max_file_bytes
        )));
    }
    let is_final = range.total.is_some_and(|t| range.end + 1 == t);
    if !is_final && len < MIN_PART_BYTES {
        return Err(ApiError::bad(
            "All parts except EOF-chunk must be larger than 5mb",
        ));
    }

    // The session: by upload id, or (legacy) by public ID.
    let explicit_id = params.nonempty("public_id").map(str::to_string);
    let delivery_type = params.nonempty("type").unwrap_or("upload").to_string();
    let decided = match (&explicit_id, req.resource_type) {
        (Some(id), _) => Some(id.clone()),
        (None, "auto") => None,
        (None, rt) => Some(naming::compose(&naming::NameParts {
            public_id: None,
            folder: params.nonempty("folder"),
            public_id_prefix: params.nonempty("public_id_prefix"),
            use_filename: params.flag("use_filename")?.unwrap_or(false),
            unique_filename: params.flag("unique_filename")?.unwrap_or(true),
            filename: Some(naming::split_filename(&file.filename))
                .filter(|_| !file.filename.is_empty()),
            raw: rt == "raw",
        })?),
    };
    let (sid, upload_id) = match req.upload_id {
        Some(id) => (session_id(req.cloud, Some(id), None), id.to_string()),
        None => {
            let key = match (&explicit_id, range.start) {
                (Some(id), _) => id.clone(),
                (None, 0) => decided
                    .clone()
                    .ok_or_else(|| ApiError::missing("public_id"))?,
                (None, _) => return Err(ApiError::missing("public_id")),
            };
            (
                session_id(req.cloud, None, Some(&key)),
                format!("public_id:{key}"),
            )
        }
    };
    let identity = match caller {
        Caller::Key { account, .. } => format!("key:{}", account.api_key),
        Caller::Unsigned { preset } => format!("preset:{preset}"),
    };
    let now = state.now();
    let dir = session_dir(state, &sid);
    tokio::fs::create_dir_all(&dir).await?;
    let file_name = format!("{}-{}-{}", range.start, range.end, random_hex(6));
    let part_path = dir.join(&file_name);
    let filename = Some(file.filename.clone()).filter(|f| !f.is_empty());
    let md5_state = file.blob.md5_state.clone();
    let part_md5 = file.blob.md5.clone();
    let persist_to = part_path.clone();
    let blob = file.blob;
    tokio::task::spawn_blocking(move || blob.persist(&persist_to))
        .await
        .map_err(ApiError::internal)??;

    let new_part = ChunkPart {
        start: range.start as i64,
        end: range.end as i64,
        md5: part_md5,
        file: file_name,
    };
    let init = ChunkSession {
        session_id: sid.clone(),
        cloud: req.cloud.to_string(),
        upload_id,
        resource_type: req.resource_type.to_string(),
        identity: identity.clone(),
        total: range.total.map(|t| t as i64),
        public_id: decided.clone(),
        filename,
        state: "open".into(),
        state_since: now,
        created_at: now,
        updated_at: now,
    };
    let new_total = range.total.map(|t| t as i64);
    let rules_dir = dir.clone();
    let rules_part = new_part.clone();
    let rules_path = part_path.clone();
    let rules = move |s: &ChunkSession, parts: &[ChunkPart]| {
        let incoming = Incoming {
            part: &rules_part,
            total: new_total,
            identity: &identity,
            dir: &rules_dir,
            path: &rules_path,
            now,
        };
        decide(s, parts, &incoming)
    };
    let outcome = state
        .meta
        .record_chunk(&init, &new_part, state.limits.max_open_uploads, &rules)
        .await;
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            let _ = tokio::fs::remove_file(&part_path).await;
            return Err(e.into());
        }
    };
    let claim = match &outcome.decision {
        ChunkDecision::Reject(msg) => {
            let _ = tokio::fs::remove_file(&part_path).await;
            return Err(ApiError::bad(msg.clone()));
        }
        ChunkDecision::Duplicate { claim } => {
            let _ = tokio::fs::remove_file(&part_path).await;
            *claim
        }
        ChunkDecision::Accept { claim, .. } => {
            if hashed_in_order {
                if let Some(md5) = md5_state {
                    let mut map = state.chunk_hashes.lock().unwrap_or_else(|e| e.into_inner());
                    let next = map.get(&sid).map(|(n, _)| *n).unwrap_or(0);
                    if next == range.start {
                        map.insert(sid.clone(), (range.end + 1, md5));
                    }
                }
            }
            *claim
        }
    };
    let session = &outcome.session;
    let echo_id = explicit_id.clone().or_else(|| session.public_id.clone());
    if !claim {
        let mut m = Map::new();
        m.insert("done".into(), json!(false));
        m.insert("bytes".into(), json!(covered(&outcome.parts)));
        if let Some(id) = &echo_id {
            m.insert("public_id".into(), json!(id));
        }
        if req.resource_type != "auto" {
            m.insert("resource_type".into(), json!(req.resource_type));
        }
        m.insert("kind".into(), json!(delivery_type));
        return Ok(Json::Object(m));
    }

    // This request completes the upload: assemble, hash, and run the normal pipeline.
    let total = session.total.unwrap_or(0) as u64;
    let out_path = crate::storage::temp::temp_path(&state.tmp_dir);
    let parts = outcome.parts.clone();
    let (adir, apath) = (dir.clone(), out_path.clone());
    let running = {
        let mut map = state.chunk_hashes.lock().unwrap_or_else(|e| e.into_inner());
        match map.remove(&sid) {
            Some((next, md5)) if next == total => Some(hex::encode(md5.finalize())),
            _ => None,
        }
    };
    let assembled = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        assemble(&adir, &parts, total, &apath)?;
        match running {
            Some(md5) => Ok(md5),
            None => md5_of_file(&apath),
        }
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
    let md5 = match assembled {
        Ok(md5) => md5,
        Err(e) => {
            let _ = tokio::fs::remove_file(&out_path).await;
            let _ = state.meta.reopen_chunk_session(&sid, state.now()).await;
            return Err(ApiError::internal(format!(
                "could not assemble the chunked upload: {e}"
            )));
        }
    };
    let src = Source {
        blob: TempBlob::adopt(out_path, total, md5),
        filename: session
            .filename
            .clone()
            .or_else(|| Some(file.filename.clone()).filter(|f| !f.is_empty())),
    };
    let public_id = match (&explicit_id, &session.public_id) {
        (Some(e), Some(d)) if e == d => Some(d.clone()),
        (None, Some(d)) => Some(d.clone()),
        _ => None,
    };
    let result = super::store_upload(state, req, caller, params, src, public_id).await;
    match result {
        Ok(Json::Object(mut m)) => {
            discard_session(state, &sid).await;
            m.insert("done".into(), json!(true));
            Ok(Json::Object(m))
        }
        Ok(other) => Ok(other),
        Err(e @ ApiError::Internal(_)) => {
            let _ = state.meta.reopen_chunk_session(&sid, state.now()).await;
            Err(e)
        }
        Err(e) => {
            discard_session(state, &sid).await;
            Err(e)
        }
    }
}

/// Removes sessions not touched within the configured time, part files no session knows
/// (left by a crash between the file and its row) and stale temporary files.
pub async fn sweep(state: &AppState) -> anyhow::Result<usize> {
    let ttl = state.limits.upload_session_ttl_secs;
    let now = state.now();
    let mut removed = 0;
    for sid in state.meta.stale_chunk_sessions(now - ttl).await? {
        discard_session(state, &sid).await;
        removed += 1;
    }
    let known: std::collections::HashSet<String> =
        state.meta.chunk_part_files().await?.into_iter().collect();
    let chunk_dir = state.chunk_dir.clone();
    let tmp_dir = state.tmp_dir.clone();
    let max_age = std::time::Duration::from_secs(ttl.max(0) as u64);
    removed += tokio::task::spawn_blocking(move || -> std::io::Result<usize> {
        let mut n = 0;
        let old = |p: &Path, age: std::time::Duration| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .map(|t| t.elapsed().unwrap_or_default() > age)
                .unwrap_or(false)
        };
        if let Ok(dirs) = std::fs::read_dir(&chunk_dir) {
            for d in dirs.flatten() {
                let path = d.path();
                let Ok(files) = std::fs::read_dir(&path) else {
                    continue;
                };
                let mut left = 0;
                for f in files.flatten() {
                    let name = f.file_name().to_string_lossy().into_owned();
                    if !known.contains(&name) && old(&f.path(), max_age) {
                        std::fs::remove_file(f.path())?;
                        n += 1;
                    } else {
                        left += 1;
                    }
                }
                if left == 0 && old(&path, std::time::Duration::from_secs(60)) {
                    let _ = std::fs::remove_dir(&path);
                }
            }
        }
        // Temporary files nobody has written to for a while belong to no live request.
        if let Ok(files) = std::fs::read_dir(&tmp_dir) {
            for f in files.flatten() {
                if old(&f.path(), std::time::Duration::from_secs(15 * 60)) {
                    std::fs::remove_file(f.path())?;
                    n += 1;
                }
            }
        }
        Ok(n)
    })
    .await??;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(start: i64, end: i64) -> ChunkPart {
        ChunkPart {
            start,
            end,
            md5: String::new(),
            file: String::new(),
        }
    }

    #[test]
    fn coverage_and_completion() {
        assert_eq!(covered(&[part(0, 9), part(5, 14), part(20, 29)]), 25);
        assert!(complete(&[part(10, 19), part(0, 9)], Some(20)));
        assert!(!complete(&[part(0, 9)], Some(20)));
        assert!(!complete(&[part(0, 9), part(11, 19)], Some(20)));
        assert!(!complete(&[part(0, 19)], None));
    }

    #[test]
    fn session_ids_separate_clouds_and_forms() {
        assert_ne!(
            session_id("a", Some("x"), None),
            session_id("b", Some("x"), None)
        );
        assert_ne!(
            session_id("a", Some("x"), None),
            session_id("a", None, Some("x"))
        );
        assert_eq!(session_id("a", Some("x"), None).len(), 40);
    }
}
