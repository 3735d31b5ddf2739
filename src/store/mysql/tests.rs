//! The MySQL store's unit tests on a real database: `BATCHREG_TEST_MYSQL_URL`, each test
//! on a fresh database of its own; skipped (and saying so) when it is not set.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};

use super::MysqlStore;
use super::migrate::{Applied, apply_unlocked};
use super::write::MysqlWriter;
use crate::store::migrate::MYSQL;
use crate::store::{
    InstanceRecord, RegisterOptions, RegisterOutcome, Registered, StoreError, StoreWriter,
};

/// What each row's write did.
fn outcomes(results: Vec<Registered>) -> Vec<RegisterOutcome> {
    results.into_iter().map(|r| r.outcome).collect()
}

/// A store on a fresh database `<base>_<suffix>` of `BATCHREG_TEST_MYSQL_URL`; `None`
/// (after saying so) when it is unset, unless `BATCHREG_TEST_REQUIRE_MYSQL` is set.
fn fresh_store(suffix: &str) -> Option<MysqlStore> {
    let url = fresh_database(suffix)?;
    Some(MysqlStore::open(&url, None).unwrap())
}

/// The URL of a fresh, empty database `<base>_<suffix>` of `BATCHREG_TEST_MYSQL_URL`;
/// `None` as for [`fresh_store`].
fn fresh_database(suffix: &str) -> Option<String> {
    let Ok(base_url) = std::env::var("BATCHREG_TEST_MYSQL_URL") else {
        assert!(
            std::env::var_os("BATCHREG_TEST_REQUIRE_MYSQL").is_none(),
            "BATCHREG_TEST_MYSQL_URL is not set but BATCHREG_TEST_REQUIRE_MYSQL is"
        );
        eprintln!("SKIPPED: BATCHREG_TEST_MYSQL_URL is not set; '{suffix}' did not run");
        return None;
    };
    let (server, base) = base_url.rsplit_once('/').expect("URL ends in /database");
    let name = format!("{}_{suffix}", base.split('?').next().unwrap());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut admin = Conn::new(Opts::from_url(&base_url).unwrap()).await.unwrap();
        admin
            .query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
            .await
            .unwrap();
        admin
            .query_drop(format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
            .await
            .unwrap();
        admin.disconnect().await.unwrap();
    });
    Some(format!("{server}/{name}"))
}

fn row(host: &str) -> InstanceRecord {
    InstanceRecord {
        namespace: "unit".to_owned(),
        host: host.to_owned(),
        port: 80,
        ..InstanceRecord::sample(&format!("unit-{host}"))
    }
}

/// A writer of `store`, as its concrete type, so tests can use its connection.
fn writer_of(store: &MysqlStore) -> MysqlWriter {
    MysqlWriter::new(&store.shared).unwrap()
}

/// Statements this writer's session has prepared so far.
fn prepared_so_far(writer: &mut MysqlWriter) -> u64 {
    writer
        .connection
        .run(async |session| {
            let row: Option<(String, u64)> = session
                .conn
                .query_first("SHOW SESSION STATUS LIKE 'Com_stmt_prepare'")
                .await?;
            Ok(row.expect("the counter exists").1)
        })
        .unwrap()
}

/// `count` new instances of one service, each with three metadata entries and a
/// health check, as in a storm.
fn storm_rows(prefix: &str, count: usize) -> Vec<InstanceRecord> {
    (0..count)
        .map(|i| {
            let mut r = row(&format!("{prefix}.{i}"));
            r.metadata = (0..3).map(|k| (format!("k{k}"), format!("v{i}"))).collect();
            r.enable_health_check = true;
            r.health_check_ttl = Some(5);
            r
        })
        .collect()
}

#[test]
fn a_registering_worker_prepares_a_storms_statements_when_it_connects() {
    let Some(store) = fresh_store("unit_prepared") else {
        return;
    };
    let options = RegisterOptions {
        create_services: true,
    };
    let mut warm = writer_of(&store);
    warm.prepare_for_registrations().unwrap();
    // The first batch creates the service: those inserts are not prepared ahead.
    outcomes(warm.register(&[row("10.0.0.1")], options).unwrap());
    let before = prepared_so_far(&mut warm);
    let batch = storm_rows("10.1", 128);
    let warm_outcomes = outcomes(warm.register(&batch, options).unwrap());
    assert_eq!(warm_outcomes, vec![RegisterOutcome::Created; 128]);
    assert_eq!(
        prepared_so_far(&mut warm),
        before,
        "nothing left to prepare"
    );

    // The same batch on a writer that did not prepare: the count above can move.
    let mut cold = writer_of(&store);
    let before = prepared_so_far(&mut cold);
    let cold_outcomes = outcomes(cold.register(&storm_rows("10.2", 128), options).unwrap());
    assert_eq!(cold_outcomes, vec![RegisterOutcome::Created; 128]);
    assert!(prepared_so_far(&mut cold) >= before + 5);
}

