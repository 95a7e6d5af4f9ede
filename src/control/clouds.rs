//! Clouds at run time: creating and removing them, resetting one or all, and seeding a cloud
//! with the files of a folder.

use std::path::{Path, PathBuf};

use serde_json::{json, Value as Json};

use crate::auth::{Account, Caller, SignatureAlgorithm};
use crate::error::{ApiError, ApiResult};
use crate::form::{Params, Value};
use crate::state::AppState;
use crate::storage::temp::BlobWriter;
use crate::upload::source::Source;
use crate::upload::{store_upload, UploadRequest};

/// Files one seeding uploads at most.
const MAX_SEED_FILES: usize = 10_000;

/// What `POST /_nephos/clouds` may say; everything left out is generated.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCloud {
    #[serde(alias = "cloud_name")]
    pub name: Option<String>,
    pub api_key: Option<String>,
    pub api_secret: Option<String>,
    pub signature_algorithm: Option<String>,
}

fn valid_token(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn random_digits(n: usize) -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    let first = rng.gen_range(1..=9).to_string();
    let rest: String = (1..n)
        .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
        .collect();
    first + &rest
}

/// The `CLOUDINARY_URL` of an account, with `upload_prefix` at `base`.
pub fn cloudinary_url(a: &Account, base: &str) -> String {
    let algo = match a.algorithm {
        SignatureAlgorithm::Sha256 => "&signature_algorithm=sha256",
        SignatureAlgorithm::Sha1 => "",
    };
    format!(
        "cloudinary://{}:{}@{}?upload_prefix={base}{algo}",
        a.api_key, a.api_secret, a.cloud
    )
}

pub fn account_json(a: &Account, base: &str) -> Json {
    json!({
        "cloud_name": a.cloud,
        "api_key": a.api_key,
        "api_secret": a.api_secret,
        "signature_algorithm": a.algorithm.name(),
        "upload_prefix": base,
        "cloudinary_url": cloudinary_url(a, base),
    })
}

/// Creates a cloud with one account; answers the account.
pub async fn create(state: &AppState, spec: NewCloud) -> ApiResult<Account> {
    let name = spec
        .name
        .unwrap_or_else(|| format!("cloud-{}", crate::util::random_alnum(10).to_lowercase()));
    if name.len() < 2 || !valid_token(&name, 128) {
        return Err(ApiError::bad(format!(
            "Invalid cloud name {name:?}: 2-128 characters of [A-Za-z0-9_-]"
        )));
    }
    let api_key = spec.api_key.unwrap_or_else(|| random_digits(15));
    let api_secret = spec
        .api_secret
        .unwrap_or_else(|| crate::util::random_alnum(27));
    if !valid_token(&api_key, 128) || !valid_token(&api_secret, 256) {
        return Err(ApiError::bad(
            "api_key and api_secret must be characters of [A-Za-z0-9_-]",
        ));
    }
    let algorithm = match spec.signature_algorithm.as_deref() {
        None => SignatureAlgorithm::Sha1,
        Some(name) => SignatureAlgorithm::from_name(name).ok_or_else(|| {
            ApiError::bad(format!(
                "Invalid signature_algorithm {name} (sha1 or sha256)"
            ))
        })?,
    };
    let account = Account {
        cloud: name.clone(),
        api_key,
        api_secret,
        algorithm,
        signature_v1: false,
    };
    let added = state.update_accounts(|accounts| {
        if accounts.has_cloud(&name) {
            false
        } else {
            accounts.add([account.clone()]);
            true
        }
    });
    if !added {
        return Err(ApiError::Conflict(format!("Cloud {name} already exists")));
    }
    restore_presets(state, &name).await?;
    Ok(account)
}

/// Removes a cloud: its records and files, then its accounts.
pub async fn delete(state: &AppState, cloud: &str) -> ApiResult<()> {
    if !state.accounts().has_cloud(cloud) {
        return Err(ApiError::NotFound(format!("Cloud {cloud} not found")));
    }
    state.update_accounts(|a| a.remove_cloud(cloud));
    state.control.faults.remove_cloud(cloud);
    wipe(state, cloud).await
}

/// Removes everything of a cloud: records, stored and chunked files, cached fields and
/// triggers.
async fn wipe(state: &AppState, cloud: &str) -> ApiResult<()> {
    let sessions = state.meta.reset_cloud(cloud).await?;
    for sid in sessions {
        let _ = tokio::fs::remove_dir_all(state.chunk_dir.join(&sid)).await;
        state.chunks.drop_session(&sid);
    }
    let prefix = format!("{cloud}/");
    for key in state.blobs.keys().await? {
        if key.starts_with(&prefix) {
            state.blobs.delete(&key).await?;
        }
    }
    state.fields.forget(cloud);
    state.hub.forget_cloud(cloud);
    Ok(())
}

/// Writes the configuration's presets of a cloud again.
async fn restore_presets(state: &AppState, cloud: &str) -> ApiResult<()> {
    crate::seed_presets(
        &state.control.presets,
        &[cloud.to_string()],
        state.meta.as_ref(),
    )
    .await
    .map_err(ApiError::internal)
}

