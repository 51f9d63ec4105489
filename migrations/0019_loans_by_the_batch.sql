-- A batch of loans in a few statements rather than about ten a loan.
--
-- `library_loan_batch` called `library_loan` once per request, and that
-- ran each of its look-ups as a statement of its own: the idempotency key,
-- the patron (locked), the title, the patron's open loans, the patron's
-- hold on the title (locked), the copy, then the loan's row, the copy's
-- status and the operation's row, each through `library_settle`, and the
-- batch's history after. Profiled under the library benchmark, starting
-- and ending those statements (`ExecutorStart`, `ExecutorEnd`) was about a
-- fifth of PostgreSQL's time, and `library_loan` alone took 310 µs a call.
--
-- Now, for the whole batch:
--   1. one statement locks the batch's patrons, in the order of their ids
--      (so two batches never wait for each other in a circle);
--   2. one statement reads everything else a request needs, per request:
--      the first answer under its key, the patron, the title, the patron's
--      open loans and the patron's open hold on the title (locked). It
--      runs after the locks are held, so it sees every loan committed by a
--      batch that held a patron before this one;
--   3. per loan, one statement takes a copy (`UPDATE … RETURNING`): the
--      hold's copy from the shelf, or an available one (SKIP LOCKED), as
--      before; a request that finds none reads the earliest due date;
--   4. one statement writes the loans, one the operations, and
--      `library_record_history` their history, as for renewals and returns.
--
-- The rules are those of `library_loan` (0010), applied in the same order
-- (by patron, then request), with what the batch did before a request
-- counted for it: its earlier loans count toward the patron's limit and
-- make the earliest due date, a hold it fulfilled is no longer open, and
-- a key it settled answers the same key again as a replay.
-- `library_loan` itself is dropped: nothing else called it, and the rules
-- live in one place.

CREATE OR REPLACE FUNCTION library_loan_batch(
    p_ops uuid[], p_keys text[], p_fingerprints text[], p_isbns text[], p_patrons text[],
    p_branches text[], p_now timestamptz, p_due timestamptz, p_max_loans integer,
    p_correlations text[]
) RETURNS TABLE (op uuid, outcome jsonb) LANGUAGE plpgsql
    SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    r           record;
    v_copy      bigint;
    v_barcode   text;
    v_branch    text;
    v_earliest  timestamptz;
    v_open      integer;
    v_at        integer;
    v_has_hold  boolean;
    v_state     text;
    v_reason    text;
    -- The patron of the requests at hand, and the loans made for them so far.
    v_patron    text;
    v_made      integer := 0;
    -- Titles lent and holds fulfilled by this batch.
    v_l_isbns   text[] := '{}';
    v_holds     uuid[] := '{}';
    -- Operations recorded (loans and refusals by a rule), written at the
    -- end; a later request under a key recorded here is answered from here.
    -- A loan made has its copy (`v_o_copies`), a refusal none.
    v_o_ids     uuid[] := '{}';
    v_o_states  text[] := '{}';
    v_o_keys    text[] := '{}';
    v_o_fps     text[] := '{}';
    v_o_loans   uuid[] := '{}';
    v_o_copies  bigint[] := '{}';
    v_o_isbns   text[] := '{}';
    v_o_patrons text[] := '{}';
    v_o_branches text[] := '{}';
    v_o_reasons text[] := '{}';
    v_o_outcomes jsonb[] := '{}';
    v_o_corrs   text[] := '{}';
