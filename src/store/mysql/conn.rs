//! Connections: the options every connection opens with, and the one connection a store
//! worker owns, driven by a current-thread runtime on the worker's own thread.

use std::collections::HashMap;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{
    Conn, Opts, OptsBuilder, PoolConstraints, PoolOpts, Statement, Transaction, TxOpts,
};

use super::{CONNECT_TIMEOUT, Shared, shapes};
use crate::store::StoreError;
use crate::store::schema::{Dialect, Shape};

/// Connections in the pool for migrations and reads; the store workers have their own.
const POOL_CONNECTIONS: usize = 2;
/// Run on every new connection: each transaction is READ COMMITTED (see `write`), set
/// once per session rather than with a round trip per transaction; times are UTC, as
/// batchreg writes them (see `store::clock`).
const SESSION_INIT: [&str; 2] = [
    "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
    "SET time_zone = '+00:00'",
];
/// How long a try may go without an answer until the writer is told otherwise (see
/// `StoreWriter::set_answer_timeout`).
const DEFAULT_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a pooled connection may stay idle before it is closed (down to one).
const IDLE_CONNECTION_TTL: Duration = Duration::from_secs(60);

/// The options of `url` with the session set up and the pool's connections kept.
pub(super) fn options(url: &str) -> Result<Opts, StoreError> {
    let opts = Opts::from_url(url).map_err(|e| StoreError::Mysql(e.into()))?;
    // A store worker's connection stays open with its prepared statements for as long as
    // it works. So do the pool's: with no idle TTL, mysql_async keeps only `min` idle
    // connections and closes every other one as it comes back, and a reset on return
    // would drop the prepared statements and the session's isolation level.
    Ok(OptsBuilder::from_opts(opts)
        .init(SESSION_INIT.to_vec())
        .pool_opts(
            PoolOpts::default()
                .with_constraints(PoolConstraints::new(1, POOL_CONNECTIONS).expect("1 <= max"))
                .with_inactive_connection_ttl(IDLE_CONNECTION_TTL)
                .with_reset_connection(false),
        )
        .stmt_cache_size(256)
        .into())
}

