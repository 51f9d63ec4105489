-- API keys (README "API keys and roles"). Only the SHA-256 digest of a
-- key's secret is kept; `id` is the key's visible, non-secret part
-- (`bmq_<id>_<secret>`), by which lists and logs name it. Revoked keys stay,
-- so that lists show who had access and when it ended.
CREATE TABLE IF NOT EXISTS api_keys (
    id          text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{12}$'),
    digest      bytea NOT NULL CHECK (length(digest) = 32),
    role        text NOT NULL CHECK (role IN ('admin', 'librarian', 'patron', 'service')),
    branch      text,
    patron      text,
    name        text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CHECK (branch IS NULL OR role = 'librarian'),
    CHECK ((patron IS NOT NULL) = (role = 'patron'))
);
