//! Cloudinary's chunked uploads: every part is a complete, separately authenticated upload
//! request with `Content-Range: bytes START-END/TOTAL` (TOTAL may be `-1` until the last part)
//! and `X-Unique-Upload-Id` (or, in the legacy form, keyed by `public_id`).
//!
//! Every part ends up at its offset in one data file per session (`<data_dir>/chunks/<session>/
//! data`), which becomes the stored file when the ranges cover it: no join, no second write.
//! When the fields before the file part authenticate the request (the SDKs send every field
//! first), the part streams straight into place ([`Placement`]); otherwise it is staged and
//! copied into place once checked. Parts are recorded in the metadata database under the
//! session's lock. A background MD5 follows the data file as its in-order prefix grows, so
//! hashing overlaps the transfer of later parts; a process that did not see the earlier parts
//! (a restart, another process) hashes them from the file at completion.
//!
//! When several instances share the database (PostgreSQL), any of them may receive any part:
//! each part is also kept in the blob store (`<cloud>/chunks/<session>/<start>-<end>.<tag>`)
//! before it is recorded, with the instance that wrote it and the tag named in its record. The instance that
//! completes the upload (or checks an overlapping part) first copies the parts other instances
//! received from the store into its own data file; the part objects go with the session.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde_json::{json, Map, Value as Json};
use sha1::Digest;

use super::{naming, ContentRange, Source, UploadRequest};
use crate::auth::Caller;
use crate::db::{ChunkDecision, ChunkPart, ChunkSession};
use crate::error::{ApiError, ApiResult};
use crate::form::{FilePart, FilePlacement, Params, Placed};
use crate::state::AppState;
use crate::storage::TempBlob;

/// Every part but the last must have at least this many bytes (5 MiB).
pub const MIN_PART_BYTES: u64 = 5 * 1024 * 1024;
/// A claimed assembly older than this is considered abandoned (its process died).
const ASSEMBLY_TIMEOUT_SECS: i64 = 600;
/// The name of a session's data file (also recorded as each part's file).
const DATA_FILE: &str = "data";

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

fn identity_of(caller: &Caller) -> String {
    match caller {
        Caller::Key { account, .. } => format!("key:{}", account.api_key),
        Caller::Unsigned { preset } => format!("preset:{preset}"),
    }
}

fn session_dir(state: &AppState, session_id: &str) -> PathBuf {
    state.chunk_dir.join(session_id)
}

/// Whether parts are also kept in the blob store, for the other instances sharing the
/// database.
fn shared(state: &AppState) -> bool {
    state.meta.shared()
}

/// What a new part's record names as its file: the data file of the instance that wrote it,
/// and a tag of its own (its kept copy's key: no two requests share one).
fn written_here(state: &AppState) -> String {
    format!(
        "{DATA_FILE}@{}.{}",
        state.instance,
        crate::util::random_hex(6)
    )
}

/// Whether a recorded part was written into this instance's data file (always, unless
/// instances share the database).
fn is_local(state: &AppState, part: &ChunkPart) -> bool {
    !shared(state)
        || part
            .file
            .strip_prefix(DATA_FILE)
            .and_then(|f| f.strip_prefix('@'))
            .is_some_and(|tag| tag.split('.').next() == Some(state.instance.as_str()))
}

/// The blob-store key of a part kept for the other instances (its record's tag in the name).
fn part_key(cloud: &str, session_id: &str, part: &ChunkPart) -> String {
    let tag = part.file.rsplit('@').next().unwrap_or("");
    format!(
        "{cloud}/chunks/{session_id}/{}-{}.{tag}",
        part.start, part.end
    )
}

/// The session a kept part's key belongs to, for the orphan sweep.
pub fn kept_part_session(key: &str) -> Option<&str> {
    let mut segments = key.split('/');
    let (_cloud, kind, session) = (segments.next()?, segments.next()?, segments.next()?);
    (kind == "chunks").then_some(session)
}

/// Sends bytes `start..start + len` of the data file to the blob store under `key`.
async fn store_part(
    state: &AppState,
    key: &str,
    data: &Path,
    start: u64,
    len: u64,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = tokio::fs::File::open(data).await?;
    file.seek(SeekFrom::Start(start)).await?;
    let mut input = file.take(len);
    if let Some(sink) = state.blobs.sink(key, Some(len)).await? {
        return crate::storage::send_all(sink, input).await.map(|_| ());
    }
    // A store that takes finished files: the range copied into one.
    let mut writer = crate::storage::BlobWriter::create_with(
        &state.tmp_dir,
        u64::MAX,
        crate::storage::Hashing::Off,
    )
    .await?;
    loop {
        let chunk = crate::storage::next_chunk(&mut input).await?;
        if chunk.is_empty() {
            break;
        }
        writer.write(chunk).await.map_err(std::io::Error::other)?;
    }
    state.blobs.put(key, writer.finish().await?).await
}

