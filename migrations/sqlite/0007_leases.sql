-- Work that one instance at a time does when several share the database (the sweep of
-- stored files no record refers to): who holds it, and until when.
CREATE TABLE leases (
    name TEXT PRIMARY KEY NOT NULL,
    holder TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
