//! The SQL implementation of [`MetaStore`] for SQLite and PostgreSQL.
//!
//! Queries use `$n` placeholders and only `TEXT`/`BIGINT` columns so that one text serves both
//! databases through sqlx's `Any` driver. SQLite runs in WAL mode with a single writer
//! connection (so write transactions never deadlock on lock upgrades) and several readers;
//! PostgreSQL locks the asset row with `FOR UPDATE`. New assets in a SQLite file are inserted
//! on a connection of their own, called without a thread hand-over; the writer connection and
//! that one take turns (see `write::WriteTurn`).

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

mod chunks;
mod direct;
mod rename;
mod rows;
mod search;
mod write;

use rows::*;
use write::*;

use super::query::{AggField, Filter, SearchQuery};
use super::{
    AssetChange, AssetKey, AssetRecord, ChunkDecision, ChunkOutcome, ChunkPart, ChunkRules,
    ChunkSession, DbError, DerivedRecord, DocChange, DocOutcome, Document, ListQuery, MetaStore,
    NotificationJob, Preset, RenameOutcome, SaveOutcome,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Sqlite,
    Postgres,
}

pub struct SqlStore {
    read: AnyPool,
    write: AnyPool,
    dialect: Dialect,
    /// New assets waiting to be inserted together (group commit).
    inserts: tokio::sync::mpsc::Sender<PendingInsert>,
    /// What starts an inserter on a single-threaded runtime (a connection thread) for the
    /// uploads it serves: each such runtime has its own, so that an upload's row is batched
    /// and answered on its own thread. The rows of all of them are written under the same
    /// write turn, on the same direct connection.
    local: Option<LocalInserters>,
    /// The write turn the write pool shares with the direct writer (a SQLite file).
    turn: Option<WriteTurn>,
}

/// See [`SqlStore::local`]: for a SQLite file only (an inserter of PostgreSQL's holds a
/// connection of the pool while batches follow each other, and one per thread could take
/// them all).
struct LocalInserters {
    /// Tells this store's inserters apart from other stores' on the same thread.
    id: u64,
    pool: AnyPool,
    direct: (write::SharedDirect, WriteTurn),
}

