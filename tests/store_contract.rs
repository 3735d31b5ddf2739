//! The store contract: every store implementation must pass these, through the `Store`
//! trait alone. Run against SQLite and MySQL.

#[path = "common/metrics.rs"]
mod metrics;
#[path = "common/mysql.rs"]
mod mysql;

use std::sync::Arc;

use mysql_async::prelude::Queryable;

use batchreg::store::resilient::{ResilientWriter, RetryPolicy};
use batchreg::store::{
    ChangedRow, DeregisterOutcome, HealthChange, InstanceRecord, RegisterOptions, RegisterOutcome,
    Registered, Store, StoreError, StoreOptions, StoreWriter, StoredInstance,
};
use batchreg::telemetry::StoreMetrics;

const CREATE: RegisterOptions = RegisterOptions {
    create_services: true,
};

fn record(service: &str, host: &str, port: u32) -> InstanceRecord {
    InstanceRecord {
        id: format!("id-{service}-{host}-{port}"),
        namespace: "contract".to_owned(),
        service: service.to_owned(),
        vpc_id: String::new(),
        host: host.to_owned(),
        port,
        protocol: "grpc".to_owned(),
        version: "1.0".to_owned(),
        priority: 0,
        weight: 100,
        healthy: true,
        isolate: None,
        enable_health_check: true,
        health_check_ttl: Some(5),
        logic_set: String::new(),
        region: "r".to_owned(),
        zone: "z".to_owned(),
        campus: "c".to_owned(),
        metadata: vec![
            ("a".to_owned(), "1".to_owned()),
            ("b".to_owned(), "2".to_owned()),
        ],
    }
}

/// Rows per page when the tests read instances back: small, so that paging is exercised.
const PAGE: usize = 3;

/// One stored instance, found by reading every page.
/// The rows `changed_between` reads, in its order.
fn changed(store: &dyn Store, from: &str, until: Option<&str>) -> Vec<ChangedRow> {
    let mut rows = Vec::new();
    store
        .changed_between(from, until, false, &mut |row| rows.push(row))
        .unwrap();
    rows
}

/// Registers three new instances of `service` through `writer`; returns the store's time
/// just before (clearly before their mtime) and the records.
fn three_created(
    store: &dyn Store,
    writer: &mut dyn StoreWriter,
    service: &str,
) -> (String, Vec<InstanceRecord>) {
    let since = store.now().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let rows: Vec<InstanceRecord> = (1..=3)
        .map(|i| record(service, &format!("10.0.8.{i}"), i))
        .collect();
    let outcomes = register(writer, &rows, CREATE).unwrap();
    assert_eq!(outcomes, vec![RegisterOutcome::Created; 3]);
    (since, rows)
}

/// A health transition of `record`'s instance (not isolated) to unhealthy.
fn turned_unhealthy(record: &InstanceRecord) -> HealthChange {
    HealthChange {
        record: InstanceRecord {
            healthy: false,
            ..record.clone()
        },
        isolate: false,
    }
}

/// The ids `changed_between` reads since `from`, sorted; with `others_only`, those last
/// written by another store.
fn changed_ids(store: &dyn Store, from: &str, others_only: bool) -> Vec<String> {
    let mut ids = Vec::new();
    store
        .changed_between(from, None, others_only, &mut |row| ids.push(row.id))
        .unwrap();
    ids.sort();
    ids
}

fn instance(store: &dyn Store, id: &str) -> Result<Option<StoredInstance>, StoreError> {
    let mut after = String::new();
    loop {
        let page = store.instances_page(&after, PAGE)?;
        if let Some(found) = page.iter().find(|i| i.record.id == id) {
            return Ok(Some(found.clone()));
        }
        match page.last() {
            Some(last) if page.len() == PAGE => after = last.record.id.clone(),
            _ => return Ok(None),
        }
    }
}

/// What each row's write did, as the store reports it.
fn register(
    writer: &mut dyn StoreWriter,
    rows: &[InstanceRecord],
    options: RegisterOptions,
) -> Result<Vec<RegisterOutcome>, StoreError> {
    Ok(writer
        .register(rows, options)?
        .into_iter()
        .map(|r| r.outcome)
        .collect())
}

/// What each row's write did, through the retrying writer.
fn resilient_register(
    writer: &mut ResilientWriter,
    rows: &[InstanceRecord],
) -> Vec<Result<RegisterOutcome, Arc<StoreError>>> {
    writer
        .register(rows, CREATE)
        .into_iter()
        .map(|result| result.map(|r| r.outcome))
        .collect()
}

