//! Keeping the cache and the store current from a thread of their own:
//!
//! - the change feed (cluster mode): every `refresh`, the rows written since the last
//!   read less [`RECENT_OVERLAP`], and a slice of the rows written about `overlap`
//!   before, so that a transaction that committed late is read too (at the next read
//!   when it was less than `RECENT_OVERLAP` late, about `overlap` after its write when
//!   later); each row is so read about three times, not `overlap / refresh` times, and
//!   the rows this process wrote itself only once, in the slice. The rows the cache does
//!   not hold as they are are fetched whole, 1,024 at a time in the order they
//!   were read (oldest write first), and each chunk applied as it arrives, unless the
//!   cache holds something newer (a local write, or a local deregistration);
//! - the purge of deregistered rows older than `retention`, on every store;
//! - the cache's gauges.

use std::collections::HashSet;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender};

use super::cache::{InstanceFacts, RegistryCache};
use crate::store::clock::{earlier, parse_ms};
use crate::store::{ChangedRow, Store, StoreError, StoredService};
use crate::telemetry::FeedMetrics;

/// Changed rows fetched (and applied) per read of the store.
const FETCH_CHUNK: usize = 1024;

/// Deregistered rows deleted per statement of a purge.
const PURGE_BATCH: usize = 10_000;

/// How far before the last read each read starts (at most the configured overlap): a
/// transaction that commits later than this after its write is read by the slice that
/// rereads the rows written `overlap` ago.
pub const RECENT_OVERLAP: Duration = Duration::from_secs(1);

/// How the feed runs, validated by the config.
#[derive(Debug, Clone, Copy)]
pub struct FeedSettings {
    /// How often the store is read for changes.
    pub refresh: Duration,
    /// How far before the last read each read starts.
    pub overlap: Duration,
    /// How long deregistered rows are kept before they are purged.
    pub retention: Duration,
}

/// The thread that follows and purges; stopped on drop.
pub struct Feed {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Feed {
    /// Starts the thread. With `follow`, it reads the store's changes from `since` (the
    /// store's time when the cache started loading); it purges in any case.
    pub fn start(
        store: Arc<dyn Store>,
        cache: Arc<RegistryCache>,
        settings: FeedSettings,
        follow: bool,
        since: String,
        metrics: FeedMetrics,
    ) -> Feed {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("change-feed".to_owned())
            .spawn(move || {
                let mut follower = Follower {
                    store: store.as_ref(),
                    cache: &cache,
                    settings,
                    metrics: &metrics,
                    cursor: FeedCursor::start(since, settings.overlap),
                    last_purge: Instant::now(),
                };
                loop {
                    // A read every refresh interval, however long the last one took.
                    let started = Instant::now();
                    follower.round(follow);
                    let wait = settings.refresh.saturating_sub(started.elapsed());
                    match stopped.recv_timeout(wait) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                }
            })
            .expect("spawn the change feed thread");
        Feed {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the change feed thread panicked");
        }
    }
}

struct Follower<'a> {
    store: &'a dyn Store,
    cache: &'a RegistryCache,
    settings: FeedSettings,
    metrics: &'a FeedMetrics,
    /// Where the next read starts.
    cursor: FeedCursor,
    last_purge: Instant,
}

impl Follower<'_> {
    /// One round: reads the feed (when following) and purges when due. Returns how many
    /// changes it applied.
    fn round(&mut self, follow: bool) -> usize {
        let mut applied = 0;
        if follow {
            let started = Instant::now();
            match follow_once(self.store, self.cache, &self.cursor, self.settings.overlap) {
                Ok(read) => {
                    applied = read.delays.len();
                    self.metrics
                        .polled(&read.delays, read.lag, started.elapsed());
                    self.cursor = read.next;
                }
                Err(error) => {
                    self.metrics.poll_failed();
                    tracing::warn!(%error, "change feed: cannot read the store's changes");
                }
            }
        }
        if self.last_purge.elapsed() >= purge_interval(self.settings.retention) {
            self.last_purge = Instant::now();
            match purge(self.store, self.settings.retention) {
                Ok(purged) => self.metrics.purged(purged),
                Err(error) => tracing::warn!(%error, "cannot purge deregistered instances"),
            }
        }
        self.metrics
            .cache_sizes(self.cache.service_count(), self.cache.instance_count());
        applied
    }
}

/// How often deregistered rows are purged: a tenth of the retention, between 10 s and
/// 10 min.
fn purge_interval(retention: Duration) -> Duration {
    (retention / 10).clamp(Duration::from_secs(10), Duration::from_secs(600))
}

/// Where the feed's next read starts, in the store's time.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedCursor {
    /// The start of the last successful read (or of the cache's load).
    pub last_read: String,
    /// Rows written before this were read by a read that started at least `overlap`
    /// after their write.
    pub late_until: String,
}

impl FeedCursor {
    /// The cursor of a cache whose load started at `since`: the first read covers from
    /// `overlap` before it.
    pub fn start(since: String, overlap: Duration) -> FeedCursor {
        FeedCursor {
            late_until: earlier(&since, overlap),
            last_read: since,
        }
    }
}

/// What one read of the feed did.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedRead {
    /// Where the next read starts.
    pub next: FeedCursor,
    /// For each instance put in or removed from the cache, how long after its write.
    pub delays: Vec<Duration>,
    /// The age of the newest change applied, if any was.
    pub lag: Option<Duration>,
}