thread_local! {
    /// The inserters started on this thread's single-threaded runtime, by store.
    static LOCAL_INSERTS: std::cell::RefCell<Vec<(u64, tokio::sync::mpsc::Sender<PendingInsert>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

impl LocalInserters {
    fn new(pool: AnyPool, direct: (write::SharedDirect, WriteTurn)) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        LocalInserters {
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            pool,
            direct,
        }
    }

    /// The inserter of the current thread's runtime when it is single-threaded (started on
    /// first use, and again if that runtime ended); none on a multi-threaded one, whose
    /// uploads share the store's inserter. Entries of inserters that ended (their runtime
    /// did) are dropped as they are found.
    fn sender(&self) -> Option<tokio::sync::mpsc::Sender<PendingInsert>> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        if runtime.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread {
            return None;
        }
        LOCAL_INSERTS.with(|l| {
            let mut l = l.borrow_mut();
            if let Some((_, tx)) = l.iter().find(|(id, tx)| *id == self.id && !tx.is_closed()) {
                return Some(tx.clone());
            }
            l.retain(|(id, tx)| *id != self.id && !tx.is_closed());
            let tx = spawn_inserter(
                self.pool.clone(),
                Dialect::Sqlite,
                Some(self.direct.clone()),
            );
            l.push((self.id, tx.clone()));
            Some(tx)
        })
    }
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Whether a SQLite URL names an in-memory database.
fn is_memory_url(url: &str) -> bool {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    rest.starts_with(":memory:") || rest.contains("mode=memory")
}

impl SqlStore {
    pub async fn connect(url: &str) -> Result<SqlStore, DbError> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Dialect::Postgres
        } else {
            return Err(DbError::UnsupportedUrl(url.to_string()));
        };
        // An in-memory SQLite database is one per connection unless it is named and shared:
        // every connection of both pools opens the same one, which lives while the writer's
        // connection (never closed) does.
        let memory = dialect == Dialect::Sqlite && is_memory_url(url);
        let url = if memory {
            format!(
                "sqlite:file:nephos-memory-{}?mode=memory&cache=shared",
                crate::util::random_hex(8)
            )
        } else {
            url.to_string()
        };
        let options = AnyConnectOptions::from_str(&url)?;
        let store = match dialect {
            Dialect::Sqlite => {
                let setup = sqlite_setup;
                // A connection to a local file is not lost the way a network one is: no
                // round trip to the worker thread to test it before each use.
                let mut write = AnyPoolOptions::new()
                    .max_connections(1)
                    .test_before_acquire(false)
                    .acquire_timeout(WRITE_WAIT)
                    .after_connect(setup);
                if memory {
                    write = write
                        .min_connections(1)
                        .idle_timeout(None)
                        .max_lifetime(None);
                }
                let write = write.connect_with(options.clone()).await?;
                sqlx::raw_sql("PRAGMA journal_mode = WAL;")
                    .execute(&write)
                    .await?;
                SQLITE_MIGRATIONS.run(&write).await?;
                let read = AnyPoolOptions::new()
                    .max_connections(8)
                    .test_before_acquire(false)
                    .after_connect(setup)
                    .connect_with(options)
                    .await?;
                let turn = WriteTurn::new(tokio::sync::Semaphore::new(1));
                let direct = direct_writer(&write)
                    .await?
                    .map(|w| (write::share_direct(w), turn.clone()));
                let turn = direct.is_some().then_some(turn);
                let local = direct
                    .clone()
                    .map(|d| LocalInserters::new(write.clone(), d));
                let inserts = spawn_inserter(write.clone(), dialect, direct);
                SqlStore {
                    read,
                    write,
                    dialect,
                    inserts,
                    local,
                    turn,
                }
            }
            Dialect::Postgres => {
                // One connection first, bounded in time, so that an unreachable server is
                // reported with its cause within seconds rather than after the pool's wait.
                let first = tokio::time::timeout(
                    Duration::from_secs(5),
                    <sqlx::AnyConnection as sqlx::Connection>::connect_with(&options),
                )
                .await;
                match first {
                    Ok(Ok(conn)) => {
                        let _ = sqlx::Connection::close(conn).await;
                    }
                    Ok(Err(e)) => return Err(DbError::Unreachable(e.to_string())),
                    Err(_) => return Err(DbError::Unreachable("no answer within 5 s".into())),
                }
                let pool = AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(30))
                    // Listings and searches bind prefixes, tags and bounds whose selectivity
                    // decides the plan: each execution is planned with its values, never with a
                    // generic plan made for any value.
                    .after_connect(|conn, _meta| {
                        Box::pin(async move {
                            sqlx::query("SET plan_cache_mode = force_custom_plan")
                                .execute(conn)
                                .await
                                .map(|_| ())
                        })
                    })
                    .connect_with(options)
                    .await?;
                POSTGRES_MIGRATIONS.run(&pool).await?;
                SqlStore {
                    read: pool.clone(),
                    inserts: spawn_inserter(pool.clone(), dialect, None),
                    local: None,
                    write: pool,
                    dialect,
                    turn: None,
                }
            }
        };
        Ok(store)
    }

    /// Reads an asset with its tags, locking its row for the transaction when `lock` is set
    /// (PostgreSQL; SQLite's single writer already serialises).
    async fn fetch_asset(
        &self,
        conn: &mut sqlx::AnyConnection,
        key: &AssetKey,
        lock: bool,
    ) -> Result<Option<AssetRecord>, DbError> {
        let sql = format!(
            "SELECT {ASSET_COLUMNS} FROM assets WHERE cloud = $1 AND resource_type = $2 \
             AND delivery_type = $3 AND public_id = $4{}",
            if lock { self.lock_suffix() } else { "" }
        );
        let Some(row) = sqlx::query(&sql)
            .bind(key.cloud.clone())
            .bind(key.resource_type.clone())
            .bind(key.delivery_type.clone())
            .bind(key.public_id.clone())
            .fetch_optional(&mut *conn)
            .await?
        else {
            return Ok(None);
        };
        let asset_id: String = row.try_get("asset_id")?;
        let tags = load_tags(&mut *conn, &asset_id).await?;
        Ok(Some(row_to_asset(&row, tags)?))
    }

    /// Inserts a document after the kind's last one; `on_conflict` says what a taken name
    /// does. Answers the rows written.
    async fn insert_doc(
        &self,
        cloud: &str,
        kind: &str,
        name: &str,
        body: &Value,
        now: i64,
        on_conflict: &str,
    ) -> Result<u64, DbError> {
        let sql = format!(
            "INSERT INTO documents (cloud, kind, name, body, position, created_at) \
             SELECT $1, $2, $3, $4, COALESCE(MAX(position), 0) + 1, $5 FROM documents \
             WHERE cloud = $1 AND kind = $2 ON CONFLICT (cloud, kind, name) {on_conflict}"
        );
        let done = sqlx::query(&sql)
            .bind(cloud.to_string())
            .bind(kind.to_string())
            .bind(name.to_string())
            .bind(body.to_string())
            .bind(now)
            .execute(&mut *self.writer().await?)
            .await?;
        Ok(done.rows_affected())
    }

    /// The write pool's connection (with the write turn, for a SQLite file).
    async fn writer(&self) -> Result<WriteConn, DbError> {
        WriteConn::take(&self.write, self.turn.as_ref()).await
    }

    fn lock_suffix(&self) -> &'static str {
        match self.dialect {
            Dialect::Postgres => " FOR UPDATE",
            Dialect::Sqlite => "",
        }
    }
}

/// A connection of its own for inserting new assets, when the database is a file (an
/// in-memory one is reached through sqlx's connections only).
async fn direct_writer(write: &AnyPool) -> Result<Option<direct::DirectWriter>, DbError> {
    let rows = sqlx::query("PRAGMA database_list").fetch_all(write).await?;
    let file = rows.iter().find_map(|row| {
        let name: String = row.try_get(1).ok()?;
        let file: String = row.try_get(2).ok()?;
        (name == "main" && !file.is_empty()).then_some(file)
    });
    // Opening a file that exists takes well under a millisecond, once, at start.
    file.map(|file| direct::DirectWriter::open(&file))
        .transpose()
}

/// Settings of every SQLite connection nephos opens (sqlx's and the direct writer's).
const SQLITE_PRAGMAS: [&str; 4] = [
    "PRAGMA busy_timeout = 10000",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA foreign_keys = ON",
    // Statement journals of multi-row inserts stay in memory, not in a file under /tmp.
    "PRAGMA temp_store = MEMORY",
];

fn sqlite_setup(
    conn: &mut sqlx::AnyConnection,
    _meta: sqlx::pool::PoolConnectionMetadata,
) -> futures_util::future::BoxFuture<'_, Result<(), sqlx::Error>> {
    Box::pin(async move {
        for pragma in SQLITE_PRAGMAS {
            sqlx::query(pragma).execute(&mut *conn).await?;
        }
        Ok(())
    })
}

