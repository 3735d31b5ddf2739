//! Cluster mode on MySQL: several servers on one database, and the store's behaviour when
//! its connection is killed in the middle of a batch. Skipped (saying so) without
//! `BATCHREG_TEST_MYSQL_URL`.

mod common;

use batchreg::store::resilient::{ResilientWriter, RetryPolicy};
use batchreg::store::{InstanceRecord, RegisterOptions, RegisterOutcome, StoreOptions};
use batchreg::telemetry::StoreMetrics;
use common::discover::{DiscoverRequestType, by_id, discover, request};
use common::metrics;
use common::mysql::{admin, fresh_database, scalar, with_connection};
use common::{TestServer, code, expected_id, instance};

const SUCCESS: u32 = 200_000;
const EXISTED: u32 = 400_201;

async fn replica(url: &str) -> TestServer {
    let url = url.to_owned();
    TestServer::start(move |c| c.store.url = url).await
}

/// A replica that reads the others' changes every 100 ms, from 1 s before its last read.
async fn fast_replica(url: &str) -> TestServer {
    let url = url.to_owned();
    TestServer::start(move |c| {
        c.store.url = url;
        c.discovery.refresh_interval = std::time::Duration::from_millis(100);
        c.discovery.feed_overlap = std::time::Duration::from_secs(3);
    })
    .await
}

/// The instance ids `server` lists for `namespace/service`, once `done` holds of them,
/// asked every 50 ms for at most 10 s.
async fn listed_once(
    server: &TestServer,
    namespace: &str,
    service: &str,
    done: impl Fn(&std::collections::HashSet<String>) -> bool,
) -> std::collections::HashSet<String> {
    let mut client = server.client().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let answer = discover(
            &mut client,
            request(DiscoverRequestType::Instance, namespace, service, ""),
        )
        .await;
        let ids = by_id(&answer).into_keys().collect();
        if done(&ids) || std::time::Instant::now() > deadline {
            return ids;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_replica_lists_what_the_others_write() {
    let Some(url) = fresh_database("feed") else {
        return;
    };
    let (a, b) = (fast_replica(&url).await, fast_replica(&url).await);
    let mut client_a = a.client().await;
    let mut ids = std::collections::HashSet::new();
    for port in 0..50 {
        let sent = instance("feed", "svc", "10.9.1.1", port);
        let answer = client_a.register_instance(sent).await.unwrap().into_inner();
        assert_eq!(code(&answer), SUCCESS);
        ids.insert(expected_id("feed", "svc", "10.9.1.1", port));
    }
    // Registered through A: listed by B.
    let on_b = listed_once(&b, "feed", "svc", |listed| *listed == ids).await;
    assert_eq!(on_b, ids);

    // Deregistered through B: gone from A.
    let mut client_b = b.client().await;
    let gone = client_b
        .deregister_instance(instance("feed", "svc", "10.9.1.1", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&gone), SUCCESS);
    let gone_id = expected_id("feed", "svc", "10.9.1.1", 0);
    ids.remove(&gone_id);
    let on_a = listed_once(&a, "feed", "svc", |listed| *listed == ids).await;
    assert_eq!(on_a, ids);

    // A transaction that commits well after its row's mtime, past several reads of both
    // replicas and later than the recent reads look back (RECENT_OVERLAP, 1 s): the
    // slice read `feed_overlap` after the write still reads it.
    let service_id = scalar(&url, "SELECT COUNT(*) FROM service WHERE name = 'svc'");
    assert_eq!(service_id, 1);
    let late_url = url.clone();
    let late = std::thread::spawn(move || {
        with_connection(&late_url, async |conn| {
            use mysql_async::prelude::Queryable;
            conn.query_drop("START TRANSACTION").await.unwrap();
            conn.query_drop(
                "INSERT INTO instance (id, service_id, host, port, revision, ctime, mtime)
                 SELECT 'late-1', id, '10.9.9.9', 9, 'late', NOW(3), NOW(3)
                 FROM service WHERE name = 'svc'",
            )
            .await
            .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(1_600)).await;
            conn.query_drop("COMMIT").await.unwrap();
        })
    });
    late.join().unwrap();
    ids.insert("late-1".to_owned());
    for server in [&a, &b] {
        let listed = listed_once(server, "feed", "svc", |listed| listed.contains("late-1")).await;
        assert_eq!(listed, ids);
    }

    // A row marked as A's own write that A's cache never took (as when a commit
    // succeeded but A saw it fail): B lists it at its next read; A's frequent reads
    // leave it out, and the slice read `feed_overlap` (3 s) after the write brings it.
    let a_row = expected_id("feed", "svc", "10.9.1.1", 1);
    let writer_a = scalar(
        &url,
        &format!("SELECT writer FROM instance WHERE id = '{a_row}'"),
    );
    assert_ne!(writer_a, 0, "A marks the rows it writes");
    with_connection(&url, async move |conn| {
        use mysql_async::prelude::Queryable;
        conn.exec_drop(
            "INSERT INTO instance (id, service_id, host, port, revision, ctime, mtime, writer)
             SELECT 'own-1', id, '10.9.9.8', 8, 'own', NOW(3), NOW(3), ?
             FROM service WHERE name = 'svc'",
            (writer_a,),
        )
        .await
        .unwrap();
    });
    let written = std::time::Instant::now();
    ids.insert("own-1".to_owned());
    let on_b = listed_once(&b, "feed", "svc", |listed| listed.contains("own-1")).await;
    assert_eq!(on_b, ids);
    // No read of A can bring it before the slice that starts 3 s after the write; A has
    // made several frequent reads (every 100 ms) by the time it is asked.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    if written.elapsed() < std::time::Duration::from_millis(2_500) {
        let on_a = listed_once(&a, "feed", "svc", |_| true).await;
        assert!(
            !on_a.contains("own-1"),
            "A's frequent reads leave out its own rows"
        );
    }
    let on_a = listed_once(&a, "feed", "svc", |listed| listed.contains("own-1")).await;
    assert_eq!(on_a, ids);
    a.server.shutdown().await.unwrap();
    b.server.shutdown().await.unwrap();
}

