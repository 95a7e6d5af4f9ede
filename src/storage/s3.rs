//! Blobs in an S3-compatible object store (`--storage-url s3://bucket[/prefix]`), through the
//! `object_store` crate. Credentials, region and endpoint come from the standard `AWS_*`
//! variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
//! `AWS_VIRTUAL_HOSTED_STYLE_REQUEST`, …); requests are path-style unless that last one says
//! otherwise, and an `http://` endpoint (a local S3 server) is allowed.
//!
//! An object of known length up to 5 GiB is sent as one streamed `PUT` (to a presigned URL
//! made with the same credentials), which costs the store less than a multipart upload; other
//! objects go by multipart upload, a part at a time with at most two parts in flight. Memory
//! stays bounded whatever the size. A `PUT`'s answer gives the object's MD5 (its `ETag`) once
//! a small `PUT` of known content has shown that this store's tags are MD5s, so bodies sent
//! that way need not be hashed by the caller.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::signer::Signer;
use object_store::{GetOptions, GetRange, ObjectStore, PutPayload};

use super::{BlobSink, BlobStore, ByteRange, ByteStream, TempBlob};

/// Parts of a multipart upload (S3's minimum for all but the last is 5 MiB).
const PART_BYTES: usize = 6 * 1024 * 1024;
/// Parts sent at once.
const PARTS_IN_FLIGHT: usize = 2;
/// Parts of an object sent while a request body arrives: smaller, since the body's own
/// buffers (its temporary file's queue) are held at the same time.
pub const SINK_PART_BYTES: usize = 5 * 1024 * 1024;

/// A failed check of whether streamed `PUT`s answer the object's MD5 is tried again after
/// this (a passed one holds while the process runs; any `PUT` answering otherwise is seen).
const PUT_CHECK_AGAIN: std::time::Duration = std::time::Duration::from_secs(300);
/// How long that check may take.
const PUT_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The largest object S3 takes in one `PUT`.
const MAX_PUT_BYTES: u64 = 5 * 1024 * 1024 * 1024;
/// Pieces queued for a streamed `PUT` (each up to 1 MiB from a file or a chunked upload's
/// data file; a request body's own pieces are smaller).
const PUT_QUEUE: usize = 4;
/// How long the store may take to accept one piece of a streamed `PUT`, and to answer it
/// once its body is sent: past either, the `PUT` fails (and the caller falls back).
const PIECE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
/// Settings (object_store's names, as `AWS_*` variables) that a presigned `PUT` sent by a
/// plain HTTP client would not honour (headers of every write, certificates, proxies,
/// checksums, anonymous access): with any of them, objects go by multipart upload, which
/// object_store sends with them.
const PUT_UNSUITED_SETTINGS: [&str; 10] = [
    "AWS_SERVER_SIDE_ENCRYPTION",
    "AWS_SSE_KMS_KEY_ID",
    "AWS_SSE_BUCKET_KEY_ENABLED",
    "AWS_SSE_CUSTOMER_KEY_BASE64",
    "AWS_REQUEST_PAYER",
    "AWS_ALLOW_INVALID_CERTIFICATES",
    "AWS_PROXY_URL",
    "AWS_PROXY_CA_CERTIFICATE",
    "AWS_SKIP_SIGNATURE",
    "AWS_CHECKSUM_ALGORITHM",
];

