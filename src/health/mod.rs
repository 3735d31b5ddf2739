//! Heartbeats and health: a heartbeat is answered from the registry cache and recorded in
//! the beat table (a map update, or a beat queued for Redis); no heartbeat reaches the
//! relational store. The expiry checker turns an instance unhealthy when its beats stop,
//! and healthy again when they resume; only those transitions are written, in batches,
//! through the batch layer.
//!
//! - `rules`: the expiry rules, without I/O;
//! - `table`: the beat table, in memory or in Redis;
//! - `checker`: the checker, and the lease that lets one replica at a time run it;
//! - `writes`: the health batches.

pub mod checker;
pub mod rules;
pub mod table;
mod writes;

use std::sync::Arc;
use std::time::Duration;

use crate::batch::{BatchController, BatchSettings};
use crate::code::Code;
use crate::discovery::cache::{Placed, RegistryCache};
use crate::naming::InstanceInput;
use crate::naming::validate::{self, DEFAULT_TTL_SECONDS, ValidationError};
use crate::store::clock::Clock;
use crate::store::resilient::{ResilientWriter, RetryPolicy};
use crate::store::{Store, StoreError};
use crate::telemetry::{HealthMetrics, StoreMetrics};
use checker::Checker;
use table::{BeatTable, MemoryTable, RedisTable, TableError};
use writes::HealthWrite;

/// Health settings, validated by the config.
#[derive(Debug, Clone)]
pub struct HealthSettings {
    /// Heartbeats are answered; off, every heartbeat answers 400140.
    pub enabled: bool,
    /// Cluster mode: the beat table in Redis; `None`: in this process's memory.
    pub redis_url: Option<String>,
    /// Every Redis key starts with it.
    pub key_prefix: String,
    /// How often the expiry checker runs.
    pub check_interval: Duration,
    /// How long the checker's lease lasts unless renewed (cluster mode).
    pub lease: Duration,
    /// How long a Redis command may take.
    pub redis_timeout: Duration,
    pub batch: BatchSettings,
    pub retry: RetryPolicy,
}

/// Why a heartbeat was not taken.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("health checking is switched off on this server")]
    Off,
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("instance {id} is not registered")]
    Unknown { id: String },
}

impl HealthError {
    /// The Polaris code the heartbeat is answered with.
    pub fn code(&self) -> Code {
        match self {
            HealthError::Off => Code::HealthCheckNotOpen,
            HealthError::Invalid(invalid) => invalid.code(),
            HealthError::Unknown { .. } => Code::NotFoundResource,
        }
    }
}

