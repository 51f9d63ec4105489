-- Catalogue and patron administration (issue 12, section 1).
--
-- Only additions, safe on a database that already holds the demo seed:
-- copies may be withdrawn (kept with their history, never lent again);
-- patrons get an optional e-mail and may be blocked with a reason (NULL
-- when not blocked); generated barcodes come from a sequence. The loan and
-- renewal functions are replaced in place (same signatures) to refuse a
-- blocked patron with the code `patron_blocked`; its message is written in
-- Rust (core/src/library/outcome.rs).

ALTER TABLE copies DROP CONSTRAINT IF EXISTS copies_status_check;
ALTER TABLE copies ADD CONSTRAINT copies_status_check
    CHECK (status IN ('available', 'on_loan', 'withdrawn'));

ALTER TABLE patrons ADD COLUMN IF NOT EXISTS email text;
ALTER TABLE patrons ADD COLUMN IF NOT EXISTS blocked_reason text;
ALTER TABLE patrons ADD COLUMN IF NOT EXISTS blocked_at timestamptz;

-- Patrons are listed by id (keyset paging) and found by name.
CREATE INDEX IF NOT EXISTS patrons_folded_name_trgm
    ON patrons USING gin (library_fold(name) gin_trgm_ops);

CREATE SEQUENCE IF NOT EXISTS copy_barcodes;

-- Lends a copy, as before, but refuses a blocked patron (recorded, like
-- the other refusals of a rule).
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

    INSERT INTO loans (id, copy_id, patron_id, branch, loaned_at, due_at)
    VALUES (v_loan, v_copy.id, p_patron, v_copy.branch, p_now, p_due);
    UPDATE copies SET status = 'on_loan' WHERE id = v_copy.id;
    v_outcome := jsonb_build_object('outcome', 'loaned', 'loan', jsonb_build_object(
        'id', v_loan, 'isbn', p_isbn, 'title', v_title, 'patron', p_patron,
        'copy', v_copy.barcode, 'branch', v_copy.branch, 'loaned_at', p_now,
        'due_at', p_due, 'renewals', 0));
    RETURN library_settle(p_op, 'loan', 'applied', NULL, v_outcome, p_key, p_fingerprint,
        v_loan, v_copy.id, p_isbn, p_patron, v_copy.branch, p_now, p_correlation);
END $$;

-- Settles a pending renewal, as before, but refuses it while the patron is
-- blocked.
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