/// More rows changed since the last read than one fetch of the feed takes (1,024): one
/// read applies every one, with its own port and metadata, whichever fetch brought it.
#[test]
fn one_read_applies_more_rows_than_one_fetch_takes() {
    use batchreg::discovery::cache::RegistryCache;
    use batchreg::discovery::feed::{FeedCursor, follow_once};
    const ROWS: u32 = 2_500;
    let Some(url) = fresh_database("feed_chunks") else {
        return;
    };
    let store = batchreg::store::open(&StoreOptions {
        url: url.clone(),
        sqlite_synchronous: batchreg::store::sqlite::Synchronous::Normal,
        concurrency: None,
    })
    .unwrap();
    let overlap = std::time::Duration::from_secs(5);
    let cache = RegistryCache::default();
    let cursor = FeedCursor::start(store.now().unwrap(), overlap);
    // Written by another process in one transaction, with the service it needs.
    let values = |row: &dyn Fn(u32) -> String| (0..ROWS).map(row).collect::<Vec<_>>().join(",");
    let instances =
        values(&|n| format!("('bulk-{n:04}', 'svc-id', '10.9.3.1', {n}, 'r{n}', NOW(3), NOW(3))"));
    let metadata = values(&|n| format!("('bulk-{n:04}', 'n', '{n}')"));
    admin(
        &url,
        &[
            "INSERT INTO namespace (name) VALUES ('bulk')".to_owned(),
            "INSERT INTO service (id, name, namespace) VALUES ('svc-id', 'svc', 'bulk')".to_owned(),
            "START TRANSACTION".to_owned(),
            format!(
                "INSERT INTO instance (id, service_id, host, port, revision, ctime, mtime)
                 VALUES {instances}"
            ),
            format!("INSERT INTO instance_metadata (id, mkey, mvalue) VALUES {metadata}"),
            "COMMIT".to_owned(),
        ],
    );
    let read = follow_once(store.as_ref(), &cache, &cursor, overlap).unwrap();
    assert_eq!(read.delays.len(), ROWS as usize, "each row applied once");
    assert_eq!(cache.instance_count(), ROWS as usize);
    for n in 0..ROWS {
        let id = format!("bulk-{n:04}");
        let (_, cached) = cache.instance(&id).expect("in the cache");
        let (record, _, _) = cached.stored();
        assert_eq!(
            (record.namespace.as_str(), record.service.as_str()),
            ("bulk", "svc")
        );
        assert_eq!(record.port, n, "{id}");
        assert_eq!(
            record.metadata,
            vec![("n".to_owned(), n.to_string())],
            "{id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_database_agree() {
    let Some(url) = fresh_database("cluster") else {
        return;
    };
    let (a, b) = (replica(&url).await, replica(&url).await);
    let (client_a, client_b) = (a.client().await, b.client().await);

    // 3,000 instances: 0..2000 through A, 1000..3000 through B, so 1,000 are sent to both
    // at the same moment: 4,000 requests.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..3_000u32 {
        let targets: &[(&str, _)] = match i {
            0..1_000 => &[("a", &client_a)],
            1_000..2_000 => &[("a", &client_a), ("b", &client_b)],
            _ => &[("b", &client_b)],
        };
        for (name, client) in targets {
            let (name, mut client) = (*name, (*client).clone());
            tasks.spawn(async move {
                let sent = instance("cluster", &format!("svc-{}", i % 5), "10.3.0.1", i);
                let answer = client
                    .register_instance(sent)
                    .await
                    .expect("gRPC OK")
                    .into_inner();
                (i, name, answer)
            });
        }
    }
    let mut answers: std::collections::HashMap<u32, Vec<u32>> = Default::default();
    let mut count = 0;
    while let Some(joined) = tasks.join_next().await {
        let (i, _, answer) = joined.unwrap();
        let id = expected_id("cluster", &format!("svc-{}", i % 5), "10.3.0.1", i);
        answers.entry(i).or_default().push(code(&answer));
        assert_eq!(answer.instance.unwrap().id.as_deref(), Some(id.as_str()));
        count += 1;
    }
    assert_eq!(count, 4_000);
    for (i, codes) in &answers {
        for c in codes {
            assert!(*c == SUCCESS || *c == EXISTED, "instance {i}: {codes:?}");
        }
        // The database held nothing before: at least one replica created it.
        assert!(codes.contains(&SUCCESS), "instance {i}: {codes:?}");
    }
    assert_eq!(
        scalar(&url, "SELECT count(*) FROM instance WHERE flag = 0"),
        3_000
    );
    assert_eq!(scalar(&url, "SELECT count(*) FROM health_check"), 3_000);
    assert_eq!(
        scalar(&url, "SELECT count(*) FROM instance_metadata"),
        9_000
    );
    assert_eq!(scalar(&url, "SELECT count(*) FROM service"), 5);
    assert_eq!(scalar(&url, "SELECT count(*) FROM namespace"), 1);

    // Re-registering through the other replica: the database holds this exact content.
    let mut client_b2 = client_b.clone();
    let again = client_b2
        .register_instance(instance("cluster", "svc-0", "10.3.0.1", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&again), EXISTED);

    // Deregister through A is seen by B: registering through B creates it anew.
    let mut client_a2 = client_a.clone();
    let gone = client_a2
        .deregister_instance(instance("cluster", "svc-0", "10.3.0.1", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&gone), SUCCESS);
    assert_eq!(
        scalar(&url, "SELECT count(*) FROM instance WHERE flag = 0"),
        2_999
    );
    let back = client_b2
        .register_instance(instance("cluster", "svc-0", "10.3.0.1", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&back), SUCCESS);
    assert_eq!(
        scalar(&url, "SELECT count(*) FROM instance WHERE flag = 0"),
        3_000
    );
    assert_eq!(
        scalar(&url, "SELECT count(*) FROM instance_metadata"),
        9_000
    );

    a.server.shutdown().await.unwrap();
    b.server.shutdown().await.unwrap();
}

fn record(port: u32, weight: u32) -> InstanceRecord {
    InstanceRecord {
        id: format!("killed-{port}"),
        namespace: "faults".to_owned(),
        service: "svc".to_owned(),
        vpc_id: String::new(),
        host: "10.4.0.1".to_owned(),
        port,
        protocol: String::new(),
        version: String::new(),
        priority: 0,
        weight,
        healthy: true,
        isolate: None,
        enable_health_check: false,
        health_check_ttl: None,
        logic_set: String::new(),
        region: String::new(),
        zone: String::new(),
        campus: String::new(),
        metadata: vec![("k".to_owned(), weight.to_string())],
    }
}

#[test]
fn a_batch_whose_connection_is_killed_is_retried_and_fully_written() {
    let Some(url) = fresh_database("killed") else {
        return;
    };
    let store = batchreg::store::open(&StoreOptions {
        url: url.clone(),
        sqlite_synchronous: Default::default(),
        concurrency: None,
    })
    .unwrap();
    let create = RegisterOptions {
        create_services: true,
    };
    let mut writer = store.writer().unwrap();
    assert_eq!(
        writer
            .register(&[record(1, 10)], create)
            .unwrap()
            .into_iter()
            .map(|r| r.outcome)
            .collect::<Vec<_>>(),
        vec![RegisterOutcome::Created]
    );

    // A second session holds instance 1's row lock: the batch will wait on it.
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder_url = url.clone();
    let holder = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            use mysql_async::prelude::Queryable;
            let pool = mysql_async::Pool::new(holder_url.as_str());
            let mut conn = pool.get_conn().await.unwrap();
            conn.query_drop("BEGIN").await.unwrap();
            conn.query_drop("SELECT id FROM instance WHERE id = 'killed-1' FOR UPDATE")
                .await
                .unwrap();
            locked_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            conn.query_drop("ROLLBACK").await.unwrap();
            drop(conn);
            pool.disconnect().await.unwrap();
        });
    });
    locked_rx.recv().unwrap();

    // Labels of this test's own, to count its retries.
    metrics::rendered();
    let labels = StoreMetrics::new("mysql", "killed_test", store.error_reasons());
    let mut resilient =
        ResilientWriter::new(store.writer().unwrap(), RetryPolicy::default(), labels);
    let batch = vec![record(1, 20), record(2, 20), record(3, 20)];
    let writing = std::thread::spawn(move || {
        let results = resilient.register(&batch, create);
        (results, resilient)
    });

    // Find the batch's connection waiting on the lock, and kill it.
    let database = url.rsplit('/').next().unwrap().to_owned();
    let waiting = format!(
        "SELECT COALESCE(MAX(id), 0) FROM information_schema.processlist
         WHERE db = '{database}' AND info LIKE 'SELECT id, revision, isolate, flag%'"
    );
    let mut victim = 0;
    for _ in 0..500 {
        victim = scalar(&url, &waiting);
        if victim != 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_ne!(victim, 0, "the batch is waiting on the held lock");
    admin(&url, &[format!("KILL {victim}")]);
    release_tx.send(()).unwrap();
    holder.join().unwrap();

    let (results, _resilient) = writing.join().unwrap();
    let retries = metrics::sum(
        &metrics::rendered(),
        "batchreg_store_retries_total",
        &[r#"operation="killed_test""#],
    );
    assert!(retries >= 1.0, "the killed transaction was retried");
    assert_eq!(
        results
            .iter()
            .map(|r| r.as_ref().expect("every row written").outcome)
            .collect::<Vec<_>>(),
        vec![
            RegisterOutcome::Replaced,
            RegisterOutcome::Created,
            RegisterOutcome::Created
        ]
    );
    let stored = store.instances_page("", 10).unwrap();
    assert_eq!(stored.len(), 3);
    for (port, stored) in (1..=3).zip(stored) {
        assert_eq!(stored.record.id, format!("killed-{port}"));
        assert_eq!(stored.record.weight, 20);
        assert_eq!(
            stored.record.metadata,
            vec![("k".to_owned(), "20".to_owned())]
        );
    }
    assert_eq!(
        scalar(&url, "SELECT count(*) FROM instance WHERE flag = 0"),
        3
    );
    assert_eq!(scalar(&url, "SELECT count(*) FROM instance_metadata"), 3);
}

#[test]
fn unreachable_database_fails_start_fast_with_a_clear_message() {
    if fresh_database("unreachable_probe").is_none() {
        return;
    }
    let started = std::time::Instant::now();
    let err = batchreg::store::open(&StoreOptions {
        url: "mysql://root:wrong-password@127.0.0.1:1/nothing".to_owned(),
        sqlite_synchronous: Default::default(),
        concurrency: None,
    })
    .err()
    .expect("no database there");
    let message = err.to_string();
    assert!(
        message.contains("cannot connect to the database at mysql://root@127.0.0.1:1/nothing"),
        "{message}"
    );
    assert!(!message.contains("wrong-password"), "{message}");
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
}
