//! A writer that never fails a batch for one row's sake: transient errors are retried with
//! capped, jittered backoff; any other error splits the batch in halves until the rows
//! that fail on their own are alone.

use std::sync::Arc;
use std::time::Duration;

use rand::RngExt;

use crate::telemetry;

use super::{
    DeregisterOutcome, InstanceRecord, RegisterOptions, RegisterOutcome, StoreError, StoreWriter,
};

/// One row's result; the error is shared by the rows of a batch that failed together.
pub type RowResult<T> = Result<T, Arc<StoreError>>;

/// How often and how patiently transient errors are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            first_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(500),
        }
    }
}

impl RetryPolicy {
    /// The pause before try `attempt` (1 = the first retry): doubling, capped, with
    /// full jitter so writers that collided do not collide again.
    fn backoff(&self, attempt: u32) -> Duration {
        let doubled = self
            .first_backoff
            .saturating_mul(1u32 << attempt.min(16).saturating_sub(1));
        let cap = doubled.min(self.max_backoff);
        let micros = u64::try_from(cap.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(rand::rng().random_range(micros / 2..=micros.max(1)))
    }
}

/// Called with the reason of each retry, for metrics and logs.
pub type RetryObserver = Arc<dyn Fn(&StoreError) + Send + Sync>;

/// Wraps a store writer with retries and batch splitting. Every try is timed and every
/// retry and final error counted in the metrics, under the writer's labels.
pub struct ResilientWriter {
    inner: Box<dyn StoreWriter>,
    policy: RetryPolicy,
    on_retry: Option<RetryObserver>,
    labels: StoreLabels,
}

/// Metric labels of one writer.
#[derive(Debug, Clone, Copy)]
pub struct StoreLabels {
    pub engine: &'static str,
    pub operation: &'static str,
}

impl ResilientWriter {
    pub fn new(inner: Box<dyn StoreWriter>, policy: RetryPolicy) -> Self {
        ResilientWriter {
            inner,
            policy,
            on_retry: None,
            labels: StoreLabels {
                engine: "store",
                operation: "write",
            },
        }
    }

    pub fn labels(mut self, labels: StoreLabels) -> Self {
        self.labels = labels;
        self
    }

    pub fn on_retry(mut self, observer: RetryObserver) -> Self {
        self.on_retry = Some(observer);
        self
    }

    /// Registers `rows` (ids unique); one result per row, in order.
    pub fn register(
        &mut self,
        rows: &[InstanceRecord],
        options: RegisterOptions,
    ) -> Vec<RowResult<RegisterOutcome>> {
        self.split_on_failure(rows, &mut |w, part| w.register(part, options))
    }

    /// Deregisters `ids` (unique); one result per id, in order.
    pub fn deregister(&mut self, ids: &[String]) -> Vec<RowResult<DeregisterOutcome>> {
        self.split_on_failure(ids, &mut |w, part| w.deregister(part))
    }

    pub fn inner(&mut self) -> &mut dyn StoreWriter {
        self.inner.as_mut()
    }

    fn split_on_failure<R, T>(
        &mut self,
        rows: &[R],
        write: &mut dyn FnMut(&mut dyn StoreWriter, &[R]) -> Result<Vec<T>, StoreError>,
    ) -> Vec<RowResult<T>> {
        if rows.is_empty() {
            return Vec::new();
        }
        match self.with_retries(rows, write) {
            Ok(outcomes) => {
                debug_assert_eq!(outcomes.len(), rows.len());
                outcomes.into_iter().map(Ok).collect()
            }
            Err(err) if rows.len() > 1 && !err.is_retriable() => {
                let (left, right) = rows.split_at(rows.len() / 2);
                let mut results = self.split_on_failure(left, write);
                results.extend(self.split_on_failure(right, write));
                results
            }
            Err(err) => {
                telemetry::record_store_error(self.labels.engine, self.labels.operation, &err);
                tracing::error!(error = %err, rows = rows.len(), "store write failed");
                let shared = Arc::new(err);
                rows.iter().map(|_| Err(Arc::clone(&shared))).collect()
            }
        }
    }

    fn with_retries<R, T>(
        &mut self,
        rows: &[R],
        write: &mut dyn FnMut(&mut dyn StoreWriter, &[R]) -> Result<Vec<T>, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut attempt = 1;
        loop {
            let started = std::time::Instant::now();
            let result = write(self.inner.as_mut(), rows);
            let StoreLabels { engine, operation } = self.labels;
            telemetry::record_store_transaction(
                engine,
                operation,
                started.elapsed(),
                result.is_ok(),
            );
            match result {
                Err(err) if err.is_retriable() && attempt < self.policy.attempts => {
                    telemetry::record_store_retry(engine, operation, &err);
                    if let Some(observer) = &self.on_retry {
                        observer(&err);
                    }
                    tracing::warn!(attempt, error = %err, rows = rows.len(), "store write failed; retrying");
                    std::thread::sleep(self.policy.backoff(attempt));
                    attempt += 1;
                }
                result => return result,
            }
        }
    }
}
