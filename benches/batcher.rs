//! The batch layer alone, with a store that does nothing: how many requests per second
//! the queue → store worker → reply path carries, and what one push costs in the
//! batcher state machine.

use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use batchreg::batch::{BatchController, BatchSettings, BatchWrite, Batcher};
use batchreg::store::resilient::{OutageWatch, RowResult};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// A store worker that writes nothing and answers every op at once.
struct NullWrite;

impl BatchWrite for NullWrite {
    type Op = (String, u32);
    type Outcome = u32;

    fn key(op: &(String, u32)) -> &str {
        &op.0
    }

    fn outage(&self) -> OutageWatch {
        OutageWatch::default()
    }

    fn write(&mut self, ops: &[(String, u32)]) -> Vec<RowResult<u32>> {
        ops.iter().map(|(_, v)| Ok(*v)).collect()
    }
}

fn settings() -> BatchSettings {
    BatchSettings {
        queue_size: NonZeroUsize::new(10_240).unwrap(),
        max_batch: NonZeroUsize::new(128).unwrap(),
        max_wait: Duration::from_millis(32),
        task_life: Duration::from_secs(30),
        max_queue_wait: Duration::ZERO,
    }
}

/// 10,000 requests submitted by 512 concurrent tokio tasks, each awaiting its answer.
fn controller_round_trip(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let controller =
        std::sync::Arc::new(BatchController::start("bench", settings(), vec![NullWrite]));
    let keys: Vec<String> = (0..10_000).map(|i| format!("instance-{i}")).collect();
    let mut group = c.benchmark_group("batch_controller");
    group.throughput(Throughput::Elements(keys.len() as u64));
    group.bench_function("10k_requests_512_in_flight", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let started = Instant::now();
                runtime.block_on(async {
                    let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(512));
                    let mut tasks = tokio::task::JoinSet::new();
                    for (i, key) in keys.iter().enumerate() {
                        let permit = semaphore.clone().acquire_owned().await.unwrap();
                        let controller = controller.clone();
                        let op = (key.clone(), i as u32);
                        tasks.spawn(async move {
                            let answer = controller.submit(op).unwrap().await.unwrap().unwrap();
                            drop(permit);
                            answer
                        });
                    }
                    while tasks.join_next().await.is_some() {}
                });
                total += started.elapsed();
            }
            total
        });
    });
    group.finish();
}

/// The state machine alone: 128 pushes, a flush decision after each, one take.
fn batcher_push_take(c: &mut Criterion) {
    let mut batcher: Batcher<u64> = Batcher::new(128, Duration::from_millis(32));
    let now = Instant::now();
    let mut group = c.benchmark_group("batcher");
    group.throughput(Throughput::Elements(128));
    group.bench_function("push_128_then_take", |b| {
        b.iter(|| {
            for i in 0..128 {
                batcher.push(i, now);
                std::hint::black_box(batcher.flush_reason(now, false));
            }
            std::hint::black_box(batcher.take())
        });
    });
    group.finish();
}

criterion_group!(benches, batcher_push_take, controller_round_trip);
criterion_main!(benches);