/// Why health checking could not start.
#[derive(Debug, thiserror::Error)]
pub enum HealthStartError {
    #[error("cannot reach redis at {target}: {source}")]
    Redis {
        target: String,
        #[source]
        source: TableError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Heartbeats, the beat table and the expiry checker.
pub struct Health {
    enabled: bool,
    table: Arc<BeatTable>,
    cache: Arc<RegistryCache>,
    clock: Arc<Clock>,
    /// Taken on stop.
    checker: std::sync::Mutex<Option<Checker>>,
    metrics: HealthMetrics,
}

impl Health {
    /// Opens the beat table (connecting to Redis when configured), records the cache's
    /// health-checked instances as beating now where the table knows nothing of them,
    /// and starts the checker on the current runtime.
    pub async fn start(
        settings: &HealthSettings,
        store: &dyn Store,
        cache: Arc<RegistryCache>,
    ) -> Result<Health, HealthStartError> {
        let clock = store.clock();
        let started_ms = clock.now_ms();
        let metrics = HealthMetrics::default();
        let table = match &settings.redis_url {
            Some(url) => BeatTable::Redis(
                RedisTable::connect(
                    url,
                    &settings.key_prefix,
                    settings.lease,
                    settings.redis_timeout,
                    started_ms,
                )
                .await
                .map_err(|source| HealthStartError::Redis {
                    target: redact(url),
                    source,
                })?,
            ),
            None => {
                if !store.single_writer() {
                    tracing::warn!(
                        "health.redis_url is not set: beats are kept in this process, so \
                         heartbeat expiry is only correct with a single replica"
                    );
                }
                BeatTable::Memory(MemoryTable::default())
            }
        };
        let table = Arc::new(table);
        let seeds: Vec<(Arc<str>, i64)> = cache
            .checked()
            .into_iter()
            .map(|(id, ttl)| (id, rules::expiry_after(started_ms, ttl)))
            .collect();
        table
            .seed_all(seeds)
            .await
            .map_err(|source| HealthStartError::Redis {
                target: settings
                    .redis_url
                    .as_deref()
                    .map(redact)
                    .unwrap_or_default(),
                source,
            })?;
        let writers = (0..store.concurrency())
            .map(|_| {
                let writer = ResilientWriter::new(
                    store.writer()?,
                    settings.retry,
                    StoreMetrics::new(store.engine(), "health", store.error_reasons()),
                );
                Ok(HealthWrite {
                    writer,
                    cache: Arc::clone(&cache),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let controller = BatchController::start("health", settings.batch, writers);
        let checker = Checker::start(
            Arc::clone(&table),
            Arc::clone(&cache),
            Arc::clone(&clock),
            controller,
            settings.check_interval,
            started_ms,
            metrics.clone(),
        );
        Ok(Health {
            enabled: settings.enabled,
            table,
            cache,
            clock,
            checker: std::sync::Mutex::new(Some(checker)),
            metrics,
        })
    }

    /// Takes one heartbeat: by id, or by service, namespace, host and port. Returns the
    /// instance's id. A known instance's beat is recorded; an unknown one is answered as
    /// known for its first beats (its registration may still be on its way) and refused
    /// from the fifth on.
    pub async fn heartbeat(&self, input: &InstanceInput) -> Result<String, HealthError> {
        if !self.enabled {
            return Err(HealthError::Off);
        }
        let id = validate::heartbeat_id(input)?;
        let now = self.clock.now_ms();
        match self.cache.heartbeat_ttl(&id) {
            Some((shared, ttl, healthy)) => {
                // An instance registered without a health check: answered, no effect.
                if let Some(ttl) = ttl {
                    self.table.record(&shared, rules::expiry_after(now, ttl));
                    if !healthy {
                        // The checker looks at it at its next round.
                        self.table.revive(&shared);
                    }
                }
                Ok(id)
            }
            None => {
                self.table.record(
                    &Arc::from(id.as_str()),
                    rules::expiry_after(now, DEFAULT_TTL_SECONDS),
                );
                if self.table.unknown_beat(&id, now).await > rules::UNKNOWN_BEATS_ALLOWED {
                    self.metrics.unknown_refused();
                    return Err(HealthError::Unknown { id });
                }
                Ok(id)
            }
        }
    }

    /// Whether heartbeats are answered (`health.enabled`).
    pub fn is_on(&self) -> bool {
        self.enabled
    }

    /// An instance was registered: that counts as a beat. `placed` is the instance as
    /// the cache holds it, when the write said; otherwise the cache is asked.
    pub fn registered(&self, id: &str, placed: Option<&Placed>) {
        let (shared, ttl) = match placed {
            Some(placed) => (Arc::clone(&placed.id), placed.ttl),
            None => match self.cache.heartbeat_ttl(id) {
                Some((shared, ttl, _)) => (shared, ttl),
                None => return,
            },
        };
        if let Some(ttl) = ttl {
            self.table
                .record(&shared, rules::expiry_after(self.clock.now_ms(), ttl));
        }
    }

    /// An instance was deregistered: it leaves the beat table.
    pub fn deregistered(&self, id: &str) {
        self.table.forget(id);
    }

    /// Stops the checker (giving up its lease), writes the transitions still queued.
    pub async fn stop(&self) {
        let checker = self.checker.lock().expect("checker lock").take();
        if let Some(checker) = checker {
            checker.stop().await;
        }
        self.table.release_lease().await;
    }
}

/// The Redis URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***@{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}
