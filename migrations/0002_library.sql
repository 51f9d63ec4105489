-- Library circulation: branches, titles, copies, patrons, loans, the
-- operations clients follow, and an append-only history.

CREATE EXTENSION IF NOT EXISTS unaccent;
CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- unaccent() is only STABLE (it reads a dictionary), so it cannot back an
-- index; this wrapper pins the dictionary and may.
CREATE FUNCTION library_fold(text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
    AS $$ SELECT lower(public.unaccent('public.unaccent'::regdictionary, $1)) $$;

CREATE TABLE branches (
    code text PRIMARY KEY CHECK (code ~ '^[a-z][a-z0-9_-]{0,31}$'),
    name text NOT NULL
);

CREATE TABLE titles (
    isbn           text PRIMARY KEY CHECK (isbn ~ '^97[89][0-9]{10}$'),
    title          text NOT NULL,
    authors        text[] NOT NULL DEFAULT '{}',
    published_year integer
);
CREATE INDEX titles_folded_trgm ON titles USING gin (library_fold(title) gin_trgm_ops);

-- No index covers `status`, so lending and returning a copy update it in
-- place (a HOT update) without touching any index; a title has few copies,
-- found through copies_by_isbn. Pages are left with room for those updates.
CREATE TABLE copies (
    id      bigserial PRIMARY KEY,
    isbn    text NOT NULL REFERENCES titles,
    branch  text NOT NULL REFERENCES branches,
    barcode text NOT NULL UNIQUE,
    status  text NOT NULL DEFAULT 'available' CHECK (status IN ('available', 'on_loan'))
) WITH (fillfactor = 80);
CREATE INDEX copies_by_isbn ON copies (isbn);

CREATE TABLE patrons (
    id   text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9._-]{0,63}$'),
    name text NOT NULL
);

