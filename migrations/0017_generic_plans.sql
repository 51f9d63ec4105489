-- The circulation functions keep their plans. PL/pgSQL caches a plan for
-- each of its statements per connection, but with `plan_cache_mode` left
-- at `auto` PostgreSQL plans a statement again at every call whenever the
-- plan for the parameters at hand looks cheaper than the generic one, and
-- for several of these statements it always does. Profiled under the
-- library benchmark, planning (`GetCachedPlan` and the planner below it)
-- was about a third of all of PostgreSQL's time.
--
-- The batch functions, and the API's statement that records renewals and
-- returns as `pending` (now a function of its own, `library_record_requests`,
-- so that it can carry the setting; it was a prepared statement, planned
-- again at every call too), now run with `force_generic_plan`; the setting holds
-- for everything they call (`library_loan`, `library_renew`,
-- `library_return`, `library_settle`, `library_record_history`) and is
-- restored when they return. Their statements were written for generic
-- plans: rows by id are found through the primary key one by one (a
-- LATERAL subquery with LIMIT 1, see 0015), and every other look-up has
-- an index whose leading column is the parameter (a patron's open loans,
-- a title's copies, a patron's hold on a title, an idempotency key).
ALTER FUNCTION library_loan_batch(uuid[], text[], text[], text[], text[], text[],
                                  timestamptz, timestamptz, integer, text[])
    SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION library_renew_batch(uuid[], timestamptz, interval, integer)
    SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION library_return_batch(uuid[], timestamptz)
    SET plan_cache_mode = force_generic_plan;

-- Records renewals and returns as `pending`, each with the open loan it
-- names (by id, or by ISBN and patron), in one statement; returns the
-- recorded ones with their loan. The statement is the API's former
-- prepared statement, unchanged.
CREATE FUNCTION library_record_requests(
    p_ops uuid[], p_kinds text[], p_loans uuid[], p_isbns text[], p_patrons text[],
    p_branches text[], p_at timestamptz[], p_correlations text[]
) RETURNS TABLE (op uuid, loan_id uuid, isbn text, patron text, due_at timestamptz)
    LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
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
                WHERE l.id = u.loan AND l.returned_at IS NULL
                -- One row at most (the primary key); LIMIT keeps it a
                -- look-up per request, whatever the statistics say.
                LIMIT 1) by_id ON true
          LEFT JOIN LATERAL (
               SELECT l.id, c.isbn, l.patron_id, l.due_at
                 FROM loans l JOIN copies c ON c.id = l.copy_id
                WHERE u.loan IS NULL AND l.patron_id = u.patron AND c.isbn = u.isbn
                  AND l.returned_at IS NULL
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
