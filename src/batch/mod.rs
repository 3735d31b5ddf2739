//! Batch controller: a bounded lock-free queue and the store workers that drain it.
//!
//! `submit` never blocks: a full queue, or one holding more than `max_queue_wait` of work
//! at the store's current rate (see [`admission`]), is an immediate `QueueFull`. Each store worker
//! blocks for the first request, takes whatever else is ready without blocking until the
//! batch is full, its oldest request has waited `max_wait`, or the queue is empty, and
//! writes it (TiKV's write worker). So a request crosses one queue and one thread before
//! its write, and a lone request at low load is written at once. Shutdown is one message
//! per worker in the same queue, so everything queued before it is written first.
//!
//! The layer is generic over the kind of write through [`BatchWrite`]; the kinds this
//! server writes are the naming layer's.

pub mod admission;
pub mod batcher;
pub mod reply;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use tokio::sync::oneshot;

use crate::code::Code;
use crate::store::StoreError;
use crate::store::resilient::{OutageWatch, RowResult};
use crate::telemetry::BatchMetrics;
use admission::Admission;
pub use batcher::{Batcher, FlushReason};
pub use reply::{BatchResult, Pending, Reply};

/// Why a request was not carried out by the batch layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    #[error("too many requests queued: try again shortly")]
    QueueFull,
    /// Taken from the queue too late to be written (see [`admission`]).
    #[error("waited too long in the queue: not written; try again shortly")]
    TooLate,
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("the request was dropped before it was written")]
    Abandoned,
    #[error("store write failed: {0}")]
    Store(#[source] Arc<StoreError>),
}

impl BatchError {
    /// The Polaris code the request is answered with.
    pub fn code(&self) -> Code {
        match self {
            BatchError::QueueFull | BatchError::TooLate => Code::InstanceTooManyRequests,
            BatchError::Store(_) => Code::StoreLayerException,
            BatchError::ShuttingDown | BatchError::Abandoned => Code::ExecuteException,
        }
    }
}

/// Writes one batch of distinct operations: one implementation per kind of write.
pub trait BatchWrite: Send + 'static {
    type Op: Send + 'static;
    type Outcome: Clone + Send + 'static;

    /// Requests with the same key in one batch are coalesced: the last one wins.
    fn key(op: &Self::Op) -> &str;

    /// One result per op, in order; ops have distinct keys.
    fn write(&mut self, ops: &[Self::Op]) -> Vec<RowResult<Self::Outcome>>;

    /// Whether the writer is waiting for an unreachable store, seen from other threads.
    fn outage(&self) -> OutageWatch;
}

/// Settings of one controller, validated by the config.
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    pub queue_size: NonZeroUsize,
    pub max_batch: NonZeroUsize,
    pub max_wait: Duration,
    /// Queued async-regis requests older than this are dropped, never written late.
    pub task_life: Duration,
    /// A request is refused when the queue holds more work than this at the store's
    /// rate; zero: only the queue's length bounds it.
    pub max_queue_wait: Duration,
}

type PendingOf<W> = Pending<<W as BatchWrite>::Op, <W as BatchWrite>::Outcome>;

enum Message<W: BatchWrite> {
    Request(PendingOf<W>),
    /// Stops the one worker that takes it.
    Shutdown,
}

/// The queue and the store workers of one kind of write.
pub struct BatchController<W: BatchWrite> {
    api: &'static str,
    queue: Sender<Message<W>>,
    /// Kept to answer what raced in behind the shutdown messages.
    leftovers: Receiver<Message<W>>,
    closed: AtomicBool,
    workers: Mutex<Vec<JoinHandle<()>>>,
    admission: Arc<Admission>,
    metrics: BatchMetrics,
}

