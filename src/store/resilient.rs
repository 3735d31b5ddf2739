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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// A server error as the driver reports it.
    fn server_error(code: u16, message: &str) -> StoreError {
        StoreError::Mysql(mysql_async::Error::Server(mysql_async::ServerError {
            code,
            message: message.to_owned(),
            state: "40001".to_owned(),
        }))
    }

    /// A Galera certification conflict, as the COMMIT of the losing transaction meets it.
    fn certification_conflict() -> StoreError {
        server_error(
            1213,
            "WSREP detected deadlock/conflict and aborted the transaction. Try restarting the transaction",
        )
    }

    /// A Galera node that is joining or cut off from the primary component.
    fn node_not_ready() -> StoreError {
        server_error(1047, "WSREP has not yet prepared node for application use")
    }

    /// A writer whose transactions fail whole, with the queued errors in turn (as a
    /// transaction rolled back at COMMIT writes nothing), before one commits.
    #[derive(Default)]
    struct Conflicted {
        failures: VecDeque<StoreError>,
        tries: Arc<std::sync::Mutex<u32>>,
        committed: Arc<std::sync::Mutex<Vec<String>>>,
    }

    impl StoreWriter for Conflicted {
        fn register(
            &mut self,
            _rows: &[InstanceRecord],
            _options: RegisterOptions,
        ) -> Result<Vec<Registered>, StoreError> {
            unimplemented!("only deregistrations are written here")
        }

        fn deregister(&mut self, ids: &[String]) -> Result<Vec<DeregisterOutcome>, StoreError> {
            *self.tries.lock().unwrap() += 1;
            if let Some(error) = self.failures.pop_front() {
                return Err(error);
            }
            self.committed.lock().unwrap().extend(ids.iter().cloned());
            Ok(ids
                .iter()
                .map(|_| DeregisterOutcome::Deleted { at: "t".to_owned() })
                .collect())
        }

        fn set_health(
            &mut self,
            _changes: &[HealthChange],
        ) -> Result<Vec<Option<HealthSet>>, StoreError> {
            unimplemented!("only deregistrations are written here")
        }
    }

    fn quick_policy() -> RetryPolicy {
        RetryPolicy {
            attempts: 6,
            first_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
        }
    }

    /// Runs one batch of `ids` through a resilient writer whose inner transactions
    /// first fail with `failures`; the results, the tries, and the ids committed.
    fn write_through(
        failures: Vec<StoreError>,
        ids: &[String],
    ) -> (Vec<RowResult<DeregisterOutcome>>, u32, Vec<String>) {
        let inner = Conflicted {
            failures: failures.into(),
            ..Default::default()
        };
        let (tries, committed) = (Arc::clone(&inner.tries), Arc::clone(&inner.committed));
        let mut writer = ResilientWriter::new(
            Box::new(inner),
            quick_policy(),
            StoreMetrics::new("mysql", "resilient_test", &["deadlock", "connection"]),
        );
        let results = writer.deregister(ids);
        let tries = *tries.lock().unwrap();
        let committed = committed.lock().unwrap().clone();
        (results, tries, committed)
    }

    fn ids(count: usize) -> Vec<String> {
        (0..count).map(|i| format!("id-{i}")).collect()
    }

    #[test]
    fn galera_conflicts_and_unready_nodes_are_transient_other_server_errors_are_not() {
        assert!(certification_conflict().is_retriable());
        assert_eq!(certification_conflict().reason(), "deadlock");
        assert!(node_not_ready().is_retriable());
        assert_eq!(node_not_ready().reason(), "connection");
        for code in [1062, 1064, 1146, 1406] {
            assert!(!server_error(code, "").is_retriable(), "{code}");
        }
    }

    #[test]
    fn a_batch_that_loses_certification_at_commit_is_tried_again_whole() {
        let batch = ids(4);
        let (results, tries, committed) = write_through(
            vec![certification_conflict(), certification_conflict()],
            &batch,
        );
        assert!(results.iter().all(Result::is_ok));
        // Retried as one transaction, never split: each row committed once.
        assert_eq!(tries, 3);
        assert_eq!(committed, batch);
    }

    #[test]
    fn a_batch_on_a_node_not_ready_is_tried_again_until_the_node_serves() {
        let batch = ids(3);
        let failures = vec![node_not_ready(), node_not_ready(), certification_conflict()];
        let (results, tries, committed) = write_through(failures, &batch);
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(tries, 4);
        assert_eq!(committed, batch);
    }

    #[test]
    fn a_batch_that_keeps_losing_fails_whole_with_the_conflict_after_its_tries() {
        let batch = ids(2);
        let failures = (0..10).map(|_| certification_conflict()).collect();
        let (results, tries, committed) = write_through(failures, &batch);
        assert_eq!(tries, quick_policy().attempts);
        assert!(committed.is_empty());
        for result in &results {
            assert_eq!(result.as_ref().unwrap_err().reason(), "deadlock");
        }
    }
}
