//! Cluster mode: a MySQL-compatible database (MySQL 8, MariaDB 10.11, TiDB) shared by
//! several batchreg replicas. Correctness comes from the database: one READ COMMITTED
//! transaction per batch that locks the batch's rows in id order, multi-row
//! `INSERT … ON DUPLICATE KEY UPDATE`, and unique keys.
//!
//! Each store worker (a plain thread) owns one connection and a current-thread tokio
//! runtime that drives it, so a batch's round trips wake no other thread. Migrations and
//! reads use a small pool on the store's own runtime.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{
    Conn, Opts, OptsBuilder, Params, Pool, PoolConstraints, PoolOpts, Transaction, TxOpts, Value,
};

use super::migrate::{self, Migration};
use super::model::{self, DeregisterOutcome, InstanceRecord, RegisterOptions, RegisterOutcome};
use super::plan::{self, Existing, PlannedWrite, ServiceKey};
use super::sql::{
    list_placeholders, padded_lists, power_of_two_runs, row_placeholders, statement_chunks,
};
use super::{Store, StoreError, StoreWriter, StoredInstance};

/// The server's limit of bound values in one prepared statement.
const MAX_PARAMS: usize = 65_535;
/// How long start-up waits for the first connection, and a store worker for its own.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a read waits for a pooled connection before the try counts as failed.
const POOL_WAIT: Duration = Duration::from_secs(10);
/// Connections in the pool for migrations and reads; the store workers have their own.
const POOL_CONNECTIONS: usize = 2;
/// Run on every new connection: each transaction is READ COMMITTED (see the module
/// comment), set once per session rather than with a round trip per transaction.
const SESSION_INIT: &str = "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED";
/// How long a pooled connection may stay idle before it is closed (down to one).
const IDLE_CONNECTION_TTL: Duration = Duration::from_secs(60);
/// Store workers per batch controller when the config does not say.
pub const DEFAULT_CONCURRENCY: usize = 2;

/// The MySQL store.
pub struct MysqlStore {
    shared: Arc<Shared>,
    concurrency: usize,
}

struct Shared {
    pool: Pool,
    runtime: Option<tokio::runtime::Runtime>,
    /// What each store worker's own connection is opened with.
    opts: Opts,
    /// Bytes of values per statement: well below the server's max_allowed_packet.
    max_statement_bytes: usize,
}

impl Shared {
    fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime
            .as_ref()
            .expect("runtime lives as long as the store")
            .block_on(future)
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
        let opts = Opts::from_url(url).map_err(|e| StoreError::Mysql(e.into()))?;
        // A store worker's connection stays open with its prepared statements for as
        // long as it works. So do the pool's: with no idle TTL, mysql_async keeps only
        // `min` idle connections and closes every other one as it comes back, and a
        // reset on return would drop the prepared statements and the session's
        // isolation level.
        let opts: Opts = OptsBuilder::from_opts(opts)
            .init(vec![SESSION_INIT])
            .pool_opts(
                PoolOpts::default()
                    .with_constraints(PoolConstraints::new(1, POOL_CONNECTIONS).expect("1 <= max"))
                    .with_inactive_connection_ttl(IDLE_CONNECTION_TTL)
                    .with_reset_connection(false),
            )
            .stmt_cache_size(256)
            .into();
        let _entered = runtime.enter();
        let pool = Pool::new(opts.clone());
        let max_packet = runtime.block_on(async {
            let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, pool.get_conn())
                .await
                .map_err(|_| StoreError::Connect {
                    target: redact(url),
                    reason: format!("no answer within {CONNECT_TIMEOUT:?}"),
                })?
                .map_err(|e| StoreError::Connect {
                    target: redact(url),
                    reason: e.to_string(),
                })?;
            apply_migrations(&mut conn).await?;
            let max_packet: Option<u64> = conn.query_first("SELECT @@max_allowed_packet").await?;
            Ok::<_, StoreError>(max_packet.unwrap_or(4 << 20))
        })?;
        drop(_entered);
        let max_statement_bytes = usize::try_from(max_packet / 2)
            .unwrap_or(usize::MAX)
            .clamp(64 << 10, 16 << 20);
        Ok(MysqlStore {
            shared: Arc::new(Shared {
                pool,
                runtime: Some(runtime),
                opts,
                max_statement_bytes,
            }),
            concurrency,
        })
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or("");
            format!("{}{}@{}", &url[..scheme + 3], user, &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// Applies the MySQL migrations under a named lock, so that of several replicas starting
/// at once one applies each file and the others wait, then see it recorded.
async fn apply_migrations(conn: &mut mysql_async::Conn) -> Result<(), StoreError> {
    let locked: Option<i64> = conn
        .query_first("SELECT GET_LOCK('batchreg_migrate', 60)")
        .await?;
    if locked != Some(1) {
        return Err(StoreError::MigrationLock);
    }
    let result = apply_unlocked(conn, migrate::MYSQL).await;
    conn.query_drop("DO RELEASE_LOCK('batchreg_migrate')")
        .await?;
    result
}

async fn apply_unlocked(
    conn: &mut mysql_async::Conn,
    migrations: &[Migration],
) -> Result<(), StoreError> {
    conn.query_drop(
        "CREATE TABLE IF NOT EXISTS batchreg_migrations (
             version    INT UNSIGNED NOT NULL PRIMARY KEY,
             name       VARCHAR(255) NOT NULL,
             applied_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)
         ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4",
    )
    .await?;
    let applied: Vec<u32> = conn
        .query("SELECT version FROM batchreg_migrations")
        .await?;
    for migration in migrations {
        if applied.contains(&migration.version) {
            continue;
        }
        for statement in migrate::statements(migration.sql) {
            conn.query_drop(statement)
                .await
                .map_err(|e| StoreError::Migration {
                    name: migration.name,
                    source: Box::new(e.into()),
                })?;
        }
        conn.exec_drop(
            "INSERT INTO batchreg_migrations (version, name) VALUES (?, ?)",
            (migration.version, migration.name),
        )
        .await?;
        tracing::info!(migration = migration.name, "applied MySQL migration");
    }
    Ok(())
}

