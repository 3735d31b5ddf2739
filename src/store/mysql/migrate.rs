//! The MySQL migrations, safe for replicas that start together also where no lock spans
//! the database: on MariaDB Galera `GET_LOCK` holds on one node only, so replicas on
//! different nodes may apply the same migration at once. Hence every migration statement
//! may run again (DDL that finds its object made by another replica counts as done), a
//! migration is recorded only by the replica whose row lands first, and the others go on.
//! On a single server the named lock still makes the others wait instead of running the
//! same DDL side by side.

use std::time::Duration;

use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use crate::store::StoreError;
use crate::store::migrate::{self, Migration};

/// Server errors of a DDL statement whose work is already done, by another replica
/// applying the same migration: the table, column or index exists (MySQL 8 has no
/// `IF NOT EXISTS` for columns and indexes), or what a `DROP` names is gone.
const ALREADY_DONE: &[u16] = &[
    1050, // ER_TABLE_EXISTS_ERROR
    1060, // ER_DUP_FIELDNAME
    1061, // ER_DUP_KEYNAME
    1091, // ER_CANT_DROP_FIELD_OR_KEY
];

/// Tries of recording a migration: on Galera two replicas recording the same one at
/// once may meet a certification conflict, and the loser's next try finds the row.
const RECORD_TRIES: u32 = 5;
const RECORD_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// What one migrator did with a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Applied {
    /// Applied and recorded by this migrator.
    Here,
    /// Recorded by another migrator meanwhile, whether or not this one ran it too.
    Elsewhere,
}

/// Applies the migrations not yet recorded in `batchreg_migrations`.
pub(super) async fn apply(conn: &mut Conn) -> Result<(), StoreError> {
    let locked: Option<i64> = conn
        .query_first("SELECT GET_LOCK('batchreg_migrate', 60)")
        .await?;
    if locked != Some(1) {
        return Err(StoreError::MigrationLock);
    }
    let result = apply_unlocked(conn, migrate::MYSQL).await;
    conn.query_drop("DO RELEASE_LOCK('batchreg_migrate')")
        .await?;
    result.map(drop)
}

/// Applies the `migrations` not yet recorded, without a lock: several migrators may run
/// it at once on the same database. Returns, for each migration it found unrecorded,
/// what it did.
pub(super) async fn apply_unlocked(
    conn: &mut Conn,
    migrations: &[Migration],
) -> Result<Vec<(u32, Applied)>, StoreError> {
    conn.query_drop(
        "CREATE TABLE IF NOT EXISTS batchreg_migrations (
             version    INT UNSIGNED NOT NULL PRIMARY KEY,
             name       VARCHAR(255) NOT NULL,
             applied_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)
         ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4",
    )
    .await?;
    let mut done = Vec::new();
    for migration in migrations {
        // Read again before each migration: another replica may have gone on meanwhile.
        let recorded: Option<u32> = conn
            .exec_first(
                "SELECT version FROM batchreg_migrations WHERE version = ?",
                (migration.version,),
            )
            .await?;
        if recorded.is_some() {
            continue;
        }
        for statement in migrate::statements(migration.sql) {
            run_statement(conn, &statement)
                .await
                .map_err(|source| StoreError::Migration {
                    name: migration.name,
                    source: Box::new(source),
                })?;
        }
        let applied = record(conn, migration).await?;
        match applied {
            Applied::Here => tracing::info!(migration = migration.name, "applied MySQL migration"),
            Applied::Elsewhere => tracing::info!(
                migration = migration.name,
                "MySQL migration applied by another replica meanwhile"
            ),
        }
        done.push((migration.version, applied));
    }
    Ok(done)
}

/// Runs one migration statement; done already (by another replica) counts as done.
async fn run_statement(conn: &mut Conn, statement: &str) -> Result<(), StoreError> {
    match conn.query_drop(statement).await {
        Err(mysql_async::Error::Server(err)) if ALREADY_DONE.contains(&err.code) => {
            tracing::debug!(error = %err, "migration statement already applied");
            Ok(())
        }
        result => Ok(result?),
    }
}

/// Records `migration` unless another migrator did; says which.
async fn record(conn: &mut Conn, migration: &Migration) -> Result<Applied, StoreError> {
    let mut tries = 1;
    loop {
        let inserted = conn
            .exec_drop(
                "INSERT IGNORE INTO batchreg_migrations (version, name) VALUES (?, ?)",
                (migration.version, migration.name),
            )
            .await;
        match inserted.map_err(StoreError::from) {
            Ok(()) if conn.affected_rows() == 1 => return Ok(Applied::Here),
            Ok(()) => return Ok(Applied::Elsewhere),
            Err(err) if err.is_retriable() && tries < RECORD_TRIES => {
                tracing::warn!(error = %err, migration = migration.name, "recording a migration failed; retrying");
                tokio::time::sleep(RECORD_RETRY_PAUSE).await;
                tries += 1;
            }
            Err(err) => return Err(err),
        }
    }
}
