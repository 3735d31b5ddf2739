//! Batch controller: a bounded lock-free queue, a batcher thread, and store workers.
//!
//! `submit` never blocks: a full queue is an immediate `QueueFull`. The batcher thread
//! blocks for the first request, takes whatever else is ready, and hands the batch to a
//! free store worker on size, on timeout, or at once when a worker is idle and the queue is
//! empty. Shutdown is a message in the same queue, so everything queued before it is
//! written first.

pub mod batcher;
pub mod reply;
pub mod writers;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError, select};
use tokio::sync::oneshot;

use crate::store::StoreError;
use crate::store::resilient::RowResult;
use crate::telemetry;
pub use batcher::{Batcher, FlushReason};
pub use reply::{BatchResult, Pending, Reply};
pub use writers::{DeregisterWrite, RegisterWrite};

/// Why a request was not carried out by the batch layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    #[error("too many requests queued: try again shortly")]
    QueueFull,
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("the request was dropped before it was written")]
    Abandoned,
    #[error("store write failed: {0}")]
    Store(#[source] Arc<StoreError>),
}

/// Writes one batch of distinct operations. Implemented for register and deregister.
pub trait BatchWrite: Send + 'static {
    type Op: Send + 'static;
    type Outcome: Clone + Send + 'static;

    /// Requests with the same key in one batch are coalesced: the last one wins.
    fn key(op: &Self::Op) -> &str;

    /// One result per op, in order; ops have distinct keys.
    fn write(&mut self, ops: &[Self::Op]) -> Vec<RowResult<Self::Outcome>>;
}

/// Settings of one controller, validated by the config.
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    pub queue_size: NonZeroUsize,
    pub max_batch: NonZeroUsize,
    pub max_wait: Duration,
    /// Queued async-regis requests older than this are dropped, never written late.
    pub task_life: Duration,
}

type PendingOf<W> = Pending<<W as BatchWrite>::Op, <W as BatchWrite>::Outcome>;

enum Message<W: BatchWrite> {
    Request(PendingOf<W>),
    Shutdown,
}

/// The queue, the batcher thread and the store workers of one kind of write.
pub struct BatchController<W: BatchWrite> {
    api: &'static str,
    queue: Sender<Message<W>>,
    closed: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl<W: BatchWrite> BatchController<W> {
    /// Starts the batcher thread and one store worker per writer. `api` names the
    /// controller in metrics and thread names.
    pub fn start(api: &'static str, settings: BatchSettings, writers: Vec<W>) -> Self {
        assert!(
            !writers.is_empty(),
            "a batch controller needs a store worker"
        );
        let (queue_tx, queue_rx) = crossbeam_channel::bounded(settings.queue_size.get());
        let (work_tx, work_rx) = crossbeam_channel::unbounded::<Vec<PendingOf<W>>>();
        let (ready_tx, ready_rx) = crossbeam_channel::unbounded::<()>();
        let workers = writers.len();
        let mut threads = Vec::with_capacity(workers + 1);
        for (n, writer) in writers.into_iter().enumerate() {
            let worker = StoreWorker {
                api,
                writer,
                task_life: settings.task_life,
            };
            let (work_rx, ready_tx) = (work_rx.clone(), ready_tx.clone());
            let thread = std::thread::Builder::new()
                .name(format!("{api}-store-{n}"))
                .spawn(move || worker.run(work_rx, ready_tx))
                .expect("spawn store worker thread");
            threads.push(thread);
        }
        drop(ready_tx);
        let batcher = BatchLoop::<W> {
            api,
            batcher: Batcher::new(settings.max_batch.get(), settings.max_wait),
            queue: queue_rx,
            work: work_tx,
            ready: ready_rx,
            idle_workers: workers,
        };
        let thread = std::thread::Builder::new()
            .name(format!("{api}-batcher"))
            .spawn(move || batcher.run())
            .expect("spawn batcher thread");
        threads.push(thread);
        BatchController {
            api,
            queue: queue_tx,
            closed: AtomicBool::new(false),
            threads: Mutex::new(threads),
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
        let pending = Pending {
            op,
            reply,
            enqueued_at: Instant::now(),
        };
        match self.queue.try_send(Message::Request(pending)) {
            Ok(()) => Ok(()),
            // Nothing was enqueued; the caller is answered by the returned error.
            Err(TrySendError::Full(_)) => Err(BatchError::QueueFull),
            Err(TrySendError::Disconnected(_)) => Err(BatchError::ShuttingDown),
        }
    }

    /// Requests waiting in the queue (not yet in a batch).
    pub fn queue_depth(&self) -> usize {
        self.queue.len()
    }

    /// Stops taking requests, writes everything queued, answers every request, and joins
    /// the threads. Blocks: call it from a blocking context.
    pub fn shutdown(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        // A blocking send: it waits for room behind the requests already queued.
        let _ = self.queue.send(Message::Shutdown);
        let threads = std::mem::take(&mut *self.threads.lock().expect("threads lock"));
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!(api = self.api, "a batch thread panicked");
            }
        }
    }
}

