-- Flat as data grows: the dashboard's figures are kept as work flows, and
-- title search stops after `limit` rows (issue 14).
--
-- Counters without a hot row. A single counter row per state would be
-- updated by every task transition, and at thousands of transitions a
-- second every transaction would queue on its lock. Instead a statement-
-- level trigger (one call per statement, however many rows it touched)
-- appends the net change per state to a delta table: appends never wait on
-- each other. `fold_counters()` (run every second by the workers) moves the
-- deltas into a small folded table in one transaction; a reader adds the
-- folded rows and the deltas not yet folded, in one statement, so it sees
-- an exact figure whatever the fold is doing. Nothing in Rust writes these
-- tables: any statement that inserts, updates or deletes tasks (in any
-- order of states, one row or a batch) is counted.
--
-- Safe on a database with data: the triggers are created and the current
-- counts taken in the migration's one transaction; creating a trigger locks
-- `tasks` against writes until that transaction commits, so no change falls
-- between the count and the first delta.

CREATE TABLE task_state_counts (
    state text PRIMARY KEY,
    n     bigint NOT NULL
);

-- Append-only between folds; no index (a reader sums it whole, and it holds
-- about one fold interval of changes).
CREATE TABLE task_state_deltas (
    state text   NOT NULL,
    n     bigint NOT NULL
);
-- Emptied every second: vacuum it often so its scans stay short.
ALTER TABLE task_state_deltas SET (autovacuum_vacuum_scale_factor = 0,
                                   autovacuum_vacuum_threshold = 5000,
                                   autovacuum_vacuum_cost_delay = 0);

CREATE FUNCTION task_counts_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_state_deltas (state, n)
    SELECT state, count(*) FROM new_rows GROUP BY state;
    RETURN NULL;
END $$;

-- A row whose state did not change (a heartbeat, a retry noted while
-- queued) nets to zero and writes nothing.
CREATE FUNCTION task_counts_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_state_deltas (state, n)
    SELECT state, sum(n) FROM (
        SELECT state, 1 AS n FROM new_rows
        UNION ALL
        SELECT state, -1 FROM old_rows
    ) c GROUP BY state HAVING sum(n) <> 0;
    RETURN NULL;
END $$;

CREATE FUNCTION task_counts_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_state_deltas (state, n)
    SELECT state, -count(*) FROM old_rows GROUP BY state;
    RETURN NULL;
END $$;

CREATE FUNCTION task_counts_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM task_state_deltas;
    DELETE FROM task_state_counts;
    RETURN NULL;
END $$;

-- One trigger per event: PostgreSQL allows transition tables only on
-- triggers of a single event.
CREATE TRIGGER task_counts_insert AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_counts_inserted();
CREATE TRIGGER task_counts_update AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_counts_updated();
CREATE TRIGGER task_counts_delete AFTER DELETE ON tasks
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_counts_deleted();
CREATE TRIGGER task_counts_truncate AFTER TRUNCATE ON tasks
    FOR EACH STATEMENT EXECUTE FUNCTION task_counts_truncated();

INSERT INTO task_state_counts (state, n)
SELECT state, count(*) FROM tasks GROUP BY state;

-- Circulation per minute and branch, kept the same way: the history is
-- append-only, so only inserts are counted. Minutes are calendar minutes
-- (UTC). One row per minute and branch, a column per kind and outcome, so
-- a day's window is a few thousand narrow rows.
CREATE TABLE circulation_minutes (
    minute           timestamptz NOT NULL,
    branch           text        NOT NULL,
    loan_applied     integer     NOT NULL DEFAULT 0,
    loan_rejected    integer     NOT NULL DEFAULT 0,
    renewal_applied  integer     NOT NULL DEFAULT 0,
    renewal_rejected integer     NOT NULL DEFAULT 0,
    return_applied   integer     NOT NULL DEFAULT 0,
    return_rejected  integer     NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, branch)
);

CREATE TABLE circulation_minute_deltas (LIKE circulation_minutes INCLUDING DEFAULTS);
ALTER TABLE circulation_minute_deltas SET (autovacuum_vacuum_scale_factor = 0,
                                           autovacuum_vacuum_threshold = 5000,
                                           autovacuum_vacuum_cost_delay = 0);

