-- batchreg schema for MySQL 8, MariaDB 10.11 and MySQL-compatible engines (TiDB).
-- Columns follow the PolarisMesh MySQL schema. Statements are separated by a line that
-- ends with ';'. Each is idempotent, so a migration cut off half way can run again.

CREATE TABLE IF NOT EXISTS namespace (
    name    VARCHAR(64)   NOT NULL,
    comment VARCHAR(1024) NOT NULL DEFAULT '',
    token   VARCHAR(64)   NOT NULL DEFAULT '',
    owner   VARCHAR(1024) NOT NULL DEFAULT '',
    flag    TINYINT       NOT NULL DEFAULT 0,
    ctime   TIMESTAMP(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    mtime   TIMESTAMP(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    PRIMARY KEY (name)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS service (
    id         VARCHAR(32)   NOT NULL,
    name       VARCHAR(128)  NOT NULL,
    namespace  VARCHAR(64)   NOT NULL,
    ports      TEXT,
    business   VARCHAR(64)   NOT NULL DEFAULT '',
    department VARCHAR(1024) NOT NULL DEFAULT '',
    comment    VARCHAR(1024) NOT NULL DEFAULT '',
    token      VARCHAR(2048) NOT NULL DEFAULT '',
    revision   VARCHAR(32)   NOT NULL DEFAULT '',
    owner      VARCHAR(1024) NOT NULL DEFAULT '',
    flag       TINYINT       NOT NULL DEFAULT 0,
    ctime      TIMESTAMP(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    mtime      TIMESTAMP(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    PRIMARY KEY (id),
    UNIQUE KEY name (name, namespace)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS instance (
    id                  VARCHAR(128)      NOT NULL,
    service_id          VARCHAR(32)       NOT NULL,
    vpc_id              VARCHAR(64)       NOT NULL DEFAULT '',
    host                VARCHAR(128)      NOT NULL,
    port                INT UNSIGNED      NOT NULL,
    protocol            VARCHAR(32)       NOT NULL DEFAULT '',
    version             VARCHAR(32)       NOT NULL DEFAULT '',
    health_status       TINYINT           NOT NULL DEFAULT 1,
    isolate             TINYINT           NOT NULL DEFAULT 0,
    weight              SMALLINT UNSIGNED NOT NULL DEFAULT 100,
    enable_health_check TINYINT           NOT NULL DEFAULT 0,
    logic_set           VARCHAR(128)      NOT NULL DEFAULT '',
    cmdb_region         VARCHAR(128)      NOT NULL DEFAULT '',
    cmdb_zone           VARCHAR(128)      NOT NULL DEFAULT '',
    cmdb_idc            VARCHAR(128)      NOT NULL DEFAULT '',
    priority            INT UNSIGNED      NOT NULL DEFAULT 0,
    revision            VARCHAR(32)       NOT NULL,
    flag                TINYINT           NOT NULL DEFAULT 0,
    ctime               TIMESTAMP(3)      NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    mtime               TIMESTAMP(3)      NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    PRIMARY KEY (id),
    KEY service_id (service_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS health_check (
    id   VARCHAR(128) NOT NULL,
    type TINYINT      NOT NULL DEFAULT 0,
    ttl  INT UNSIGNED NOT NULL,
    PRIMARY KEY (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS instance_metadata (
    id     VARCHAR(128)  NOT NULL,
    mkey   VARCHAR(128)  NOT NULL,
    mvalue VARCHAR(4096) NOT NULL,
    ctime  TIMESTAMP(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    mtime  TIMESTAMP(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    PRIMARY KEY (id, mkey)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
