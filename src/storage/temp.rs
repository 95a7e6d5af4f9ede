//! Streaming request bodies to temporary storage.
//!
//! [`BlobWriter`] takes the body chunk by chunk. Small bodies (up to [`SPILL_BYTES`]) stay in
//! memory, in reused buffers, and are hashed once complete, side by side with other requests'
//! bodies ([`crate::storage::md5::batch`]): no file until they are stored. Larger ones spill
//! to a temporary file, written as the chunks come on the request's own thread (see
//! [`Spilled`]), while a second thread computes the MD5 etag of the same bytes, so hashing runs
//! in parallel with the transfer and only reference-counted buffers change threads. Memory
//! stays bounded by the spill size and the channel capacities whatever the body size.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::storage::md5::Md5;
use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

/// Chunks in flight between a request and its body's MD5 thread.
const QUEUE: usize = 16;
/// Bodies up to this size are kept in memory.
pub const SPILL_BYTES: usize = 256 * 1024;
/// In-memory buffers kept for the next bodies, at most.
const POOLED: usize = 32;
/// Bodies larger than this move to a pooled buffer.
const POOLED_FROM: usize = 16 * 1024;

/// Buffers of [`SPILL_BYTES`] for in-memory bodies, reused: a new allocation of that size
/// would come back from the system page by page, zeroed, for every upload.
static POOL: std::sync::Mutex<Vec<BytesMut>> = std::sync::Mutex::new(Vec::new());

fn pooled_buffer() -> BytesMut {
    POOL.lock()
        .ok()
        .and_then(|mut pool| pool.pop())
        .unwrap_or_else(|| BytesMut::with_capacity(SPILL_BYTES))
}

/// Keeps `bytes`' buffer for another body when nothing else holds it.
fn recycle(bytes: Bytes) {
    if let Ok(mut buf) = bytes.try_into_mut() {
        if buf.capacity() >= SPILL_BYTES {
            buf.clear();
            if let Ok(mut pool) = POOL.lock() {
                if pool.len() < POOLED {
                    pool.push(buf);
                }
            }
        }
    }
}

#[derive(Debug)]
enum Content {
    Memory(Bytes),
    File(PathBuf),
    /// Written in place into a file owned by someone else (a chunked upload's data file).
    Placed(PathBuf),
    Gone,
}

/// Received content, in memory or in a temporary file (removed on drop unless persisted).
#[derive(Debug)]
pub struct TempBlob {
    content: Content,
    pub size: u64,
    /// Lowercase hex MD5 of the content hashed by the writer (empty with [`Hashing::Off`]).
    pub md5: String,
    /// The same content, already written to the blob store while it was received.
    pub stored: Option<super::StoredObject>,
}

/// What the writer hashes.
#[derive(Clone, Default)]
pub enum Hashing {
    /// The MD5 of this content.
    #[default]
    Fresh,
    /// No hashing.
    Off,
}

impl std::fmt::Debug for Hashing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Hashing::Fresh => "Fresh",
            Hashing::Off => "Off",
        })
    }
}

/// A readable, seekable view of a blob's content.
pub trait ReadSeek: Read + Seek + Send {}
impl<T: Read + Seek + Send> ReadSeek for T {}

impl TempBlob {
    /// Takes over an existing file (e.g. an assembled chunked upload) with its size and MD5.
    pub fn adopt(path: PathBuf, size: u64, md5: String) -> TempBlob {
        TempBlob {
            content: Content::File(path),
            size,
            md5,
            stored: None,
        }
    }

    /// The content when it is held in memory.
    pub fn bytes(&self) -> Option<&Bytes> {
        match &self.content {
            Content::Memory(b) => Some(b),
            _ => None,
        }
    }

    /// The temporary file when the content spilled to disk.
    pub fn path(&self) -> Option<&Path> {
        match &self.content {
            Content::File(p) => Some(p),
            _ => None,
        }
    }

    /// The file the content was written into in place, if it was.
    pub fn placed(&self) -> Option<&Path> {
        match &self.content {
            Content::Placed(p) => Some(p),
            _ => None,
        }
    }

