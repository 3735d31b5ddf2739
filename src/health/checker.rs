//! The expiry checker: every `check_interval`, on the replica that holds the lease (on a
//! single node, always), it marks unhealthy the instances whose beats ran out and healthy
//! the unhealthy ones that beat again, by handing the transitions to the health batch
//! controller. An instance whose transition is on its way is not handed over twice.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::rules::{self, Verdict};
use super::table::BeatTable;
use super::writes::{HealthOp, HealthWrite};
use crate::batch::BatchController;
use crate::discovery::cache::RegistryCache;
use crate::store::HealthChange;
use crate::store::clock::Clock;
use crate::telemetry::HealthMetrics;

/// Expired entries, and revived instances, handled per round at most: a mass failure is
/// handled over a few rounds, not in one that holds up the next.
const EXPIRED_PER_ROUND: usize = 10_000;
/// How often every unhealthy instance is looked at, whether or not it was noted as
/// beating again (a beat that reached a replica whose cache did not show the instance
/// unhealthy yet is found this way).
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// Unhealthy instances looked up in the table at once during a sweep.
const SWEEP_CHUNK: usize = 10_000;

/// The running checker.
pub struct Checker {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    controller: Arc<BatchController<HealthWrite>>,
}

impl Checker {
    pub fn start(
        table: Arc<BeatTable>,
        cache: Arc<RegistryCache>,
        clock: Arc<Clock>,
        controller: BatchController<HealthWrite>,
        interval: Duration,
        started_ms: i64,
        metrics: HealthMetrics,
    ) -> Checker {
        let controller = Arc::new(controller);
        let (stop, mut stopped) = watch::channel(false);
        let round = Round {
            table,
            cache,
            controller: Arc::clone(&controller),
            pending: Arc::new(Mutex::new(HashSet::new())),
            started_ms,
            seeded_for: started_ms.into(),
            swept_at: started_ms.into(),
            metrics,
        };
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stopped.changed() => return,
                    _ = ticks.tick() => {
                        let began = std::time::Instant::now();
                        round.run(clock.now_ms()).await;
                        round.metrics.round_took(began.elapsed());
                        let entries = round.table.entries().await;
                        round.metrics.table(entries, !round.table.is_away(), round.table.dropped());
                    }
                }
            }
        });
        Checker {
            stop,
            task,
            controller,
        }
    }

    /// Stops the rounds, then writes the transitions already handed over.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let controller = self.controller;
        let _ = tokio::task::spawn_blocking(move || controller.shutdown()).await;
    }
}

/// Transitions the health batch queue refused in one round (it was full).
#[derive(Default)]
struct Full {
    refused: usize,
}

/// What one round needs.
struct Round {
    table: Arc<BeatTable>,
    cache: Arc<RegistryCache>,
    controller: Arc<BatchController<HealthWrite>>,
    /// Instances whose transition is queued or being written.
    pending: Arc<Mutex<HashSet<String>>>,
    started_ms: i64,
    /// The `trusted_since` the table was last seeded for.
    seeded_for: std::sync::atomic::AtomicI64,
    /// When every unhealthy instance was last looked at (store clock, ms).
    swept_at: std::sync::atomic::AtomicI64,
    metrics: HealthMetrics,
}

