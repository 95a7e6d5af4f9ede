-- Chunked upload sessions (X-Unique-Upload-Id + Content-Range) and their received parts.
CREATE TABLE upload_sessions (
    session_id TEXT PRIMARY KEY NOT NULL,
    cloud TEXT NOT NULL,
    upload_id TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    identity TEXT NOT NULL,
    total BIGINT,
    public_id TEXT,
    filename TEXT,
    state TEXT NOT NULL,
    state_since BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX upload_sessions_cloud ON upload_sessions (cloud);
CREATE INDEX upload_sessions_updated ON upload_sessions (updated_at);

CREATE TABLE upload_parts (
    session_id TEXT NOT NULL,
    start_at BIGINT NOT NULL,
    end_at BIGINT NOT NULL,
    md5 TEXT NOT NULL,
    file TEXT NOT NULL,
    PRIMARY KEY (session_id, start_at, end_at)
);
