//! In-process helpers of chunked uploads whose parts are written in place into one data file
//! per session: the byte ranges being written right now, a background MD5 that follows the
//! file as its in-order prefix grows (so hashing overlaps the transfer of later parts), and,
//! with an object store, a follower that sends that prefix to the store as it grows.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::storage::md5::Md5;

/// A range written by a request that has not finished is considered abandoned after this.
const INFLIGHT_TIMEOUT: Duration = Duration::from_secs(600);

/// A session's follower, as the requests of its parts share it.
pub type SharedFollower = Arc<tokio::sync::Mutex<Follower>>;

/// Ranges being written in place: `(start, end, since)`.
type InFlight = Vec<(u64, u64, Instant)>;

#[derive(Default)]
pub struct ChunkRuntime {
    inflight: Mutex<HashMap<String, InFlight>>,
    hashers: Mutex<HashMap<String, Arc<FileHasher>>>,
    /// Each followed session's follower, and whether its store answers the MD5 of the
    /// object (its parts are then not hashed here as they arrive).
    followers: Mutex<HashMap<String, (SharedFollower, bool)>>,
}

/// Sends a session's data file to the blob store as its in-order prefix grows (an object
/// store, one instance), so that completing the upload leaves only the last bytes to send.
/// Any failure gives the object up: the finished file is then stored as usual.
pub struct Follower {
    sink: Option<Box<dyn crate::storage::BlobSink>>,
    object: Option<crate::storage::StoredObject>,
    data: PathBuf,
    sent: u64,
    /// The sink's buffers' room in the shared memory budget (given back with the sink).
    budget: Vec<tokio::sync::OwnedSemaphorePermit>,
    /// When it last sent bytes (or started).
    last: Instant,
    _streaming: crate::storage::StreamingBody,
}

/// Bytes a follower reads from the data file at a time (the sink holds a few while the
/// store takes them).
const FOLLOWER_PIECE: usize = 1024 * 1024;
/// Sessions followed at once, at most (each holds its sink's buffers' room in the budget).
const MAX_FOLLOWERS: usize = 4;
/// A follower that sent nothing for this long is given up (an abandoned upload, or a client
/// too slow to gain from it); its upload is then stored when it completes, as usual.
const FOLLOWER_IDLE: Duration = Duration::from_secs(120);

impl Follower {
    pub fn new(
        sink: Box<dyn crate::storage::BlobSink>,
        object: crate::storage::StoredObject,
        data: PathBuf,
        budget: Vec<tokio::sync::OwnedSemaphorePermit>,
        streaming: crate::storage::StreamingBody,
    ) -> Follower {
        Follower {
            sink: Some(sink),
            object: Some(object),
            data,
            sent: 0,
            budget,
            last: Instant::now(),
            _streaming: streaming,
        }
    }

    /// Whether the store is expected to answer the object's MD5 when it is completed.
    pub fn gives_md5(&self) -> bool {
        self.sink.as_ref().is_some_and(|s| s.gives_md5())
    }

    /// Sends the data file's bytes up to `to`.
    pub async fn advance(&mut self, to: u64) {
        if self.sink.is_none() || to <= self.sent {
            return;
        }
        if let Err(e) = self.send_to(to).await {
            tracing::warn!(error = %e, "sending a chunked upload to the store as it arrives failed");
            self.give_up();
        }
        self.last = Instant::now();
    }

