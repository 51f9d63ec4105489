-- The circulation history, written once per batch instead of once per
-- operation. `library_settle` wrote one history row per operation: one
-- INSERT statement each, and with it one firing of the per-minute counting
-- trigger (0013) and one row of `circulation_minute_deltas`. Under load the
-- history insert was the most frequent statement of the circulation path.
--
-- Now `library_settle` records the operation only, and each batch function
-- writes the history of the operations it settled in one INSERT (one
-- trigger firing, one delta row per minute and branch). Every history
-- column is the settled operation's own (`at` is its `settled_at`, `outcome`
-- its `state`, `details` its `outcome`), and `copy_id` its loan's copy, so
-- the rows are the ones `library_settle` wrote, in request order within a
-- batch. The single-item functions (`library_loan`, `library_renew`,
-- `library_return`) write no history now: callers go through the batch
-- functions (a batch of one, if need be), which the workers do.

CREATE OR REPLACE FUNCTION library_settle(
    p_op uuid, p_kind text, p_state text, p_reason text, p_outcome jsonb,
    p_key text, p_fingerprint text, p_loan uuid, p_copy bigint, p_isbn text,
    p_patron text, p_branch text, p_now timestamptz, p_correlation text
) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    IF p_kind = 'loan' THEN
        INSERT INTO operations (id, kind, state, idempotency_key, fingerprint, loan_id, isbn,
                                patron_id, branch, reason, outcome, correlation_id,
                                requested_at, settled_at)
        VALUES (p_op, p_kind, p_state, p_key, p_fingerprint, p_loan, p_isbn, p_patron,
                p_branch, p_reason, p_outcome, p_correlation, p_now, p_now);
    ELSE
        UPDATE operations SET state = p_state, reason = p_reason, outcome = p_outcome,
                              settled_at = p_now
         WHERE id = p_op;
    END IF;
    RETURN p_outcome;
END $$;

-- The history rows of `p_ops`, settled operations all, in one statement
-- (none for an empty list: not even the counting trigger runs). PL/pgSQL
-- rather than SQL, so its plan is kept per connection.
--
-- Rows by id are found one by one through the primary key (a LATERAL
-- subquery with LIMIT 1, which the planner cannot turn into a scan of the
-- table), never with `id = ANY(array)`: a plan kept from when the table was
-- small or never analyzed would scan it whole for every batch as it grows
-- (seen: 2.7 ms a batch, for one to ten rows).
CREATE FUNCTION library_record_history(p_ops uuid[]) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    IF cardinality(p_ops) > 0 THEN
        INSERT INTO circulation_history (at, operation_id, kind, outcome, reason, loan_id,
                                         copy_id, isbn, patron_id, branch, details)
        SELECT o.settled_at, o.id, o.kind, o.state, o.reason, o.loan_id, l.copy_id, o.isbn,
               o.patron_id, o.branch, o.outcome
          FROM (SELECT DISTINCT x.id FROM unnest(p_ops) AS x(id)) AS u
         CROSS JOIN LATERAL (SELECT * FROM operations WHERE id = u.id LIMIT 1) AS o
          LEFT JOIN LATERAL (SELECT copy_id FROM loans WHERE id = o.loan_id LIMIT 1) AS l
               ON true
         ORDER BY o.id;
    END IF;
END $$;

-- A loan is settled by this call when its operation row exists afterwards
-- and did not before (a replay, a reused key or an unknown patron or title
-- writes none; a redelivered request finds its row from the first time).
CREATE OR REPLACE FUNCTION library_loan_batch(
    p_ops uuid[], p_keys text[], p_fingerprints text[], p_isbns text[], p_patrons text[],
    p_branches text[], p_now timestamptz, p_due timestamptz, p_max_loans integer,
    p_correlations text[]
) RETURNS TABLE (op uuid, outcome jsonb) LANGUAGE plpgsql AS $$
DECLARE
    i          integer;
    v_existing uuid[];
BEGIN
    SELECT coalesce(array_agg(o.id), '{}') INTO v_existing
      FROM unnest(p_ops) AS u(id)
     CROSS JOIN LATERAL (SELECT id FROM operations WHERE id = u.id LIMIT 1) AS o;
    FOR i IN SELECT s.i FROM generate_subscripts(p_ops, 1) AS s(i)
              ORDER BY p_patrons[s.i], s.i LOOP
        op := p_ops[i];
        outcome := library_loan(p_ops[i], p_keys[i], p_fingerprints[i], p_isbns[i],
            p_patrons[i], p_branches[i], p_now, p_due, p_max_loans, p_correlations[i]);
        RETURN NEXT;
    END LOOP;
    PERFORM library_record_history(ARRAY(
        SELECT u.id FROM unnest(p_ops) AS u(id) WHERE u.id <> ALL(v_existing)));
END $$;

-- Renewals and returns: settled by this call when their function answered
-- (it answers NULL for an operation no longer pending). The operations are
-- found through the primary key, each once, as above.
CREATE OR REPLACE FUNCTION library_renew_batch(
    p_ops uuid[], p_now timestamptz, p_extension interval, p_max_renewals integer
) RETURNS TABLE (op uuid, outcome jsonb) LANGUAGE plpgsql AS $$
DECLARE
    v_op      uuid;
    v_settled uuid[] := '{}';
BEGIN
    FOR v_op IN SELECT o.id
                  FROM (SELECT DISTINCT x.id FROM unnest(p_ops) AS x(id)) AS u
                 CROSS JOIN LATERAL (SELECT id, loan_id FROM operations
                                      WHERE id = u.id LIMIT 1) AS o
                 ORDER BY o.loan_id, o.id LOOP
        op := v_op;
        outcome := library_renew(v_op, p_now, p_extension, p_max_renewals);
        IF outcome IS NOT NULL THEN
            v_settled := v_settled || v_op;
        END IF;
        RETURN NEXT;
    END LOOP;
    PERFORM library_record_history(v_settled);
END $$;

CREATE OR REPLACE FUNCTION library_return_batch(p_ops uuid[], p_now timestamptz)
    RETURNS TABLE (op uuid, outcome jsonb) LANGUAGE plpgsql AS $$
DECLARE
    v_op      uuid;
    v_settled uuid[] := '{}';
BEGIN
    FOR v_op IN SELECT o.id
                  FROM (SELECT DISTINCT x.id FROM unnest(p_ops) AS x(id)) AS u
                 CROSS JOIN LATERAL (SELECT id, loan_id FROM operations
                                      WHERE id = u.id LIMIT 1) AS o
                 ORDER BY o.loan_id, o.id LOOP
        op := v_op;
        outcome := library_return(v_op, p_now);
        IF outcome IS NOT NULL THEN
            v_settled := v_settled || v_op;
        END IF;
        RETURN NEXT;
    END LOOP;
    PERFORM library_record_history(v_settled);
END $$;
