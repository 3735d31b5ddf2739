//! A writer that never fails a batch for one row's sake: transient errors are retried with
//! capped, jittered backoff; any other error splits the batch in halves until the rows
//! that fail on their own are alone.

use std::sync::Arc;
use std::time::Duration;

use rand::RngExt;

use crate::telemetry::StoreMetrics;

use super::{
    DeregisterOutcome, HealthChange, HealthSet, InstanceRecord, RegisterOptions, Registered,
    StoreError, StoreWriter,
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

/// One try of a write of `rows` on the writer.
type Write<'w, R, T> = dyn FnMut(&mut dyn StoreWriter, &[R]) -> Result<Vec<T>, StoreError> + 'w;

/// Wraps a store writer with retries and batch splitting. Every try is timed and every
/// retry and final error counted in its metrics.
pub struct ResilientWriter {
    inner: Box<dyn StoreWriter>,
    policy: RetryPolicy,
    metrics: StoreMetrics,
}

impl ResilientWriter {
    /// `metrics` are the writer's, labelled with its engine and operation.
    pub fn new(inner: Box<dyn StoreWriter>, policy: RetryPolicy, metrics: StoreMetrics) -> Self {
        ResilientWriter {
            inner,
            policy,
            metrics,
        }
    }

    /// Registers `rows` (ids unique); one result per row, in order.
    pub fn register(
        &mut self,
        rows: &[InstanceRecord],
        options: RegisterOptions,
    ) -> Vec<RowResult<Registered>> {
        self.split_on_failure(rows, &mut |w, part| w.register(part, options))
    }

    /// Writes health transitions (distinct instances); one result per change, in order.
    pub fn set_health(&mut self, changes: &[HealthChange]) -> Vec<RowResult<Option<HealthSet>>> {
        self.split_on_failure(changes, &mut |w, part| w.set_health(part))
    }

    /// Deregisters `ids` (unique); one result per id, in order.
    pub fn deregister(&mut self, ids: &[String]) -> Vec<RowResult<DeregisterOutcome>> {
        self.split_on_failure(ids, &mut |w, part| w.deregister(part))
    }

    /// See [`StoreWriter::prepare_for_registrations`].
    pub fn prepare_for_registrations(&mut self) -> Result<(), StoreError> {
        self.inner.prepare_for_registrations()
    }

    fn split_on_failure<R, T>(
        &mut self,
        rows: &[R],
        write: &mut Write<'_, R, T>,
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
                self.metrics.failed(err.reason());
                tracing::error!(error = %err, rows = rows.len(), "store write failed");
                let shared = Arc::new(err);
                rows.iter().map(|_| Err(Arc::clone(&shared))).collect()
            }
        }
    }

    fn with_retries<R, T>(
        &mut self,
        rows: &[R],
        write: &mut Write<'_, R, T>,
    ) -> Result<Vec<T>, StoreError> {
        let mut attempt = 1;
        loop {
            let started = std::time::Instant::now();
            let result = write(self.inner.as_mut(), rows);
            self.metrics.transaction(started.elapsed(), result.is_ok());
            match result {
                Err(err) if err.is_retriable() && attempt < self.policy.attempts => {
                    self.metrics.retried(err.reason());
                    tracing::warn!(attempt, error = %err, rows = rows.len(), "store write failed; retrying");
                    std::thread::sleep(self.policy.backoff(attempt));
                    attempt += 1;
                }
                result => return result,
            }
        }
    }
}
