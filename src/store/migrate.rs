//! Numbered migrations from migrations/<engine>/, embedded at build time, each applied
//! once and recorded in `batchreg_migrations`.

use rusqlite::{Connection, TransactionBehavior};

use super::StoreError;

/// One numbered SQL file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// The SQLite migrations, in the order they apply.
pub const SQLITE: &[Migration] = &[Migration {
    version: 1,
    name: "0001_init.sql",
    sql: include_str!("../../migrations/sqlite/0001_init.sql"),
}];

/// Applies the SQLite migrations not yet recorded, in one immediate transaction so two
/// processes starting at once apply each file once. Returns the names applied now.
pub fn apply_sqlite(conn: &mut Connection) -> Result<Vec<&'static str>, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS batchreg_migrations (
             version    INTEGER NOT NULL PRIMARY KEY,
             name       TEXT    NOT NULL,
             applied_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
         )",
    )?;
    let mut applied = Vec::new();
    for migration in SQLITE {
        let done: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM batchreg_migrations WHERE version = ?1)",
            [migration.version],
            |row| row.get(0),
        )?;
        if done {
            continue;
        }
        tx.execute_batch(migration.sql)
            .map_err(|source| StoreError::Migration {
                name: migration.name,
                source: Box::new(source.into()),
            })?;
        tx.execute(
            "INSERT INTO batchreg_migrations (version, name) VALUES (?1, ?2)",
            (migration.version, migration.name),
        )?;
        applied.push(migration.name);
    }
    tx.commit()?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_migration_runs_once() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(apply_sqlite(&mut conn).unwrap(), vec!["0001_init.sql"]);
        assert!(apply_sqlite(&mut conn).unwrap().is_empty());
        let recorded: i64 = conn
            .query_row("SELECT count(*) FROM batchreg_migrations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(recorded, SQLITE.len() as i64);
    }

    #[test]
    fn versions_are_increasing() {
        assert!(SQLITE.windows(2).all(|w| w[0].version < w[1].version));
    }
}
