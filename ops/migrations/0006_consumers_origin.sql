-- Version 6: the outbox marks the changes the reconciler's consumers made.
--
-- When the consumers clear or close a row, the capture sees that change like
-- any other, and its event comes back to them.  It tells them nothing: the
-- handling that made the change observed the key again right after it.  Yet
-- as a one-row transaction it went to the live lane, where a nightly job's
-- clears (one per row) crowded out the users' own changes.  The consumers
-- connect under their own application_name; a row written by them gets
-- origin 'consumers', so the relay can put it on the bulk lane.  Everyone
-- else's rows get NULL, which takes no room.
--
-- A column default, so the capture function is not replaced: its INSERT does
-- not name the column.  Rows already in the outbox keep NULL.

ALTER TABLE {outbox} ADD COLUMN origin text;
ALTER TABLE {outbox} ALTER COLUMN origin SET DEFAULT
    CASE WHEN current_setting('application_name') = {consumers_application_name} THEN 'consumers' END;
