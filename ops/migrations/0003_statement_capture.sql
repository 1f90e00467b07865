-- Version 3: capture per statement, with transition tables.
--
-- Versions 1 and 2 captured per row: a bulk UPDATE of a million rows called
-- the function a million times, each building two jsonb images and running
-- its own INSERT.  Now one trigger per operation fires once per statement and
-- writes all of its outbox rows with one INSERT ... SELECT over the
-- statement's transition tables (transition tables allow one event per
-- trigger, hence three triggers).  The rows are the same as before: the same
-- op, the same jsonb images with the same casts, in the order the statement
-- changed them, and an UPDATE that changes none of our columns writes nothing
-- (the WHEN clause of version 1 becomes the WHERE of the SELECT).  The
-- doorbell rings only when something was written.
--
-- An UPDATE pairs each old row with its new row by position: PostgreSQL
-- appends the old and the new image of a row to the two transition tables
-- together, so row n of one is row n of the other, whatever the key did.
-- Only our seven columns are carried into that join.  The function runs with
-- enable_nestloop off: PL/pgSQL keeps the plan it made after a few one-row
-- statements, and a nested loop planned for one row would cost a bulk
-- statement n x n; a hash join costs a one-row statement nothing more.
--
-- The function keeps version 2's rights: it runs as its owner under a fixed
-- search_path (CREATE OR REPLACE resets both, so they are stated again here;
-- the REVOKE of version 2 stays, it belongs to the function, not its body).

DROP TRIGGER IF EXISTS {update_trigger} ON {table};
DROP TRIGGER IF EXISTS {trigger} ON {table};

CREATE OR REPLACE FUNCTION {function}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_nestloop = off
AS $capture$
DECLARE
    written bigint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO {outbox} (op, old_row, new_row)
        SELECT 'INSERT', NULL, jsonb_build_object(
            'id', n.{c_id}::text,
            'phone', n.{c_phone}::text,
            'channel', n.{c_channel}::text,
            'status', n.{c_status}::text,
            'assigned_to', n.{c_assigned_to}::text,
            'bot_flow_id', n.{c_bot_flow_id}::text,
            'bot_started_at', n.{c_bot_started_at}::timestamptz)
        FROM reconciler_new n;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO {outbox} (op, old_row, new_row)
        SELECT 'DELETE', jsonb_build_object(
            'id', o.{c_id}::text,
            'phone', o.{c_phone}::text,
            'channel', o.{c_channel}::text,
            'status', o.{c_status}::text,
            'assigned_to', o.{c_assigned_to}::text,
            'bot_flow_id', o.{c_bot_flow_id}::text,
            'bot_started_at', o.{c_bot_started_at}::timestamptz), NULL
        FROM reconciler_old o;
    ELSE
        INSERT INTO {outbox} (op, old_row, new_row)
        SELECT 'UPDATE', jsonb_build_object(
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

CREATE TRIGGER {trigger}
    AFTER INSERT ON {table} REFERENCING NEW TABLE AS reconciler_new
    FOR EACH STATEMENT EXECUTE FUNCTION {function}();

CREATE TRIGGER {update_trigger}
    AFTER UPDATE ON {table} REFERENCING OLD TABLE AS reconciler_old NEW TABLE AS reconciler_new
    FOR EACH STATEMENT EXECUTE FUNCTION {function}();

CREATE TRIGGER {delete_trigger}
    AFTER DELETE ON {table} REFERENCING OLD TABLE AS reconciler_old
    FOR EACH STATEMENT EXECUTE FUNCTION {function}();