    async fn send_to(&mut self, to: u64) -> std::io::Result<()> {
        let Some(sink) = self.sink.as_mut() else {
            return Ok(());
        };
        // Each piece is read on a blocking thread straight into a buffer of its own (no
        // second copy), the file kept open from one piece to the next.
        let mut file: Option<std::fs::File> = None;
        while self.sent < to {
            let want = (to - self.sent).min(FOLLOWER_PIECE as u64);
            let (path, at, open) = (self.data.clone(), self.sent, file.take());
            let (f, piece) = tokio::task::spawn_blocking(
                move || -> std::io::Result<(std::fs::File, bytes::Bytes)> {
                    let mut f = match open {
                        Some(f) => f,
                        None => {
                            let mut f = std::fs::File::open(&path)?;
                            f.seek(SeekFrom::Start(at))?;
                            f
                        }
                    };
                    let mut buf = Vec::with_capacity(want as usize);
                    (&mut f).take(want).read_to_end(&mut buf)?;
                    Ok((f, bytes::Bytes::from(buf)))
                },
            )
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))??;
            if piece.is_empty() {
                return Err(std::io::Error::other(
                    "the data file is shorter than its parts",
                ));
            }
            file = Some(f);
            self.sent += piece.len() as u64;
            sink.write(piece).await?;
        }
        Ok(())
    }

    fn give_up(&mut self) {
        self.sink = None;
        self.object = None;
        self.budget.clear();
    }

    /// Sends what remains of a `total`-byte file and completes the object, given with the
    /// MD5 the store answered (see [`crate::storage::BlobSink::finish`]); `None` when it
    /// could not be (the caller stores the file as usual).
    pub async fn finish(
        &mut self,
        total: u64,
    ) -> Option<(crate::storage::StoredObject, Option<String>)> {
        self.advance(total).await;
        if self.sent != total {
            self.give_up();
            return None;
        }
        let sink = self.sink.take()?;
        match sink.finish().await {
            Ok(md5) => self.object.take().map(|o| (o, md5)),
            Err(e) => {
                tracing::warn!(error = %e, "completing a chunked upload sent as it arrived failed");
                self.give_up();
                None
            }
        }
    }
}

impl ChunkRuntime {
    /// Parts being written now, across sessions.
    pub fn parts_in_flight(&self) -> usize {
        let map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        map.values()
            .map(|ranges| {
                ranges
                    .iter()
                    .filter(|(_, _, t)| t.elapsed() < INFLIGHT_TIMEOUT)
                    .count()
            })
            .sum()
    }

    /// Reserves `start..=end` of a session for a request writing it in place; false when a
    /// running request already writes an overlapping range.
    pub fn claim_range(&self, session: &str, start: u64, end: u64) -> bool {
        let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        let ranges = map.entry(session.to_string()).or_default();
        ranges.retain(|(_, _, t)| t.elapsed() < INFLIGHT_TIMEOUT);
        if ranges.iter().any(|(s, e, _)| *s <= end && start <= *e) {
            return false;
        }
        ranges.push((start, end, Instant::now()));
        true
    }

    pub fn release_range(&self, session: &str, start: u64, end: u64) {
        let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ranges) = map.get_mut(session) {
            if let Some(i) = ranges.iter().position(|(s, e, _)| *s == start && *e == end) {
                ranges.remove(i);
            }
            if ranges.is_empty() {
                map.remove(session);
            }
        }
    }

    /// The session's hasher, started on first use.
    pub fn hasher(&self, session: &str, data: &Path) -> Arc<FileHasher> {
        let mut map = self.hashers.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(session.to_string())
            .or_insert_with(|| Arc::new(FileHasher::spawn(data.to_path_buf())))
            .clone()
    }

    /// The session's follower, if it has one.
    pub fn follower(&self, session: &str) -> Option<Arc<tokio::sync::Mutex<Follower>>> {
        let map = self.followers.lock().unwrap_or_else(|e| e.into_inner());
        map.get(session).map(|(f, _)| f.clone())
    }

    /// Whether the session's follower leaves its MD5 to the store: the parts are then not
    /// hashed here as they arrive (if the MD5 does not come, the file is hashed at the end).
    /// A follower that gave up no longer does (one busy sending is taken at its word), and
    /// the hasher then catches up with the next part.
    pub fn hashed_by_store(&self, session: &str) -> bool {
        let map = self.followers.lock().unwrap_or_else(|e| e.into_inner());
        map.get(session)
            .is_some_and(|(f, md5)| *md5 && f.try_lock().map_or(true, |f| f.gives_md5()))
    }

    /// Whether another session may be followed now. Followers idle for too long are given
    /// up first (one busy sending is not idle).
    pub fn room_for_follower(&self) -> bool {
        let mut map = self.followers.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, (f, _)| match f.try_lock() {
            Ok(f) => f.last.elapsed() < FOLLOWER_IDLE,
            Err(_) => true,
        });
        map.len() < MAX_FOLLOWERS
    }

    /// Gives the session a follower, unless it has one already (which is returned); `None`
    /// when too many sessions are followed.
    pub fn add_follower(
        &self,
        session: &str,
        follower: Follower,
    ) -> Option<Arc<tokio::sync::Mutex<Follower>>> {
        let mut map = self.followers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((f, _)) = map.get(session) {
            return Some(f.clone());
        }
        if map.len() >= MAX_FOLLOWERS {
            return None;
        }
        let md5 = follower.gives_md5();
        let f = Arc::new(tokio::sync::Mutex::new(follower));
        map.insert(session.to_string(), (f.clone(), md5));
        Some(f)
    }

    /// Takes the session's follower away (to complete the upload with it).
    pub fn take_follower(&self, session: &str) -> Option<Arc<tokio::sync::Mutex<Follower>>> {
        let mut map = self.followers.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(session).map(|(f, _)| f)
    }

    /// Sessions this process keeps a hasher for.
    pub fn sessions(&self) -> Vec<String> {
        self.hashers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Forgets a session (its hasher thread ends when the last user lets go).
    pub fn drop_session(&self, session: &str) {
        self.hashers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(session);
        self.followers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(session);
        self.inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(session);
    }
}

