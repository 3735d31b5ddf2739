//! Cluster mode: a MySQL-compatible database (MySQL 8, MariaDB 10.11, TiDB) shared by
//! several batchreg replicas. Correctness comes from the database: one READ COMMITTED
//! transaction per batch that locks the batch's rows in id order, multi-row statements,
//! and unique keys.
//!
//! - `conn`: connection options, and the connection each store worker owns on a
//!   current-thread runtime of its own (a batch's round trips wake no other thread);
//! - `migrate`: migrations that replicas starting together may apply side by side;
//! - `shapes`: the statements a storm uses, prepared when a connection opens;
//! - `write`: the register and deregister transactions;
//! - `read`: what the registry cache loads and follows (pages, changes, services).
//!
//! Migrations and reads use a small pool on the store's own runtime.

mod conn;
mod migrate;
mod read;
mod shapes;
mod write;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Opts, Params, Pool, Value};

use super::clock::Clock;
use super::schema::{self, Cell, ResultRow, Shape, WriterId};
use super::statements::{Limits, Statement};
use super::{ChangedRow, Store, StoreError, StoreWriter, StoredInstance, StoredService};

/// The server's limit of bound values in one prepared statement.
const MAX_PARAMS: usize = 65_535;
/// How long start-up waits for the first connection, and a store worker for its own.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a read waits for a pooled connection before the try counts as failed.
const POOL_WAIT: Duration = Duration::from_secs(10);
/// Tries of the migrations at start, when they meet another replica's.
const MIGRATION_TRIES: u32 = 5;
/// Store workers per batch controller when the config does not say.
pub const DEFAULT_CONCURRENCY: usize = 2;

/// The MySQL store.
pub struct MysqlStore {
    shared: Arc<Shared>,
    concurrency: usize,
}

/// What the store and its writers share.
struct Shared {
    pool: Pool,
    runtime: Option<tokio::runtime::Runtime>,
    /// What each store worker's own connection is opened with.
    opts: Opts,
    /// How large one statement may be: `max_bytes` well below the server's
    /// max_allowed_packet.
    limits: Limits,
    /// The database's clock, as the writers stamp their rows with it.
    clock: Arc<Clock>,
    /// What this store marks the instance rows it writes with.
    writer: WriterId,
}

impl Shared {
    fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime
            .as_ref()
            .expect("runtime lives as long as the store")
            .block_on(future)
    }

    /// Runs `read` on a pooled connection.
    fn read<T>(
        &self,
        read: impl AsyncFnOnce(&mut mysql_async::Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.block_on(async {
            let mut conn = tokio::time::timeout(POOL_WAIT, self.pool.get_conn())
                .await
                .map_err(|_| StoreError::PoolTimeout)??;
            read(&mut conn).await
        })
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Never blocks, also when the last owner is dropped inside async code.
            runtime.shutdown_background();
        }
    }
}

impl MysqlStore {
    /// Connects (failing fast with a clear message when the database is unreachable or
    /// refuses the credentials) and applies the migrations not yet recorded.
    /// `concurrency`: store workers per controller, each with its own connection.
    pub fn open(url: &str, concurrency: Option<usize>) -> Result<Self, StoreError> {
        let concurrency = concurrency.unwrap_or(DEFAULT_CONCURRENCY);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("mysql-io")
            .enable_all()
            .build()
            .map_err(StoreError::Runtime)?;
        let opts = conn::options(url)?;
        let _entered = runtime.enter();
        let pool = Pool::new(opts.clone());
        let max_packet = runtime.block_on(async {
            let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, pool.get_conn())
                .await
                .map_err(|_| StoreError::Connect {
                    target: conn::redact(url),
                    reason: format!("no answer within {CONNECT_TIMEOUT:?}"),
                })?
                .map_err(|e| StoreError::Connect {
                    target: conn::redact(url),
                    reason: e.to_string(),
                })?;
            // Every migration may run again (see `migrate`): a conflict with another
            // replica migrating at the same moment (1213 on Galera) is tried again.
            let mut tries = 1;
            while let Err(error) = migrate::apply(&mut conn).await {
                if !error.is_retriable() || tries == MIGRATION_TRIES {
                    return Err(error);
                }
                tracing::warn!(%error, tries, "migrations met another replica's; trying again");
                tries += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let max_packet: Option<u64> = conn.query_first("SELECT @@max_allowed_packet").await?;
            Ok::<_, StoreError>(max_packet.unwrap_or(4 << 20))
        })?;
        let clock = Arc::new(Clock::default());
        runtime.block_on(read::align_clock(&pool, &clock))?;
        drop(_entered);
        let max_bytes = usize::try_from(max_packet / 2)
            .unwrap_or(usize::MAX)
            .clamp(64 << 10, 16 << 20);
        Ok(MysqlStore {
            shared: Arc::new(Shared {
                pool,
                runtime: Some(runtime),
                opts,
                limits: Limits {
                    max_params: MAX_PARAMS,
                    max_bytes,
                },
                clock,
                writer: WriterId::random(),
            }),
            concurrency,
        })
    }
}

