-- Group commit for circulation: many operations in one transaction, one
-- commit for the lot. Each item still goes through the same single-item
-- function, so the rules live in one place.
--
-- Items are taken in a fixed order (patron for loans, loan for renewals and
-- returns), so concurrent batches take their row locks in the same order and
-- cannot deadlock on them.

CREATE FUNCTION library_loan_batch(
    p_ops uuid[], p_keys text[], p_fingerprints text[], p_isbns text[], p_patrons text[],
    p_branches text[], p_now timestamptz, p_due timestamptz, p_max_loans integer,
    p_correlations text[]
) RETURNS TABLE (op uuid, outcome jsonb) LANGUAGE plpgsql AS $$
DECLARE
    i integer;
BEGIN
    FOR i IN SELECT s.i FROM generate_subscripts(p_ops, 1) AS s(i)
              ORDER BY p_patrons[s.i], s.i LOOP
        op := p_ops[i];
        outcome := library_loan(p_ops[i], p_keys[i], p_fingerprints[i], p_isbns[i],
            p_patrons[i], p_branches[i], p_now, p_due, p_max_loans, p_correlations[i]);
        RETURN NEXT;
    END LOOP;
END $$;

-- Operations already settled (duplicates) come back with a NULL outcome.
CREATE FUNCTION library_renew_batch(
    p_ops uuid[], p_now timestamptz, p_extension interval, p_max_renewals integer
) RETURNS TABLE (op uuid, outcome jsonb) LANGUAGE plpgsql AS $$
DECLARE
    v_op uuid;
BEGIN
    FOR v_op IN SELECT o.id FROM operations o WHERE o.id = ANY(p_ops)
                 ORDER BY o.loan_id, o.id LOOP
        op := v_op;
        outcome := library_renew(v_op, p_now, p_extension, p_max_renewals);
        RETURN NEXT;
    END LOOP;
END $$;

CREATE FUNCTION library_return_batch(p_ops uuid[], p_now timestamptz)
    RETURNS TABLE (op uuid, outcome jsonb) LANGUAGE plpgsql AS $$
DECLARE
    v_op uuid;
BEGIN
    FOR v_op IN SELECT o.id FROM operations o WHERE o.id = ANY(p_ops)
                 ORDER BY o.loan_id, o.id LOOP
        op := v_op;
        outcome := library_return(v_op, p_now);
        RETURN NEXT;
    END LOOP;
END $$;

-- Records many renewals or returns as `pending` at once, each for the open
-- loan it names (by loan id, or by ISBN and patron). Requests whose loan is
-- not open are left out; the caller finds out why.
CREATE FUNCTION library_request_batch(
    p_ops uuid[], p_kinds text[], p_loans uuid[], p_isbns text[], p_patrons text[],
    p_branches text[], p_at timestamptz[], p_correlations text[]
) RETURNS TABLE (op uuid, loan_id uuid, isbn text, patron text, due_at timestamptz)
    LANGUAGE sql AS $$
    WITH picked AS (
        SELECT u.op, u.kind, u.branch, u.at, u.corr,
               coalesce(by_id.id, by_book.id) AS loan_id,
               coalesce(by_id.isbn, by_book.isbn) AS isbn,
               coalesce(by_id.patron_id, by_book.patron_id) AS patron,
               coalesce(by_id.due_at, by_book.due_at) AS due_at
          FROM unnest(p_ops, p_kinds, p_loans, p_isbns, p_patrons, p_branches, p_at, p_correlations)
               AS u(op, kind, loan, isbn, patron, branch, at, corr)
          LEFT JOIN LATERAL (
               SELECT l.id, c.isbn, l.patron_id, l.due_at
                 FROM loans l JOIN copies c ON c.id = l.copy_id
                WHERE l.id = u.loan AND l.returned_at IS NULL) by_id ON true
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
          -- The foreign key check locks each loan (KEY SHARE); taking them
          -- in loan order, as the workers do, keeps the two from deadlocking.
         ORDER BY p.loan_id
        RETURNING id
    )
    SELECT p.op, p.loan_id, p.isbn, p.patron, p.due_at
      FROM picked p JOIN recorded r ON r.id = p.op
$$;
