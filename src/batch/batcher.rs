//! The batcher as a small state machine without I/O: it collects requests and says when
//! and why the batch it holds must be flushed. Time is passed in, so tests drive it.

use std::time::{Duration, Instant};

/// Why a batch left the batcher. Also a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlushReason {
    /// The batch reached `max_batch`.
    Size,
    /// The oldest request waited `max_wait`.
    Timeout,
    /// Nothing else is queued and the worker holding the batch is free: waiting would
    /// only add latency.
    Idle,
    /// The server is stopping: everything queued is written first.
    Shutdown,
}

impl FlushReason {
    /// Every reason, in declaration order: `reason as usize` indexes it.
    pub const ALL: [FlushReason; 4] = [
        FlushReason::Size,
        FlushReason::Timeout,
        FlushReason::Idle,
        FlushReason::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FlushReason::Size => "size",
            FlushReason::Timeout => "timeout",
            FlushReason::Idle => "idle",
            FlushReason::Shutdown => "shutdown",
        }
    }
}

/// Collects items into a batch of at most `max_items`. The timer starts with the first
/// item, so it always belongs to the batch being built: no stale tick can flush a newer
/// batch early.
#[derive(Debug)]
pub struct Batcher<T> {
    items: Vec<T>,
    max_items: usize,
    max_wait: Duration,
    opened_at: Option<Instant>,
}

impl<T> Batcher<T> {
    pub fn new(max_items: usize, max_wait: Duration) -> Self {
        debug_assert!(max_items > 0);
        Batcher {
            items: Vec::with_capacity(max_items),
            max_items,
            max_wait,
            opened_at: None,
        }
    }

    /// Adds an item. The caller stops pushing once `is_full`; the first item of a batch
    /// always fits.
    pub fn push(&mut self, item: T, now: Instant) {
        debug_assert!(!self.is_full(), "push into a full batch");
        if self.items.is_empty() {
            self.opened_at = Some(now);
        }
        self.items.push(item);
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.items.len() >= self.max_items
    }

    /// When the current batch times out; `None` while empty.
    pub fn deadline(&self) -> Option<Instant> {
        self.opened_at.map(|opened| opened + self.max_wait)
    }

    /// Whether to flush now, and why, for the store worker that holds the batch (so a
    /// worker is free). `queue_empty`: nothing more is waiting in the queue.
    pub fn flush_reason(&self, now: Instant, queue_empty: bool) -> Option<FlushReason> {
        let deadline = self.deadline()?;
        if self.is_full() {
            Some(FlushReason::Size)
        } else if now >= deadline {
            Some(FlushReason::Timeout)
        } else if queue_empty {
            Some(FlushReason::Idle)
        } else {
            None
        }
    }

    /// Takes the batch out, leaving the batcher empty with its timer stopped.
    pub fn take(&mut self) -> Vec<T> {
        self.opened_at = None;
        std::mem::replace(&mut self.items, Vec::with_capacity(self.max_items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_millis(32);

    #[test]
    fn empty_batch_never_flushes() {
        let batcher: Batcher<u32> = Batcher::new(4, WAIT);
        let now = Instant::now();
        assert_eq!(batcher.flush_reason(now + WAIT * 10, true), None);
        assert_eq!(batcher.deadline(), None);
    }

    #[test]
    fn flushes_on_size() {
        let mut batcher = Batcher::new(3, WAIT);
        let t0 = Instant::now();
        for i in 0..3 {
            if i > 0 {
                assert_eq!(batcher.flush_reason(t0, false), None);
            }
            batcher.push(i, t0);
        }
        assert!(batcher.is_full());
        assert_eq!(batcher.flush_reason(t0, false), Some(FlushReason::Size));
        assert_eq!(batcher.take(), vec![0, 1, 2]);
        assert!(batcher.is_empty());
    }

    #[test]
    fn flushes_on_timeout_measured_from_the_first_item() {
        let mut batcher = Batcher::new(10, WAIT);
        let t0 = Instant::now();
        batcher.push(1, t0);
        batcher.push(2, t0 + Duration::from_millis(30));
        assert_eq!(
            batcher.flush_reason(t0 + Duration::from_millis(31), false),
            None
        );
        assert_eq!(
            batcher.flush_reason(t0 + WAIT, false),
            Some(FlushReason::Timeout)
        );
    }

    #[test]
    fn flushes_at_once_when_the_queue_is_empty() {
        let mut batcher = Batcher::new(10, WAIT);
        let t0 = Instant::now();
        batcher.push(1, t0);
        assert_eq!(batcher.flush_reason(t0, true), Some(FlushReason::Idle));
        // More is queued: keep filling.
        assert_eq!(batcher.flush_reason(t0, false), None);
    }

    #[test]
    fn reasons_are_listed_in_declaration_order() {
        for (index, reason) in FlushReason::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, index);
        }
    }

    #[test]
    fn the_timer_restarts_with_each_batch() {
        let mut batcher = Batcher::new(10, WAIT);
        let t0 = Instant::now();
        batcher.push(1, t0);
        batcher.take();
        let t1 = t0 + Duration::from_millis(31);
        batcher.push(2, t1);
        // The first batch's deadline has passed; the second's has not.
        assert_eq!(batcher.flush_reason(t0 + WAIT, false), None);
        assert_eq!(batcher.deadline(), Some(t1 + WAIT));
    }
}