/// Copies the recorded parts that other instances received (those among `parts` that `want`
/// picks) from the blob store into this instance's data file. Where a part overlaps bytes
/// already there (a part written here, or one copied before it), the bytes must agree: two
/// parts that disagree are refused rather than one silently replacing the other.
async fn fetch_parts(
    state: &AppState,
    cloud: &str,
    session_id: &str,
    data: &Path,
    parts: &[ChunkPart],
    want: impl Fn(&ChunkPart) -> bool,
) -> ApiResult<()> {
    use futures_util::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
    let mut present: Vec<(u64, u64)> = parts
        .iter()
        .filter(|p| is_local(state, p))
        .map(|p| (p.start as u64, p.end as u64))
        .collect();
    for p in parts.iter().filter(|p| !is_local(state, p) && want(p)) {
        let key = part_key(cloud, session_id, p);
        let mut stream = state.blobs.read(&key, None).await?.ok_or_else(|| {
            ApiError::internal(format!(
                "part {}-{} of the upload is missing",
                p.start, p.end
            ))
        })?;
        let mut out = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(data)
            .await?;
        let mut at = p.start as u64;
        let mut there = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if chunk.is_empty() {
                continue;
            }
            let end = at + chunk.len() as u64 - 1;
            for &(s, e) in &present {
                let (from, to) = (s.max(at), e.min(end));
                if from > to {
                    continue;
                }
                there.resize((to - from + 1) as usize, 0);
                out.seek(SeekFrom::Start(from)).await?;
                out.read_exact(&mut there).await?;
                let mine = &chunk[(from - at) as usize..=(to - at) as usize];
                if there.as_slice() != mine {
                    return Err(ApiError::bad(format!(
                        "Inconsistent chunked upload: two parts hold different bytes in {from}-{to}"
                    )));
                }
            }
            out.seek(SeekFrom::Start(at)).await?;
            out.write_all(&chunk).await?;
            at = end + 1;
        }
        out.flush().await?;
        present.push((p.start as u64, p.end as u64));
    }
    Ok(())
}

fn overlaps(p: &ChunkPart, start: u64, end: u64) -> bool {
    p.start as u64 <= end && start <= p.end as u64
}

/// Decides, when the file part of a chunk request starts, whether it can be written straight
/// into the session's data file: the fields so far authenticate the request, the session (if
/// any) belongs to the same caller, and no recorded or in-flight part overlaps the range.
pub struct Placement {
    pub state: AppState,
    pub cloud: String,
    pub upload_id: Option<String>,
    pub authorization: Option<String>,
    pub range: ContentRange,
}

#[async_trait]
impl FilePlacement for Placement {
    async fn place(&self, params: &Params) -> Option<Placed> {
        let state = &self.state;
        let r = self.range;
        if r.total.is_some_and(|t| r.end >= t) || r.end + 1 > state.limits.max_file_bytes {
            return None;
        }
        let caller = super::access::uploader_before_file(
            state,
            &self.cloud,
            self.authorization.as_deref(),
            params,
        )
        .await?;
        let sid = match &self.upload_id {
            Some(id) => session_id(&self.cloud, Some(id), None),
            None => session_id(&self.cloud, None, Some(params.nonempty("public_id")?)),
        };
        if let Some((session, parts)) = state.meta.chunk_session(&sid).await.ok()? {
            let beyond_total = session.total.is_some_and(|t| r.end >= t as u64);
            if beyond_total
                || session.identity != identity_of(&caller)
                || parts.iter().any(|p| overlaps(p, r.start, r.end))
            {
                return None;
            }
        }
        if !state.chunks.claim_range(&sid, r.start, r.end) {
            return None;
        }
        let dir = session_dir(state, &sid);
        if tokio::fs::create_dir_all(&dir).await.is_err() {
            state.chunks.release_range(&sid, r.start, r.end);
            return None;
        }
        let data = dir.join(DATA_FILE);
        // The token ties the fed bytes to this request's part (see `part`). A session whose
        // store answers the MD5 is not hashed as it arrives.
        let tap = (!state.chunks.hashed_by_store(&sid)).then(|| {
            state
                .chunks
                .hasher(&sid, &data)
                .tap(placement_token(&sid, r.start, r.end))
        });
        Some(Placed {
            file: data,
            offset: r.start,
            len: r.end - r.start + 1,
            tap,
        })
    }
}

