//! Numbered migrations from migrations/<engine>/, embedded at build time, each applied
//! once and recorded in `batchreg_migrations`.
//!
//! A MySQL migration may be run by several replicas at once (see `mysql::migrate`), and
//! again after a later one: each of its statements must leave the same schema when run
//! again, or fail with one of the "already exists" errors the MySQL migrator counts as
//! done. `CREATE TABLE IF NOT EXISTS`, a plain `CREATE INDEX` and `ADD COLUMN` are
//! such statements; an `UPDATE` that backfills must only touch rows not yet filled.

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
pub const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_init.sql",
        sql: include_str!("../../migrations/sqlite/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "0002_deregistered.sql",
        sql: include_str!("../../migrations/sqlite/0002_deregistered.sql"),
    },
    Migration {
        version: 3,
        name: "0003_writer.sql",
        sql: include_str!("../../migrations/sqlite/0003_writer.sql"),
    },
    Migration {
        version: 4,
        name: "0004_no_service_index.sql",
        sql: include_str!("../../migrations/sqlite/0004_no_service_index.sql"),
    },
];

/// The MySQL migrations, in the order they apply.
pub const MYSQL: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_init.sql",
        sql: include_str!("../../migrations/mysql/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "0002_binary_collation.sql",
        sql: include_str!("../../migrations/mysql/0002_binary_collation.sql"),
    },
    Migration {
        version: 3,
        name: "0003_change_feed.sql",
        sql: include_str!("../../migrations/mysql/0003_change_feed.sql"),
    },
    Migration {
        version: 4,
        name: "0004_unpadded_keys.sql",
        sql: include_str!("../../migrations/mysql/0004_unpadded_keys.sql"),
    },
    Migration {
        version: 5,
        name: "0005_writer.sql",
        sql: include_str!("../../migrations/mysql/0005_writer.sql"),
    },
    Migration {
        version: 6,
        name: "0006_no_service_index.sql",
        sql: include_str!("../../migrations/mysql/0006_no_service_index.sql"),
    },
];

/// The statements of a migration file: separated by lines ending in `;`, comment lines
/// dropped. For engines whose drivers take one statement at a time.
pub fn statements(sql: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    for line in sql.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("--") || trimmed.is_empty() {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if trimmed.ends_with(';') {
            let statement = current.trim().trim_end_matches(';').to_owned();
            statements.push(statement);
            current.clear();
        }
    }
    if !current.trim().is_empty() {
        statements.push(current.trim().to_owned());
    }
    statements
}

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
        assert_eq!(
            apply_sqlite(&mut conn).unwrap(),
            vec![
                "0001_init.sql",
                "0002_deregistered.sql",
                "0003_writer.sql",
                "0004_no_service_index.sql"
            ]
        );
        let indexes: Vec<String> = conn
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'index'
                 AND tbl_name = 'instance' AND sql IS NOT NULL ORDER BY name",
            )
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            indexes,
            vec!["instance_deregistered"],
            "no index on service_id"
        );
        assert!(apply_sqlite(&mut conn).unwrap().is_empty());
        let recorded: i64 = conn
            .query_row("SELECT count(*) FROM batchreg_migrations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(recorded, SQLITE.len() as i64);
    }

    #[test]
    fn versions_are_increasing() {
        for list in [SQLITE, MYSQL] {
            assert!(list.windows(2).all(|w| w[0].version < w[1].version));
        }
    }

    #[test]
    fn mysql_file_splits_into_its_statements() {
        let statements = statements(MYSQL[0].sql);
        assert_eq!(statements.len(), 5);
        assert!(
            statements
                .iter()
                .all(|s| s.starts_with("CREATE TABLE IF NOT EXISTS"))
        );
        assert!(statements.iter().all(|s| !s.ends_with(';')));
    }
}
