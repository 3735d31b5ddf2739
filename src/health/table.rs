//! The beat table: when each health-checked instance's beats run out (its expiry, in
//! milliseconds on the store's clock). In this process's memory on a single node; in
//! Redis in cluster mode, where every replica's beats meet and one replica at a time,
//! holding a lease, runs the expiry checker.
//!
//! Recording a beat never waits for Redis: beats go to a writer task that sends them in
//! pipelined batches. While Redis is unreachable, beats are answered all the same and
//! lost; the table is not trusted again until it answers (see `rules`).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::mpsc;

/// Why the table could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Memory shards: heartbeats from every worker thread rarely meet on one lock.
const SHARDS: usize = 16;
/// How long an unknown instance's beats are counted before the count starts over.
const UNKNOWN_MEMORY_MS: i64 = 60_000;

/// Instance id → expiry (ms): every heartbeat looks its id up here.
type BeatMap = HashMap<Arc<str>, i64, foldhash::fast::RandomState>;

/// The beat table of a single node. Ids are shared with the registry cache's.
pub struct MemoryTable {
    /// Picks an id's shard (foldhash, seeded per process, as the maps are).
    hasher: foldhash::fast::RandomState,
    shards: Vec<Mutex<BeatMap>>,
    unknown: Mutex<HashMap<String, (u64, i64)>>,
    /// Unhealthy instances that beat since the checker last looked.
    revived: Mutex<Vec<Arc<str>>>,
}

impl Default for MemoryTable {
    fn default() -> Self {
        MemoryTable {
            hasher: foldhash::fast::RandomState::default(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            unknown: Mutex::new(HashMap::new()),
            revived: Mutex::new(Vec::new()),
        }
    }
}

impl MemoryTable {
    fn shard(&self, id: &str) -> &Mutex<BeatMap> {
        &self.shards[self.hasher.hash_one(id) as usize % SHARDS]
    }

    fn record(&self, id: &Arc<str>, expiry_ms: i64) {
        let mut shard = self.shard(id).lock().expect("beat table lock");
        match shard.get_mut(&**id) {
            Some(expiry) => *expiry = expiry_ms,
            None => {
                shard.insert(Arc::clone(id), expiry_ms);
            }
        }
    }

    fn seed(&self, id: &Arc<str>, expiry_ms: i64) {
        let mut shard = self.shard(id).lock().expect("beat table lock");
        if !shard.contains_key(&**id) {
            shard.insert(Arc::clone(id), expiry_ms);
        }
    }

    fn forget(&self, id: &str, only_expiry: Option<i64>) {
        let mut shard = self.shard(id).lock().expect("beat table lock");
        if only_expiry.is_none_or(|expiry| shard.get(id) == Some(&expiry)) {
            shard.remove(id);
        }
    }

    fn unknown_beat(&self, id: &str, now_ms: i64) -> u64 {
        let mut unknown = self.unknown.lock().expect("beat table lock");
        if unknown.len() > 100_000 {
            unknown.retain(|_, (_, last)| now_ms - *last < UNKNOWN_MEMORY_MS);
        }
        let entry = unknown.entry(id.to_owned()).or_insert((0, now_ms));
        if now_ms - entry.1 >= UNKNOWN_MEMORY_MS {
            *entry = (0, now_ms);
        }
        entry.0 += 1;
        entry.1 = now_ms;
        entry.0
    }

    fn expired(&self, now_ms: i64, limit: usize) -> Vec<(String, i64)> {
        let mut expired = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock().expect("beat table lock");
            expired.extend(
                shard
                    .iter()
                    .filter(|(_, expiry)| **expiry <= now_ms)
                    .map(|(id, expiry)| (id.to_string(), *expiry)),
            );
            if expired.len() >= limit {
                break;
            }
        }
        expired.truncate(limit);
        expired
    }

    fn expiries(&self, ids: &[String]) -> Vec<Option<i64>> {
        ids.iter()
            .map(|id| {
                self.shard(id)
                    .lock()
                    .expect("beat table lock")
                    .get(id.as_str())
                    .copied()
            })
            .collect()
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().expect("beat table lock").len())
            .sum()
    }
}