/// The token under which a part written in place feeds the session's hasher: the range is
/// claimed by one request at a time in this process, so it identifies that request's bytes
/// until the claim is released.
fn placement_token(sid: &str, start: u64, end: u64) -> u64 {
    let d = sha1::Sha1::digest(format!("{sid}/{start}/{end}").as_bytes());
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// Releases the in-flight claim of a part written in place when its request ends.
struct Release<'a> {
    state: &'a AppState,
    sid: String,
    range: Option<(u64, u64)>,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        if let Some((s, e)) = self.range {
            self.state.chunks.release_range(&self.sid, s, e);
        }
    }
}

/// The end of the contiguous prefix the parts cover from byte 0.
fn prefix_end(parts: &[ChunkPart]) -> u64 {
    let mut ranges: Vec<(i64, i64)> = parts.iter().map(|p| (p.start, p.end)).collect();
    ranges.sort();
    let mut end: i64 = 0;
    for (s, e) in ranges {
        if s > end {
            break;
        }
        end = end.max(e + 1);
    }
    end as u64
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

/// Whether a staged part holds the same bytes as the data file where `old` overlaps it.
fn overlap_agrees(
    data: &Path,
    old: &ChunkPart,
    new_start: u64,
    new_end: u64,
    staged: &TempBlob,
) -> std::io::Result<bool> {
    let start = (old.start as u64).max(new_start);
    let end = (old.end as u64).min(new_end);
    if start > end {
        return Ok(true);
    }
    let mut a = std::fs::File::open(data)?;
    let mut b = staged.reader()?;
    a.seek(SeekFrom::Start(start))?;
    b.seek(SeekFrom::Start(start - new_start))?;
    let (mut ba, mut bb) = (vec![0u8; 256 * 1024], vec![0u8; 256 * 1024]);
    let mut left = end - start + 1;
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

/// The decision about a new part, taken under the session lock.
fn decide(
    session: &ChunkSession,
    parts: &[ChunkPart],
    new: &ChunkPart,
    new_total: Option<i64>,
    identity: &str,
    now: i64,
) -> ChunkDecision {
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
    let duplicate = parts
        .iter()
        .any(|p| p.start == new.start && p.end == new.end);
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

/// Removes a session's rows, files and in-process state.
pub async fn discard_session(state: &AppState, session_id: &str) {
    if shared(state) {
        // The parts kept for other instances go too.
        if let Ok(Some((session, parts))) = state.meta.chunk_session(session_id).await {
            for p in &parts {
                let key = part_key(&session.cloud, session_id, p);
                if let Err(e) = state.blobs.delete(&key).await {
                    tracing::warn!(%key, error = %e, "could not remove a kept part");
                }
            }
        }
    }
    if let Err(e) = state.meta.delete_chunk_session(session_id).await {
        tracing::warn!(session = session_id, error = %e, "could not delete an upload session");
    }
    let _ = tokio::fs::remove_dir_all(session_dir(state, session_id)).await;
    state.chunks.drop_session(session_id);
}

/// Everything a part request brings.
pub struct PartRequest<'a> {
    pub req: &'a UploadRequest<'a>,
    pub caller: &'a Caller,
    pub params: Params,
    pub file: Option<FilePart>,
    pub range: ContentRange,
}

/// Handles one part of a chunked upload.
pub async fn part(state: &AppState, p: PartRequest<'_>) -> ApiResult<Json> {
    let PartRequest {
        req,
        caller,
        params,
        file,
        range,
    } = p;
    let file = file.ok_or_else(|| {
        ApiError::bad("Chunked uploads need the file bytes in a multipart file part")
    })?;
    let len = file.blob.size;
    let placed = file.blob.placed().is_some();
    let explicit_id = params.nonempty("public_id").map(str::to_string);
    let (sid, upload_id) = match (req.upload_id, &explicit_id) {
        (Some(id), _) => (session_id(req.cloud, Some(id), None), id.to_string()),
        (None, Some(pid)) => (
            session_id(req.cloud, None, Some(pid)),
            format!("public_id:{pid}"),
        ),
        (None, None) => (String::new(), String::new()),
    };
    let _release = Release {
        state,
        sid: sid.clone(),
        range: placed.then_some((range.start, range.end)),
    };
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

    // The public ID is decided when the upload starts and echoed to every part.
    let delivery_type = params.nonempty("type").unwrap_or("upload").to_string();
    let decided = match (&explicit_id, req.resource_type) {
        (Some(id), _) => Some(id.clone()),
        (None, "auto") => None,
        (None, rt) => {
            let split = (!file.filename.is_empty()).then(|| naming::split_filename(&file.filename));
            Some(naming::compose(&naming::NameParts {
                public_id: None,
                folder: params.nonempty("folder"),
                public_id_prefix: params.nonempty("public_id_prefix"),
                use_filename: params.flag("use_filename")?.unwrap_or(false),
                unique_filename: params.flag("unique_filename")?.unwrap_or(true),
                filename: split.as_ref().map(naming::borrowed),
                raw: rt == "raw",
            })?)
        }
    };
    let (sid, upload_id) = if sid.is_empty() {
        // Legacy form keyed by public ID: only the first part may come without one.
        if range.start != 0 {
            return Err(ApiError::missing("public_id"));
        }
        let key = decided
            .clone()
            .ok_or_else(|| ApiError::missing("public_id"))?;
        (
            session_id(req.cloud, None, Some(&key)),
            format!("public_id:{key}"),
        )
    } else {
        (sid, upload_id)
    };
    let identity = identity_of(caller);
    let now = state.now();
    let dir = session_dir(state, &sid);
    let data = dir.join(DATA_FILE);
    let filename = Some(file.filename.clone()).filter(|f| !f.is_empty());

    if !placed {
        // A staged part: check it against what was recorded, then copy it into place.
        tokio::fs::create_dir_all(&dir).await?;
        let known = state.meta.chunk_session(&sid).await?;
        if let Some((session, _)) = &known {
            if session.identity != identity {
                return Err(ApiError::bad(
                    "This chunked upload was started with another API key or upload preset",
                ));
            }
        }
        let recorded = known.map(|(_, parts)| parts).unwrap_or_default();
        // Parts other instances received are compared here, so they are fetched first.
        let (start, end) = (range.start, range.end);
        fetch_parts(state, req.cloud, &sid, &data, &recorded, |p| {
            overlaps(p, start, end)
        })
        .await?;
        let (blob, data_path) = (file.blob, data.clone());
        let conflict =
            tokio::task::spawn_blocking(move || -> std::io::Result<Option<ChunkPart>> {
                for old in recorded.iter().filter(|p| overlaps(p, start, end)) {
                    if !overlap_agrees(&data_path, old, start, end, &blob)? {
                        return Ok(Some(old.clone()));
                    }
                }
                blob.write_at(&data_path, start)?;
                Ok(None)
            })
            .await
            .map_err(ApiError::internal)??;
        if let Some(old) = conflict {
            return Err(ApiError::bad(format!(
                "Part bytes {}-{} overlaps bytes {}-{} received earlier with different content",
                range.start, range.end, old.start, old.end
            )));
        }
    }

    let new_part = ChunkPart {
        start: range.start as i64,
        end: range.end as i64,
        md5: String::new(),
        file: if shared(state) {
            written_here(state)
        } else {
            DATA_FILE.into()
        },
    };
    // Kept in the store before it is recorded: any instance may complete the upload.
    let kept = part_key(req.cloud, &sid, &new_part);
    if shared(state) {
        store_part(state, &kept, &data, range.start, len).await?;
    }
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
    let rules_part = new_part.clone();
    let rules = move |s: &ChunkSession, parts: &[ChunkPart]| {
        decide(s, parts, &rules_part, new_total, &identity, now)
    };
    let outcome = state
        .meta
        .record_chunk(&init, &new_part, state.limits.max_open_uploads, &rules)
        .await?;
    let claim = match &outcome.decision {
        ChunkDecision::Reject(msg) => {
            // This request's kept copy is recorded nowhere.
            if shared(state) {
                let _ = state.blobs.delete(&kept).await;
            }
            return Err(ApiError::bad(msg.clone()));
        }
        ChunkDecision::Duplicate { claim } => {
            // The range was recorded before, with a kept copy of its own.
            if shared(state) {
                let _ = state.blobs.delete(&kept).await;
            }
            *claim
        }
        ChunkDecision::Accept { claim, .. } => *claim,
    };
    let hasher = state.chunks.hasher(&sid, &data);
    // The hasher follows this instance's data file: only the parts written into it count.
    let local: Vec<ChunkPart> = outcome
        .parts
        .iter()
        .filter(|p| is_local(state, p))
        .cloned()
        .collect();
    let prefix = prefix_end(&local);
    if state.chunks.hashed_by_store(&sid) {
        // Hashed at the end only if the store's MD5 does not come.
    } else if placed && matches!(outcome.decision, ChunkDecision::Accept { .. }) {
        let (h, token) = (
            hasher.clone(),
            placement_token(&sid, range.start, range.end),
        );
        let _ = tokio::task::spawn_blocking(move || h.commit(token, prefix)).await;
    } else {
        hasher.advance(prefix);
    }
    let session = &outcome.session;
    if let Some(f) = follower(state, req.cloud, &sid, &data, session, prefix).await {
        tokio::spawn(async move { f.lock().await.advance(prefix).await });
    }
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

    // This request completes the upload. However long that takes, its claim is renewed, so
    // that no other request (of another instance) takes the assembly over meanwhile.
    // Renewals failing for half the timeout (the database unreachable) give the assembly up:
    // another request may take it over once the claim expires.
    let claims = SessionClaims { state, sid: &sid };
    let renewing = keep_claim(&claims, outcome.session.state_since);
    let completing = assemble(
        state,
        Assembly {
            req,
            caller,
            params,
            filename: file.filename,
            sid: &sid,
            data: &data,
            session,
            parts: &outcome.parts,
            hasher,
            explicit_id,
        },
    );
    tokio::select! {
        done = completing => done,
        lost = renewing => Err(lost),
    }
}

/// What keeping an assembly's claim needs of the database: renewing it, and seeing what holds
/// the session when a renewal does not apply.
#[async_trait]
trait Claims: Sync {
    /// Moves the claim made at `since` to `now`; false when it is not that claim any more.
    async fn renew(&self, since: i64, now: i64) -> Result<bool, crate::db::DbError>;
    /// The session's state and the date of that state, if it still exists.
    async fn holder(&self) -> Result<Option<(String, i64)>, crate::db::DbError>;
    fn now(&self) -> i64;
}

/// A chunk session's claim in the metadata store.
struct SessionClaims<'a> {
    state: &'a AppState,
    sid: &'a str,
}

#[async_trait]
impl Claims for SessionClaims<'_> {
    async fn renew(&self, since: i64, now: i64) -> Result<bool, crate::db::DbError> {
        self.state.meta.renew_assembly(self.sid, since, now).await
    }
    async fn holder(&self) -> Result<Option<(String, i64)>, crate::db::DbError> {
        let session = self.state.meta.chunk_session(self.sid).await?;
        Ok(session.map(|(s, _)| (s.state, s.state_since)))
    }
    fn now(&self) -> i64 {
        self.state.now()
    }
}

