//! The SQL implementation of [`MetaStore`] for SQLite and PostgreSQL.
//!
//! Queries use `$n` placeholders and only `TEXT`/`BIGINT` columns so that one text serves both
//! databases through sqlx's `Any` driver. SQLite runs in WAL mode with a single writer
//! connection (so write transactions never deadlock on lock upgrades) and several readers;
//! PostgreSQL locks the asset row with `FOR UPDATE`.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

mod search;

use super::query::{AggField, Filter, SearchQuery};
use super::{
    AssetChange, AssetKey, AssetRecord, ChunkDecision, ChunkOutcome, ChunkPart, ChunkRules,
    ChunkSession, DbError, DerivedRecord, DocChange, DocOutcome, Document, ListQuery, MetaStore,
    Preset, RenameOutcome, SaveOutcome,
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
}

/// A new asset and where to say whether its row was inserted.
type PendingInsert = (
    AssetRecord,
    tokio::sync::oneshot::Sender<Result<bool, String>>,
);

/// Rows inserted by one statement at most (22 parameters each).
const BATCH_ROWS: usize = 64;
/// Tags written in one batch at most; records beyond it wait for the next batch.
const BATCH_TAGS: usize = 4000;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

const SESSION_COLUMNS: &str = "session_id, cloud, upload_id, resource_type, identity, total, \
    public_id, filename, state, state_since, created_at, updated_at";

fn row_to_session(row: &AnyRow) -> Result<ChunkSession, DbError> {
    Ok(ChunkSession {
        session_id: row.try_get("session_id")?,
        cloud: row.try_get("cloud")?,
        upload_id: row.try_get("upload_id")?,
        resource_type: row.try_get("resource_type")?,
        identity: row.try_get("identity")?,
        total: row.try_get("total")?,
        public_id: row.try_get("public_id")?,
        filename: row.try_get("filename")?,
        state: row.try_get("state")?,
        state_since: row.try_get("state_since")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

async fn load_parts<'e, E>(exec: E, session_id: &str) -> Result<Vec<ChunkPart>, DbError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let rows = sqlx::query(
        "SELECT start_at, end_at, md5, file FROM upload_parts WHERE session_id = $1 ORDER BY start_at, end_at",
    )
    .bind(session_id.to_string())
    .fetch_all(exec)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ChunkPart {
                start: r.try_get("start_at")?,
                end: r.try_get("end_at")?,
                md5: r.try_get("md5")?,
                file: r.try_get("file")?,
            })
        })
        .collect()
}

const ASSET_COLUMNS: &str = "asset_id, cloud, resource_type, delivery_type, public_id, version, \
    version_id, format, width, height, pages, bytes, etag, created_at, original_filename, \
    display_name, asset_folder, context, metadata, extra, blob_key, api_key";

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
                let mut write = AnyPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(Duration::from_secs(60))
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
                    .after_connect(setup)
                    .connect_with(options)
                    .await?;
                let inserts = spawn_inserter(write.clone(), dialect);
                SqlStore {
                    read,
                    write,
                    dialect,
                    inserts,
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
                    inserts: spawn_inserter(pool.clone(), dialect),
                    write: pool,
                    dialect,
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
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected())
    }

    fn lock_suffix(&self) -> &'static str {
        match self.dialect {
            Dialect::Postgres => " FOR UPDATE",
            Dialect::Sqlite => "",
        }
    }
}

fn sqlite_setup(
    conn: &mut sqlx::AnyConnection,
    _meta: sqlx::pool::PoolConnectionMetadata,
) -> futures_util::future::BoxFuture<'_, Result<(), sqlx::Error>> {
    Box::pin(async move {
        for pragma in [
            "PRAGMA busy_timeout = 10000",
            "PRAGMA synchronous = NORMAL",
            "PRAGMA foreign_keys = ON",
            // Statement journals of multi-row inserts stay in memory, not in a file under /tmp.
            "PRAGMA temp_store = MEMORY",
        ] {
            sqlx::query(pragma).execute(&mut *conn).await?;
        }
        Ok(())
    })
}

fn row_to_preset(row: &AnyRow) -> Result<Preset, DbError> {
    Ok(Preset {
        cloud: row.try_get("cloud")?,
        name: row.try_get("name")?,
        unsigned: row.try_get::<i64, _>("unsigned")? != 0,
        disallow_public_id: row.try_get::<i64, _>("disallow_public_id")? != 0,
        settings: parse_map(&row.try_get::<String, _>("settings")?, "settings")?,
        external_id: row.try_get("external_id")?,
        created_at: row.try_get("created_at")?,
    })
}