/// Labels of a test's own writer: the metrics of every test binary share one recorder.
fn labels(store: &dyn Store, operation: &'static str) -> StoreMetrics {
    metrics::rendered();
    StoreMetrics::new(store.engine(), operation, store.error_reasons())
}

/// Every contract case, against one store.
pub fn run_contract(open: &dyn Fn() -> Arc<dyn Store>) {
    new_instances_are_created_and_read_back(open().as_ref());
    unchanged_writes_nothing_changed_replaces_in_place(open().as_ref());
    omitted_isolate_keeps_the_stored_flag(open().as_ref());
    missing_services_are_not_created_when_not_allowed(open().as_ref());
    a_bad_row_does_not_fail_its_batch_mates(open().as_ref());
    deregister_marks_the_row_and_lists_it_no_more(open().as_ref());
    a_write_reports_exactly_what_is_stored(open().as_ref());
    changes_are_read_since_a_time(open().as_ref());
    a_read_of_others_changes_leaves_out_every_write_of_this_store(open().as_ref());
    batches_larger_than_one_statement_are_chunked(open().as_ref());
    names_that_differ_only_in_case_are_distinct(open().as_ref());
    ids_and_keys_that_differ_only_in_trailing_spaces_are_distinct(open().as_ref());
    instances_are_read_in_pages_in_id_order(open().as_ref());
}

fn instances_are_read_in_pages_in_id_order(store: &dyn Store) {
    let mut writer = store.writer().unwrap();
    let mut rows: Vec<InstanceRecord> = (0..10)
        .map(|i| {
            let mut row = record(&format!("s{}", i % 3), &format!("10.9.0.{i}"), 100 + i);
            row.metadata = (0..i % 4)
                .map(|k| (format!("k{k}"), format!("{i}-{k}")))
                .collect();
            row
        })
        .collect();
    assert_eq!(
        register(writer.as_mut(), &rows, CREATE).unwrap(),
        vec![RegisterOutcome::Created; 10]
    );
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    let mut read = Vec::new();
    let mut sizes = Vec::new();
    let mut after = String::new();
    loop {
        let page = store.instances_page(&after, 4).unwrap();
        sizes.push(page.len());
        let Some(last) = page.last() else { break };
        after = last.record.id.clone();
        read.extend(page);
    }
    assert_eq!(sizes, [4, 4, 2, 0]);
    let records: Vec<InstanceRecord> = read.into_iter().map(|stored| stored.record).collect();
    let expected: Vec<InstanceRecord> = rows
        .into_iter()
        .map(|mut row| {
            row.isolate = Some(false);
            row
        })
        .collect();
    assert_eq!(
        records, expected,
        "every row with its own metadata, in id order"
    );
}

fn new_instances_are_created_and_read_back(store: &dyn Store) {
    let mut writer = store.writer().unwrap();
    let rows = vec![
        record("a", "10.0.0.1", 1),
        record("a", "10.0.0.2", 2),
        record("b", "10.0.0.1", 3),
    ];
    let outcomes = register(writer.as_mut(), &rows, CREATE).unwrap();
    assert_eq!(outcomes, vec![RegisterOutcome::Created; 3]);
    for row in &rows {
        let stored = instance(store, &row.id).unwrap().expect("stored");
        let mut expected = row.clone();
        expected.isolate = Some(false);
        assert_eq!(stored.record, expected);
        assert!(!stored.isolate);
        assert_eq!(stored.revision, row.revision(false));
        assert_eq!(stored.ctime, stored.mtime);
    }
    let service_a = instance(store, &rows[0].id).unwrap().unwrap().service_id;
    assert_eq!(
        instance(store, &rows[1].id).unwrap().unwrap().service_id,
        service_a
    );
    assert_ne!(
        instance(store, &rows[2].id).unwrap().unwrap().service_id,
        service_a
    );
}