    /// Hashes the content if it has no MD5 yet (written with [`Hashing::Off`], and no MD5
    /// came from elsewhere).
    pub async fn ensure_md5(&mut self) -> std::io::Result<()> {
        if !self.md5.is_empty() {
            return Ok(());
        }
        let digest = match &self.content {
            Content::Memory(b) => super::md5::batch::digest(b.clone()).await,
            Content::File(p) => {
                let path = p.clone();
                tokio::task::spawn_blocking(move || -> std::io::Result<[u8; 16]> {
                    let mut file = std::fs::File::open(path)?;
                    let mut md5 = Md5::new();
                    let mut buf = vec![0u8; 1024 * 1024];
                    loop {
                        let n = file.read(&mut buf)?;
                        if n == 0 {
                            return Ok(md5.finalize());
                        }
                        md5.update(&buf[..n]);
                    }
                })
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))??
            }
            Content::Placed(_) | Content::Gone => {
                return Err(std::io::Error::other("content cannot be hashed on its own"))
            }
        };
        self.md5 = hex::encode(digest);
        Ok(())
    }

    /// Opens the content for reading (blocking).
    pub fn reader(&self) -> std::io::Result<Box<dyn ReadSeek>> {
        match &self.content {
            Content::Memory(b) => Ok(Box::new(std::io::Cursor::new(b.clone()))),
            Content::File(p) => Ok(Box::new(std::fs::File::open(p)?)),
            Content::Placed(_) | Content::Gone => {
                Err(std::io::Error::other("content is not readable on its own"))
            }
        }
    }

    /// Writes the content into `file` at `offset` (blocking; in-kernel copy for files).
    pub fn write_at(&self, file: &Path, offset: u64) -> std::io::Result<()> {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(file)?;
        out.seek(std::io::SeekFrom::Start(offset))?;
        match &self.content {
            Content::Memory(b) => out.write_all(b),
            Content::File(p) => std::io::copy(&mut std::fs::File::open(p)?, &mut out).map(|_| ()),
            Content::Placed(_) | Content::Gone => Err(std::io::Error::other("nothing to copy")),
        }
    }

    /// Moves the content to `dest` atomically (blocking): a rename of the temporary file, or
    /// the in-memory bytes written next to `dest` and renamed over it.
    pub fn persist(mut self, dest: &Path) -> std::io::Result<()> {
        match std::mem::replace(&mut self.content, Content::Gone) {
            Content::File(p) => {
                if let Err(e) = std::fs::rename(&p, dest) {
                    self.content = Content::File(p);
                    return Err(e);
                }
                Ok(())
            }
            Content::Memory(b) => {
                let written = write_atomically(&b, dest);
                if written.is_err() {
                    self.content = Content::Memory(b);
                } else {
                    recycle(b);
                }
                written
            }
            Content::Placed(_) | Content::Gone => {
                Err(std::io::Error::other("blob cannot be persisted"))
            }
        }
    }
}

/// Writes `bytes` next to `dest` and renames the file over it (blocking): readers see the
/// old file or the whole new one. On Linux a new `dest` is first tried as an unnamed file
/// linked into place once written ([`linked::write`]), which appears as whole as a renamed
/// one at less cost.
pub fn write_atomically(bytes: &[u8], dest: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    if linked::write(bytes, dest)? {
        return Ok(());
    }
    let tmp = dest.with_file_name(format!(
        ".{}.{}",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("blob"),
        crate::util::random_hex(6)
    ));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|_| std::fs::rename(&tmp, dest));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(target_os = "linux")]