/// Renews the claim made at `claimed_at` every [`RENEW_EVERY_SECS`] for as long as it is
/// polled. Ends only to give the assembly up: with the error to answer when another request
/// took it over or renewals failed for half of [`ASSEMBLY_TIMEOUT_SECS`]; never when the
/// session is gone or open again (the assembly is ending and its own outcome is the answer).
async fn keep_claim(claims: &impl Claims, mut claimed_at: i64) -> ApiError {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(RENEW_EVERY_SECS));
    every.tick().await;
    let mut failing_since: Option<tokio::time::Instant> = None;
    // The dates of renewals that reported an error: the database may have written them.
    let mut tried: Vec<i64> = Vec::new();
    let mut again_now = false;
    loop {
        if !std::mem::take(&mut again_now) {
            every.tick().await;
        }
        let now = claims.now();
        let failed = match claims.renew(claimed_at, now).await {
            Ok(true) => {
                (claimed_at, failing_since) = (now, None);
                tried.clear();
                continue;
            }
            // Not the claim renewed last: see what holds the session now.
            Ok(false) => match claims.holder().await {
                Ok(Some((state, since))) if state == "assembling" => {
                    if since != claimed_at && !tried.contains(&since) {
                        // Another request took the assembly over (possible only once the
                        // claim expired): that one completes the upload.
                        return ApiError::internal(
                            "the assembly of this upload was taken over by another request",
                        );
                    }
                    // A renewal that reported an error was written after all: renew that
                    // one at once (the same date again waits for the next tick).
                    again_now = since != claimed_at;
                    claimed_at = since;
                    tried.clear();
                    continue;
                }
                // Gone or open again: this assembly is ending (stored, or failed and
                // reopened), and its own outcome is the answer.
                Ok(_) => return std::future::pending().await,
                Err(e) => e,
            },
            Err(e) => {
                tried.push(now);
                e
            }
        };
        tracing::warn!(error = %failed, "could not renew the claim of a chunked upload's assembly");
        let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed().as_secs() as i64 >= ASSEMBLY_TIMEOUT_SECS / 2 {
            return ApiError::internal("the claim of this upload's assembly could not be renewed");
        }
    }
}

