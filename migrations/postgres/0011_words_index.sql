-- Searches for a word without a field (`item_4242`) look for it in the public ID, display
-- name, folder, format and context joined into one text. With the pg_trgm extension (part of
-- PostgreSQL's contrib, trusted: a database owner may add it), a trigram index serves those
-- searches; where it cannot be added, they read every row, as before.
DO $$
BEGIN
    BEGIN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
    EXCEPTION WHEN OTHERS THEN
        RAISE NOTICE 'pg_trgm is not available: searches for a word read every row';
    END;
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm') THEN
        EXECUTE 'CREATE INDEX assets_words ON assets USING gin ((public_id || chr(31) || '
            'display_name || chr(31) || asset_folder || chr(31) || COALESCE(format, '''') || '
            'chr(31) || context) gin_trgm_ops)';
    END IF;
END $$;