/// Gives a fed chunk's room in the backlog back when dropped (after the hasher processed it).
struct Drained<'a>(&'a tokio::sync::Semaphore, usize);

impl Drop for Drained<'_> {
    fn drop(&mut self) {
        self.0
            .add_permits(crate::storage::temp::Tap::room_for(HASH_BACKLOG, self.1) as usize);
    }
}

struct HashState {
    hashed: u64,
    md5: Md5,
    error: Option<String>,
}

/// What the hasher thread is told.
enum Msg {
    /// Hash the file up to this offset (reading back what was not fed).
    Target(u64),
    /// Bytes a request (identified by its token) just wrote at this offset: hashed
    /// tentatively when they continue the hash.
    Data(u64, u64, bytes::Bytes),
    /// The request's part was recorded: its tentative hash becomes part of the hash.
    Commit(u64),
}

/// Messages waiting for the hasher.
const HASH_QUEUE: usize = 4096;
/// Fed bytes waiting for the hasher at most: enough for it to keep working through the gap
/// between two parts; a writer that gets further ahead waits.
const HASH_BACKLOG: usize = 8 * 1024 * 1024;

/// An MD5 over a growing file, computed by a background thread: fed the bytes of parts that
/// continue the hash as they are written, and reading back from the file whatever it missed,
/// up to the targets it is given.
pub struct FileHasher {
    shared: Arc<(Mutex<HashState>, Condvar)>,
    tx: std::sync::mpsc::SyncSender<Msg>,
    /// Room for bytes fed and not yet hashed.
    backlog: Arc<tokio::sync::Semaphore>,
}