/// A write queued for Redis. Ids are the registry cache's own, shared, not copied.
#[derive(Debug)]
enum RedisWrite {
    Beat(Arc<str>, i64),
    Revive(Arc<str>),
    Seed(Arc<str>, i64),
    Forget(Arc<str>),
}

impl RedisWrite {
    /// The command a run of writes of this kind shares, without its members.
    fn command(&self, keys: &WriteKeys) -> redis::Cmd {
        let (name, key) = match self {
            RedisWrite::Beat(..) | RedisWrite::Seed(..) => ("ZADD", &keys.beats),
            RedisWrite::Revive(_) => ("SADD", &keys.revived),
            RedisWrite::Forget(_) => ("ZREM", &keys.beats),
        };
        let mut command = redis::cmd(name);
        command.arg(key);
        if let RedisWrite::Seed(..) = self {
            command.arg("NX");
        }
        command
    }

    /// Adds this write's member (with its score, for a sorted set) to `command`.
    fn add_to(&self, command: &mut redis::Cmd) {
        match self {
            RedisWrite::Beat(id, expiry) | RedisWrite::Seed(id, expiry) => {
                command.arg(*expiry).arg(&**id);
            }
            RedisWrite::Revive(id) | RedisWrite::Forget(id) => {
                command.arg(&**id);
            }
        }
    }
}

/// The keys the writer task writes.
struct WriteKeys {
    beats: String,
    revived: String,
}

/// Beats queued for Redis at most; more are dropped (and counted) while it is slow.
const REDIS_QUEUE: usize = 200_000;
/// Writes per pipeline, at most.
const REDIS_BATCH: usize = 2_000;
/// How long the writer gathers writes before it sends a pipeline that is not full.
/// Sent as they came, a fleet's 20,000 beats a second went out a few at a time, in
/// thousands of round trips a second; gathered, about 40 go in one command. A beat
/// reaches Redis a few milliseconds later, against an expiry window of 3 ttl.
const REDIS_GATHER: Duration = Duration::from_millis(2);

/// The beat table of a cluster: a sorted set in Redis, `member = id`, `score = expiry`.
pub struct RedisTable {
    conn: ConnectionManager,
    beats_key: String,
    /// A set: unhealthy instances that beat since the checker last looked.
    revived_key: String,
    unknown_prefix: String,
    lease_key: String,
    /// Present while the beats key holds every instance's beat: set after seeding; a
    /// Redis that lost its data (restarted, flushed) has lost it too.
    seeded_key: String,
    /// Identifies this replica as the lease holder.
    token: String,
    lease_ms: i64,
    writes: mpsc::Sender<RedisWrite>,
    /// Set when a command failed; cleared, and `trusted_since` moved, when one succeeds.
    away: std::sync::Arc<AtomicBool>,
    trusted_since: std::sync::Arc<AtomicI64>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Renews the lease only for its holder: PEXPIRE when the key holds our token.
const RENEW_LEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
     return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
/// Removes a member only while its score is the one the checker acted on.
const FORGET_IF_UNCHANGED: &str = "if redis.call('ZSCORE', KEYS[1], ARGV[1]) == ARGV[2] then \
     return redis.call('ZREM', KEYS[1], ARGV[1]) else return 0 end";

impl RedisTable {
    /// Connects (failing when Redis does not answer within `timeout`) and starts the
    /// writer task on the current runtime. Keys start with `prefix`.
    pub async fn connect(
        url: &str,
        prefix: &str,
        lease: Duration,
        timeout: Duration,
        now_ms: i64,
    ) -> Result<RedisTable, TableError> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_with_config(client, config).await?;
        let (writes, queue) = mpsc::channel(REDIS_QUEUE);
        let table = RedisTable {
            conn,
            beats_key: format!("{prefix}beats"),
            revived_key: format!("{prefix}revived"),
            unknown_prefix: format!("{prefix}unknown:"),
            lease_key: format!("{prefix}checker-lease"),
            seeded_key: format!("{prefix}seeded"),
            token: format!("{:016x}", rand::random::<u64>()),
            lease_ms: i64::try_from(lease.as_millis()).unwrap_or(i64::MAX),
            writes,
            away: std::sync::Arc::new(AtomicBool::new(false)),
            trusted_since: std::sync::Arc::new(AtomicI64::new(now_ms)),
            dropped: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
        };
        tokio::spawn(write_beats(
            table.conn.clone(),
            WriteKeys {
                beats: table.beats_key.clone(),
                revived: table.revived_key.clone(),
            },
            queue,
            std::sync::Arc::clone(&table.away),
        ));
        Ok(table)
    }