mod linked {
    use std::collections::HashMap;
    use std::io::Write;
    use std::os::fd::OwnedFd;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, LazyLock, Mutex};

    use rustix::fs::{AtFlags, Mode, OFlags};
    use rustix::io::Errno;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Set once the folder's filesystem or the kernel turned the unnamed file down: the named
    /// temporary file is used from then on.
    static UNAVAILABLE: AtomicBool = AtomicBool::new(false);

    /// Folders written into lately, held open (`O_PATH`): the unnamed file is made and linked
    /// relative to its folder, so the kernel does not walk the folder's whole path twice per
    /// write. A folder removed since is noticed (`ENOENT` through its handle) and opened again.
    static FOLDERS: LazyLock<Mutex<HashMap<PathBuf, Arc<OwnedFd>>>> =
        LazyLock::new(Default::default);
    /// Folders held open at most (the blob store has 256 per cloud; each is a descriptor of
    /// the process's); past that, all are let go and opened again as they are written into.
    const MOST_FOLDERS: usize = 1024;

    /// The handle of `dir`, held open or opened now (`fresh`: opened now, any held one let go).
    fn folder(dir: &Path, fresh: bool) -> std::io::Result<Arc<OwnedFd>> {
        let folders = || FOLDERS.lock().unwrap_or_else(|e| e.into_inner());
        if fresh {
            folders().remove(dir);
        } else if let Some(fd) = folders().get(dir) {
            return Ok(fd.clone());
        }
        let fd = Arc::new(rustix::fs::open(
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?);
        let mut map = folders();
        if map.len() >= MOST_FOLDERS {
            map.clear();
        }
        map.insert(dir.to_path_buf(), fd.clone());
        Ok(fd)
    }

    /// Writes `bytes` into an unnamed file (`O_TMPFILE`) in `dest`'s folder and links it at
    /// `dest` (`linkat` with `AT_EMPTY_PATH`): no temporary name is made, renamed and
    /// looked up. `Ok(false)` when that cannot be done here or `dest` exists (a rename
    /// replaces it); a missing folder is an error (`NotFound`), as for a named file.
    pub fn write(bytes: &[u8], dest: &Path) -> std::io::Result<bool> {
        if UNAVAILABLE.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let (Some(dir), Some(name)) = (dest.parent(), dest.file_name()) else {
            return Ok(false);
        };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        // Errors that say the unnamed file cannot be had here (the filesystem, the kernel, or
        // linking by descriptor without a capability on older kernels).
        let unavailable = |errno: Errno| {
            matches!(
                errno,
                Errno::OPNOTSUPP
                    | Errno::ISDIR
                    | Errno::INVAL
                    | Errno::PERM
                    | Errno::ACCESS
                    | Errno::NOENT
            )
        };
        // What a held folder refuses is tried once more with the folder opened again (which
        // fails with `NotFound` when it is really gone: the caller makes it).
        let mut fresh = false;
        loop {
            let dirfd = folder(dir, fresh)?;
            let opened = rustix::fs::openat(
                &*dirfd,
                ".",
                OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o666),
            );
            let file = match opened {
                Ok(fd) => std::fs::File::from(fd),
                // Refused through a held handle: the folder may be gone (a removed folder
                // answers `ENOENT` or `EPERM`, by filesystem); judged on a fresh handle.
                Err(_) if !fresh => {
                    fresh = true;
                    continue;
                }
                Err(Errno::NOENT) => return Err(Errno::NOENT.into()),
                Err(errno) if unavailable(errno) => {
                    UNAVAILABLE.store(true, Ordering::Relaxed);
                    return Ok(false);
                }
                Err(errno) => return Err(errno.into()),
            };
            (&file).write_all(bytes)?;
            match rustix::fs::linkat(&file, "", &*dirfd, name, AtFlags::EMPTY_PATH) {
                Ok(()) => return Ok(true),
                Err(Errno::EXIST) => return Ok(false),
                Err(_) if !fresh => {
                    fresh = true;
                    continue;
                }
                // The folder removed since it was opened (it has no links left): the caller's
                // to make again, not a sign that linking cannot be done here.
                Err(Errno::NOENT)
                    if rustix::fs::fstat(&*dirfd).is_ok_and(|st| st.st_nlink == 0) =>
                {
                    return Err(Errno::NOENT.into());
                }
                Err(errno) if unavailable(errno) => {
                    UNAVAILABLE.store(true, Ordering::Relaxed);
                    return Ok(false);
                }
                Err(errno) => return Err(errno.into()),
            }
        }
    }
}

