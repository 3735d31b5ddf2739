//! The Discover watch of a heartbeat run: every service of the fleet polled on a stream
//! and connection of its own, all on a thread and tokio runtime of their own, so that
//! decoding a listing of thousands of instances never holds up a beat, and a service
//! whose answer is slow never holds up the others. Each answer's unhealthy instances go
//! to the run's [`ExpiryCheck`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::expiry::{BeatLog, ExpiryCheck};
use crate::fleet::{Fleet, IdDigest, parse_id};
use crate::options::ConnectionOptions;
use crate::pool::{ClientPool, ConnectError};
use crate::report::{DATA_NO_CHANGE, EXECUTE_SUCCESS, Expectation, Outcome, Tally, WatchFigures};
use crate::scenario::RequestHeaders;
use crate::scenario::discover_stream::{
    DiscoverStream, HealthListing, Undecoded, instances_request,
};

/// The watch polls each service with the revision of its last full answer.
const WATCH_EXPECTATION: Expectation = Expectation {
    codes: &[EXECUTE_SUCCESS, DATA_NO_CHANGE],
};

/// From the start of one poll of a service to the next.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The watch over the fleet's services.
pub struct FleetWatch {
    /// Namespace and name of each watched service.
    pub services: Vec<(String, String)>,
    /// Fleet index by id.
    pub indices: HashMap<IdDigest, u64>,
    pub log: Arc<BeatLog>,
    pub check: ExpiryCheck,
}

/// What the watch saw.
pub struct Watched {
    pub check: ExpiryCheck,
    pub figures: WatchFigures,
}

/// A watch running on its thread.
pub struct WatchThread {
    /// `None` when the watch's connections could not be opened.
    thread: thread::JoinHandle<Option<Watched>>,
}

/// What the pollers of all services share.
struct Sightings {
    indices: HashMap<IdDigest, u64>,
    log: Arc<BeatLog>,
    check: Mutex<ExpiryCheck>,
}

/// One service's polls and their answers.
#[derive(Default)]
struct ServicePolls {
    polls: u64,
    tally: Tally,
}

impl FleetWatch {
    /// Starts the watch on a thread of its own, once it has opened a connection to
    /// the first target for each service; it polls until `beating` turns true.
    pub async fn start(
        self,
        connection: &ConnectionOptions,
        headers: RequestHeaders,
        beating: watch::Receiver<bool>,
    ) -> Result<WatchThread, ConnectError> {
        let target = connection.targets[..1].to_vec();
        let timeout = connection.timeout;
        let (ready, connected) = oneshot::channel();
        let thread = thread::Builder::new()
            .name("heartbeat-watch".to_owned())
            .spawn(move || {
                // Tonic's connections run on the runtime that opens them: this one.
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the watch's runtime starts");
                let services = self.services.len();
                let opened = runtime.block_on(ClientPool::connect(&target, services, timeout));
                let pool = match opened {
                    Ok(pool) => pool,
                    Err(error) => {
                        let _ = ready.send(Err(error));
                        return None;
                    }
                };
                let _ = ready.send(Ok(()));
                Some(runtime.block_on(self.run(&pool, headers, timeout, beating)))
            })
            .expect("the watch's thread starts");
        connected.await.expect("the watch's thread panicked")?;
        Ok(WatchThread { thread })
    }

    /// Polls every service on its own stream until `beating` turns true.
    async fn run(
        self,
        pool: &ClientPool,
        headers: RequestHeaders,
        timeout: Duration,
        beating: watch::Receiver<bool>,
    ) -> Watched {
        let started = Instant::now();
        let service_count = self.services.len() as u64;
        let sightings = Arc::new(Sightings {
            indices: self.indices,
            log: self.log,
            check: Mutex::new(self.check),
        });
        let mut pollers = JoinSet::new();
        for (slot, (namespace, service)) in self.services.into_iter().enumerate() {
            let stream = DiscoverStream::new(
                pool.grpc(slot as u64),
                headers.clone(),
                format!("heartbeat-watch-{slot}"),
                timeout,
            );
            let sightings = Arc::clone(&sightings);
            let beating = beating.clone();
            pollers.spawn(poll_service(sightings, stream, namespace, service, beating));
        }
        let mut tally = Tally::default();
        let mut rounds = None;
        while let Some(polled) = pollers.join_next().await {
            let polled = polled.expect("a service's poller panicked");
            tally.merge(&polled.tally);
            rounds = Some(rounds.map_or(polled.polls, |fewest: u64| fewest.min(polled.polls)));
        }
        let figures = WatchFigures::new(
            service_count,
            &tally,
            WATCH_EXPECTATION,
            rounds.unwrap_or(0),
            started.elapsed(),
        );
        let sightings = Arc::into_inner(sightings).expect("every poller has ended");
        Watched {
            check: sightings.check.into_inner().expect("no poller panicked"),
            figures,
        }
    }
}

impl WatchThread {
    /// Waits for the watch to end; `beating` must have turned true.
    pub async fn join(self) -> Watched {
        tokio::task::spawn_blocking(move || self.thread.join())
            .await
            .expect("joining the watch's thread")
            .expect("the watch panicked")
            .expect("a started watch has its connections")
    }
}

impl Sightings {
    /// Takes in the instances `listing`, received at `seen`, lists unhealthy.
    fn listed(&self, listing: &HealthListing, seen: Duration) {
        let unhealthy = listing
            .instances
            .iter()
            .filter(|instance| instance.healthy == Some(false))
            .filter_map(|instance| parse_id(instance.id.as_deref()?))
            .filter_map(|digest| self.indices.get(&digest));
        let mut check = self.check.lock().expect("no poller panicked");
        for &index in unhealthy {
            check.listed_unhealthy(&self.log, index, seen);
        }
    }
}

/// Polls `namespace`/`service` every [`POLL_INTERVAL`] (at once when a poll took
/// longer), with the revision of its last full answer, until `beating` turns true.
async fn poll_service(
    sightings: Arc<Sightings>,
    mut stream: DiscoverStream<HealthListing>,
    namespace: String,
    service: String,
    mut beating: watch::Receiver<bool>,
) -> ServicePolls {
    let mut polled = ServicePolls::default();
    let mut revision = None;
    loop {
        let started = Instant::now();
        let request = instances_request(&namespace, &service, revision.clone());
        let asked = stream.ask_undecoded(request).await;
        // Before the decode, which for thousands of instances takes a while.
        let seen = sightings.log.now();
        polled.polls += 1;
        match asked.and_then(Undecoded::decode) {
            Err(error) => polled.tally.record(error.outcome()),
            Ok(answer) => {
                polled.tally.record(Outcome::Answered(answer.code));
                if answer.code == Some(EXECUTE_SUCCESS) {
                    revision = answer
                        .service
                        .as_ref()
                        .and_then(|listed| listed.revision.clone());
                    sightings.listed(&answer, seen);
                }
            }
        }
        tokio::select! {
            biased;
            _ = beating.wait_for(|&done| done) => break,
            () = tokio::time::sleep_until(started + POLL_INTERVAL) => {}
        }
    }
    polled
}

/// The services of the grid that hold instances of the fleet: all of them unless the
/// fleet has fewer instances than the grid has cells.
pub fn watched_services(fleet: &Fleet) -> Vec<(String, String)> {
    let cells = fleet.grid().cells().min(fleet.count());
    (0..cells)
        .map(|cell| {
            let (namespace, service) = fleet.grid().cell(cell);
            (namespace.to_owned(), service.to_owned())
        })
        .collect()
}