    fn queue(&self, write: RedisWrite) {
        if self.writes.try_send(write).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Notes the outcome of a command: a failure makes the table untrusted; the first
    /// success after one, at `now_ms`, makes it trusted from then (a success without a
    /// time leaves that to the next).
    fn reached<T>(
        &self,
        result: redis::RedisResult<T>,
        now_ms: Option<i64>,
    ) -> Result<T, TableError> {
        match result {
            Ok(value) => {
                if let Some(now_ms) = now_ms
                    && self.away.swap(false, Ordering::AcqRel)
                {
                    self.trusted_since.store(now_ms, Ordering::Release);
                    tracing::info!("redis answers again: beats trusted after one window");
                }
                Ok(value)
            }
            Err(error) => {
                if !self.away.swap(true, Ordering::AcqRel) {
                    tracing::warn!(%error, "redis unreachable: heartbeats answered, nothing expired until it is back");
                }
                Err(error.into())
            }
        }
    }
}

/// Sends queued writes to Redis, a pipeline at a time, each gathered for
/// [`REDIS_GATHER`] unless it fills sooner.
async fn write_beats(
    mut conn: ConnectionManager,
    keys: WriteKeys,
    mut queue: mpsc::Receiver<RedisWrite>,
    away: std::sync::Arc<AtomicBool>,
) {
    let mut batch = Vec::with_capacity(REDIS_BATCH);
    while queue.recv_many(&mut batch, REDIS_BATCH).await > 0 {
        if batch.len() < REDIS_BATCH {
            tokio::time::sleep(REDIS_GATHER).await;
            while batch.len() < REDIS_BATCH
                && let Ok(write) = queue.try_recv()
            {
                batch.push(write);
            }
        }
        let pipe = pipeline(&keys, &batch);
        batch.clear();
        if let Err(error) = pipe.query_async::<()>(&mut conn).await
            && !away.swap(true, Ordering::AcqRel)
        {
            tracing::warn!(%error, "redis unreachable: heartbeats answered, nothing expired until it is back");
        }
    }
}

/// The writes as one pipeline, in their order: each run of writes of one kind is one
/// command with all their members (a member named twice in it ends with the later score).
fn pipeline(keys: &WriteKeys, writes: &[RedisWrite]) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    let same_kind =
        |a: &RedisWrite, b: &RedisWrite| std::mem::discriminant(a) == std::mem::discriminant(b);
    for run in writes.chunk_by(same_kind) {
        let mut command = run[0].command(keys);
        for write in run {
            write.add_to(&mut command);
        }
        pipe.add_command(command).ignore();
    }
    pipe
}

/// Where beats are kept.
pub enum BeatTable {
    Memory(MemoryTable),
    Redis(RedisTable),
}

impl BeatTable {
    /// Records a beat: the instance now expires at `expiry_ms`. Never waits.
    pub fn record(&self, id: &Arc<str>, expiry_ms: i64) {
        match self {
            BeatTable::Memory(table) => table.record(id, expiry_ms),
            BeatTable::Redis(table) => table.queue(RedisWrite::Beat(Arc::clone(id), expiry_ms)),
        }
    }