BEGIN
    -- 1. Locking the patrons serialises the loans of one patron, so the
    -- limit holds under races.
    PERFORM 1
       FROM (SELECT DISTINCT x.id FROM unnest(p_patrons) AS x(id) ORDER BY x.id) AS u
      CROSS JOIN LATERAL (SELECT id FROM patrons WHERE id = u.id FOR UPDATE) AS p;

    -- 2. Every look-up of every request. Each is found through an index
    -- led by the request's own value, one request at a time (LATERAL).
    FOR r IN
        SELECT u.i, u.op, u.key, u.fp, u.isbn, u.patron, u.branch, u.corr,
               prior.found AS has_prior, prior.fingerprint AS prior_fp,
               prior.outcome AS prior_outcome,
               pa.found AS patron_found, pa.blocked_reason,
               ti.found AS title_found, ti.title,
               lo.n AS open_loans,
               h.id AS hold_id, h.state AS hold_state, h.copy_id AS hold_copy,
               h.pickup_branch
          FROM unnest(p_ops, p_keys, p_fingerprints, p_isbns, p_patrons, p_branches,
                      p_correlations) WITH ORDINALITY
               AS u(op, key, fp, isbn, patron, branch, corr, i)
          LEFT JOIN LATERAL (
               SELECT true AS found, o.fingerprint, o.outcome FROM operations o
                WHERE o.idempotency_key = u.key LIMIT 1) prior ON true
          LEFT JOIN LATERAL (
               SELECT true AS found, p.blocked_reason FROM patrons p
                WHERE p.id = u.patron LIMIT 1) pa ON true
          LEFT JOIN LATERAL (
               SELECT true AS found, t.title FROM titles t
                WHERE t.isbn = u.isbn LIMIT 1) ti ON true
          LEFT JOIN LATERAL (
               SELECT count(*)::integer AS n FROM loans l
                WHERE l.patron_id = u.patron AND l.returned_at IS NULL) lo ON true
          LEFT JOIN LATERAL (
               SELECT hh.id, hh.state, hh.copy_id, hh.pickup_branch FROM holds hh
                WHERE hh.isbn = u.isbn AND hh.patron_id = u.patron
                  AND hh.state IN ('waiting', 'ready')
                FOR UPDATE) h ON true
         ORDER BY u.patron, u.i
    LOOP
        op := r.op;
        IF r.patron IS DISTINCT FROM v_patron THEN
            v_patron := r.patron;
            v_made := 0;
        END IF;

        -- A retry with the same key gets the first answer, never a second loan.
        v_at := array_position(v_o_keys, r.key);
        IF r.has_prior OR v_at IS NOT NULL THEN
            IF (CASE WHEN r.has_prior THEN r.prior_fp ELSE v_o_fps[v_at] END)
               IS DISTINCT FROM r.fp THEN
                outcome := jsonb_build_object('outcome', 'rejected',
                    'code', 'idempotency_key_reused');
            ELSE
                outcome := (CASE WHEN r.has_prior THEN r.prior_outcome
                                 ELSE v_o_outcomes[v_at] END)
                           || jsonb_build_object('replayed', true);
            END IF;
            RETURN NEXT;
            CONTINUE;
        END IF;

        -- Unknown patrons and titles are bad input: answered, not recorded.
        IF r.patron_found IS NULL THEN
            outcome := jsonb_build_object('outcome', 'not_found', 'code', 'patron_not_found',
                'patron', r.patron);
            RETURN NEXT;
            CONTINUE;
        END IF;
        IF r.title_found IS NULL THEN
            outcome := jsonb_build_object('outcome', 'not_found', 'code', 'title_not_found',
                'isbn', r.isbn);
            RETURN NEXT;
            CONTINUE;
        END IF;

        v_copy := NULL;
        v_reason := NULL;
        v_open := r.open_loans + v_made;
        v_has_hold := r.hold_id IS NOT NULL AND r.hold_id <> ALL(v_holds);
        IF r.blocked_reason IS NOT NULL THEN
            v_reason := 'patron_blocked';
            outcome := jsonb_build_object('outcome', 'rejected', 'code', v_reason,
                'patron', r.patron, 'reason', r.blocked_reason);
        ELSIF v_open >= p_max_loans THEN
            v_reason := 'loan_limit_reached';
            outcome := jsonb_build_object('outcome', 'rejected', 'code', v_reason,
                'patron', r.patron, 'open_loans', v_open, 'max_loans', p_max_loans);
        ELSIF v_has_hold AND r.hold_state = 'ready' THEN
            -- 3. The copy on the shelf for this patron, lent at the pickup branch.
            UPDATE copies SET status = 'on_loan' WHERE id = r.hold_copy
            RETURNING id, barcode INTO v_copy, v_barcode;
            v_branch := r.pickup_branch;
        ELSE
            -- An available copy, from the requested branch if it has one.
            -- SKIP LOCKED: a copy another loan is taking right now is not
            -- available. Copies this batch took are on loan already.
            UPDATE copies SET status = 'on_loan'
             WHERE id = (SELECT c.id FROM copies c
                          WHERE c.isbn = r.isbn AND c.status = 'available'
                          ORDER BY (c.branch = r.branch) DESC, c.id
                          LIMIT 1 FOR UPDATE SKIP LOCKED)
            RETURNING id, branch, barcode INTO v_copy, v_branch, v_barcode;
            IF v_copy IS NULL THEN
                SELECT min(l.due_at) INTO v_earliest
                  FROM loans l JOIN copies c ON c.id = l.copy_id
                 WHERE c.isbn = r.isbn AND l.returned_at IS NULL;
                -- This batch's loans are written at its end, all due at p_due.
                IF r.isbn = ANY(v_l_isbns) THEN
                    v_earliest := least(v_earliest, p_due);
                END IF;
                v_reason := 'not_available';
                outcome := jsonb_build_object('outcome', 'rejected', 'code', v_reason,
                    'title', r.title, 'earliest_due_at', v_earliest);
            END IF;
        END IF;

        IF v_copy IS NULL THEN
            v_state := 'rejected';
            v_branch := r.branch;
        ELSE
            v_state := 'applied';
            IF v_has_hold THEN
                UPDATE holds SET state = 'fulfilled', copy_id = v_copy, loan_id = r.op,
                                 closed_at = p_now
                 WHERE id = r.hold_id;
                v_holds := v_holds || r.hold_id;
            END IF;
            outcome := jsonb_build_object('outcome', 'loaned', 'loan', jsonb_build_object(
                'id', r.op, 'isbn', r.isbn, 'title', r.title, 'patron', r.patron,
                'copy', v_barcode, 'branch', v_branch, 'loaned_at', p_now,
                'due_at', p_due, 'renewals', 0)
                || CASE WHEN v_has_hold THEN jsonb_build_object('fulfilled_hold', r.hold_id)
                        ELSE '{}'::jsonb END);
            v_made := v_made + 1;
            v_l_isbns := v_l_isbns || r.isbn;
        END IF;

        v_o_ids := v_o_ids || r.op;
        v_o_states := v_o_states || v_state;
        v_o_keys := v_o_keys || r.key;
        v_o_fps := v_o_fps || r.fp;
        v_o_loans := v_o_loans || (CASE WHEN v_copy IS NULL THEN NULL ELSE r.op END);
        v_o_copies := v_o_copies || v_copy;
        v_o_isbns := v_o_isbns || r.isbn;
        v_o_patrons := v_o_patrons || r.patron;
        v_o_branches := v_o_branches || v_branch;
        v_o_reasons := v_o_reasons || v_reason;
        v_o_outcomes := v_o_outcomes || outcome;
        v_o_corrs := v_o_corrs || r.corr;
        RETURN NEXT;
    END LOOP;

    -- 4. The batch's rows, a statement each.
    IF cardinality(v_o_ids) > 0 THEN
        INSERT INTO loans (id, copy_id, patron_id, branch, loaned_at, due_at)
        SELECT l.id, l.copy, l.patron, l.branch, p_now, p_due
          FROM unnest(v_o_ids, v_o_copies, v_o_patrons, v_o_branches)
               AS l(id, copy, patron, branch)
         WHERE l.copy IS NOT NULL;
        INSERT INTO operations (id, kind, state, idempotency_key, fingerprint, loan_id, isbn,
                                patron_id, branch, reason, outcome, correlation_id,
                                requested_at, settled_at)
        SELECT o.id, 'loan', o.state, o.key, o.fp, o.loan, o.isbn, o.patron, o.branch,
               o.reason, o.outcome, o.corr, p_now, p_now
          FROM unnest(v_o_ids, v_o_states, v_o_keys, v_o_fps, v_o_loans, v_o_isbns,
                      v_o_patrons, v_o_branches, v_o_reasons, v_o_outcomes, v_o_corrs)
               AS o(id, state, key, fp, loan, isbn, patron, branch, reason, outcome, corr);
        -- The history, as for renewals and returns: one row for each
        -- operation recorded, read back from the rows just written.
        PERFORM library_record_history(v_o_ids);
    END IF;
END $$;

DROP FUNCTION library_loan(uuid, text, text, text, text, text, timestamptz, timestamptz,
                           integer, text);
