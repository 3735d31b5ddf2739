//! Store: one trait, one writer per store worker, one transaction per batch.
//!
//! - `model`: the rows written and read, no wire types;
//! - `plan`: what a register batch writes, given what is stored (shared by the engines);
//! - `schema`: the tables, described once: columns, statements, the read SELECT, and the
//!   few clauses each SQL dialect spells its own way;
//! - `statements` and `sql`: a planned batch as multi-row statements in a few shapes;
//! - `sqlite` (the embedded default) and `mysql` (cluster mode): the two engines;
//! - `resilient`: retries of transient errors, and splitting of batches around rows that
//!   fail alone;
//! - `migrate`: numbered migrations, each applied once.

pub mod clock;
pub mod migrate;
pub mod model;
pub mod mysql;
mod plan;
pub mod resilient;
mod schema;
mod sql;
pub mod sqlite;
mod statements;

use std::path::PathBuf;
use std::sync::Arc;

pub use model::{
    ChangedRow, DeregisterOutcome, HealthChange, HealthSet, InstanceRecord, RegisterOptions,
    RegisterOutcome, Registered, StoredInstance, StoredService, StoredState,
};

/// Errors of the store layer, with the driver's error kept as the source.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot open store at {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the store is in use by another batchreg process ({path} is locked); \
         stop it first, or give this one another store.url"
    )]
    Locked { path: PathBuf },
    #[error("migration {name} failed: {source}")]
    Migration {
        name: &'static str,
        #[source]
        source: Box<StoreError>,
    },
    #[error("store URL {0:?} is not supported (use sqlite://PATH or mysql://…)")]
    UnsupportedUrl(String),
    #[error("store writer lock poisoned by a panic in another worker")]
    Poisoned,
    #[error("mysql error: {0}")]
    Mysql(#[from] mysql_async::Error),
    /// Another writer inserted one of the batch's new instances after the batch looked
    /// for it; tried again, the batch finds the row and replaces it.
    #[error("another writer inserted an instance of this batch meanwhile")]
    Raced,
    #[error("cannot connect to the database at {target}: {reason}")]
    Connect { target: String, reason: String },
    #[error("no database connection free in time")]
    PoolTimeout,
    #[error("no connection to the database within {0:?}")]
    ConnectTimeout(std::time::Duration),
    #[error("cannot start the database I/O runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("another replica held the migration lock for too long")]
    MigrationLock,
    #[error("column {column} of a stored row cannot be read: {reason}")]
    BadRow { column: usize, reason: String },
    /// A try that got no answer in time: the database is stopped or cut off.
    #[error("no answer from the database within {0:?}")]
    Stalled(std::time::Duration),
    /// The write gave up: its database stayed unreachable for `store.outage_wait`.
    #[error("the database was unreachable for {:.1}s: {source}", waited.as_secs_f64())]
    Unreachable {
        waited: std::time::Duration,
        #[source]
        source: Box<StoreError>,
    },
}

/// MySQL server errors of contention, worth a few more tries: deadlock, lock wait
/// timeout, a query interrupted. On MariaDB Galera a certification conflict is a deadlock
/// too, answered to the statement or the COMMIT that meets it, after the transaction was
/// rolled back whole.
const MYSQL_CONTENTION: &[u16] = &[
    1213, // ER_LOCK_DEADLOCK; Galera: a certification conflict
    1205, // ER_LOCK_WAIT_TIMEOUT
    1317, // ER_QUERY_INTERRUPTED
];

/// MySQL server errors of a database out of reach, retried until it has been away for
/// `store.outage_wait`: a connection killed or lost, the server going away or too busy
/// to connect, a Galera node joining, desynced or cut off from the cluster's primary
/// component (it answers 1047 to every statement until it is synced again, seconds
/// after it is back, as a restarting server does).
const MYSQL_UNREACHABLE: &[u16] = &[
    1040, // ER_CON_COUNT_ERROR
    1053, // ER_SERVER_SHUTDOWN
    1158, 1159, 1160, 1161, // network read/write errors and timeouts
    1047, // ER_UNKNOWN_COM_ERROR; Galera: "WSREP has not yet prepared node for application use"
    1927, // ER_CONNECTION_KILLED (MariaDB)
    2006, // CR_SERVER_GONE_ERROR
    2013, // CR_SERVER_LOST
];

