-- Version 4: the outbox says which rows a bulk statement wrote, so the relay
-- can publish single changes ahead of them.
--
-- Until version 3 the relay read the outbox in id order only, so a single
-- change committed just after a statement of 100,000 rows waited until the
-- relay had published all of them.  Each row now carries `bulk`: true when
-- the statement that wrote it changed {bulk_rows} rows or more (counted in its
-- transition table).  The relay reads the rows that are not bulk first,
-- through the partial index below, which bulk rows never enter (so a bulk
-- statement pays no second index write per row), then the bulk ones.
--
-- Adding a column with a constant default rewrites nothing; rows already in
-- the outbox count as single changes.  The function is version 3's, with the
-- column written; CREATE OR REPLACE resets its rights and settings, so they
-- are stated again, as in version 3.

ALTER TABLE {outbox} ADD COLUMN IF NOT EXISTS bulk boolean NOT NULL DEFAULT false;

CREATE INDEX IF NOT EXISTS {live_index} ON {outbox} (id) WHERE failed IS NULL AND NOT bulk;

CREATE OR REPLACE FUNCTION {function}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_nestloop = off
AS $capture$
DECLARE
    written bigint;
    bulk_statement boolean;
BEGIN
    IF TG_OP = 'DELETE' THEN
        bulk_statement := (SELECT count(*) FROM reconciler_old) >= {bulk_rows};
    ELSE
        bulk_statement := (SELECT count(*) FROM reconciler_new) >= {bulk_rows};
    END IF;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO {outbox} (op, bulk, old_row, new_row)
        SELECT 'INSERT', bulk_statement, NULL, jsonb_build_object(
            'id', n.{c_id}::text,
            'phone', n.{c_phone}::text,
            'channel', n.{c_channel}::text,
            'status', n.{c_status}::text,
            'assigned_to', n.{c_assigned_to}::text,
            'bot_flow_id', n.{c_bot_flow_id}::text,
            'bot_started_at', n.{c_bot_started_at}::timestamptz)
        FROM reconciler_new n;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO {outbox} (op, bulk, old_row, new_row)
        SELECT 'DELETE', bulk_statement, jsonb_build_object(
            'id', o.{c_id}::text,
            'phone', o.{c_phone}::text,
            'channel', o.{c_channel}::text,
            'status', o.{c_status}::text,
            'assigned_to', o.{c_assigned_to}::text,
            'bot_flow_id', o.{c_bot_flow_id}::text,
            'bot_started_at', o.{c_bot_started_at}::timestamptz), NULL
        FROM reconciler_old o;
    ELSE
        INSERT INTO {outbox} (op, bulk, old_row, new_row)
        SELECT 'UPDATE', bulk_statement, jsonb_build_object(
            'id', o.{c_id}::text,
            'phone', o.{c_phone}::text,
            'channel', o.{c_channel}::text,
            'status', o.{c_status}::text,
            'assigned_to', o.{c_assigned_to}::text,
            'bot_flow_id', o.{c_bot_flow_id}::text,
            'bot_started_at', o.{c_bot_started_at}::timestamptz), jsonb_build_object(
            'id', n.{c_id}::text,
            'phone', n.{c_phone}::text,
            'channel', n.{c_channel}::text,
            'status', n.{c_status}::text,
            'assigned_to', n.{c_assigned_to}::text,
            'bot_flow_id', n.{c_bot_flow_id}::text,
            'bot_started_at', n.{c_bot_started_at}::timestamptz)
        FROM (SELECT row_number() OVER () AS reconciler_i, {c_id}, {c_phone}, {c_channel}, {c_status},
                     {c_assigned_to}, {c_bot_flow_id}, {c_bot_started_at}
              FROM reconciler_old) o
        JOIN (SELECT row_number() OVER () AS reconciler_i, {c_id}, {c_phone}, {c_channel}, {c_status},
                     {c_assigned_to}, {c_bot_flow_id}, {c_bot_started_at}
              FROM reconciler_new) n ON n.reconciler_i = o.reconciler_i
        WHERE o.{c_status} IS DISTINCT FROM n.{c_status}
           OR o.{c_assigned_to} IS DISTINCT FROM n.{c_assigned_to}
           OR o.{c_bot_flow_id} IS DISTINCT FROM n.{c_bot_flow_id}
           OR o.{c_bot_started_at} IS DISTINCT FROM n.{c_bot_started_at}
           OR o.{c_phone} IS DISTINCT FROM n.{c_phone}
           OR o.{c_channel} IS DISTINCT FROM n.{c_channel}
           OR o.{c_id} IS DISTINCT FROM n.{c_id}
        ORDER BY o.reconciler_i;
    END IF;
    GET DIAGNOSTICS written = ROW_COUNT;
    IF written > 0 THEN
        PERFORM pg_notify({channel_literal}, '');
    END IF;
    RETURN NULL;
END
$capture$;
