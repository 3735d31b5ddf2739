-- Instance ids and metadata keys compare byte for byte, trailing spaces included, as the
-- naming layer and the SQLite store compare them. utf8mb4_bin (0002) is a PAD SPACE
-- collation: it compares 'key' and 'key ' equal, so two metadata keys of one instance
-- that differ by a trailing space collided on the primary key (the batch failed), and two
-- instance ids that differ so named one row. Binary strings never pad, on every engine
-- (MariaDB's utf8mb4_nopad_bin and MySQL's utf8mb4_0900_bin each exist on one only).
-- 512 bytes hold the 128 characters the columns held. Running it again changes nothing.

ALTER TABLE instance MODIFY id VARBINARY(512) NOT NULL;

ALTER TABLE health_check MODIFY id VARBINARY(512) NOT NULL;

ALTER TABLE instance_metadata MODIFY id VARBINARY(512) NOT NULL, MODIFY mkey VARBINARY(512) NOT NULL;
