-- Version 1: the outbox table, the capture function and its triggers.
--
-- The trigger writes the old and new values of the columns this project
-- cares about to the outbox, in the user's own transaction, and rings the
-- doorbell: a NOTIFY with an empty payload, so it is never larger than a few
-- bytes and PostgreSQL folds all of a transaction's notifications into one.
-- An UPDATE that changes none of those columns fires nothing (the WHEN clause
-- is checked before the function is called).

CREATE TABLE IF NOT EXISTS {outbox} (
    id          bigserial PRIMARY KEY,
    op          text NOT NULL,
    old_row     jsonb,
    new_row     jsonb,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    failed      text
);

CREATE OR REPLACE FUNCTION {function}() RETURNS trigger
LANGUAGE plpgsql AS $capture$
DECLARE
    old_image jsonb;
    new_image jsonb;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        old_image := jsonb_build_object(
            'id', OLD.{c_id}::text,
            'phone', OLD.{c_phone}::text,
            'channel', OLD.{c_channel}::text,
            'status', OLD.{c_status}::text,
            'assigned_to', OLD.{c_assigned_to}::text,
            'bot_flow_id', OLD.{c_bot_flow_id}::text,
            'bot_started_at', OLD.{c_bot_started_at}::timestamptz);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        new_image := jsonb_build_object(
            'id', NEW.{c_id}::text,
            'phone', NEW.{c_phone}::text,
            'channel', NEW.{c_channel}::text,
            'status', NEW.{c_status}::text,
            'assigned_to', NEW.{c_assigned_to}::text,
            'bot_flow_id', NEW.{c_bot_flow_id}::text,
            'bot_started_at', NEW.{c_bot_started_at}::timestamptz);
    END IF;
    INSERT INTO {outbox} (op, old_row, new_row) VALUES (TG_OP, old_image, new_image);
    PERFORM pg_notify({channel_literal}, '');
    RETURN NULL;
END
$capture$;

DROP TRIGGER IF EXISTS {trigger} ON {table};
CREATE TRIGGER {trigger}
    AFTER INSERT OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION {function}();

DROP TRIGGER IF EXISTS {update_trigger} ON {table};
CREATE TRIGGER {update_trigger}
    AFTER UPDATE ON {table}
    FOR EACH ROW
    WHEN (OLD.{c_status} IS DISTINCT FROM NEW.{c_status}
          OR OLD.{c_assigned_to} IS DISTINCT FROM NEW.{c_assigned_to}
          OR OLD.{c_bot_flow_id} IS DISTINCT FROM NEW.{c_bot_flow_id}
          OR OLD.{c_bot_started_at} IS DISTINCT FROM NEW.{c_bot_started_at}
          OR OLD.{c_phone} IS DISTINCT FROM NEW.{c_phone}
          OR OLD.{c_channel} IS DISTINCT FROM NEW.{c_channel}
          OR OLD.{c_id} IS DISTINCT FROM NEW.{c_id})
    EXECUTE FUNCTION {function}();
