-- No statement reads instance rows by service (see the MySQL migration of the same
-- name): the index was paid on every instance written and read by nothing.

DROP INDEX IF EXISTS instance_service_id;
