-- Version 5: a one-row UPDATE is captured without pairing.
--
-- Most writes of a CRM change one row, and most of those change none of our
-- columns (a new message, an unread count).  Version 4 ran the many-row query
-- for them too: number both transition tables, hash-join them, sort.  That
-- query was about a tenth of a one-row UPDATE that writes nothing, where
-- collecting the transition tables and calling the function cost almost
-- nothing.  With exactly one row in the statement (counted up to two, so a
-- bulk statement does not count its rows), the old and new row pair by
-- themselves and a plain join of the two one-row tables does it.  The rows
-- written are those of version 4; statements of more rows are unchanged.
--
-- CREATE OR REPLACE resets the function's settings, so they are stated again
-- (version 2's rights, version 3's enable_nestloop, version 4's jit).

CREATE OR REPLACE FUNCTION {function}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_nestloop = off SET jit = off
AS $capture$
DECLARE
    written bigint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO {outbox} (op, old_row, new_row)
        SELECT 'INSERT', NULL, {new_image}
        FROM reconciler_new n;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO {outbox} (op, old_row, new_row)
        SELECT 'DELETE', {old_image}, NULL
        FROM reconciler_old o;
    ELSIF (SELECT count(*) FROM (SELECT FROM reconciler_new LIMIT 2) AS two) = 1 THEN
        -- One row: its old and new images pair as they are.
        INSERT INTO {outbox} (op, old_row, new_row)
        SELECT 'UPDATE', {old_image}, {new_image}
        FROM reconciler_old o, reconciler_new n
        WHERE {changed};
    ELSE
        INSERT INTO {outbox} (op, old_row, new_row)
        SELECT 'UPDATE', {old_image}, {new_image}
        FROM (SELECT row_number() OVER () AS reconciler_i, {watched}
              FROM reconciler_old) o
        JOIN (SELECT row_number() OVER () AS reconciler_i, {watched}
              FROM reconciler_new) n ON n.reconciler_i = o.reconciler_i
        WHERE {changed}
        ORDER BY o.reconciler_i;
    END IF;
    GET DIAGNOSTICS written = ROW_COUNT;
    IF written > 0 THEN
        PERFORM pg_notify({channel_literal}, '');
    END IF;
    RETURN NULL;
END
$capture$;
