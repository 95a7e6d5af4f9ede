-- Asset IDs are compared by code point: every join and lookup by asset ID (tags to assets,
-- derived versions) then compares bytes instead of calling the locale's collation. Asset IDs
-- are hex digits, so no order changes. And a cloud's assets of one resource type by size, so
-- that counts of searches such as `resource_type:image AND bytes>4mb` read only this index.
ALTER TABLE asset_tags DROP CONSTRAINT asset_tags_asset_id_fkey;
ALTER TABLE assets ALTER COLUMN asset_id TYPE TEXT COLLATE "C";
ALTER TABLE asset_tags ALTER COLUMN asset_id TYPE TEXT COLLATE "C";
ALTER TABLE derived ALTER COLUMN asset_id TYPE TEXT COLLATE "C";
ALTER TABLE asset_tags ADD CONSTRAINT asset_tags_asset_id_fkey
    FOREIGN KEY (asset_id) REFERENCES assets (asset_id) ON DELETE CASCADE;
CREATE INDEX assets_type_bytes ON assets (cloud, resource_type, bytes);