/// The session's follower (see [`crate::storage::chunks::Follower`]), started when the blob
/// store takes objects as they arrive, this instance alone holds the session's parts (no
/// shared database), the upload may be large enough to gain from it and is not complete yet
/// (`prefix`: the bytes received in order). Its object goes as one `PUT` when the parts
/// tell the total (a client pausing between parts too long for the store makes it fail: the
/// upload is then sent when it completes), else by multipart upload.
async fn follower(
    state: &AppState,
    cloud: &str,
    sid: &str,
    data: &Path,
    session: &ChunkSession,
    prefix: u64,
) -> Option<std::sync::Arc<tokio::sync::Mutex<crate::storage::chunks::Follower>>> {
    if shared(state) || !state.blobs.streams() {
        return None;
    }
    if let Some(f) = state.chunks.follower(sid) {
        return Some(f);
    }
    let total = session.total.map(|t| t as u64);
    if session.state == "assembling"
        || total.is_some_and(|t| t < super::mirror::MIN_BYTES || prefix >= t)
        || !state.chunks.room_for_follower()
    {
        return None;
    }
    let m = super::mirror::open(state, cloud, total).await?;
    // The mirror's count of a body sent as it arrives passes on to the follower.
    let follower = crate::storage::chunks::Follower::new(
        m.sink,
        m.object,
        data.to_path_buf(),
        m.budget,
        m.streaming,
    );
    state.chunks.add_follower(sid, follower)
}