#[async_trait]
impl MetaStore for SqlStore {
    async fn ping(&self) -> Result<(), DbError> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(())
    }

    fn pool_stats(&self) -> Vec<(&'static str, usize, usize)> {
        [("read", &self.read), ("write", &self.write)]
            .into_iter()
            .map(|(name, pool)| {
                let (size, idle) = (pool.size() as usize, pool.num_idle());
                (name, idle, size.saturating_sub(idle))
            })
            .collect()
    }

    async fn find_asset(&self, key: &AssetKey) -> Result<Option<AssetRecord>, DbError> {
        let mut conn = self.read.acquire().await?;
        self.fetch_asset(&mut conn, key, false).await
    }

    async fn find_asset_untagged(&self, key: &AssetKey) -> Result<Option<AssetRecord>, DbError> {
        let sql = format!(
            "SELECT {ASSET_COLUMNS} FROM assets WHERE cloud = $1 AND resource_type = $2 \
             AND delivery_type = $3 AND public_id = $4"
        );
        let row = sqlx::query(&sql)
            .bind(key.cloud.clone())
            .bind(key.resource_type.clone())
            .bind(key.delivery_type.clone())
            .bind(key.public_id.clone())
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| row_to_asset(&r, Vec::new())).transpose()
    }

    async fn find_asset_by_id(
        &self,
        cloud: &str,
        asset_id: &str,
    ) -> Result<Option<AssetRecord>, DbError> {
        let sql = format!("SELECT {ASSET_COLUMNS} FROM assets WHERE asset_id = $1 AND cloud = $2");
        let Some(row) = sqlx::query(&sql)
            .bind(asset_id.to_string())
            .bind(cloud.to_string())
            .fetch_optional(&self.read)
            .await?
        else {
            return Ok(None);
        };
        let tags = load_tags(&self.read, asset_id).await?;
        Ok(Some(row_to_asset(&row, tags)?))
    }

    async fn save_asset(
        &self,
        record: AssetRecord,
        overwrite: bool,
    ) -> Result<SaveOutcome, DbError> {
        self.save(record, None, overwrite).await
    }

    async fn save_asset_hashing(
        &self,
        record: AssetRecord,
        content: bytes::Bytes,
        overwrite: bool,
    ) -> Result<SaveOutcome, DbError> {
        self.save(record, Some(content), overwrite).await
    }
    async fn list_assets(
        &self,
        q: &ListQuery,
    ) -> Result<(Vec<AssetRecord>, Option<String>), DbError> {
        let mut conds = vec!["a.cloud = $1".to_string()];
        let mut binds: Vec<String> = vec![q.cloud.clone()];
        let next = |binds: &mut Vec<String>, v: String| {
            binds.push(v);
            format!("${}", binds.len())
        };
        if let Some(rt) = &q.resource_type {
            let p = next(&mut binds, rt.clone());
            conds.push(format!("a.resource_type = {p}"));
        }
        if let Some(t) = &q.delivery_type {
            let p = next(&mut binds, t.clone());
            conds.push(format!("a.delivery_type = {p}"));
        }
        if let Some(prefix) = &q.prefix {
            // A range by code point (no wildcard escaping; the public ID indexes serve it).
            if let Some(above) = search::successor(prefix) {
                let lo = next(&mut binds, prefix.clone());
                let hi = next(&mut binds, above);
                let col = match self.dialect {
                    Dialect::Postgres => "(a.public_id COLLATE \"C\")",
                    Dialect::Sqlite => "a.public_id",
                };
                conds.push(format!("{col} >= {lo} AND {col} < {hi}"));
            }
        }
        if let Some(ids) = &q.public_ids {
            if ids.is_empty() {
                return Ok((Vec::new(), None));
            }
            let ps: Vec<String> = ids.iter().map(|id| next(&mut binds, id.clone())).collect();
            conds.push(format!("a.public_id IN ({})", ps.join(", ")));
        }
        // With a tag, the rows come from the tag index in creation order (tag rows carry
        // their asset's cloud and creation time), joined to their assets.
        let (from, created, id_col) = match &q.tag {
            Some(tag) => {
                let p = next(&mut binds, tag.clone());
                conds.push(format!("t.cloud = $1 AND t.tag = {p}"));
                (
                    "asset_tags t JOIN assets a ON a.asset_id = t.asset_id",
                    "t.created_at",
                    "t.asset_id",
                )
            }
            None => ("assets a", "a.created_at", "a.asset_id"),
        };
        if let Some(t) = q.start_at {
            let p = next(&mut binds, t.to_string());
            conds.push(format!("a.created_at >= CAST({p} AS BIGINT)"));
        }
        // Ties by asset ID, by code point (as the indexes hold it).
        let aid = match self.dialect {
            Dialect::Postgres => format!("({id_col} COLLATE \"C\")"),
            Dialect::Sqlite => id_col.to_string(),
        };
        let (cmp, order) = if q.ascending {
            (">", "ASC")
        } else {
            ("<", "DESC")
        };
        if let Some(cursor) = &q.cursor {
            let (created, id) = cursor
                .split_once(':')
                .and_then(|(c, id)| c.parse::<i64>().ok().map(|c| (c, id.to_string())))
                .ok_or_else(|| DbError::Corrupt(format!("invalid cursor {cursor}")))?;
            let pc = next(&mut binds, created.to_string());
            let pid = next(&mut binds, id);
            conds.push(format!(
                "({created} {cmp} CAST({pc} AS BIGINT) OR ({created} = CAST({pc} AS BIGINT) AND {aid} {cmp} {pid}))"
            ));
        }
        let limit = q.max_results.clamp(1, 1000);
        let sql = format!(
            "SELECT {cols} FROM {from} WHERE {} ORDER BY {created} {order}, {aid} {order} LIMIT {}",
            conds.join(" AND "),
            limit + 1,
            cols = ASSET_COLUMNS
                .split(',')
                .map(|c| format!("a.{}", c.trim()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut query = sqlx::query(&sql);
        for b in &binds {
            query = query.bind(b.clone());
        }
        let mut conn = self.read.acquire().await?;
        let rows = query.fetch_all(&mut *conn).await?;
        let more = rows.len() as i64 > limit;
        let rows = &rows[..rows.len().min(limit as usize)];
        let ids: Vec<String> = rows
            .iter()
            .map(|r| r.try_get::<String, _>("asset_id"))
            .collect::<Result<_, _>>()?;
        let mut tags = search::tags_of(&mut conn, &ids).await?;
        let mut out = Vec::with_capacity(rows.len());
        for (row, id) in rows.iter().zip(&ids) {
            out.push(row_to_asset(row, tags.remove(id).unwrap_or_default())?);
        }
        let cursor = if more {
            out.last()
                .map(|r| format!("{}:{}", r.created_at, r.asset_id))
        } else {
            None
        };
        Ok((out, cursor))
    }

    fn shared(&self) -> bool {
        self.dialect == Dialect::Postgres
    }

    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<bool, DbError> {
        let done = sqlx::query(
            "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE leases.holder = excluded.holder OR leases.expires_at < $4",
        )
        .bind(name.to_string())
        .bind(holder.to_string())
        .bind(expires_at)
        .bind(now)
        .execute(&mut *self.writer().await?)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn queue_notification(&self, job: &NotificationJob) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO notification_jobs \
             (id, cloud, url, body, api_key, algorithm, attempts, due_at, lease_until, origin, record_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9, $10)",
        )
        .bind(job.id.clone())
        .bind(job.cloud.clone())
        .bind(job.url.clone())
        .bind(job.body.clone())
        .bind(job.api_key.clone())
        .bind(job.algorithm.clone())
        .bind(job.attempts)
        .bind(job.due_at)
        .bind(job.origin.clone())
        .bind(job.record_id)
        .execute(&mut *self.writer().await?)
        .await?;
        Ok(())
    }

    async fn claim_notifications(
        &self,
        holder: &str,
        now: i64,
        until: i64,
        limit: i64,
    ) -> Result<Vec<NotificationJob>, DbError> {
        // Instances racing for the same rows: PostgreSQL skips rows another one is taking;
        // SQLite has one writer at a time.
        let lock = match self.dialect {
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        };
        let sql = format!(
            "UPDATE notification_jobs SET lease_until = $1, holder = $2 WHERE id IN \
             (SELECT id FROM notification_jobs WHERE due_at <= $3 AND lease_until <= $3 \
              ORDER BY due_at LIMIT $4{lock}) \
             RETURNING id, cloud, url, body, api_key, algorithm, attempts, due_at, origin, \
             record_id, holder, lease_until"
        );
        Ok(sqlx::query_as::<_, NotificationJob>(&sql)
            .bind(until)
            .bind(holder.to_string())
            .bind(now)
            .bind(limit)
            .fetch_all(&mut *self.writer().await?)
            .await?)
    }

    async fn notification_done(&self, job: &NotificationJob) -> Result<(), DbError> {
        sqlx::query(
            "DELETE FROM notification_jobs WHERE id = $1 AND holder = $2 AND lease_until = $3",
        )
        .bind(job.id.clone())
        .bind(job.holder.clone())
        .bind(job.lease_until)
        .execute(&mut *self.writer().await?)
        .await?;
        Ok(())
    }

    async fn notification_retry(
        &self,
        job: &NotificationJob,
        attempts: i64,
        due_at: i64,
    ) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE notification_jobs SET attempts = $1, due_at = $2, lease_until = 0, holder = '' \
             WHERE id = $3 AND holder = $4 AND lease_until = $5",
        )
        .bind(attempts)
        .bind(due_at)
        .bind(job.id.clone())
        .bind(job.holder.clone())
        .bind(job.lease_until)
        .execute(&mut *self.writer().await?)
        .await?;
        Ok(())
    }

    async fn next_notification_due(&self) -> Result<Option<i64>, DbError> {
        let row = sqlx::query(
            "SELECT MIN(CASE WHEN lease_until > due_at THEN lease_until ELSE due_at END) AS next \
             FROM notification_jobs",
        )
        .fetch_one(&self.read)
        .await?;
        Ok(row.try_get::<Option<i64>, _>("next")?)
    }

    async fn search_assets(&self, query: &SearchQuery) -> Result<Vec<AssetRecord>, DbError> {
        self.search_page(query).await
    }

    async fn count_assets(&self, cloud: &str, filter: &Filter) -> Result<i64, DbError> {
        self.count_matching(cloud, filter).await
    }

    async fn aggregate_assets(
        &self,
        cloud: &str,
        filter: &Filter,
        field: AggField,
    ) -> Result<Vec<(String, i64)>, DbError> {
        self.aggregate_matching(cloud, filter, field).await
    }

    async fn distinct_tags(&self, limit: i64) -> Result<Vec<String>, DbError> {
        self.distinct_tag_list(limit).await
    }

    async fn modify_asset(
        &self,
        key: &AssetKey,
        change: AssetChange<'_>,
    ) -> Result<Option<AssetRecord>, DbError> {
        let mut writer = self.writer().await?;
        let mut tx = writer.begin().await?;
        let Some(mut record) = self.fetch_asset(&mut tx, key, true).await? else {
            tx.commit().await?;
            return Ok(None);
        };
        let asset_id = record.asset_id.clone();
        change(&mut record);
        // What the change may not touch.
        record.asset_id = asset_id;
        record.key = key.clone();
        record.tags = normalized_tags(&record.tags);
        replace_row(&mut tx, &record).await?;
        tx.commit().await?;
        Ok(Some(record))
    }

    async fn rename_asset(
        &self,
        from: &AssetKey,
        to: &AssetKey,
        overwrite: bool,
    ) -> Result<RenameOutcome, DbError> {
        // Two rows are locked: concurrent renames can deadlock, and an insert can take the
        // target key after it was checked. Both roll back cleanly; try again.
        let mut attempt = 0;
        loop {
            match self.rename_once(from, to, overwrite).await {
                Err(DbError::Sqlx(sqlx::Error::Database(e)))
                    if attempt < 8
                        && matches!(
                            e.code().as_deref(),
                            Some("40P01" | "40001" | "23505" | "2067" | "1555")
                        ) =>
                {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(5 * attempt)).await;
                }
                other => return other,
            }
        }
    }
    async fn list_tags(
        &self,
        cloud: &str,
        resource_type: &str,
        prefix: Option<&str>,
        max: i64,
        after: Option<&str>,
    ) -> Result<(Vec<String>, Option<String>), DbError> {
        let mut sql = "SELECT DISTINCT t.tag AS tag FROM asset_tags t JOIN assets a ON a.asset_id = t.asset_id \
                       WHERE a.cloud = $1 AND a.resource_type = $2"
            .to_string();
        let mut binds = vec![cloud.to_string(), resource_type.to_string()];
        if let Some(p) = prefix {
            binds.push(p.to_string());
            sql += &format!(
                " AND substr(t.tag, 1, {}) = ${}",
                p.chars().count(),
                binds.len()
            );
        }
        if let Some(a) = after {
            binds.push(a.to_string());
            sql += &format!(" AND t.tag > ${}", binds.len());
        }
        let limit = max.clamp(1, 1000);
        sql += &format!(" ORDER BY t.tag LIMIT {}", limit + 1);
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = q.bind(b);
        }
        let rows = q.fetch_all(&self.read).await?;
        let mut tags: Vec<String> = rows
            .iter()
            .map(|r| r.try_get::<String, _>("tag"))
            .collect::<Result<_, _>>()?;
        let more = tags.len() as i64 > limit;
        tags.truncate(limit as usize);
        let cursor = if more { tags.last().cloned() } else { None };
        Ok((tags, cursor))
    }

    async fn usage(&self, cloud: &str) -> Result<(i64, i64), DbError> {
        let row = sqlx::query("SELECT COUNT(*) AS n, CAST(COALESCE(SUM(bytes), 0) AS BIGINT) AS b FROM assets WHERE cloud = $1")
            .bind(cloud.to_string())
            .fetch_one(&self.read)
            .await?;
        Ok((row.try_get("n")?, row.try_get("b")?))
    }

    async fn list_presets(&self, cloud: &str) -> Result<Vec<Preset>, DbError> {
        let rows = sqlx::query(
            "SELECT cloud, name, unsigned, disallow_public_id, settings, external_id, created_at \
             FROM upload_presets WHERE cloud = $1 ORDER BY name",
        )
        .bind(cloud.to_string())
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(row_to_preset).collect()
    }

    async fn delete_preset(&self, cloud: &str, name: &str) -> Result<bool, DbError> {
        let done = sqlx::query("DELETE FROM upload_presets WHERE cloud = $1 AND name = $2")
            .bind(cloud.to_string())
            .bind(name.to_string())
            .execute(&mut *self.writer().await?)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn folder_paths(&self, cloud: &str) -> Result<Vec<String>, DbError> {
        let rows = sqlx::query(
            "SELECT path FROM folders WHERE cloud = $1 \
             UNION SELECT DISTINCT asset_folder AS path FROM assets WHERE cloud = $1 AND asset_folder <> ''",
        )
        .bind(cloud.to_string())
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("path").map_err(DbError::from))
            .collect()
    }

    async fn create_folder(
        &self,
        cloud: &str,
        path: &str,
        external_id: &str,
        now: i64,
    ) -> Result<bool, DbError> {
        let done = sqlx::query(
            "INSERT INTO folders (cloud, path, external_id, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (cloud, path) DO NOTHING",
        )
        .bind(cloud.to_string())
        .bind(path.to_string())
        .bind(external_id.to_string())
        .bind(now)
        .execute(&mut *self.writer().await?)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn folder_has_assets(&self, cloud: &str, path: &str) -> Result<bool, DbError> {
        let n = path.chars().count() + 1;
        let sql = format!(
            "SELECT COUNT(*) AS n FROM assets WHERE cloud = $1 AND (asset_folder = $2 OR substr(asset_folder, 1, {n}) = $3)"
        );
        let row = sqlx::query(&sql)
            .bind(cloud.to_string())
            .bind(path.to_string())
            .bind(format!("{path}/"))
            .fetch_one(&self.read)
            .await?;
        Ok(row.try_get::<i64, _>("n")? > 0)
    }

    async fn rename_folders(
        &self,
        cloud: &str,
        from: &str,
        to: &str,
        external_id: &str,
        now: i64,
    ) -> Result<(), DbError> {
        // The path itself, or anything below it: the rest after `from` is kept.
        let n = from.chars().count();
        let below = |col: &str| {
            format!(
                "cloud = $1 AND ({col} = $2 OR substr({col}, 1, {}) = $3)",
                n + 1
            )
        };
        let mut writer = self.writer().await?;
        let mut tx = writer.begin().await?;
        for (table, col) in [("folders", "path"), ("assets", "asset_folder")] {
            sqlx::query(&format!(
                "UPDATE {table} SET {col} = $4 || substr({col}, {}) WHERE {}",
                n + 1,
                below(col)
            ))
            .bind(cloud.to_string())
            .bind(from.to_string())
            .bind(format!("{from}/"))
            .bind(to.to_string())
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO folders (cloud, path, external_id, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (cloud, path) DO UPDATE SET external_id = excluded.external_id",
        )
        .bind(cloud.to_string())
        .bind(to.to_string())
        .bind(external_id.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn put_derived(&self, derived: &[DerivedRecord]) -> Result<(), DbError> {
        let mut writer = self.writer().await?;
        let mut tx = writer.begin().await?;
        for d in derived {
            sqlx::query(
                "INSERT INTO derived (id, asset_id, transformation, format, bytes, width, height, created_at, cloud) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO UPDATE SET \
                 bytes = excluded.bytes, width = excluded.width, height = excluded.height, \
                 created_at = excluded.created_at",
            )
            .bind(d.id.clone())
            .bind(d.asset_id.clone())
            .bind(d.transformation.clone())
            .bind(d.format.clone())
            .bind(d.bytes)
            .bind(d.width)
            .bind(d.height)
            .bind(d.created_at)
            .bind(d.cloud.clone())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn list_derived(&self, asset_id: &str) -> Result<Vec<DerivedRecord>, DbError> {
        let rows = sqlx::query(
            "SELECT id, cloud, asset_id, transformation, format, bytes, width, height, created_at \
             FROM derived WHERE asset_id = $1 ORDER BY created_at, id",
        )
        .bind(asset_id.to_string())
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(row_to_derived).collect()
    }

    async fn derived_of_cloud(
        &self,
        cloud: &str,
        transformation: Option<&str>,
    ) -> Result<Vec<DerivedRecord>, DbError> {
        let rows = sqlx::query(
            "SELECT id, cloud, asset_id, transformation, format, bytes, width, height, created_at \
             FROM derived WHERE cloud = $1 AND ($2 = '' OR transformation = $2) \
             ORDER BY created_at, id",
        )
        .bind(cloud.to_string())
        .bind(transformation.unwrap_or("").to_string())
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(row_to_derived).collect()
    }

    async fn delete_derived(
        &self,
        cloud: &str,
        asset_id: Option<&str>,
        ids: &[String],
    ) -> Result<Vec<String>, DbError> {
        let mut writer = self.writer().await?;
        let mut tx = writer.begin().await?;
        let mut gone = Vec::new();
        let mut forget = |rows: Vec<AnyRow>| -> Result<(), DbError> {
            for r in rows {
                gone.push(r.try_get::<String, _>("id")?);
            }
            Ok(())
        };
        if let Some(a) = asset_id {
            let rows =
                sqlx::query("DELETE FROM derived WHERE cloud = $1 AND asset_id = $2 RETURNING id")
                    .bind(cloud.to_string())
                    .bind(a.to_string())
                    .fetch_all(&mut *tx)
                    .await?;
            forget(rows)?;
        }
        for id in ids {
            let rows = sqlx::query("DELETE FROM derived WHERE cloud = $1 AND id = $2 RETURNING id")
                .bind(cloud.to_string())
                .bind(id.clone())
                .fetch_all(&mut *tx)
                .await?;
            forget(rows)?;
        }
        tx.commit().await?;
        Ok(gone)
    }

    async fn delete_folders(&self, cloud: &str, path: &str) -> Result<Vec<String>, DbError> {
        let n = path.chars().count() + 1;
        let cond = format!("cloud = $1 AND (path = $2 OR substr(path, 1, {n}) = $3)");
        let mut writer = self.writer().await?;
        let mut tx = writer.begin().await?;
        let rows = sqlx::query(&format!(
            "SELECT path FROM folders WHERE {cond} ORDER BY path"
        ))
        .bind(cloud.to_string())
        .bind(path.to_string())
        .bind(format!("{path}/"))
        .fetch_all(&mut *tx)
        .await?;
        let paths: Vec<String> = rows
            .iter()
            .map(|r| r.try_get::<String, _>("path"))
            .collect::<Result<_, _>>()?;
        sqlx::query(&format!("DELETE FROM folders WHERE {cond}"))
            .bind(cloud.to_string())
            .bind(path.to_string())
            .bind(format!("{path}/"))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(paths)
    }

    async fn put_delete_token(
        &self,
        token: &str,
        key: &AssetKey,
        expires_at: i64,
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO delete_tokens (token, cloud, resource_type, delivery_type, public_id, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(token.to_string())
        .bind(key.cloud.clone())
        .bind(key.resource_type.clone())
        .bind(key.delivery_type.clone())
        .bind(key.public_id.clone())
        .bind(expires_at)
        .execute(&mut *self.writer().await?)
        .await?;
        Ok(())
    }

    async fn take_delete_token(
        &self,
        cloud: &str,
        token: &str,
        now: i64,
    ) -> Result<Option<AssetKey>, DbError> {
        let mut writer = self.writer().await?;
        let mut tx = writer.begin().await?;
        let row = sqlx::query(
            "SELECT cloud, resource_type, delivery_type, public_id, expires_at FROM delete_tokens \
             WHERE token = $1 AND cloud = $2",
        )
        .bind(token.to_string())
        .bind(cloud.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM delete_tokens WHERE token = $1 OR expires_at < $2")
            .bind(token.to_string())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let Some(row) = row else { return Ok(None) };
        if row.try_get::<i64, _>("expires_at")? < now {
            return Ok(None);
        }
        Ok(Some(AssetKey {
            cloud: row.try_get("cloud")?,
            resource_type: row.try_get("resource_type")?,
            delivery_type: row.try_get("delivery_type")?,
            public_id: row.try_get("public_id")?,
        }))
    }

    async fn delete_asset(
        &self,
        key: &AssetKey,
    ) -> Result<Option<(AssetRecord, Vec<String>)>, DbError> {
        let mut writer = self.writer().await?;
        let mut tx = writer.begin().await?;
        let Some(record) = self.fetch_asset(&mut tx, key, true).await? else {
            tx.commit().await?;
            return Ok(None);
        };
        let asset_id = record.asset_id.clone();
        sqlx::query("DELETE FROM asset_tags WHERE asset_id = $1")
            .bind(asset_id.clone())
            .execute(&mut *tx)
            .await?;
        let derived = delete_derived_of(&mut tx, &asset_id).await?;
        sqlx::query("DELETE FROM assets WHERE asset_id = $1")
            .bind(asset_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some((record, derived)))
    }

    async fn put_preset(&self, preset: &Preset) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO upload_presets (cloud, name, unsigned, disallow_public_id, settings, \
             external_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (cloud, name) DO UPDATE SET unsigned = excluded.unsigned, \
             disallow_public_id = excluded.disallow_public_id, settings = excluded.settings",
        )
        .bind(preset.cloud.clone())
        .bind(preset.name.clone())
        .bind(preset.unsigned as i64)
        .bind(preset.disallow_public_id as i64)
        .bind(json_text(&preset.settings).into_owned())
        .bind(preset.external_id.clone())
        .bind(preset.created_at)
        .execute(&mut *self.writer().await?)
        .await?;
        Ok(())
    }

    async fn get_preset(&self, cloud: &str, name: &str) -> Result<Option<Preset>, DbError> {
        let row = sqlx::query(
            "SELECT cloud, name, unsigned, disallow_public_id, settings, external_id, created_at \
             FROM upload_presets WHERE cloud = $1 AND name = $2",
        )
        .bind(cloud.to_string())
        .bind(name.to_string())
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(row_to_preset).transpose()
    }

    async fn list_docs(&self, cloud: &str, kind: &str) -> Result<Vec<Document>, DbError> {
        let rows = sqlx::query(
            "SELECT name, body, created_at FROM documents WHERE cloud = $1 AND kind = $2 \
             ORDER BY position, name",
        )
        .bind(cloud.to_string())
        .bind(kind.to_string())
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(row_to_doc).collect()
    }

    async fn get_doc(
        &self,
        cloud: &str,
        kind: &str,
        name: &str,
    ) -> Result<Option<Document>, DbError> {
        let row = sqlx::query(
            "SELECT name, body, created_at FROM documents WHERE cloud = $1 AND kind = $2 \
             AND name = $3",
        )
        .bind(cloud.to_string())
        .bind(kind.to_string())
        .bind(name.to_string())
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(row_to_doc).transpose()
    }

    async fn create_doc(
        &self,
        cloud: &str,
        kind: &str,
        name: &str,
        body: &Value,
        now: i64,
    ) -> Result<bool, DbError> {
        self.insert_doc(cloud, kind, name, body, now, "DO NOTHING")
            .await
            .map(|n| n > 0)
    }

    async fn put_doc(
        &self,
        cloud: &str,
        kind: &str,
        name: &str,
        body: &Value,
        now: i64,
    ) -> Result<(), DbError> {
        self.insert_doc(
            cloud,
            kind,
            name,
            body,
            now,
            "DO UPDATE SET body = excluded.body",
        )
        .await
        .map(|_| ())
    }

    async fn modify_doc(
        &self,
        cloud: &str,
        kind: &str,
        name: &str,
        change: DocChange<'_>,
    ) -> Result<DocOutcome, DbError> {
        let mut writer = self.writer().await?;
        let mut tx = writer.begin().await?;
        let sql = format!(
            "SELECT name, body, created_at FROM documents WHERE cloud = $1 AND kind = $2 \
             AND name = $3{}",
            self.lock_suffix()
        );
        let row = sqlx::query(&sql)
            .bind(cloud.to_string())
            .bind(kind.to_string())
            .bind(name.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(mut doc) = row.as_ref().map(row_to_doc).transpose()? else {
            tx.commit().await?;
            return Ok(DocOutcome::NotFound);
        };
        if let Err(why) = change(&mut doc.body) {
            tx.commit().await?;
            return Ok(DocOutcome::Refused(why));
        }
        sqlx::query("UPDATE documents SET body = $4 WHERE cloud = $1 AND kind = $2 AND name = $3")
            .bind(cloud.to_string())
            .bind(kind.to_string())
            .bind(name.to_string())
            .bind(doc.body.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(DocOutcome::Changed(doc.body))
    }

    async fn delete_doc(&self, cloud: &str, kind: &str, name: &str) -> Result<bool, DbError> {
        let done =
            sqlx::query("DELETE FROM documents WHERE cloud = $1 AND kind = $2 AND name = $3")
                .bind(cloud.to_string())
                .bind(kind.to_string())
                .bind(name.to_string())
                .execute(&mut *self.writer().await?)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn blob_keys(&self) -> Result<Vec<String>, DbError> {
        let rows = sqlx::query("SELECT blob_key FROM assets")
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("blob_key").map_err(DbError::from))
            .collect()
    }

    async fn record_chunk(
        &self,
        init: &ChunkSession,
        part: &ChunkPart,
        max_open: i64,
        rules: ChunkRules<'_>,
    ) -> Result<ChunkOutcome, DbError> {
        for _attempt in 0..5 {
            if let Some(outcome) = self.record_chunk_once(init, part, max_open, rules).await? {
                return Ok(outcome);
            }
        }
        Err(DbError::Corrupt("could not lock the upload session".into()))
    }

    async fn chunk_session(
        &self,
        session_id: &str,
    ) -> Result<Option<(ChunkSession, Vec<ChunkPart>)>, DbError> {
        let mut conn = self.read.acquire().await?;
        let sql = format!("SELECT {SESSION_COLUMNS} FROM upload_sessions WHERE session_id = $1");
        let Some(row) = sqlx::query(&sql)
            .bind(session_id.to_string())
            .fetch_optional(&mut *conn)
            .await?
        else {
            return Ok(None);
        };
        let session = row_to_session(&row)?;
        let parts = load_parts(&mut *conn, session_id).await?;
        Ok(Some((session, parts)))
    }

    async fn reopen_chunk_session(&self, session_id: &str, now: i64) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE upload_sessions SET state = 'open', state_since = $1 WHERE session_id = $2",
        )
        .bind(now)
        .bind(session_id.to_string())
        .execute(&mut *self.writer().await?)
        .await?;
        Ok(())
    }

    async fn renew_assembly(
        &self,
        session_id: &str,
        since: i64,
        now: i64,
    ) -> Result<bool, DbError> {
        let done = sqlx::query(
            "UPDATE upload_sessions SET state_since = $1 \
             WHERE session_id = $2 AND state = 'assembling' AND state_since = $3",
        )
        .bind(now)
        .bind(session_id)
        .bind(since)
        .execute(&mut *self.writer().await?)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_chunk_session(&self, session_id: &str) -> Result<Vec<ChunkPart>, DbError> {
        let mut writer = self.writer().await?;
        let mut tx = writer.begin().await?;
        let parts = load_parts(&mut *tx, session_id).await?;
        sqlx::query("DELETE FROM upload_parts WHERE session_id = $1")
            .bind(session_id.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM upload_sessions WHERE session_id = $1")
            .bind(session_id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(parts)
    }

    async fn stale_chunk_sessions(&self, before: i64) -> Result<Vec<String>, DbError> {
        let rows = sqlx::query("SELECT session_id FROM upload_sessions WHERE updated_at < $1")
            .bind(before)
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("session_id").map_err(DbError::from))
            .collect()
    }

    async fn reset_cloud(&self, cloud: &str) -> Result<Vec<String>, DbError> {
        let mut writer = self.writer().await?;
        let mut tx = writer.begin().await?;
        let sessions: Vec<String> =
            sqlx::query("SELECT session_id FROM upload_sessions WHERE cloud = $1")
                .bind(cloud.to_string())
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get::<String, _>("session_id"))
                .collect::<Result<_, _>>()?;
        for statement in [
            "DELETE FROM asset_tags WHERE asset_id IN (SELECT asset_id FROM assets WHERE cloud = $1)",
            "DELETE FROM upload_parts WHERE session_id IN \
             (SELECT session_id FROM upload_sessions WHERE cloud = $1)",
            "DELETE FROM upload_sessions WHERE cloud = $1",
            "DELETE FROM derived WHERE cloud = $1",
            "DELETE FROM assets WHERE cloud = $1",
            "DELETE FROM upload_presets WHERE cloud = $1",
            "DELETE FROM folders WHERE cloud = $1",
            "DELETE FROM delete_tokens WHERE cloud = $1",
            "DELETE FROM documents WHERE cloud = $1",
            "DELETE FROM notification_jobs WHERE cloud = $1",
        ] {
            sqlx::query(statement)
                .bind(cloud.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(sessions)
    }
}

impl SqlStore {
    /// Saves a record (see [`MetaStore::save_asset`]); with `content`, its `etag` is made
    /// from it by the inserter, with the other rows of its batch.
    async fn save(
        &self,
        mut record: AssetRecord,
        content: Option<bytes::Bytes>,
        overwrite: bool,
    ) -> Result<SaveOutcome, DbError> {
        // Most uploads create a new asset: try that first, together with the other uploads
        // of the moment (one transaction and one statement for many rows). The record goes to
        // the inserter and comes back with its answer.
        record.tags = normalized_tags(&record.tags);
        let (reply, answer) = tokio::sync::oneshot::channel();
        let inserts = self
            .local
            .as_ref()
            .and_then(LocalInserters::sender)
            .unwrap_or_else(|| self.inserts.clone());
        let record = match inserts.send((record, content, reply)).await {
            Ok(()) => match answer.await {
                Ok((stored, Ok(true))) => return Ok(SaveOutcome::Created(stored)),
                Ok((record, Ok(false))) => record,
                Ok((_, Err(e))) => {
                    return Err(DbError::Corrupt(format!("batched insert failed: {e}")))
                }
                Err(_) => return Err(DbError::Corrupt("the insert batcher stopped".into())),
            },
            Err(unsent) => {
                let (mut record, content, _) = unsent.0;
                if let Some(content) = content {
                    record.etag = hex::encode(crate::storage::md5::Md5::digest(&content));
                }
                record
            }
        };
        // Boxed: its transaction's state does not enlarge every upload's future.
        Box::pin(self.save_existing(record, overwrite)).await
    }

    /// Saves a record whose key exists: locks the row and replaces it or reports it. A
    /// concurrent delete can make the row vanish again, hence the loop.
    async fn save_existing(
        &self,
        mut record: AssetRecord,
        overwrite: bool,
    ) -> Result<SaveOutcome, DbError> {
        for _attempt in 0..5 {
            let mut writer = self.writer().await?;
            let mut tx = writer.begin().await?;
            if let Some(previous) = self.fetch_asset(&mut tx, &record.key, true).await? {
                if !overwrite {
                    tx.commit().await?;
                    return Ok(SaveOutcome::Existing(previous));
                }
                // Every way out of this branch returns: the record becomes the stored row.
                record.asset_id = previous.asset_id.clone();
                record.version = record.version.max(previous.version + 1);
                replace_row(&mut tx, &record).await?;
                tx.commit().await?;
                return Ok(SaveOutcome::Replaced {
                    stored: Box::new(record),
                    previous: Box::new(previous),
                });
            }
            if !write_asset(&mut *tx, &record, Conflict::Skip).await? {
                tx.rollback().await?;
                continue;
            }
            insert_tags(&mut tx, &record).await?;
            tx.commit().await?;
            return Ok(SaveOutcome::Created(record));
        }
        Err(DbError::Corrupt(
            "could not save the asset: the public ID kept changing under concurrent writes".into(),
        ))
    }
}
