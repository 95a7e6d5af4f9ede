-- Account settings kept as JSON documents, one per (cloud, kind, name): structured metadata
-- fields and rules, named transformations, streaming profiles, triggers, upload mappings.
-- `position` keeps creation order (and an explicit order where the API has one).
CREATE TABLE documents (
    cloud TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    body TEXT NOT NULL,
    position BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (cloud, kind, name)
);