CREATE FUNCTION circulation_minutes_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO circulation_minute_deltas
    SELECT date_trunc('minute', at), branch,
           count(*) FILTER (WHERE kind = 'loan' AND outcome = 'applied'),
           count(*) FILTER (WHERE kind = 'loan' AND outcome = 'rejected'),
           count(*) FILTER (WHERE kind = 'renewal' AND outcome = 'applied'),
           count(*) FILTER (WHERE kind = 'renewal' AND outcome = 'rejected'),
           count(*) FILTER (WHERE kind = 'return' AND outcome = 'applied'),
           count(*) FILTER (WHERE kind = 'return' AND outcome = 'rejected')
      FROM new_rows GROUP BY 1, 2;
    RETURN NULL;
END $$;

CREATE TRIGGER circulation_minutes_insert AFTER INSERT ON circulation_history
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION circulation_minutes_inserted();

INSERT INTO circulation_minutes
SELECT date_trunc('minute', at), branch,
       count(*) FILTER (WHERE kind = 'loan' AND outcome = 'applied'),
       count(*) FILTER (WHERE kind = 'loan' AND outcome = 'rejected'),
       count(*) FILTER (WHERE kind = 'renewal' AND outcome = 'applied'),
       count(*) FILTER (WHERE kind = 'renewal' AND outcome = 'rejected'),
       count(*) FILTER (WHERE kind = 'return' AND outcome = 'applied'),
       count(*) FILTER (WHERE kind = 'return' AND outcome = 'rejected')
  FROM circulation_history GROUP BY 1, 2;

-- Moves every visible delta into the folded tables; returns how many delta
-- rows it moved. Concurrent folds are harmless (a delta row is deleted, and
-- so added, once) but pointless, so a fold that finds another running
-- returns at once. Deltas committed while it runs wait for the next fold.
CREATE FUNCTION fold_counters() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_tasks   bigint;
    v_minutes bigint;
BEGIN
    -- Arbitrary constant: the advisory lock of the fold.
    IF NOT pg_try_advisory_xact_lock(7020393213029217) THEN
        RETURN 0;
    END IF;
    WITH moved AS (DELETE FROM task_state_deltas RETURNING state, n),
         summed AS (SELECT state, sum(n)::bigint AS n, count(*) AS rows FROM moved GROUP BY state),
         folded AS (
            INSERT INTO task_state_counts (state, n) SELECT state, n FROM summed
            ON CONFLICT (state) DO UPDATE SET n = task_state_counts.n + excluded.n)
    SELECT coalesce(sum(rows), 0) INTO v_tasks FROM summed;
    WITH moved AS (DELETE FROM circulation_minute_deltas RETURNING *),
         summed AS (SELECT minute, branch, sum(loan_applied)::int AS la,
                           sum(loan_rejected)::int AS lr, sum(renewal_applied)::int AS na,
                           sum(renewal_rejected)::int AS nr, sum(return_applied)::int AS ra,
                           sum(return_rejected)::int AS rr, count(*) AS rows
                      FROM moved GROUP BY 1, 2),
         folded AS (
            INSERT INTO circulation_minutes AS m
            SELECT minute, branch, la, lr, na, nr, ra, rr FROM summed
            ON CONFLICT (minute, branch) DO UPDATE SET
                loan_applied = m.loan_applied + excluded.loan_applied,
                loan_rejected = m.loan_rejected + excluded.loan_rejected,
                renewal_applied = m.renewal_applied + excluded.renewal_applied,
                renewal_rejected = m.renewal_rejected + excluded.renewal_rejected,
                return_applied = m.return_applied + excluded.return_applied,
                return_rejected = m.return_rejected + excluded.return_rejected)
    SELECT coalesce(sum(rows), 0) INTO v_minutes FROM summed;
    RETURN v_tasks + v_minutes;
END $$;

-- Task lists filtered by action and state at once: the state-only and
-- action-only indexes would walk every task of the action (or state) to
-- find a rare pair, or none; this one goes straight to the pair, newest
-- first, and pages by (created_at, id).
CREATE INDEX tasks_by_action_state ON tasks (action, state, created_at DESC, id DESC);

-- Title search. The folded title (lower case, accents removed) is stored,
-- so a search compares a plain column instead of folding every title it
-- looks at, and the planner has statistics for it (a finer histogram, to
-- tell a word in half the catalogue from one in a few titles). Its trigram
-- index replaces the one on the expression; a btree finds exact titles.
ALTER TABLE titles ADD COLUMN title_folded text
    GENERATED ALWAYS AS (library_fold(title)) STORED;
ALTER TABLE titles ALTER COLUMN title_folded SET STATISTICS 1000;
CREATE INDEX titles_title_folded_trgm ON titles USING gin (title_folded gin_trgm_ops);
CREATE INDEX titles_title_folded ON titles (title_folded);
DROP INDEX titles_folded_trgm;
ANALYZE titles;