impl Drop for TempBlob {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.content, Content::Gone) {
            Content::File(p) => {
                let _ = std::fs::remove_file(p);
            }
            Content::Memory(b) => recycle(b),
            Content::Placed(_) | Content::Gone => {}
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

/// The file-backed stage of a writer: chunks are written as they come, on the request's own
/// thread (a write into the page cache takes microseconds, and the bytes are still in that
/// core's cache), in writes that end at a page's edge. Writes found slow (the kernel holding
/// writers back while it flushes, a slow disk) send every body's writes to blocking threads
/// for a while, so that the request threads do not wait on a disk.
struct Spilled {
    /// `None` only while a write runs on a blocking thread.
    file: Option<std::fs::File>,
    pending: Pending,
    /// The file offset of the first pending chunk's start.
    offset: u64,
    tap: Option<Tap>,
    /// The thread hashing the chunks, and its result once it has them all.
    hasher: Option<(mpsc::Sender<Bytes>, tokio::sync::oneshot::Receiver<Md5>)>,
    /// Writes found slow since the last switch to blocking threads.
    slow_writes: u32,
    guard: PathGuard,
}

pub struct BlobWriter {
    target: Target,
    /// In-memory stage: the first chunk as it came, while it is the only one (a small body
    /// often arrives in one piece, and is then kept without a copy)...
    first: Option<Bytes>,
    /// ...else the bytes so far.
    buf: BytesMut,
    /// Whether the content is hashed.
    hashed: bool,
    spilled: Option<Spilled>,
    written: u64,
    limit: u64,
}

/// A unique temporary file name inside `dir`.
pub fn temp_path(dir: &Path) -> PathBuf {
    dir.join(format!("upload-{}.part", crate::util::random_hex(16)))
}

/// Receives every chunk a placed writer wrote, with its offset in the file, once the consumer
/// has room for it.
pub struct Tap {
    /// The consumer's room, in bytes: taken for a chunk before it is given, given back by the
    /// consumer once it is done with the chunk.
    pub room: std::sync::Arc<tokio::sync::Semaphore>,
    /// The most one chunk takes of the room (a larger chunk waits for all of it).
    pub most: usize,
    /// Gives the chunk; false when the consumer did not take it (its room is given back).
    pub give: Box<dyn FnMut(u64, Bytes) -> bool + Send>,
}

impl Tap {
    /// The room a chunk of `len` bytes takes.
    pub fn room_for(most: usize, len: usize) -> u32 {
        u32::try_from(len.min(most)).unwrap_or(u32::MAX)
    }

    pub async fn feed(&mut self, offset: u64, chunk: Bytes) {
        let n = Self::room_for(self.most, chunk.len());
        if let Ok(p) = self.room.acquire_many(n).await {
            p.forget();
        }
        if !(self.give)(offset, chunk) {
            self.room.add_permits(n as usize);
        }
    }
}

/// [`SLOW_WRITES`] writes of one body slower than this move the writes of every body to
/// blocking threads for [`SLOW_FOR_MS`] (the kernel holds a writer back for 10 to 200 ms at a
/// time when it has too much to flush; a page-cache write of a piece of a body takes tens of
/// microseconds, and one slow write alone may be the machine pausing the thread).
const SLOW_WRITE: std::time::Duration = std::time::Duration::from_millis(10);
const SLOW_WRITES: u32 = 3;
const SLOW_FOR_MS: u64 = 10_000;
/// Until when (in [`super::clock_ms`]) writes go to blocking threads (0: not since start).
static SLOW_UNTIL_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Whether a write was slow lately.
fn writes_slow() -> bool {
    let until = SLOW_UNTIL_MS.load(std::sync::atomic::Ordering::Relaxed);
    until != 0 && super::clock_ms() < until
}

/// Where a spilled writer writes.
enum Target {
    /// A new temporary file in this folder.
    Temp(PathBuf),
    /// In place: this file at this offset (created when missing, never truncated).
    At(PathBuf, u64),
}

async fn spill(target: &Target, hashed: bool, tap: Option<Tap>) -> std::io::Result<Spilled> {
    let offset = match target {
        Target::At(_, offset) => *offset,
        Target::Temp(_) => 0,
    };
    let (file, guard) = match target {
        Target::Temp(dir) => {
            let path = temp_path(dir);
            let file = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .await?;
            (file, PathGuard(Some(path)))
        }
        Target::At(path, offset) => {
            let mut file = tokio::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .await?;
            tokio::io::AsyncSeekExt::seek(&mut file, std::io::SeekFrom::Start(*offset)).await?;
            (file, PathGuard(None))
        }
    };
    let file = file.into_std().await;
    let hasher = hashed.then(|| {
        let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
        let (done, result) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut md5 = Md5::new();
            while let Some(chunk) = rx.blocking_recv() {
                md5.update(&chunk);
            }
            let _ = done.send(md5);
        });
        (tx, result)
    });
    Ok(Spilled {
        file: Some(file),
        pending: Pending::default(),
        offset,
        tap,
        hasher,
        slow_writes: 0,
        guard,
    })
}

impl Spilled {
    /// Takes a chunk, and whether it is to be hashed.
    async fn push(&mut self, chunk: Bytes, hash: bool) -> std::io::Result<()> {
        self.pending.push((chunk, hash));
        // Gathered while writes go to blocking threads.
        if self.pending.len < WRITE_BATCH && writes_slow() {
            return Ok(());
        }
        self.write_out(false).await
    }