fn row_to_derived(r: &AnyRow) -> Result<DerivedRecord, DbError> {
    Ok(DerivedRecord {
        id: r.try_get("id")?,
        cloud: r.try_get("cloud")?,
        asset_id: r.try_get("asset_id")?,
        transformation: r.try_get("transformation")?,
        format: r.try_get("format")?,
        bytes: r.try_get("bytes")?,
        width: r.try_get("width")?,
        height: r.try_get("height")?,
        created_at: r.try_get("created_at")?,
    })
}

fn row_to_doc(row: &AnyRow) -> Result<Document, DbError> {
    let body: String = row.try_get("body")?;
    Ok(Document {
        name: row.try_get("name")?,
        body: serde_json::from_str(&body)
            .map_err(|e| DbError::Corrupt(format!("document body: {e}")))?,
        created_at: row.try_get("created_at")?,
    })
}

fn json_text(map: &Map<String, Value>) -> String {
    Value::Object(map.clone()).to_string()
}

fn parse_map(text: &str, column: &str) -> Result<Map<String, Value>, DbError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(DbError::Corrupt(format!(
            "column {column} is not a JSON object"
        ))),
    }
}

fn row_to_asset(row: &AnyRow, tags: Vec<String>) -> Result<AssetRecord, DbError> {
    Ok(AssetRecord {
        asset_id: row.try_get("asset_id")?,
        key: AssetKey {
            cloud: row.try_get("cloud")?,
            resource_type: row.try_get("resource_type")?,
            delivery_type: row.try_get("delivery_type")?,
            public_id: row.try_get("public_id")?,
        },
        version: row.try_get("version")?,
        version_id: row.try_get("version_id")?,
        format: row.try_get("format")?,
        width: row.try_get("width")?,
        height: row.try_get("height")?,
        pages: row.try_get("pages")?,
        bytes: row.try_get("bytes")?,
        etag: row.try_get("etag")?,
        created_at: row.try_get("created_at")?,
        original_filename: row.try_get("original_filename")?,
        display_name: row.try_get("display_name")?,
        asset_folder: row.try_get("asset_folder")?,
        tags,
        context: parse_map(&row.try_get::<String, _>("context")?, "context")?,
        metadata: parse_map(&row.try_get::<String, _>("metadata")?, "metadata")?,
        extra: parse_map(&row.try_get::<String, _>("extra")?, "extra")?,
        blob_key: row.try_get("blob_key")?,
        api_key: row.try_get("api_key")?,
    })
}

async fn load_tags<'e, E>(exec: E, asset_id: &str) -> Result<Vec<String>, DbError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let rows = sqlx::query("SELECT tag FROM asset_tags WHERE asset_id = $1 ORDER BY tag")
        .bind(asset_id.to_string())
        .fetch_all(exec)
        .await?;
    rows.iter()
        .map(|r| r.try_get::<String, _>("tag").map_err(DbError::from))
        .collect()
}