pub struct S3BlobStore {
    store: Arc<dyn ObjectStore>,
    /// Signs the URLs of streamed `PUT`s; `None` when writes need headers of their own.
    signer: Option<Arc<AmazonS3>>,
    http: reqwest::Client,
    /// Key prefix inside the bucket (empty, or ending with `/`).
    prefix: String,
    /// Whether a streamed `PUT` answers the MD5 of what it stored, and when that was checked.
    put_check: tokio::sync::Mutex<Option<(std::time::Instant, bool)>>,
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
        let store = Arc::new(
            builder
                .build()
                .map_err(|e| anyhow::anyhow!("cannot open the object store {url}: {e}"))?,
        );
        let plain_writes = PUT_UNSUITED_SETTINGS
            .iter()
            .all(|v| std::env::var_os(v).is_none_or(|x| x.is_empty()));
        let prefix = parsed.path().trim_matches('/');
        Ok(S3BlobStore {
            signer: plain_writes.then(|| store.clone()),
            store,
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(30))
                .build()
                .map_err(|e| anyhow::anyhow!("cannot make an HTTP client: {e}"))?,
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            put_check: tokio::sync::Mutex::new(None),
        })
    }

    fn path(&self, key: &str) -> std::io::Result<ObjectPath> {
        super::check_key(key)?;
        ObjectPath::parse(format!("{}{key}", self.prefix))
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))
    }

    /// Whether this store's streamed `PUT`s answer the MD5 of what they stored (S3 servers
    /// compute it for the `ETag`): checked once with a small object of known content, which
    /// is removed at once. A store that refuses such `PUT`s, encrypts with keys of its own or
    /// answers another tag does not pass; nor does one that cannot be reached (checked again
    /// a few minutes later).
    async fn puts_answer_md5(&self) -> bool {
        // Uploads that come while the check runs are hashed here rather than wait for it.
        let Ok(mut check) = self.put_check.try_lock() else {
            return false;
        };
        if let Some((at, passed)) = *check {
            if passed || at.elapsed() < PUT_CHECK_AGAIN {
                return passed;
            }
        }
        let path = match self.path(&format!(".nephos-check/{}", crate::util::random_hex(16))) {
            Ok(p) => p,
            Err(_) => return false,
        };
        let checked = tokio::time::timeout(PUT_CHECK_TIMEOUT, self.check_put_md5(&path)).await;
        // The check's object goes whatever the outcome (a PUT cut off by the timeout may still
        // have been stored), on a task of its own so that nothing stops it halfway.
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.delete(&path).await {
                if !is_not_found(&e) {
                    tracing::warn!(error = %e, "could not remove the object of the PUT check");
                }
            }
        });
        let passed = match checked {
            Ok(Ok(passed)) => passed,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "checking the object store's PUT answers failed");
                false
            }
            Err(_) => false,
        };
        if !passed {
            tracing::info!(
                "uploads sent to the object store are hashed here (its PUT answers give no MD5)"
            );
        }
        *check = Some((std::time::Instant::now(), passed));
        passed
    }

    /// A `PUT` of a small object of known content to `path`: whether the store took it and
    /// answered its MD5.
    async fn check_put_md5(&self, path: &ObjectPath) -> std::io::Result<bool> {
        let Some(signer) = &self.signer else {
            return Ok(false);
        };
        let body = bytes::Bytes::from(crate::util::random_hex(32));
        let url = signer
            .signed_url(
                reqwest::Method::PUT,
                path,
                std::time::Duration::from_secs(600),
            )
            .await
            .map_err(io_error)?;
        let answer = self
            .http
            .put(url)
            .header(reqwest::header::CONTENT_LENGTH, body.len())
            .body(body.clone())
            .send()
            .await
            .map_err(std::io::Error::other)?;
        let stored = answer.status().is_success();
        let md5 = answered_md5(answer.headers());
        Ok(stored && md5 == Some(hex::encode(super::md5::Md5::digest(&body))))
    }

    /// One streamed `PUT` of `len` bytes to `path`, when the settings and size allow it;
    /// with `md5`, one that gives the object's MD5 when the store is known to answer it.
    async fn put_sink(&self, path: &ObjectPath, len: u64, md5: bool) -> Option<PutSink> {
        let signer = self.signer.as_ref().filter(|_| len <= MAX_PUT_BYTES)?;
        let md5 = md5 && self.puts_answer_md5().await;
        match signer
            .signed_url(
                reqwest::Method::PUT,
                path,
                std::time::Duration::from_secs(3600),
            )
            .await
        {
            Ok(url) => Some(PutSink::start(&self.http, url, len, md5)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot presign a PUT: the object goes by multipart upload");
                None
            }
        }
    }

    /// A multipart upload to `path` in parts of at least `part_bytes`, `parts_in_flight` sent
    /// at once at most.
    async fn open_sink(
        &self,
        path: &ObjectPath,
        part_bytes: usize,
        parts_in_flight: usize,
    ) -> std::io::Result<S3Sink> {
        let upload = self.store.put_multipart(path).await.map_err(io_error)?;
        Ok(S3Sink {
            upload: Some(upload),
            part_bytes,
            parts_in_flight: parts_in_flight.max(1),
            buffer: object_store::PutPayloadMut::new(),
            in_flight: tokio::task::JoinSet::new(),
        })
    }
}