fn unchanged_writes_nothing_changed_replaces_in_place(store: &dyn Store) {
    let mut writer = store.writer().unwrap();
    let original = record("a", "10.0.0.1", 1);
    register(writer.as_mut(), std::slice::from_ref(&original), CREATE).unwrap();
    let before = instance(store, &original.id).unwrap().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));

    // Twice: a store may answer a batch after a write and one after a batch that wrote
    // nothing by different paths (MySQL looks the second up without a transaction).
    for _ in 0..2 {
        let outcomes = register(writer.as_mut(), std::slice::from_ref(&original), CREATE).unwrap();
        assert_eq!(outcomes, vec![RegisterOutcome::Unchanged]);
        assert_eq!(
            instance(store, &original.id).unwrap().unwrap(),
            before,
            "nothing rewritten"
        );
    }
    let newcomer = record("a", "10.0.0.9", 9);
    let outcomes = register(
        writer.as_mut(),
        &[original.clone(), newcomer.clone()],
        CREATE,
    )
    .unwrap();
    assert_eq!(
        outcomes,
        vec![RegisterOutcome::Unchanged, RegisterOutcome::Created]
    );
    assert_eq!(instance(store, &original.id).unwrap().unwrap(), before);
    assert!(instance(store, &newcomer.id).unwrap().is_some());

    let mut changed = original.clone();
    changed.weight = 5;
    changed.metadata = vec![("c".to_owned(), "3".to_owned())];
    changed.enable_health_check = false;
    changed.health_check_ttl = None;
    let outcomes = register(writer.as_mut(), std::slice::from_ref(&changed), CREATE).unwrap();
    assert_eq!(outcomes, vec![RegisterOutcome::Replaced]);
    let after = instance(store, &original.id).unwrap().unwrap();
    assert_eq!(after.ctime, before.ctime);
    assert_ne!(after.mtime, before.mtime);
    assert_eq!(after.record.weight, 5);
    assert_eq!(
        after.record.metadata, changed.metadata,
        "metadata replaced as a whole"
    );
    assert_eq!(after.record.health_check_ttl, None);
}

fn omitted_isolate_keeps_the_stored_flag(store: &dyn Store) {
    let mut writer = store.writer().unwrap();
    let mut isolated = record("a", "10.0.0.9", 9);
    isolated.isolate = Some(true);
    register(writer.as_mut(), std::slice::from_ref(&isolated), CREATE).unwrap();
    let mut omitted = isolated.clone();
    omitted.isolate = None;
    // Same content with the stored flag: unchanged.
    assert_eq!(
        register(writer.as_mut(), std::slice::from_ref(&omitted), CREATE).unwrap(),
        vec![RegisterOutcome::Unchanged]
    );
    omitted.version = "2.0".to_owned();
    assert_eq!(
        register(writer.as_mut(), std::slice::from_ref(&omitted), CREATE).unwrap(),
        vec![RegisterOutcome::Replaced]
    );
    assert!(instance(store, &isolated.id).unwrap().unwrap().isolate);
}

fn missing_services_are_not_created_when_not_allowed(store: &dyn Store) {
    let mut writer = store.writer().unwrap();
    register(writer.as_mut(), &[record("known", "10.0.0.1", 1)], CREATE).unwrap();
    let rows = vec![
        record("known", "10.0.0.1", 2),
        record("unknown", "10.0.0.1", 3),
    ];
    let outcomes = register(
        writer.as_mut(),
        &rows,
        RegisterOptions {
            create_services: false,
        },
    )
    .unwrap();
    assert_eq!(
        outcomes,
        vec![RegisterOutcome::Created, RegisterOutcome::ServiceNotFound]
    );
    assert!(instance(store, &rows[1].id).unwrap().is_none());
}

fn a_bad_row_does_not_fail_its_batch_mates(store: &dyn Store) {
    let mut writer = ResilientWriter::new(
        store.writer().unwrap(),
        RetryPolicy::default(),
        labels(store, "contract_bad_row"),
    );
    let mut rows: Vec<InstanceRecord> = (0..10).map(|i| record("split", "10.0.1.1", i)).collect();
    // Past the host column's limit: only validation in front of the store would stop it.
    rows[6].host = "h".repeat(200);
    let results = resilient_register(&mut writer, &rows);
    assert_eq!(results.len(), 10);
    for (i, result) in results.iter().enumerate() {
        if i == 6 {
            assert!(result.is_err(), "the bad row fails");
            assert!(instance(store, &rows[i].id).unwrap().is_none());
        } else {
            assert_eq!(
                result.as_ref().ok(),
                Some(&RegisterOutcome::Created),
                "row {i}"
            );
            assert!(instance(store, &rows[i].id).unwrap().is_some());
        }
    }
}

