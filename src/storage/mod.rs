//! The blob store: where asset bytes live. A trait held as `Arc<dyn BlobStore>`; the local
//! folder implementation is [`fs::FsBlobStore`].
//!
//! Blob keys are made by the server (`<cloud>/<2 hex>/<version_id>`), never from a public ID,
//! so no request can name a path outside the store.

pub mod chunks;
pub mod fs;
pub mod md5;
pub mod s3;
pub mod temp;

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

pub use temp::{BlobWriter, Hashing, TempBlob, WriteError};

pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// A byte range `start..=end` of a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

/// The whole content of a blob, in memory (for images being transformed).
pub async fn read_all(blobs: &dyn BlobStore, key: &str) -> std::io::Result<Option<Vec<u8>>> {
    use futures_util::StreamExt;
    let Some(mut stream) = blobs.read(key, None).await? else {
        return Ok(None);
    };
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(Some(out))
}

#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Moves a finished temporary file into the store under `key`, atomically.
    async fn put(&self, key: &str, blob: TempBlob) -> std::io::Result<()>;
    /// The size of a stored blob, `None` when missing.
    async fn size(&self, key: &str) -> std::io::Result<Option<u64>>;
    /// Streams the whole blob or a range of it; `None` when missing.
    async fn read(
        &self,
        key: &str,
        range: Option<ByteRange>,
    ) -> std::io::Result<Option<ByteStream>>;
    /// Removes a blob (missing is not an error).
    async fn delete(&self, key: &str) -> std::io::Result<()>;
    /// Every key in the store.
    async fn keys(&self) -> std::io::Result<Vec<String>>;
    /// When a blob was last written, `None` when missing.
    async fn modified(&self, key: &str) -> std::io::Result<Option<std::time::SystemTime>>;
    /// Checks that the store can be written.
    async fn health(&self) -> std::io::Result<()>;
}

/// Checks a blob key. Keys are server-made, but are still checked so that no value could
/// leave the store's root: segments of letters, digits, `-`, `_` and `.` (the temporary files
/// of a local `put` are `.<name>.<hex>`, which a killed process can leave for the orphan
/// sweep), never `.` or `..`.
pub(crate) fn check_key(key: &str) -> std::io::Result<()> {
    let ok = !key.is_empty()
        && key.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        });
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("invalid blob key {key:?}"),
        ))
    }
}

/// Opens the blob store a storage URL names: `s3://bucket[/prefix]` (an S3-compatible object
/// store), `file:///path` or `None` (`default`, the data dir's `blobs` folder).
pub fn open(
    url: Option<&str>,
    default: &std::path::Path,
) -> anyhow::Result<std::sync::Arc<dyn BlobStore>> {
    let folder = |dir: std::path::PathBuf| -> anyhow::Result<std::sync::Arc<dyn BlobStore>> {
        let store = fs::FsBlobStore::new(dir.clone())
            .map_err(|e| anyhow::anyhow!("cannot open the blob folder {}: {e}", dir.display()))?;
        Ok(std::sync::Arc::new(store))
    };
    match url {
        None => folder(default.to_path_buf()),
        Some(u) if u.starts_with("s3://") => Ok(std::sync::Arc::new(s3::S3BlobStore::open(u)?)),
        Some(u) if u.starts_with("file://") => {
            let parsed = url::Url::parse(u)
                .map_err(|e| anyhow::anyhow!("invalid storage URL {u:?}: {e}"))?;
            let dir = parsed
                .to_file_path()
                .map_err(|_| anyhow::anyhow!("the storage URL {u:?} is not an absolute path"))?;
            folder(dir)
        }
        Some(u) => anyhow::bail!(
            "unsupported storage URL {u:?} (expected s3://bucket[/prefix] or file:///path)"
        ),
    }
}

/// A new blob key for a stored version.
pub fn new_blob_key(cloud: &str, version_id: &str) -> String {
    format!(
        "{cloud}/{}/{version_id}",
        &version_id[..2.min(version_id.len())]
    )
}
