-- Webhook deliveries waiting to be made or tried again. An instance takes one by lease
-- (`holder` until `lease_until`, milliseconds), so each is delivered by one instance at a
-- time, and one left by a stopped process is taken by another (or by the next start); an
-- attempt's outcome is recorded only while its lease holds. The signing secret is not
-- stored: `api_key` names the account whose secret signs it.
CREATE TABLE notification_jobs (
    id TEXT PRIMARY KEY NOT NULL,
    cloud TEXT NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    api_key TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    due_at BIGINT NOT NULL,
    lease_until BIGINT NOT NULL DEFAULT 0,
    holder TEXT NOT NULL DEFAULT '',
    origin TEXT NOT NULL,
    record_id BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX notification_jobs_due ON notification_jobs (due_at);
