//! A writer that never fails a batch for one row's sake, nor for a short outage of its
//! database: contention (deadlocks, busy files) is retried a few times with capped,
//! jittered backoff; an unreachable database is retried until it has been away for
//! `outage_wait`; any other error splits the batch in halves until the rows that fail on
//! their own are alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::RngExt;

use crate::telemetry::StoreMetrics;

use super::{
    DeregisterOutcome, HealthChange, HealthSet, InstanceRecord, RegisterOptions, RegisterOutcome,
    Registered, StoreError, StoreWriter,
};

/// The least time a try may go without an answer from the database.
const MIN_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// One row's result; the error is shared by the rows of a batch that failed together.
pub type RowResult<T> = Result<T, Arc<StoreError>>;

/// How often and how patiently transient errors are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Tries in all, the first included, of a write that meets contention.
    pub attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// How long a write keeps trying while its database is unreachable.
    pub outage_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            first_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(500),
            outage_wait: Duration::from_secs(10),
        }
    }
}

/// Whether a writer's database is unreachable (from the first failed try until it answers
/// again), seen from other threads: the batch layer's admission does not judge the
/// store's rate meanwhile.
#[derive(Debug, Clone, Default)]
pub struct OutageWatch(Arc<OutageState>);

#[derive(Debug, Default)]
struct OutageState {
    waiting: AtomicBool,
    /// Outages met so far: a write that saw this change met one.
    episodes: AtomicU64,
    /// When the last outage ended.
    ended: std::sync::Mutex<Option<Instant>>,
}

impl OutageWatch {
    /// The writer's database is unreachable now.
    pub fn waiting(&self) -> bool {
        self.0.waiting.load(Ordering::Acquire)
    }

    /// How many outages the writer has met; compare two readings to tell whether a
    /// write met one.
    pub fn episodes(&self) -> u64 {
        self.0.episodes.load(Ordering::Acquire)
    }

    fn begin(&self) {
        self.0.episodes.fetch_add(1, Ordering::AcqRel);
        self.0.waiting.store(true, Ordering::Release);
    }

    /// When the last outage ended; `None` if none has.
    pub fn ended(&self) -> Option<Instant> {
        *self.0.ended.lock().expect("outage lock")
    }

    fn end(&self) {
        *self.0.ended.lock().expect("outage lock") = Some(Instant::now());
        self.0.waiting.store(false, Ordering::Release);
    }

