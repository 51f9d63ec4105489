-- The circulation functions never scan a whole table, whatever the
-- statistics say.
--
-- They keep generic plans per connection (0017), made at a connection's
-- first call and kept until the statistics of a table they read change.
-- A plan made while a table's statistics said it was empty stays a table
-- scan as the table grows. That happens when a table is analyzed before
-- its first rows (an `ANALYZE` run after loading the catalogue, or
-- autovacuum on a table emptied): `scripts/bench-library --rate 2000` on
-- a database whose `loans`, `operations`, `holds` and history had been
-- analyzed empty made 340 and 460 loans a second of the 1,000 asked (two
-- runs), loans waiting 8 to 20 s at the 99th percentile, and PostgreSQL spent
-- 1.2 to 2.2 ms of CPU an operation instead of 0.33: the loan batch
-- counted a patron's open loans, looked up keys and found the history's
-- loans by reading whole tables.
--
-- Every look-up in these functions has an index for it (0017 lists how
-- they were written for generic plans), so a table scan is never the
-- plan they were written for. With `enable_seqscan` off the planner
-- takes the index whenever there is one, so the plan no longer depends
-- on when a table was analyzed. The setting holds for the functions
-- they call (`library_record_history`, `library_lock_pending`, the
-- history's trigger) and is restored when they return.
-- The hold functions carry it too (placing, below; cancelling, the
-- expiry pass, and `library_hold_pass_copy`, which those two call as
-- well as the return batch: a plan it made there would be kept for the
-- calls from the return batch).
ALTER FUNCTION library_loan_batch(uuid[], text[], text[], text[], text[], text[],
                                  timestamptz, timestamptz, integer, text[])
    SET enable_seqscan = off;
ALTER FUNCTION library_renew_batch(uuid[], timestamptz, interval, integer)
    SET enable_seqscan = off;
ALTER FUNCTION library_return_batch(uuid[], timestamptz)
    SET enable_seqscan = off;
ALTER FUNCTION library_hold_pass_copy(bigint, text, timestamptz)
    SET enable_seqscan = off;
ALTER FUNCTION library_hold_cancel(uuid, text, timestamptz)
    SET enable_seqscan = off;
ALTER FUNCTION library_hold_expire(timestamptz, integer)
    SET enable_seqscan = off;

-- The recording of renewals and returns, as in 0017 but with its two
-- look-ups of `loans` written so that a table that looked empty when the
-- plan was made cannot lead them off their index. Both `loans` indexes of
-- open loans (by copy, by patron) match `returned_at IS NULL`, and on a
-- table that looks empty every index costs the same, so the planner took
-- the one by copy and read all of it, filtering on the loan or the
-- patron. The loan by id now tests `(returned_at IS NULL) IS TRUE`, which
-- neither partial index can serve, so only the primary key can; the loan
-- by book goes from the title's copies to each copy's open loan, where
-- every index left has the copy or the patron to look up.
CREATE OR REPLACE FUNCTION library_record_requests(
    p_ops uuid[], p_kinds text[], p_loans uuid[], p_isbns text[], p_patrons text[],
    p_branches text[], p_at timestamptz[], p_correlations text[]
) RETURNS TABLE (op uuid, loan_id uuid, isbn text, patron text, due_at timestamptz)
    LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan SET enable_seqscan = off AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH picked AS (
        SELECT u.op, u.kind, u.branch, u.at, u.corr,
               coalesce(by_id.id, by_book.id) AS loan_id,
               coalesce(by_id.isbn, by_book.isbn) AS isbn,
               coalesce(by_id.patron_id, by_book.patron_id) AS patron,
               coalesce(by_id.due_at, by_book.due_at) AS due_at
          FROM unnest(p_ops, p_kinds, p_loans, p_isbns, p_patrons, p_branches, p_at,
                      p_correlations)
               AS u(op, kind, loan, isbn, patron, branch, at, corr)
          LEFT JOIN LATERAL (
               SELECT l.id, c.isbn, l.patron_id, l.due_at
                 FROM loans l JOIN copies c ON c.id = l.copy_id
                WHERE l.id = u.loan AND (l.returned_at IS NULL) IS TRUE
                -- One row at most (the primary key); LIMIT keeps it a
                -- look-up per request, whatever the statistics say.
                LIMIT 1) by_id ON true
          LEFT JOIN LATERAL (
               SELECT l.id, c.isbn, l.patron_id, l.due_at
                 FROM copies c
                CROSS JOIN LATERAL (
                      SELECT ll.id, ll.patron_id, ll.due_at FROM loans ll
                       WHERE ll.copy_id = c.id AND ll.patron_id = u.patron
                         AND ll.returned_at IS NULL
                       LIMIT 1) l
                WHERE u.loan IS NULL AND c.isbn = u.isbn
                ORDER BY l.due_at LIMIT 1) by_book ON true
    ), recorded AS (
        INSERT INTO operations (id, kind, state, loan_id, isbn, patron_id, branch,
                                requested_at, correlation_id)
        SELECT p.op, p.kind, 'pending', p.loan_id, p.isbn, p.patron, p.branch, p.at, p.corr
          FROM picked p WHERE p.loan_id IS NOT NULL
         -- Loan order, as the workers lock loans: no deadlock between them.
         ORDER BY p.loan_id
        RETURNING id
    )
    SELECT p.op, p.loan_id, p.isbn, p.patron, p.due_at
      FROM picked p JOIN recorded r ON r.id = p.op;
END $$;

-- Placing a hold, as in 0010 but with table scans off and its look-up of
-- the patron's open loan of the title going from the title's copies to
-- each copy's open loan, for the same reason.
CREATE OR REPLACE FUNCTION library_hold_place(
    p_id uuid, p_isbn text, p_patron text, p_branch text, p_now timestamptz,
    p_pickup interval
) RETURNS jsonb LANGUAGE plpgsql SET enable_seqscan = off AS $$
DECLARE
    v_blocked text;
    v_title   text;
    v_held    uuid;
BEGIN
    -- The patron's row lock serialises their loans and holds.
    SELECT blocked_reason INTO v_blocked FROM patrons WHERE id = p_patron FOR UPDATE;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('outcome', 'not_found', 'code', 'patron_not_found',
            'patron', p_patron);
    END IF;
    SELECT title INTO v_title FROM titles WHERE isbn = p_isbn;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('outcome', 'not_found', 'code', 'title_not_found',
            'isbn', p_isbn);
    END IF;
    IF v_blocked IS NOT NULL THEN
        RETURN jsonb_build_object('outcome', 'rejected', 'code', 'patron_blocked',
            'patron', p_patron, 'reason', v_blocked);
    END IF;

    PERFORM pg_advisory_xact_lock(1752132708, hashtext(p_isbn));

    IF EXISTS (SELECT 1 FROM copies c
                CROSS JOIN LATERAL (
                      SELECT 1 FROM loans l
                       WHERE l.copy_id = c.id AND l.patron_id = p_patron
                         AND l.returned_at IS NULL
                       LIMIT 1) l
                WHERE c.isbn = p_isbn) THEN
        RETURN jsonb_build_object('outcome', 'rejected', 'code', 'already_on_loan',
            'patron', p_patron, 'title', v_title);
    END IF;
    SELECT id INTO v_held FROM holds
     WHERE isbn = p_isbn AND patron_id = p_patron AND state IN ('waiting', 'ready');
    IF FOUND THEN
        RETURN jsonb_build_object('outcome', 'rejected', 'code', 'already_held',
            'patron', p_patron, 'title', v_title, 'hold_id', v_held);
    END IF;
    IF EXISTS (SELECT 1 FROM copies
                WHERE isbn = p_isbn AND branch = p_branch AND status = 'available') THEN
        RETURN jsonb_build_object('outcome', 'rejected', 'code', 'available_at_branch',
            'title', v_title, 'branch', p_branch);
    END IF;

    INSERT INTO holds (id, isbn, patron_id, pickup_branch, state, placed_at, pickup_period)
    VALUES (p_id, p_isbn, p_patron, p_branch, 'waiting', p_now, p_pickup);
    RETURN jsonb_build_object('outcome', 'placed', 'hold_id', p_id);
END $$;
