//! Metrics: every name, label and bucket defined here, recorded through the `metrics`
//! facade and rendered as Prometheus text by the HTTP port.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::batch::FlushReason;
use crate::code::Code;
use crate::store::StoreError;

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
        "Time a request waited before its batch was handed to a store worker."
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

/// One answered request.
pub fn record_request(api: &'static str, protocol: &'static str, code: Code, elapsed: Duration) {
    counter!(REQUESTS_TOTAL, "api" => api, "protocol" => protocol, "code" => code.label())
        .increment(1);
    histogram!(REQUEST_DURATION_SECONDS, "api" => api, "protocol" => protocol).record(elapsed);
}

/// One flushed batch.
pub fn record_flush(api: &'static str, reason: FlushReason, size: usize) {
    counter!(BATCH_FLUSHES_TOTAL, "api" => api, "reason" => reason.as_str()).increment(1);
    histogram!(BATCH_SIZE_REQUESTS, "api" => api).record(size as f64);
}

/// Time one request spent queued before its batch went to a worker.
pub fn record_queued(api: &'static str, waited: Duration) {
    histogram!(QUEUE_WAIT_SECONDS, "api" => api).record(waited);
}

pub fn set_queue_depth(api: &'static str, depth: usize) {
    gauge!(QUEUE_DEPTH_REQUESTS, "api" => api).set(depth as f64);
}

pub fn record_dropped_task(api: &'static str) {
    counter!(ASYNC_DROPPED_TOTAL, "api" => api).increment(1);
}

pub fn record_store_retry(engine: &'static str, operation: &'static str, err: &StoreError) {
    counter!(STORE_RETRIES_TOTAL, "engine" => engine, "operation" => operation, "reason" => err.reason())
        .increment(1);
}

/// One try of a store transaction, successful or not.
pub fn record_store_transaction(
    engine: &'static str,
    operation: &'static str,
    took: Duration,
    ok: bool,
) {
    let outcome = if ok { "ok" } else { "error" };
    histogram!(STORE_TRANSACTION_DURATION_SECONDS, "engine" => engine, "operation" => operation, "outcome" => outcome)
        .record(took);
}

pub fn record_store_error(engine: &'static str, operation: &'static str, err: &StoreError) {
    counter!(STORE_ERRORS_TOTAL, "engine" => engine, "operation" => operation, "reason" => err.reason()).increment(1);
}

/// Instances and services stored per namespace; namespaces no longer present go to 0.
pub fn set_namespace_counts(counts: &[crate::store::NamespaceCount], previous: &mut Vec<String>) {
    for gone in previous
        .iter()
        .filter(|ns| !counts.iter().any(|c| &c.namespace == *ns))
    {
        gauge!(INSTANCES_REGISTERED, "namespace" => gone.clone()).set(0.0);
        gauge!(SERVICES_REGISTERED, "namespace" => gone.clone()).set(0.0);
    }
    for count in counts {
        gauge!(INSTANCES_REGISTERED, "namespace" => count.namespace.clone())
            .set(count.instances as f64);
        gauge!(SERVICES_REGISTERED, "namespace" => count.namespace.clone())
            .set(count.services as f64);
    }
    *previous = counts.iter().map(|c| c.namespace.clone()).collect();
}
