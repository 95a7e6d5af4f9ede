//! The metadata repository: assets, their tags, and upload presets.
//!
//! One trait, [`MetaStore`], held as `Arc<dyn MetaStore>`; the backend is chosen from the
//! database URL's scheme (`sqlite:` or `postgres:`). Both backends share one SQL
//! implementation over sqlx's `Any` driver ([`sql::SqlStore`]) with its own migrations folder.

pub mod query;
pub mod sql;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value};

use query::{AggField, Filter, SearchQuery};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("unsupported database URL {0:?} (expected sqlite: or postgres:)")]
    UnsupportedUrl(String),
    #[error("the server cannot be reached: {0}")]
    Unreachable(String),
}

/// Identifies one asset.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AssetKey {
    pub cloud: String,
    pub resource_type: String,
    pub delivery_type: String,
    pub public_id: String,
}

/// Everything stored about one asset.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AssetRecord {
    pub asset_id: String,
    pub key: AssetKey,
    pub version: i64,
    pub version_id: String,
    pub format: Option<String>,
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub pages: Option<i64>,
    pub bytes: i64,
    pub etag: String,
    pub created_at: i64,
    pub original_filename: Option<String>,
    pub display_name: String,
    pub asset_folder: String,
    pub tags: Vec<String>,
    /// `context.custom`, in the order given.
    pub context: Map<String, Value>,
    pub metadata: Map<String, Value>,
    /// Further fields echoed in responses (video details, moderation, access control, …).
    pub extra: Map<String, Value>,
    /// Where the bytes live in the blob store.
    pub blob_key: String,
    pub api_key: Option<String>,
}

/// A derived version of an asset (an eager transformation's result).
#[derive(Debug, Clone, PartialEq)]
pub struct DerivedRecord {
    /// Stable for an (asset, transformation, format).
    pub id: String,
    pub cloud: String,
    pub asset_id: String,
    pub transformation: String,
    pub format: String,
    pub bytes: i64,
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub created_at: i64,
}

/// What [`MetaStore::save_asset`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum SaveOutcome {
    /// A new asset row.
    Created(AssetRecord),
    /// An existing asset was replaced; `previous` is what it was (its blob is now unused).
    Replaced {
        stored: Box<AssetRecord>,
        previous: Box<AssetRecord>,
    },
    /// `overwrite` was false and the asset exists: nothing changed.
    Existing(AssetRecord),
}

/// An upload preset; `settings` holds upload parameters in their wire form.
/// A webhook delivery waiting in the database (see `notify`): times in milliseconds.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct NotificationJob {
    pub id: String,
    pub cloud: String,
    pub url: String,
    pub body: String,
    /// The account whose secret signs it.
    pub api_key: String,
    /// `sha1` or `sha256`.
    pub algorithm: String,
    /// Attempts made so far.
    pub attempts: i64,
    pub due_at: i64,
    /// The instance that queued it, and its record there (control API).
    pub origin: String,
    pub record_id: i64,
    /// The lease an instance took it under (none while queued).
    pub holder: String,
    pub lease_until: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Preset {
    pub cloud: String,
    pub name: String,
    pub unsigned: bool,
    pub disallow_public_id: bool,
    pub settings: Map<String, Value>,
    pub external_id: String,
    pub created_at: i64,
}

/// A listing of assets (Admin API `resources`).
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub cloud: String,
    pub resource_type: Option<String>,
    pub delivery_type: Option<String>,
    /// Public IDs starting with this.
    pub prefix: Option<String>,
    /// Exactly these public IDs.
    pub public_ids: Option<Vec<String>>,
    /// Assets carrying this tag.
    pub tag: Option<String>,
    pub max_results: i64,
    /// Where the previous page ended (opaque to callers).
    pub cursor: Option<String>,
    /// Oldest first instead of newest first.
    pub ascending: bool,
    /// Only assets created at or after this Unix time.
    pub start_at: Option<i64>,
}