impl<W: BatchWrite> BatchController<W> {
    /// Starts one store worker thread per writer. `api` names the controller in metrics
    /// and thread names.
    pub fn start(api: &'static str, settings: BatchSettings, writers: Vec<W>) -> Self {
        assert!(
            !writers.is_empty(),
            "a batch controller needs a store worker"
        );
        let (queue_tx, queue_rx) = crossbeam_channel::bounded(settings.queue_size.get());
        let reasons = FlushReason::ALL.map(FlushReason::as_str);
        let metrics = BatchMetrics::new(api, &reasons);
        let admission = Arc::new(Admission::new(
            settings.max_queue_wait,
            settings.max_batch.get(),
            writers.iter().map(BatchWrite::outage).collect(),
        ));
        let workers = writers
            .into_iter()
            .enumerate()
            .map(|(n, writer)| {
                let worker = StoreWorker {
                    api,
                    writer,
                    queue: queue_rx.clone(),
                    batcher: Batcher::new(settings.max_batch.get(), settings.max_wait),
                    task_life: settings.task_life,
                    metrics: metrics.clone(),
                    admission: Arc::clone(&admission),
                };
                std::thread::Builder::new()
                    .name(format!("{api}-store-{n}"))
                    .spawn(move || worker.run())
                    .expect("spawn store worker thread")
            })
            .collect();
        BatchController {
            api,
            queue: queue_tx,
            leftovers: queue_rx,
            closed: AtomicBool::new(false),
            workers: Mutex::new(workers),
            admission,
            metrics,
        }
    }

    /// Queues an operation; the receiver gets its answer once written.
    pub fn submit(
        &self,
        op: W::Op,
    ) -> Result<oneshot::Receiver<BatchResult<W::Outcome>>, BatchError> {
        let (reply, rx) = Reply::channel();
        self.enqueue(op, reply)?;
        Ok(rx)
    }

    /// Queues an operation whose caller does not wait for the write (async-regis).
    pub fn submit_detached(&self, op: W::Op) -> Result<(), BatchError> {
        self.enqueue(op, Reply::detached())
    }

    fn enqueue(&self, op: W::Op, reply: Reply<W::Outcome>) -> Result<(), BatchError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(BatchError::ShuttingDown);
        }
        if !self.admission.admits(self.queue.len()) {
            self.metrics.refused(false);
            return Err(BatchError::QueueFull);
        }
        let pending = Pending {
            op,
            reply,
            enqueued_at: Instant::now(),
        };
        match self.queue.try_send(Message::Request(pending)) {
            Ok(()) => Ok(()),
            // Nothing was enqueued; the caller is answered by the returned error.
            Err(TrySendError::Full(_)) => {
                self.metrics.refused(true);
                Err(BatchError::QueueFull)
            }
            Err(TrySendError::Disconnected(_)) => Err(BatchError::ShuttingDown),
        }
    }

    /// Requests waiting in the queue (not yet in a batch).
    #[cfg(test)]
    fn queue_depth(&self) -> usize {
        self.queue.len()
    }

    /// Stops taking requests, writes everything queued, answers every request, and joins
    /// the workers. Blocks: call it from a blocking context.
    pub fn shutdown(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let workers = std::mem::take(&mut *self.workers.lock().expect("workers lock"));
        for _ in &workers {
            // A blocking send: it waits for room behind the requests already queued.
            let _ = self.queue.send(Message::Shutdown);
        }
        for worker in workers {
            if worker.join().is_err() {
                tracing::error!(api = self.api, "a store worker thread panicked");
            }
        }
        // Anything that raced in behind the shutdown messages is answered, not lost.
        while let Ok(message) = self.leftovers.try_recv() {
            if let Message::Request(pending) = message {
                pending.reply.send(Err(BatchError::ShuttingDown));
            }
        }
    }
}

impl<W: BatchWrite> Drop for BatchController<W> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A batch a store worker took, for the admission's measure of the store's rate.
struct Cycle {
    size: usize,
    taken: Instant,
    met_outage: bool,
}

/// One store worker: takes batches from the queue, writes them, answers every request.
struct StoreWorker<W: BatchWrite> {
    api: &'static str,
    writer: W,
    queue: Receiver<Message<W>>,
    batcher: Batcher<PendingOf<W>>,
    task_life: Duration,
    metrics: BatchMetrics,
    admission: Arc<Admission>,
}

