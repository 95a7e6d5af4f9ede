//! Blobs in an S3-compatible object store (`--storage-url s3://bucket[/prefix]`), through the
//! `object_store` crate. Credentials, region and endpoint come from the standard `AWS_*`
//! variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
//! `AWS_VIRTUAL_HOSTED_STYLE_REQUEST`, …); requests are path-style unless that last one says
//! otherwise, and an `http://` endpoint (a local S3 server) is allowed.
//!
//! Files are sent by multipart upload, read from their temporary file a part at a time with
//! at most two parts in flight: memory stays bounded whatever the size.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, PutPayload};

use super::{BlobSink, BlobStore, ByteRange, ByteStream, TempBlob};

/// Parts of a multipart upload (S3's minimum for all but the last is 5 MiB).
const PART_BYTES: usize = 6 * 1024 * 1024;
/// Parts sent at once.
const PARTS_IN_FLIGHT: usize = 2;
/// Parts of an object sent while a request body arrives: smaller, since the body's own
/// buffers (its temporary file's queue) are held at the same time.
pub const SINK_PART_BYTES: usize = 5 * 1024 * 1024;

pub struct S3BlobStore {
    store: Arc<dyn ObjectStore>,
    /// Key prefix inside the bucket (empty, or ending with `/`).
    prefix: String,
}

fn io_error(e: object_store::Error) -> std::io::Error {
    match e {
        object_store::Error::NotFound { .. } => {
            std::io::Error::new(std::io::ErrorKind::NotFound, e.to_string())
        }
        e => std::io::Error::other(e.to_string()),
    }
}

fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

impl S3BlobStore {
    /// Opens `s3://bucket[/prefix]` with the `AWS_*` settings of the environment.
    pub fn open(url: &str) -> anyhow::Result<S3BlobStore> {
        let parsed = url::Url::parse(url)
            .map_err(|e| anyhow::anyhow!("invalid storage URL {url:?}: {e}"))?;
        let bucket = parsed
            .host_str()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| anyhow::anyhow!("the storage URL {url:?} names no bucket"))?;
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        let endpoint = std::env::var("AWS_ENDPOINT_URL")
            .or_else(|_| std::env::var("AWS_ENDPOINT"))
            .unwrap_or_default();
        if endpoint.starts_with("http://") {
            builder = builder.with_allow_http(true);
        }
        if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
            builder = builder.with_region("us-east-1");
        }
        let store = builder
            .build()
            .map_err(|e| anyhow::anyhow!("cannot open the object store {url}: {e}"))?;
        let prefix = parsed.path().trim_matches('/');
        Ok(S3BlobStore {
            store: Arc::new(store),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
        })
    }

    fn path(&self, key: &str) -> std::io::Result<ObjectPath> {
        super::check_key(key)?;
        ObjectPath::parse(format!("{}{key}", self.prefix))
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))
    }

    /// A multipart upload to `path` in parts of at least `part_bytes`.
    async fn open_sink(&self, path: &ObjectPath, part_bytes: usize) -> std::io::Result<S3Sink> {
        let upload = self.store.put_multipart(path).await.map_err(io_error)?;
        Ok(S3Sink {
            upload: Some(upload),
            part_bytes,
            buffer: object_store::PutPayloadMut::new(),
            in_flight: tokio::task::JoinSet::new(),
        })
    }
}

/// An object sent by multipart upload as its bytes arrive: parts of at least `part_bytes`
/// made of the buffers it is given, at most [`PARTS_IN_FLIGHT`] sent at once. Any failure, and a sink dropped unfinished, aborts the upload so that no parts are
/// left behind (a process that dies mid-upload leaves them to the bucket's lifecycle rule for
/// incomplete multipart uploads).
struct S3Sink {
    upload: Option<Box<dyn object_store::MultipartUpload>>,
    part_bytes: usize,
    buffer: object_store::PutPayloadMut,
    in_flight: tokio::task::JoinSet<object_store::Result<()>>,
}

impl S3Sink {
    /// Waits until at most `most` parts are in flight; a failed part aborts the upload.
    async fn settle(&mut self, most: usize) -> std::io::Result<()> {
        while self.in_flight.len() > most {
            let done = match self.in_flight.join_next().await {
                Some(Ok(r)) => r.map_err(io_error),
                Some(Err(e)) => Err(std::io::Error::other(e.to_string())),
                None => Ok(()),
            };
            if let Err(e) = done {
                self.abort().await;
                return Err(e);
            }
        }
        Ok(())
    }

    fn send_buffer(&mut self) -> std::io::Result<()> {
        let upload = self
            .upload
            .as_mut()
            .ok_or_else(|| std::io::Error::other("the object is finished"))?;
        let part: PutPayload = std::mem::take(&mut self.buffer).freeze();
        self.in_flight.spawn(upload.put_part(part));
        Ok(())
    }