impl<W: BatchWrite> Drop for BatchController<W> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The batcher thread: queue in, batches out to free workers.
struct BatchLoop<W: BatchWrite> {
    api: &'static str,
    batcher: Batcher<PendingOf<W>>,
    queue: Receiver<Message<W>>,
    work: Sender<Vec<PendingOf<W>>>,
    ready: Receiver<()>,
    idle_workers: usize,
}

impl<W: BatchWrite> BatchLoop<W> {
    fn run(mut self) {
        let mut stopping = false;
        while !stopping {
            // Take what is already queued, without blocking.
            let mut queue_empty = false;
            while !self.batcher.is_full() {
                match self.queue.try_recv() {
                    Ok(message) => {
                        if !self.accept(message) {
                            stopping = true;
                            break;
                        }
                    }
                    Err(TryRecvError::Empty) => {
                        queue_empty = true;
                        break;
                    }
                    Err(TryRecvError::Disconnected) => {
                        stopping = true;
                        break;
                    }
                }
            }
            while self.ready.try_recv().is_ok() {
                self.idle_workers += 1;
            }
            if stopping {
                break;
            }
            let now = Instant::now();
            if let Some(reason) = self
                .batcher
                .flush_reason(now, queue_empty, self.idle_workers)
            {
                self.dispatch(reason);
                continue;
            }
            // Nothing to flush yet: wait for a request, a free worker, or the deadline.
            let wait = self
                .batcher
                .deadline()
                .map(|deadline| deadline.saturating_duration_since(now));
            stopping = !self.wait(wait);
        }
        if !self.batcher.is_empty() {
            self.dispatch(FlushReason::Shutdown);
        }
        // Workers finish the batches handed to them, then see the channel closed.
        drop(self.work);
        // Anything that raced in behind the shutdown message is answered, not lost.
        while let Ok(message) = self.queue.try_recv() {
            if let Message::Request(pending) = message {
                pending.reply.send(Err(BatchError::ShuttingDown));
            }
        }
    }

    /// Adds a request to the batch; `false` for the shutdown message.
    fn accept(&mut self, message: Message<W>) -> bool {
        match message {
            Message::Request(pending) => {
                self.batcher.push(pending, Instant::now());
                true
            }
            Message::Shutdown => false,
        }
    }

    /// Blocks until a request or a free worker arrives, or `timeout` passes. `false` when
    /// the server is stopping.
    fn wait(&mut self, timeout: Option<Duration>) -> bool {
        let timeout = timeout.unwrap_or(Duration::from_secs(3600));
        select! {
            recv(self.queue) -> message => match message {
                Ok(message) => self.accept(message),
                Err(_) => false,
            },
            recv(self.ready) -> token => match token {
                Ok(()) => {
                    self.idle_workers += 1;
                    true
                }
                // Every worker is gone: nothing can be written any more.
                Err(_) => false,
            },
            default(timeout) => true,
        }
    }

    /// Hands the batch to a free worker, waiting for one if none is free.
    fn dispatch(&mut self, reason: FlushReason) {
        let batch = self.batcher.take();
        debug_assert!(!batch.is_empty());
        telemetry::record_flush(self.api, reason, batch.len());
        telemetry::set_queue_depth(self.api, self.queue.len());
        while self.idle_workers == 0 {
            if self.ready.recv().is_err() {
                // No worker left; the reply guards answer `Abandoned`.
                return;
            }
            self.idle_workers += 1;
        }
        self.idle_workers -= 1;
        let now = Instant::now();
        for pending in &batch {
            telemetry::record_queued(self.api, now.saturating_duration_since(pending.enqueued_at));
        }
        let _ = self.work.send(batch);
    }
}

/// One store worker: writes the batches it is handed, answers every request in them.
struct StoreWorker<W: BatchWrite> {
    api: &'static str,
    writer: W,
    task_life: Duration,
}

impl<W: BatchWrite> StoreWorker<W> {
    fn run(mut self, work: Receiver<Vec<PendingOf<W>>>, ready: Sender<()>) {
        for batch in work {
            // A panic in a write answers the batch through the reply guards; the worker
            // keeps serving.
            if catch_unwind(AssertUnwindSafe(|| self.write_batch(batch))).is_err() {
                tracing::error!(
                    api = self.api,
                    "store worker panicked while writing a batch"
                );
            }
            if ready.send(()).is_err() {
                break;
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
            if pending.reply.is_detached()
                && now.duration_since(pending.enqueued_at) > self.task_life
            {
                telemetry::record_dropped_task(self.api);
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
        let results = self.writer.write(&ops);
        debug_assert_eq!(results.len(), ops.len());
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
