//! The client API's side of a shutdown. Once the drain begins, a new request is refused
//! before anything of it is done (gRPC UNAVAILABLE, HTTP 503), so that its client knows
//! it was not processed and sends it to another replica; every request already accepted
//! is carried out and answered. The connections stay open until the accepted requests
//! are answered and the clients have stopped sending for a moment: closing a connection
//! while its client still sends would end the requests it had queued with CANCELLED,
//! which tells the client nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// What a refused request is told.
pub const REFUSED: &str =
    "the server is shutting down: the request was not processed; send it to another server";

/// How often the drain looks at the requests in flight.
const POLL: Duration = Duration::from_millis(10);

/// Requests in flight and the state of the drain, shared by both transports.
#[derive(Debug)]
pub struct Drain {
    draining: AtomicBool,
    in_flight: AtomicUsize,
    /// When the last request arrived, in milliseconds since `epoch`.
    last_arrival_ms: AtomicU64,
    epoch: Instant,
    /// True once the drain is over: open Discover streams end.
    closed: watch::Sender<bool>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            last_arrival_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            closed: watch::Sender::new(false),
        }
    }
}

/// An accepted request: counted in flight until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Drain>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drain {
    /// Accepts a request, or `None` once the drain has begun: then refuse it as not
    /// processed.
    pub fn accept(self: &Arc<Self>) -> Option<InFlight> {
        self.arrived();
        // Counted before the check, so that `wait` never sees zero while an accepted
        // request is on its way in.
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight(Arc::clone(self));
        (!self.draining.load(Ordering::Acquire)).then_some(guard)
    }

    /// Notes a request (or a message of a stream) arriving, accepted or not.
    pub fn arrived(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last_arrival_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// Whether new requests are being refused.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// From now on every new request is refused.
    pub fn begin(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Waits until every accepted request is answered and no request has arrived for
    /// `quiet` (clients still sending after `quiet_limit` are not waited for), or until
    /// `limit` has passed; then marks the drain over (Discover streams end). Returns
    /// whether it ended quietly.
    pub async fn wait(&self, quiet: Duration, quiet_limit: Duration, limit: Duration) -> bool {
        let started = Instant::now();
        let quieted = loop {
            let idle = self.in_flight.load(Ordering::Acquire) == 0;
            let since_arrival = self.epoch.elapsed().saturating_sub(Duration::from_millis(
                self.last_arrival_ms.load(Ordering::Relaxed),
            ));
            if idle && since_arrival >= quiet {
                break true;
            }
            let waited = started.elapsed();
            if (idle && waited >= quiet_limit) || waited >= limit {
                break false;
            }
            tokio::time::sleep(POLL).await;
        };
        self.closed.send_replace(true);
        quieted
    }

    /// Completes when the drain is over.
    pub fn closed(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    /// Requests accepted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_accepted_until_the_drain_begins() {
        let drain = Arc::new(Drain::default());
        let first = drain.accept().expect("accepted before the drain");
        assert_eq!(drain.in_flight(), 1);
        drain.begin();
        assert!(drain.accept().is_none(), "refused once draining");
        assert_eq!(drain.in_flight(), 1, "a refused request is not in flight");
        drop(first);
        assert_eq!(drain.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_waits_for_accepted_requests_and_a_quiet_moment() {
        let drain = Arc::new(Drain::default());
        let accepted = drain.accept().unwrap();
        drain.begin();
        let waiting = {
            let drain = Arc::clone(&drain);
            tokio::spawn(async move {
                drain
                    .wait(
                        Duration::from_millis(100),
                        Duration::from_secs(30),
                        Duration::from_secs(30),
                    )
                    .await
            })
        };
        let mut closed = drain.closed();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!*closed.borrow_and_update(), "a request is still in flight");
        drop(accepted);
        // Refused requests keep arriving: not quiet yet.
        for _ in 0..10 {
            assert!(drain.accept().is_none());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!*closed.borrow_and_update());
        assert!(waiting.await.unwrap(), "ended quietly");
        assert!(*closed.borrow());
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_ends_at_its_limit_when_clients_keep_sending() {
        let drain = Arc::new(Drain::default());
        drain.begin();
        let waiting = {
            let drain = Arc::clone(&drain);
            tokio::spawn(async move {
                drain
                    .wait(
                        Duration::from_millis(100),
                        Duration::from_secs(2),
                        Duration::from_secs(30),
                    )
                    .await
            })
        };
        let started = Instant::now();
        while !waiting.is_finished() {
            drain.arrived();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!waiting.await.unwrap(), "not quiet");
        assert!(started.elapsed() >= Duration::from_secs(2));
        assert!(*drain.closed().borrow());
    }
}
