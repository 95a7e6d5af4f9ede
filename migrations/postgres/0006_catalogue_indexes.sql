-- Indexes for listings and searches over large catalogues: the newest-first order of a cloud
-- (with the asset ID that breaks ties, as cursors do), public IDs and tags by code point
-- (ranges and orders compare with the "C" collation), and folders and public IDs with ASCII
-- letters lowered (`folder:` and `public_id:` searches; exact ones narrow through them too).
DROP INDEX assets_created;
CREATE INDEX assets_created ON assets (cloud, resource_type, delivery_type, created_at, (asset_id COLLATE "C"));
CREATE INDEX assets_cloud_created ON assets (cloud, created_at, (asset_id COLLATE "C"));
CREATE INDEX assets_public_id_c ON assets (cloud, resource_type, delivery_type, (public_id COLLATE "C"));
CREATE INDEX assets_folder_folded ON assets (cloud, (translate(asset_folder, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz') COLLATE "C"));
CREATE INDEX assets_public_id_folded ON assets (cloud, (translate(public_id, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz') COLLATE "C"));
CREATE INDEX asset_tags_tag_c ON asset_tags ((tag COLLATE "C"), asset_id);
