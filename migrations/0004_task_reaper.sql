-- The reaper (workers/src/reaper.rs) publishes again, once, a task whose
-- message was lost: still `queued` or `running` long after its row last
-- changed, with no worker holding it (a worker holding a task touches
-- `updated_at` now and then). `reaped_at` records that it was done, so it
-- is done once, whichever worker process gets there first.
ALTER TABLE tasks ADD COLUMN reaped_at timestamptz;