/// How often an assembly in progress renews its claim (well within [`ASSEMBLY_TIMEOUT_SECS`]).
const RENEW_EVERY_SECS: u64 = 60;

/// What completing a chunked upload needs.
struct Assembly<'a> {
    req: &'a UploadRequest<'a>,
    caller: &'a Caller,
    params: Params,
    /// The file name the completing part was sent with.
    filename: String,
    sid: &'a str,
    data: &'a Path,
    session: &'a ChunkSession,
    parts: &'a [ChunkPart],
    hasher: std::sync::Arc<crate::storage::chunks::FileHasher>,
    explicit_id: Option<String>,
}

/// Completes a chunked upload: the data file is the file (with the parts other instances
/// received copied in); its MD5 is finished and the upload stored.
async fn assemble(state: &AppState, a: Assembly<'_>) -> ApiResult<Json> {
    let Assembly {
        req,
        caller,
        params,
        filename,
        sid,
        data,
        session,
        parts,
        hasher,
        explicit_id,
    } = a;
    let total = session.total.unwrap_or(0) as u64;
    // What was sent to the store as the parts arrived (the rest is sent once hashed).
    let follower = state.chunks.take_follower(sid);
    if let Err(e) = fetch_parts(state, req.cloud, sid, data, parts, |_| true).await {
        let _ = state.meta.reopen_chunk_session(sid, state.now()).await;
        return Err(e);
    }
    // With instances sharing the database, this process's hasher may have followed another
    // session of the same ID, or parts it no longer holds: the file is hashed afresh.
    let hasher = if shared(state) {
        state.chunks.drop_session(sid);
        state.chunks.hasher(sid, data)
    } else {
        hasher
    };
    // The object sent as the parts arrived is completed first: its store may answer the MD5.
    let (stored, store_md5) = match follower {
        Some(f) => match f.lock().await.finish(total).await {
            Some((object, md5)) => (Some(object), md5),
            None => (None, None),
        },
        None => (None, None),
    };
    let md5 = match store_md5 {
        Some(m) => Ok(m),
        None => tokio::task::spawn_blocking(move || hasher.finish(total))
            .await
            .map_err(ApiError::internal)?,
    };
    let md5 = match md5 {
        Ok(m) => m,
        Err(e) => {
            let _ = state.meta.reopen_chunk_session(sid, state.now()).await;
            return Err(ApiError::internal(format!(
                "could not hash the chunked upload: {e}"
            )));
        }
    };
    // A hard link hands the file to the upload pipeline while the session keeps its copy
    // until the asset is stored (a failed store can then be retried). Bytes a refused part
    // wrote past the end are cut off first.
    let link = crate::storage::temp::temp_path(&state.tmp_dir);
    let handed_over = async {
        let f = tokio::fs::OpenOptions::new()
            .write(true)
            .open(&data)
            .await?;
        f.set_len(total).await?;
        tokio::fs::hard_link(&data, &link).await
    };
    if let Err(e) = handed_over.await {
        let _ = state.meta.reopen_chunk_session(sid, state.now()).await;
        return Err(ApiError::internal(format!(
            "could not hand over the chunked upload: {e}"
        )));
    }
    let mut blob = TempBlob::adopt(link, total, md5);
    blob.stored = stored;
    if blob.stored.is_some() {
        state.metrics.upload_streamed();
    }
    let src = Source {
        blob,
        filename: session
            .filename
            .clone()
            .or_else(|| Some(filename).filter(|f| !f.is_empty())),
    };
    let public_id = match (&explicit_id, &session.public_id) {
        (Some(e), Some(d)) if e == d => Some(d.clone()),
        (None, Some(d)) => Some(d.clone()),
        _ => None,
    };
    let result = super::store_upload(state, req, caller, params, src, public_id).await;
    match result {
        Ok(Json::Object(mut m)) => {
            discard_session(state, sid).await;
            m.insert("done".into(), json!(true));
            Ok(Json::Object(m))
        }
        Ok(other) => Ok(other),
        Err(e @ ApiError::Internal(_)) => {
            let _ = state.meta.reopen_chunk_session(sid, state.now()).await;
            Err(e)
        }
        Err(e) => {
            discard_session(state, sid).await;
            Err(e)
        }
    }
}