impl<W: BatchWrite> StoreWorker<W> {
    fn run(mut self) {
        // The last batch, when the worker went straight on to the next one: its cycle,
        // measured at the next take, is what a batch costs under a backlog, the time the
        // worker thread waited for a core included.
        let mut backlogged: Option<Cycle> = None;
        loop {
            // Block for the first request of the next batch.
            let first = match self.queue.recv() {
                Ok(Message::Request(pending)) => pending,
                Ok(Message::Shutdown) | Err(_) => return,
            };
            if let Some(last) = backlogged.take() {
                self.admission
                    .record(last.size, last.taken.elapsed(), last.met_outage);
            }
            self.batcher.push(first, Instant::now());
            let reason = self.fill();
            let batch = self.batcher.take();
            let size = batch.len();
            let queued = self.queue.len();
            self.metrics.flushed(reason as usize, size, queued);
            if let Some(estimate) = self.admission.estimate(queued) {
                self.metrics.wait_estimated(estimate);
            }
            let outage = self.writer.outage();
            let outages_before = outage.episodes();
            let taken = Instant::now();
            // A panic in a write answers the batch through the reply guards; the worker
            // keeps serving.
            if catch_unwind(AssertUnwindSafe(|| self.write_batch(batch))).is_err() {
                tracing::error!(
                    api = self.api,
                    "store worker panicked while writing a batch"
                );
            }
            self.admission.written(taken.elapsed());
            let cycle = Cycle {
                size,
                taken,
                met_outage: outage.episodes() != outages_before,
            };
            if self.queue.is_empty() {
                // Idle next: the batch's own time is its cost.
                self.admission
                    .record(size, taken.elapsed(), cycle.met_outage);
            } else {
                backlogged = Some(cycle);
            }
            if reason == FlushReason::Shutdown {
                return;
            }
        }
    }

    /// Takes what is ready into the batch, without blocking, until the batcher says why
    /// it must be written now.
    fn fill(&mut self) -> FlushReason {
        loop {
            let now = Instant::now();
            if let Some(reason) = self.batcher.flush_reason(now, false) {
                return reason;
            }
            match self.queue.try_recv() {
                Ok(Message::Request(pending)) => self.batcher.push(pending, now),
                Ok(Message::Shutdown) | Err(TryRecvError::Disconnected) => {
                    return FlushReason::Shutdown;
                }
                Err(TryRecvError::Empty) => {
                    return self
                        .batcher
                        .flush_reason(now, true)
                        .unwrap_or(FlushReason::Idle);
                }
            }
        }
    }