/// Resets one cloud: no assets, derived files, upload sessions, folders, metadata fields,
/// triggers or queued notifications; presets as configured; the seed folder uploaded again
/// when the cloud is a configured one.
pub async fn reset(state: &AppState, cloud: &str) -> ApiResult<Json> {
    if !state.accounts().has_cloud(cloud) {
        return Err(ApiError::NotFound(format!("Cloud {cloud} not found")));
    }
    wipe(state, cloud).await?;
    restore_presets(state, cloud).await?;
    let configured = state.control.configured.iter().any(|a| a.cloud == cloud);
    let seeded = match (&state.control.seed_dir, configured) {
        (Some(dir), true) => Some(seed(state, cloud, dir).await?),
        _ => None,
    };
    Ok(json!({"cloud_name": cloud, "reset": true, "seeded": seeded}))
}

/// Resets everything: every cloud wiped, clouds created at run time removed, the accounts
/// as configured, the records, faults and hold cleared, the seed folder uploaded again.
pub async fn reset_all(state: &AppState) -> ApiResult<Json> {
    let clouds: Vec<String> = state
        .accounts()
        .clouds()
        .into_iter()
        .map(str::to_string)
        .collect();
    let configured = state.control.configured.clone();
    let tokens = state.control.configured_tokens.clone();
    state.update_accounts(|a| {
        for c in &clouds {
            a.remove_cloud(c);
        }
        a.add(configured);
        a.add_tokens(&tokens);
    });
    let mut all = clouds.clone();
    for c in state.accounts().clouds() {
        if !all.iter().any(|x| x == c) {
            all.push(c.to_string());
        }
    }
    for cloud in &all {
        wipe(state, cloud).await?;
    }
    let control = &state.control;
    control.requests.clear();
    control.notifications.clear();
    control.faults.clear();
    control.hold.set(false);
    let mut seeded = serde_json::Map::new();
    for cloud in state.accounts().clouds() {
        restore_presets(state, cloud).await?;
        if let Some(dir) = &control.seed_dir {
            seeded.insert(cloud.to_string(), seed(state, cloud, dir).await?);
        }
    }
    Ok(json!({"reset": true, "clouds": state.accounts().clouds(), "seeded": seeded}))
}

/// The files under `dir` (no symbolic links followed), as (path, path relative to `dir`).
fn files_under(dir: &Path) -> std::io::Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)?.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let ft = e.file_type()?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if ft.is_dir() {
                todo.push(e.path());
            } else if ft.is_file() {
                let rel = e
                    .path()
                    .strip_prefix(dir)
                    .map(|p| p.to_string_lossy().replace('\\', "/"))
                    .unwrap_or(name);
                out.push((e.path(), rel));
                if out.len() > MAX_SEED_FILES {
                    return Err(std::io::Error::other(format!(
                        "more than {MAX_SEED_FILES} files"
                    )));
                }
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

/// Uploads every file under `dir` into `cloud`: the public ID is the path relative to `dir`
/// (without the extension for images and videos, as Cloudinary names raw files with theirs).
pub async fn seed(state: &AppState, cloud: &str, dir: &Path) -> ApiResult<Json> {
    let account = state
        .accounts()
        .primary(cloud)
        .cloned()
        .ok_or_else(|| ApiError::NotFound(format!("Cloud {cloud} not found")))?;
    let owned = dir.to_path_buf();
    let files = tokio::task::spawn_blocking(move || files_under(&owned))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::bad(format!("Cannot read seed folder {}: {e}", dir.display())))?;
    let algorithm = account.algorithm;
    let caller = Caller::Key { account, algorithm };
    let mut uploaded = Vec::new();
    let mut failed = Vec::new();
    for (path, rel) in files {
        match seed_one(state, cloud, &caller, &path, &rel).await {
            Ok(r) => uploaded.push(json!({
                "path": rel,
                "public_id": r.get("public_id"),
                "resource_type": r.get("resource_type"),
                "secure_url": r.get("secure_url"),
            })),
            Err(e) => failed.push(json!({"path": rel, "error": e.to_string()})),
        }
    }
    Ok(json!({"uploaded": uploaded, "failed": failed}))
}

async fn seed_one(
    state: &AppState,
    cloud: &str,
    caller: &Caller,
    path: &Path,
    rel: &str,
) -> ApiResult<Json> {
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(path).await?;
    let mut w = BlobWriter::create(&state.tmp_dir, state.limits.max_upload_bytes).await?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        w.write(bytes::Bytes::copy_from_slice(&buf[..n]))
            .await
            .map_err(|e| ApiError::bad(format!("{rel}: {e}")))?;
    }
    let blob = w.finish().await?;
    let (folder, name) = match rel.rsplit_once('/') {
        Some((f, n)) => (Some(f.to_string()), n.to_string()),
        None => (None, rel.to_string()),
    };
    let mut params = Params::default();
    params.set("use_filename", Value::Text("true".into()));
    params.set("unique_filename", Value::Text("false".into()));
    params.set("overwrite", Value::Text("true".into()));
    if let Some(f) = folder {
        params.set("folder", Value::Text(f));
    }
    let req = UploadRequest {
        cloud,
        resource_type: "auto",
        content_range: None,
        upload_id: None,
    };
    let src = Source {
        blob,
        filename: Some(name),
    };
    store_upload(state, &req, caller, params, src, None).await
}
