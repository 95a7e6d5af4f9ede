-- Tag rows carry their asset's cloud and creation time: the newest assets with a tag, and how
-- many there are, are read from one index.
ALTER TABLE asset_tags ADD COLUMN cloud TEXT NOT NULL DEFAULT '';
ALTER TABLE asset_tags ADD COLUMN created_at BIGINT NOT NULL DEFAULT 0;
UPDATE asset_tags SET
    cloud = (SELECT a.cloud FROM assets a WHERE a.asset_id = asset_tags.asset_id),
    created_at = (SELECT a.created_at FROM assets a WHERE a.asset_id = asset_tags.asset_id);
CREATE INDEX asset_tags_newest ON asset_tags (cloud, tag, created_at, asset_id);
