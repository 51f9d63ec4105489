-- Settling a renewal or a return updates its operation row (`state`,
-- `reason`, `outcome`, `settled_at`). The anonymising pass's index of 0014
-- was on `settled_at`, so none of those updates could be heap-only (HOT):
-- each wrote a new entry into every index of the table (under load, not one
-- in 9,795 was HOT). The pass now walks `requested_at`, which never changes
-- and is never later than `settled_at`, and filters on `settled_at`; the
-- settle changes no indexed column, so it can update the row in place.
--
-- The table's pages keep room for those updates: a pending row is written
-- small and grows by its outcome when settled, a few milliseconds later.
DROP INDEX IF EXISTS operations_named_settled_at;
CREATE INDEX operations_named_requested_at ON operations (requested_at)
    WHERE patron_id IS NOT NULL;
ALTER TABLE operations SET (fillfactor = 85);
