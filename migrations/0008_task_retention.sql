-- Retention: the janitor deletes tasks that finished long ago, oldest
-- first, a small batch at a time; this index finds them without a scan.
CREATE INDEX tasks_finished_at ON tasks (finished_at) WHERE finished_at IS NOT NULL;
