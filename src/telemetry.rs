//! Metrics: every name, label and bucket defined here, recorded through the `metrics`
//! facade and rendered as Prometheus text by the HTTP port.
//!
//! Each recorder (requests of one api, one batch controller, one store writer) registers
//! its series when it is made, so every series whose labels are known is exported, at 0,
//! from the start, and the hot path records through handles without a registry look-up.
//! Only [`Code`] is imported: the layers pass their own labels as text.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::code::Code;

pub const REQUESTS_TOTAL: &str = "batchreg_requests_total";
pub const REQUEST_DURATION_SECONDS: &str = "batchreg_request_duration_seconds";
pub const QUEUE_WAIT_SECONDS: &str = "batchreg_queue_wait_seconds";
pub const BATCH_SIZE_REQUESTS: &str = "batchreg_batch_size_requests";
pub const BATCH_FLUSHES_TOTAL: &str = "batchreg_batch_flushes_total";
pub const QUEUE_DEPTH_REQUESTS: &str = "batchreg_queue_depth_requests";
pub const ASYNC_DROPPED_TOTAL: &str = "batchreg_async_dropped_total";
pub const STORE_RETRIES_TOTAL: &str = "batchreg_store_retries_total";
pub const STORE_TRANSACTION_DURATION_SECONDS: &str = "batchreg_store_transaction_duration_seconds";
pub const STORE_ERRORS_TOTAL: &str = "batchreg_store_errors_total";
pub const STORE_UNREACHABLE_WRITERS: &str = "batchreg_store_unreachable_writers";
pub const BATCH_REFUSED_TOTAL: &str = "batchreg_batch_refused_total";
pub const QUEUE_WAIT_ESTIMATE_SECONDS: &str = "batchreg_queue_wait_estimate_seconds";
pub const DISCOVER_REQUESTS_TOTAL: &str = "batchreg_discover_requests_total";
pub const DISCOVER_DURATION_SECONDS: &str = "batchreg_discover_duration_seconds";
pub const DISCOVER_ANSWERS_TOTAL: &str = "batchreg_discover_answers_total";
pub const CACHE_SERVICES: &str = "batchreg_cache_services";
pub const CACHE_INSTANCES: &str = "batchreg_cache_instances";
pub const CHANGE_FEED_LAG_SECONDS: &str = "batchreg_change_feed_lag_seconds";
pub const CHANGE_FEED_APPLIED_TOTAL: &str = "batchreg_change_feed_applied_total";
pub const CHANGE_FEED_DELAY_SECONDS: &str = "batchreg_change_feed_delay_seconds";
pub const CHANGE_FEED_READ_SECONDS: &str = "batchreg_change_feed_read_seconds";
pub const CHANGE_FEED_ERRORS_TOTAL: &str = "batchreg_change_feed_errors_total";
pub const DEREGISTERED_PURGED_TOTAL: &str = "batchreg_deregistered_purged_total";
pub const HEALTH_INSTANCES: &str = "batchreg_health_instances";
pub const HEALTH_TRANSITIONS_TOTAL: &str = "batchreg_health_transitions_total";
pub const HEALTH_EXPIRY_DELAY_SECONDS: &str = "batchreg_health_expiry_delay_seconds";
pub const HEALTH_CHECKER_LEADER: &str = "batchreg_health_checker_leader";
pub const HEALTH_UNKNOWN_REFUSED_TOTAL: &str = "batchreg_health_unknown_refused_total";
pub const HEALTH_BEAT_TABLE_ENTRIES: &str = "batchreg_health_beat_table_entries";
pub const HEALTH_BEAT_TABLE_REACHABLE: &str = "batchreg_health_beat_table_reachable";
pub const HEALTH_BEATS_DROPPED_TOTAL: &str = "batchreg_health_beats_dropped_total";
pub const HEALTH_CHECKER_ROUND_SECONDS: &str = "batchreg_health_checker_round_seconds";
pub const INSTANCES_REGISTERED: &str = "batchreg_instances_registered";
pub const SERVICES_REGISTERED: &str = "batchreg_services_registered";
/// Prefix of the process metrics (CPU, RSS, open fds) that metrics-process collects.
pub const PROCESS_PREFIX: &str = "batchreg_";

