-- Delayed tasks: a task submitted with `run_at` or `delay_ms` is stored
-- `scheduled` with its `run_at` and not published. A scheduler loop in the
-- workers takes the due ones (`FOR UPDATE SKIP LOCKED`, so several worker
-- processes share the work), publishes them and marks them `queued`.
ALTER TABLE tasks DROP CONSTRAINT tasks_state_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_state_check
    CHECK (state IN ('scheduled', 'queued', 'running', 'succeeded', 'failed', 'dead', 'cancelled'));

ALTER TABLE tasks ADD COLUMN run_at timestamptz;

-- The scheduler's question, "which scheduled tasks are due?", without a scan.
CREATE INDEX tasks_scheduled_run_at ON tasks (run_at) WHERE state = 'scheduled';