impl FileHasher {
    fn spawn(path: PathBuf) -> FileHasher {
        let shared = Arc::new((
            Mutex::new(HashState {
                hashed: 0,
                md5: Md5::new(),
                error: None,
            }),
            Condvar::new(),
        ));
        let (tx, rx) = std::sync::mpsc::sync_channel::<Msg>(HASH_QUEUE);
        let worker = shared.clone();
        let backlog = Arc::new(tokio::sync::Semaphore::new(HASH_BACKLOG));
        let drained = backlog.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1024 * 1024];
            let mut file: Option<std::fs::File> = None;
            let (lock, cvar) = &*worker;
            let publish = |hashed: u64, md5: &Md5, error: Option<String>| {
                let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
                st.hashed = hashed;
                st.md5 = md5.clone();
                if error.is_some() {
                    st.error = error;
                }
                cvar.notify_all();
            };
            let (mut hashed, mut md5) = (0u64, Md5::new());
            // (token, start, end, state after end) of the one part being fed.
            let mut tentative: Option<(u64, u64, u64, Md5)> = None;
            while let Ok(msg) = rx.recv() {
                let target = match msg {
                    Msg::Data(token, offset, bytes) => {
                        let len = bytes.len() as u64;
                        let _release = Drained(&drained, bytes.len());
                        match &mut tentative {
                            Some((t, _, end, state)) if *t == token && *end == offset => {
                                state.update(&bytes);
                                *end += len;
                            }
                            // Nothing tentative, or the same range written again (a retry
                            // after a refused request): start from the committed hash.
                            Some((t, _, _, _)) if *t != token || offset != hashed => {}
                            _ if offset == hashed => {
                                let mut state = md5.clone();
                                state.update(&bytes);
                                tentative = Some((token, offset, offset + len, state));
                            }
                            _ => {}
                        }
                        continue;
                    }
                    Msg::Commit(token) => {
                        if let Some((t, start, end, state)) = tentative.take() {
                            if t == token && start == hashed {
                                hashed = end;
                                md5 = state;
                            } else if t != token {
                                tentative = Some((t, start, end, state));
                            }
                        }
                        publish(hashed, &md5, None);
                        continue;
                    }
                    Msg::Target(t) => t,
                };
                // Bytes of a part that was never committed are not trusted.
                if tentative
                    .as_ref()
                    .is_some_and(|(_, start, _, _)| *start < target)
                {
                    tentative = None;
                }
                let mut error = None;
                while hashed < target {
                    let f = match &mut file {
                        Some(f) => f,
                        None => match std::fs::File::open(&path) {
                            Ok(f) => file.insert(f),
                            Err(e) => {
                                error = Some(e.to_string());
                                break;
                            }
                        },
                    };
                    let want = (target - hashed).min(buf.len() as u64) as usize;
                    let read = f
                        .seek(SeekFrom::Start(hashed))
                        .and_then(|_| f.read(&mut buf[..want]));
                    match read {
                        Ok(0) => {
                            error = Some(format!("data file ends at byte {hashed}"));
                            break;
                        }
                        Ok(n) => {
                            md5.update(&buf[..n]);
                            hashed += n as u64;
                        }
                        Err(e) => {
                            error = Some(e.to_string());
                            break;
                        }
                    }
                }
                publish(hashed, &md5, error);
            }
        });
        FileHasher {
            shared,
            tx,
            backlog,
        }
    }

    /// A sink for the bytes one request writes at an offset of the file. The writer waits when
    /// the hasher is more than [`HASH_BACKLOG`] behind, so the hasher keeps a backlog to work
    /// through between parts and nothing has to be read back. The bytes count once [`commit`]
    /// is called with the same token.
    ///
    /// [`commit`]: FileHasher::commit
    pub fn tap(&self, token: u64) -> crate::storage::temp::Tap {
        let tx = self.tx.clone();
        crate::storage::temp::Tap {
            room: self.backlog.clone(),
            most: HASH_BACKLOG,
            // Not queued (full or closed): read back from the file later.
            give: Box::new(move |offset, bytes| {
                tx.try_send(Msg::Data(token, offset, bytes)).is_ok()
            }),
        }
    }

    /// The part written through the tap of `token` was recorded; then hash up to `target`
    /// (blocking: call it from a blocking thread).
    pub fn commit(&self, token: u64, target: u64) {
        let _ = self.tx.send(Msg::Commit(token));
        let _ = self.tx.send(Msg::Target(target));
    }

    /// Lets the hasher run up to `target` (the end of the contiguous prefix written so far).
    /// Never blocks: when the queue is full, a later target carries this one.
    pub fn advance(&self, target: u64) {
        let _ = self.tx.try_send(Msg::Target(target));
    }

    /// Hashes up to `total` and returns the hex MD5 (blocking).
    pub fn finish(&self, total: u64) -> std::io::Result<String> {
        let (lock, cvar) = &*self.shared;
        lock.lock().unwrap_or_else(|e| e.into_inner()).error = None;
        let _ = self.tx.send(Msg::Target(total));
        let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if st.hashed >= total {
                return Ok(hex::encode(st.md5.clone().finalize()));
            }
            if let Some(e) = st.error.take() {
                return Err(std::io::Error::other(e));
            }
            st = cvar
                .wait_timeout(st, Duration::from_secs(1))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hasher_follows_a_growing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &data[..1_000_000]).unwrap();
        let rt = ChunkRuntime::default();
        let h = rt.hasher("s", &path);
        // Bytes fed by a request that is never committed do not count, and a retry of the
        // same range under the same token starts over.
        h.tap(7).feed(0, bytes::Bytes::from_static(b"junk")).await;
        h.tap(7)
            .feed(0, bytes::Bytes::copy_from_slice(&data[..500_000]))
            .await;
        h.commit(7, 400_000);
        h.advance(1_000_000);
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&data[1_000_000..]).unwrap();
        assert_eq!(
            h.finish(3_000_000).unwrap(),
            hex::encode(Md5::digest(&data))
        );
        assert!(rt.claim_range("s", 0, 9));
        assert!(!rt.claim_range("s", 5, 20));
        rt.release_range("s", 0, 9);
        assert!(rt.claim_range("s", 5, 20));
    }

    /// A sink that keeps what it is sent, and whether it was completed.
    #[derive(Clone, Default)]
    struct Kept(Arc<Mutex<(Vec<u8>, bool)>>);

    #[async_trait::async_trait]
    impl crate::storage::BlobSink for Kept {
        async fn write(&mut self, chunk: bytes::Bytes) -> std::io::Result<()> {
            self.0.lock().unwrap().0.extend_from_slice(&chunk);
            Ok(())
        }
        async fn finish(self: Box<Self>) -> std::io::Result<Option<String>> {
            self.0.lock().unwrap().1 = true;
            Ok(None)
        }
    }

    fn follower(
        dir: &Path,
        data: &Path,
        sink: impl crate::storage::BlobSink + 'static,
    ) -> Follower {
        let store = Arc::new(crate::storage::fs::FsBlobStore::new(dir.join("store")).unwrap());
        let object = crate::storage::StoredObject::new(store, "demo", crate::util::random_hex(16));
        let streaming = crate::storage::StreamingBody::start();
        Follower::new(
            Box::new(sink),
            object,
            data.to_path_buf(),
            Vec::new(),
            streaming,
        )
    }

    #[tokio::test]
    async fn follower_sends_the_prefix_as_it_grows_and_completes() {
        let dir = tempfile::tempdir().unwrap();
        let data_path = dir.path().join("data");
        let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&data_path, &data[..300_000]).unwrap();
        let sink = Kept::default();
        let mut f = follower(dir.path(), &data_path, sink.clone());
        f.advance(300_000).await;
        // Asked for less than it sent: nothing more goes.
        f.advance(100_000).await;
        assert_eq!(sink.0.lock().unwrap().0.len(), 300_000);
        std::fs::write(&data_path, &data).unwrap();
        let (object, md5) = f.finish(700_000).await.expect("completed");
        assert_eq!(md5, None, "this sink answers no MD5");
        assert!(object.key().starts_with("demo/"), "{}", object.key());
        let kept = sink.0.lock().unwrap();
        assert!(kept.1, "the sink was completed");
        assert_eq!(kept.0, data);
    }

    #[tokio::test]
    async fn follower_of_a_file_shorter_than_its_parts_gives_up() {
        let dir = tempfile::tempdir().unwrap();
        let data_path = dir.path().join("data");
        std::fs::write(&data_path, vec![7u8; 1000]).unwrap();
        let sink = Kept::default();
        let mut f = follower(dir.path(), &data_path, sink.clone());
        assert!(f.finish(5000).await.is_none());
        assert!(
            !sink.0.lock().unwrap().1,
            "an incomplete object is not completed"
        );
        // Given up: later calls send nothing.
        f.advance(6000).await;
        assert_eq!(sink.0.lock().unwrap().0.len(), 1000);
    }

    #[tokio::test]
    async fn followers_are_capped_and_idle_ones_make_room() {
        let dir = tempfile::tempdir().unwrap();
        let data_path = dir.path().join("data");
        std::fs::write(&data_path, b"x").unwrap();
        let rt = ChunkRuntime::default();
        let mut added = Vec::new();
        for i in 0..MAX_FOLLOWERS {
            assert!(rt.room_for_follower());
            let f = follower(dir.path(), &data_path, Kept::default());
            added.push(rt.add_follower(&format!("s{i}"), f).expect("room"));
        }
        assert!(!rt.room_for_follower());
        let extra = follower(dir.path(), &data_path, Kept::default());
        assert!(rt.add_follower("s-extra", extra).is_none());
        // A session that has one gets its own back, however many there are.
        let again = follower(dir.path(), &data_path, Kept::default());
        let same = rt.add_follower("s0", again).expect("its own");
        assert!(Arc::ptr_eq(&same, &added[0]));

        // Two followers have sent nothing for longer than the idle limit; one of them is
        // busy (locked: sending right now) and stays.
        let long_ago = Instant::now()
            .checked_sub(FOLLOWER_IDLE + Duration::from_secs(1))
            .expect("a monotonic clock older than the idle limit");
        added[1].lock().await.last = long_ago;
        added[2].lock().await.last = long_ago;
        let busy = added[2].lock().await;
        assert!(rt.room_for_follower());
        assert!(
            rt.follower("s1").is_none(),
            "the idle follower was given up"
        );
        assert!(rt.follower("s2").is_some(), "a busy follower is not idle");
        drop(busy);
        assert!(rt.room_for_follower(), "idle once no longer busy");
        assert!(rt.follower("s2").is_none());
        assert_eq!(
            rt.take_follower("s0").map(|f| Arc::ptr_eq(&f, &added[0])),
            Some(true)
        );
        assert!(rt.follower("s0").is_none());
    }

    /// A sink whose store answers the MD5, and that fails once told to.
    #[derive(Clone, Default)]
    struct Hashing(Arc<Mutex<bool>>);

    #[async_trait::async_trait]
    impl crate::storage::BlobSink for Hashing {
        async fn write(&mut self, _chunk: bytes::Bytes) -> std::io::Result<()> {
            if *self.0.lock().unwrap() {
                return Err(std::io::Error::other("the store went away"));
            }
            Ok(())
        }
        async fn finish(self: Box<Self>) -> std::io::Result<Option<String>> {
            Ok(Some("0".repeat(32)))
        }
        fn gives_md5(&self) -> bool {
            true
        }
    }

    /// A session whose follower's store answers the MD5 is not hashed as it arrives, until
    /// the follower gives up (even while it is busy, it is taken at its word).
    #[tokio::test]
    async fn a_session_is_hashed_by_the_store_while_its_follower_lasts() {
        let dir = tempfile::tempdir().unwrap();
        let data_path = dir.path().join("data");
        std::fs::write(&data_path, vec![7u8; 3000]).unwrap();
        let rt = ChunkRuntime::default();
        let sink = Hashing::default();
        assert!(!rt.hashed_by_store("s"));
        let f = follower(dir.path(), &data_path, sink.clone());
        let f = rt.add_follower("s", f).expect("room");
        assert!(rt.hashed_by_store("s"));
        f.lock().await.advance(1000).await;
        assert!(rt.hashed_by_store("s"), "sending went well");
        let busy = f.lock().await;
        assert!(rt.hashed_by_store("s"), "busy: taken at its word");
        drop(busy);
        *sink.0.lock().unwrap() = true;
        f.lock().await.advance(2000).await;
        assert!(!rt.hashed_by_store("s"), "given up: hashed here again");
        assert!(f.lock().await.finish(3000).await.is_none());
        // A follower whose store answers no MD5 never counts.
        let kept = follower(dir.path(), &data_path, Kept::default());
        rt.add_follower("t", kept).expect("room");
        assert!(!rt.hashed_by_store("t"));
    }
}
