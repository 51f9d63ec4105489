-- Holds with a pickup shelf (issue 12, section 2).
--
-- A patron who finds no copy at their branch places a hold on the title.
-- Holds of a title are served first come, first served (`queued`): a
-- returned copy goes to the first waiting hold, is put on the hold shelf
-- (`on_hold_shelf`) at that hold's pickup branch, and is lent only to that
-- patron until the pickup deadline; a pickup that expires passes the copy
-- on to the next hold, or back to `available`.
--
-- Safe on a database that already holds data: a new table, a wider CHECK
-- on copies, and the loan, renewal and return functions replaced in place
-- (same signatures, so the batch functions of 0003 call the new ones).
--
-- Locking. Every change to a title's queue takes an advisory lock on the
-- title (space 1752132708, 'hold' in ASCII; key hashtext(isbn)): placing a
-- hold takes it exclusively, and everything that frees a copy (a return, a
-- cancelled or expired pickup) takes it shared. So a placement that found
-- no copy available is seen by a return that commits after it, and a
-- return that put a copy back is seen by a placement after it: a hold
-- never waits while the copy it needed sat down on the shelf. Frees do not
-- wait for one another. The waiting hold a freed copy goes to is locked
-- (FOR UPDATE, not SKIP LOCKED: skipping it would skip the queue).

ALTER TABLE copies DROP CONSTRAINT IF EXISTS copies_status_check;
ALTER TABLE copies ADD CONSTRAINT copies_status_check
    CHECK (status IN ('available', 'on_loan', 'withdrawn', 'on_hold_shelf'));

CREATE TABLE holds (
    id            uuid PRIMARY KEY,
    isbn          text NOT NULL REFERENCES titles,
    patron_id     text NOT NULL REFERENCES patrons,
    -- Checked against the configuration, like loans' branches.
    pickup_branch text NOT NULL,
    -- The queue's order. Taken under the title's exclusive lock, so it is
    -- also the order in which placements committed.
    queued        bigserial NOT NULL,
    state         text NOT NULL
        CHECK (state IN ('waiting', 'ready', 'fulfilled', 'cancelled', 'expired')),
    placed_at     timestamptz NOT NULL,
    -- How long the copy waits on the shelf once it is ready: the setting in
    -- force when the hold was placed (BIBLIOMQ_HOLD_PICKUP).
    pickup_period interval NOT NULL CHECK (pickup_period > interval '0'),
    -- The copy on the shelf (ready), or the one lent (fulfilled).
    copy_id       bigint REFERENCES copies,
    ready_at      timestamptz,
    pickup_by     timestamptz,
    loan_id       uuid,
    closed_at     timestamptz,
    CHECK (state <> 'ready' OR (copy_id IS NOT NULL AND pickup_by IS NOT NULL))
);
-- One open hold per patron and title; also the loan's one look-up.
CREATE UNIQUE INDEX holds_open_per_patron_and_title ON holds (isbn, patron_id)
    WHERE state IN ('waiting', 'ready');
-- The queue of a title.
CREATE INDEX holds_waiting ON holds (isbn, queued) WHERE state = 'waiting';
-- Never one shelf copy for two holds.
CREATE UNIQUE INDEX holds_one_per_shelf_copy ON holds (copy_id) WHERE state = 'ready';
-- What the expiry job looks for.
CREATE INDEX holds_ready_by_deadline ON holds (pickup_by) WHERE state = 'ready';
CREATE INDEX holds_by_patron ON holds (patron_id, queued);