fn mysql_unreachable(err: &mysql_async::Error) -> bool {
    match err {
        mysql_async::Error::Server(server) => MYSQL_UNREACHABLE.contains(&server.code),
        mysql_async::Error::Io(_) => true,
        mysql_async::Error::Driver(driver) => matches!(
            driver,
            mysql_async::DriverError::ConnectionClosed | mysql_async::DriverError::PacketOutOfOrder
        ),
        _ => false,
    }
}

impl StoreError {
    /// Whether the same write may succeed if tried again soon (a busy or locked
    /// database, a conflicting writer), decided from the driver's error classes, never
    /// from message text.
    pub fn is_retriable(&self) -> bool {
        match self {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(err, _)) => matches!(
                err.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ),
            StoreError::Mysql(mysql_async::Error::Server(server)) => {
                MYSQL_CONTENTION.contains(&server.code)
            }
            StoreError::Raced => true,
            _ => false,
        }
    }

    /// Whether the database is out of reach (down, restarting, cut off, stopped): the
    /// same write succeeds once it is back. [`StoreError::Unreachable`], the error of a
    /// write that waited long enough, counts too, so that it is not split and retried.
    pub fn is_outage(&self) -> bool {
        match self {
            StoreError::Mysql(err) => mysql_unreachable(err),
            StoreError::PoolTimeout
            | StoreError::ConnectTimeout(_)
            | StoreError::Stalled(_)
            | StoreError::Unreachable { .. } => true,
            _ => false,
        }
    }

    /// A short class of the error, for metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(err, _)) => match err.code {
                rusqlite::ErrorCode::DatabaseBusy => "busy",
                rusqlite::ErrorCode::DatabaseLocked => "locked",
                rusqlite::ErrorCode::ConstraintViolation => "constraint",
                _ => "sqlite",
            },
            StoreError::Sqlite(_) => "sqlite",
            StoreError::Open { .. } | StoreError::Locked { .. } => "open",
            StoreError::Migration { .. } => "migration",
            StoreError::UnsupportedUrl(_) => "config",
            StoreError::Poisoned => "poisoned",
            StoreError::Mysql(mysql_async::Error::Server(server)) => match server.code {
                1213 => "deadlock",
                1205 => "lock_wait_timeout",
                code if MYSQL_UNREACHABLE.contains(&code) => "connection",
                _ => "mysql",
            },
            StoreError::Mysql(err) if mysql_unreachable(err) => "connection",
            StoreError::Mysql(_) => "mysql",
            StoreError::Connect { .. } => "connect",
            StoreError::PoolTimeout => "pool_timeout",
            StoreError::ConnectTimeout(_) => "connect_timeout",
            StoreError::Raced => "raced",
            StoreError::Runtime(_) => "runtime",
            StoreError::MigrationLock => "migration",
            StoreError::BadRow { .. } => "bad_row",
            StoreError::Stalled(_) => "stalled",
            StoreError::Unreachable { .. } => "unreachable",
        }
    }
}

/// One writer, owned by one store worker. Each call is one transaction.
pub trait StoreWriter: Send {
    /// Writes a batch of distinct instances (ids unique), returning for each row, in the
    /// order given, what was done and what is stored now. Fails as a whole: on `Err`
    /// nothing of the batch was written.
    fn register(
        &mut self,
        rows: &[InstanceRecord],
        options: RegisterOptions,
    ) -> Result<Vec<Registered>, StoreError>;

    /// Deregisters a batch of distinct instance ids: deletes their health checks and
    /// metadata and marks their rows deregistered (purged later, see
    /// [`Store::purge_deregistered`]).
    fn deregister(&mut self, ids: &[String]) -> Result<Vec<DeregisterOutcome>, StoreError>;

