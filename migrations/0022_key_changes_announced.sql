-- Every change to a key is announced on the channel `bibliomq_keys`, its
-- payload the key's id, so that each process forgets its cached look-up
-- of that key at once (core/src/auth.rs, `Gate`) instead of keeping it
-- for up to BIBLIOMQ_AUTH_CACHE_MS. A revocation by the API, by
-- `bibliomq-api keys revoke` or by hand in SQL is announced alike. The
-- notification is sent when the transaction commits, and not at all when
-- it rolls back.
CREATE OR REPLACE FUNCTION api_keys_announce() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('bibliomq_keys', coalesce(NEW.id, OLD.id));
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS api_keys_announce ON api_keys;
CREATE TRIGGER api_keys_announce
    AFTER INSERT OR UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION api_keys_announce();