impl Store for MysqlStore {
    fn writer(&self) -> Result<Box<dyn StoreWriter>, StoreError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(StoreError::Runtime)?;
        Ok(Box::new(MysqlWriter {
            shared: Arc::clone(&self.shared),
            runtime,
            conn: None,
            prepares_registrations: false,
            expect_unchanged: true,
        }))
    }

    fn concurrency(&self) -> usize {
        self.concurrency
    }

    fn engine(&self) -> &'static str {
        "mysql"
    }

    fn namespace_counts(&self) -> Result<Vec<super::NamespaceCount>, StoreError> {
        let rows: Vec<(String, u64, u64)> = self.shared.block_on(async {
            let mut conn = tokio::time::timeout(POOL_WAIT, self.shared.pool.get_conn())
                .await
                .map_err(|_| StoreError::PoolTimeout)??;
            Ok::<_, StoreError>(conn.query(super::NAMESPACE_COUNTS_SQL).await?)
        })?;
        Ok(rows
            .into_iter()
            .map(|(namespace, services, instances)| super::NamespaceCount {
                namespace,
                services,
                instances,
            })
            .collect())
    }
}

struct MysqlWriter {
    shared: Arc<Shared>,
    /// Drives `conn` on the worker's own thread.
    runtime: tokio::runtime::Runtime,
    /// Opened on first use; closed after an error that may have broken it, and opened
    /// again by the next try.
    conn: Option<Conn>,
    /// Whether each new connection prepares the statements of registration batches.
    prepares_registrations: bool,
    /// Whether the last batch wrote nothing: then the next one is first looked up
    /// without a transaction, since a restart storm re-registers what is stored. In a
    /// storm of new instances that look-up would be wasted, so it is skipped until a
    /// batch writes nothing again.
    expect_unchanged: bool,
}

