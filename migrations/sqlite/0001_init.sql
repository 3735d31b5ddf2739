-- batchreg schema for the embedded SQLite store. Columns follow the PolarisMesh schema;
-- CHECK constraints hold the same limits the MySQL column types hold.

CREATE TABLE namespace (
    name    TEXT    NOT NULL PRIMARY KEY CHECK (length(name) <= 64),
    comment TEXT    NOT NULL DEFAULT '',
    token   TEXT    NOT NULL DEFAULT '',
    owner   TEXT    NOT NULL DEFAULT '',
    flag    INTEGER NOT NULL DEFAULT 0,
    ctime   TEXT    NOT NULL,
    mtime   TEXT    NOT NULL
);

CREATE TABLE service (
    id         TEXT    NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL CHECK (length(name) <= 128),
    namespace  TEXT    NOT NULL CHECK (length(namespace) <= 64),
    ports      TEXT    NOT NULL DEFAULT '',
    business   TEXT    NOT NULL DEFAULT '',
    department TEXT    NOT NULL DEFAULT '',
    comment    TEXT    NOT NULL DEFAULT '',
    token      TEXT    NOT NULL DEFAULT '',
    revision   TEXT    NOT NULL DEFAULT '',
    owner      TEXT    NOT NULL DEFAULT '',
    flag       INTEGER NOT NULL DEFAULT 0,
    ctime      TEXT    NOT NULL,
    mtime      TEXT    NOT NULL,
    UNIQUE (name, namespace)
);

CREATE TABLE instance (
    id                  TEXT    NOT NULL PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 128),
    service_id          TEXT    NOT NULL,
    vpc_id              TEXT    NOT NULL DEFAULT '' CHECK (length(vpc_id) <= 64),
    host                TEXT    NOT NULL CHECK (length(host) BETWEEN 1 AND 128),
    port                INTEGER NOT NULL CHECK (port BETWEEN 0 AND 65535),
    protocol            TEXT    NOT NULL DEFAULT '' CHECK (length(protocol) <= 32),
    version             TEXT    NOT NULL DEFAULT '' CHECK (length(version) <= 32),
    health_status       INTEGER NOT NULL DEFAULT 1,
    isolate             INTEGER NOT NULL DEFAULT 0,
    weight              INTEGER NOT NULL DEFAULT 100 CHECK (weight BETWEEN 0 AND 65535),
    enable_health_check INTEGER NOT NULL DEFAULT 0,
    logic_set           TEXT    NOT NULL DEFAULT '' CHECK (length(logic_set) <= 128),
    cmdb_region         TEXT    NOT NULL DEFAULT '' CHECK (length(cmdb_region) <= 128),
    cmdb_zone           TEXT    NOT NULL DEFAULT '' CHECK (length(cmdb_zone) <= 128),
    cmdb_idc            TEXT    NOT NULL DEFAULT '' CHECK (length(cmdb_idc) <= 128),
    priority            INTEGER NOT NULL DEFAULT 0,
    revision            TEXT    NOT NULL,
    flag                INTEGER NOT NULL DEFAULT 0,
    ctime               TEXT    NOT NULL,
    mtime               TEXT    NOT NULL
);
CREATE INDEX instance_service_id ON instance (service_id);

CREATE TABLE health_check (
    id   TEXT    NOT NULL PRIMARY KEY,
    type INTEGER NOT NULL DEFAULT 0,
    ttl  INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE instance_metadata (
    id     TEXT NOT NULL,
    mkey   TEXT NOT NULL CHECK (length(mkey) <= 128),
    mvalue TEXT NOT NULL CHECK (length(mvalue) <= 4096),
    ctime  TEXT NOT NULL,
    mtime  TEXT NOT NULL,
    PRIMARY KEY (id, mkey)
) WITHOUT ROWID;
