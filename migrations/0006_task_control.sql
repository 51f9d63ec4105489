-- Task control: cancelling, time limits and idempotent submissions.
--
-- `cancelled` is a final state. A queued task is cancelled at once; a
-- running one gets `cancel_requested_at`, which the worker holding it reads
-- (it polls the rows of the tasks it runs) and then stops the task and
-- records it `cancelled`. A claim of a task whose cancel was requested
-- records it `cancelled` instead of running it.
ALTER TABLE tasks DROP CONSTRAINT tasks_state_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_state_check
    CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'dead', 'cancelled'));

ALTER TABLE tasks
    ADD COLUMN cancel_requested_at timestamptz,
    -- Why a task did not succeed, as a stable code (`timeout`, `cancelled`, ...).
    ADD COLUMN error_code text,
    -- The time limit the client asked for, if any (the worker also applies
    -- the action's own limit and the configured maximum).
    ADD COLUMN timeout_ms bigint,
    -- The client's Idempotency-Key and what the request was, so a key
    -- reused for a different request is caught. Kept in the task's own row:
    -- the key lives exactly as long as its task.
    ADD COLUMN idempotency_key text,
    ADD COLUMN fingerprint text;

-- Ten retries racing with one key make one task: the loser's insert does
-- nothing and it reads the winner's row.
CREATE UNIQUE INDEX tasks_idempotency_key ON tasks (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
