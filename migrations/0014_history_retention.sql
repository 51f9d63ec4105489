-- Circulation history keeps its own retention (BIBLIOMQ_HISTORY_RETENTION,
-- unset: forever) and may anonymise the patron of old rows
-- (BIBLIOMQ_HISTORY_ANONYMISE_AFTER, unset: never). Both are done by one
-- maintenance pass (core/src/library/retention.rs) run by the workers'
-- janitor and by `bibliomq-api purge`.
--
-- An outcome without its patron: the top-level `patron` member (a
-- refusal's) removed, and a loan's `loan.patron` replaced by the marker
-- `~anonymised`, which no patron id can be (ids start with a letter or
-- digit), so the stored outcome still reads as a loan.
CREATE FUNCTION library_without_patron(p jsonb) RETURNS jsonb
    LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN p IS NULL OR jsonb_typeof(p) <> 'object' THEN p
        WHEN jsonb_typeof(p -> 'loan') = 'object' AND (p -> 'loan') ? 'patron'
            THEN jsonb_set(p - 'patron', '{loan,patron}', '"~anonymised"')
        ELSE p - 'patron'
    END
$$;

-- The table stays append-only for everything else. The trigger lets a row
-- be deleted, or its patron removed, only in a transaction where the pass
-- has set the transaction-local `bibliomq.history_maintenance` to `on`,
-- and even then an UPDATE may change nothing but the patron: `patron_id`
-- to NULL and `details` to `library_without_patron(details)`. This guards
-- against mistakes (an ordinary UPDATE or DELETE is refused as before),
-- not against a database user who sets the flag on purpose.
CREATE OR REPLACE FUNCTION circulation_history_is_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('bibliomq.history_maintenance', true), '') = 'on' THEN
        IF TG_OP = 'DELETE' THEN
            RETURN OLD;
        END IF;
        IF NEW.patron_id IS NULL
           AND NEW.details = library_without_patron(OLD.details)
           AND (NEW.id, NEW.at, NEW.operation_id, NEW.kind, NEW.outcome, NEW.reason,
                NEW.loan_id, NEW.copy_id, NEW.isbn, NEW.branch)
               IS NOT DISTINCT FROM
               (OLD.id, OLD.at, OLD.operation_id, OLD.kind, OLD.outcome, OLD.reason,
                OLD.loan_id, OLD.copy_id, OLD.isbn, OLD.branch)
        THEN
            RETURN NEW;
        END IF;
    END IF;
    RAISE EXCEPTION 'circulation_history is append-only';
END $$;

-- The anonymising pass's question, "which old rows still name a patron?",
-- oldest first; an anonymised row leaves this index, so each batch starts
-- where the last one stopped instead of stepping over the rows done.
CREATE INDEX circulation_history_named_at ON circulation_history (at)
    WHERE patron_id IS NOT NULL;

-- The same for settled operations.
CREATE INDEX operations_named_settled_at ON operations (settled_at)
    WHERE patron_id IS NOT NULL AND settled_at IS NOT NULL;
