-- Version 2: the capture function runs with the installer's rights.
--
-- Version 1 ran the function with the rights of whoever wrote the row, so
-- an application role without rights on the schema of the outbox could no
-- longer write its own table.  The function now runs as its owner (the role
-- that ran `reconciler migrate`) under a fixed search_path that holds only
-- the system catalog, so nothing a writer puts on its own search_path can
-- change what the function calls.  Every name in the body is qualified.
-- Nobody may call it except as the trigger (trigger functions cannot be
-- called directly; EXECUTE is revoked from PUBLIC for good measure).

ALTER FUNCTION {function}() SECURITY DEFINER;
ALTER FUNCTION {function}() SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION {function}() FROM PUBLIC;