-- Gives a freed copy to the first waiting hold of its title (on the hold
-- shelf of that hold's pickup branch), or makes it available. The caller
-- holds the title's advisory lock (shared). Returns the hold made ready,
-- or NULL.
CREATE FUNCTION library_hold_pass_copy(p_copy bigint, p_isbn text, p_now timestamptz)
    RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_next    record;
    v_barcode text;
BEGIN
    SELECT id, patron_id, pickup_branch, pickup_period INTO v_next FROM holds
     WHERE isbn = p_isbn AND state = 'waiting'
     ORDER BY queued LIMIT 1 FOR UPDATE;
    IF NOT FOUND THEN
        UPDATE copies SET status = 'available' WHERE id = p_copy;
        RETURN NULL;
    END IF;
    UPDATE copies SET status = 'on_hold_shelf' WHERE id = p_copy RETURNING barcode INTO v_barcode;
    UPDATE holds SET state = 'ready', copy_id = p_copy, ready_at = p_now,
                     pickup_by = p_now + v_next.pickup_period
     WHERE id = v_next.id;
    RETURN jsonb_build_object('hold_id', v_next.id, 'isbn', p_isbn, 'patron', v_next.patron_id,
        'pickup_branch', v_next.pickup_branch, 'copy', v_barcode,
        'pickup_by', p_now + v_next.pickup_period);
END $$;

-- Places a hold. Answers `placed` with the hold's id, or a refusal code
-- with its data (the messages are written in Rust).
CREATE FUNCTION library_hold_place(
    p_id uuid, p_isbn text, p_patron text, p_branch text, p_now timestamptz,
    p_pickup interval
) RETURNS jsonb LANGUAGE plpgsql AS $$
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

    IF EXISTS (SELECT 1 FROM loans l JOIN copies c ON c.id = l.copy_id
                WHERE l.patron_id = p_patron AND l.returned_at IS NULL AND c.isbn = p_isbn) THEN
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

-- Cancels a hold; `p_patron`, when given, must be the hold's patron. A
-- hold cancelled already answers `cancelled` again (`already`); a copy on
-- the shelf for it passes to the next hold (`passed`).
CREATE FUNCTION library_hold_cancel(p_id uuid, p_patron text, p_now timestamptz)
    RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_hold   record;
    v_passed jsonb;
BEGIN
    SELECT isbn, patron_id INTO v_hold FROM holds WHERE id = p_id;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('outcome', 'not_found', 'code', 'hold_not_found',
            'hold_id', p_id);
    END IF;
    IF p_patron IS NOT NULL AND v_hold.patron_id <> p_patron THEN
        RETURN jsonb_build_object('outcome', 'rejected', 'code', 'not_patrons_hold',
            'hold_id', p_id, 'patron', p_patron);
    END IF;
    PERFORM pg_advisory_xact_lock_shared(1752132708, hashtext(v_hold.isbn));
    SELECT * INTO v_hold FROM holds WHERE id = p_id FOR UPDATE;
    IF v_hold.state = 'cancelled' THEN
        RETURN jsonb_build_object('outcome', 'cancelled', 'hold_id', p_id, 'already', true);
    END IF;
    IF v_hold.state IN ('fulfilled', 'expired') THEN
        RETURN jsonb_build_object('outcome', 'rejected', 'code', 'hold_closed',
            'hold_id', p_id, 'state', v_hold.state);
    END IF;
    UPDATE holds SET state = 'cancelled', closed_at = p_now WHERE id = p_id;
    IF v_hold.state = 'ready' THEN
        v_passed := library_hold_pass_copy(v_hold.copy_id, v_hold.isbn, p_now);
    END IF;
    RETURN jsonb_build_object('outcome', 'cancelled', 'hold_id', p_id, 'already', false,
        'passed', v_passed);
END $$;

-- Expires the pickups whose deadline has passed, at most p_limit of them:
-- each copy passes to the next hold or back to available. Several worker
-- processes may run it at once: SKIP LOCKED gives each pickup to one of
-- them, and an expired hold is no longer `ready`, so a second pass skips it.
CREATE FUNCTION library_hold_expire(p_now timestamptz, p_limit integer)
    RETURNS TABLE (expired jsonb, passed jsonb) LANGUAGE plpgsql AS $$
DECLARE
    v_hold    record;
    v_barcode text;
BEGIN
    FOR v_hold IN SELECT h.id, h.isbn, h.patron_id, h.pickup_branch, h.copy_id, h.pickup_by
                    FROM holds h WHERE h.state = 'ready' AND h.pickup_by <= p_now
                   ORDER BY h.pickup_by LIMIT p_limit FOR UPDATE SKIP LOCKED LOOP
        PERFORM pg_advisory_xact_lock_shared(1752132708, hashtext(v_hold.isbn));
        UPDATE holds SET state = 'expired', closed_at = p_now WHERE id = v_hold.id;
        SELECT barcode INTO v_barcode FROM copies WHERE id = v_hold.copy_id;
        expired := jsonb_build_object('hold_id', v_hold.id, 'isbn', v_hold.isbn,
            'patron', v_hold.patron_id, 'pickup_branch', v_hold.pickup_branch,
            'copy', v_barcode, 'pickup_by', v_hold.pickup_by);
        passed := library_hold_pass_copy(v_hold.copy_id, v_hold.isbn, p_now);
        RETURN NEXT;
    END LOOP;
END $$;

-- Lends a copy, as in 0007, and with holds: the patron's own open hold on
-- the title is looked up (one indexed look-up). A copy waiting for them on
-- the hold shelf is the one lent (from the pickup branch); otherwise an
-- available copy, never one on the shelf for someone else. Either way the
-- loan fulfils the hold (`fulfilled_hold`).
CREATE OR REPLACE FUNCTION library_loan(
    p_op uuid, p_key text, p_fingerprint text, p_isbn text, p_patron text, p_branch text,
    p_now timestamptz, p_due timestamptz, p_max_loans integer, p_correlation text
) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_prior    record;
    v_title    text;
    v_open     integer;
    v_copy     record;
    v_loan     uuid := p_op;
    v_earliest timestamptz;
    v_outcome  jsonb;
    v_blocked  text;
    v_hold     record;
    v_has_hold boolean;
BEGIN
    -- A retry with the same key gets the first answer, never a second loan.
    SELECT fingerprint, outcome INTO v_prior FROM operations WHERE idempotency_key = p_key;
    IF FOUND THEN
        IF v_prior.fingerprint IS DISTINCT FROM p_fingerprint THEN
            RETURN jsonb_build_object('outcome', 'rejected', 'code', 'idempotency_key_reused');
        END IF;
        RETURN v_prior.outcome || jsonb_build_object('replayed', true);
    END IF;

    -- Unknown patrons and titles are bad input: answered, not recorded.
    -- Locking the patron serialises the loans of one patron, so the limit
    -- holds under races.
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
        v_outcome := jsonb_build_object('outcome', 'rejected', 'code', 'patron_blocked',
            'patron', p_patron, 'reason', v_blocked);
        RETURN library_settle(p_op, 'loan', 'rejected', 'patron_blocked', v_outcome, p_key,
            p_fingerprint, NULL, NULL, p_isbn, p_patron, p_branch, p_now, p_correlation);
    END IF;

    SELECT count(*) INTO v_open FROM loans WHERE patron_id = p_patron AND returned_at IS NULL;
    IF v_open >= p_max_loans THEN
        v_outcome := jsonb_build_object('outcome', 'rejected', 'code', 'loan_limit_reached',
            'patron', p_patron, 'open_loans', v_open, 'max_loans', p_max_loans);
        RETURN library_settle(p_op, 'loan', 'rejected', 'loan_limit_reached', v_outcome, p_key,
            p_fingerprint, NULL, NULL, p_isbn, p_patron, p_branch, p_now, p_correlation);
    END IF;

    SELECT id, state, copy_id, pickup_branch INTO v_hold FROM holds
     WHERE isbn = p_isbn AND patron_id = p_patron AND state IN ('waiting', 'ready')
     FOR UPDATE;
    v_has_hold := FOUND;

    IF v_has_hold AND v_hold.state = 'ready' THEN
        -- The copy on the shelf for this patron, lent at the pickup branch.
        SELECT id, v_hold.pickup_branch AS branch, barcode INTO v_copy FROM copies
         WHERE id = v_hold.copy_id FOR UPDATE;
    ELSE
        -- An available copy, from the requested branch if it has one. SKIP
        -- LOCKED: a copy another loan is taking right now is not available.
        SELECT id, branch, barcode INTO v_copy FROM copies
         WHERE isbn = p_isbn AND status = 'available'
         ORDER BY (branch = p_branch) DESC, id
         LIMIT 1 FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            SELECT min(l.due_at) INTO v_earliest FROM loans l JOIN copies c ON c.id = l.copy_id
             WHERE c.isbn = p_isbn AND l.returned_at IS NULL;
            v_outcome := jsonb_build_object('outcome', 'rejected', 'code', 'not_available',
                'title', v_title, 'earliest_due_at', v_earliest);
            RETURN library_settle(p_op, 'loan', 'rejected', 'not_available', v_outcome, p_key,
                p_fingerprint, NULL, NULL, p_isbn, p_patron, p_branch, p_now, p_correlation);
        END IF;
    END IF;

    INSERT INTO loans (id, copy_id, patron_id, branch, loaned_at, due_at)
    VALUES (v_loan, v_copy.id, p_patron, v_copy.branch, p_now, p_due);
    UPDATE copies SET status = 'on_loan' WHERE id = v_copy.id;
    IF v_has_hold THEN
        UPDATE holds SET state = 'fulfilled', copy_id = v_copy.id, loan_id = v_loan,
                         closed_at = p_now
         WHERE id = v_hold.id;
    END IF;
    v_outcome := jsonb_build_object('outcome', 'loaned', 'loan', jsonb_build_object(
        'id', v_loan, 'isbn', p_isbn, 'title', v_title, 'patron', p_patron,
        'copy', v_copy.barcode, 'branch', v_copy.branch, 'loaned_at', p_now,
        'due_at', p_due, 'renewals', 0)
        || CASE WHEN v_has_hold THEN jsonb_build_object('fulfilled_hold', v_hold.id)
                ELSE '{}'::jsonb END);
    RETURN library_settle(p_op, 'loan', 'applied', NULL, v_outcome, p_key, p_fingerprint,
        v_loan, v_copy.id, p_isbn, p_patron, v_copy.branch, p_now, p_correlation);
END $$;

-- Settles a pending renewal, as in 0007, and refuses it with `on_hold`
-- while holds wait for the title (`waiting`: how many).
CREATE OR REPLACE FUNCTION library_renew(
    p_op uuid, p_now timestamptz, p_extension interval, p_max_renewals integer
) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_op      record;
    v_loan    record;
    v_reason  text;
    v_data    jsonb := '{}';
    v_due     timestamptz;
    v_outcome jsonb;
    v_blocked text;
    v_waiting bigint;
BEGIN
    SELECT * INTO v_op FROM operations WHERE id = p_op AND kind = 'renewal' FOR UPDATE;
    IF NOT FOUND OR v_op.state <> 'pending' THEN
        RETURN NULL;
    END IF;
    SELECT blocked_reason INTO v_blocked FROM patrons WHERE id = v_op.patron_id;
    SELECT l.*, c.barcode, c.isbn INTO v_loan FROM loans l JOIN copies c ON c.id = l.copy_id
     WHERE l.id = v_op.loan_id FOR UPDATE OF l;
    IF NOT FOUND OR v_loan.returned_at IS NOT NULL THEN
        v_reason := 'not_on_loan';
    ELSIF v_blocked IS NOT NULL THEN
        v_reason := 'patron_blocked';
        v_data := jsonb_build_object('patron', v_op.patron_id, 'reason', v_blocked);
    ELSIF v_loan.due_at < p_now THEN
        v_reason := 'overdue';
        v_data := jsonb_build_object('due_at', v_loan.due_at);
    ELSIF v_loan.renewals >= p_max_renewals THEN
        v_reason := 'renewal_limit_reached';
        v_data := jsonb_build_object('renewals', v_loan.renewals);
    ELSE
        SELECT count(*) INTO v_waiting FROM holds WHERE isbn = v_loan.isbn AND state = 'waiting';
        IF v_waiting > 0 THEN
            v_reason := 'on_hold';
            v_data := jsonb_build_object('waiting', v_waiting);
        END IF;
    END IF;
    IF v_reason IS NOT NULL THEN
        v_outcome := jsonb_build_object('code', v_reason) || v_data;
        RETURN library_settle(p_op, 'renewal', 'rejected', v_reason, v_outcome, NULL, NULL,
            v_op.loan_id, v_loan.copy_id, v_op.isbn, v_op.patron_id, v_op.branch, p_now,
            v_op.correlation_id);
    END IF;
    v_due := v_loan.due_at + p_extension;
    UPDATE loans SET due_at = v_due, renewals = renewals + 1 WHERE id = v_loan.id;
    v_outcome := jsonb_build_object('loan_id', v_loan.id, 'previous_due_at', v_loan.due_at,
        'due_at', v_due, 'renewals', v_loan.renewals + 1, 'copy', v_loan.barcode);
    RETURN library_settle(p_op, 'renewal', 'applied', NULL, v_outcome, NULL, NULL, v_loan.id,
        v_loan.copy_id, v_op.isbn, v_op.patron_id, v_op.branch, p_now, v_op.correlation_id);
END $$;

-- Settles a pending return, as in 0005: closes the loan; the copy goes to
-- the first waiting hold of its title (`hold` in the outcome) or back to
-- available.
CREATE OR REPLACE FUNCTION library_return(p_op uuid, p_now timestamptz) RETURNS jsonb
    LANGUAGE plpgsql AS $$
DECLARE
    v_op      record;
    v_loan    record;
    v_outcome jsonb;
    v_hold    jsonb;
BEGIN
    SELECT * INTO v_op FROM operations WHERE id = p_op AND kind = 'return' FOR UPDATE;
    IF NOT FOUND OR v_op.state <> 'pending' THEN
        RETURN NULL;
    END IF;
    SELECT l.*, c.barcode, c.isbn INTO v_loan FROM loans l JOIN copies c ON c.id = l.copy_id
     WHERE l.id = v_op.loan_id FOR UPDATE OF l;
    IF NOT FOUND OR v_loan.returned_at IS NOT NULL THEN
        v_outcome := jsonb_build_object('code', 'not_on_loan');
        RETURN library_settle(p_op, 'return', 'rejected', 'not_on_loan', v_outcome, NULL, NULL,
            v_op.loan_id, v_loan.copy_id, v_op.isbn, v_op.patron_id, v_op.branch, p_now,
            v_op.correlation_id);
    END IF;
    UPDATE loans SET returned_at = p_now, returned_branch = v_op.branch WHERE id = v_loan.id;
    PERFORM pg_advisory_xact_lock_shared(1752132708, hashtext(v_loan.isbn));
    v_hold := library_hold_pass_copy(v_loan.copy_id, v_loan.isbn, p_now);
    v_outcome := jsonb_build_object('loan_id', v_loan.id, 'copy', v_loan.barcode,
        'returned_at', p_now, 'was_due_at', v_loan.due_at, 'overdue', v_loan.due_at < p_now)
        || CASE WHEN v_hold IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('hold', v_hold) END;
    RETURN library_settle(p_op, 'return', 'applied', NULL, v_outcome, NULL, NULL, v_loan.id,
        v_loan.copy_id, v_op.isbn, v_op.patron_id, v_op.branch, p_now, v_op.correlation_id);
END $$;