/// Seconds: from a fraction of a millisecond (an idle flush) to the five-second client
/// timeouts SDKs use.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];
/// Requests per batch: powers of two up to well past the largest sensible max_batch.
const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and returns its handle. Servers in
/// one process (as in tests) share it.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(BATCH_SIZE_REQUESTS.to_owned()),
                        BATCH_SIZE_BUCKETS,
                    )
                })
                .expect("non-empty bucket lists")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        REQUESTS_TOTAL,
        "Requests answered, by api, protocol and Polaris code."
    );
    describe_histogram!(
        REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Time from request decoded to answer."
    );
    describe_histogram!(
        QUEUE_WAIT_SECONDS,
        Unit::Seconds,
        "Time a request waited in the queue before a store worker took its batch."
    );
    describe_histogram!(
        BATCH_SIZE_REQUESTS,
        Unit::Count,
        "Requests per batch at flush."
    );
    describe_counter!(
        BATCH_FLUSHES_TOTAL,
        "Batches flushed, by reason (size, timeout, idle, shutdown)."
    );
    describe_gauge!(
        QUEUE_DEPTH_REQUESTS,
        Unit::Count,
        "Requests waiting in the queue at the last flush."
    );
    describe_counter!(
        ASYNC_DROPPED_TOTAL,
        "async-regis requests dropped unwritten after task_life."
    );
    describe_counter!(
        STORE_RETRIES_TOTAL,
        "Store transactions retried after a transient error, by reason."
    );
    describe_histogram!(
        STORE_TRANSACTION_DURATION_SECONDS,
        Unit::Seconds,
        "One try of a batch's store transaction, by engine and operation."
    );
    describe_counter!(
        STORE_ERRORS_TOTAL,
        "Store writes that failed for good (after retries, or alone after splitting), by reason."
    );
    describe_gauge!(
        STORE_UNREACHABLE_WRITERS,
        Unit::Count,
        "Store writers whose database is unreachable now (they retry up to store.outage_wait)."
    );
    describe_counter!(
        BATCH_REFUSED_TOTAL,
        "Requests refused with 429001 at the queue, by reason: queue_full (queue_size reached), wait (more queued than the store writes within max_queue_wait), too_late (taken after waiting over twice max_queue_wait, not written)."
    );
    describe_gauge!(
        QUEUE_WAIT_ESTIMATE_SECONDS,
        Unit::Seconds,
        "How long the queue takes to be written at the store's current rate, as admission judged it last."
    );
    describe_counter!(
        DISCOVER_REQUESTS_TOTAL,
        "Discover requests answered, by protocol, type and Polaris code."
    );
    describe_histogram!(
        DISCOVER_DURATION_SECONDS,
        Unit::Seconds,
        "Time to answer one Discover request, from decoded to encoded."
    );
    describe_counter!(
        DISCOVER_ANSWERS_TOTAL,
        "Full Discover answers, by source: encoded for this request, or reused (encoded once per revision)."
    );
    describe_gauge!(
        CACHE_SERVICES,
        Unit::Count,
        "Services in the registry cache."
    );
    describe_gauge!(
        CACHE_INSTANCES,
        Unit::Count,
        "Live instances in the registry cache."
    );
    describe_gauge!(
        CHANGE_FEED_LAG_SECONDS,
        Unit::Seconds,
        "Cluster mode: age of the newest change the change feed applied, when it applied one."
    );
    describe_histogram!(
        CHANGE_FEED_READ_SECONDS,
        Unit::Seconds,
        "Cluster mode: how long one read of the change feed took, changes applied."
    );
    describe_counter!(
        CHANGE_FEED_APPLIED_TOTAL,
        "Cluster mode: instances the change feed put in or removed from the cache."
    );
    describe_histogram!(
        CHANGE_FEED_DELAY_SECONDS,
        Unit::Seconds,
        "Cluster mode: from a row's write (its mtime) on another replica to its change applied here."
    );
    describe_counter!(
        CHANGE_FEED_ERRORS_TOTAL,
        "Cluster mode: reads of the store's changes that failed (tried again at the next refresh)."
    );
    describe_counter!(
        DEREGISTERED_PURGED_TOTAL,
        "Deregistered instance rows deleted after the retention."
    );
    describe_gauge!(
        HEALTH_INSTANCES,
        Unit::Count,
        "Instances in the registry cache, by health (healthy, unhealthy)."
    );
    describe_counter!(
        HEALTH_TRANSITIONS_TOTAL,
        "Health transitions written, by the health they set (to=healthy, to=unhealthy)."
    );
    describe_histogram!(
        HEALTH_EXPIRY_DELAY_SECONDS,
        Unit::Seconds,
        "The checker's lag: from an instance's expiry (3 ttl after its last beat) to its transition handed over."
    );
    describe_gauge!(
        HEALTH_CHECKER_LEADER,
        Unit::Count,
        "1 while this replica holds the lease and runs the expiry checker."
    );
    describe_counter!(
        HEALTH_UNKNOWN_REFUSED_TOTAL,
        "Heartbeats refused 400202: an instance unknown after its first beats."
    );
    describe_gauge!(
        HEALTH_BEAT_TABLE_ENTRIES,
        Unit::Count,
        "Instances in the beat table (memory, or Redis as the checker saw it)."
    );
    describe_gauge!(
        HEALTH_BEAT_TABLE_REACHABLE,
        Unit::Count,
        "0 while the beat table (Redis) does not answer: nothing is expired then, nor for a window after."
    );
    describe_counter!(
        HEALTH_BEATS_DROPPED_TOTAL,
        "Beats not sent to Redis because its queue was full (Redis too slow or away)."
    );
    describe_histogram!(
        HEALTH_CHECKER_ROUND_SECONDS,
        Unit::Seconds,
        "How long one round of the expiry checker took."
    );
    describe_gauge!(
        INSTANCES_REGISTERED,
        Unit::Count,
        "Instances stored, by namespace (refreshed every few seconds)."
    );
    describe_gauge!(
        SERVICES_REGISTERED,
        Unit::Count,
        "Services stored, by namespace (refreshed every few seconds)."
    );
}

