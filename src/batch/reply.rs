//! Each request owns its reply channel; the guard answers on drop, so no request can hang
//! whatever path its batch took.

use std::time::Instant;

use tokio::sync::oneshot;

use super::BatchError;

/// What a caller receives for one request.
pub type BatchResult<T> = Result<T, BatchError>;

/// The sending half of one request's answer. Dropped unanswered, it answers `Abandoned`.
#[derive(Debug)]
pub struct Reply<T> {
    tx: Option<oneshot::Sender<BatchResult<T>>>,
}

impl<T> Reply<T> {
    pub fn channel() -> (Self, oneshot::Receiver<BatchResult<T>>) {
        let (tx, rx) = oneshot::channel();
        (Reply { tx: Some(tx) }, rx)
    }

    /// A request whose caller does not wait (async-regis): nothing to answer.
    pub fn detached() -> Self {
        Reply { tx: None }
    }

    pub fn is_detached(&self) -> bool {
        self.tx.is_none()
    }

    /// Answers the request. A caller that went away is not an error.
    pub fn send(mut self, result: BatchResult<T>) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(result);
        }
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Err(BatchError::Abandoned));
        }
    }
}

/// A request waiting in the queue or in a batch.
#[derive(Debug)]
pub struct Pending<Op, Out> {
    pub op: Op,
    pub reply: Reply<Out>,
    pub enqueued_at: Instant,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_reply_answers_abandoned() {
        let (reply, mut rx) = Reply::<u32>::channel();
        drop(reply);
        assert!(matches!(rx.try_recv(), Ok(Err(BatchError::Abandoned))));
    }

    #[test]
    fn sent_reply_answers_once() {
        let (reply, mut rx) = Reply::<u32>::channel();
        reply.send(Ok(7));
        assert!(matches!(rx.try_recv(), Ok(Ok(7))));
    }
}