/// The IDs of the upload sessions that exist now.
pub async fn live_sessions(
    state: &AppState,
) -> Result<std::collections::HashSet<String>, crate::db::DbError> {
    Ok(state
        .meta
        .stale_chunk_sessions(i64::MAX)
        .await?
        .into_iter()
        .collect())
}

/// Removes sessions not touched within the configured time, session folders no session row
/// knows (left by a crash between the folder and its row, or by a discarded session), stale
/// temporary files, and this process's hashers of sessions that ended elsewhere.
pub async fn sweep(state: &AppState) -> anyhow::Result<usize> {
    let ttl = state.limits.upload_session_ttl_secs;
    let now = state.now();
    let mut removed = 0;
    for sid in state.meta.stale_chunk_sessions(now - ttl).await? {
        discard_session(state, &sid).await;
        removed += 1;
    }
    let live = live_sessions(state).await?;
    for sid in state.chunks.sessions() {
        if !live.contains(&sid) {
            state.chunks.drop_session(&sid);
        }
    }
    let chunk_dir = state.chunk_dir.clone();
    let tmp_dir = state.tmp_dir.clone();
    removed += tokio::task::spawn_blocking(move || -> std::io::Result<usize> {
        let mut n = 0;
        let old = |p: &Path, age: std::time::Duration| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .map(|t| t.elapsed().unwrap_or_default() > age)
                .unwrap_or(false)
        };
        // A folder is made just before its session row: leave young ones alone.
        if let Ok(dirs) = std::fs::read_dir(&chunk_dir) {
            for d in dirs.flatten() {
                let name = d.file_name().to_string_lossy().into_owned();
                if !live.contains(&name) && old(&d.path(), std::time::Duration::from_secs(600)) {
                    std::fs::remove_dir_all(d.path())?;
                    n += 1;
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
    fn kept_parts_are_named_by_their_record() {
        let p = ChunkPart {
            start: 0,
            end: 99,
            md5: String::new(),
            file: "data@inst1.a1b2c3".into(),
        };
        let key = part_key("demo", "sess", &p);
        assert_eq!(key, "demo/chunks/sess/0-99.inst1.a1b2c3");
        assert!(crate::storage::check_key(&key).is_ok());
        assert_eq!(kept_part_session(&key), Some("sess"));
        assert_eq!(kept_part_session("demo/ab/abcdef"), None);
        assert_eq!(kept_part_session("demo/derived/x"), None);
    }

    #[test]
    fn coverage_prefix_and_completion() {
        assert_eq!(covered(&[part(0, 9), part(5, 14), part(20, 29)]), 25);
        assert_eq!(prefix_end(&[part(20, 29), part(0, 9), part(5, 14)]), 15);
        assert_eq!(prefix_end(&[part(5, 9)]), 0);
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

    /// A database scripted for [`keep_claim`]: renewals answer in turn (then `Ok(true)`), the
    /// holder is fixed, and every renewal is recorded as `(seconds since start, since, now)`.
    struct Scripted {
        start: tokio::time::Instant,
        renewals: std::sync::Mutex<std::collections::VecDeque<Result<bool, ()>>>,
        holder: Option<(String, i64)>,
        calls: std::sync::Mutex<Vec<(u64, i64, i64)>>,
    }

    impl Scripted {
        fn new(renewals: Vec<Result<bool, ()>>, holder: Option<(&str, i64)>) -> Scripted {
            Scripted {
                start: tokio::time::Instant::now(),
                renewals: std::sync::Mutex::new(renewals.into()),
                holder: holder.map(|(s, t)| (s.to_string(), t)),
                calls: Default::default(),
            }
        }
        fn calls(&self) -> Vec<(u64, i64, i64)> {
            self.calls.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl Claims for Scripted {
        async fn renew(&self, since: i64, now: i64) -> Result<bool, crate::db::DbError> {
            let at = self.start.elapsed().as_secs();
            self.calls.lock().unwrap().push((at, since, now));
            match self.renewals.lock().unwrap().pop_front() {
                None | Some(Ok(true)) => Ok(true),
                Some(Ok(false)) => Ok(false),
                Some(Err(())) => Err(crate::db::DbError::Unreachable("down".into())),
            }
        }
        async fn holder(&self) -> Result<Option<(String, i64)>, crate::db::DbError> {
            Ok(self.holder.clone())
        }
        fn now(&self) -> i64 {
            // Dates a thousand seconds after the claim, in step with the paused clock.
            1000 + self.start.elapsed().as_secs() as i64
        }
    }

    /// Polls `keep_claim` for `secs` seconds of the paused clock: `None` if it is still
    /// renewing then.
    async fn keep_for(claims: &Scripted, claimed_at: i64, secs: u64) -> Option<String> {
        let kept = keep_claim(claims, claimed_at);
        tokio::time::timeout(std::time::Duration::from_secs(secs), kept)
            .await
            .ok()
            .map(|e| e.to_string())
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_is_renewed_every_minute_from_its_last_date() {
        let db = Scripted::new(vec![], None);
        assert_eq!(keep_for(&db, 7, 250).await, None);
        // Each renewal moves the claim from the date the one before wrote.
        assert_eq!(
            db.calls(),
            vec![
                (60, 7, 1060),
                (120, 1060, 1120),
                (180, 1120, 1180),
                (240, 1180, 1240)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_taken_over_gives_the_assembly_up() {
        let db = Scripted::new(vec![Ok(false)], Some(("assembling", 5000)));
        let lost = keep_for(&db, 7, 3600).await.expect("given up");
        assert!(lost.contains("taken over"), "{lost}");
        assert_eq!(db.calls().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_failing_for_half_the_timeout_give_the_assembly_up() {
        let db = Scripted::new(vec![Err(()); 100], None);
        let lost = keep_for(&db, 7, 3600).await.expect("given up");
        assert!(lost.contains("could not be renewed"), "{lost}");
        let calls = db.calls();
        let (first, last) = (calls[0].0, calls[calls.len() - 1].0);
        assert!(
            last - first >= ASSEMBLY_TIMEOUT_SECS as u64 / 2,
            "{calls:?}"
        );
        assert!(last - first < ASSEMBLY_TIMEOUT_SECS as u64, "{calls:?}");
        // A failed renewal leaves the claim as it was: the next one tries the same date.
        assert!(calls.iter().all(|c| c.1 == 7), "{calls:?}");
    }

    /// A renewal that reported an error but was written: the next one finds the claim at that
    /// date and renews from it at once.
    #[tokio::test(start_paused = true)]
    async fn a_renewal_written_despite_its_error_is_followed() {
        // At 60 s the renewal to 1060 reports an error; at 120 s the claim is not at 7 any
        // more but at 1060, which this request wrote.
        let db = Scripted::new(vec![Err(()), Ok(false)], Some(("assembling", 1060)));
        assert_eq!(keep_for(&db, 7, 150).await, None);
        assert_eq!(
            db.calls(),
            vec![(60, 7, 1060), (120, 7, 1120), (120, 1060, 1120)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_gone_or_reopened_leaves_the_answer_to_the_assembly() {
        for holder in [None, Some(("open", 5000))] {
            let db = Scripted::new(vec![Ok(false)], holder);
            assert_eq!(keep_for(&db, 7, 3600).await, None);
            assert_eq!(db.calls().len(), 1);
        }
    }
}