    /// Records an expiry where the table has none (a registration, the start).
    pub fn seed(&self, id: &Arc<str>, expiry_ms: i64) {
        match self {
            BeatTable::Memory(table) => table.seed(id, expiry_ms),
            BeatTable::Redis(table) => table.queue(RedisWrite::Seed(Arc::clone(id), expiry_ms)),
        }
    }

    /// Notes that an unhealthy instance beat: the checker looks at it at its next round.
    pub fn revive(&self, id: &Arc<str>) {
        match self {
            BeatTable::Memory(table) => table
                .revived
                .lock()
                .expect("beat table lock")
                .push(Arc::clone(id)),
            BeatTable::Redis(table) => table.queue(RedisWrite::Revive(Arc::clone(id))),
        }
    }

    /// Takes at most `limit` of the instances noted by [`Self::revive`].
    pub async fn take_revived(&self, limit: usize) -> Result<Vec<String>, TableError> {
        match self {
            BeatTable::Memory(table) => {
                let mut revived = table.revived.lock().expect("beat table lock");
                let from = revived.len().saturating_sub(limit);
                Ok(revived.drain(from..).map(|id| id.to_string()).collect())
            }
            BeatTable::Redis(table) => {
                let mut conn = table.conn.clone();
                let result = redis::cmd("SPOP")
                    .arg(&table.revived_key)
                    .arg(limit)
                    .query_async::<Vec<String>>(&mut conn)
                    .await;
                table.reached(result, None)
            }
        }
    }

    /// Removes an instance (deregistered, or not health-checked).
    pub fn forget(&self, id: &str) {
        match self {
            BeatTable::Memory(table) => table.forget(id, None),
            BeatTable::Redis(table) => table.queue(RedisWrite::Forget(id.into())),
        }
    }

    /// Removes an instance whose expiry is still `expiry_ms`: one the checker has marked
    /// unhealthy, unless it beat meanwhile.
    pub async fn forget_expired(&self, id: &str, expiry_ms: i64) {
        match self {
            BeatTable::Memory(table) => table.forget(id, Some(expiry_ms)),
            BeatTable::Redis(table) => {
                let mut conn = table.conn.clone();
                let result = redis::Script::new(FORGET_IF_UNCHANGED)
                    .key(&table.beats_key)
                    .arg(id)
                    .arg(expiry_ms)
                    .invoke_async::<i64>(&mut conn)
                    .await;
                let _ = table.reached(result, None);
            }
        }
    }

    /// Records each expiry where the table has none, waiting until all are recorded (at
    /// start, and when Redis lost its data: every health-checked instance counts as
    /// beating now).
    pub async fn seed_all(&self, seeds: Vec<(Arc<str>, i64)>) -> Result<(), TableError> {
        match self {
            BeatTable::Memory(table) => {
                for (id, expiry) in seeds {
                    table.seed(&id, expiry);
                }
                Ok(())
            }
            BeatTable::Redis(table) => {
                let mut conn = table.conn.clone();
                for chunk in seeds.chunks(REDIS_BATCH) {
                    let mut zadd = redis::cmd("ZADD");
                    zadd.arg(&table.beats_key).arg("NX");
                    for (id, expiry) in chunk {
                        zadd.arg(*expiry).arg(&**id);
                    }
                    zadd.query_async::<()>(&mut conn).await?;
                }
                redis::cmd("SET")
                    .arg(&table.seeded_key)
                    .arg(1)
                    .query_async::<()>(&mut conn)
                    .await?;
                Ok(())
            }
        }
    }

    /// Whether the table lost its beats since it was last seeded (Redis restarted or
    /// flushed): then it is not trusted from `now_ms` on and must be seeded again.
    pub async fn lost_beats(&self, now_ms: i64) -> bool {
        let BeatTable::Redis(table) = self else {
            return false;
        };
        let mut conn = table.conn.clone();
        let seeded = redis::cmd("EXISTS")
            .arg(&table.seeded_key)
            .query_async::<bool>(&mut conn)
            .await;
        match table.reached(seeded, Some(now_ms)) {
            Ok(false) => {
                tracing::warn!("redis lost the beat table: beats trusted after one window");
                table.trusted_since.store(now_ms, Ordering::Release);
                true
            }
            _ => false,
        }
    }