    async fn abort(&mut self) {
        self.in_flight.abort_all();
        if let Some(mut upload) = self.upload.take() {
            if let Err(e) = upload.abort().await {
                tracing::warn!(error = %e, "aborting a multipart upload failed");
            }
        }
    }
}

#[async_trait]
impl BlobSink for S3Sink {
    async fn write(&mut self, chunk: bytes::Bytes) -> std::io::Result<()> {
        if self.upload.is_none() {
            return Err(std::io::Error::other("the object is finished"));
        }
        self.buffer.push(chunk);
        if self.buffer.content_length() >= self.part_bytes {
            self.settle(PARTS_IN_FLIGHT - 1).await?;
            self.send_buffer()?;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> std::io::Result<()> {
        // The last part may be short (or empty for an empty object).
        if self.buffer.content_length() > 0 || self.in_flight.is_empty() {
            self.settle(PARTS_IN_FLIGHT - 1).await?;
            self.send_buffer()?;
        }
        self.settle(0).await?;
        let Some(mut upload) = self.upload.take() else {
            return Err(std::io::Error::other("the object is finished"));
        };
        match upload.complete().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let _ = upload.abort().await;
                Err(io_error(e))
            }
        }
    }
}

impl Drop for S3Sink {
    fn drop(&mut self) {
        // Unfinished: the multipart upload is aborted, so its parts do not linger.
        self.in_flight.abort_all();
        if let (Some(mut upload), Ok(rt)) =
            (self.upload.take(), tokio::runtime::Handle::try_current())
        {
            rt.spawn(async move {
                let _ = upload.abort().await;
            });
        }
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    fn streams(&self) -> bool {
        true
    }

    async fn sink(&self, key: &str) -> std::io::Result<Option<Box<dyn BlobSink>>> {
        let sink = self.open_sink(&self.path(key)?, SINK_PART_BYTES).await?;
        Ok(Some(Box::new(sink)))
    }

    async fn put(&self, key: &str, mut blob: TempBlob) -> std::io::Result<()> {
        if super::already_stored(&mut blob, key) {
            return Ok(());
        }
        let path = self.path(key)?;
        if let Some(bytes) = blob.bytes() {
            self.store
                .put(&path, PutPayload::from(bytes.clone()))
                .await
                .map_err(io_error)?;
            return Ok(());
        }
        match blob.path() {
            // A file is sent by multipart upload, a part at a time.
            Some(file) => {
                let input = tokio::fs::File::open(file).await?;
                let sink = self.open_sink(&path, PART_BYTES).await?;
                super::send_all(Box::new(sink), input).await
            }
            None => Err(std::io::Error::other("blob cannot be stored")),
        }
    }

    async fn size(&self, key: &str) -> std::io::Result<Option<u64>> {
        match self.store.head(&self.path(key)?).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(io_error(e)),
        }
    }

    async fn read(
        &self,
        key: &str,
        range: Option<ByteRange>,
    ) -> std::io::Result<Option<ByteStream>> {
        let options = GetOptions {
            range: range.map(|r| GetRange::Bounded(r.start..r.end + 1)),
            ..Default::default()
        };
        match self.store.get_opts(&self.path(key)?, options).await {
            Ok(got) => Ok(Some(Box::pin(got.into_stream().map_err(io_error)))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(io_error(e)),
        }
    }

    async fn delete(&self, key: &str) -> std::io::Result<()> {
        match self.store.delete(&self.path(key)?).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(io_error(e)),
        }
    }

    async fn keys(&self) -> std::io::Result<Vec<String>> {
        let prefix =
            (!self.prefix.is_empty()).then(|| ObjectPath::from(self.prefix.trim_end_matches('/')));
        let mut listing = self.store.list(prefix.as_ref());
        let mut out = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(io_error)?;
            let full = meta.location.to_string();
            out.push(full.strip_prefix(&self.prefix).unwrap_or(&full).to_string());
        }
        Ok(out)
    }

    async fn modified(&self, key: &str) -> std::io::Result<Option<std::time::SystemTime>> {
        match self.store.head(&self.path(key)?).await {
            Ok(meta) => Ok(Some(meta.last_modified.into())),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(io_error(e)),
        }
    }

    async fn health(&self) -> std::io::Result<()> {
        let probe = self.path(&format!(".health-{}", crate::util::random_hex(6)))?;
        self.store
            .put(&probe, PutPayload::from_static(b"ok"))
            .await
            .map_err(io_error)?;
        self.store.delete(&probe).await.map_err(io_error)
    }
}