/// Deregistration is a soft delete: the row stays, marked, so that other replicas' change
/// feeds see it; its metadata and health check go; it is no longer listed; it is purged
/// after the retention.
fn deregister_marks_the_row_and_lists_it_no_more(store: &dyn Store) {
    let mut writer = store.writer().unwrap();
    let rows = vec![record("d", "10.0.0.1", 1), record("d", "10.0.0.1", 2)];
    let before = store.now().unwrap();
    register(writer.as_mut(), &rows, CREATE).unwrap();
    let ids = vec![rows[0].id.clone(), "never-registered".to_owned()];
    let outcomes = writer.deregister(&ids).unwrap();
    let DeregisterOutcome::Deleted { at } = &outcomes[0] else {
        panic!("{outcomes:?}");
    };
    assert!(*at >= before, "{at} < {before}");
    assert_eq!(outcomes[1], DeregisterOutcome::Absent);
    assert!(instance(store, &rows[0].id).unwrap().is_none());
    assert!(instance(store, &rows[1].id).unwrap().is_some());
    let marked: Vec<ChangedRow> = changed(store, &before, None)
        .into_iter()
        .filter(|row| row.id == rows[0].id)
        .collect();
    assert_eq!(marked.len(), 1);
    assert!(marked[0].deleted);
    assert_eq!(&marked[0].mtime, at);
    // Deregistered again: nothing to do.
    assert_eq!(
        writer.deregister(&ids[..1]).unwrap(),
        vec![DeregisterOutcome::Absent]
    );

    // Registered again after a deregister: a new instance, no stale metadata.
    let outcomes = register(writer.as_mut(), &rows[..1], CREATE).unwrap();
    assert_eq!(outcomes, vec![RegisterOutcome::Created]);
    assert_eq!(
        instance(store, &rows[0].id)
            .unwrap()
            .unwrap()
            .record
            .metadata,
        rows[0].metadata
    );

    // The purge deletes rows deregistered before its time, and only those.
    writer.deregister(&[rows[1].id.clone()]).unwrap();
    assert_eq!(store.purge_deregistered(&before, 100).unwrap(), 0);
    std::thread::sleep(std::time::Duration::from_millis(5));
    let after = store.now().unwrap();
    assert_eq!(store.purge_deregistered(&after, 100).unwrap(), 1);
    let left: Vec<String> = changed(store, &before, None)
        .into_iter()
        .map(|row| row.id)
        .collect();
    assert_eq!(left, vec![rows[0].id.clone()]);
}

/// What a write reports as stored is what the store then reads back: the registry
/// cache is built from both.
fn a_write_reports_exactly_what_is_stored(store: &dyn Store) {
    let mut writer = store.writer().unwrap();
    let mut isolated = record("exact", "10.0.5.1", 1);
    isolated.isolate = Some(true);
    let plain = record("exact", "10.0.5.2", 2);
    let check = |result: &Registered, id: &str| {
        let stored = result.stored.as_ref().expect("stored");
        let read = instance(store, id).unwrap().expect("listed");
        assert_eq!(
            (
                &stored.revision,
                stored.isolate,
                &stored.ctime,
                &stored.mtime,
                &stored.service.id
            ),
            (
                &read.revision,
                read.isolate,
                &read.ctime,
                &read.mtime,
                &read.service_id
            ),
            "{id}"
        );
    };
    let first = writer
        .register(&[isolated.clone(), plain.clone()], CREATE)
        .unwrap();
    check(&first[0], &isolated.id);
    check(&first[1], &plain.id);

    std::thread::sleep(std::time::Duration::from_millis(5));
    // Isolate omitted: the stored flag is kept.
    let mut omitted = isolated.clone();
    omitted.isolate = None;
    let mut changed = plain.clone();
    changed.weight = 7;
    let second = writer.register(&[omitted, changed], CREATE).unwrap();
    assert_eq!(second[0].outcome, RegisterOutcome::Unchanged);
    assert_eq!(second[1].outcome, RegisterOutcome::Replaced);
    check(&second[0], &isolated.id);
    check(&second[1], &plain.id);
    assert!(second[0].stored.as_ref().unwrap().isolate);
    let (before, after) = (
        first[1].stored.as_ref().unwrap(),
        second[1].stored.as_ref().unwrap(),
    );
    assert_eq!(before.ctime, after.ctime, "ctime kept");
    assert!(after.mtime > before.mtime, "mtime moved");
}

/// Every kind of write a store makes (create, replace, health, deregister, by any of its
/// writers) marks the row as its own: a read of others' changes leaves them all out, a
/// plain read lists them all.
fn a_read_of_others_changes_leaves_out_every_write_of_this_store(store: &dyn Store) {
    let (mut first, mut second) = (store.writer().unwrap(), store.writer().unwrap());
    let (since, rows) = three_created(store, first.as_mut(), "own");
    let mut replaced = rows[2].clone();
    replaced.weight = 9;
    let outcomes = register(second.as_mut(), &[replaced], CREATE).unwrap();
    assert_eq!(outcomes, vec![RegisterOutcome::Replaced]);
    let health = first.set_health(&[turned_unhealthy(&rows[0])]).unwrap();
    assert!(health[0].is_some(), "the health change is written");
    second.deregister(&[rows[1].id.clone()]).unwrap();

    let mut all: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    all.sort();
    assert_eq!(changed_ids(store, &since, false), all);
    assert_eq!(changed_ids(store, &since, true), Vec::<String>::new());
}

