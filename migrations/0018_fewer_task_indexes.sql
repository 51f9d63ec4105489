-- Fewer index entries for every task (issue 14). Each task row is written
-- twice (the INSERT, then the outcome UPDATE, which changes `state` and so
-- is never heap-only), and each write adds an entry to every index whose
-- predicate the row meets. Before this, that was 11 entries a task; now 8.
--
-- `tasks_by_state` and `tasks_by_action` only served task lists filtered
-- by state alone or by action alone. `tasks_by_action_state` serves those
-- too: a list by state reads, for each action, that pair's newest tasks
-- and merges them (PostgreSQL's Merge Append, each branch stopping after
-- `limit` rows); a list by action does the same over the states
-- (`core/src/tasks/store.rs`, `list`). The actions and states are the
-- code's own, so the branches are known in advance.
--
-- The reaper, which looked for stranded tasks through `tasks_by_state`,
-- gets a partial index of the tasks in flight only: a `queued` row adds
-- one entry when inserted, a finished row none, so the reaper's look-up
-- stays as small as the work in flight however many tasks have finished.
DROP INDEX IF EXISTS tasks_by_state;
DROP INDEX IF EXISTS tasks_by_action;
CREATE INDEX tasks_in_flight ON tasks (updated_at)
    WHERE state IN ('queued', 'running') AND reaped_at IS NULL;