impl Round {
    async fn run(&self, now: i64) {
        let leading = self.table.hold_lease(now).await;
        self.metrics.leading(leading);
        self.metrics
            .instances(self.cache.instance_count(), self.cache.unhealthy_count());
        if !leading {
            return;
        }
        self.table.lost_beats(now).await;
        let trusted = self.table.trusted_since(self.started_ms);
        if trusted > self.seeded_for.load(std::sync::atomic::Ordering::Relaxed) {
            // The table is back, perhaps without the beats sent while it was away, or
            // without any: every health-checked instance gets a full window from now.
            let seeds = self
                .cache
                .checked()
                .into_iter()
                .map(|(id, ttl)| (id, rules::expiry_after(trusted, ttl)))
                .collect();
            if self.table.seed_all(seeds).await.is_err() {
                return;
            }
            self.seeded_for
                .store(trusted, std::sync::atomic::Ordering::Relaxed);
        }
        let mut full = Full::default();
        if let Ok(expired) = self.table.expired(now, EXPIRED_PER_ROUND).await {
            for (id, expiry) in expired {
                self.expired(&id, expiry, now, trusted, &mut full).await;
            }
        }
        if let Ok(revived) = self.table.take_revived(EXPIRED_PER_ROUND).await {
            self.revive(&revived, now, trusted, &mut full).await;
        }
        let swept_at = self.swept_at.load(std::sync::atomic::Ordering::Relaxed);
        if now - swept_at >= SWEEP_EVERY.as_millis() as i64 {
            self.swept_at
                .store(now, std::sync::atomic::Ordering::Relaxed);
            let unhealthy = self.cache.unhealthy();
            for chunk in unhealthy.chunks(SWEEP_CHUNK) {
                let ids: Vec<String> = chunk.iter().map(|id| id.to_string()).collect();
                self.revive(&ids, now, trusted, &mut full).await;
            }
        }
        if full.refused > 0 {
            tracing::warn!(
                transitions = full.refused,
                "the health batch queue is full: transitions left for the next rounds"
            );
        }
    }

    /// Unhealthy instances that may beat again: those whose beats have not run out turn
    /// healthy.
    async fn revive(&self, ids: &[String], now: i64, trusted: i64, full: &mut Full) {
        let Ok(expiries) = self.table.expiries(ids, now).await else {
            return;
        };
        for (id, expiry) in ids.iter().zip(expiries) {
            let Some((_, cached)) = self.cache.instance(id) else {
                continue;
            };
            let Some(ttl) = cached.ttl else { continue };
            if rules::verdict(cached.healthy, expiry, ttl, now, trusted) == Verdict::TurnsHealthy {
                self.hand_over(id, true, None, full);
            }
        }
    }

    /// One entry of the table whose expiry has come.
    async fn expired(&self, id: &str, expiry: i64, now: i64, trusted: i64, full: &mut Full) {
        let Some((_, cached)) = self.cache.instance(id) else {
            // Deregistered, or never registered: nothing to check.
            self.table.forget_expired(id, expiry).await;
            return;
        };
        let Some(ttl) = cached.ttl else {
            self.table.forget_expired(id, expiry).await;
            return;
        };
        match rules::verdict(cached.healthy, Some(expiry), ttl, now, trusted) {
            Verdict::TurnsUnhealthy => {
                self.metrics.expired_after(now - expiry);
                self.hand_over(id, false, Some(expiry), full);
            }
            // Unhealthy already: its entry has done its job.
            Verdict::Stays if !cached.healthy => {
                self.table.forget_expired(id, expiry).await;
            }
            _ => {}
        }
    }

