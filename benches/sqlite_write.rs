//! The SQLite store's batch write: one transaction of 128 (and 512) instances with 3
//! metadata entries and a heartbeat ttl each, fresh and unchanged, on a file in a temp
//! folder with the default (FULL) sync.

use batchreg::store::sqlite::Synchronous;
use batchreg::store::{InstanceRecord, RegisterOptions, StoreOptions};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

fn record(n: u64) -> InstanceRecord {
    let host = format!("10.{}.{}.{}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff);
    InstanceRecord {
        id: batchreg::naming::instance_id::instance_id("bench", "svc", "", &host, 8080),
        namespace: "bench".to_owned(),
        service: format!("svc-{}", n % 10),
        vpc_id: String::new(),
        host,
        port: 8080,
        protocol: "grpc".to_owned(),
        version: "1.0.0".to_owned(),
        priority: 0,
        weight: 100,
        healthy: true,
        isolate: None,
        enable_health_check: true,
        health_check_ttl: Some(5),
        logic_set: String::new(),
        region: String::new(),
        zone: String::new(),
        campus: String::new(),
        metadata: (0..3)
            .map(|k| (format!("k{k}"), format!("value-{n}-{k}")))
            .collect(),
    }
}

const CREATE: RegisterOptions = RegisterOptions {
    create_services: true,
};

fn batch_write(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = batchreg::store::open(&StoreOptions {
        url: format!("sqlite://{}", dir.path().join("bench.db").display()),
        sqlite_synchronous: Synchronous::Full,
        concurrency: None,
    })
    .unwrap();
    let mut writer = store.writer().unwrap();
    let mut next = 0u64;
    let mut group = c.benchmark_group("sqlite_register");
    for size in [128u64, 512] {
        group.throughput(Throughput::Elements(size));
        group.bench_function(format!("fresh_{size}"), |b| {
            b.iter_batched(
                || {
                    let rows: Vec<_> = (next..next + size).map(record).collect();
                    next += size;
                    rows
                },
                |rows| writer.register(&rows, CREATE).unwrap(),
                BatchSize::SmallInput,
            );
        });
        let unchanged: Vec<_> = (0..size).map(record).collect();
        group.bench_function(format!("unchanged_{size}"), |b| {
            b.iter(|| writer.register(&unchanged, CREATE).unwrap());
        });
    }
    group.finish();
}

criterion_group!(benches, batch_write);
criterion_main!(benches);