-- No foreign keys to `branches` here or below: every checked insert would
-- lock one of a handful of branch rows, and all loans would queue on them.
-- Branch codes are checked against the configuration before anything is
-- written.
CREATE TABLE loans (
    id          uuid PRIMARY KEY,
    copy_id     bigint NOT NULL REFERENCES copies,
    patron_id   text NOT NULL REFERENCES patrons,
    -- Where the copy was lent from (the copy's branch).
    branch      text NOT NULL,
    loaned_at   timestamptz NOT NULL,
    due_at      timestamptz NOT NULL,
    renewals    integer NOT NULL DEFAULT 0,
    returned_at timestamptz,
    returned_branch text,
    CHECK (due_at > loaned_at)
);
-- Never two open loans of one copy, whatever races happen.
CREATE UNIQUE INDEX loans_one_open_per_copy ON loans (copy_id) WHERE returned_at IS NULL;
CREATE INDEX loans_open_by_patron ON loans (patron_id) WHERE returned_at IS NULL;

-- Every loan, renewal and return a client asked for, with its outcome.
-- Loans are answered at once; renewals and returns start `pending` and are
-- settled by a worker.
CREATE TABLE operations (
    id              uuid PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('loan', 'renewal', 'return')),
    state           text NOT NULL CHECK (state IN ('pending', 'applied', 'rejected')),
    -- Loans: the client's Idempotency-Key, and what the request was, so a
    -- key reused for a different request is caught.
    idempotency_key text,
    fingerprint     text,
    -- Not a foreign key: the loan is found (or made) in the same statement,
    -- and a checked reference would lock the loan row on every insert.
    loan_id         uuid,
    isbn            text,
    patron_id       text,
    branch          text NOT NULL,
    -- Why it was rejected (a stable code), and the answer sent or shown.
    reason          text,
    outcome         jsonb,
    correlation_id  text,
    requested_at    timestamptz NOT NULL,
    settled_at      timestamptz
);
CREATE UNIQUE INDEX operations_idempotency_key ON operations (idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Append-only: one row per settled operation. Never updated or deleted.
CREATE TABLE circulation_history (
    id           bigserial PRIMARY KEY,
    at           timestamptz NOT NULL,
    operation_id uuid NOT NULL,
    kind         text NOT NULL,
    outcome      text NOT NULL,
    reason       text,
    loan_id      uuid,
    copy_id      bigint,
    isbn         text,
    patron_id    text,
    branch       text NOT NULL,
    details      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX circulation_history_at ON circulation_history (at);

CREATE FUNCTION circulation_history_is_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'circulation_history is append-only';
END $$;
CREATE TRIGGER circulation_history_append_only
    BEFORE UPDATE OR DELETE ON circulation_history
    FOR EACH ROW EXECUTE FUNCTION circulation_history_is_append_only();

-- The three circulation operations, each one transaction and one round trip.
-- The rules' numbers (loan period, limits) come from the caller's
-- configuration; the functions apply them atomically, under row locks.

-- Records how an operation was settled: a loan's row is written here (loans
-- are settled the moment they are asked for); a renewal's or return's
-- `pending` row is updated.
CREATE FUNCTION library_settle(
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
    INSERT INTO circulation_history (at, operation_id, kind, outcome, reason, loan_id, copy_id,
                                     isbn, patron_id, branch, details)
    VALUES (p_now, p_op, p_kind, p_state, p_reason, p_loan, p_copy, p_isbn, p_patron, p_branch,
            p_outcome);
    RETURN p_outcome;
END $$;

CREATE FUNCTION library_loan(
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
BEGIN
    -- A retry with the same key gets the first answer, never a second loan.
    SELECT fingerprint, outcome INTO v_prior FROM operations WHERE idempotency_key = p_key;
    IF FOUND THEN
        IF v_prior.fingerprint IS DISTINCT FROM p_fingerprint THEN
            RETURN jsonb_build_object('outcome', 'rejected', 'code', 'idempotency_key_reused',
                'message', 'this Idempotency-Key was already used for a different loan request');
        END IF;
        RETURN v_prior.outcome || jsonb_build_object('replayed', true);
    END IF;

    -- Unknown patrons and titles are bad input: answered, not recorded.
    -- Locking the patron serialises the loans of one patron, so the limit
    -- holds under races.
    PERFORM 1 FROM patrons WHERE id = p_patron FOR UPDATE;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('outcome', 'not_found', 'code', 'patron_not_found',
            'message', format('no patron with id %s', p_patron));
    END IF;
    SELECT title INTO v_title FROM titles WHERE isbn = p_isbn;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('outcome', 'not_found', 'code', 'title_not_found',
            'message', format('no title with ISBN %s in the catalogue', p_isbn));
    END IF;

    SELECT count(*) INTO v_open FROM loans WHERE patron_id = p_patron AND returned_at IS NULL;
    IF v_open >= p_max_loans THEN
        v_outcome := jsonb_build_object('outcome', 'rejected', 'code', 'loan_limit_reached',
            'message', format('patron %s already holds %s loans, the most allowed', p_patron, v_open),
            'open_loans', v_open, 'max_loans', p_max_loans);
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
            'message', CASE WHEN v_earliest IS NULL
                THEN format('no copy of %s is available', v_title)
                ELSE format('no copy of %s is available; the earliest is due back %s', v_title,
                            to_char(v_earliest AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')) END,
            'earliest_due_at', v_earliest);
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

-- Settles a pending renewal. A duplicate delivery of a settled operation
-- changes nothing and returns NULL.
CREATE FUNCTION library_renew(
    p_op uuid, p_now timestamptz, p_extension interval, p_max_renewals integer
) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_op      record;
    v_loan    record;
    v_reason  text;
    v_message text;
    v_due     timestamptz;
    v_outcome jsonb;
BEGIN
    SELECT * INTO v_op FROM operations WHERE id = p_op AND kind = 'renewal' FOR UPDATE;
    IF NOT FOUND OR v_op.state <> 'pending' THEN
        RETURN NULL;
    END IF;
    SELECT l.*, c.barcode, c.isbn INTO v_loan FROM loans l JOIN copies c ON c.id = l.copy_id
     WHERE l.id = v_op.loan_id FOR UPDATE OF l;
    IF NOT FOUND OR v_loan.returned_at IS NOT NULL THEN
        v_reason := 'not_on_loan';
        v_message := 'the loan is already closed';
    ELSIF v_loan.due_at < p_now THEN
        v_reason := 'overdue';
        v_message := format('the loan was due %s; overdue loans cannot be renewed',
            to_char(v_loan.due_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'));
    ELSIF v_loan.renewals >= p_max_renewals THEN
        v_reason := 'renewal_limit_reached';
        v_message := format('the loan was already renewed %s times, the most allowed', v_loan.renewals);
    END IF;
    IF v_reason IS NOT NULL THEN
        v_outcome := jsonb_build_object('code', v_reason, 'message', v_message);
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

-- Settles a pending return: closes the loan and frees the copy.
CREATE FUNCTION library_return(p_op uuid, p_now timestamptz) RETURNS jsonb
    LANGUAGE plpgsql AS $$
DECLARE
    v_op      record;
    v_loan    record;
    v_outcome jsonb;
BEGIN
    SELECT * INTO v_op FROM operations WHERE id = p_op AND kind = 'return' FOR UPDATE;
    IF NOT FOUND OR v_op.state <> 'pending' THEN
        RETURN NULL;
    END IF;
    SELECT l.*, c.barcode INTO v_loan FROM loans l JOIN copies c ON c.id = l.copy_id
     WHERE l.id = v_op.loan_id FOR UPDATE OF l;
    IF NOT FOUND OR v_loan.returned_at IS NOT NULL THEN
        v_outcome := jsonb_build_object('code', 'not_on_loan', 'message', 'the loan is already closed');
        RETURN library_settle(p_op, 'return', 'rejected', 'not_on_loan', v_outcome, NULL, NULL,
            v_op.loan_id, v_loan.copy_id, v_op.isbn, v_op.patron_id, v_op.branch, p_now,
            v_op.correlation_id);
    END IF;
    UPDATE loans SET returned_at = p_now, returned_branch = v_op.branch WHERE id = v_loan.id;
    UPDATE copies SET status = 'available' WHERE id = v_loan.copy_id;
    v_outcome := jsonb_build_object('loan_id', v_loan.id, 'copy', v_loan.barcode,
        'returned_at', p_now, 'was_due_at', v_loan.due_at, 'overdue', v_loan.due_at < p_now);
    RETURN library_settle(p_op, 'return', 'applied', NULL, v_outcome, NULL, NULL, v_loan.id,
        v_loan.copy_id, v_op.isbn, v_op.patron_id, v_op.branch, p_now, v_op.correlation_id);
END $$;
