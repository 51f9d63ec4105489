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