    /// Counts a beat of an instance the registry does not know; returns how many it sent
    /// lately (the first is 1). A table that cannot count answers 1.
    pub async fn unknown_beat(&self, id: &str, now_ms: i64) -> u64 {
        match self {
            BeatTable::Memory(table) => table.unknown_beat(id, now_ms),
            BeatTable::Redis(table) => {
                let key = format!("{}{id}", table.unknown_prefix);
                let mut conn = table.conn.clone();
                let result = redis::pipe()
                    .cmd("INCR")
                    .arg(&key)
                    .cmd("PEXPIRE")
                    .arg(&key)
                    .arg(UNKNOWN_MEMORY_MS)
                    .ignore()
                    .query_async::<(u64,)>(&mut conn)
                    .await;
                table
                    .reached(result, Some(now_ms))
                    .map_or(1, |(count,)| count)
            }
        }
    }

    /// Entries whose expiry has come, at most `limit`.
    pub async fn expired(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<(String, i64)>, TableError> {
        match self {
            BeatTable::Memory(table) => Ok(table.expired(now_ms, limit)),
            BeatTable::Redis(table) => {
                let mut conn = table.conn.clone();
                let result = redis::cmd("ZRANGEBYSCORE")
                    .arg(&table.beats_key)
                    .arg("-inf")
                    .arg(now_ms)
                    .arg("WITHSCORES")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit)
                    .query_async::<Vec<(String, i64)>>(&mut conn)
                    .await;
                table.reached(result, Some(now_ms))
            }
        }
    }

    /// The expiries of `ids`.
    pub async fn expiries(
        &self,
        ids: &[String],
        now_ms: i64,
    ) -> Result<Vec<Option<i64>>, TableError> {
        match self {
            BeatTable::Memory(table) => Ok(table.expiries(ids)),
            BeatTable::Redis(table) => {
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                let mut conn = table.conn.clone();
                let result = redis::cmd("ZMSCORE")
                    .arg(&table.beats_key)
                    .arg(ids)
                    .query_async::<Vec<Option<f64>>>(&mut conn)
                    .await;
                table
                    .reached(result, Some(now_ms))
                    .map(|scores| scores.into_iter().map(|s| s.map(|s| s as i64)).collect())
            }
        }
    }

    /// Since when the table has answered without a gap (the start, or its last return).
    pub fn trusted_since(&self, started_ms: i64) -> i64 {
        match self {
            BeatTable::Memory(_) => started_ms,
            BeatTable::Redis(table) => table.trusted_since.load(Ordering::Acquire).max(started_ms),
        }
    }

    /// Whether the table answers now.
    pub fn is_away(&self) -> bool {
        match self {
            BeatTable::Memory(_) => false,
            BeatTable::Redis(table) => table.away.load(Ordering::Acquire),
        }
    }

    /// Whether this replica runs the expiry checker: always on a single node; in Redis,
    /// while it holds the lease, which it takes when free and renews on each call.
    pub async fn hold_lease(&self, now_ms: i64) -> bool {
        let BeatTable::Redis(table) = self else {
            return true;
        };
        let mut conn = table.conn.clone();
        let renewed = redis::Script::new(RENEW_LEASE)
            .key(&table.lease_key)
            .arg(&table.token)
            .arg(table.lease_ms)
            .invoke_async::<i64>(&mut conn)
            .await;
        match table.reached(renewed, Some(now_ms)) {
            Ok(1) => true,
            Ok(_) => {
                let taken = redis::cmd("SET")
                    .arg(&table.lease_key)
                    .arg(&table.token)
                    .arg("NX")
                    .arg("PX")
                    .arg(table.lease_ms)
                    .query_async::<Option<String>>(&mut conn)
                    .await;
                matches!(table.reached(taken, Some(now_ms)), Ok(Some(_)))
            }
            Err(_) => false,
        }
    }