/// Reads the changes written since the cursor's last read less [`RECENT_OVERLAP`], and
/// those written from its `late_until` to `overlap` before its last read (rows that may
/// have committed late), and applies to `cache` those it does not hold.
pub fn follow_once(
    store: &dyn Store,
    cache: &RegistryCache,
    cursor: &FeedCursor,
    overlap: Duration,
) -> Result<FeedRead, StoreError> {
    let at = store.now()?;
    let read_started = std::time::Instant::now();
    let recent = earlier(&cursor.last_read, RECENT_OVERLAP.min(overlap));
    let late_end = earlier(&cursor.last_read, overlap);
    // Services are few: all those written since the start of the late slice.
    for service in store.services(Some(&cursor.late_until))? {
        cache.put_service(&service);
    }
    let now = parse_time(&at);
    // From the write to now, when the change is applied: the store's time at the start
    // of this read, plus the time the read has taken.
    let since_write = |mtime: &str| {
        now.and_then(|now| now.duration_since(parse_time(mtime)?).ok())
            .unwrap_or_default()
            + read_started.elapsed()
    };
    let mut delays = Vec::new();
    let mut newest: Option<String> = None;
    let mut fetch = Vec::new();
    // A row rewritten between the two reads is listed by both: fetched once.
    let mut listed = HashSet::new();
    // Each row as it is read: whether the cache holds it, as this row or as written
    // later (then kept).
    let mut each = |row: ChangedRow| {
        let mtime_ms = parse_ms(&row.mtime).unwrap_or(0);
        let held = cache.peek(&row.id, |h| {
            let at = h.written_at_ms();
            (
                at == mtime_ms && h.has_revision(&row.revision),
                at > mtime_ms,
            )
        });
        if held.is_some_and(|(_, later)| later) {
            return;
        }
        if row.deleted {
            if held.is_some() {
                cache.remove_instance(&row.id, &row.mtime);
                delays.push(since_write(&row.mtime));
                newest = newest.take().max(Some(row.mtime));
            }
            return;
        }
        let same = held.is_some_and(|(same, _)| same);
        let deregistered_since = cache
            .tombstone(&row.id)
            .is_some_and(|removed| *removed > *row.mtime);
        if !same && !deregistered_since && listed.insert(row.id.clone()) {
            fetch.push(row.id);
        }
    };
    // This process's own writes are in the cache already (each is put there before it is
    // answered), so the frequent read leaves them out; the late slice reads them once,
    // for a write whose commit this process saw fail although it happened. The slice is
    // read first, as its rows were written earlier.
    if cursor.late_until < late_end {
        store.changed_between(&cursor.late_until, Some(&late_end), false, &mut each)?;
    }
    store.changed_between(&recent, None, true, &mut each)?;
    let scanned = read_started.elapsed();
    // In the order the rows were read, oldest write first, a chunk at a time, each applied
    // as soon as it arrives: a row written just after the last read waited for this one
    // to start, and is not kept waiting also for the rows written since.
    for chunk in fetch.chunks(FETCH_CHUNK) {
        let fetched = store.instances(chunk)?;
        let mut puts = Vec::new();
        for stored in &fetched {
            let id = &stored.record.id;
            let newer_held = cache
                .peek(id, |held| held.written_after(&stored.mtime))
                .unwrap_or(false);
            let deregistered_since = cache
                .tombstone(id)
                .is_some_and(|removed| *removed > *stored.mtime);
            if newer_held || deregistered_since {
                continue;
            }
            let service = match cache.service(&stored.record.namespace, &stored.record.service) {
                Some(entry) => entry.stored(),
                None => StoredService {
                    id: stored.service_id.clone(),
                    namespace: stored.record.namespace.clone(),
                    name: stored.record.service.clone(),
                    ctime: String::new(),
                    mtime: String::new(),
                },
            };
            newest = newest.max(Some(stored.mtime.clone()));
            puts.push((service, stored));
        }
        cache.put_instances(
            puts.iter()
                .map(|(service, stored)| (service, InstanceFacts::from(*stored))),
        );
        delays.extend(puts.iter().map(|(_, stored)| since_write(&stored.mtime)));
    }
    tracing::debug!(
        scan_ms = scanned.as_millis(),
        fetched = fetch.len(),
        total_ms = read_started.elapsed().as_millis(),
        "change feed read"
    );
    cache.forget_tombstones(&earlier(&cursor.late_until, overlap));
    let lag = newest.map(|newest| since_write(&newest));
    let next = FeedCursor {
        late_until: late_end.max(cursor.late_until.clone()),
        last_read: at,
    };
    Ok(FeedRead { next, delays, lag })
}

/// A time of the store's time columns.
fn parse_time(time: &str) -> Option<std::time::SystemTime> {
    humantime::parse_rfc3339(&format!("{}Z", time.replacen(' ', "T", 1))).ok()
}

/// Deletes the rows deregistered longer than `retention` ago; returns how many.
pub fn purge(store: &dyn Store, retention: Duration) -> Result<usize, StoreError> {
    let before = earlier(&store.now()?, retention);
    let mut purged = 0;
    loop {
        let deleted = store.purge_deregistered(&before, PURGE_BATCH)?;
        purged += deleted;
        if deleted < PURGE_BATCH {
            return Ok(purged);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purges_run_at_a_tenth_of_the_retention_within_bounds() {
        assert_eq!(
            purge_interval(Duration::from_secs(3600)),
            Duration::from_secs(360)
        );
        assert_eq!(
            purge_interval(Duration::from_secs(1)),
            Duration::from_secs(10)
        );
        assert_eq!(
            purge_interval(Duration::from_secs(86_400)),
            Duration::from_secs(600)
        );
    }
}
