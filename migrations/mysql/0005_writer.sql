-- Which store (one process) wrote each instance row last, random per process start, 0
-- for rows written before this column: a replica's change feed leaves its own writes
-- out of its frequent reads, as its cache already holds them. The feed's index gains
-- the column so that the read is still answered from the index alone; the old index
-- goes. Each statement run again fails as "already done", which the migrator counts as
-- done (1060, 1061, 1091).

ALTER TABLE instance ADD COLUMN writer BIGINT NOT NULL DEFAULT 0;

CREATE INDEX instance_changes ON instance (mtime, writer, flag, revision);

DROP INDEX instance_mtime ON instance;