/// The session's isolation level, under its MySQL 8 or its MariaDB name.
async fn isolation(conn: &mut Conn) -> Result<Option<String>, StoreError> {
    match conn
        .query_first("SELECT @@SESSION.transaction_isolation")
        .await
    {
        Ok(level) => Ok(level),
        Err(_) => Ok(conn.query_first("SELECT @@SESSION.tx_isolation").await?),
    }
}

#[test]
fn a_worker_keeps_its_read_committed_connection_through_server_errors() {
    let Some(store) = fresh_store("unit_worker_connection") else {
        return;
    };
    let mut writer = writer_of(&store);
    writer.expect_unchanged = false;
    let options = RegisterOptions {
        create_services: true,
    };
    assert_eq!(
        outcomes(writer.register(&[row("10.0.0.1")], options).unwrap()),
        [RegisterOutcome::Created]
    );
    let session = async |session: &mut super::conn::Session| {
        let conn = &mut session.conn;
        let id: Option<u64> = conn.query_first("SELECT CONNECTION_ID()").await?;
        Ok((id, isolation(conn).await?))
    };
    let (first_id, level) = writer.connection.run(session).unwrap();
    assert_eq!(level.as_deref(), Some("READ-COMMITTED"));

    // Longer than the host column: the server refuses the batch.
    let error = writer
        .register(&[row(&"h".repeat(200))], options)
        .unwrap_err();
    assert!(
        matches!(error, StoreError::Mysql(mysql_async::Error::Server(_))),
        "{error:?}"
    );
    assert_eq!(
        outcomes(writer.register(&[row("10.0.0.2")], options).unwrap()),
        [RegisterOutcome::Created]
    );
    let (id_after, level_after) = writer.connection.run(session).unwrap();
    assert_eq!(
        id_after, first_id,
        "the same connection, rolled back and reused"
    );
    assert_eq!(level_after.as_deref(), Some("READ-COMMITTED"));
}

#[test]
fn an_insert_of_a_batch_expected_new_is_rolled_back_whole_when_one_row_exists() {
    let Some(store) = fresh_store("unit_expect_new") else {
        return;
    };
    let options = RegisterOptions {
        create_services: true,
    };
    let mut writer = writer_of(&store);
    let first = storm_rows("10.3", 3);
    assert_eq!(
        outcomes(writer.register(&first, options).unwrap()),
        vec![RegisterOutcome::Created; 3]
    );
    // 200 rows are inserted as 192 + 8; the stored one sorts last, so the first
    // statement inserts 192 rows before the second one fails on it.
    let mut batch = storm_rows("10.4", 199);
    let mut stored = first[0].clone();
    stored.id = "~ sorts last".to_owned();
    outcomes(
        writer
            .register(std::slice::from_ref(&stored), options)
            .unwrap(),
    );
    batch.push(stored);
    let outcomes = outcomes(writer.register(&batch, options).unwrap());
    let mut expected = vec![RegisterOutcome::Created; 199];
    expected.push(RegisterOutcome::Unchanged);
    assert_eq!(outcomes, expected, "the first 192 were not left committed");
    let count = writer
        .connection
        .run(async |session| {
            let n: Option<u64> = session
                .conn
                .query_first("SELECT COUNT(*) FROM instance")
                .await?;
            Ok(n.unwrap())
        })
        .unwrap();
    assert_eq!(count, 3 + 1 + 199);
}

/// Runs `work` on a connection of its own to `url`.
fn on_connection<T>(url: &str, work: impl AsyncFnOnce(&mut Conn) -> T) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut conn = Conn::new(Opts::from_url(url).unwrap()).await.unwrap();
        let result = work(&mut conn).await;
        conn.disconnect().await.unwrap();
        result
    })
}

/// The versions recorded in `batchreg_migrations`, with how many times each is.
async fn recorded(conn: &mut Conn) -> Vec<(u32, u64)> {
    conn.query(
        "SELECT version, COUNT(*) FROM batchreg_migrations GROUP BY version ORDER BY version",
    )
    .await
    .unwrap()
}

/// Every MySQL migration's version, each recorded once.
fn each_recorded_once() -> Vec<(u32, u64)> {
    MYSQL.iter().map(|m| (m.version, 1)).collect()
}