static REGISTRATIONS: AtomicU64 = AtomicU64::new(0);
static HEARTBEATS: AtomicU64 = AtomicU64::new(0);
static DISCOVERS: AtomicU64 = AtomicU64::new(0);

/// Requests answered since the process started, over both protocols and whatever their
/// code: what the console computes its rates from. Counted with metrics switched off too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub registrations: u64,
    pub heartbeats: u64,
    /// Discover requests (each message of a gRPC stream is one).
    pub discovers: u64,
}

pub fn totals() -> Totals {
    Totals {
        registrations: REGISTRATIONS.load(Ordering::Relaxed),
        heartbeats: HEARTBEATS.load(Ordering::Relaxed),
        discovers: DISCOVERS.load(Ordering::Relaxed),
    }
}

/// The requests of one api over one protocol: a counter per code, and their durations.
#[derive(Clone)]
pub struct RequestMetrics {
    api: &'static str,
    protocol: &'static str,
    by_code: Vec<(Code, Counter)>,
    duration: Histogram,
    /// The api's share of [`totals`], if it has one.
    total: Option<&'static AtomicU64>,
}

impl RequestMetrics {
    /// Registers a counter for every code the server answers with, at 0. The apis
    /// `register` and `heartbeat` are also counted in [`totals`].
    pub fn new(api: &'static str, protocol: &'static str) -> Self {
        let by_code = Code::ALL
            .iter()
            .map(|&code| (code, request_counter(api, protocol, code)))
            .collect();
        let total = match api {
            "register" => Some(&REGISTRATIONS),
            "heartbeat" => Some(&HEARTBEATS),
            _ => None,
        };
        RequestMetrics {
            api,
            protocol,
            by_code,
            duration: histogram!(REQUEST_DURATION_SECONDS, "api" => api, "protocol" => protocol),
            total,
        }
    }

