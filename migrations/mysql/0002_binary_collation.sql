-- Names and ids compare byte for byte, as the naming layer and the SQLite store compare
-- them. The server's default collation (utf8mb4_general_ci on MariaDB,
-- utf8mb4_0900_ai_ci on MySQL 8) would make `Svc` and `svc`, or metadata keys `Env` and
-- `env`, collide on their unique keys; it is also slower to compare than bytes.
-- Converting to a finer collation cannot create duplicates, and running it again changes
-- nothing.

ALTER TABLE namespace CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;

ALTER TABLE service CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;

ALTER TABLE instance CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;

ALTER TABLE health_check CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;

ALTER TABLE instance_metadata CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
