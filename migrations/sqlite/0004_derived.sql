-- Derived versions recorded by eager transformations (the images themselves are computed
-- from the original when delivered).
CREATE TABLE derived (
    id TEXT PRIMARY KEY NOT NULL,
    cloud TEXT NOT NULL,
    asset_id TEXT NOT NULL,
    transformation TEXT NOT NULL,
    format TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    width BIGINT,
    height BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX derived_by_asset ON derived (asset_id);