/// The change feed's reads: the rows written since a time or between two, the live
/// instances among a set of ids, the services written since a time.
fn changes_are_read_since_a_time(store: &dyn Store) {
    let mut writer = store.writer().unwrap();
    let start = store.now().unwrap();
    let old = record("feed-old", "10.0.6.1", 1);
    register(writer.as_mut(), std::slice::from_ref(&old), CREATE).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let since = store.now().unwrap();
    // The writers stamp times on batchreg's clock, aligned with the database's to within
    // a millisecond or so: what is written next must be clearly after `since`.
    std::thread::sleep(std::time::Duration::from_millis(5));
    let rows = vec![record("feed", "10.0.6.2", 2), record("feed", "10.0.6.3", 3)];
    let results = writer.register(&rows, CREATE).unwrap();
    writer.deregister(&[rows[0].id.clone()]).unwrap();

    let between: Vec<String> = changed(store, &start, Some(&since))
        .into_iter()
        .map(|row| row.id)
        .collect();
    assert_eq!(
        between,
        vec![old.id.clone()],
        "only the row written between"
    );
    let mut changed = changed(store, &since, None);
    changed.sort_by(|a, b| a.id.cmp(&b.id));
    let mut expected: Vec<(String, bool)> =
        vec![(rows[0].id.clone(), true), (rows[1].id.clone(), false)];
    expected.sort();
    assert_eq!(
        changed
            .iter()
            .map(|row| (row.id.clone(), row.deleted))
            .collect::<Vec<_>>(),
        expected,
        "the old row is not among them"
    );
    let live = changed.iter().find(|row| row.id == rows[1].id).unwrap();
    assert_eq!(live.revision, results[1].stored.as_ref().unwrap().revision);

    let ids = vec![rows[1].id.clone(), rows[0].id.clone(), "unknown".to_owned()];
    let read = store.instances(&ids).unwrap();
    assert_eq!(read.len(), 1, "only the live one");
    assert_eq!(read[0].record.id, rows[1].id);
    assert_eq!(read[0].record.metadata, rows[1].metadata);

    let services: Vec<String> = store
        .services(Some(&since))
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(services, vec!["feed".to_owned()]);
    let all = store.services(None).unwrap();
    assert!(all.iter().any(|s| s.name == "feed-old"));
}

fn batches_larger_than_one_statement_are_chunked(store: &dyn Store) {
    let mut writer = store.writer().unwrap();
    // 5,000 rows × 19 columns is past any engine's placeholder limit for one statement.
    let rows: Vec<InstanceRecord> = (0..5_000).map(|i| record("big", "10.9.0.1", i)).collect();
    let outcomes = register(writer.as_mut(), &rows, CREATE).unwrap();
    assert!(outcomes.iter().all(|o| *o == RegisterOutcome::Created));
    for i in [0, 1_234, 4_999] {
        let stored = instance(store, &rows[i].id).unwrap().unwrap();
        assert_eq!(stored.record.metadata.len(), 2);
        assert_eq!(stored.record.health_check_ttl, Some(5));
    }
    let outcomes = register(writer.as_mut(), &rows, CREATE).unwrap();
    assert!(outcomes.iter().all(|o| *o == RegisterOutcome::Unchanged));
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let outcomes = writer.deregister(&ids).unwrap();
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, DeregisterOutcome::Deleted { .. }))
    );
}