    /// Queues a transition of `id` to `healthy`, unless one is on its way. Once it is
    /// written, an expired entry (`expiry`) leaves the table, unless the instance beat
    /// meanwhile.
    fn hand_over(&self, id: &str, healthy: bool, expiry: Option<i64>, full: &mut Full) {
        // Once the queue refused one, the others wait for the next round.
        if full.refused > 0 {
            full.refused += 1;
            return;
        }
        if !self
            .pending
            .lock()
            .expect("pending lock")
            .insert(id.to_owned())
        {
            return;
        }
        let Some((entry, cached)) = self.cache.instance(id) else {
            self.pending.lock().expect("pending lock").remove(id);
            return;
        };
        let (mut record, _, ctime) = cached.stored();
        record.healthy = healthy;
        let op = HealthOp {
            change: HealthChange {
                record,
                isolate: cached.isolate,
            },
            service: entry.stored(),
            ctime,
        };
        let answer = match self.controller.submit(op) {
            Ok(answer) => answer,
            Err(error) => {
                tracing::debug!(%error, "health transition not queued");
                full.refused += 1;
                self.pending.lock().expect("pending lock").remove(id);
                return;
            }
        };
        let (pending, table, metrics, id) = (
            Arc::clone(&self.pending),
            Arc::clone(&self.table),
            self.metrics.clone(),
            id.to_owned(),
        );
        tokio::spawn(async move {
            if let Ok(Ok(true)) = answer.await {
                metrics.transition(healthy);
                if let Some(expiry) = expiry {
                    table.forget_expired(&id, expiry).await;
                }
            }
            pending.lock().expect("pending lock").remove(&id);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use super::*;
    use crate::discovery::cache::tests_support::record;
    use crate::health::table::MemoryTable;
    use crate::store::resilient::{ResilientWriter, RetryPolicy};
    use crate::store::{self, RegisterOptions, Store, StoreOptions, sqlite};
    use crate::telemetry::StoreMetrics;

    /// A checker round over a real (embedded) store, driven with injected times.
    struct Rig {
        _dir: tempfile::TempDir,
        store: Arc<dyn Store>,
        table: Arc<BeatTable>,
        cache: Arc<RegistryCache>,
        round: Round,
    }

    const START: i64 = 1_000_000_000;

    /// Instances `a` and `b` beat with ttl 1; `plain` has no health check.
    async fn rig() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let store = store::open(&StoreOptions {
            url: format!("sqlite://{}", dir.path().join("t.db").display()),
            sqlite_synchronous: sqlite::Synchronous::Normal,
            concurrency: None,
        })
        .unwrap();
        let mut rows = vec![record("a"), record("b"), record("plain")];
        for row in &mut rows[..2] {
            row.health_check_ttl = Some(1);
        }
        rows[2].enable_health_check = false;
        rows[2].health_check_ttl = None;
        store
            .writer()
            .unwrap()
            .register(
                &rows,
                RegisterOptions {
                    create_services: true,
                },
            )
            .unwrap();
        let cache = Arc::new(RegistryCache::default());
        crate::discovery::load(store.as_ref(), &cache, 100).unwrap();
        let writer = HealthWrite {
            writer: ResilientWriter::new(
                store.writer().unwrap(),
                RetryPolicy::default(),
                StoreMetrics::new("sqlite", "health", store.error_reasons()),
            ),
            cache: Arc::clone(&cache),
        };
        let settings = crate::batch::BatchSettings {
            queue_size: NonZeroUsize::new(100).unwrap(),
            max_batch: NonZeroUsize::new(100).unwrap(),
            max_wait: Duration::from_millis(1),
            task_life: Duration::from_secs(60),
            max_queue_wait: Duration::ZERO,
        };
        let table = Arc::new(BeatTable::Memory(MemoryTable::default()));
        let round = Round {
            table: Arc::clone(&table),
            cache: Arc::clone(&cache),
            controller: Arc::new(BatchController::start("health", settings, vec![writer])),
            pending: Arc::new(Mutex::new(HashSet::new())),
            started_ms: START,
            seeded_for: START.into(),
            swept_at: START.into(),
            metrics: HealthMetrics::default(),
        };
        // As at the start: every checked instance counts as beating now.
        let seeds = cache
            .checked()
            .into_iter()
            .map(|(id, ttl)| (id, rules::expiry_after(START, ttl)))
            .collect();
        table.seed_all(seeds).await.unwrap();
        Rig {
            _dir: dir,
            store,
            table,
            cache,
            round,
        }
    }

    impl Rig {
        /// One round at `now`, and the transitions it handed over written.
        async fn run(&self, now: i64) {
            self.round.run(now).await;
            for _ in 0..500 {
                if self.round.pending.lock().unwrap().is_empty() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("transitions not written within 5 s");
        }

        /// Health of `id` in the cache and in the store (`None`: not live).
        fn health(&self, id: &str) -> (Option<bool>, Option<bool>) {
            let cached = self.cache.instance(id).map(|(_, c)| c.healthy);
            let stored = self
                .store
                .instances(&[id.to_owned()])
                .unwrap()
                .first()
                .map(|s| s.record.healthy);
            (cached, stored)
        }

        /// A beat as `Health::heartbeat` records it: an unhealthy instance is noted.
        fn beat(&self, id: &str, at: i64) {
            self.silent_beat(id, at);
            if self.cache.instance(id).is_some_and(|(_, c)| !c.healthy) {
                self.table.revive(&Arc::from(id));
            }
        }

        /// A beat the checker was not told of (it reached a replica whose cache did not
        /// show the instance unhealthy yet).
        fn silent_beat(&self, id: &str, at: i64) {
            self.table
                .record(&Arc::from(id), rules::expiry_after(at, 1));
        }
    }

    #[tokio::test]
    async fn silent_instances_expire_after_the_start_window_and_come_back_on_a_beat() {
        let rig = rig().await;
        // No beat at all: nothing happens within the first window after the start.
        rig.run(START + 2_999).await;
        assert_eq!(rig.health("a"), (Some(true), Some(true)));
        // `b` beats; `a` and `plain` stay silent.
        rig.beat("b", START + 2_500);
        rig.run(START + 3_000).await;
        assert_eq!(rig.health("a"), (Some(false), Some(false)));
        assert_eq!(rig.health("b"), (Some(true), Some(true)));
        assert_eq!(rig.health("plain"), (Some(true), Some(true)));
        // `b` goes silent: it expires 3 × ttl after its last beat, not before.
        rig.run(START + 5_499).await;
        assert_eq!(rig.health("b"), (Some(true), Some(true)));
        rig.run(START + 5_500).await;
        assert_eq!(rig.health("b"), (Some(false), Some(false)));
        // Nothing more to write while they stay silent: the revision holds.
        let revision = rig.store.instances(&["a".to_owned()]).unwrap()[0]
            .revision
            .clone();
        rig.run(START + 9_000).await;
        assert_eq!(
            rig.store.instances(&["a".to_owned()]).unwrap()[0].revision,
            revision
        );
        // A beat brings `a` back at the next round.
        rig.beat("a", START + 9_100);
        rig.run(START + 9_200).await;
        assert_eq!(rig.health("a"), (Some(true), Some(true)));
        assert_eq!(rig.health("b"), (Some(false), Some(false)));
    }

    #[tokio::test]
    async fn a_beat_the_checker_was_not_told_of_is_found_by_the_sweep() {
        let rig = rig().await;
        rig.run(START + 3_000).await;
        assert_eq!(rig.health("a"), (Some(false), Some(false)));
        rig.silent_beat("a", START + 4_000);
        // Not noted: the rounds before the sweep do not see it...
        rig.run(START + 4_100).await;
        assert_eq!(rig.health("a"), (Some(false), Some(false)));
        // ...the sweep, every 10 s, does (the last one was at the start).
        rig.silent_beat("a", START + 9_900);
        rig.run(START + 10_000).await;
        assert_eq!(rig.health("a"), (Some(true), Some(true)));
    }

    #[tokio::test]
    async fn instances_without_a_health_check_and_unknown_ones_never_expire() {
        let rig = rig().await;
        // Beats of a non-checked instance and of an unknown one are in the table...
        rig.beat("plain", START);
        rig.beat("ghost", START);
        rig.run(START + 60_000).await;
        // ...and leave it once expired, without any write.
        assert_eq!(rig.health("plain"), (Some(true), Some(true)));
        assert_eq!(rig.health("ghost"), (None, None));
        let ids = ["plain".to_owned(), "ghost".to_owned()];
        assert_eq!(rig.table.expiries(&ids, 0).await.unwrap(), [None, None]);
    }

    #[tokio::test]
    async fn a_deregistered_instance_leaves_the_table_and_is_not_written() {
        let rig = rig().await;
        rig.beat("a", START + 10_000);
        rig.store
            .writer()
            .unwrap()
            .deregister(&["a".to_owned()])
            .unwrap();
        rig.cache.remove_instance("a", "2026-12-01 10:00:00.000");
        rig.table.forget("a");
        rig.run(START + 60_000).await;
        assert_eq!(rig.health("a"), (None, None));
        let ids = ["a".to_owned()];
        assert_eq!(rig.table.expiries(&ids, 0).await.unwrap(), [None]);
    }
}