/// The schema the migrations leave: the change feed's index as the only secondary one,
/// and the binary collation.
async fn assert_fully_migrated(conn: &mut Conn) {
    let index_columns: Vec<(String, String)> = conn
        .query(
            "SELECT index_name, column_name FROM information_schema.statistics
             WHERE table_schema = DATABASE() AND table_name = 'instance'
               AND index_name <> 'PRIMARY' ORDER BY index_name, seq_in_index",
        )
        .await
        .unwrap();
    let columns = |names: &[&str]| -> Vec<(String, String)> {
        names
            .iter()
            .map(|c| ("instance_changes".to_owned(), (*c).to_owned()))
            .collect()
    };
    assert_eq!(
        index_columns,
        columns(&["mtime", "writer", "flag", "revision"]),
        "the change feed's index, and no other (instance_mtime and service_id are gone)"
    );
    let collation: Option<String> = conn
        .query_first(
            "SELECT table_collation FROM information_schema.tables
             WHERE table_schema = DATABASE() AND table_name = 'instance'",
        )
        .await
        .unwrap();
    assert_eq!(collation.as_deref(), Some("utf8mb4_bin"));
}

#[test]
fn migrators_started_together_without_a_lock_all_succeed_and_record_each_migration_once() {
    const MIGRATORS: usize = 6;
    let Some(url) = fresh_database("unit_migrate_race") else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // As replicas on three Galera nodes do: no lock keeps them apart.
    let outcomes = runtime.block_on(async {
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(MIGRATORS));
        let mut migrators = tokio::task::JoinSet::new();
        for _ in 0..MIGRATORS {
            let mut conn = Conn::new(Opts::from_url(&url).unwrap()).await.unwrap();
            let start = std::sync::Arc::clone(&start);
            migrators.spawn(async move {
                start.wait().await;
                let outcome = apply_unlocked(&mut conn, MYSQL).await;
                conn.disconnect().await.unwrap();
                outcome
            });
        }
        migrators.join_all().await
    });
    let mut applied_here = vec![0; MYSQL.len()];
    for outcome in outcomes {
        for (version, applied) in outcome.expect("every migrator succeeds") {
            if applied == Applied::Here {
                applied_here[version as usize - 1] += 1;
            }
        }
    }
    assert_eq!(applied_here, vec![1; MYSQL.len()]);
    on_connection(&url, async |conn| {
        assert_eq!(recorded(conn).await, each_recorded_once());
        assert_fully_migrated(conn).await;
    });
}

#[test]
fn a_migration_that_ran_but_was_not_recorded_runs_again_and_is_recorded_once() {
    let Some(url) = fresh_database("unit_migrate_again") else {
        return;
    };
    on_connection(&url, async |conn| {
        apply_unlocked(conn, MYSQL).await.unwrap();
        // As when another replica applied them and has not recorded them yet: every
        // statement runs again, the index's included.
        conn.query_drop("DELETE FROM batchreg_migrations")
            .await
            .unwrap();
        let again = apply_unlocked(conn, MYSQL).await.unwrap();
        assert!(again.iter().all(|&(_, applied)| applied == Applied::Here));
        assert_eq!(recorded(conn).await, each_recorded_once());
        assert_fully_migrated(conn).await;
        // A replica that ran a migration after another recorded it goes on.
        assert!(apply_unlocked(conn, MYSQL).await.unwrap().is_empty());
    });
}

#[test]
fn a_migration_recorded_by_another_migrator_meanwhile_is_left_as_recorded() {
    let Some(url) = fresh_database("unit_migrate_record") else {
        return;
    };
    on_connection(&url, async |conn| {
        apply_unlocked(conn, MYSQL).await.unwrap();
        conn.query_drop("DELETE FROM batchreg_migrations WHERE version = 3")
            .await
            .unwrap();
        // Another migrator records version 3 between this one's check and its insert.
        let mut other = Conn::new(Opts::from_url(&url).unwrap()).await.unwrap();
        other
            .query_drop("INSERT INTO batchreg_migrations (version, name) VALUES (3, 'other')")
            .await
            .unwrap();
        other.disconnect().await.unwrap();
        let applied = apply_unlocked(conn, &MYSQL[2..]).await;
        assert!(applied.unwrap().is_empty(), "found recorded at its check");
        let name: Option<String> = conn
            .query_first("SELECT name FROM batchreg_migrations WHERE version = 3")
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("other"));
    });
}

#[test]
fn a_database_at_an_older_version_is_migrated_in_place() {
    let Some(url) = fresh_database("unit_migrate_old") else {
        return;
    };
    on_connection(&url, async |conn| {
        let first = apply_unlocked(conn, &MYSQL[..1]).await;
        assert_eq!(first.unwrap(), vec![(1, Applied::Here)]);
        conn.query_drop(
            "INSERT INTO instance (id, service_id, host, port, revision) \
             VALUES ('old-1', 'svc', '10.0.0.1', 80, 'r1')",
        )
        .await
        .unwrap();
    });
    let store = MysqlStore::open(&url, None).expect("migrated at start");
    drop(store);
    on_connection(&url, async |conn| {
        assert_eq!(recorded(conn).await, each_recorded_once());
        assert_fully_migrated(conn).await;
        let kept: Option<String> = conn
            .query_first("SELECT revision FROM instance WHERE id = 'old-1'")
            .await
            .unwrap();
        assert_eq!(kept.as_deref(), Some("r1"));
    });
}
