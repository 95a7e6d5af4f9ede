-- Folders created explicitly (folders also exist implicitly through assets' asset_folder).
CREATE TABLE folders (
    cloud TEXT NOT NULL,
    path TEXT NOT NULL,
    external_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (cloud, path)
);

-- Tokens handed out with return_delete_token, valid for a few minutes.
CREATE TABLE delete_tokens (
    token TEXT PRIMARY KEY NOT NULL,
    cloud TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    delivery_type TEXT NOT NULL,
    public_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
