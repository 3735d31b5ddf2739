//! The MySQL store's unit tests on a real database: `BATCHREG_TEST_MYSQL_URL`, each test
//! on a fresh database of its own; skipped (and saying so) when it is not set.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};

use super::MysqlStore;
use super::write::MysqlWriter;
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
    Some(MysqlStore::open(&format!("{server}/{name}"), None).unwrap())
}

fn row(host: &str) -> InstanceRecord {
    InstanceRecord {
        id: format!("unit-{host}"),
        namespace: "unit".to_owned(),
        service: "svc".to_owned(),
        vpc_id: String::new(),
        host: host.to_owned(),
        port: 80,
        protocol: String::new(),
        version: String::new(),
        priority: 0,
        weight: 100,
        healthy: true,
        isolate: None,
        enable_health_check: false,
        health_check_ttl: None,
        logic_set: String::new(),
        region: String::new(),
        zone: String::new(),
        campus: String::new(),
        metadata: vec![],
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