/// The URL without its password, for messages.
pub(super) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or("");
            format!("{}{}@{}", &url[..scheme + 3], user, &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// The statements prepared on a worker's connection, by shape. The connection's own
/// statement cache is off, so no handle kept here is closed under it; the shapes are
/// few (powers of two), so the map stays small.
#[derive(Default)]
pub(super) struct Prepared(HashMap<Shape, Statement>);

impl Prepared {
    /// The statement of `shape`, prepared on `conn` first if need be.
    pub(super) async fn get(
        &mut self,
        conn: &mut impl Queryable,
        shape: Shape,
    ) -> Result<Statement, StoreError> {
        if let Some(statement) = self.0.get(&shape) {
            return Ok(statement.clone());
        }
        let statement = conn.prep(shape.sql(Dialect::Mysql)).await?;
        self.0.insert(shape, statement.clone());
        Ok(statement)
    }
}

/// How a transaction ends.
pub(super) enum Decision<T> {
    Commit(T),
    RollBack(T),
}

/// The worker's open connection and what is prepared on it.
pub(super) struct Session {
    pub(super) conn: Conn,
    pub(super) prepared: Prepared,
}

/// The connection one store worker owns.
pub(super) struct WorkerConnection {
    /// What the connection is opened with: the store's options, without a statement
    /// cache (see [`Prepared`]).
    opts: Opts,
    /// Drives `session` on the worker's own thread.
    runtime: tokio::runtime::Runtime,
    /// Opened on first use; closed after an error that may have broken it, and opened
    /// again by the next try.
    session: Option<Session>,
    /// Whether each new connection prepares the statements of registration batches.
    prepares_registrations: bool,
    /// How long one try (connecting included) may go without an answer.
    pub(super) answer_timeout: Duration,
}

impl WorkerConnection {
    pub(super) fn new(shared: &Shared) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(StoreError::Runtime)?;
        Ok(WorkerConnection {
            opts: OptsBuilder::from_opts(shared.opts.clone())
                .stmt_cache_size(0)
                .into(),
            runtime,
            session: None,
            prepares_registrations: false,
            answer_timeout: DEFAULT_ANSWER_TIMEOUT,
        })
    }

    /// From now on, each new connection prepares a storm's statements as it opens; one
    /// already open prepares them now.
    pub(super) fn prepare_for_registrations(&mut self) -> Result<(), StoreError> {
        let already_open = self.session.is_some();
        self.prepares_registrations = true;
        self.run(async |session| {
            if already_open {
                shapes::prepare_register_statements(session).await
            } else {
                Ok(())
            }
        })
    }

    /// Runs `work` on the connection, opening it first if need be.
    pub(super) fn run<T>(
        &mut self,
        work: impl AsyncFnOnce(&mut Session) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let WorkerConnection {
            opts,
            runtime,
            session,
            prepares_registrations,
            answer_timeout,
        } = self;
        let limit = *answer_timeout;
        // The timer is made inside the runtime, which drives it.
        let work = async {
            let open = match session {
                Some(open) => open,
                None => {
                    let conn = tokio::time::timeout(CONNECT_TIMEOUT, Conn::new(opts.clone()))
                        .await
                        .map_err(|_| StoreError::ConnectTimeout(CONNECT_TIMEOUT))??;
                    let mut fresh = Session {
                        conn,
                        prepared: Prepared::default(),
                    };
                    // Only a head start: batches prepare what is missing themselves.
                    if *prepares_registrations
                        && let Err(error) = shapes::prepare_register_statements(&mut fresh).await
                    {
                        if !leaves_connection_usable(&error) {
                            return Err(error);
                        }
                        tracing::warn!(%error, "could not prepare a storm's statements ahead");
                    }
                    session.insert(fresh)
                }
            };
            let result = work(open).await;
            if let Err(error) = &result
                && !leaves_connection_usable(error)
            {
                // Dropped inside the runtime, which closes the socket.
                *session = None;
            }
            result
        };
        let tried = runtime.block_on(async { tokio::time::timeout(limit, work).await });
        tried.unwrap_or_else(|_| {
            // Cut off half way through an exchange: the connection cannot be reused.
            // Dropped inside the runtime, which closes the socket.
            let stalled = session.take();
            runtime.block_on(async move { drop(stalled) });
            Err(StoreError::Stalled(limit))
        })
    }

    /// Runs `work` in one transaction on the connection, and commits it unless `work`
    /// says [`Decision::RollBack`].
    pub(super) fn transaction_or_roll_back<T>(
        &mut self,
        work: impl AsyncFnOnce(&mut Transaction<'_>, &mut Prepared) -> Result<Decision<T>, StoreError>,
    ) -> Result<T, StoreError> {
        self.run(async |session| {
            let mut tx = session.conn.start_transaction(TxOpts::default()).await?;
            match work(&mut tx, &mut session.prepared).await? {
                Decision::Commit(result) => {
                    tx.commit().await?;
                    Ok(result)
                }
                Decision::RollBack(result) => {
                    tx.rollback().await?;
                    Ok(result)
                }
            }
        })
    }

    /// Runs `work` in one transaction on the connection.
    pub(super) fn transaction<T>(
        &mut self,
        work: impl AsyncFnOnce(&mut Transaction<'_>, &mut Prepared) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.run(async |session| {
            // READ COMMITTED: set for the session when the connection opened.
            let mut tx = session.conn.start_transaction(TxOpts::default()).await?;
            let result = work(&mut tx, &mut session.prepared).await?;
            tx.commit().await?;
            Ok(result)
        })
    }
}

impl Drop for WorkerConnection {
    fn drop(&mut self) {
        // Says goodbye to the server, unless dropped inside async code, where blocking
        // is not allowed: then the socket just closes.
        if let Some(session) = self.session.take()
            && tokio::runtime::Handle::try_current().is_err()
        {
            self.runtime.block_on(async {
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), session.conn.disconnect()).await;
            });
        }
    }
}

/// Whether the connection can take the next transaction after `error`. The server
/// answered an error, or the batch raced another writer: the connection is fine, and an
/// open transaction is rolled back before its next use. Anything else (I/O, protocol,
/// time-outs) may have left it half way through an exchange.
fn leaves_connection_usable(error: &StoreError) -> bool {
    matches!(
        error,
        StoreError::Raced | StoreError::Mysql(mysql_async::Error::Server(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("mysql://root:s3cret@db:3306/x"),
            "mysql://root@db:3306/x"
        );
        assert_eq!(redact("mysql://root@db:3306/x"), "mysql://root@db:3306/x");
        assert_eq!(redact("mysql://db/x"), "mysql://db/x");
    }
}
