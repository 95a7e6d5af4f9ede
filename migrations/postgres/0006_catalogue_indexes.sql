-- Indexes for listings and searches over large catalogues: the newest-first order of a cloud
-- (with the asset ID that breaks ties, as cursors do), assets of a folder, public IDs and tags
-- by code point (prefix ranges compare with the "C" collation), and public IDs with ASCII
-- letters lowered (the `public_id:` search).
DROP INDEX assets_created;
CREATE INDEX assets_created ON assets (cloud, resource_type, delivery_type, created_at, (asset_id COLLATE "C"));
CREATE INDEX assets_cloud_created ON assets (cloud, created_at, (asset_id COLLATE "C"));
CREATE INDEX assets_folder ON assets (cloud, asset_folder);
CREATE INDEX assets_public_id_c ON assets (cloud, resource_type, delivery_type, (public_id COLLATE "C"));
CREATE INDEX assets_public_id_folded ON assets (cloud, (translate(public_id, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz') COLLATE "C"));
CREATE INDEX asset_tags_tag_c ON asset_tags ((tag COLLATE "C"), asset_id);
