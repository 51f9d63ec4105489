-- Tasks submitted through the API, the ZeroMQ edge or the TCP gateways.
-- The API inserts a row as `queued` before it publishes; workers move it on.
CREATE TABLE tasks (
    id                  uuid PRIMARY KEY,
    action              text        NOT NULL,
    payload             jsonb       NOT NULL,
    state               text        NOT NULL DEFAULT 'queued'
                        CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'dead')),
    attempts            integer     NOT NULL DEFAULT 0,
    correlation_id      text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    finished_at         timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    -- Last error: the reason of a failure, or of the latest retry while queued again.
    error               text,
    -- Small results live here; large ones in object storage (the columns below).
    result              jsonb,
    result_content_type text,
    result_bucket       text,
    result_key          text,
    result_size         bigint,
    result_sha256       text,
    CHECK ((result_key IS NULL) = (result_bucket IS NULL))
);

CREATE INDEX tasks_newest ON tasks (created_at DESC, id DESC);
CREATE INDEX tasks_by_state ON tasks (state, created_at DESC);
CREATE INDEX tasks_by_action ON tasks (action, created_at DESC);
