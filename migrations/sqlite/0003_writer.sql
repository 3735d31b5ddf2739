-- Which store (one process) wrote each instance row last (see the MySQL migration of
-- the same name). A SQLite store has one writer and no change feed to follow, but both
-- stores write the same columns.

ALTER TABLE instance ADD COLUMN writer INTEGER NOT NULL DEFAULT 0;