/// Ids, metadata keys and service names are compared byte for byte, as the naming layer
/// and SQLite compare them: `Svc` and `svc` are two services, `Env` and `env` two keys.
fn names_that_differ_only_in_case_are_distinct(store: &dyn Store) {
    let mut writer = store.writer().unwrap();
    let mut lower = record("svc", "10.0.0.1", 1);
    lower.id = "instance-a".to_owned();
    lower.metadata = vec![
        ("Env".to_owned(), "1".to_owned()),
        ("env".to_owned(), "2".to_owned()),
    ];
    let mut upper = record("Svc", "10.0.0.1", 1);
    upper.id = "INSTANCE-A".to_owned();
    let outcomes = register(writer.as_mut(), &[lower.clone(), upper.clone()], CREATE).unwrap();
    assert_eq!(outcomes, vec![RegisterOutcome::Created; 2]);
    let stored_lower = instance(store, &lower.id)
        .unwrap()
        .expect("lower-case id stored");
    let stored_upper = instance(store, &upper.id)
        .unwrap()
        .expect("upper-case id stored");
    assert_eq!(stored_lower.record.id, "instance-a");
    assert_eq!(stored_lower.record.service, "svc");
    assert_eq!(stored_lower.record.metadata, lower.metadata);
    assert_eq!(stored_upper.record.id, "INSTANCE-A");
    assert_eq!(stored_upper.record.service, "Svc");
    assert_ne!(stored_lower.service_id, stored_upper.service_id);
    // Registered again, each is unchanged, not mistaken for the other.
    let outcomes = register(writer.as_mut(), &[upper.clone(), lower.clone()], CREATE).unwrap();
    assert_eq!(outcomes, vec![RegisterOutcome::Unchanged; 2]);
    let outcomes = writer.deregister(&["INSTANCE-A".to_owned()]).unwrap();
    assert!(matches!(outcomes[..], [DeregisterOutcome::Deleted { .. }]));
    assert!(
        instance(store, &lower.id).unwrap().is_some(),
        "the other case is kept"
    );
}

/// Trailing spaces count too: `pad` and `pad ` are two instances, `k` and `k ` two keys
/// (a collation that pads would make each pair one), and paging by id reads each once.
fn ids_and_keys_that_differ_only_in_trailing_spaces_are_distinct(store: &dyn Store) {
    let mut writer = store.writer().unwrap();
    let rows: Vec<InstanceRecord> = ["pad", "pad ", "pad\t", "pad  "]
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let mut row = record("svc", "10.0.0.1", i as u32);
            row.id = (*id).to_owned();
            row.metadata = ["k", "k ", "k\t", "k  "]
                .iter()
                .map(|key| ((*key).to_owned(), format!("{id}|{key}")))
                .collect();
            row.metadata.sort();
            row
        })
        .collect();
    let outcomes = register(writer.as_mut(), &rows, CREATE).unwrap();
    assert_eq!(outcomes, vec![RegisterOutcome::Created; rows.len()]);
    for row in &rows {
        let stored = instance(store, &row.id).unwrap().expect("each id stored");
        assert_eq!(stored.record.id, row.id);
        assert_eq!(stored.record.port, row.port, "{:?} is its own row", row.id);
        assert_eq!(stored.record.metadata, row.metadata);
    }
    let mut ids = Vec::new();
    let mut after = String::new();
    loop {
        let page = store.instances_page(&after, 2).unwrap();
        let Some(last) = page.last() else { break };
        after = last.record.id.clone();
        ids.extend(page.into_iter().map(|i| i.record.id));
    }
    let mut expected: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    expected.sort();
    assert_eq!(ids, expected, "each read once, in byte order");
}

/// Opens the store at `url` with `concurrency` workers (the store's default when `None`).
fn open(url: String, concurrency: Option<usize>) -> Arc<dyn Store> {
    batchreg::store::open(&StoreOptions {
        url,
        sqlite_synchronous: batchreg::store::sqlite::Synchronous::Normal,
        concurrency: concurrency.and_then(std::num::NonZeroUsize::new),
    })
    .unwrap()
}

#[test]
fn sqlite_store_meets_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let counter = std::sync::atomic::AtomicUsize::new(0);
    run_contract(&|| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let url = format!(
            "sqlite://{}",
            dir.path().join(format!("contract-{n}.db")).display()
        );
        open(url, None)
    });
}

#[test]
fn mysql_store_meets_the_contract() {
    let counter = std::sync::atomic::AtomicUsize::new(0);
    if mysql::fresh_database("contract_probe").is_none() {
        return;
    }
    run_contract(&|| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let url = mysql::fresh_database(&format!("contract_{n}")).unwrap();
        open(url, None)
    });
}

