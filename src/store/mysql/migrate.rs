//! The MySQL migrations, applied under a named lock so that of several replicas starting
//! at once one applies each file and the others wait, then see it recorded.

use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use crate::store::StoreError;
use crate::store::migrate::{self, Migration};

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
    result
}

async fn apply_unlocked(conn: &mut Conn, migrations: &[Migration]) -> Result<(), StoreError> {
    conn.query_drop(
        "CREATE TABLE IF NOT EXISTS batchreg_migrations (
             version    INT UNSIGNED NOT NULL PRIMARY KEY,
             name       VARCHAR(255) NOT NULL,
             applied_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)
         ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4",
    )
    .await?;
    let applied: Vec<u32> = conn
        .query("SELECT version FROM batchreg_migrations")
        .await?;
    for migration in migrations {
        if applied.contains(&migration.version) {
            continue;
        }
        for statement in migrate::statements(migration.sql) {
            conn.query_drop(statement)
                .await
                .map_err(|e| StoreError::Migration {
                    name: migration.name,
                    source: Box::new(e.into()),
                })?;
        }
        conn.exec_drop(
            "INSERT INTO batchreg_migrations (version, name) VALUES (?, ?)",
            (migration.version, migration.name),
        )
        .await?;
        tracing::info!(migration = migration.name, "applied MySQL migration");
    }
    Ok(())
}