impl Store for MysqlStore {
    fn writer(&self) -> Result<Box<dyn StoreWriter>, StoreError> {
        Ok(Box::new(write::MysqlWriter::new(&self.shared)?))
    }

    fn concurrency(&self) -> usize {
        self.concurrency
    }

    fn engine(&self) -> &'static str {
        "mysql"
    }

    fn error_reasons(&self) -> &'static [&'static str] {
        &[
            "deadlock",
            "lock_wait_timeout",
            "connection",
            "mysql",
            "pool_timeout",
            "connect_timeout",
            "raced",
            "runtime",
            "bad_row",
            "stalled",
            "unreachable",
        ]
    }

    fn single_writer(&self) -> bool {
        false
    }

    fn instances_page(&self, after: &str, limit: usize) -> Result<Vec<StoredInstance>, StoreError> {
        self.shared
            .read(async |conn| read::instances_page(conn, after, limit).await)
    }

    fn instances(&self, ids: &[String]) -> Result<Vec<StoredInstance>, StoreError> {
        let limits = self.shared.limits;
        self.shared
            .read(async |conn| read::instances(conn, limits, ids).await)
    }

    fn services(&self, since: Option<&str>) -> Result<Vec<StoredService>, StoreError> {
        self.shared
            .read(async |conn| read::services(conn, since).await)
    }

    fn changed_between(
        &self,
        from: &str,
        until: Option<&str>,
        others_only: bool,
        each: &mut dyn FnMut(ChangedRow),
    ) -> Result<(), StoreError> {
        let skipped = others_only.then_some(self.shared.writer);
        self.shared
            .read(async |conn| read::changed_between(conn, from, until, skipped, each).await)
    }

    fn now(&self) -> Result<String, StoreError> {
        self.shared
            .block_on(read::align_clock(&self.shared.pool, &self.shared.clock))?;
        Ok(self.shared.clock.now())
    }

    fn clock(&self) -> Arc<Clock> {
        Arc::clone(&self.shared.clock)
    }

    fn purge_deregistered(&self, before: &str, limit: usize) -> Result<usize, StoreError> {
        self.shared.read(async |conn| {
            conn.exec_drop(
                schema::purge_deleted(schema::Dialect::Mysql),
                (before, limit as u64),
            )
            .await?;
            Ok(usize::try_from(conn.affected_rows()).unwrap_or(usize::MAX))
        })
    }
}

/// A mysql_async row, read by position.
struct MysqlRow<'a>(&'a mysql_async::Row);

impl MysqlRow<'_> {
    fn value<T: mysql_async::prelude::FromValue>(&self, column: usize) -> Result<T, StoreError> {
        let value = self.0.as_ref(column).cloned().unwrap_or(Value::NULL);
        mysql_async::from_value_opt(value).map_err(|e| StoreError::BadRow {
            column,
            reason: e.to_string(),
        })
    }
}

impl ResultRow for MysqlRow<'_> {
    fn text(&self, column: usize) -> Result<String, StoreError> {
        self.value(column)
    }

    fn number(&self, column: usize) -> Result<u32, StoreError> {
        self.value(column)
    }

    fn optional_number(&self, column: usize) -> Result<Option<u32>, StoreError> {
        self.value(column)
    }
}

impl From<Cell<'_>> for Value {
    fn from(cell: Cell<'_>) -> Value {
        match cell {
            Cell::Text(text) => Value::from(text),
            Cell::Number(number) => Value::from(number),
            Cell::Flag(flag) => Value::from(flag),
            Cell::Writer(WriterId(id)) => Value::from(id),
        }
    }
}

/// A statement's shape, and its values as positional parameters.
fn params(statement: Statement<'_>) -> (Shape, Params) {
    let values = statement.cells.into_iter().map(Value::from).collect();
    (statement.shape, Params::Positional(values))
}
