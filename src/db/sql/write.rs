//! Writing assets: the task that inserts new assets in batches (group commit), and the
//! statements that write an asset row and its tag rows.

use super::*;

/// A new asset (with the content its etag is to be made from, when it has none yet) and
/// where to hand it back, with whether its row was inserted.
pub(super) type PendingInsert = (
    AssetRecord,
    Option<bytes::Bytes>,
    tokio::sync::oneshot::Sender<(AssetRecord, Result<bool, String>)>,
);

/// Makes the etags still missing in a batch: the contents' MD5s, side by side.
fn hash_contents(batch: &mut [PendingInsert]) {
    let messages: Vec<&[u8]> = batch
        .iter()
        .filter_map(|(_, content, _)| content.as_deref())
        .collect();
    if messages.is_empty() {
        return;
    }
    let digests = crate::storage::md5::digest_many(&messages);
    drop(messages);
    let pending = batch
        .iter_mut()
        .filter_map(|(record, content, _)| content.take().map(|_| record));
    for (record, digest) in pending.zip(digests) {
        record.etag = hex::encode(digest);
    }
}

/// Rows inserted by one statement at most (22 parameters each).
pub(super) const BATCH_ROWS: usize = 64;
/// Tags written in one batch at most; records beyond it wait for the next batch.
pub(super) const BATCH_TAGS: usize = 4000;

/// Batches written in a row before the inserter lets the database's other writers have their
/// turn, when more keep coming.
const BATCHES_PER_HOLD: usize = 16;

/// WAL frames (pages) the direct SQLite connection writes between two checkpoints: the 1,000
/// at which SQLite checkpoints by itself. Counted in frames (SQLite's WAL hook), not batches:
/// a batch of one asset writes a page to each of its B-trees, a full one a few pages per
/// asset, and 64 full batches left tens of MiB of WAL between two checkpoints.
const CHECKPOINT_FRAMES: usize = 1000;

/// The longest a writer waits for its turn, and for the SQLite write pool's connection.
pub(super) const WRITE_WAIT: Duration = Duration::from_secs(60);

/// The turn to write to a SQLite file that the direct writer shares with the write pool:
/// whoever writes takes it first, so that no one meets SQLite's write lock taken and waits
/// out a busy timeout. The inserter takes and gives it back without any thread hand-over;
/// the pool's connection, given back, is tested with a round trip to sqlx's worker thread.
pub(super) type WriteTurn = std::sync::Arc<tokio::sync::Semaphore>;

pub(super) async fn take_turn(
    turn: &WriteTurn,
) -> Result<tokio::sync::OwnedSemaphorePermit, DbError> {
    match tokio::time::timeout(WRITE_WAIT, turn.clone().acquire_owned()).await {
        Ok(Ok(permit)) => Ok(permit),
        Ok(Err(_)) => Err(sqlx::Error::PoolClosed.into()),
        Err(_) => Err(sqlx::Error::PoolTimedOut.into()),
    }
}

/// The write pool's connection, with the turn when there is one.
pub(super) struct WriteConn {
    conn: sqlx::pool::PoolConnection<sqlx::Any>,
    turn: Option<tokio::sync::OwnedSemaphorePermit>,
    pool: AnyPool,
}

impl WriteConn {
    pub(super) async fn take(pool: &AnyPool, turn: Option<&WriteTurn>) -> Result<Self, DbError> {
        let turn = match turn {
            Some(turn) => Some(take_turn(turn).await?),
            None => None,
        };
        Ok(WriteConn {
            conn: pool.acquire().await?,
            turn,
            pool: pool.clone(),
        })
    }

    pub(super) async fn begin(&mut self) -> Result<sqlx::Transaction<'_, sqlx::Any>, DbError> {
        Ok(sqlx::Connection::begin(&mut *self.conn).await?)
    }
}

/// A connection given back is not idle at once: what was queued on it still runs on sqlx's
/// worker thread (the rollback of a transaction left unfinished, the statement of a call
/// given up), then the pool's test. The turn is held until the pool has it back, so that the
/// direct writer never finds SQLite's write lock still taken.
impl Drop for WriteConn {
    fn drop(&mut self) {
        let Some(turn) = self.turn.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let pool = self.pool.clone();
            runtime.spawn(async move {
                let _ = pool.acquire().await;
                drop(turn);
            });
        }
    }
}