    /// Coalesces the batch by key (the last request wins), writes it once, and answers
    /// every request with the outcome of its key.
    fn write_batch(&mut self, batch: Vec<PendingOf<W>>) {
        let now = Instant::now();
        let mut ops: Vec<W::Op> = Vec::with_capacity(batch.len());
        let mut replies: Vec<(Reply<W::Outcome>, usize)> = Vec::with_capacity(batch.len());
        let mut slot_of: HashMap<String, usize> = HashMap::with_capacity(batch.len());
        for pending in batch {
            let waited = now.saturating_duration_since(pending.enqueued_at);
            if !pending.reply.is_detached() && self.admission.too_late(waited) {
                self.metrics.refused_late();
                pending.reply.send(Err(BatchError::TooLate));
                continue;
            }
            self.metrics.queued(waited);
            if pending.reply.is_detached() && waited > self.task_life {
                self.metrics.dropped();
                tracing::warn!(
                    api = self.api,
                    "async request older than task_life dropped unwritten"
                );
                continue;
            }
            let key = W::key(&pending.op);
            let slot = match slot_of.get(key) {
                Some(&slot) => {
                    ops[slot] = pending.op;
                    slot
                }
                None => {
                    slot_of.insert(key.to_owned(), ops.len());
                    ops.push(pending.op);
                    ops.len() - 1
                }
            };
            replies.push((pending.reply, slot));
        }
        if ops.is_empty() {
            return;
        }
        let started = Instant::now();
        let results = self.writer.write(&ops);
        debug_assert_eq!(results.len(), ops.len());
        let failed = results.iter().filter(|r| r.is_err()).count();
        tracing::debug!(
            api = self.api,
            requests = replies.len(),
            distinct = ops.len(),
            failed,
            took = ?started.elapsed(),
            "batch written"
        );
        for (reply, slot) in replies {
            let result = match results.get(slot) {
                Some(Ok(outcome)) => Ok(outcome.clone()),
                Some(Err(err)) => Err(BatchError::Store(Arc::clone(err))),
                None => Err(BatchError::Abandoned),
            };
            reply.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Every batch a fake write saw, in order.
    type Batches = Arc<Mutex<Vec<Vec<(String, u32)>>>>;

    /// Records every batch; a key `block` makes the write wait for the gate.
    struct FakeWrite {
        batches: Batches,
        gate: Receiver<()>,
        fail_key: Option<&'static str>,
        outage: OutageWatch,
    }

    impl BatchWrite for FakeWrite {
        type Op = (String, u32);
        type Outcome = u32;

        fn key(op: &(String, u32)) -> &str {
            &op.0
        }

        fn outage(&self) -> OutageWatch {
            self.outage.clone()
        }

        fn write(&mut self, ops: &[(String, u32)]) -> Vec<RowResult<u32>> {
            if ops.iter().any(|(key, _)| key == "block") {
                self.gate.recv().unwrap();
            }
            if ops.iter().any(|(key, _)| key == "panic") {
                panic!("writer panicked");
            }
            if ops.iter().any(|(key, _)| key.starts_with("slow")) {
                std::thread::sleep(Duration::from_millis(50));
            }
            self.batches.lock().unwrap().push(ops.to_vec());
            ops.iter()
                .map(|(key, value)| {
                    if Some(key.as_str()) == self.fail_key {
                        Err(Arc::new(StoreError::Poisoned))
                    } else {
                        Ok(*value)
                    }
                })
                .collect()
        }
    }

    struct Harness {
        controller: BatchController<FakeWrite>,
        batches: Batches,
        gate: Sender<()>,
    }

    fn harness(
        queue_size: usize,
        max_batch: usize,
        max_wait: Duration,
        task_life: Duration,
    ) -> Harness {
        harness_with_admission(queue_size, max_batch, max_wait, task_life, Duration::ZERO)
    }

    fn harness_with_admission(
        queue_size: usize,
        max_batch: usize,
        max_wait: Duration,
        task_life: Duration,
        max_queue_wait: Duration,
    ) -> Harness {
        let (gate, gate_rx) = crossbeam_channel::unbounded();
        let batches = Arc::new(Mutex::new(Vec::new()));
        let writer = FakeWrite {
            batches: Arc::clone(&batches),
            gate: gate_rx,
            fail_key: Some("bad"),
            outage: OutageWatch::default(),
        };
        let settings = BatchSettings {
            queue_size: NonZeroUsize::new(queue_size).unwrap(),
            max_batch: NonZeroUsize::new(max_batch).unwrap(),
            max_wait,
            task_life,
            max_queue_wait,
        };
        Harness {
            controller: BatchController::start("test", settings, vec![writer]),
            batches,
            gate,
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    fn op(key: &str, value: u32) -> (String, u32) {
        (key.to_owned(), value)
    }

    /// Waits until the blocking op has reached the writer (the batcher has handed it over).
    fn wait_until_queue_empty(controller: &BatchController<FakeWrite>) {
        while controller.queue_depth() > 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    #[test]
    fn a_lone_request_is_written_without_waiting_for_the_timer() {
        // max_wait of an hour: only the idle flush can answer this request.
        let h = harness(16, 16, HOUR, HOUR * 2);
        let rx = h.controller.submit(op("a", 1)).unwrap();
        assert_eq!(rx.blocking_recv().unwrap().unwrap(), 1);
        assert_eq!(h.batches.lock().unwrap().clone(), vec![vec![op("a", 1)]]);
    }

    #[test]
    fn same_key_requests_in_a_batch_are_coalesced_last_wins() {
        let h = harness(64, 4, HOUR, HOUR * 2);
        let blocker = h.controller.submit(op("block", 0)).unwrap();
        wait_until_queue_empty(&h.controller);
        // The worker is busy: these four fill one batch, flushed on size.
        let answers: Vec<_> = [op("a", 1), op("a", 2), op("b", 3), op("a", 4)]
            .into_iter()
            .map(|o| h.controller.submit(o).unwrap())
            .collect();
        h.gate.send(()).unwrap();
        assert_eq!(blocker.blocking_recv().unwrap().unwrap(), 0);
        let values: Vec<u32> = answers
            .into_iter()
            .map(|rx| rx.blocking_recv().unwrap().unwrap())
            .collect();
        assert_eq!(
            values,
            vec![4, 4, 3, 4],
            "every request gets the outcome of the single write"
        );
        let batches = h.batches.lock().unwrap().clone();
        assert_eq!(batches[1], vec![op("a", 4), op("b", 3)]);
    }

    #[test]
    fn a_full_queue_answers_at_once_and_enqueues_nothing() {
        let h = harness(2, 1, HOUR, HOUR * 2);
        let blocker = h.controller.submit(op("block", 0)).unwrap();
        wait_until_queue_empty(&h.controller);
        let mut accepted = Vec::new();
        let mut refused = 0;
        for i in 1..=10 {
            match h.controller.submit(op(&format!("k{i}"), i)) {
                Ok(rx) => accepted.push((i, rx)),
                Err(BatchError::QueueFull) => refused += 1,
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        h.gate.send(()).unwrap();
        // The queue holds 2; the batcher may also hold one batch of 1 waiting for the
        // worker, depending on whether it took k1 before k2 and k3 arrived.
        assert!(
            (2..=3).contains(&accepted.len()),
            "accepted {}",
            accepted.len()
        );
        assert_eq!(refused, 10 - accepted.len());
        blocker.blocking_recv().unwrap().unwrap();
        let accepted_count = accepted.len();
        for (i, rx) in accepted {
            assert_eq!(rx.blocking_recv().unwrap().unwrap(), i);
        }
        let written: usize = h.batches.lock().unwrap().iter().map(Vec::len).sum();
        assert_eq!(
            written,
            1 + accepted_count,
            "refused requests were never written"
        );
    }

    #[test]
    fn a_queue_holding_more_than_max_queue_wait_of_work_refuses_at_once() {
        let h = harness_with_admission(1_000, 2, HOUR, HOUR * 2, Duration::from_millis(100));
        // A full batch measured: 50 ms.
        let blocker = h.controller.submit(op("block", 0)).unwrap();
        wait_until_queue_empty(&h.controller);
        let slow: Vec<_> = ["slow-a", "slow-b"]
            .into_iter()
            .map(|key| h.controller.submit(op(key, 1)).unwrap())
            .collect();
        h.gate.send(()).unwrap();
        blocker.blocking_recv().unwrap().unwrap();
        for rx in slow {
            rx.blocking_recv().unwrap().unwrap();
        }
        // The worker busy again: each queued batch of 2 takes 50 ms or more, and the one
        // in the worker comes first. A queue shorter than one round of full batches is
        // always admitted; about three queued are already over 100 ms of work.
        let blocker = h.controller.submit(op("block", 0)).unwrap();
        wait_until_queue_empty(&h.controller);
        let mut accepted = Vec::new();
        let refused = loop {
            let i = accepted.len() as u32 + 1;
            match h.controller.submit(op(&format!("k{i}"), i)) {
                Ok(rx) => accepted.push((i, rx)),
                Err(error) => break error,
            }
            if accepted.len() == 100 {
                break BatchError::Abandoned;
            }
        };
        let queued = h.controller.queue_depth();
        // Released before any assertion, so that a failed one cannot hang the worker.
        h.gate.send(()).unwrap();
        assert!(matches!(refused, BatchError::QueueFull), "{refused:?}");
        assert!(
            (2..=4).contains(&queued),
            "refused with {queued} queued of 1,000"
        );
        blocker.blocking_recv().unwrap().unwrap();
        for (i, rx) in accepted {
            assert_eq!(rx.blocking_recv().unwrap().unwrap(), i);
        }
    }

    #[test]
    fn stale_async_requests_are_dropped_not_written_late() {
        let h = harness(64, 64, Duration::from_millis(5), Duration::from_millis(50));
        let blocker = h.controller.submit(op("block", 0)).unwrap();
        wait_until_queue_empty(&h.controller);
        h.controller.submit_detached(op("late-1", 1)).unwrap();
        h.controller.submit_detached(op("late-2", 2)).unwrap();
        let waiting = h.controller.submit(op("sync", 3)).unwrap();
        std::thread::sleep(Duration::from_millis(120));
        h.gate.send(()).unwrap();
        blocker.blocking_recv().unwrap().unwrap();
        // A caller that waits is always written; async ones past task_life are not.
        assert_eq!(waiting.blocking_recv().unwrap().unwrap(), 3);
        let written: Vec<String> = h
            .batches
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .map(|(k, _)| k.clone())
            .collect();
        assert_eq!(written, vec!["block", "sync"]);
    }

    #[test]
    fn shutdown_writes_everything_queued_and_answers_every_request() {
        let h = harness(1024, 1000, HOUR, HOUR * 2);
        let blocker = h.controller.submit(op("block", 0)).unwrap();
        wait_until_queue_empty(&h.controller);
        let answers: Vec<_> = (1..=100)
            .map(|i| h.controller.submit(op(&format!("k{i}"), i)).unwrap())
            .collect();
        let gate = h.gate.clone();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            gate.send(()).unwrap();
        });
        h.controller.shutdown();
        releaser.join().unwrap();
        blocker.blocking_recv().unwrap().unwrap();
        for (i, rx) in (1..=100).zip(answers) {
            assert_eq!(rx.blocking_recv().unwrap().unwrap(), i);
        }
        assert!(matches!(
            h.controller.submit(op("after", 1)),
            Err(BatchError::ShuttingDown)
        ));
    }

    #[test]
    fn a_failed_row_gets_the_store_error_and_its_batch_mates_succeed() {
        let h = harness(64, 4, HOUR, HOUR * 2);
        let blocker = h.controller.submit(op("block", 0)).unwrap();
        wait_until_queue_empty(&h.controller);
        let good = h.controller.submit(op("good", 1)).unwrap();
        let bad = h.controller.submit(op("bad", 2)).unwrap();
        h.gate.send(()).unwrap();
        blocker.blocking_recv().unwrap().unwrap();
        assert_eq!(good.blocking_recv().unwrap().unwrap(), 1);
        assert!(matches!(
            bad.blocking_recv().unwrap(),
            Err(BatchError::Store(_))
        ));
    }

    #[test]
    fn a_panicking_write_answers_abandoned_and_the_worker_goes_on() {
        let h = harness(64, 64, HOUR, HOUR * 2);
        let panicked = h.controller.submit(op("panic", 1)).unwrap();
        assert!(matches!(
            panicked.blocking_recv().unwrap(),
            Err(BatchError::Abandoned)
        ));
        let next = h.controller.submit(op("after", 2)).unwrap();
        assert_eq!(next.blocking_recv().unwrap().unwrap(), 2);
    }

    #[test]
    fn many_submitters_each_get_their_own_answer() {
        let h = harness(10_240, 128, Duration::from_millis(2), HOUR);
        let controller = Arc::new(h.controller);
        let mismatches = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let controller = Arc::clone(&controller);
                let mismatches = Arc::clone(&mismatches);
                std::thread::spawn(move || {
                    for i in 0..2_000u32 {
                        let value = t * 10_000 + i;
                        let rx = controller.submit(op(&value.to_string(), value)).unwrap();
                        if rx.blocking_recv().unwrap().unwrap() != value {
                            mismatches.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(mismatches.load(Ordering::Relaxed), 0);
        let written: usize = h.batches.lock().unwrap().iter().map(Vec::len).sum();
        assert_eq!(written, 8_000);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]
        #[test]
        fn coalescing_keeps_the_last_op_per_key_and_answers_everyone(
            ops in proptest::collection::vec((0u8..6, 0u32..1000), 1..40),
        ) {
            let h = harness(64, ops.len(), HOUR, HOUR * 2);
            let blocker = h.controller.submit(op("block", 0)).unwrap();
            wait_until_queue_empty(&h.controller);
            let answers: Vec<_> = ops
                .iter()
                .map(|(k, v)| h.controller.submit(op(&format!("k{k}"), *v)).unwrap())
                .collect();
            h.gate.send(()).unwrap();
            blocker.blocking_recv().unwrap().unwrap();
            let mut last: HashMap<u8, u32> = HashMap::new();
            let mut order: Vec<u8> = Vec::new();
            for (k, v) in &ops {
                if last.insert(*k, *v).is_none() {
                    order.push(*k);
                }
            }
            for ((k, _), rx) in ops.iter().zip(answers) {
                proptest::prop_assert_eq!(rx.blocking_recv().unwrap().unwrap(), last[k]);
            }
            let expected: Vec<(String, u32)> = order.iter().map(|k| (format!("k{k}"), last[k])).collect();
            proptest::prop_assert_eq!(&h.batches.lock().unwrap()[1], &expected);
        }
    }
}