    /// One answered request.
    pub fn record(&self, code: Code, elapsed: Duration) {
        match self.by_code.iter().find(|(known, _)| *known == code) {
            Some((_, counter)) => counter.increment(1),
            None => request_counter(self.api, self.protocol, code).increment(1),
        }
        self.duration.record(elapsed);
        if let Some(total) = self.total {
            total.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn request_counter(api: &'static str, protocol: &'static str, code: Code) -> Counter {
    counter!(REQUESTS_TOTAL, "api" => api, "protocol" => protocol, "code" => code.label())
}

/// One batch controller's figures. `flush_reasons` are the labels of
/// [`BatchMetrics::flushed`]'s index.
#[derive(Clone)]
pub struct BatchMetrics {
    queue_wait: Histogram,
    batch_size: Histogram,
    flushes: Vec<Counter>,
    queue_depth: Gauge,
    dropped: Counter,
    refused_full: Counter,
    refused_wait: Counter,
    refused_late: Counter,
    wait_estimate: Gauge,
}

impl BatchMetrics {
    pub fn new(api: &'static str, flush_reasons: &[&'static str]) -> Self {
        BatchMetrics {
            queue_wait: histogram!(QUEUE_WAIT_SECONDS, "api" => api),
            batch_size: histogram!(BATCH_SIZE_REQUESTS, "api" => api),
            flushes: flush_reasons
                .iter()
                .map(|&reason| counter!(BATCH_FLUSHES_TOTAL, "api" => api, "reason" => reason))
                .collect(),
            queue_depth: gauge!(QUEUE_DEPTH_REQUESTS, "api" => api),
            dropped: counter!(ASYNC_DROPPED_TOTAL, "api" => api),
            refused_full: counter!(BATCH_REFUSED_TOTAL, "api" => api, "reason" => "queue_full"),
            refused_wait: counter!(BATCH_REFUSED_TOTAL, "api" => api, "reason" => "wait"),
            refused_late: counter!(BATCH_REFUSED_TOTAL, "api" => api, "reason" => "too_late"),
            wait_estimate: gauge!(QUEUE_WAIT_ESTIMATE_SECONDS, "api" => api),
        }
    }

    /// A request refused at the queue: full (`true`), or holding more than
    /// max_queue_wait of work.
    pub fn refused(&self, full: bool) {
        if full {
            self.refused_full.increment(1);
        } else {
            self.refused_wait.increment(1);
        }
    }

    /// A request taken from the queue too late to be written, answered 429001.
    pub fn refused_late(&self) {
        self.refused_late.increment(1);
    }

    /// How long the queue would take to write, as admission estimated it.
    pub fn wait_estimated(&self, estimate: Duration) {
        self.wait_estimate.set(estimate.as_secs_f64());
    }

    /// A batch of `size` flushed for the reason at `reason` in the list given to `new`,
    /// with `queued` requests left behind it.
    pub fn flushed(&self, reason: usize, size: usize, queued: usize) {
        if let Some(counter) = self.flushes.get(reason) {
            counter.increment(1);
        }
        self.batch_size.record(size as f64);
        self.queue_depth.set(queued as f64);
    }

    /// Time one request waited before a store worker took its batch.
    pub fn queued(&self, waited: Duration) {
        self.queue_wait.record(waited);
    }

    /// An async-regis request dropped unwritten after task_life.
    pub fn dropped(&self) {
        self.dropped.increment(1);
    }
}

/// One store writer's figures: each try of a transaction, and retries and final errors
/// by reason. `reasons` are every reason the store may report.
#[derive(Clone)]
pub struct StoreMetrics {
    transaction_ok: Histogram,
    transaction_error: Histogram,
    retries: Vec<(&'static str, Counter)>,
    errors: Vec<(&'static str, Counter)>,
    unreachable: Gauge,
}

impl StoreMetrics {
    pub fn new(engine: &'static str, operation: &'static str, reasons: &[&'static str]) -> Self {
        let by_reason = |name: &'static str| -> Vec<(&'static str, Counter)> {
            reasons
                .iter()
                .map(|&reason| {
                    let counter = counter!(name, "engine" => engine, "operation" => operation, "reason" => reason);
                    (reason, counter)
                })
                .collect()
        };
        let transaction = |outcome: &'static str| histogram!(STORE_TRANSACTION_DURATION_SECONDS, "engine" => engine, "operation" => operation, "outcome" => outcome);
        StoreMetrics {
            transaction_ok: transaction("ok"),
            transaction_error: transaction("error"),
            retries: by_reason(STORE_RETRIES_TOTAL),
            errors: by_reason(STORE_ERRORS_TOTAL),
            unreachable: gauge!(STORE_UNREACHABLE_WRITERS, "engine" => engine, "operation" => operation),
        }
    }

    /// The writer found its database unreachable and waits for it.
    pub fn outage_began(&self) {
        self.unreachable.increment(1.0);
    }

    /// The writer's wait for its database ended (back, or given up).
    pub fn outage_ended(&self) {
        self.unreachable.decrement(1.0);
    }

    /// One try of a transaction, successful or not.
    pub fn transaction(&self, took: Duration, ok: bool) {
        if ok {
            self.transaction_ok.record(took);
        } else {
            self.transaction_error.record(took);
        }
    }

    /// A transient failure, tried again.
    pub fn retried(&self, reason: &'static str) {
        increment_reason(&self.retries, reason);
    }

    /// A write that failed for good.
    pub fn failed(&self, reason: &'static str) {
        increment_reason(&self.errors, reason);
    }
}

fn increment_reason(counters: &[(&'static str, Counter)], reason: &'static str) {
    if let Some((_, counter)) = counters.iter().find(|(known, _)| *known == reason) {
        counter.increment(1);
    }
}

/// Discover requests of one protocol: a counter per type and code, their durations, and
/// how full answers were made.
#[derive(Clone)]
pub struct DiscoverMetrics {
    protocol: &'static str,
    by_kind: Vec<(&'static str, Code, Counter)>,
    duration: Histogram,
    encoded: Counter,
    reused: Counter,
}

impl DiscoverMetrics {
    /// Registers, at 0, the answers each served type gives.
    pub fn new(protocol: &'static str) -> Self {
        let known: [(&'static str, &[Code]); 6] = [
            (
                "INSTANCE",
                &[
                    Code::ExecuteSuccess,
                    Code::DataNoChange,
                    Code::InvalidServiceName,
                    Code::NotFoundResource,
                ],
            ),
            ("SERVICES", &[Code::ExecuteSuccess, Code::DataNoChange]),
            ("ROUTING", &[Code::ExecuteSuccess]),
            ("RATE_LIMIT", &[Code::ExecuteSuccess]),
            ("CIRCUIT_BREAKER", &[Code::ExecuteSuccess]),
            ("FAULT_DETECTOR", &[Code::ExecuteSuccess]),
        ];
        let by_kind = known
            .iter()
            .flat_map(|(kind, codes)| {
                codes
                    .iter()
                    .map(move |&code| (*kind, code, discover_counter(protocol, kind, code)))
            })
            .collect();
        let answers = |source: &'static str| counter!(DISCOVER_ANSWERS_TOTAL, "source" => source);
        DiscoverMetrics {
            protocol,
            by_kind,
            duration: histogram!(DISCOVER_DURATION_SECONDS, "protocol" => protocol),
            encoded: answers("encoded"),
            reused: answers("reused"),
        }
    }

    /// One answered request; `full` when it carried a full answer, `reused` when those
    /// bytes were encoded for an earlier request.
    pub fn record(
        &self,
        kind: &'static str,
        code: Code,
        full: bool,
        reused: bool,
        elapsed: Duration,
    ) {
        match self
            .by_kind
            .iter()
            .find(|(known, known_code, _)| *known == kind && *known_code == code)
        {
            Some((_, _, counter)) => counter.increment(1),
            None => discover_counter(self.protocol, kind, code).increment(1),
        }
        DISCOVERS.fetch_add(1, Ordering::Relaxed);
        if full {
            if reused {
                self.reused.increment(1);
            } else {
                self.encoded.increment(1);
            }
        }
        self.duration.record(elapsed);
    }
}

fn discover_counter(protocol: &'static str, kind: &'static str, code: Code) -> Counter {
    counter!(DISCOVER_REQUESTS_TOTAL, "protocol" => protocol, "type" => kind, "code" => code.label())
}

/// The registry cache's upkeep: its sizes, the change feed, the purge.
#[derive(Clone)]
pub struct FeedMetrics {
    services: Gauge,
    instances: Gauge,
    lag: Gauge,
    delay: Histogram,
    read: Histogram,
    applied: Counter,
    errors: Counter,
    purged: Counter,
}

impl Default for FeedMetrics {
    fn default() -> Self {
        FeedMetrics {
            services: gauge!(CACHE_SERVICES),
            instances: gauge!(CACHE_INSTANCES),
            lag: gauge!(CHANGE_FEED_LAG_SECONDS),
            delay: histogram!(CHANGE_FEED_DELAY_SECONDS),
            read: histogram!(CHANGE_FEED_READ_SECONDS),
            applied: counter!(CHANGE_FEED_APPLIED_TOTAL),
            errors: counter!(CHANGE_FEED_ERRORS_TOTAL),
            purged: counter!(DEREGISTERED_PURGED_TOTAL),
        }
    }
}

impl FeedMetrics {
    pub fn cache_sizes(&self, services: usize, instances: usize) {
        self.services.set(services as f64);
        self.instances.set(instances as f64);
    }

    /// One read of the feed: how long after its write each change was applied, and the
    /// age of its newest change.
    pub fn polled(&self, delays: &[Duration], lag: Option<Duration>, took: Duration) {
        self.read.record(took);
        self.applied.increment(delays.len() as u64);
        for delay in delays {
            self.delay.record(*delay);
        }
        if let Some(lag) = lag {
            self.lag.set(lag.as_secs_f64());
        }
    }

    pub fn poll_failed(&self) {
        self.errors.increment(1);
    }

    pub fn purged(&self, rows: usize) {
        self.purged.increment(rows as u64);
    }
}

/// The expiry checker's figures.
#[derive(Clone)]
pub struct HealthMetrics {
    healthy: Gauge,
    unhealthy: Gauge,
    to_healthy: Counter,
    to_unhealthy: Counter,
    expiry_delay: Histogram,
    leader: Gauge,
    unknown_refused: Counter,
    entries: Gauge,
    reachable: Gauge,
    dropped: Counter,
    round: Histogram,
}

impl Default for HealthMetrics {
    fn default() -> Self {
        let instances = |state: &'static str| gauge!(HEALTH_INSTANCES, "state" => state);
        let transitions = |to: &'static str| counter!(HEALTH_TRANSITIONS_TOTAL, "to" => to);
        HealthMetrics {
            healthy: instances("healthy"),
            unhealthy: instances("unhealthy"),
            to_healthy: transitions("healthy"),
            to_unhealthy: transitions("unhealthy"),
            expiry_delay: histogram!(HEALTH_EXPIRY_DELAY_SECONDS),
            leader: gauge!(HEALTH_CHECKER_LEADER),
            unknown_refused: counter!(HEALTH_UNKNOWN_REFUSED_TOTAL),
            entries: gauge!(HEALTH_BEAT_TABLE_ENTRIES),
            reachable: gauge!(HEALTH_BEAT_TABLE_REACHABLE),
            dropped: counter!(HEALTH_BEATS_DROPPED_TOTAL),
            round: histogram!(HEALTH_CHECKER_ROUND_SECONDS),
        }
    }
}

impl HealthMetrics {
    pub fn instances(&self, total: usize, unhealthy: usize) {
        self.healthy.set(total.saturating_sub(unhealthy) as f64);
        self.unhealthy.set(unhealthy as f64);
    }

    pub fn transition(&self, healthy: bool) {
        if healthy {
            self.to_healthy.increment(1);
        } else {
            self.to_unhealthy.increment(1);
        }
    }

    /// An expired instance handed over `late_ms` after its expiry.
    pub fn expired_after(&self, late_ms: i64) {
        self.expiry_delay
            .record(Duration::from_millis(late_ms.max(0).unsigned_abs()));
    }

    pub fn leading(&self, leading: bool) {
        self.leader.set(if leading { 1.0 } else { 0.0 });
    }

    pub fn unknown_refused(&self) {
        self.unknown_refused.increment(1);
    }

    /// The beat table's state after a round: entries (when read), whether it answers,
    /// beats dropped since the start.
    pub fn table(&self, entries: Option<usize>, reachable: bool, dropped: u64) {
        if let Some(entries) = entries {
            self.entries.set(entries as f64);
        }
        self.reachable.set(if reachable { 1.0 } else { 0.0 });
        self.dropped.absolute(dropped);
    }

    pub fn round_took(&self, took: Duration) {
        self.round.record(took);
    }
}

/// What one namespace holds, for the gauges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceGauge<'a> {
    pub namespace: &'a str,
    pub services: u64,
    pub instances: u64,
}

/// Instances and services per namespace; namespaces no longer present go to 0.
pub fn set_namespace_counts(counts: &[NamespaceGauge<'_>], previous: &mut Vec<String>) {
    for gone in previous
        .iter()
        .filter(|ns| !counts.iter().any(|c| c.namespace == ns.as_str()))
    {
        gauge!(INSTANCES_REGISTERED, "namespace" => gone.clone()).set(0.0);
        gauge!(SERVICES_REGISTERED, "namespace" => gone.clone()).set(0.0);
    }
    for count in counts {
        gauge!(INSTANCES_REGISTERED, "namespace" => count.namespace.to_owned())
            .set(count.instances as f64);
        gauge!(SERVICES_REGISTERED, "namespace" => count.namespace.to_owned())
            .set(count.services as f64);
    }
    *previous = counts.iter().map(|c| c.namespace.to_owned()).collect();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_count_registrations_heartbeats_and_discovers_of_any_code_or_protocol() {
        let register = RequestMetrics::new("register", "grpc");
        let heartbeat = RequestMetrics::new("heartbeat", "http");
        let deregister = RequestMetrics::new("deregister", "grpc");
        let discover = DiscoverMetrics::new("grpc");
        let before = totals();
        register.record(Code::ExecuteSuccess, Duration::ZERO);
        register.record(Code::InvalidInstanceHost, Duration::ZERO);
        heartbeat.record(Code::ExecuteSuccess, Duration::ZERO);
        deregister.record(Code::ExecuteSuccess, Duration::ZERO);
        discover.record("INSTANCE", Code::DataNoChange, false, false, Duration::ZERO);
        let after = totals();
        // Other tests of this binary may count at the same time: at least ours.
        assert!(after.registrations >= before.registrations + 2);
        assert!(after.heartbeats > before.heartbeats);
        assert!(after.discovers > before.discovers);
    }
}