    /// Writes health transitions of distinct instances: `health_status`, the revision of
    /// the record as changed, and mtime. For each, what was stored, or `None` when the
    /// instance is not live (deregistered meanwhile).
    fn set_health(
        &mut self,
        changes: &[HealthChange],
    ) -> Result<Vec<Option<HealthSet>>, StoreError>;

    /// Gets this writer ready to register: connects and prepares what a storm of
    /// registrations uses, now and whenever it connects again, so that the first batches
    /// after a start do not pay for it. On `Err` the writer still works; its first batch
    /// connects.
    fn prepare_for_registrations(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// From now on, a try that gets no answer from the database within `limit` fails
    /// with [`StoreError::Stalled`] (a stopped or cut-off server never answers). Stores
    /// that cannot stall (a local file) ignore it.
    fn set_answer_timeout(&mut self, _limit: std::time::Duration) {}
}

/// A store: hands out writers and says how many of them it wants.
pub trait Store: Send + Sync + 'static {
    fn writer(&self) -> Result<Box<dyn StoreWriter>, StoreError>;

    /// Store workers (writers) per batch controller.
    fn concurrency(&self) -> usize;

    /// The engine name, for logs and metrics.
    fn engine(&self) -> &'static str;

    /// Every [`StoreError::reason`] a write of this engine may fail with, so that their
    /// metrics are exported from the start.
    fn error_reasons(&self) -> &'static [&'static str];

    /// Whether this process is the store's only writer (the embedded store, whose file
    /// it locks), so that what it has written is all the store holds.
    fn single_writer(&self) -> bool;

    /// The stored instances with ids after `after` ("" for the first page), in id
    /// order, at most `limit`, with their health checks and metadata: a large fleet is
    /// read a page at a time, never by one query of the whole table. Reads on a
    /// connection of its own.
    fn instances_page(&self, after: &str, limit: usize) -> Result<Vec<StoredInstance>, StoreError>;

    /// The live instances among `ids`, with their health checks and metadata.
    fn instances(&self, ids: &[String]) -> Result<Vec<StoredInstance>, StoreError>;

    /// Every service, or those written at or after `since`.
    fn services(&self, since: Option<&str>) -> Result<Vec<StoredService>, StoreError>;

    /// Calls `each` with every instance row, live or deregistered, written at or after
    /// `from` and before `until` (no bound when `None`), as it is read: the change feed's
    /// first, light read. With `others_only`, the rows whose last write was this store's
    /// own (through any of its writers) are left out. A row is dropped once `each`
    /// returns, so a read of many rows holds one at a time.
    fn changed_between(
        &self,
        from: &str,
        until: Option<&str>,
        others_only: bool,
        each: &mut dyn FnMut(ChangedRow),
    ) -> Result<(), StoreError>;

    /// The database's time now, in the form of the time columns; also aligns the
    /// writers' clock with it.
    fn now(&self) -> Result<String, StoreError>;

    /// The clock the writers stamp rows with: the database's, as last aligned.
    fn clock(&self) -> Arc<clock::Clock>;

    /// Deletes at most `limit` instance rows deregistered before `before`; returns how
    /// many.
    fn purge_deregistered(&self, before: &str, limit: usize) -> Result<usize, StoreError>;
}

/// Which store to open and how.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// `sqlite://PATH` or `mysql://user:pass@host:port/db`.
    pub url: String,
    pub sqlite_synchronous: sqlite::Synchronous,
    /// Store workers per batch controller; `None`: the engine's default (SQLite 1,
    /// MySQL 2).
    pub concurrency: Option<std::num::NonZeroUsize>,
}

/// Opens the store the URL names, applying its migrations.
pub fn open(options: &StoreOptions) -> Result<Arc<dyn Store>, StoreError> {
    if let Some(path) = options.url.strip_prefix("sqlite://") {
        let store = sqlite::SqliteStore::open(path, options.sqlite_synchronous)?;
        return Ok(Arc::new(store));
    }
    if options.url.starts_with("mysql://") {
        let concurrency = options.concurrency.map(|n| n.get());
        return Ok(Arc::new(mysql::MysqlStore::open(
            &options.url,
            concurrency,
        )?));
    }
    Err(StoreError::UnsupportedUrl(options.url.clone()))
}
