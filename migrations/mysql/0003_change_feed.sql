-- The change feed: each replica reads the instance rows written since its last read,
-- by mtime. The index holds the columns that read returns (id is the primary key), so
-- it is answered from the index alone. Rows are written in mtime order, so the index
-- grows at its end. Run again (by a replica that raced another to it), the statement
-- finds the index there, which the migrator counts as done: MySQL 8 has no
-- CREATE INDEX IF NOT EXISTS.

CREATE INDEX instance_mtime ON instance (mtime, flag, revision);
