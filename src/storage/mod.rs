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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

pub use temp::{BlobWriter, Hashing, TempBlob, WriteError};

pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// Bodies being sent to the blob store while they arrive (an upload's mirror, a chunked
/// session's follower).
static STREAMING: AtomicUsize = AtomicUsize::new(0);
/// When the last of them ended, in [`clock_ms`] (0: none yet).
static STREAMING_ENDED: AtomicU64 = AtomicU64::new(0);

/// Milliseconds on a monotonic clock (from its first use; never 0).
pub(crate) fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let ms = START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis();
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
}

/// Counts a body in [`STREAMING`] while it lives.
#[derive(Debug)]
pub struct StreamingBody(());

impl StreamingBody {
    pub fn start() -> StreamingBody {
        STREAMING.fetch_add(1, Ordering::Relaxed);
        StreamingBody(())
    }
}

impl Drop for StreamingBody {
    fn drop(&mut self) {
        STREAMING_ENDED.store(clock_ms(), Ordering::Relaxed);
        STREAMING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether a body is being sent to the blob store while it arrives, or was within the last
/// second. The binary's allocator then gives back what its threads keep of freed buffers (the
/// store's sink adds its own to the body's): uploads to a local folder, and small bodies
/// whatever their rate, never pay for that.
pub fn streaming_recently() -> bool {
    if STREAMING.load(Ordering::Relaxed) > 0 {
        return true;
    }
    let ended = STREAMING_ENDED.load(Ordering::Relaxed);
    ended != 0 && clock_ms().saturating_sub(ended) < 1000
}

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
    /// Whether [`BlobStore::sink`] gives writers (bodies are worth sending as they arrive).
    fn streams(&self) -> bool {
        false
    }
    /// A writer that sends an object under `key` while its bytes arrive, for stores where
    /// that is faster than sending a finished file (object stores); `None` for the others.
    /// `len`, when known, is the object's exact length: the store may then send it as one
    /// request, and a sink given another number of bytes fails instead of storing them.
    async fn sink(
        &self,
        _key: &str,
        _len: Option<u64>,
    ) -> std::io::Result<Option<Box<dyn BlobSink>>> {
        Ok(None)
    }
}

/// An object written to the store while its bytes arrive (see [`BlobStore::sink`]). Until
/// [`BlobSink::finish`] nothing shows in the store; a sink dropped unfinished gives the
/// object up.
#[async_trait]
pub trait BlobSink: Send {
    /// Takes the next bytes, without copying them (waits while the store is behind).
    async fn write(&mut self, chunk: Bytes) -> std::io::Result<()>;
    /// Completes the object under its key. Gives the object's MD5 (lowercase hex) when the
    /// store answered it and is known to answer the MD5 of what it stored (see
    /// [`BlobSink::gives_md5`]), else `None`.
    async fn finish(self: Box<Self>) -> std::io::Result<Option<String>>;
    /// Whether [`BlobSink::finish`] should give the object's MD5: the store computes it
    /// anyway (an S3 server's `ETag` of a `PUT`), so the caller need not hash the bytes it
    /// sends, and hashes them only if the MD5 does not come after all.
    fn gives_md5(&self) -> bool {
        false
    }
}

/// The next piece (up to 1 MiB, in a buffer of its own) of `input`; empty at its end.
pub async fn next_chunk(input: &mut (impl tokio::io::AsyncRead + Unpin)) -> std::io::Result<Bytes> {
    next_piece(input, 1024 * 1024).await
}

/// The next piece (up to `most` bytes, in a buffer of its own) of `input`; empty at its end.
pub async fn next_piece(
    input: &mut (impl tokio::io::AsyncRead + Unpin),
    most: usize,
) -> std::io::Result<Bytes> {
    use tokio::io::AsyncReadExt;
    let mut buf = bytes::BytesMut::with_capacity(most);
    input.read_buf(&mut buf).await?;
    Ok(buf.freeze())
}

/// Everything `input` holds, written into `sink`, which is then finished (a failure leaves
/// the sink unfinished, which gives its object up); what the sink's `finish` gives.
pub async fn send_all(
    mut sink: Box<dyn BlobSink>,
    mut input: impl tokio::io::AsyncRead + Unpin,
) -> std::io::Result<Option<String>> {
    loop {
        let chunk = next_chunk(&mut input).await?;
        if chunk.is_empty() {
            return sink.finish().await;
        }
        sink.write(chunk).await?;
    }
}

/// A blob already in the store, written while it was received, that no record names yet:
/// removed from the store when dropped, unless a `put` under its key took it over.
pub struct StoredObject {
    key: String,
    version_id: String,
    store: std::sync::Arc<dyn BlobStore>,
    kept: bool,
}

impl std::fmt::Debug for StoredObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredObject")
            .field("key", &self.key)
            .finish()
    }
}

impl StoredObject {
    pub fn new(
        store: std::sync::Arc<dyn BlobStore>,
        cloud: &str,
        version_id: String,
    ) -> StoredObject {
        StoredObject {
            key: new_blob_key(cloud, &version_id),
            version_id,
            store,
            kept: false,
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// The version ID its key was made from.
    pub fn version_id(&self) -> &str {
        &self.version_id
    }
}

impl Drop for StoredObject {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let (store, key) = (self.store.clone(), std::mem::take(&mut self.key));
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if let Err(e) = store.delete(&key).await {
                        tracing::warn!(%key, error = %e, "could not remove an unused uploaded object");
                    }
                });
            }
            // Without a runtime the orphan sweep removes it later.
            Err(_) => tracing::warn!(%key, "an unused uploaded object is left to the orphan sweep"),
        }
    }
}

/// Whether `blob` is already in the store under `key` (written while it was received); if
/// so, it is kept there from now on.
pub fn already_stored(blob: &mut TempBlob, key: &str) -> bool {
    match &mut blob.stored {
        Some(s) if s.key == key => {
            s.kept = true;
            true
        }
        _ => false,
    }
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
    let shard = version_id.get(..2).unwrap_or(version_id);
    let mut key = String::with_capacity(cloud.len() + shard.len() + version_id.len() + 2);
    for piece in [cloud, "/", shard, "/", version_id] {
        key.push_str(piece);
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body sent to the store as it arrives counts while it lives, and for a moment after.
    #[test]
    fn a_streamed_body_counts_while_it_lives_and_just_after() {
        let body = StreamingBody::start();
        assert!(STREAMING.load(Ordering::Relaxed) >= 1);
        assert!(streaming_recently());
        let before = clock_ms();
        drop(body);
        assert!(STREAMING_ENDED.load(Ordering::Relaxed) >= before);
        assert!(streaming_recently());
    }
}
