//! New asset rows written to a SQLite file on a connection of their own, called by the
//! inserter on its own thread: no hand-over to sqlx's worker thread per command.
//!
//! The inserter writes here with the write turn taken, which the write pool's only connection
//! takes too: this connection never races nephos's other writers for SQLite's write lock.

use std::collections::HashSet;
use std::sync::atomic::{AtomicI32, Ordering};

use rusqlite::{ffi, params, Connection, OpenFlags};

use super::{json_text, AssetRecord, DbError, ASSET_COLUMNS, SQLITE_PRAGMAS};

pub(super) struct DirectWriter {
    conn: Connection,
    insert_asset: String,
    /// The frames in the WAL after the last commit, as SQLite's WAL hook reports them. Boxed:
    /// the hook holds its address, and it is dropped after the connection (field order).
    frames: Box<AtomicI32>,
}

/// SQLite's WAL hook: called after each commit with the number of frames in the WAL.
unsafe extern "C" fn note_frames(
    frames_seen: *mut std::ffi::c_void,
    _db: *mut ffi::sqlite3,
    _name: *const std::ffi::c_char,
    frames: std::ffi::c_int,
) -> std::ffi::c_int {
    // SAFETY: the pointer is the writer's boxed counter, which outlives the connection.
    let seen = unsafe { &*(frames_seen as *const AtomicI32) };
    seen.store(frames, Ordering::Relaxed);
    ffi::SQLITE_OK
}

const INSERT_TAG: &str = "INSERT INTO asset_tags (asset_id, tag, cloud, created_at) \
    VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING";

impl DirectWriter {
    /// Opens the database file at `path` (already created and migrated).
    pub(super) fn open(path: &str) -> Result<DirectWriter, DbError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        for pragma in SQLITE_PRAGMAS {
            conn.execute_batch(pragma)?;
        }
        // The inserter checkpoints the WAL itself, on sqlx's thread, from the frame count this
        // hook keeps (it replaces SQLite's own automatic checkpoint on this connection).
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0")?;
        let frames = Box::new(AtomicI32::new(0));
        // SAFETY: the handle is this connection's; the counter is boxed (a fixed address)
        // and dropped after the connection, the hook's only caller.
        unsafe {
            ffi::sqlite3_wal_hook(
                conn.handle(),
                Some(note_frames),
                &*frames as *const AtomicI32 as *mut std::ffi::c_void,
            );
        }
        let width = ASSET_COLUMNS.split(',').count();
        let holes = (1..=width)
            .map(|n| format!("?{n}"))
            .collect::<Vec<_>>()
            .join(", ");
        Ok(DirectWriter {
            conn,
            insert_asset: format!(
                "INSERT INTO assets ({ASSET_COLUMNS}) VALUES ({holes}) \
                 ON CONFLICT (cloud, resource_type, delivery_type, public_id) DO NOTHING"
            ),
            frames,
        })
    }

    /// The frames in the WAL after this connection's last commit (fewer than before once a
    /// checkpoint has copied them all and a commit has started the WAL over).
    pub(super) fn wal_frames(&self) -> usize {
        self.frames.load(Ordering::Relaxed).max(0) as usize
    }

    /// Inserts the rows that do not exist yet, and the tags of those, in one transaction;
    /// returns the asset IDs inserted.
    pub(super) fn insert(&mut self, records: &[&AssetRecord]) -> Result<HashSet<String>, DbError> {
        let result = self.insert_in_transaction(records);
        // A rollback that failed leaves the transaction open: it is ended here, or no later
        // batch could begin one.
        if result.is_err() && !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        result
    }

    fn insert_in_transaction(
        &mut self,
        records: &[&AssetRecord],
    ) -> Result<HashSet<String>, DbError> {
        let tx = self.conn.transaction()?;
        let mut inserted = HashSet::with_capacity(records.len());
        {
            let mut asset = tx.prepare_cached(&self.insert_asset)?;
            let mut tag = tx.prepare_cached(INSERT_TAG)?;
            for s in records {
                let added = asset.execute(params![
                    s.asset_id,
                    s.key.cloud,
                    s.key.resource_type,
                    s.key.delivery_type,
                    s.key.public_id,
                    s.version,
                    s.version_id,
                    s.format,
                    s.width,
                    s.height,
                    s.pages,
                    s.bytes,
                    s.etag,
                    s.created_at,
                    s.original_filename,
                    s.display_name,
                    s.asset_folder,
                    json_text(&s.context),
                    json_text(&s.metadata),
                    json_text(&s.extra),
                    s.blob_key,
                    s.api_key,
                ])?;
                if added == 0 {
                    continue;
                }
                for t in &s.tags {
                    tag.execute(params![s.asset_id, t, s.key.cloud, s.created_at])?;
                }
                inserted.insert(s.asset_id.clone());
            }
        }
        tx.commit()?;
        Ok(inserted)
    }
}
