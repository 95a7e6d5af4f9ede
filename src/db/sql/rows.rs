//! Rows as read from the database: one struct per table, derived with `sqlx::FromRow`, and
//! their conversion to the repository's types (JSON columns parsed, flags as booleans).

use sqlx::FromRow;

use super::*;

pub(super) const SESSION_COLUMNS: &str =
    "session_id, cloud, upload_id, resource_type, identity, total, \
    public_id, filename, state, state_since, created_at, updated_at";

#[derive(sqlx::FromRow)]
struct SessionRow {
    session_id: String,
    cloud: String,
    upload_id: String,
    resource_type: String,
    identity: String,
    total: Option<i64>,
    public_id: Option<String>,
    filename: Option<String>,
    state: String,
    state_since: i64,
    created_at: i64,
    updated_at: i64,
}

pub(super) fn row_to_session(row: &AnyRow) -> Result<ChunkSession, DbError> {
    let r = SessionRow::from_row(row)?;
    Ok(ChunkSession {
        session_id: r.session_id,
        cloud: r.cloud,
        upload_id: r.upload_id,
        resource_type: r.resource_type,
        identity: r.identity,
        total: r.total,
        public_id: r.public_id,
        filename: r.filename,
        state: r.state,
        state_since: r.state_since,
        created_at: r.created_at,
        updated_at: r.updated_at,
    })
}

pub(super) async fn load_parts<'e, E>(exec: E, session_id: &str) -> Result<Vec<ChunkPart>, DbError>
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
            let p = PartRow::from_row(r)?;
            Ok(ChunkPart {
                start: p.start_at,
                end: p.end_at,
                md5: p.md5,
                file: p.file,
            })
        })
        .collect()
}

#[derive(sqlx::FromRow)]
struct PartRow {
    start_at: i64,
    end_at: i64,
    md5: String,
    file: String,
}

pub(super) const ASSET_COLUMNS: &str =
    "asset_id, cloud, resource_type, delivery_type, public_id, version, \
    version_id, format, width, height, pages, bytes, etag, created_at, original_filename, \
    display_name, asset_folder, context, metadata, extra, blob_key, api_key";

#[derive(sqlx::FromRow)]
struct PresetRow {
    cloud: String,
    name: String,
    unsigned: i64,
    disallow_public_id: i64,
    settings: String,
    external_id: String,
    created_at: i64,
}

pub(super) fn row_to_preset(row: &AnyRow) -> Result<Preset, DbError> {
    let r = PresetRow::from_row(row)?;
    Ok(Preset {
        cloud: r.cloud,
        name: r.name,
        unsigned: r.unsigned != 0,
        disallow_public_id: r.disallow_public_id != 0,
        settings: parse_map(&r.settings, "settings")?,
        external_id: r.external_id,
        created_at: r.created_at,
    })
}

#[derive(sqlx::FromRow)]
struct DerivedRow {
    id: String,
    cloud: String,
    asset_id: String,
    transformation: String,
    format: String,
    bytes: i64,
    width: Option<i64>,
    height: Option<i64>,
    created_at: i64,
}

pub(super) fn row_to_derived(row: &AnyRow) -> Result<DerivedRecord, DbError> {
    let r = DerivedRow::from_row(row)?;
    Ok(DerivedRecord {
        id: r.id,
        cloud: r.cloud,
        asset_id: r.asset_id,
        transformation: r.transformation,
        format: r.format,
        bytes: r.bytes,
        width: r.width,
        height: r.height,
        created_at: r.created_at,
    })
}

#[derive(sqlx::FromRow)]
struct DocRow {
    name: String,
    body: String,
    created_at: i64,
}

pub(super) fn row_to_doc(row: &AnyRow) -> Result<Document, DbError> {
    let r = DocRow::from_row(row)?;
    Ok(Document {
        name: r.name,
        body: serde_json::from_str(&r.body)
            .map_err(|e| DbError::Corrupt(format!("document body: {e}")))?,
        created_at: r.created_at,
    })
}

/// A map column's text (most are empty: no text is made for those).
pub(super) fn json_text(map: &Map<String, Value>) -> std::borrow::Cow<'static, str> {
    if map.is_empty() {
        return "{}".into();
    }
    serde_json::to_string(map)
        .unwrap_or_else(|_| "{}".to_string())
        .into()
}

pub(super) fn parse_map(text: &str, column: &str) -> Result<Map<String, Value>, DbError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(DbError::Corrupt(format!(
            "column {column} is not a JSON object"
        ))),
    }
}

#[derive(sqlx::FromRow)]
struct AssetRow {
    asset_id: String,
    cloud: String,
    resource_type: String,
    delivery_type: String,
    public_id: String,
    version: i64,
    version_id: String,
    format: Option<String>,
    width: Option<i64>,
    height: Option<i64>,
    pages: Option<i64>,
    bytes: i64,
    etag: String,
    created_at: i64,
    original_filename: Option<String>,
    display_name: String,
    asset_folder: String,
    context: String,
    metadata: String,
    extra: String,
    blob_key: String,
    api_key: Option<String>,
}

pub(super) fn row_to_asset(row: &AnyRow, tags: Vec<String>) -> Result<AssetRecord, DbError> {
    let r = AssetRow::from_row(row)?;
    Ok(AssetRecord {
        asset_id: r.asset_id,
        key: AssetKey {
            cloud: r.cloud,
            resource_type: r.resource_type,
            delivery_type: r.delivery_type,
            public_id: r.public_id,
        },
        version: r.version,
        version_id: r.version_id,
        format: r.format,
        width: r.width,
        height: r.height,
        pages: r.pages,
        bytes: r.bytes,
        etag: r.etag,
        created_at: r.created_at,
        original_filename: r.original_filename,
        display_name: r.display_name,
        asset_folder: r.asset_folder,
        tags,
        context: parse_map(&r.context, "context")?,
        metadata: parse_map(&r.metadata, "metadata")?,
        extra: parse_map(&r.extra, "extra")?,
        blob_key: r.blob_key,
        api_key: r.api_key,
    })
}

pub(super) async fn load_tags<'e, E>(exec: E, asset_id: &str) -> Result<Vec<String>, DbError>
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
pub(super) fn normalized_tags(tags: &[String]) -> Vec<String> {
    let mut t: Vec<String> = tags.to_vec();
    t.sort();
    t.dedup();
    t
}
