-- Renewals and returns by the batch, as 0019 did for loans.
--
-- `library_renew_batch` and `library_return_batch` called `library_renew`
-- or `library_return` once per operation, and each ran its look-ups one
-- statement at a time: the operation (locked), the patron, the loan and its
-- copy (locked), the holds waiting for the title, then the loan's change
-- and the operation's outcome through `library_settle`. A renewal ran 6
-- statements, a return 7 (with the hold shelf's two).
--
-- Now, for the whole batch:
--   1. one statement locks the batch's pending operations of the kind, in
--      the order of their ids, and one their loans, in the order of the
--      loans (a renewal batch and a return batch naming one loan take it
--      in the same order as everything else they lock);
--   2. one statement reads, per operation, the operation, its loan and
--      copy, and for renewals the patron and the holds waiting for the
--      title. It runs after the locks are held, so what it reads of the
--      locked rows is current;
--   3. per operation, its writes only: a renewal's loan and outcome, a
--      return's loan, the hold shelf (as before, under the title's shared
--      advisory lock) and outcome.
--
-- The rules are those of 0010, applied in the same order (by loan, then
-- operation), with what the batch did before an operation counted for it:
-- a loan renewed earlier in the batch is renewed again from its new due
-- date and count, and a loan returned earlier in the batch is no longer on
-- loan. The single-operation functions and `library_settle` are dropped:
-- nothing else called them, and the rules live in one place.

-- Locks the pending operations of `p_kind` among `p_ops`, in the order of
-- their ids, then their loans, in the order of the loans: step 1 of both
-- batches below. Two statements, so the loans' look-up runs after the
-- operations are held.
CREATE FUNCTION library_lock_pending(p_ops uuid[], p_kind text) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1
       FROM (SELECT DISTINCT x.id FROM unnest(p_ops) AS x(id) ORDER BY x.id) AS u
      CROSS JOIN LATERAL (SELECT o.id FROM operations o
                           WHERE o.id = u.id AND o.kind = p_kind AND o.state = 'pending'
                           FOR UPDATE) AS o;
    PERFORM 1
       FROM (SELECT DISTINCT o.loan_id
               FROM unnest(p_ops) AS x(id)
              CROSS JOIN LATERAL (SELECT oo.loan_id FROM operations oo
                                   WHERE oo.id = x.id AND oo.kind = p_kind
                                     AND oo.state = 'pending' LIMIT 1) AS o
              ORDER BY o.loan_id) AS u
      CROSS JOIN LATERAL (SELECT l.id FROM loans l WHERE l.id = u.loan_id FOR UPDATE) AS l;
END $$;

CREATE OR REPLACE FUNCTION library_renew_batch(
    p_ops uuid[], p_now timestamptz, p_extension interval, p_max_renewals integer
) RETURNS TABLE (op uuid, outcome jsonb) LANGUAGE plpgsql
    SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    r          record;
    -- The loan at hand, and its due date and renewals after this batch's
    -- renewals of it so far.
    v_loan     uuid;
    v_due      timestamptz;
    v_renewals integer;
    v_reason   text;
    v_data     jsonb;
    v_outcome  jsonb;
    v_settled  uuid[] := '{}';
BEGIN
    -- 1. The pending renewals, then their loans.
    PERFORM library_lock_pending(p_ops, 'renewal');

    -- 2. Every operation named, with what its renewal needs.
    FOR r IN
        SELECT o.id, o.kind, o.state, o.loan_id, o.patron_id,
               l.found AS loan_found, l.due_at, l.renewals, l.returned_at, l.barcode,
               p.blocked_reason, h.waiting
          FROM (SELECT DISTINCT x.id FROM unnest(p_ops) AS x(id)) AS u
         CROSS JOIN LATERAL (SELECT oo.id, oo.kind, oo.state, oo.loan_id, oo.patron_id
                               FROM operations oo WHERE oo.id = u.id LIMIT 1) AS o
          LEFT JOIN LATERAL (SELECT true AS found, ll.due_at, ll.renewals, ll.returned_at,
                                    c.barcode, c.isbn
                               FROM loans ll JOIN copies c ON c.id = ll.copy_id
                              WHERE ll.id = o.loan_id LIMIT 1) AS l ON true
          LEFT JOIN LATERAL (SELECT pp.blocked_reason FROM patrons pp
                              WHERE pp.id = o.patron_id LIMIT 1) AS p ON true
          LEFT JOIN LATERAL (SELECT count(*) AS waiting FROM holds hh
                              WHERE hh.isbn = l.isbn AND hh.state = 'waiting') AS h ON true
         ORDER BY o.loan_id, o.id
    LOOP
        op := r.id;
        -- Not a renewal, or settled already (a duplicate): no answer.
        IF r.kind <> 'renewal' OR r.state <> 'pending' THEN
            outcome := NULL;
            RETURN NEXT;
            CONTINUE;
        END IF;
        IF r.loan_id IS DISTINCT FROM v_loan THEN
            v_loan := r.loan_id;
            v_due := r.due_at;
            v_renewals := r.renewals;
        END IF;

        v_reason := NULL;
        v_data := '{}';
        IF r.loan_found IS NULL OR r.returned_at IS NOT NULL THEN
            v_reason := 'not_on_loan';
        ELSIF r.blocked_reason IS NOT NULL THEN
            v_reason := 'patron_blocked';
            v_data := jsonb_build_object('patron', r.patron_id, 'reason', r.blocked_reason);
        ELSIF v_due < p_now THEN
            v_reason := 'overdue';
            v_data := jsonb_build_object('due_at', v_due);
        ELSIF v_renewals >= p_max_renewals THEN
            v_reason := 'renewal_limit_reached';
            v_data := jsonb_build_object('renewals', v_renewals);
        ELSIF r.waiting > 0 THEN
            v_reason := 'on_hold';
            v_data := jsonb_build_object('waiting', r.waiting);
        END IF;

        IF v_reason IS NOT NULL THEN
            v_outcome := jsonb_build_object('code', v_reason) || v_data;
            UPDATE operations SET state = 'rejected', reason = v_reason, outcome = v_outcome,
                                  settled_at = p_now
             WHERE id = r.id;
        ELSE
            v_outcome := jsonb_build_object('loan_id', r.loan_id, 'previous_due_at', v_due,
                'due_at', v_due + p_extension, 'renewals', v_renewals + 1,
                'copy', r.barcode);
            v_due := v_due + p_extension;
            v_renewals := v_renewals + 1;
            UPDATE loans SET due_at = v_due, renewals = v_renewals WHERE id = r.loan_id;
            UPDATE operations SET state = 'applied', reason = NULL, outcome = v_outcome,
                                  settled_at = p_now
             WHERE id = r.id;
        END IF;
        outcome := v_outcome;
        v_settled := v_settled || r.id;
        RETURN NEXT;
    END LOOP;
    PERFORM library_record_history(v_settled);