    /// Writes what is pending (up to a page's edge unless `last`), then gives the chunks
    /// written to the tap and the hasher.
    async fn write_out(&mut self, last: bool) -> std::io::Result<()> {
        let start = self.offset + self.pending.skip as u64;
        let end = start + self.pending.len as u64;
        let to = if last { end } else { end - end % PAGE };
        if to > start {
            let n = (to - start) as usize;
            let mut done = Vec::new();
            let mut file = self
                .file
                .take()
                .ok_or_else(|| std::io::Error::other("writer lost its file"))?;
            // A large write (a decoded data URI, say) goes to a blocking thread too.
            let result = if n > WRITE_BATCH || writes_slow() {
                let mut pending = std::mem::take(&mut self.pending);
                let (f, p, d, r) = tokio::task::spawn_blocking(move || {
                    let r = pending.write(&mut file, n, &mut done);
                    (file, pending, done, r)
                })
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?;
                (file, self.pending, done) = (f, p, d);
                r
            } else {
                let started = std::time::Instant::now();
                let r = self.pending.write(&mut file, n, &mut done);
                if started.elapsed() > SLOW_WRITE {
                    self.slow_writes += 1;
                    if self.slow_writes >= SLOW_WRITES {
                        tracing::debug!("slow writes: writes go to blocking threads for a while");
                        self.slow_writes = 0;
                        SLOW_UNTIL_MS.store(
                            super::clock_ms() + SLOW_FOR_MS,
                            std::sync::atomic::Ordering::Relaxed,
                        );
                    }
                }
                r
            };
            self.file = Some(file);
            result?;
            for (chunk, hash) in done {
                let len = chunk.len() as u64;
                if let Some(tap) = &mut self.tap {
                    tap.feed(self.offset, chunk.clone()).await;
                }
                self.offset += len;
                if let (Some((tx, _)), true) = (&self.hasher, hash) {
                    if tx.send(chunk).await.is_err() {
                        return Err(std::io::Error::other("hash thread stopped"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes the rest and returns the MD5 state of the hashed chunks, if hashed.
    async fn finish(mut self) -> std::io::Result<(PathGuard, Option<Md5>)> {
        self.write_out(true).await?;
        let md5 = match self.hasher.take() {
            Some((tx, result)) => {
                drop(tx);
                Some(
                    result
                        .await
                        .map_err(|_| std::io::Error::other("hash thread stopped"))?,
                )
            }
            None => None,
        };
        Ok((std::mem::replace(&mut self.guard, PathGuard(None)), md5))
    }
}

/// Bytes written at once on a request's thread, at most (a larger write goes to a blocking
/// thread), and what a body whose writes went to blocking threads gathers for one.
const WRITE_BATCH: usize = 1024 * 1024;
/// Writes end at a multiple of this (a page), the last one excepted: a write ending inside a
/// page has the kernel fill the rest of the page with zeros, for the next write to overwrite.
const PAGE: u64 = 4096;
/// Chunks given to one `writev`, at most.
const MAX_SLICES: usize = 64;

/// Chunks received and not yet written whole, in order.
#[derive(Default)]
struct Pending {
    chunks: std::collections::VecDeque<(Bytes, bool)>,
    /// Bytes of the first chunk already written.
    skip: usize,
    /// Bytes not written yet.
    len: usize,
}

impl Pending {
    fn push(&mut self, chunk: (Bytes, bool)) {
        self.len += chunk.0.len();
        self.chunks.push_back(chunk);
    }

    /// Writes the next `n` bytes (several chunks a system call), moving the chunks written
    /// whole to `done`.
    fn write(
        &mut self,
        file: &mut std::fs::File,
        mut n: usize,
        done: &mut Vec<(Bytes, bool)>,
    ) -> std::io::Result<()> {
        while n > 0 {
            let mut slices = Vec::with_capacity(self.chunks.len().min(MAX_SLICES));
            let mut left = n;
            for (i, (chunk, _)) in self.chunks.iter().enumerate().take(MAX_SLICES) {
                let from = if i == 0 { self.skip } else { 0 };
                let take = (chunk.len() - from).min(left);
                slices.push(std::io::IoSlice::new(&chunk[from..from + take]));
                left -= take;
                if left == 0 {
                    break;
                }
            }
            let wrote = match file.write_vectored(&slices) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(w) => w,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            n -= wrote;
            self.len -= wrote;
            let mut k = wrote;
            while k > 0 {
                let Some((first, _)) = self.chunks.front() else {
                    break;
                };
                let rest = first.len() - self.skip;
                if k < rest {
                    self.skip += k;
                    break;
                }
                k -= rest;
                self.skip = 0;
                done.extend(self.chunks.pop_front());
            }
        }
        Ok(())
    }
}

impl BlobWriter {
    /// Starts a new blob (spilling into `dir` when large) that accepts at most `limit` bytes.
    pub async fn create(dir: &Path, limit: u64) -> std::io::Result<BlobWriter> {
        Self::create_with(dir, limit, Hashing::Fresh).await
    }

    /// Like [`BlobWriter::create`], choosing what is hashed.
    pub async fn create_with(
        dir: &Path,
        limit: u64,
        hashing: Hashing,
    ) -> std::io::Result<BlobWriter> {
        Ok(BlobWriter {
            target: Target::Temp(dir.to_path_buf()),
            first: None,
            buf: BytesMut::new(),
            hashed: matches!(hashing, Hashing::Fresh),
            spilled: None,
            written: 0,
            limit,
        })
    }

    /// Writes the content in place into `file` at `offset`, unhashed (a chunked upload's
    /// part); `tap` sees every chunk once it is written.
    pub async fn create_placed(
        file: &Path,
        offset: u64,
        limit: u64,
        tap: Option<Tap>,
    ) -> std::io::Result<BlobWriter> {
        let target = Target::At(file.to_path_buf(), offset);
        let spilled = spill(&target, false, tap).await?;
        Ok(BlobWriter {
            target,
            first: None,
            buf: BytesMut::new(),
            hashed: false,
            spilled: Some(spilled),
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
        if self.spilled.is_none() {
            let held = self.first.as_ref().map_or(0, Bytes::len) + self.buf.len();
            if held + chunk.len() <= SPILL_BYTES {
                if held == 0 {
                    self.first = Some(chunk);
                    return Ok(());
                }
                // Hashed whole at the end, with other requests' bodies.
                if let Some(first) = self.first.take() {
                    self.buffer(&first);
                }
                self.buffer(&chunk);
                return Ok(());
            }
            // Too large for memory: continue in a file, the held bytes first.
            let mut spilled = spill(&self.target, self.hashed, None).await?;
            if let Some(first) = self.first.take() {
                Self::send(&mut spilled, first, true).await?;
            }
            let buffered = std::mem::take(&mut self.buf).freeze();
            if !buffered.is_empty() {
                Self::send(&mut spilled, buffered, true).await?;
            }
            self.spilled = Some(spilled);
        }
        match self.spilled.as_mut() {
            Some(s) => Self::send(s, chunk, true).await,
            None => Err(WriteError::Io(std::io::Error::other(
                "writer lost its file",
            ))),
        }
    }

    /// Appends to the in-memory stage. Past a few pages, the body moves to a reused buffer of
    /// the full size (a small body keeps its own small one).
    fn buffer(&mut self, bytes: &[u8]) {
        if self.buf.len() + bytes.len() > POOLED_FROM && self.buf.capacity() < SPILL_BYTES {
            let mut pooled = pooled_buffer();
            pooled.extend_from_slice(&self.buf);
            self.buf = pooled;
        }
        self.buf.extend_from_slice(bytes);
    }

    async fn send(s: &mut Spilled, chunk: Bytes, hash: bool) -> Result<(), WriteError> {
        s.push(chunk, hash).await.map_err(WriteError::Io)
    }

    /// Completes the blob and returns it with its size and MD5.
    pub async fn finish(mut self) -> std::io::Result<TempBlob> {
        let (content, md5) = match self.spilled.take() {
            None => {
                let bytes = match self.first.take() {
                    Some(first) => first,
                    None => std::mem::take(&mut self.buf).freeze(),
                };
                let md5 = if self.hashed {
                    hex::encode(super::md5::batch::digest(bytes.clone()).await)
                } else {
                    String::new()
                };
                (Content::Memory(bytes), md5)
            }
            Some(s) => {
                let (mut guard, md5_state) = s.finish().await?;
                let content = match (&self.target, guard.0.take()) {
                    (Target::At(path, _), _) => Content::Placed(path.clone()),
                    (Target::Temp(_), Some(path)) => Content::File(path),
                    (Target::Temp(_), None) => {
                        return Err(std::io::Error::other("writer already finished"))
                    }
                };
                let md5 = md5_state
                    .map(|m| hex::encode(m.finalize()))
                    .unwrap_or_default();
                (content, md5)
            }
        };
        Ok(TempBlob {
            content,
            size: self.written,
            md5,
            stored: None,
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

    #[test]
    fn atomic_writes_make_replace_and_need_their_folder() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a.bin");
        write_atomically(b"first", &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"first");
        // An existing file is replaced whole.
        write_atomically(b"second, longer", &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"second, longer");
        // Nothing else is left in the folder (no temporary name, no unnamed file linked).
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.bin")]);
        // A missing folder is reported as such (the blob store makes it and tries again).
        let err = write_atomically(b"x", &dir.path().join("no/such/b.bin")).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_unnamed_file_is_linked_whole_or_left_to_the_rename() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("c.bin");
        match linked::write(b"content", &dest).unwrap() {
            true => assert_eq!(std::fs::read(&dest).unwrap(), b"content"),
            // Not available here (filesystem, kernel or capability): nothing was made.
            false => assert!(!dest.exists()),
        }
        // An existing file is never replaced by a link: the rename does that.
        std::fs::write(&dest, b"old").unwrap();
        assert!(!linked::write(b"new", &dest).unwrap());
        assert_eq!(std::fs::read(&dest).unwrap(), b"old");
    }

    /// The folders held open for the unnamed files follow a folder removed and made again,
    /// and a folder removed for good is an error the caller sees (it makes the folder).
    #[test]
    fn writes_follow_a_folder_removed_and_made_again() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("shard");
        std::fs::create_dir(&dir).unwrap();
        let linked_here = linked::write(b"one", &dir.join("a.bin")).unwrap();
        if !linked_here {
            write_atomically(b"one", &dir.join("a.bin")).unwrap();
        }
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::create_dir(&dir).unwrap();
        write_atomically(b"two", &dir.join("b.bin")).unwrap();
        assert_eq!(std::fs::read(dir.join("b.bin")).unwrap(), b"two");
        assert!(!dir.join("a.bin").exists());
        std::fs::remove_dir_all(&dir).unwrap();
        let err = write_atomically(b"three", &dir.join("c.bin")).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        std::fs::create_dir(&dir).unwrap();
        write_atomically(b"three", &dir.join("c.bin")).unwrap();
        assert_eq!(std::fs::read(dir.join("c.bin")).unwrap(), b"three");
        // Nothing else was left in the folder (no temporary names).
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        // A removed folder did not turn the unnamed files off.
        if linked_here {
            assert!(linked::write(b"four", &dir.join("d.bin")).unwrap());
        }
    }

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
        assert_eq!(blob.bytes().unwrap().as_ref(), b"hello wor");
        assert_eq!(blob.md5, hex::encode(Md5::digest(b"hello wor")));
        // Large bodies spill to a file; the hash covers every byte.
        let big: Vec<u8> = (0..SPILL_BYTES * 3 + 7).map(|i| (i % 251) as u8).collect();
        let mut w = BlobWriter::create(dir.path(), u64::MAX).await.unwrap();
        for c in big.chunks(10_000) {
            w.write(Bytes::copy_from_slice(c)).await.unwrap();
        }
        let blob = w.finish().await.unwrap();
        let path = blob.path().unwrap().to_path_buf();
        assert_eq!(std::fs::read(&path).unwrap(), big);
        assert_eq!(blob.md5, hex::encode(Md5::digest(&big)));
        drop(blob);
        assert!(!path.exists());
        let mut w = BlobWriter::create(dir.path(), u64::MAX).await.unwrap();
        w.write(Bytes::from(big.clone())).await.unwrap();
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // Persisting writes memory content, or renames the file, atomically.
        let small = blob_from_bytes(dir.path(), b"abc".to_vec(), 10)
            .await
            .unwrap();
        small.persist(&dir.path().join("dest")).unwrap();
        assert_eq!(std::fs::read(dir.path().join("dest")).unwrap(), b"abc");
    }

    /// Chunks of any size written in place at any offset land where they belong, in order,
    /// whether written on the request's thread or (after a slow write) on blocking threads, and
    /// the tap sees each once, with its offset.
    #[tokio::test]
    async fn placed_chunks_land_at_their_offsets_either_way() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 241) as u8).collect();
        for slow in [false, true] {
            let path = dir.path().join(format!("data{slow}"));
            std::fs::write(&path, vec![b'x'; 5000]).unwrap();
            SLOW_UNTIL_MS.store(
                if slow { u64::MAX } else { 0 },
                std::sync::atomic::Ordering::Relaxed,
            );
            let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            // A consumer done with each chunk at once.
            let room = std::sync::Arc::new(tokio::sync::Semaphore::new(100_000));
            let tap = Tap {
                room: room.clone(),
                most: 100_000,
                give: Box::new({
                    let seen = seen.clone();
                    move |offset, bytes: Bytes| {
                        room.add_permits(Tap::room_for(100_000, bytes.len()) as usize);
                        seen.lock().unwrap().push((offset, bytes));
                        true
                    }
                }),
            };
            let at = 4093;
            let mut w = BlobWriter::create_placed(&path, at, data.len() as u64, Some(tap))
                .await
                .unwrap();
            let mut from = 0;
            for size in [1, 4095, 3, 70_000, 1 << 20, 2 << 20, 8191].iter().cycle() {
                let to = (from + size).min(data.len());
                w.write(Bytes::copy_from_slice(&data[from..to]))
                    .await
                    .unwrap();
                from = to;
                if from == data.len() {
                    break;
                }
            }
            w.finish().await.unwrap();
            let file = std::fs::read(&path).unwrap();
            assert_eq!(&file[..at as usize], &vec![b'x'; at as usize][..]);
            assert_eq!(&file[at as usize..], &data[..]);
            let mut next = at;
            let mut tapped = Vec::new();
            for (offset, bytes) in seen.lock().unwrap().iter() {
                assert_eq!(*offset, next);
                next += bytes.len() as u64;
                tapped.extend_from_slice(bytes);
            }
            assert_eq!(tapped, data);
        }
        SLOW_UNTIL_MS.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// A body that arrives in one piece is kept as it came; a second piece, or one too large
    /// for memory, joins it whole and in order.
    #[tokio::test]
    async fn a_body_in_one_piece_is_kept_without_a_copy() {
        let dir = tempfile::tempdir().unwrap();
        let one = Bytes::from(vec![5u8; 10_000]);
        let mut w = BlobWriter::create(dir.path(), u64::MAX).await.unwrap();
        w.write(one.clone()).await.unwrap();
        let blob = w.finish().await.unwrap();
        assert_eq!(blob.bytes().unwrap().as_ptr(), one.as_ptr());
        assert_eq!(blob.md5, hex::encode(Md5::digest(&one)));
        // Two pieces: one body, in order.
        let mut w = BlobWriter::create(dir.path(), u64::MAX).await.unwrap();
        w.write(Bytes::from_static(b"abc")).await.unwrap();
        w.write(Bytes::from_static(b"def")).await.unwrap();
        let blob = w.finish().await.unwrap();
        assert_eq!(blob.bytes().unwrap().as_ref(), b"abcdef");
        assert_eq!(blob.md5, hex::encode(Md5::digest(b"abcdef")));
        // A small first piece, then one that takes the body past memory: a file, in order.
        let big = vec![9u8; SPILL_BYTES];
        let mut w = BlobWriter::create(dir.path(), u64::MAX).await.unwrap();
        w.write(Bytes::from_static(b"head")).await.unwrap();
        w.write(Bytes::from(big.clone())).await.unwrap();
        let blob = w.finish().await.unwrap();
        let mut whole = b"head".to_vec();
        whole.extend_from_slice(&big);
        assert_eq!(std::fs::read(blob.path().unwrap()).unwrap(), whole);
        assert_eq!(blob.md5, hex::encode(Md5::digest(&whole)));
    }

    /// Bodies that reuse a pooled buffer hold only their own bytes, and a buffer still held
    /// elsewhere is not reused under its holder.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reused_buffers_hold_only_their_body() {
        let dir = tempfile::tempdir().unwrap();
        let mut held = Vec::new();
        for round in 0..3 * POOLED {
            let len = [SPILL_BYTES, 100_000, POOLED_FROM + 1, 20_000][round % 4] - round;
            let body: Vec<u8> = (0..len).map(|i| (i * 7 + round) as u8).collect();
            let mut w = BlobWriter::create(dir.path(), u64::MAX).await.unwrap();
            for c in body.chunks(7_000) {
                w.write(Bytes::copy_from_slice(c)).await.unwrap();
            }
            let blob = w.finish().await.unwrap();
            assert_eq!(blob.bytes().unwrap().as_ref(), &body[..], "round {round}");
            assert_eq!(blob.md5, hex::encode(Md5::digest(&body)), "round {round}");
            if round % 3 == 0 {
                // Someone keeps the bytes past the blob: they must stay as they are.
                held.push((blob.bytes().unwrap().clone(), body));
            } else if round % 3 == 1 {
                blob.persist(&dir.path().join(format!("b{round}"))).unwrap();
            }
        }
        for (bytes, body) in held {
            assert_eq!(bytes.as_ref(), &body[..]);
        }
    }
}