/// Two stores on one database, as two replicas: each one's read of others' changes lists
/// the rows the other wrote last, whatever the kind of write, and none of its own.
#[test]
fn mysql_replicas_read_each_others_changes_and_not_their_own() {
    let Some(url) = mysql::fresh_database("others_changes") else {
        return;
    };
    let (a, b) = (open(url.clone(), None), open(url, None));
    let (mut writer_a, mut writer_b) = (a.writer().unwrap(), b.writer().unwrap());
    let (since, rows) = three_created(a.as_ref(), writer_a.as_mut(), "replicas");
    let ids = |rows: &[&InstanceRecord]| -> Vec<String> {
        let mut ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        ids.sort();
        ids
    };
    assert_eq!(
        changed_ids(b.as_ref(), &since, true),
        ids(&[&rows[0], &rows[1], &rows[2]])
    );
    assert_eq!(changed_ids(a.as_ref(), &since, true), Vec::<String>::new());

    // B changes the health of one and deregisters another: A reads both, B neither.
    writer_b.set_health(&[turned_unhealthy(&rows[0])]).unwrap();
    writer_b.deregister(&[rows[1].id.clone()]).unwrap();
    assert_eq!(
        changed_ids(a.as_ref(), &since, true),
        ids(&[&rows[0], &rows[1]])
    );
    assert_eq!(changed_ids(b.as_ref(), &since, true), ids(&[&rows[2]]));

    // A replaces the one B changed: it is A's again.
    let mut replaced = rows[0].clone();
    replaced.weight = 3;
    let outcomes = register(writer_a.as_mut(), &[replaced], CREATE).unwrap();
    assert_eq!(outcomes, vec![RegisterOutcome::Replaced]);
    assert_eq!(changed_ids(a.as_ref(), &since, true), ids(&[&rows[1]]));
    assert_eq!(
        changed_ids(b.as_ref(), &since, true),
        ids(&[&rows[0], &rows[2]])
    );
}

/// Two workers writing at once, round after round, keep using the connections they
/// opened: a connection closed and reopened per batch would cost a connect and new
/// prepared statements every time.
#[test]
fn mysql_writers_keep_their_connections() {
    let Some(url) = mysql::fresh_database("pool_reuse") else {
        return;
    };
    let store = open(url.clone(), Some(2));
    let mut writers = [store.writer().unwrap(), store.writer().unwrap()];
    let mut first = std::collections::BTreeSet::new();
    let mut opened_later = std::collections::BTreeSet::new();
    for round in 0..20u32 {
        std::thread::scope(|scope| {
            for (w, writer) in writers.iter_mut().enumerate() {
                scope.spawn(move || {
                    let row = record("pool", &format!("10.1.{w}.{round}"), 80);
                    let outcomes = register(writer.as_mut(), &[row], CREATE).unwrap();
                    assert_eq!(outcomes, [RegisterOutcome::Created]);
                });
            }
        });
        let ids = mysql::connection_ids(&url);
        if round == 0 {
            // The workers' connections, and the pool's (one or two, as its connections
            // came back in time for the clock read at open or not).
            first.extend(ids);
        } else {
            opened_later.extend(ids.into_iter().filter(|id| !first.contains(id)));
        }
    }
    assert_eq!(mysql::scalar(&url, "SELECT COUNT(*) FROM instance"), 40);
    assert!(
        first.len() >= 2,
        "the two workers' connections are listed: {first:?}"
    );
    assert!(
        opened_later.is_empty(),
        "connections opened after the first round: {opened_later:?} (first: {first:?})"
    );
}