END $$;

CREATE OR REPLACE FUNCTION library_return_batch(p_ops uuid[], p_now timestamptz)
    RETURNS TABLE (op uuid, outcome jsonb) LANGUAGE plpgsql
    SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    r          record;
    v_hold     jsonb;
    v_outcome  jsonb;
    v_returned uuid[] := '{}';
    v_settled  uuid[] := '{}';
BEGIN
    -- 1. The pending returns, then their loans.
    PERFORM library_lock_pending(p_ops, 'return');

    -- 2. Every operation named, with its loan and copy.
    FOR r IN
        SELECT o.id, o.kind, o.state, o.loan_id, o.branch,
               l.found AS loan_found, l.copy_id, l.due_at, l.returned_at, l.barcode, l.isbn
          FROM (SELECT DISTINCT x.id FROM unnest(p_ops) AS x(id)) AS u
         CROSS JOIN LATERAL (SELECT oo.id, oo.kind, oo.state, oo.loan_id, oo.branch
                               FROM operations oo WHERE oo.id = u.id LIMIT 1) AS o
          LEFT JOIN LATERAL (SELECT true AS found, ll.copy_id, ll.due_at, ll.returned_at,
                                    c.barcode, c.isbn
                               FROM loans ll JOIN copies c ON c.id = ll.copy_id
                              WHERE ll.id = o.loan_id LIMIT 1) AS l ON true
         ORDER BY o.loan_id, o.id
    LOOP
        op := r.id;
        -- Not a return, or settled already (a duplicate): no answer.
        IF r.kind <> 'return' OR r.state <> 'pending' THEN
            outcome := NULL;
            RETURN NEXT;
            CONTINUE;
        END IF;
        IF r.loan_found IS NULL OR r.returned_at IS NOT NULL
           OR r.loan_id = ANY(v_returned) THEN
            v_outcome := jsonb_build_object('code', 'not_on_loan');
            UPDATE operations SET state = 'rejected', reason = 'not_on_loan',
                                  outcome = v_outcome, settled_at = p_now
             WHERE id = r.id;
        ELSE
            UPDATE loans SET returned_at = p_now, returned_branch = r.branch
             WHERE id = r.loan_id;
            -- 3. The copy goes to the first waiting hold, or back on the shelf.
            PERFORM pg_advisory_xact_lock_shared(1752132708, hashtext(r.isbn));
            v_hold := library_hold_pass_copy(r.copy_id, r.isbn, p_now);
            v_outcome := jsonb_build_object('loan_id', r.loan_id, 'copy', r.barcode,
                'returned_at', p_now, 'was_due_at', r.due_at, 'overdue', r.due_at < p_now)
                || CASE WHEN v_hold IS NULL THEN '{}'::jsonb
                        ELSE jsonb_build_object('hold', v_hold) END;
            UPDATE operations SET state = 'applied', reason = NULL, outcome = v_outcome,
                                  settled_at = p_now
             WHERE id = r.id;
            v_returned := v_returned || r.loan_id;
        END IF;
        outcome := v_outcome;
        v_settled := v_settled || r.id;
        RETURN NEXT;
    END LOOP;
    PERFORM library_record_history(v_settled);
END $$;

DROP FUNCTION library_renew(uuid, timestamptz, interval, integer);
DROP FUNCTION library_return(uuid, timestamptz);
DROP FUNCTION library_settle(uuid, text, text, text, jsonb, text, text, uuid, bigint, text,
                             text, text, timestamptz, text);
