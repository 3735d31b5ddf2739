-- Deregistered instances are kept, marked with flag = 1, until their retention ends;
-- the purge finds them by this index, which holds only them.

CREATE INDEX IF NOT EXISTS instance_deregistered ON instance (mtime) WHERE flag = 1;
