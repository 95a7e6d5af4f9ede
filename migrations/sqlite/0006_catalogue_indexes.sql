-- Indexes for listings and searches over large catalogues: the newest-first order of a cloud
-- (with the asset ID that breaks ties, as cursors do), and folders and public IDs with ASCII
-- letters lowered (`folder:` and `public_id:` searches; exact ones narrow through them too).
DROP INDEX assets_created;
CREATE INDEX assets_created ON assets (cloud, resource_type, delivery_type, created_at, asset_id);
CREATE INDEX assets_cloud_created ON assets (cloud, created_at, asset_id);
CREATE INDEX assets_folder_folded ON assets (cloud, lower(asset_folder));
CREATE INDEX assets_public_id_folded ON assets (cloud, lower(public_id));
