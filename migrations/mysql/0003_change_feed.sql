-- The change feed: each replica reads the instance rows written since its last read,
-- by mtime. The index holds the columns that read returns (id is the primary key), so
-- it is answered from the index alone. Rows are written in mtime order, so the index
-- grows at its end.

CREATE INDEX instance_mtime ON instance (mtime, flag, revision);