impl std::ops::Deref for WriteConn {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &sqlx::AnyConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for WriteConn {
    fn deref_mut(&mut self) -> &mut sqlx::AnyConnection {
        &mut self.conn
    }
}

/// Copies the WAL's pages into the database file, on sqlx's worker thread (its file syncs
/// must not stall a runtime thread), in a task of its own beside the inserter.
///
/// The bulk of it runs while new rows go on being written: a passive checkpoint takes none
/// of the locks a writer needs, so the uploads in flight do not wait for its copies and
/// syncs (milliseconds on a real disk). What was written meanwhile is copied with the turn
/// taken, no writer appending: the WAL is then wholly in the database file, and the next
/// write starts it over from its beginning instead of letting it grow. The turn is taken and
/// given back as every other writer of the pool's connection does ([`WriteConn`]: held until
/// the pool has its connection back, whose call may still be ending on sqlx's worker thread).
async fn checkpoint(pool: AnyPool, turn: WriteTurn) {
    async fn passive(conn: &mut sqlx::AnyConnection) {
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(conn)
            .await
        {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    }
    if let Ok(mut conn) = pool.acquire().await {
        passive(&mut conn).await;
    }
    if let Ok(mut conn) = WriteConn::take(&pool, Some(&turn)).await {
        passive(&mut conn).await;
    }
}

/// The direct SQLite writer and its checkpoint state, shared by the inserters (one per
/// runtime thread when connections are served per core); used with the write turn held.
pub(super) struct DirectSide {
    writer: super::direct::DirectWriter,
    /// The WAL's frames when the last checkpoint began (0 once the WAL started over).
    checkpointed_at: usize,
    /// The checkpoint running, if any: one at a time.
    checkpointing: Option<tokio::task::JoinHandle<()>>,
}

pub(super) type SharedDirect = std::sync::Arc<std::sync::Mutex<DirectSide>>;

pub(super) fn share_direct(writer: super::direct::DirectWriter) -> SharedDirect {
    std::sync::Arc::new(std::sync::Mutex::new(DirectSide {
        writer,
        checkpointed_at: 0,
        checkpointing: None,
    }))
}

impl DirectSide {
    /// Writes a batch (the write turn held), then starts a checkpoint in a task of its own
    /// once the WAL has [`CHECKPOINT_FRAMES`] more frames than when the last one began.
    fn insert(
        &mut self,
        records: &[&AssetRecord],
        pool: &AnyPool,
        turn: &WriteTurn,
    ) -> Result<std::collections::HashSet<String>, DbError> {
        let result = self.writer.insert(records);
        let frames = self.writer.wal_frames();
        if frames < self.checkpointed_at {
            self.checkpointed_at = 0;
        }
        if frames >= self.checkpointed_at + CHECKPOINT_FRAMES
            && self.checkpointing.as_ref().is_none_or(|c| c.is_finished())
        {
            self.checkpointed_at = frames;
            self.checkpointing = Some(tokio::spawn(checkpoint(pool.clone(), turn.clone())));
        }
        result
    }
}

/// Starts the task that inserts new assets in batches: it takes what is waiting (up to
/// [`BATCH_ROWS`]), writes the rows and their tags in one transaction, and tells each caller
/// whether its row went in (a key that exists, or twice in one batch, does not).
///
/// With `direct` (a SQLite file), the rows are written on that connection, in place on the
/// task's thread, with the write turn taken; the WAL is checkpointed every
/// [`CHECKPOINT_FRAMES`]. Otherwise they go through a connection of the pool. Either is kept
/// while batches follow one another (up to [`BATCHES_PER_HOLD`] of them) and given back when
/// none is waiting.
pub(super) fn spawn_inserter(
    pool: AnyPool,
    dialect: Dialect,
    direct: Option<(SharedDirect, WriteTurn)>,
) -> tokio::sync::mpsc::Sender<PendingInsert> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<PendingInsert>(1024);
    tokio::spawn(async move {
        let mut carry: Option<PendingInsert> = None;
        let mut held_conn: Option<(sqlx::pool::PoolConnection<sqlx::Any>, usize)> = None;
        let mut held_turn: Option<(tokio::sync::OwnedSemaphorePermit, usize)> = None;
        loop {
            let first = match carry.take() {
                Some(p) => p,
                None => match rx.try_recv() {
                    Ok(p) => p,
                    Err(_) => {
                        // Nothing waiting: the connection or turn goes back before the task
                        // sleeps.
                        held_conn = None;
                        held_turn = None;
                        match rx.recv().await {
                            Some(p) => p,
                            None => break,
                        }
                    }
                },
            };
            // The uploads that are ready to run reach this point in the same turn: letting
            // them run first gathers their rows into this batch (one commit for all) at no
            // cost when there are none.
            tokio::task::yield_now().await;
            let mut tags = first.0.tags.len();
            let mut batch = vec![first];
            while batch.len() < BATCH_ROWS {
                match rx.try_recv() {
                    Ok(p) if tags + p.0.tags.len() > BATCH_TAGS => {
                        carry = Some(p);
                        break;
                    }
                    Ok(p) => {
                        tags += p.0.tags.len();
                        batch.push(p);
                    }
                    Err(_) => break,
                }
            }
            hash_contents(&mut batch);
            let records: Vec<&AssetRecord> = batch.iter().map(|(r, _, _)| r).collect();
            let result = match direct.as_ref() {
                Some((shared, turn)) => {
                    let taken = match held_turn.take() {
                        Some(held) => Ok(held),
                        None => take_turn(turn).await.map(|t| (t, 0)),
                    };
                    match taken {
                        Ok((permit, used)) => {
                            let result = shared
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(&records, &pool, turn);
                            if used + 1 < BATCHES_PER_HOLD {
                                held_turn = Some((permit, used + 1));
                            }
                            result
                        }
                        Err(e) => Err(e),
                    }
                }
                None => {
                    let conn = match held_conn.take() {
                        Some(conn) => Ok(conn),
                        None => pool.acquire().await.map(|c| (c, 0)).map_err(DbError::from),
                    };
                    match conn {
                        Ok((mut conn, used)) => {
                            let result = insert_batch(&mut conn, dialect, &records).await;
                            // A connection that failed is not used again (the pool tests it).
                            if result.is_ok() && used + 1 < BATCHES_PER_HOLD {
                                held_conn = Some((conn, used + 1));
                            }
                            result
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            for (record, _, reply) in batch {
                let answer = match &result {
                    Ok(ids) => Ok(ids.contains(&record.asset_id)),
                    Err(e) => Err(e.to_string()),
                };
                let _ = reply.send((record, answer));
            }
        }
    });
    tx
}

/// Inserts the rows that do not exist yet, and the tags of those, in one transaction;
/// returns the asset IDs inserted.
pub(super) async fn insert_batch(
    conn: &mut sqlx::AnyConnection,
    dialect: Dialect,
    records: &[&AssetRecord],
) -> Result<std::collections::HashSet<String>, DbError> {
    let width = ASSET_COLUMNS.split(',').count();
    let sql = format!(
        "INSERT INTO assets ({ASSET_COLUMNS}) VALUES {} \
         ON CONFLICT (cloud, resource_type, delivery_type, public_id) DO NOTHING RETURNING asset_id",
        value_groups(dialect, records.len(), width)
    );
    let mut q = sqlx::query(&sql);
    for s in records {
        q = bind_asset(q, s);
    }
    let ids = |rows: Vec<sqlx::any::AnyRow>| {
        rows.iter()
            .map(|r| r.try_get::<String, _>("asset_id"))
            .collect::<Result<std::collections::HashSet<String>, _>>()
    };
    // One statement is a transaction of its own: a batch without tags needs no other.
    if records.iter().all(|r| r.tags.is_empty()) {
        return Ok(ids(q.fetch_all(&mut *conn).await?)?);
    }
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let inserted = ids(q.fetch_all(&mut *tx).await?)?;
    let tag_rows: Vec<(&&AssetRecord, &str)> = records
        .iter()
        .filter(|r| inserted.contains(&r.asset_id))
        .flat_map(|r| r.tags.iter().map(move |t| (r, t.as_str())))
        .collect();
    if !tag_rows.is_empty() {
        let sql = format!(
            "INSERT INTO asset_tags (asset_id, tag, cloud, created_at) VALUES {} ON CONFLICT DO NOTHING",
            value_groups(dialect, tag_rows.len(), 4)
        );
        let mut q = sqlx::query(&sql);
        for (r, tag) in tag_rows {
            q = q
                .bind(r.asset_id.as_str())
                .bind(tag)
                .bind(r.key.cloud.as_str())
                .bind(r.created_at);
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(inserted)
}

/// `(…), (…)`: `rows` groups of `width` bind parameters each, numbered from 1 in order.
/// SQLite gets anonymous `?`s: it resolves the name of a numbered one by a linear scan,
/// which made binding a batch of hundreds of parameters quadratic.
pub(super) fn value_groups(dialect: Dialect, rows: usize, width: usize) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(rows * (width * 6 + 4));
    for n in 0..rows * width {
        if n % width == 0 {
            out.push_str(if n == 0 { "(" } else { "), (" });
        } else {
            out.push_str(", ");
        }
        match dialect {
            Dialect::Sqlite => out.push('?'),
            Dialect::Postgres => {
                let _ = write!(out, "${}", n + 1);
            }
        }
    }
    if rows * width > 0 {
        out.push(')');
    }
    out
}

pub(super) type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Binds an asset's columns in [`ASSET_COLUMNS`] order (its text borrowed, not copied).
pub(super) fn bind_asset<'q>(q: AnyQuery<'q>, s: &'q AssetRecord) -> AnyQuery<'q> {
    q.bind(s.asset_id.as_str())
        .bind(s.key.cloud.as_str())
        .bind(s.key.resource_type.as_str())
        .bind(s.key.delivery_type.as_str())
        .bind(s.key.public_id.as_str())
        .bind(s.version)
        .bind(s.version_id.as_str())
        .bind(s.format.as_deref())
        .bind(s.width)
        .bind(s.height)
        .bind(s.pages)
        .bind(s.bytes)
        .bind(s.etag.as_str())
        .bind(s.created_at)
        .bind(s.original_filename.as_deref())
        .bind(s.display_name.as_str())
        .bind(s.asset_folder.as_str())
        .bind(json_text(&s.context).into_owned())
        .bind(json_text(&s.metadata).into_owned())
        .bind(json_text(&s.extra).into_owned())
        .bind(s.blob_key.as_str())
        .bind(s.api_key.as_deref())
}

/// What [`write_asset`] does when the asset's key already has a row.
#[derive(Clone, Copy)]
pub(super) enum Conflict {
    /// Leave the row alone (nothing is written).
    Skip,
    /// Replace every column but the key and the `asset_id`.
    Replace,
}

/// Writes an asset row; returns whether a row was written.
pub(super) async fn write_asset<'e, E>(
    exec: E,
    stored: &AssetRecord,
    conflict: Conflict,
) -> Result<bool, DbError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let action = match conflict {
        Conflict::Skip => "DO NOTHING".to_string(),
        Conflict::Replace => {
            let keep = [
                "asset_id",
                "cloud",
                "resource_type",
                "delivery_type",
                "public_id",
            ];
            let sets: Vec<String> = ASSET_COLUMNS
                .split(',')
                .map(str::trim)
                .filter(|c| !keep.contains(c))
                .map(|c| format!("{c} = excluded.{c}"))
                .collect();
            format!("DO UPDATE SET {}", sets.join(", "))
        }
    };
    let sql = format!(
        "INSERT INTO assets ({ASSET_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
         $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22) \
         ON CONFLICT (cloud, resource_type, delivery_type, public_id) {action}"
    );
    let done = bind_asset(sqlx::query(&sql), stored).execute(exec).await?;
    Ok(done.rows_affected() == 1)
}

/// Removes an asset's derived records inside the transaction; returns their IDs (their files
/// are the caller's to remove once the transaction is committed).
pub(super) async fn delete_derived_of(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    asset_id: &str,
) -> Result<Vec<String>, DbError> {
    let rows = sqlx::query("DELETE FROM derived WHERE asset_id = $1 RETURNING id")
        .bind(asset_id.to_string())
        .fetch_all(&mut **tx)
        .await?;
    Ok(rows
        .iter()
        .map(|r| r.try_get::<String, _>("id"))
        .collect::<Result<_, _>>()?)
}

/// Writes `record` over the row with its asset ID, and its tags in place of the old ones.
pub(super) async fn replace_row(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    record: &AssetRecord,
) -> Result<(), DbError> {
    write_asset(&mut **tx, record, Conflict::Replace).await?;
    sqlx::query("DELETE FROM asset_tags WHERE asset_id = $1")
        .bind(record.asset_id.clone())
        .execute(&mut **tx)
        .await?;
    insert_tags(tx, record).await
}

/// The tag rows of an asset (each carries the asset's cloud and creation time, so that the
/// newest assets with a tag are read from the tag index alone).
pub(super) async fn insert_tags(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    record: &AssetRecord,
) -> Result<(), DbError> {
    if record.tags.is_empty() {
        return Ok(());
    }
    let values: Vec<String> = (0..record.tags.len())
        .map(|i| {
            format!(
                "(${}, ${}, ${}, CAST(${} AS BIGINT))",
                4 * i + 1,
                4 * i + 2,
                4 * i + 3,
                4 * i + 4
            )
        })
        .collect();
    let sql = format!(
        "INSERT INTO asset_tags (asset_id, tag, cloud, created_at) VALUES {} ON CONFLICT DO NOTHING",
        values.join(", ")
    );
    let mut q = sqlx::query(&sql);
    for tag in &record.tags {
        q = q
            .bind(record.asset_id.clone())
            .bind(tag.clone())
            .bind(record.key.cloud.clone())
            .bind(record.created_at);
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_groups_number_postgres_parameters_in_order() {
        assert_eq!(value_groups(Dialect::Sqlite, 2, 3), "(?, ?, ?), (?, ?, ?)");
        assert_eq!(value_groups(Dialect::Postgres, 2, 2), "($1, $2), ($3, $4)");
        assert_eq!(value_groups(Dialect::Postgres, 1, 1), "($1)");
        assert_eq!(value_groups(Dialect::Sqlite, 0, 4), "");
    }
}