    /// How many instances the table holds; `None` when Redis does not answer.
    pub async fn entries(&self) -> Option<usize> {
        match self {
            BeatTable::Memory(table) => Some(table.len()),
            BeatTable::Redis(table) => {
                let mut conn = table.conn.clone();
                let result = redis::cmd("ZCARD")
                    .arg(&table.beats_key)
                    .query_async::<usize>(&mut conn)
                    .await;
                table.reached(result, None).ok()
            }
        }
    }

    /// Beats dropped because Redis was too slow to take them.
    pub fn dropped(&self) -> u64 {
        match self {
            BeatTable::Memory(_) => 0,
            BeatTable::Redis(table) => table.dropped.load(Ordering::Relaxed),
        }
    }

    /// Gives the lease up (on shutdown), so another replica takes it at once.
    pub async fn release_lease(&self) {
        if let BeatTable::Redis(table) = self {
            let mut conn = table.conn.clone();
            let _ = redis::Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                 return redis.call('DEL', KEYS[1]) else return 0 end",
            )
            .key(&table.lease_key)
            .arg(&table.token)
            .invoke_async::<i64>(&mut conn)
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_table_keeps_the_latest_beat_and_seeds_only_what_is_missing() {
        let table = MemoryTable::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        table.record(&a, 100);
        table.record(&a, 200);
        table.seed(&a, 50);
        table.seed(&b, 150);
        assert_eq!(
            table.expiries(&["a".to_owned(), "b".to_owned(), "c".to_owned()]),
            [Some(200), Some(150), None]
        );
        let mut expired = table.expired(160, 10);
        expired.sort();
        assert_eq!(expired, [("b".to_owned(), 150)]);
        // Forgotten only while unchanged: a beat since keeps it.
        table.record(&b, 400);
        table.forget("b", Some(150));
        assert_eq!(table.expiries(&["b".to_owned()]), [Some(400)]);
        table.forget("b", Some(400));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn unknown_beats_are_counted_and_the_count_starts_over_after_a_quiet_minute() {
        let table = MemoryTable::default();
        let counts: Vec<u64> = (0..5).map(|i| table.unknown_beat("x", i * 1_000)).collect();
        assert_eq!(counts, [1, 2, 3, 4, 5]);
        assert_eq!(table.unknown_beat("x", 5_000 + UNKNOWN_MEMORY_MS), 1);
        assert_eq!(table.unknown_beat("y", 0), 1);
    }

    #[test]
    fn a_batch_of_writes_is_one_command_per_run_of_one_kind_in_order() {
        let keys = WriteKeys {
            beats: "p:beats".to_owned(),
            revived: "p:revived".to_owned(),
        };
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        let writes = [
            RedisWrite::Seed(Arc::clone(&a), 10),
            RedisWrite::Beat(Arc::clone(&a), 20),
            RedisWrite::Beat(Arc::clone(&b), 30),
            RedisWrite::Beat(Arc::clone(&a), 40),
            RedisWrite::Revive(Arc::clone(&a)),
            RedisWrite::Revive(Arc::clone(&b)),
            RedisWrite::Forget(Arc::clone(&c)),
            RedisWrite::Beat(Arc::clone(&c), 50),
        ];
        // A pipeline of these commands, each written out as its words.
        let mut expected = redis::pipe();
        for command in [
            "ZADD p:beats NX 10 a",
            "ZADD p:beats 20 a 30 b 40 a",
            "SADD p:revived a b",
            "ZREM p:beats c",
            "ZADD p:beats 50 c",
        ] {
            let mut words = command.split(' ');
            let mut cmd = redis::cmd(words.next().expect("a name"));
            for word in words {
                cmd.arg(word);
            }
            expected.add_command(cmd).ignore();
        }
        let pipe = pipeline(&keys, &writes);
        assert_eq!(
            String::from_utf8_lossy(&pipe.get_packed_pipeline()),
            String::from_utf8_lossy(&expected.get_packed_pipeline())
        );
        assert!(pipeline(&keys, &[]).get_packed_pipeline().is_empty());
    }
}
