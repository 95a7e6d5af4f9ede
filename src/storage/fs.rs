//! Blobs as files under `<data_dir>/blobs`.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::{BlobStore, ByteRange, ByteStream, TempBlob};

pub struct FsBlobStore {
    root: PathBuf,
}

impl FsBlobStore {
    pub fn new(root: PathBuf) -> std::io::Result<FsBlobStore> {
        std::fs::create_dir_all(&root)?;
        Ok(FsBlobStore { root })
    }

    /// The file of a key. Keys are server-made, but are still checked so that no value could
    /// leave the root.
    fn path(&self, key: &str) -> std::io::Result<PathBuf> {
        super::check_key(key)?;
        // One allocation of the right size (`join` copies the root, then grows it).
        let mut path = PathBuf::with_capacity(self.root.as_os_str().len() + 1 + key.len());
        path.push(&self.root);
        path.push(key);
        Ok(path)
    }
}

fn collect_keys(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            collect_keys(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn put(&self, key: &str, blob: TempBlob) -> std::io::Result<()> {
        let dest = self.path(key)?;
        if let Some(bytes) = blob.bytes() {
            // Small in-memory content: a few short syscalls, not worth a thread hop. The
            // folder usually exists: it is made only when the write finds it missing.
            return match super::temp::write_atomically(bytes, &dest) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if let Some(parent) = dest.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    super::temp::write_atomically(bytes, &dest)
                }
                done => done,
            };
        }
        tokio::task::spawn_blocking(move || {
            if let Some(parent) = dest.parent() {
                if !parent.is_dir() {
                    std::fs::create_dir_all(parent)?;
                }
            }
            blob.persist(&dest)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
    }

    async fn size(&self, key: &str) -> std::io::Result<Option<u64>> {
        match tokio::fs::metadata(self.path(key)?).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn read(
        &self,
        key: &str,
        range: Option<ByteRange>,
    ) -> std::io::Result<Option<ByteStream>> {
        let mut file = match tokio::fs::File::open(self.path(key)?).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let stream: ByteStream = match range {
            None => ReaderStream::with_capacity(file, 64 * 1024).boxed(),
            Some(r) => {
                file.seek(SeekFrom::Start(r.start)).await?;
                let len = r.end.saturating_sub(r.start) + 1;
                ReaderStream::with_capacity(file.take(len), 64 * 1024).boxed()
            }
        };
        Ok(Some(stream))
    }

    async fn delete(&self, key: &str) -> std::io::Result<()> {
        match tokio::fs::remove_file(self.path(key)?).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn modified(&self, key: &str) -> std::io::Result<Option<std::time::SystemTime>> {
        match tokio::fs::metadata(self.path(key)?).await {
            Ok(m) => Ok(Some(m.modified()?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn keys(&self) -> std::io::Result<Vec<String>> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            collect_keys(&root, &root, &mut out)?;
            Ok(out)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
    }

    async fn health(&self) -> std::io::Result<()> {
        let probe = self
            .root
            .join(format!(".health-{}", crate::util::random_hex(6)));
        tokio::fs::write(&probe, b"ok").await?;
        tokio::fs::remove_file(&probe).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::temp::blob_from_bytes;

    #[tokio::test]
    async fn put_read_range_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::new(dir.path().join("blobs")).unwrap();
        let blob = blob_from_bytes(dir.path(), b"0123456789".to_vec(), 100)
            .await
            .unwrap();
        store.put("demo/ab/abcdef", blob).await.unwrap();
        assert_eq!(store.size("demo/ab/abcdef").await.unwrap(), Some(10));
        let mut s = store
            .read("demo/ab/abcdef", Some(ByteRange { start: 2, end: 4 }))
            .await
            .unwrap()
            .unwrap();
        let mut got = Vec::new();
        while let Some(c) = s.next().await {
            got.extend_from_slice(&c.unwrap());
        }
        assert_eq!(got, b"234");
        assert_eq!(
            store.keys().await.unwrap(),
            vec!["demo/ab/abcdef".to_string()]
        );
        store.delete("demo/ab/abcdef").await.unwrap();
        assert!(store.read("demo/ab/abcdef", None).await.unwrap().is_none());
        assert!(store.path("../x").is_err());
        assert!(store.path("a//b").is_err());
        store.health().await.unwrap();
    }
}