    /// Sets the state as a writer would, for tests of what reads it.
    #[cfg(test)]
    pub(crate) fn set_waiting(&self, waiting: bool) {
        if waiting {
            self.begin();
        } else {
            self.end();
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
    outage: OutageWatch,
    /// When the database was first found unreachable, while it still is.
    outage_since: Option<Instant>,
    /// A write since this was last cleared succeeded after a try that lost the
    /// database: that try's commit may have landed without its answer.
    commit_uncertain: bool,
}

impl ResilientWriter {
    /// `metrics` are the writer's, labelled with its engine and operation.
    pub fn new(
        mut inner: Box<dyn StoreWriter>,
        policy: RetryPolicy,
        metrics: StoreMetrics,
    ) -> Self {
        // A try that hangs longer than the whole outage wait fails, so that the wait
        // ends; never so soon that a slow but working database is cut off.
        inner.set_answer_timeout(policy.outage_wait.max(MIN_ANSWER_TIMEOUT));
        ResilientWriter {
            inner,
            policy,
            metrics,
            outage: OutageWatch::default(),
            outage_since: None,
            commit_uncertain: false,
        }
    }

    /// Whether this writer is waiting for its database, for other threads to see.
    pub fn outage(&self) -> OutageWatch {
        self.outage.clone()
    }

    /// Registers `rows` (ids unique); one result per row, in order. When a try lost the
    /// database and a later one succeeded, the lost one may have committed: a row the
    /// later try found unchanged is reported replaced, as the client's request did
    /// change it (or found it so), rather than as already there.
    pub fn register(
        &mut self,
        rows: &[InstanceRecord],
        options: RegisterOptions,
    ) -> Vec<RowResult<Registered>> {
        self.commit_uncertain = false;
        let mut results = self.split_on_failure(rows, &mut |w, part| w.register(part, options));
        if std::mem::take(&mut self.commit_uncertain) {
            for registered in results.iter_mut().flatten() {
                if registered.outcome == RegisterOutcome::Unchanged {
                    registered.outcome = RegisterOutcome::Replaced;
                }
            }
        }
        results
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
            Err(err) if rows.len() > 1 && !err.is_retriable() && !err.is_outage() => {
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

    /// Tries the write until it succeeds, fails for good, meets contention `attempts`
    /// times, or finds the database unreachable for `outage_wait`. The outage is the
    /// writer's, not the batch's: once the database has been away that long, the next
    /// batches fail at their first failed try, until the database answers again.
    fn with_retries<R, T>(
        &mut self,
        rows: &[R],
        write: &mut Write<'_, R, T>,
    ) -> Result<Vec<T>, StoreError> {
        let mut retries = 0;
        let mut contended = 1;
        let mut lost_database = false;
        loop {
            let started = Instant::now();
            let result = write(self.inner.as_mut(), rows);
            self.metrics.transaction(started.elapsed(), result.is_ok());
            let err = match result {
                Err(err) if err.is_outage() => {
                    lost_database = true;
                    let since = *self.outage_since.get_or_insert_with(|| {
                        self.outage.begin();
                        self.metrics.outage_began();
                        started
                    });
                    let waited = since.elapsed();
                    if waited >= self.policy.outage_wait {
                        return Err(StoreError::Unreachable {
                            waited,
                            source: Box::new(err),
                        });
                    }
                    err
                }
                result => {
                    // The database answered: any outage is over.
                    if self.outage_since.take().is_some() {
                        self.outage.end();
                        self.metrics.outage_ended();
                    }
                    match result {
                        Err(err) if err.is_retriable() && contended < self.policy.attempts => {
                            contended += 1;
                            err
                        }
                        result => {
                            self.commit_uncertain |= lost_database && result.is_ok();
                            return result;
                        }
                    }
                }
            };
            retries += 1;
            self.metrics.retried(err.reason());
            tracing::warn!(retries, error = %err, rows = rows.len(), "store write failed; retrying");
            let mut pause = self.policy.backoff(retries);
            if let Some(since) = self.outage_since {
                // The last try comes at the end of the wait, not a backoff after it.
                pause = pause.min(self.policy.outage_wait.saturating_sub(since.elapsed()));
            }
            std::thread::sleep(pause);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use crate::store::DeregisterOutcome;

    /// Deregisters by answering `Absent`, or fails each try with the next error given.
    struct Scripted {
        failures: Arc<Mutex<Vec<StoreError>>>,
        tries: Arc<Mutex<Vec<usize>>>,
    }

    impl StoreWriter for Scripted {
        /// Finds every row unchanged once it succeeds.
        fn register(
            &mut self,
            rows: &[InstanceRecord],
            _: RegisterOptions,
        ) -> Result<Vec<Registered>, StoreError> {
            self.tries.lock().unwrap().push(rows.len());
            match self.failures.lock().unwrap().pop() {
                Some(error) => Err(error),
                None => Ok(rows
                    .iter()
                    .map(|_| Registered {
                        outcome: RegisterOutcome::Unchanged,
                        stored: None,
                    })
                    .collect()),
            }
        }

        fn deregister(&mut self, ids: &[String]) -> Result<Vec<DeregisterOutcome>, StoreError> {
            self.tries.lock().unwrap().push(ids.len());
            match self.failures.lock().unwrap().pop() {
                Some(error) => {
                    // A failed try takes a moment, as a refused connect does.
                    std::thread::sleep(Duration::from_millis(2));
                    Err(error)
                }
                None => Ok(ids.iter().map(|_| DeregisterOutcome::Absent).collect()),
            }
        }

        fn set_health(&mut self, _: &[HealthChange]) -> Result<Vec<Option<HealthSet>>, StoreError> {
            unimplemented!("only deregister is scripted")
        }
    }

    fn scripted(
        failures: Vec<StoreError>,
        outage_wait: Duration,
    ) -> (ResilientWriter, Arc<Mutex<Vec<usize>>>) {
        let tries = Arc::new(Mutex::new(Vec::new()));
        let inner = Scripted {
            failures: Arc::new(Mutex::new(failures.into_iter().rev().collect())),
            tries: Arc::clone(&tries),
        };
        let policy = RetryPolicy {
            attempts: 3,
            first_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(20),
            outage_wait,
        };
        let metrics = StoreMetrics::new("test", "deregister", &[]);
        (
            ResilientWriter::new(Box::new(inner), policy, metrics),
            tries,
        )
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("id-{i}")).collect()
    }

    fn stalled() -> StoreError {
        StoreError::Stalled(Duration::from_secs(1))
    }

    #[test]
    fn an_outage_shorter_than_the_wait_is_ridden_through() {
        // Ten failed tries are far more than `attempts`, but well within the wait.
        let (mut writer, tries) = scripted(
            (0..10).map(|_| stalled()).collect(),
            Duration::from_secs(30),
        );
        let watch = writer.outage();
        let results = writer.deregister(&ids(4));
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Ok(DeregisterOutcome::Absent)))
        );
        assert_eq!(
            *tries.lock().unwrap(),
            vec![4; 11],
            "the whole batch, never split"
        );
        assert_eq!(watch.episodes(), 1);
        assert!(!watch.waiting());
    }

    #[test]
    fn an_outage_longer_than_the_wait_fails_the_batch_naming_the_cause() {
        let (mut writer, tries) = scripted(
            (0..1000).map(|_| stalled()).collect(),
            Duration::from_millis(60),
        );
        let started = Instant::now();
        let results = writer.deregister(&ids(4));
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(60), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        for result in &results {
            let error = result.as_ref().unwrap_err();
            assert!(matches!(**error, StoreError::Unreachable { .. }), "{error}");
            let message = error.to_string();
            assert!(
                message.starts_with("the database was unreachable for 0.")
                    && message.ends_with("no answer from the database within 1s"),
                "{message}"
            );
        }
        assert!(
            tries.lock().unwrap().iter().all(|&n| n == 4),
            "an unreachable store does not split the batch"
        );
        let watch = writer.outage();
        assert!(watch.waiting(), "still unreachable");
        // Still away: the next batch fails at its first try.
        let tried = tries.lock().unwrap().len();
        assert!(writer.deregister(&ids(2)).iter().all(Result::is_err));
        assert_eq!(tries.lock().unwrap().len(), tried + 1);
    }

    #[test]
    fn a_row_found_unchanged_after_a_lost_commit_is_reported_replaced() {
        let rows = [InstanceRecord::sample("a"), InstanceRecord::sample("b")];
        let options = RegisterOptions {
            create_services: true,
        };
        let outcomes = |writer: &mut ResilientWriter| -> Vec<RegisterOutcome> {
            writer
                .register(&rows, options)
                .into_iter()
                .map(|r| r.unwrap().outcome)
                .collect()
        };
        // The first try lost the database: its commit may have landed.
        let (mut writer, _) = scripted(vec![stalled()], Duration::from_secs(30));
        assert_eq!(outcomes(&mut writer), [RegisterOutcome::Replaced; 2]);
        // The next batch met no outage: unchanged is unchanged.
        assert_eq!(outcomes(&mut writer), [RegisterOutcome::Unchanged; 2]);
        // Contention is not a lost commit: the transaction was rolled back.
        let (mut writer, _) = scripted(vec![StoreError::Raced], Duration::from_secs(30));
        assert_eq!(outcomes(&mut writer), [RegisterOutcome::Unchanged; 2]);
    }

    #[test]
    fn the_outage_ends_when_the_database_answers() {
        let (mut writer, tries) = scripted(vec![stalled()], Duration::from_millis(1));
        let watch = writer.outage();
        assert!(writer.deregister(&ids(1)).iter().all(Result::is_err));
        assert!(watch.waiting());
        // The database answers the next try: written, and the outage is over.
        assert!(writer.deregister(&ids(1)).iter().all(Result::is_ok));
        assert!(!watch.waiting());
        assert_eq!(watch.episodes(), 1);
        assert_eq!(tries.lock().unwrap().len(), 2);
    }

    #[test]
    fn contention_is_tried_attempts_times() {
        let raced = || StoreError::Raced;
        let (mut writer, tries) = scripted(vec![raced(), raced()], Duration::from_secs(30));
        assert!(writer.deregister(&ids(2)).iter().all(Result::is_ok));
        assert_eq!(tries.lock().unwrap().len(), 3);
        let (mut writer, tries) =
            scripted((0..3).map(|_| raced()).collect(), Duration::from_secs(30));
        let results = writer.deregister(&ids(2));
        assert!(
            results
                .iter()
                .all(|r| matches!(r.as_ref().map_err(|e| &**e), Err(StoreError::Raced)))
        );
        assert_eq!(
            tries.lock().unwrap().len(),
            3,
            "attempts = 3, and not split"
        );
        assert_eq!(writer.outage().episodes(), 0);
    }

    #[test]
    fn a_row_that_fails_alone_is_split_out() {
        let bad = || StoreError::BadRow {
            column: 0,
            reason: "test".to_owned(),
        };
        // The batch of 2 fails, then its halves: the first fails alone, the second works.
        let (mut writer, tries) = scripted(vec![bad(), bad()], Duration::from_secs(30));
        let results = writer.deregister(&ids(2));
        assert!(results[0].is_err() && results[1].is_ok());
        assert_eq!(*tries.lock().unwrap(), vec![2, 1, 1]);
    }

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

    /// A Galera node that is joining, desynced or cut off from the primary component.
    fn node_not_ready() -> StoreError {
        server_error(1047, "WSREP has not yet prepared node for application use")
    }

    #[test]
    fn a_galera_conflict_is_contention_and_a_node_not_ready_an_outage() {
        assert!(certification_conflict().is_retriable());
        assert!(!certification_conflict().is_outage());
        assert_eq!(certification_conflict().reason(), "deadlock");
        assert!(node_not_ready().is_outage());
        assert_eq!(node_not_ready().reason(), "connection");
        for code in [1062, 1064, 1146, 1406] {
            let error = server_error(code, "");
            assert!(!error.is_retriable() && !error.is_outage(), "{code}");
        }
    }

    #[test]
    fn a_batch_that_loses_certification_at_commit_is_tried_again_whole() {
        let (mut writer, tries) = scripted(
            vec![certification_conflict(), certification_conflict()],
            Duration::from_secs(30),
        );
        assert!(writer.deregister(&ids(4)).iter().all(Result::is_ok));
        assert_eq!(
            *tries.lock().unwrap(),
            vec![4; 3],
            "one transaction, never split"
        );
        assert_eq!(writer.outage().episodes(), 0);
    }

    #[test]
    fn a_node_not_ready_is_waited_for_like_a_database_away() {
        // Ten tries are more than `attempts`, within the outage wait; then the node
        // serves, and the first commit there loses a certification conflict.
        let mut failures: Vec<StoreError> = (0..10).map(|_| node_not_ready()).collect();
        failures.push(certification_conflict());
        let (mut writer, tries) = scripted(failures, Duration::from_secs(30));
        assert!(writer.deregister(&ids(3)).iter().all(Result::is_ok));
        assert_eq!(*tries.lock().unwrap(), vec![3; 12]);
        assert_eq!(writer.outage().episodes(), 1);
    }
}
