-- Removes everything the numbered migrations installed for one table.
-- Unpublished outbox rows go with it: `reconciler migrate --uninstall`
-- refuses while there are any, unless told --force.

DROP TRIGGER IF EXISTS {delete_trigger} ON {table};
DROP TRIGGER IF EXISTS {update_trigger} ON {table};
DROP TRIGGER IF EXISTS {trigger} ON {table};
DROP FUNCTION IF EXISTS {function}();
DROP TABLE IF EXISTS {outbox};