/// An object sent by multipart upload as its bytes arrive: parts of at least `part_bytes`
/// made of the buffers it is given, at most `parts_in_flight` sent at once. Any failure, and
/// a sink dropped unfinished, aborts the upload so that no parts are left behind (a process
/// that dies mid-upload leaves them to the bucket's lifecycle rule for incomplete multipart
/// uploads).
struct S3Sink {
    upload: Option<Box<dyn object_store::MultipartUpload>>,
    part_bytes: usize,
    parts_in_flight: usize,
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
            self.settle(self.parts_in_flight - 1).await?;
            self.send_buffer()?;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> std::io::Result<Option<String>> {
        // The last part may be short (or empty for an empty object).
        if self.buffer.content_length() > 0 || self.in_flight.is_empty() {
            self.settle(self.parts_in_flight - 1).await?;
            self.send_buffer()?;
        }
        self.settle(0).await?;
        let Some(mut upload) = self.upload.take() else {
            return Err(std::io::Error::other("the object is finished"));
        };
        // A multipart upload's ETag is not the object's MD5.
        match upload.complete().await {
            Ok(_) => Ok(None),
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

/// One `PUT` of an object whose length is known beforehand, its body streamed from the bytes
/// the sink is given. The last piece is held back until [`BlobSink::finish`] confirms the
/// length, so a body that turns out longer or shorter is cut off before the store has it all
/// (an incomplete `PUT` stores nothing).
struct PutSink {
    queue: Option<tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>>,
    /// The request; its outcome is the MD5 the store's answer gave, if any.
    request: Option<tokio::task::JoinHandle<std::io::Result<Option<String>>>>,
    held: Option<bytes::Bytes>,
    /// Bytes given so far (the held piece included).
    given: u64,
    len: u64,
    /// Whether the store is known to answer the MD5 of what it stores.
    md5: bool,
}

impl PutSink {
    fn start(http: &reqwest::Client, url: url::Url, len: u64, md5: bool) -> PutSink {
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(PUT_QUEUE);
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let sent = http
            .put(url)
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(body))
            .send();
        let request = tokio::spawn(async move {
            let resp = sent.await.map_err(std::io::Error::other)?;
            let status = resp.status();
            if status.is_success() {
                return Ok(answered_md5(resp.headers()));
            }
            let text = resp.text().await.unwrap_or_default();
            let shown: String = text.chars().take(300).collect();
            Err(std::io::Error::other(format!(
                "the object store answered {status} to a PUT: {shown}"
            )))
        });
        PutSink {
            queue: Some(tx),
            request: Some(request),
            held: None,
            given: 0,
            len,
            md5,
        }
    }

    /// Queues a piece; a closed queue means the request ended early: its error is returned.
    async fn send(&mut self, piece: bytes::Bytes) -> std::io::Result<()> {
        let queued = match &self.queue {
            Some(q) => match tokio::time::timeout(PIECE_TIMEOUT, q.send(Ok(piece))).await {
                Ok(sent) => sent.is_ok(),
                Err(_) => {
                    self.cut();
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the object store took no bytes of a PUT for a minute",
                    ));
                }
            },
            None => false,
        };
        if queued {
            return Ok(());
        }
        Err(self.outcome().await.err().unwrap_or_else(|| {
            std::io::Error::other("the object store ended the PUT before its body")
        }))
    }

    async fn outcome(&mut self) -> std::io::Result<Option<String>> {
        match self.request.take() {
            Some(r) => r.await.map_err(std::io::Error::other)?,
            None => Err(std::io::Error::other("the object is finished")),
        }
    }