/// A chunked upload in progress.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkSession {
    pub session_id: String,
    pub cloud: String,
    pub upload_id: String,
    pub resource_type: String,
    /// Who may add parts: `key:<api_key>` or `preset:<name>`.
    pub identity: String,
    /// The file size once a part told it.
    pub total: Option<i64>,
    /// The public ID decided when the session started (echoed to every part).
    pub public_id: Option<String>,
    /// The file name of the first part.
    pub filename: Option<String>,
    /// `open`, or `assembling` while one request builds the file.
    pub state: String,
    pub state_since: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One received part of a chunked upload: bytes `start..=end` in `file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkPart {
    pub start: i64,
    pub end: i64,
    pub md5: String,
    pub file: String,
}

/// What the upload rules decide about a new part, given the locked session and its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkDecision {
    /// Record the part; `total` is the size it told; `claim` marks the session `assembling`.
    Accept { total: Option<i64>, claim: bool },
    /// The same bytes are already recorded; `claim` as above.
    Duplicate { claim: bool },
    /// Refuse the part with this message.
    Reject(String),
}

/// The session and its parts after [`MetaStore::record_chunk`].
#[derive(Debug, Clone)]
pub struct ChunkOutcome {
    pub decision: ChunkDecision,
    pub session: ChunkSession,
    pub parts: Vec<ChunkPart>,
}

/// A change applied to an asset under its lock.
pub type AssetChange<'a> = &'a (dyn Fn(&mut AssetRecord) + Send + Sync);

/// What [`MetaStore::rename_asset`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum RenameOutcome {
    Renamed {
        record: Box<AssetRecord>,
        /// The blob of an asset that was replaced at the target key (to remove).
        replaced_blob: Option<String>,
        /// The IDs of that replaced asset's derived records, removed with it (their files are
        /// to remove).
        replaced_derived: Vec<String>,
    },
    NotFound,
    /// The target exists and `overwrite` was false.
    TargetExists,
}

/// A settings document of an account (a metadata field, a named transformation, …).
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub name: String,
    pub body: Value,
    pub created_at: i64,
}

/// A change of one document under its lock: `Err` leaves it as it was.
pub type DocChange<'a> = &'a (dyn Fn(&mut Value) -> Result<(), String> + Send + Sync);

/// What [`MetaStore::modify_doc`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum DocOutcome {
    Changed(Value),
    NotFound,
    Refused(String),
}

/// The rules applied inside the session lock.
pub type ChunkRules<'a> = &'a (dyn Fn(&ChunkSession, &[ChunkPart]) -> ChunkDecision + Send + Sync);

#[async_trait]
pub trait MetaStore: Send + Sync {
    /// A round trip to the database.
    async fn ping(&self) -> Result<(), DbError>;
    /// The connection pools: (name, idle connections, busy connections).
    fn pool_stats(&self) -> Vec<(&'static str, usize, usize)> {
        Vec::new()
    }
    async fn find_asset(&self, key: &AssetKey) -> Result<Option<AssetRecord>, DbError>;
    /// The asset without its tags (one query: what delivery needs).
    async fn find_asset_untagged(&self, key: &AssetKey) -> Result<Option<AssetRecord>, DbError> {
        self.find_asset(key).await
    }
    /// The asset of a cloud with this asset ID.
    async fn find_asset_by_id(
        &self,
        cloud: &str,
        asset_id: &str,
    ) -> Result<Option<AssetRecord>, DbError>;
    /// Inserts `record`, or replaces the asset with the same key when `overwrite` is true
    /// (keeping its `asset_id` and giving it a version newer than the old one), atomically.
    /// The record is taken whole (it is what a new row gives back), not copied.
    async fn save_asset(
        &self,
        record: AssetRecord,
        overwrite: bool,
    ) -> Result<SaveOutcome, DbError>;
    /// [`MetaStore::save_asset`] for a record whose `etag` is still to be made: the MD5 of
    /// `content`. A store that writes new rows in batches hashes the contents of a batch side
    /// by side as it writes them (one wait for both); any other hashes first.
    async fn save_asset_hashing(
        &self,
        mut record: AssetRecord,
        content: bytes::Bytes,
        overwrite: bool,
    ) -> Result<SaveOutcome, DbError> {
        record.etag = hex::encode(crate::storage::md5::batch::digest(content).await);
        self.save_asset(record, overwrite).await
    }
    /// A page of assets in creation order, and the cursor of the next page when there is one.
    async fn list_assets(
        &self,
        query: &ListQuery,
    ) -> Result<(Vec<AssetRecord>, Option<String>), DbError>;
    /// A page of the assets matching a query, sorted, after its position (with tags).
    async fn search_assets(&self, query: &SearchQuery) -> Result<Vec<AssetRecord>, DbError>;
    /// How many assets of a cloud match a filter.
    async fn count_assets(&self, cloud: &str, filter: &Filter) -> Result<i64, DbError>;
    /// The values of a field among the assets matching a filter, with their counts (most
    /// frequent first, at most 10,000).
    async fn aggregate_assets(
        &self,
        cloud: &str,
        filter: &Filter,
        field: AggField,
    ) -> Result<Vec<(String, i64)>, DbError>;
    /// The distinct tags of every cloud, in order, at most `limit`.
    async fn distinct_tags(&self, limit: i64) -> Result<Vec<String>, DbError>;
    /// Removes an asset row, its tags and its derived records; returns the record and the IDs
    /// of those derived records (whose files are to remove).
    async fn delete_asset(
        &self,
        key: &AssetKey,
    ) -> Result<Option<(AssetRecord, Vec<String>)>, DbError>;
    /// Changes an asset's metadata (tags, context, display name, …) under its row lock; the key,
    /// `asset_id` and blob stay. Returns the asset as stored, `None` when missing.
    async fn modify_asset(
        &self,
        key: &AssetKey,
        change: AssetChange<'_>,
    ) -> Result<Option<AssetRecord>, DbError>;
    /// Moves an asset to another key (public ID and/or delivery type), atomically.
    async fn rename_asset(
        &self,
        from: &AssetKey,
        to: &AssetKey,
        overwrite: bool,
    ) -> Result<RenameOutcome, DbError>;
    /// Distinct tags of a resource type, sorted, with an optional prefix; a page and the
    /// cursor of the next one.
    async fn list_tags(
        &self,
        cloud: &str,
        resource_type: &str,
        prefix: Option<&str>,
        max: i64,
        after: Option<&str>,
    ) -> Result<(Vec<String>, Option<String>), DbError>;
    /// Number of assets and their bytes in a cloud.
    async fn usage(&self, cloud: &str) -> Result<(i64, i64), DbError>;
    /// Every preset of a cloud, by name.
    async fn list_presets(&self, cloud: &str) -> Result<Vec<Preset>, DbError>;
    /// Removes a preset; false when it did not exist.
    async fn delete_preset(&self, cloud: &str, name: &str) -> Result<bool, DbError>;
    /// Creates or replaces a preset.
    async fn put_preset(&self, preset: &Preset) -> Result<(), DbError>;
    /// Every folder path of a cloud: created ones and those of assets' `asset_folder`.
    async fn folder_paths(&self, cloud: &str) -> Result<Vec<String>, DbError>;
    /// Records a created folder; false when it was already recorded.
    async fn create_folder(
        &self,
        cloud: &str,
        path: &str,
        external_id: &str,
        now: i64,
    ) -> Result<bool, DbError>;
    /// Whether any asset lives in this folder or below it.
    async fn folder_has_assets(&self, cloud: &str, path: &str) -> Result<bool, DbError>;
    /// Moves a folder and everything below it to `to` (created folders and assets'
    /// `asset_folder`), in one transaction; `to` is recorded as a created folder.
    async fn rename_folders(
        &self,
        cloud: &str,
        from: &str,
        to: &str,
        external_id: &str,
        now: i64,
    ) -> Result<(), DbError>;
    /// Records derived versions (replacing any with the same id).
    async fn put_derived(&self, derived: &[DerivedRecord]) -> Result<(), DbError>;
    /// The derived versions of an asset, oldest first.
    async fn list_derived(&self, asset_id: &str) -> Result<Vec<DerivedRecord>, DbError>;
    /// The derived versions of a cloud (of one transformation when given), oldest first.
    async fn derived_of_cloud(
        &self,
        cloud: &str,
        transformation: Option<&str>,
    ) -> Result<Vec<DerivedRecord>, DbError>;
    /// Forgets derived versions of a cloud: all of an asset's (`asset_id`), or these ids.
    /// Returns the ids forgotten.
    async fn delete_derived(
        &self,
        cloud: &str,
        asset_id: Option<&str>,
        ids: &[String],
    ) -> Result<Vec<String>, DbError>;
    /// Forgets the created folder and those below it; returns their paths.
    async fn delete_folders(&self, cloud: &str, path: &str) -> Result<Vec<String>, DbError>;
    /// Stores a delete token for an asset.
    async fn put_delete_token(
        &self,
        token: &str,
        key: &AssetKey,
        expires_at: i64,
    ) -> Result<(), DbError>;
    /// Takes a delete token (it can be used once): the asset it names if still valid at `now`.
    async fn take_delete_token(
        &self,
        cloud: &str,
        token: &str,
        now: i64,
    ) -> Result<Option<AssetKey>, DbError>;
    async fn get_preset(&self, cloud: &str, name: &str) -> Result<Option<Preset>, DbError>;
    /// Every blob key referenced by an asset (used to sweep orphaned blobs).
    async fn blob_keys(&self) -> Result<Vec<String>, DbError>;

    /// The documents of a kind, in creation order.
    async fn list_docs(&self, cloud: &str, kind: &str) -> Result<Vec<Document>, DbError>;
    async fn get_doc(
        &self,
        cloud: &str,
        kind: &str,
        name: &str,
    ) -> Result<Option<Document>, DbError>;
    /// Stores a new document; false (and nothing written) when the name is taken.
    async fn create_doc(
        &self,
        cloud: &str,
        kind: &str,
        name: &str,
        body: &Value,
        now: i64,
    ) -> Result<bool, DbError>;
    /// Stores a document, replacing one of the same name (atomically).
    async fn put_doc(
        &self,
        cloud: &str,
        kind: &str,
        name: &str,
        body: &Value,
        now: i64,
    ) -> Result<(), DbError>;
    /// Changes a document under its lock.
    async fn modify_doc(
        &self,
        cloud: &str,
        kind: &str,
        name: &str,
        change: DocChange<'_>,
    ) -> Result<DocOutcome, DbError>;
    /// Removes a document; false when it did not exist.
    async fn delete_doc(&self, cloud: &str, kind: &str, name: &str) -> Result<bool, DbError>;

    /// Under the session's lock: creates the session from `init` when it does not exist (unless
    /// the cloud already has `max_open` sessions), lets `rules` decide about `part`, and applies
    /// the decision. A refused first part leaves no session behind.
    async fn record_chunk(
        &self,
        init: &ChunkSession,
        part: &ChunkPart,
        max_open: i64,
        rules: ChunkRules<'_>,
    ) -> Result<ChunkOutcome, DbError>;
    /// A session and its parts, read without locking.
    async fn chunk_session(
        &self,
        session_id: &str,
    ) -> Result<Option<(ChunkSession, Vec<ChunkPart>)>, DbError>;
    /// Sets a claimed session back to `open` (its assembly failed).
    async fn reopen_chunk_session(&self, session_id: &str, now: i64) -> Result<(), DbError>;
    /// Keeps an assembly claimed: the session's `assembling` state, dated `since` by the
    /// claim or its last renewal, is dated `now` (no other request takes it over while this is
    /// renewed). False when the claim is no longer that one: the session was reopened, or
    /// another request took the assembly over (it dated the state anew).
    async fn renew_assembly(&self, session_id: &str, since: i64, now: i64)
        -> Result<bool, DbError>;
    /// Removes a session and its part rows; returns the parts (whose files the caller removes).
    async fn delete_chunk_session(&self, session_id: &str) -> Result<Vec<ChunkPart>, DbError>;
    /// Sessions not touched since `before`.
    async fn stale_chunk_sessions(&self, before: i64) -> Result<Vec<String>, DbError>;

    /// Whether several instances may share this database (a server, not a file): work that
    /// one instance at a time does is then taken by lease.
    fn shared(&self) -> bool {
        false
    }
    /// Takes or renews the lease `name` for `holder` until `expires_at` when it is free,
    /// expired at `now`, or already `holder`'s; answers whether `holder` has it.
    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<bool, DbError>;

    /// Queues a webhook delivery.
    async fn queue_notification(&self, job: &NotificationJob) -> Result<(), DbError>;
    /// Takes up to `limit` deliveries due at `now` that no instance holds, each held by
    /// `holder` until `until` (no other instance takes them meanwhile).
    async fn claim_notifications(
        &self,
        holder: &str,
        now: i64,
        until: i64,
        limit: i64,
    ) -> Result<Vec<NotificationJob>, DbError>;
    /// A delivery made, or given up: removed, if the lease it was taken under still holds.
    async fn notification_done(&self, job: &NotificationJob) -> Result<(), DbError>;
    /// A delivery to try again at `due_at` after `attempts` attempts (its lease released),
    /// if the lease it was taken under still holds.
    async fn notification_retry(
        &self,
        job: &NotificationJob,
        attempts: i64,
        due_at: i64,
    ) -> Result<(), DbError>;
    /// When the next delivery may be taken (due, and not held), if any is queued.
    async fn next_notification_due(&self) -> Result<Option<i64>, DbError>;

    /// Removes every record of a cloud (assets, tags, derived, presets, folders, upload
    /// sessions and their parts, delete tokens, documents) in one transaction; answers the
    /// upload sessions removed (whose folders the caller removes).
    async fn reset_cloud(&self, cloud: &str) -> Result<Vec<String>, DbError>;
}

/// Opens the store for `url` (running migrations).
pub async fn connect(url: &str) -> Result<Arc<dyn MetaStore>, DbError> {
    Ok(Arc::new(sql::SqlStore::connect(url).await?))
}
