//! Streaming request bodies to temporary files.
//!
//! [`BlobWriter`] takes the body chunk by chunk: a blocking thread writes the bytes to a temp
//! file while a second thread computes the MD5 etag of the same bytes, so hashing runs in
//! parallel with the disk and the async side only forwards reference-counted buffers. Memory
//! stays bounded by the channel capacities whatever the body size.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use md5::{Digest, Md5};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Chunks in flight between the request and the writer thread.
const QUEUE: usize = 32;

/// A finished temporary file; removed on drop unless handed over with [`TempBlob::keep`].
#[derive(Debug)]
pub struct TempBlob {
    path: PathBuf,
    pub size: u64,
    /// Lowercase hex MD5 of the content hashed by the writer (empty with [`Hashing::Off`]).
    pub md5: String,
    /// The MD5 state after the content, to continue hashing a larger file.
    pub md5_state: Option<Md5>,
    kept: bool,
}

/// What the writer hashes.
#[derive(Clone, Default)]
pub enum Hashing {
    /// The MD5 of this content.
    #[default]
    Fresh,
    /// Continue an MD5 over earlier bytes (a chunk that extends an upload in order).
    Continue(Md5),
    /// No hashing.
    Off,
}

impl std::fmt::Debug for Hashing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Hashing::Fresh => "Fresh",
            Hashing::Continue(_) => "Continue",
            Hashing::Off => "Off",
        })
    }
}

impl TempBlob {
    /// Takes over an existing file (e.g. an assembled chunked upload) with its size and MD5.
    pub fn adopt(path: PathBuf, size: u64, md5: String) -> TempBlob {
        TempBlob {
            path,
            size,
            md5,
            md5_state: None,
            kept: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Gives up ownership of the file: the caller moved or will remove it.
    pub fn keep(mut self) -> PathBuf {
        self.kept = true;
        std::mem::take(&mut self.path)
    }
}

impl Drop for TempBlob {
    fn drop(&mut self) {
        if !self.kept && !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Why a write was refused.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the body exceeds the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Removes the file if the writer is dropped before `finish`.
struct PathGuard(Option<PathBuf>);

impl Drop for PathGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

pub struct BlobWriter {
    tx: Option<mpsc::Sender<Bytes>>,
    task: Option<JoinHandle<std::io::Result<Option<Md5>>>>,
    guard: PathGuard,
    written: u64,
    limit: u64,
}

/// A unique temporary file name inside `dir`.
pub fn temp_path(dir: &Path) -> PathBuf {
    dir.join(format!("upload-{}.part", crate::util::random_hex(16)))
}

impl BlobWriter {
    /// Starts a new temporary file in `dir` that accepts at most `limit` bytes.
    pub async fn create(dir: &Path, limit: u64) -> std::io::Result<BlobWriter> {
        Self::create_with(dir, limit, Hashing::Fresh).await
    }

    /// Like [`BlobWriter::create`], choosing what is hashed.
    pub async fn create_with(dir: &Path, limit: u64, hashing: Hashing) -> std::io::Result<BlobWriter> {
        let path = temp_path(dir);
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await?
            .into_std()
            .await;
        let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
        let task = tokio::task::spawn_blocking(move || -> std::io::Result<Option<Md5>> {
            let seed = match hashing {
                Hashing::Fresh => Some(Md5::new()),
                Hashing::Continue(state) => Some(state),
                Hashing::Off => None,
            };
            let (htx, hasher) = match seed {
                Some(mut md5) => {
                    let (htx, hrx) = std::sync::mpsc::sync_channel::<Bytes>(QUEUE);
                    let hasher = std::thread::spawn(move || {
                        while let Ok(chunk) = hrx.recv() {
                            md5.update(&chunk);
                        }
                        md5
                    });
                    (Some(htx), Some(hasher))
                }
                None => (None, None),
            };
            let mut file = std::io::BufWriter::with_capacity(256 * 1024, file);
            let mut result = Ok(());
            while let Some(chunk) = rx.blocking_recv() {
                if let Err(e) = file.write_all(&chunk) {
                    result = Err(e);
                    break;
                }
                if let Some(htx) = &htx {
                    if htx.send(chunk).is_err() {
                        break;
                    }
                }
            }
            drop(htx);
            let md5 = match hasher {
                Some(h) => Some(
                    h.join()
                        .map_err(|_| std::io::Error::other("hash thread panicked"))?,
                ),
                None => None,
            };
            result?;
            file.flush()?;
            Ok(md5)
        });
        Ok(BlobWriter {
            tx: Some(tx),
            task: Some(task),
            guard: PathGuard(Some(path)),
            written: 0,
            limit,
        })
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub async fn write(&mut self, chunk: Bytes) -> Result<(), WriteError> {
        if chunk.is_empty() {
            return Ok(());
        }
        if self.written + chunk.len() as u64 > self.limit {
            return Err(WriteError::TooLarge { limit: self.limit });
        }
        self.written += chunk.len() as u64;
        let Some(tx) = &self.tx else {
            return Err(WriteError::Io(std::io::Error::other(
                "writer already finished",
            )));
        };
        if tx.send(chunk).await.is_err() {
            // The writer thread stopped: its error is reported by `finish`.
            return Err(WriteError::Io(self.finish_error().await));
        }
        Ok(())
    }

    async fn finish_error(&mut self) -> std::io::Error {
        self.tx = None;
        match self.task.take() {
            Some(task) => match task.await {
                Ok(Err(e)) => e,
                Ok(Ok(_)) => std::io::Error::other("writer stopped early"),
                Err(e) => std::io::Error::other(e.to_string()),
            },
            None => std::io::Error::other("writer already finished"),
        }
    }

    /// Flushes the file and returns it with its size and MD5.
    pub async fn finish(mut self) -> std::io::Result<TempBlob> {
        self.tx = None;
        let task = self
            .task
            .take()
            .ok_or_else(|| std::io::Error::other("writer already finished"))?;
        let md5_state = task
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))??;
        let md5 = md5_state
            .as_ref()
            .map(|m| hex::encode(m.clone().finalize()))
            .unwrap_or_default();
        let path = self
            .guard
            .0
            .take()
            .ok_or_else(|| std::io::Error::other("writer already finished"))?;
        Ok(TempBlob {
            path,
            size: self.written,
            md5,
            md5_state,
            kept: false,
        })
    }
}

/// Writes `data` (already in memory, e.g. a decoded data URI) to a temporary file.
pub async fn blob_from_bytes(
    dir: &Path,
    data: Vec<u8>,
    limit: u64,
) -> Result<TempBlob, WriteError> {
    let mut w = BlobWriter::create(dir, limit).await?;
    w.write(Bytes::from(data)).await?;
    Ok(w.finish().await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_hashes_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = BlobWriter::create(dir.path(), 10).await.unwrap();
        w.write(Bytes::from_static(b"hello ")).await.unwrap();
        w.write(Bytes::from_static(b"wor")).await.unwrap();
        assert!(matches!(
            w.write(Bytes::from_static(b"ld!!")).await,
            Err(WriteError::TooLarge { .. })
        ));
        let blob = w.finish().await.unwrap();
        assert_eq!(blob.size, 9);
        assert_eq!(std::fs::read(blob.path()).unwrap(), b"hello wor");
        assert_eq!(blob.md5, hex::encode(Md5::digest(b"hello wor")));
        let path = blob.path().to_path_buf();
        drop(blob);
        assert!(!path.exists());
        let w = BlobWriter::create(dir.path(), 10).await.unwrap();
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