/// Tags in stored (sorted, de-duplicated) order.
fn normalized_tags(tags: &[String]) -> Vec<String> {
    let mut t: Vec<String> = tags.to_vec();
    t.sort();
    t.dedup();
    t
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
        record: &AssetRecord,
        overwrite: bool,
    ) -> Result<SaveOutcome, DbError> {
        // Most uploads create a new asset: try that first, together with the other uploads
        // of the moment (one transaction and one statement for many rows).
        let mut stored = record.clone();
        stored.tags = normalized_tags(&record.tags);
        let (reply, answer) = tokio::sync::oneshot::channel();
        if self.inserts.send((stored.clone(), reply)).await.is_ok() {
            match answer.await {
                Ok(Ok(true)) => return Ok(SaveOutcome::Created(stored)),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => return Err(DbError::Corrupt(format!("batched insert failed: {e}"))),
                Err(_) => return Err(DbError::Corrupt("the insert batcher stopped".into())),
            }
        }
        // The key exists: lock the row and replace it or report it. A concurrent delete can
        // make the row vanish again, hence the loop.
        for _attempt in 0..5 {
            let mut tx = self.write.begin().await?;
            if let Some(previous) = self.fetch_asset(&mut tx, &record.key, true).await? {
                if !overwrite {
                    tx.commit().await?;
                    return Ok(SaveOutcome::Existing(previous));
                }
                let mut stored = record.clone();
                stored.asset_id = previous.asset_id.clone();
                stored.version = record.version.max(previous.version + 1);
                stored.tags = normalized_tags(&record.tags);
                write_asset(&mut *tx, &stored, Conflict::Replace).await?;
                sqlx::query("DELETE FROM asset_tags WHERE asset_id = $1")
                    .bind(stored.asset_id.clone())
                    .execute(&mut *tx)
                    .await?;
                insert_tags(&mut tx, &stored).await?;
                tx.commit().await?;
                return Ok(SaveOutcome::Replaced {
                    stored: Box::new(stored),
                    previous: Box::new(previous),
                });
            }
            let mut stored = record.clone();
            stored.tags = normalized_tags(&record.tags);
            if !write_asset(&mut *tx, &stored, Conflict::Skip).await? {
                tx.rollback().await?;
                continue;
            }
            insert_tags(&mut tx, &stored).await?;
            tx.commit().await?;
            return Ok(SaveOutcome::Created(stored));
        }
        Err(DbError::Corrupt(
            "could not save the asset: the public ID kept changing under concurrent writes".into(),
        ))
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
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() == 1)
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
        let mut tx = self.write.begin().await?;
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
        write_asset(&mut *tx, &record, Conflict::Replace).await?;
        sqlx::query("DELETE FROM asset_tags WHERE asset_id = $1")
            .bind(record.asset_id.clone())
            .execute(&mut *tx)
            .await?;
        insert_tags(&mut tx, &record).await?;
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
            .execute(&self.write)
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
        .execute(&self.write)
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
        let mut tx = self.write.begin().await?;
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
        let mut tx = self.write.begin().await?;
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
        let mut tx = self.write.begin().await?;
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
        let mut tx = self.write.begin().await?;
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
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn take_delete_token(
        &self,
        cloud: &str,
        token: &str,
        now: i64,
    ) -> Result<Option<AssetKey>, DbError> {
        let mut tx = self.write.begin().await?;
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
        let mut tx = self.write.begin().await?;
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
        .bind(json_text(&preset.settings))
        .bind(preset.external_id.clone())
        .bind(preset.created_at)
        .execute(&self.write)
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
        let mut tx = self.write.begin().await?;
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
                .execute(&self.write)
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
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn delete_chunk_session(&self, session_id: &str) -> Result<Vec<ChunkPart>, DbError> {
        let mut tx = self.write.begin().await?;
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
        let mut tx = self.write.begin().await?;
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
    async fn record_chunk_once(
        &self,
        init: &ChunkSession,
        part: &ChunkPart,
        max_open: i64,
        rules: ChunkRules<'_>,
    ) -> Result<Option<ChunkOutcome>, DbError> {
        let select = format!(
            "SELECT {SESSION_COLUMNS} FROM upload_sessions WHERE session_id = $1{}",
            self.lock_suffix()
        );
        let mut tx = self.write.begin().await?;
        let existing = sqlx::query(&select)
            .bind(init.session_id.clone())
            .fetch_optional(&mut *tx)
            .await?;
        let (session, created) = match existing {
            Some(row) => (row_to_session(&row)?, false),
            None => {
                let open: i64 =
                    sqlx::query("SELECT COUNT(*) AS n FROM upload_sessions WHERE cloud = $1")
                        .bind(init.cloud.clone())
                        .fetch_one(&mut *tx)
                        .await?
                        .try_get("n")?;
                if open >= max_open {
                    tx.rollback().await?;
                    return Ok(Some(ChunkOutcome {
                        decision: ChunkDecision::Reject(format!(
                            "Too many chunked uploads in progress for this cloud (maximum {max_open})"
                        )),
                        session: init.clone(),
                        parts: Vec::new(),
                    }));
                }
                let sql = format!(
                    "INSERT INTO upload_sessions ({SESSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, \
                     $7, $8, $9, $10, $11, $12) ON CONFLICT (session_id) DO NOTHING"
                );
                let done = sqlx::query(&sql)
                    .bind(init.session_id.clone())
                    .bind(init.cloud.clone())
                    .bind(init.upload_id.clone())
                    .bind(init.resource_type.clone())
                    .bind(init.identity.clone())
                    .bind(init.total)
                    .bind(init.public_id.clone())
                    .bind(init.filename.clone())
                    .bind(init.state.clone())
                    .bind(init.state_since)
                    .bind(init.created_at)
                    .bind(init.updated_at)
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() == 0 {
                    // Another request created it first: start over and lock it.
                    tx.rollback().await?;
                    return Ok(None);
                }
                (init.clone(), true)
            }
        };
        let mut parts = load_parts(&mut *tx, &session.session_id).await?;
        let decision = rules(&session, &parts);
        let mut session = session;
        let claim = match &decision {
            ChunkDecision::Reject(_) => {
                if created {
                    tx.rollback().await?;
                } else {
                    tx.commit().await?;
                }
                return Ok(Some(ChunkOutcome {
                    decision,
                    session,
                    parts,
                }));
            }
            ChunkDecision::Accept { total, claim } => {
                sqlx::query(
                    "INSERT INTO upload_parts (session_id, start_at, end_at, md5, file) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (session_id, start_at, end_at) DO NOTHING",
                )
                .bind(session.session_id.clone())
                .bind(part.start)
                .bind(part.end)
                .bind(part.md5.clone())
                .bind(part.file.clone())
                .execute(&mut *tx)
                .await?;
                if total.is_some() {
                    session.total = *total;
                }
                parts = load_parts(&mut *tx, &session.session_id).await?;
                *claim
            }
            ChunkDecision::Duplicate { claim } => *claim,
        };
        session.updated_at = init.updated_at;
        if claim {
            session.state = "assembling".into();
            session.state_since = init.updated_at;
        }
        sqlx::query(
            "UPDATE upload_sessions SET total = $1, updated_at = $2, state = $3, state_since = $4 \
             WHERE session_id = $5",
        )
        .bind(session.total)
        .bind(session.updated_at)
        .bind(session.state.clone())
        .bind(session.state_since)
        .bind(session.session_id.clone())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(ChunkOutcome {
            decision,
            session,
            parts,
        }))
    }
}