/// A new instance that another writer inserts between this batch's look-up and its own
/// insert: the insert fails, the batch is tried again, finds the row and replaces it,
/// metadata and all.
#[test]
fn mysql_an_instance_inserted_meanwhile_is_replaced_on_retry() {
    let Some(url) = mysql::fresh_database("raced") else {
        return;
    };
    let store = open(url.clone(), None);
    // The batch looks both up in id order: `new` (not stored yet) first, then `held`.
    let new = record("race", "10.2.0.1", 1);
    let held = record("race", "10.2.0.9", 9);
    assert!(new.id < held.id);
    let mut writer = ResilientWriter::new(
        store.writer().unwrap(),
        RetryPolicy::default(),
        labels(store.as_ref(), "raced_test"),
    );
    assert!(matches!(
        resilient_register(&mut writer, std::slice::from_ref(&held))[..],
        [Ok(RegisterOutcome::Created)]
    ));
    // After a batch that wrote nothing the writer takes its full path (a locking read
    // first), not the plain insert it tries after a batch of new instances only.
    assert!(matches!(
        resilient_register(&mut writer, std::slice::from_ref(&held))[..],
        [Ok(RegisterOutcome::Unchanged)]
    ));

    let (locked, held_locked) = std::sync::mpsc::channel();
    let (new_id, held_id) = (new.id.clone(), held.id.clone());
    let other = std::thread::spawn(move || {
        mysql::with_connection(&url, async move |conn| {
            conn.query_drop("START TRANSACTION").await.unwrap();
            let _: Vec<String> = conn
                .exec(
                    "SELECT id FROM instance WHERE id = ? FOR UPDATE",
                    (&held_id,),
                )
                .await
                .unwrap();
            locked.send(()).unwrap();
            // The batch has looked `new` up (not there) and waits for `held`'s lock: its
            // locking read has been running for a second.
            let mut polls = 0;
            loop {
                let waiting: Option<i64> = conn
                    .query_first(
                        "SELECT COUNT(*) FROM information_schema.PROCESSLIST
                         WHERE DB = DATABASE() AND ID <> CONNECTION_ID() AND TIME >= 1
                           AND INFO LIKE 'SELECT id, revision, isolate, flag%FOR UPDATE'",
                    )
                    .await
                    .unwrap();
                if waiting.unwrap_or(0) > 0 {
                    break;
                }
                polls += 1;
                assert!(polls < 3_000, "the batch never waited for the held row");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            conn.exec_drop(
                "INSERT INTO instance (id, service_id, host, port, revision)
                 VALUES (?, 'other', '10.9.9.9', 9, 'other')",
                (&new_id,),
            )
            .await
            .unwrap();
            conn.exec_drop(
                "INSERT INTO instance_metadata (id, mkey, mvalue) VALUES (?, 'stale', 'x')",
                (&new_id,),
            )
            .await
            .unwrap();
            conn.query_drop("COMMIT").await.unwrap();
        })
    });
    held_locked.recv().unwrap();
    let results = resilient_register(&mut writer, &[new.clone(), held.clone()]);
    other.join().unwrap();

    assert!(
        matches!(
            results[..],
            [
                Ok(RegisterOutcome::Replaced),
                Ok(RegisterOutcome::Unchanged)
            ]
        ),
        "{results:?}"
    );
    // Exactly one retry, for the race.
    let rendered = metrics::rendered();
    let retries = |labels: &[&str]| metrics::sum(&rendered, "batchreg_store_retries_total", labels);
    assert_eq!(retries(&[r#"operation="raced_test""#]), 1.0);
    assert_eq!(
        retries(&[r#"operation="raced_test""#, r#"reason="raced""#]),
        1.0
    );
    let stored = instance(store.as_ref(), &new.id).unwrap().unwrap();
    assert_eq!(stored.record.host, new.host);
    assert_eq!(
        stored.record.metadata, new.metadata,
        "the stale entry is gone"
    );
    assert_eq!(stored.record.health_check_ttl, new.health_check_ttl);
}

/// A database made before names compared byte for byte (only 0001 applied, rows stored)
/// is converted in place at start-up: its rows are kept, and case-distinct names work.
#[test]
fn mysql_a_database_from_the_first_migration_is_upgraded_in_place() {
    let Some(url) = mysql::fresh_database("upgrade") else {
        return;
    };
    let old = record("kept", "10.3.0.1", 1);
    open(url.clone(), None)
        .writer()
        .unwrap()
        .register(std::slice::from_ref(&old), CREATE)
        .unwrap();
    // Undo 0002 to stand for a database written by the old server.
    let mut undo = vec!["DELETE FROM batchreg_migrations WHERE version = 2".to_owned()];
    for table in [
        "namespace",
        "service",
        "instance",
        "health_check",
        "instance_metadata",
    ] {
        undo.push(format!(
            "ALTER TABLE {table} CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"
        ));
    }
    mysql::admin(&url, &undo);

    let store = open(url.clone(), None);
    let binary = "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()
         AND TABLE_NAME IN ('namespace', 'service', 'instance', 'health_check', 'instance_metadata')
         AND COLLATION_NAME IS NOT NULL AND COLLATION_NAME <> 'utf8mb4_bin'";
    assert_eq!(
        mysql::scalar(&url, binary),
        0,
        "every text column compares bytes"
    );
    assert_eq!(
        mysql::scalar(&url, "SELECT COUNT(*) FROM batchreg_migrations"),
        batchreg::store::migrate::MYSQL.len() as i64
    );
    let mut writer = store.writer().unwrap();
    let stored = instance(store.as_ref(), &old.id)
        .unwrap()
        .expect("row kept");
    assert_eq!(stored.record.metadata, old.metadata);
    let mut other_case = old.clone();
    other_case.id = old.id.to_uppercase();
    assert_eq!(
        register(writer.as_mut(), &[old.clone(), other_case], CREATE).unwrap(),
        vec![RegisterOutcome::Unchanged, RegisterOutcome::Created]
    );
}