    /// Cuts the request off (its body fails), so the store keeps nothing.
    fn cut(&mut self) {
        if let Some(q) = self.queue.take() {
            let _ = q.try_send(Err(std::io::Error::other("upload given up")));
        }
        if let Some(r) = self.request.take() {
            r.abort();
        }
    }
}

#[async_trait]
impl BlobSink for PutSink {
    async fn write(&mut self, chunk: bytes::Bytes) -> std::io::Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.given += chunk.len() as u64;
        if self.given > self.len {
            self.cut();
            return Err(std::io::Error::other(format!(
                "the object has more than the {} bytes it was said to have",
                self.len
            )));
        }
        match self.held.replace(chunk) {
            Some(previous) => self.send(previous).await,
            None => Ok(()),
        }
    }

    async fn finish(mut self: Box<Self>) -> std::io::Result<Option<String>> {
        if self.given != self.len {
            self.cut();
            return Err(std::io::Error::other(format!(
                "the object has {} bytes, not the {} it was said to have",
                self.given, self.len
            )));
        }
        if let Some(last) = self.held.take() {
            self.send(last).await?;
        }
        self.queue = None;
        match tokio::time::timeout(ANSWER_TIMEOUT, self.outcome()).await {
            Ok(done) => done.map(|md5| md5.filter(|_| self.md5)),
            Err(_) => {
                self.cut();
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the object store did not answer a PUT",
                ))
            }
        }
    }

    fn gives_md5(&self) -> bool {
        self.md5
    }
}

/// The MD5 an S3 server's answer to a `PUT` gives as its `ETag` (lowercase hex), unless the
/// object was encrypted with a key the server manages or the client gave (the `ETag` is then
/// something else) or the tag is not 32 hex digits.
fn answered_md5(headers: &reqwest::header::HeaderMap) -> Option<String> {
    if headers.contains_key("x-amz-server-side-encryption-customer-algorithm")
        || headers
            .get("x-amz-server-side-encryption")
            .is_some_and(|v| v.as_bytes().starts_with(b"aws:kms"))
    {
        return None;
    }
    let tag = headers.get(reqwest::header::ETAG)?.to_str().ok()?.trim();
    let tag = tag.strip_prefix("W/").unwrap_or(tag).trim_matches('"');
    (tag.len() == 32 && tag.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| tag.to_ascii_lowercase())
}

