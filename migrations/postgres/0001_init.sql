-- Assets: one row per (cloud, resource_type, delivery_type, public_id).
CREATE TABLE assets (
    asset_id TEXT PRIMARY KEY NOT NULL,
    cloud TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    delivery_type TEXT NOT NULL,
    public_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    version_id TEXT NOT NULL,
    format TEXT,
    width BIGINT,
    height BIGINT,
    pages BIGINT,
    bytes BIGINT NOT NULL,
    etag TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    original_filename TEXT,
    display_name TEXT NOT NULL,
    asset_folder TEXT NOT NULL,
    context TEXT NOT NULL,
    metadata TEXT NOT NULL,
    extra TEXT NOT NULL,
    blob_key TEXT NOT NULL,
    api_key TEXT,
    UNIQUE (cloud, resource_type, delivery_type, public_id)
);
CREATE INDEX assets_created ON assets (cloud, resource_type, delivery_type, created_at);

CREATE TABLE asset_tags (
    asset_id TEXT NOT NULL REFERENCES assets (asset_id) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    PRIMARY KEY (asset_id, tag)
);
CREATE INDEX asset_tags_tag ON asset_tags (tag);

CREATE TABLE upload_presets (
    cloud TEXT NOT NULL,
    name TEXT NOT NULL,
    unsigned BIGINT NOT NULL,
    disallow_public_id BIGINT NOT NULL,
    settings TEXT NOT NULL,
    external_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (cloud, name)
);