/// Starts the task that inserts new assets in batches: it takes what is waiting (up to
/// [`BATCH_ROWS`]), writes the rows and their tags in one transaction, and tells each caller
/// whether its row went in (a key that exists, or twice in one batch, does not).
fn spawn_inserter(pool: AnyPool, dialect: Dialect) -> tokio::sync::mpsc::Sender<PendingInsert> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<PendingInsert>(1024);
    tokio::spawn(async move {
        let mut carry: Option<PendingInsert> = None;
        loop {
            let first = match carry.take() {
                Some(p) => p,
                None => match rx.recv().await {
                    Some(p) => p,
                    None => break,
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
            let records: Vec<&AssetRecord> = batch.iter().map(|(r, _)| r).collect();
            let result = insert_batch(&pool, dialect, &records).await;
            for (record, reply) in batch {
                let answer = match &result {
                    Ok(ids) => Ok(ids.contains(&record.asset_id)),
                    Err(e) => Err(e.to_string()),
                };
                let _ = reply.send(answer);
            }
        }
    });
    tx
}

/// Inserts the rows that do not exist yet, and the tags of those, in one transaction;
/// returns the asset IDs inserted.
async fn insert_batch(
    pool: &AnyPool,
    dialect: Dialect,
    records: &[&AssetRecord],
) -> Result<std::collections::HashSet<String>, DbError> {
    let width = ASSET_COLUMNS.split(',').count();
    let rows: Vec<String> = (0..records.len())
        .map(|r| {
            let params: Vec<String> = (1..=width)
                .map(|c| placeholder(dialect, r * width + c))
                .collect();
            format!("({})", params.join(", "))
        })
        .collect();
    let sql = format!(
        "INSERT INTO assets ({ASSET_COLUMNS}) VALUES {} \
         ON CONFLICT (cloud, resource_type, delivery_type, public_id) DO NOTHING RETURNING asset_id",
        rows.join(", ")
    );
    let mut q = sqlx::query(&sql);
    for s in records {
        q = bind_asset(q, s);
    }
    let mut tx = pool.begin().await?;
    let inserted: std::collections::HashSet<String> = q
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>("asset_id"))
        .collect::<Result<_, _>>()?;
    let tag_rows: Vec<(&&AssetRecord, &str)> = records
        .iter()
        .filter(|r| inserted.contains(&r.asset_id))
        .flat_map(|r| r.tags.iter().map(move |t| (r, t.as_str())))
        .collect();
    if !tag_rows.is_empty() {
        let values: Vec<String> = (0..tag_rows.len())
            .map(|i| {
                format!(
                    "({}, {}, {}, {})",
                    placeholder(dialect, 4 * i + 1),
                    placeholder(dialect, 4 * i + 2),
                    placeholder(dialect, 4 * i + 3),
                    placeholder(dialect, 4 * i + 4)
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO asset_tags (asset_id, tag, cloud, created_at) VALUES {} ON CONFLICT DO NOTHING",
            values.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for (r, tag) in tag_rows {
            q = q
                .bind(r.asset_id.clone())
                .bind(tag.to_string())
                .bind(r.key.cloud.clone())
                .bind(r.created_at);
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(inserted)
}

/// The `n`th (1-based) bind parameter of a generated statement. SQLite gets anonymous `?`s:
/// it resolves the name of a numbered one by a linear scan, which made binding a batch of
/// hundreds of parameters quadratic.
fn placeholder(dialect: Dialect, n: usize) -> String {
    match dialect {
        Dialect::Sqlite => "?".to_string(),
        Dialect::Postgres => format!("${n}"),
    }
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Binds an asset's columns in [`ASSET_COLUMNS`] order.
fn bind_asset<'q>(q: AnyQuery<'q>, s: &AssetRecord) -> AnyQuery<'q> {
    q.bind(s.asset_id.clone())
        .bind(s.key.cloud.clone())
        .bind(s.key.resource_type.clone())
        .bind(s.key.delivery_type.clone())
        .bind(s.key.public_id.clone())
        .bind(s.version)
        .bind(s.version_id.clone())
        .bind(s.format.clone())
        .bind(s.width)
        .bind(s.height)
        .bind(s.pages)
        .bind(s.bytes)
        .bind(s.etag.clone())
        .bind(s.created_at)
        .bind(s.original_filename.clone())
        .bind(s.display_name.clone())
        .bind(s.asset_folder.clone())
        .bind(json_text(&s.context))
        .bind(json_text(&s.metadata))
        .bind(json_text(&s.extra))
        .bind(s.blob_key.clone())
        .bind(s.api_key.clone())
}

/// What [`write_asset`] does when the asset's key already has a row.
#[derive(Clone, Copy)]
enum Conflict {
    /// Leave the row alone (nothing is written).
    Skip,
    /// Replace every column but the key and the `asset_id`.
    Replace,
}

/// Writes an asset row; returns whether a row was written.
async fn write_asset<'e, E>(
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
async fn delete_derived_of(
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

/// The tag rows of an asset (each carries the asset's cloud and creation time, so that the
/// newest assets with a tag are read from the tag index alone).
async fn insert_tags(
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

impl SqlStore {
    async fn rename_once(
        &self,
        from: &AssetKey,
        to: &AssetKey,
        overwrite: bool,
    ) -> Result<RenameOutcome, DbError> {
        let mut tx = self.write.begin().await?;
        let Some(mut record) = self.fetch_asset(&mut tx, from, true).await? else {
            tx.commit().await?;
            return Ok(RenameOutcome::NotFound);
        };
        let asset_id = record.asset_id.clone();
        let (mut replaced_blob, mut replaced_derived) = (None, Vec::new());
        if from != to {
            if let Some(target) = self.fetch_asset(&mut tx, to, true).await? {
                if !overwrite {
                    tx.commit().await?;
                    return Ok(RenameOutcome::TargetExists);
                }
                let target_id = target.asset_id;
                replaced_blob = Some(target.blob_key);
                replaced_derived = delete_derived_of(&mut tx, &target_id).await?;
                for sql in [
                    "DELETE FROM asset_tags WHERE asset_id = $1",
                    "DELETE FROM assets WHERE asset_id = $1",
                ] {
                    sqlx::query(sql)
                        .bind(target_id.clone())
                        .execute(&mut *tx)
                        .await?;
                }
            }
            sqlx::query("UPDATE assets SET public_id = $1, delivery_type = $2, display_name = $3 WHERE asset_id = $4")
                .bind(to.public_id.clone())
                .bind(to.delivery_type.clone())
                .bind(to.public_id.rsplit('/').next().unwrap_or(&to.public_id).to_string())
                .bind(asset_id)
                .execute(&mut *tx)
                .await?;
            record.key = to.clone();
            record.display_name = to
                .public_id
                .rsplit('/')
                .next()
                .unwrap_or(&to.public_id)
                .to_string();
        }
        tx.commit().await?;
        Ok(RenameOutcome::Renamed {
            record: Box::new(record),
            replaced_blob,
            replaced_derived,
        })
    }
}