impl Drop for PutSink {
    fn drop(&mut self) {
        // Unfinished: the request is cut off before its body is complete.
        self.cut();
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    fn streams(&self) -> bool {
        true
    }

    async fn sink(
        &self,
        key: &str,
        len: Option<u64>,
    ) -> std::io::Result<Option<Box<dyn BlobSink>>> {
        let path = self.path(key)?;
        if let Some(len) = len {
            if let Some(put) = self.put_sink(&path, len, true).await {
                return Ok(Some(Box::new(put)));
            }
        }
        // Bytes of unknown length (a chunked upload's parts, say) arrive over time: one part
        // in flight keeps up with them at two parts' memory.
        Ok(Some(Box::new(
            self.open_sink(&path, SINK_PART_BYTES, 1).await?,
        )))
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
            // A file is sent as it is read: one PUT, or a multipart upload (past 5 GiB, or
            // when the PUT fails: object_store retries the parts of a multipart upload).
            Some(file) => {
                let len = tokio::fs::metadata(file).await?.len();
                if let Some(put) = self.put_sink(&path, len, false).await {
                    let input = tokio::fs::File::open(file).await?;
                    match super::send_all(Box::new(put), input).await {
                        Ok(_) => return Ok(()),
                        Err(e) => tracing::warn!(
                            error = %e,
                            "a PUT to the object store failed: the file goes by multipart upload"
                        ),
                    }
                }
                let input = tokio::fs::File::open(file).await?;
                let sink = self.open_sink(&path, PART_BYTES, PARTS_IN_FLIGHT).await?;
                super::send_all(Box::new(sink), input).await.map(|_| ())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A server that takes connections and reads what it is sent (all of it, or nothing) and
    /// never answers. Returns its address.
    fn silent_server(read: bool) -> std::net::SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                if read {
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 * 1024];
                        while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
                    });
                } else {
                    held.push(conn);
                }
            }
        });
        addr
    }

    fn put_to(addr: std::net::SocketAddr, len: u64) -> PutSink {
        let url = url::Url::parse(&format!("http://{addr}/bucket/key")).unwrap();
        PutSink::start(&reqwest::Client::new(), url, len, false)
    }

    /// A store that takes no more bytes: the `PUT` fails after a minute without any, and the
    /// caller gets a timeout (the clock is paused: the minute passes at once).
    #[tokio::test(start_paused = true)]
    async fn a_put_the_store_stops_taking_times_out() {
        let addr = silent_server(false);
        let len = 256 * 1024 * 1024;
        let mut sink = put_to(addr, len);
        let piece = bytes::Bytes::from(vec![0u8; 1024 * 1024]);
        let sending = async {
            for _ in 0..len / piece.len() as u64 {
                sink.write(piece.clone()).await?;
            }
            Ok::<(), std::io::Error>(())
        };
        // An hour (of the paused clock) bounds the test if the timeout is missing.
        let e = tokio::time::timeout(std::time::Duration::from_secs(3600), sending)
            .await
            .expect("the PUT gave up on its own")
            .expect_err("the PUT failed before its body was sent");
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        assert!(e.to_string().contains("for a minute"), "{e}");
    }

    /// A store that takes the whole body and never answers: finishing fails after five
    /// minutes.
    #[tokio::test(start_paused = true)]
    async fn a_put_the_store_never_answers_times_out() {
        let addr = silent_server(true);
        let mut sink = Box::new(put_to(addr, 3 * 1024 * 1024));
        for _ in 0..3 {
            sink.write(bytes::Bytes::from(vec![1u8; 1024 * 1024]))
                .await
                .unwrap();
        }
        let e = tokio::time::timeout(std::time::Duration::from_secs(3600), sink.finish())
            .await
            .expect("the PUT gave up on its own")
            .expect_err("no answer");
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        assert!(e.to_string().contains("did not answer"), "{e}");
    }

    /// A `PUT`'s `ETag` is taken for the object's MD5 only when it is one: 32 hex digits
    /// (quotes and a weak mark dropped, lowercased), and no key-managed encryption said.
    #[test]
    fn only_an_etag_that_is_an_md5_is_taken_for_one() {
        let md5 = "9E107D9D372BB6826BD81D3542A419D6";
        let answer = |pairs: &[(&'static str, &str)]| {
            let mut h = reqwest::header::HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, v.parse().unwrap());
            }
            answered_md5(&h)
        };
        let quoted = format!("\"{md5}\"");
        let lower = Some(md5.to_ascii_lowercase());
        assert_eq!(answer(&[("etag", quoted.as_str())]), lower);
        assert_eq!(answer(&[("etag", md5)]), lower);
        assert_eq!(answer(&[("etag", &format!("W/{quoted}"))]), lower);
        assert_eq!(
            answer(&[
                ("etag", &quoted),
                ("x-amz-server-side-encryption", "AES256")
            ]),
            lower
        );
        assert_eq!(answer(&[]), None);
        assert_eq!(answer(&[("etag", "\"abc\"")]), None);
        assert_eq!(answer(&[("etag", &format!("\"{md5}-2\""))]), None);
        assert_eq!(answer(&[("etag", &format!("\"{}xx\"", &md5[..30]))]), None);
        for sse in ["aws:kms", "aws:kms:dsse"] {
            assert_eq!(
                answer(&[("etag", &quoted), ("x-amz-server-side-encryption", sse)]),
                None
            );
        }
        assert_eq!(
            answer(&[
                ("etag", &quoted),
                ("x-amz-server-side-encryption-customer-algorithm", "AES256")
            ]),
            None
        );
    }

    /// More bytes than announced, or fewer, are refused before the store could keep them.
    #[tokio::test]
    async fn a_put_of_the_wrong_length_is_refused() {
        let addr = silent_server(true);
        let mut sink = put_to(addr, 10);
        assert!(sink
            .write(bytes::Bytes::from_static(b"0123456789A"))
            .await
            .is_err());
        let sink = Box::new(put_to(addr, 10));
        assert!(sink.finish().await.is_err());
    }
}