impl MysqlWriter {
    /// Runs `work` on the worker's connection, opening it first if need be.
    fn on_connection<T>(
        &mut self,
        work: impl AsyncFnOnce(&mut Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let MysqlWriter {
            shared,
            runtime,
            conn,
            prepares_registrations,
            ..
        } = self;
        runtime.block_on(async {
            let open = match conn {
                Some(open) => open,
                None => {
                    let mut fresh =
                        tokio::time::timeout(CONNECT_TIMEOUT, Conn::new(shared.opts.clone()))
                            .await
                            .map_err(|_| StoreError::ConnectTimeout(CONNECT_TIMEOUT))??;
                    // Only a head start: batches prepare what is missing themselves.
                    if *prepares_registrations
                        && let Err(error) = prepare_register_statements(&mut fresh).await
                    {
                        if !leaves_connection_usable(&error) {
                            return Err(error);
                        }
                        tracing::warn!(%error, "could not prepare a storm's statements ahead");
                    }
                    conn.insert(fresh)
                }
            };
            let result = work(open).await;
            if let Err(error) = &result
                && !leaves_connection_usable(error)
            {
                // Dropped inside the runtime, which closes the socket.
                *conn = None;
            }
            result
        })
    }

    /// Runs `work` in one transaction on the worker's connection.
    fn transaction<T>(
        &mut self,
        work: impl AsyncFnOnce(&mut Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.on_connection(async |conn| {
            // READ COMMITTED: set for the session when the connection opened.
            let mut tx = conn.start_transaction(TxOpts::default()).await?;
            let result = work(&mut tx).await?;
            tx.commit().await?;
            Ok(result)
        })
    }
}

impl Drop for MysqlWriter {
    fn drop(&mut self) {
        // Says goodbye to the server, unless dropped inside async code, where blocking
        // is not allowed: then the socket just closes.
        if let Some(conn) = self.conn.take()
            && tokio::runtime::Handle::try_current().is_err()
        {
            self.runtime.block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(1), conn.disconnect()).await;
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

impl StoreWriter for MysqlWriter {
    fn register(
        &mut self,
        rows: &[InstanceRecord],
        options: RegisterOptions,
    ) -> Result<Vec<RegisterOutcome>, StoreError> {
        // A restart storm re-registers what is already stored: one plain read shows it,
        // with no transaction and no locks. The database held this exact content when read.
        if self.expect_unchanged {
            let existing = self.on_connection(async |conn| read_existing(conn, rows, "").await)?;
            if plan::all_unchanged(rows, &existing) {
                return Ok(vec![RegisterOutcome::Unchanged; rows.len()]);
            }
        }
        // Services are looked up, and the missing ones created, before the batch's
        // transaction, each insert committed at once. Created inside it, they would keep
        // the namespace row locked until the batch commits, and every other batch that
        // creates a service in that namespace would wait for it, as all do at the start
        // of a storm. A service created for a batch that then fails stays: it would be
        // created again when the batch is tried again.
        let services = plan::distinct_services(rows);
        let service_ids =
            self.on_connection(async |conn| resolve_services(conn, &services, options).await)?;
        let max_bytes = self.shared.max_statement_bytes;
        let outcomes =
            self.transaction(async |tx| register_in(tx, rows, &service_ids, max_bytes).await)?;
        self.expect_unchanged = outcomes.iter().all(|o| *o == RegisterOutcome::Unchanged);
        Ok(outcomes)
    }

    fn deregister(&mut self, ids: &[String]) -> Result<Vec<DeregisterOutcome>, StoreError> {
        self.transaction(async |tx| deregister_in(tx, ids).await)
    }

    fn instance(&mut self, id: &str) -> Result<Option<StoredInstance>, StoreError> {
        self.transaction(async |tx| read_instance(tx, id).await)
    }

    fn prepare_for_registrations(&mut self) -> Result<(), StoreError> {
        let already_open = self.conn.is_some();
        self.prepares_registrations = true;
        // A new connection prepares as it opens; one already open prepares now.
        self.on_connection(async |conn| {
            if already_open {
                prepare_register_statements(conn).await
            } else {
                Ok(())
            }
        })
    }
}

async fn register_in(
    tx: &mut Transaction<'_>,
    rows: &[InstanceRecord],
    service_ids: &HashMap<ServiceKey, String>,
    max_bytes: usize,
) -> Result<Vec<RegisterOutcome>, StoreError> {
    let existing = read_existing(tx, rows, " FOR UPDATE").await?;
    let (outcomes, writes) = plan::plan_register(rows, service_ids, &existing);
    if writes.is_empty() {
        return Ok(outcomes);
    }
    // Rows this batch found are locked and updated in place. Rows it did not find are
    // inserted without `ON DUPLICATE KEY`: if another writer inserted one since (read
    // committed locks no gaps), the insert fails and the batch is tried again, and then
    // finds it. So an inserted row is new, with no metadata or health check to replace.
    let (added, replaced): (Vec<&PlannedWrite<'_>>, Vec<&PlannedWrite<'_>>) =
        writes.iter().partition(|w| !w.replaced);
    write_instances(tx, &replaced, OnDuplicate::Update, max_bytes).await?;
    write_instances(tx, &added, OnDuplicate::Fail, max_bytes).await?;
    let replaced_ids: Vec<&str> = replaced.iter().map(|w| w.record.id.as_str()).collect();
    delete_where_id_in(tx, "instance_metadata", &replaced_ids).await?;
    let unchecked: Vec<&str> = replaced
        .iter()
        .filter(|w| w.record.health_check_ttl.is_none())
        .map(|w| w.record.id.as_str())
        .collect();
    delete_where_id_in(tx, "health_check", &unchecked).await?;
    upsert_health_checks(tx, &writes).await?;
    insert_metadata(tx, &writes, max_bytes).await?;
    Ok(outcomes)
}

/// The ids of the batch's services, creating the missing ones if allowed. Run outside a
/// transaction: each insert commits (and releases its locks) at once. ctime and mtime
/// are the database's time of the insert, as their defaults.
async fn resolve_services(
    conn: &mut Conn,
    services: &[ServiceKey],
    options: RegisterOptions,
) -> Result<HashMap<ServiceKey, String>, StoreError> {
    let mut ids = select_services(conn, services).await?;
    let missing: Vec<&ServiceKey> = services.iter().filter(|k| !ids.contains_key(*k)).collect();
    if missing.is_empty() || !options.create_services {
        return Ok(ids);
    }
    for (namespace, service) in &missing {
        conn.exec_drop(
            "INSERT INTO namespace (name) VALUES (?) ON DUPLICATE KEY UPDATE name = name",
            (namespace,),
        )
        .await?;
        conn.exec_drop(
            "INSERT INTO service (id, name, namespace) VALUES (?, ?, ?)
             ON DUPLICATE KEY UPDATE id = id",
            (model::service_id(namespace, service), service, namespace),
        )
        .await?;
    }
    // Another replica may have created a service first, under another id.
    let created: Vec<ServiceKey> = missing.into_iter().cloned().collect();
    ids.extend(select_services(conn, &created).await?);
    Ok(ids)
}

/// The ids of the services that exist, in one query.
async fn select_services(
    conn: &mut Conn,
    services: &[ServiceKey],
) -> Result<HashMap<ServiceKey, String>, StoreError> {
    let mut ids = HashMap::with_capacity(services.len());
    let keys: Vec<&ServiceKey> = services.iter().collect();
    for list in padded_lists(&keys, MAX_PARAMS / 2) {
        let sql = select_services_sql(list.len());
        let values = list
            .iter()
            .flat_map(|(namespace, service)| [Value::from(namespace), Value::from(service)]);
        let found: Vec<(String, String, String)> = conn.exec(sql, params(values)).await?;
        for (id, namespace, service) in found {
            ids.insert((namespace, service), id);
        }
    }
    Ok(ids)
}

/// The statements of a registration batch, by their number of rows. Batches use them in
/// power-of-two sizes (see `sql::power_of_two_runs`), and each worker prepares the common
/// ones when its connection opens ([`prepare_register_statements`]).
fn select_services_sql(services: usize) -> String {
    format!(
        "SELECT id, namespace, name FROM service WHERE (namespace, name) IN ({})",
        row_placeholders(services, "(?,?)")
    )
}

fn read_existing_sql(ids: usize, lock: &str) -> String {
    format!(
        "SELECT id, revision, isolate FROM instance WHERE id IN ({}) ORDER BY id{lock}",
        list_placeholders(ids)
    )
}

fn insert_instances_sql(rows: usize, on_duplicate: OnDuplicate) -> String {
    let update = match on_duplicate {
        OnDuplicate::Fail => "",
        OnDuplicate::Update => {
            "ON DUPLICATE KEY UPDATE
                 service_id = VALUES(service_id), vpc_id = VALUES(vpc_id),
                 host = VALUES(host), port = VALUES(port), protocol = VALUES(protocol),
                 version = VALUES(version), health_status = VALUES(health_status),
                 isolate = VALUES(isolate), weight = VALUES(weight),
                 enable_health_check = VALUES(enable_health_check),
                 logic_set = VALUES(logic_set), cmdb_region = VALUES(cmdb_region),
                 cmdb_zone = VALUES(cmdb_zone), cmdb_idc = VALUES(cmdb_idc),
                 priority = VALUES(priority), revision = VALUES(revision),
                 flag = 0, mtime = NOW(3)"
        }
    };
    // ctime and mtime: the database's time, from the columns' defaults on insert.
    format!(
        "INSERT INTO instance (id, service_id, vpc_id, host, port, protocol, version,
             health_status, isolate, weight, enable_health_check, logic_set, cmdb_region,
             cmdb_zone, cmdb_idc, priority, revision, flag)
         VALUES {} {update}",
        row_placeholders(rows, "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,0)")
    )
}

fn upsert_health_checks_sql(rows: usize) -> String {
    format!(
        "INSERT INTO health_check (id, type, ttl) VALUES {}
         ON DUPLICATE KEY UPDATE type = VALUES(type), ttl = VALUES(ttl)",
        row_placeholders(rows, "(?,1,?)")
    )
}

/// ctime and mtime: the database's time, from the columns' defaults.
fn insert_metadata_sql(rows: usize) -> String {
    format!(
        "INSERT INTO instance_metadata (id, mkey, mvalue) VALUES {}",
        row_placeholders(rows, "(?,?,?)")
    )
}

/// Instances per batch whose statements a worker prepares when its connection opens:
/// the default `max_batch`. Larger shapes are prepared when first used.
const PREPARED_BATCH_ROWS: usize = 128;
/// Metadata entries per instance covered by the prepared metadata inserts.
const PREPARED_METADATA_PER_INSTANCE: usize = 4;
/// Distinct services per batch covered by the prepared service look-ups.
const PREPARED_SERVICES: usize = 16;

/// Prepares, on a new connection, the statements a storm of new and unchanged instances
/// uses, in every power-of-two size up to the limits above. Without it the first batches
/// after a start each prepare their own (a prepare returns one column definition per
/// placeholder, 2,176 for a 128-row instance insert).
async fn prepare_register_statements(conn: &mut Conn) -> Result<(), StoreError> {
    let sizes = |max: usize| {
        (0..)
            .map(|bit| 1usize << bit)
            .take_while(move |&n| n <= max)
    };
    let mut statements = Vec::new();
    for rows in sizes(PREPARED_BATCH_ROWS) {
        statements.push(read_existing_sql(rows, ""));
        statements.push(read_existing_sql(rows, " FOR UPDATE"));
        statements.push(insert_instances_sql(rows, OnDuplicate::Fail));
        statements.push(upsert_health_checks_sql(rows));
    }
    for rows in sizes(PREPARED_BATCH_ROWS * PREPARED_METADATA_PER_INSTANCE) {
        statements.push(insert_metadata_sql(rows));
    }
    for services in sizes(PREPARED_SERVICES) {
        statements.push(select_services_sql(services));
    }
    for sql in statements {
        conn.prep(sql).await?;
    }
    Ok(())
}

/// Reads the stored revisions of the rows the batch names, in id order. With `lock` =
/// `" FOR UPDATE"` inside the batch's transaction it also locks them, in a stable order
/// across replicas; under READ COMMITTED this takes no gap locks, so fresh inserts of
/// different batches do not deadlock each other.
async fn read_existing(
    conn: &mut impl Queryable,
    rows: &[InstanceRecord],
    lock: &'static str,
) -> Result<HashMap<String, Existing>, StoreError> {
    let mut ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    ids.sort_unstable();
    let mut existing = HashMap::with_capacity(ids.len());
    for list in padded_lists(&ids, MAX_PARAMS) {
        let sql = read_existing_sql(list.len(), lock);
        let found: Vec<(String, String, bool)> = conn.exec(sql, params(list)).await?;
        for (id, revision, isolate) in found {
            existing.insert(id, Existing { revision, isolate });
        }
    }
    Ok(existing)
}

fn params<V: Into<Value>>(values: impl IntoIterator<Item = V>) -> Params {
    Params::Positional(values.into_iter().map(Into::into).collect())
}

/// Bound values per instance row.
const INSTANCE_COLUMNS: usize = 17;

fn instance_bytes(w: &&PlannedWrite<'_>) -> usize {
    let r = w.record;
    128 + r.id.len()
        + r.host.len()
        + r.vpc_id.len()
        + r.protocol.len()
        + r.version.len()
        + r.logic_set.len()
        + r.region.len()
        + r.zone.len()
        + r.campus.len()
}

/// What an instance insert does with a row whose id is already stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnDuplicate {
    /// Updates it in place (ctime kept).
    Update,
    /// Fails the batch with [`StoreError::Raced`], to be tried again.
    Fail,
}

/// MySQL's "Duplicate entry for key" error.
const ER_DUP_ENTRY: u16 = 1062;

async fn write_instances(
    tx: &mut Transaction<'_>,
    writes: &[&PlannedWrite<'_>],
    on_duplicate: OnDuplicate,
    max_bytes: usize,
) -> Result<(), StoreError> {
    for chunk in statement_chunks(
        writes,
        INSTANCE_COLUMNS,
        MAX_PARAMS,
        max_bytes,
        instance_bytes,
    ) {
        let sql = insert_instances_sql(chunk.len(), on_duplicate);
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * INSTANCE_COLUMNS);
        for w in chunk {
            let r = w.record;
            values.extend([
                Value::from(&r.id),
                Value::from(w.service_id),
                Value::from(&r.vpc_id),
                Value::from(&r.host),
                Value::from(r.port),
                Value::from(&r.protocol),
                Value::from(&r.version),
                Value::from(r.healthy),
                Value::from(w.isolate),
                Value::from(r.weight),
                Value::from(r.enable_health_check),
                Value::from(&r.logic_set),
                Value::from(&r.region),
                Value::from(&r.zone),
                Value::from(&r.campus),
                Value::from(r.priority),
                Value::from(&w.revision),
            ]);
        }
        debug_assert_eq!(values.len(), chunk.len() * INSTANCE_COLUMNS);
        match tx.exec_drop(sql, Params::Positional(values)).await {
            Err(mysql_async::Error::Server(err))
                if err.code == ER_DUP_ENTRY && on_duplicate == OnDuplicate::Fail =>
            {
                return Err(StoreError::Raced);
            }
            done => done?,
        }
    }
    Ok(())
}

async fn upsert_health_checks(
    tx: &mut Transaction<'_>,
    writes: &[PlannedWrite<'_>],
) -> Result<(), StoreError> {
    let checked: Vec<(&str, u32)> = writes
        .iter()
        .filter_map(|w| {
            w.record
                .health_check_ttl
                .map(|ttl| (w.record.id.as_str(), ttl))
        })
        .collect();
    for chunk in power_of_two_runs(&checked, MAX_PARAMS / 2) {
        let sql = upsert_health_checks_sql(chunk.len());
        let values = chunk
            .iter()
            .flat_map(|(id, ttl)| [Value::from(*id), Value::from(*ttl)])
            .collect();
        tx.exec_drop(sql, Params::Positional(values)).await?;
    }
    Ok(())
}

async fn insert_metadata(
    tx: &mut Transaction<'_>,
    writes: &[PlannedWrite<'_>],
    max_bytes: usize,
) -> Result<(), StoreError> {
    let entries: Vec<(&str, &str, &str)> = writes
        .iter()
        .flat_map(|w| {
            w.record
                .metadata
                .iter()
                .map(move |(k, v)| (w.record.id.as_str(), k.as_str(), v.as_str()))
        })
        .collect();
    let bytes = |(id, k, v): &(&str, &str, &str)| 64 + id.len() + k.len() + v.len();
    for chunk in statement_chunks(&entries, 3, MAX_PARAMS, max_bytes, bytes) {
        let sql = insert_metadata_sql(chunk.len());
        let values = chunk
            .iter()
            .flat_map(|(id, k, v)| [Value::from(*id), Value::from(*k), Value::from(*v)])
            .collect();
        tx.exec_drop(sql, Params::Positional(values)).await?;
    }
    Ok(())
}

/// `table` is one of this module's table names, never request data.
async fn delete_where_id_in(
    tx: &mut Transaction<'_>,
    table: &str,
    ids: &[&str],
) -> Result<(), StoreError> {
    for list in padded_lists(ids, MAX_PARAMS) {
        let sql = format!(
            "DELETE FROM {table} WHERE id IN ({})",
            list_placeholders(list.len())
        );
        tx.exec_drop(sql, params(list)).await?;
    }
    Ok(())
}

async fn deregister_in(
    tx: &mut Transaction<'_>,
    ids: &[String],
) -> Result<Vec<DeregisterOutcome>, StoreError> {
    let mut sorted: Vec<&str> = ids.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let mut present = HashSet::new();
    for list in padded_lists(&sorted, MAX_PARAMS) {
        let sql = format!(
            "SELECT id FROM instance WHERE id IN ({}) ORDER BY id FOR UPDATE",
            list_placeholders(list.len())
        );
        let found: Vec<String> = tx.exec(sql, params(list)).await?;
        present.extend(found);
    }
    delete_where_id_in(tx, "instance_metadata", &sorted).await?;
    delete_where_id_in(tx, "health_check", &sorted).await?;
    delete_where_id_in(tx, "instance", &sorted).await?;
    Ok(plan::deregister_outcomes(ids, &present))
}

async fn read_instance(
    tx: &mut Transaction<'_>,
    id: &str,
) -> Result<Option<StoredInstance>, StoreError> {
    let row: Option<mysql_async::Row> = tx
        .exec_first(
            "SELECT i.id, s.namespace, s.name, i.vpc_id, i.host, i.port, i.protocol, i.version,
                    i.priority, i.weight, i.health_status, i.isolate, i.enable_health_check,
                    h.ttl, i.logic_set, i.cmdb_region, i.cmdb_zone, i.cmdb_idc,
                    i.service_id, i.revision, CAST(i.ctime AS CHAR), CAST(i.mtime AS CHAR)
             FROM instance i
             JOIN service s ON s.id = i.service_id
             LEFT JOIN health_check h ON h.id = i.id
             WHERE i.id = ?",
            (id,),
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let get = |i: usize| {
        row.get_opt::<Value, usize>(i)
            .and_then(Result::ok)
            .unwrap_or(Value::NULL)
    };
    let text = |i: usize| mysql_async::from_value_opt::<String>(get(i)).unwrap_or_default();
    let number = |i: usize| mysql_async::from_value_opt::<u32>(get(i)).unwrap_or_default();
    let flag = |i: usize| number(i) != 0;
    let isolate = flag(11);
    let mut stored = StoredInstance {
        record: InstanceRecord {
            id: text(0),
            namespace: text(1),
            service: text(2),
            vpc_id: text(3),
            host: text(4),
            port: number(5),
            protocol: text(6),
            version: text(7),
            priority: number(8),
            weight: number(9),
            healthy: flag(10),
            isolate: Some(isolate),
            enable_health_check: flag(12),
            health_check_ttl: mysql_async::from_value_opt::<Option<u32>>(get(13))
                .unwrap_or_default(),
            logic_set: text(14),
            region: text(15),
            zone: text(16),
            campus: text(17),
            metadata: Vec::new(),
        },
        isolate,
        service_id: text(18),
        revision: text(19),
        ctime: text(20),
        mtime: text(21),
    };
    stored.record.metadata = tx
        .exec(
            "SELECT mkey, mvalue FROM instance_metadata WHERE id = ? ORDER BY mkey",
            (id,),
        )
        .await?;
    Ok(Some(stored))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store on a fresh database `<base>_<suffix>` of `BATCHREG_TEST_MYSQL_URL`; `None`
    /// (after saying so) when it is unset, unless `BATCHREG_TEST_REQUIRE_MYSQL` is set.
    fn fresh_store(suffix: &str) -> Option<MysqlStore> {
        let Ok(base_url) = std::env::var("BATCHREG_TEST_MYSQL_URL") else {
            assert!(
                std::env::var_os("BATCHREG_TEST_REQUIRE_MYSQL").is_none(),
                "BATCHREG_TEST_MYSQL_URL is not set but BATCHREG_TEST_REQUIRE_MYSQL is"
            );
            eprintln!("SKIPPED: BATCHREG_TEST_MYSQL_URL is not set; '{suffix}' did not run");
            return None;
        };
        let (server, base) = base_url.rsplit_once('/').expect("URL ends in /database");
        let name = format!("{}_{suffix}", base.split('?').next().unwrap());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut admin = Conn::new(Opts::from_url(&base_url).unwrap()).await.unwrap();
            admin
                .query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
                .await
                .unwrap();
            admin
                .query_drop(format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
                .await
                .unwrap();
            admin.disconnect().await.unwrap();
        });
        Some(MysqlStore::open(&format!("{server}/{name}"), None).unwrap())
    }

    fn row(host: &str) -> InstanceRecord {
        InstanceRecord {
            id: format!("unit-{host}"),
            namespace: "unit".to_owned(),
            service: "svc".to_owned(),
            vpc_id: String::new(),
            host: host.to_owned(),
            port: 80,
            protocol: String::new(),
            version: String::new(),
            priority: 0,
            weight: 100,
            healthy: true,
            isolate: None,
            enable_health_check: false,
            health_check_ttl: None,
            logic_set: String::new(),
            region: String::new(),
            zone: String::new(),
            campus: String::new(),
            metadata: vec![],
        }
    }

    /// A writer of `store`, as its concrete type, so tests can use its connection.
    fn writer_of(store: &MysqlStore) -> MysqlWriter {
        MysqlWriter {
            shared: Arc::clone(&store.shared),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            conn: None,
            prepares_registrations: false,
            expect_unchanged: true,
        }
    }

    /// Statements this writer's session has prepared so far.
    fn prepared_so_far(writer: &mut MysqlWriter) -> u64 {
        writer
            .on_connection(async |conn| {
                let row: Option<(String, u64)> = conn
                    .query_first("SHOW SESSION STATUS LIKE 'Com_stmt_prepare'")
                    .await?;
                Ok(row.expect("the counter exists").1)
            })
            .unwrap()
    }

    /// `count` new instances of one service, each with three metadata entries and a
    /// health check, as in a storm.
    fn storm_rows(prefix: &str, count: usize) -> Vec<InstanceRecord> {
        (0..count)
            .map(|i| {
                let mut r = row(&format!("{prefix}.{i}"));
                r.metadata = (0..3).map(|k| (format!("k{k}"), format!("v{i}"))).collect();
                r.enable_health_check = true;
                r.health_check_ttl = Some(5);
                r
            })
            .collect()
    }

    #[test]
    fn a_registering_worker_prepares_a_storms_statements_when_it_connects() {
        let Some(store) = fresh_store("unit_prepared") else {
            return;
        };
        let options = RegisterOptions {
            create_services: true,
        };
        let mut warm = writer_of(&store);
        warm.prepare_for_registrations().unwrap();
        // The first batch creates the service: those inserts are not prepared ahead.
        warm.register(&[row("10.0.0.1")], options).unwrap();
        let before = prepared_so_far(&mut warm);
        let batch = storm_rows("10.1", 128);
        let outcomes = warm.register(&batch, options).unwrap();
        assert_eq!(outcomes, vec![RegisterOutcome::Created; 128]);
        assert_eq!(
            prepared_so_far(&mut warm),
            before,
            "nothing left to prepare"
        );

        // The same batch on a writer that did not prepare: the count above can move.
        let mut cold = writer_of(&store);
        let before = prepared_so_far(&mut cold);
        let outcomes = cold.register(&storm_rows("10.2", 128), options).unwrap();
        assert_eq!(outcomes, vec![RegisterOutcome::Created; 128]);
        assert!(prepared_so_far(&mut cold) >= before + 5);
    }

    /// The session's isolation level, under its MySQL 8 or its MariaDB name.
    async fn isolation(conn: &mut Conn) -> Result<Option<String>, StoreError> {
        match conn
            .query_first("SELECT @@SESSION.transaction_isolation")
            .await
        {
            Ok(level) => Ok(level),
            Err(_) => Ok(conn.query_first("SELECT @@SESSION.tx_isolation").await?),
        }
    }

    #[test]
    fn a_worker_keeps_its_read_committed_connection_through_server_errors() {
        let Some(store) = fresh_store("unit_worker_connection") else {
            return;
        };
        let mut writer = writer_of(&store);
        writer.expect_unchanged = false;
        let options = RegisterOptions {
            create_services: true,
        };
        assert_eq!(
            writer.register(&[row("10.0.0.1")], options).unwrap(),
            [RegisterOutcome::Created]
        );
        let session = async |conn: &mut Conn| {
            let id: Option<u64> = conn.query_first("SELECT CONNECTION_ID()").await?;
            Ok((id, isolation(conn).await?))
        };
        let (first_id, level) = writer.on_connection(session).unwrap();
        assert_eq!(level.as_deref(), Some("READ-COMMITTED"));

        // Longer than the host column: the server refuses the batch.
        let error = writer
            .register(&[row(&"h".repeat(200))], options)
            .unwrap_err();
        assert!(
            matches!(error, StoreError::Mysql(mysql_async::Error::Server(_))),
            "{error:?}"
        );
        assert_eq!(
            writer.register(&[row("10.0.0.2")], options).unwrap(),
            [RegisterOutcome::Created]
        );
        let (id_after, level_after) = writer.on_connection(session).unwrap();
        assert_eq!(
            id_after, first_id,
            "the same connection, rolled back and reused"
        );
        assert_eq!(level_after.as_deref(), Some("READ-COMMITTED"));
    }

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
