//! The embedded store: one SQLite file in WAL mode, one writer connection shared by the
//! store workers (SQLite has one writer), one immediate transaction per batch.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, ToSql, Transaction, TransactionBehavior};

use super::model::{self, DeregisterOutcome, InstanceRecord, RegisterOptions, RegisterOutcome};
use super::plan::{self, Existing, PlannedWrite, ServiceKey};
use super::sql::{list_placeholders, row_placeholders, rows_per_statement};
use super::{Store, StoreError, StoreWriter, StoredInstance, migrate};

/// Bound parameters per statement: below SQLite's default limit of 32,766.
const MAX_PARAMS: usize = 32_000;
const NOW_SQL: &str = "SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')";

/// How SQLite syncs commits: `Full` survives power loss, `Normal` (in WAL mode) survives a
/// crash of the process but may lose the last commits on power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    #[default]
    Full,
    Normal,
}

/// The SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    /// Opened on first use, for reads that must not wait for the writer.
    reader: Mutex<Option<Connection>>,
    writer: Arc<Mutex<Connection>>,
    /// Shared with the writers: checkpoints go on while any of them is alive.
    checkpointer: Arc<Checkpointer>,
}

/// Copies the WAL back into the database from a thread of its own, so the writer's
/// commits never pay for a checkpoint (SQLite's automatic one runs inside a commit).
struct Checkpointer {
    stop: crossbeam_channel::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How often the checkpointer runs, and the WAL length (in frames of one page) past which
/// it holds the writer back for a moment to finish the checkpoint, so the WAL restarts
/// from its beginning instead of growing through a long storm.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
const WAL_RESTART_FRAMES: i64 = 32_768;

impl Checkpointer {
    fn start(path: &Path, writer: Arc<Mutex<Connection>>) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".to_owned())
            .spawn(move || {
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_EVERY)
                {
                    if let Err(err) = checkpoint(&conn, &writer) {
                        tracing::warn!(error = %err, "sqlite checkpoint failed");
                    }
                }
            })
            .map_err(|source| StoreError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }
}

/// Passive checkpoints, which never block the writer. When the WAL is long, they repeat
/// until a pass finds little new to copy, and a last one runs with the writer held: it
/// completes, so the next commit starts the WAL over. The writer waits only for the copy
/// of what was committed during the previous pass.
fn checkpoint(conn: &Connection, writer: &Mutex<Connection>) -> Result<(), StoreError> {
    const PASSIVE: &str = "PRAGMA wal_checkpoint(PASSIVE)";
    const CATCH_UP_PASSES: usize = 8;
    const HELD_FRAMES: i64 = 512;
    let passive = || -> Result<(i64, i64), StoreError> {
        Ok(conn.query_row(PASSIVE, [], |r| Ok((r.get(1)?, r.get(2)?)))?)
    };
    let (wal_frames, mut copied) = passive()?;
    if wal_frames <= WAL_RESTART_FRAMES {
        return Ok(());
    }
    for _ in 0..CATCH_UP_PASSES {
        let (_, now_copied) = passive()?;
        let pass = now_copied - copied;
        copied = now_copied;
        if pass <= HELD_FRAMES {
            break;
        }
    }
    let _held = writer.lock().map_err(|_| StoreError::Poisoned)?;
    let started = std::time::Instant::now();
    passive()?;
    tracing::debug!(wal_frames, held = ?started.elapsed(), "WAL checkpointed to its end");
    Ok(())
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl SqliteStore {
    /// Opens (creating it and its folder if needed) the database file and applies the
    /// migrations not yet recorded.
    pub fn open(path: impl AsRef<Path>, synchronous: Synchronous) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })?;
        }
        let mut conn = Connection::open(&path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let sync = match synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync)?;
        conn.pragma_update(None, "cache_size", -65_536)?;
        // Checkpoints run on the checkpointer's connection, not inside the writer's commits.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        // A WAL file that grew in a storm is cut back to this size when it restarts.
        conn.pragma_update(None, "journal_size_limit", 134_217_728)?;
        // Statement journals of multi-row upserts stay in memory instead of a temp file.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.pragma_update(None, "mmap_size", 268_435_456)?;
        conn.set_prepared_statement_cache_capacity(512);
        migrate::apply_sqlite(&mut conn)?;
        let writer = Arc::new(Mutex::new(conn));
        let checkpointer = Arc::new(Checkpointer::start(&path, Arc::clone(&writer))?);
        Ok(SqliteStore {
            path,
            reader: Mutex::new(None),
            writer,
            checkpointer,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Store for SqliteStore {
    fn writer(&self) -> Result<Box<dyn StoreWriter>, StoreError> {
        Ok(Box::new(SqliteWriter {
            conn: Arc::clone(&self.writer),
            _checkpointer: Arc::clone(&self.checkpointer),
        }))
    }

    fn concurrency(&self) -> usize {
        // Workers share the one writer connection: more than one only overlaps the
        // coalescing and answering of one batch with the write of another.
        1
    }

    fn engine(&self) -> &'static str {
        "sqlite"
    }

    fn namespace_counts(&self) -> Result<Vec<super::NamespaceCount>, StoreError> {
        let mut reader = self.reader.lock().map_err(|_| StoreError::Poisoned)?;
        if reader.is_none() {
            let conn = Connection::open_with_flags(
                &self.path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            *reader = Some(conn);
        }
        let conn = reader.as_ref().expect("opened above");
        let mut stmt = conn.prepare_cached(super::NAMESPACE_COUNTS_SQL)?;
        let counts = stmt
            .query_map([], |r| {
                Ok(super::NamespaceCount {
                    namespace: r.get(0)?,
                    services: r.get::<_, i64>(1)?.max(0) as u64,
                    instances: r.get::<_, i64>(2)?.max(0) as u64,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(counts)
    }
}

struct SqliteWriter {
    conn: Arc<Mutex<Connection>>,
    _checkpointer: Arc<Checkpointer>,
}

impl SqliteWriter {
    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        f(&mut conn)
    }
}

impl StoreWriter for SqliteWriter {
    fn register(
        &mut self,
        rows: &[InstanceRecord],
        options: RegisterOptions,
    ) -> Result<Vec<RegisterOutcome>, StoreError> {
        self.with_conn(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let outcomes = register_in(&tx, rows, options)?;
            tx.commit()?;
            Ok(outcomes)
        })
    }

    fn deregister(&mut self, ids: &[String]) -> Result<Vec<DeregisterOutcome>, StoreError> {
        self.with_conn(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let outcomes = deregister_in(&tx, ids)?;
            tx.commit()?;
            Ok(outcomes)
        })
    }

    fn instance(&mut self, id: &str) -> Result<Option<StoredInstance>, StoreError> {
        self.with_conn(|conn| read_instance(conn, id))
    }
}

fn register_in(
    tx: &Transaction<'_>,
    rows: &[InstanceRecord],
    options: RegisterOptions,
) -> Result<Vec<RegisterOutcome>, StoreError> {
    let now: String = tx.query_row(NOW_SQL, [], |r| r.get(0))?;
    let service_ids = resolve_services(tx, &plan::distinct_services(rows), options, &now)?;
    let existing = existing_instances(tx, rows)?;
    let (outcomes, writes) = plan::plan_register(rows, &service_ids, &existing);
    if writes.is_empty() {
        return Ok(outcomes);
    }
    upsert_instances(tx, &writes, &now)?;
    let replaced: Vec<&str> = writes
        .iter()
        .filter(|w| w.replaced)
        .map(|w| w.record.id.as_str())
        .collect();
    delete_where_id_in(tx, "health_check", &replaced)?;
    delete_where_id_in(tx, "instance_metadata", &replaced)?;
    insert_health_checks(tx, &writes)?;
    insert_metadata(tx, &writes, &now)?;
    Ok(outcomes)
}

/// Finds each service's id, creating namespace and service when allowed. A service
/// missing and not created is absent from the map.
fn resolve_services(
    tx: &Transaction<'_>,
    services: &[ServiceKey],
    options: RegisterOptions,
    now: &str,
) -> Result<HashMap<ServiceKey, String>, StoreError> {
    let mut ids = HashMap::with_capacity(services.len());
    let mut select =
        tx.prepare_cached("SELECT id FROM service WHERE namespace = ?1 AND name = ?2")?;
    for key in services {
        let (namespace, service) = key;
        let mut found: Option<String> = select
            .query_row((namespace, service), |r| r.get(0))
            .optional()?;
        if found.is_none() && options.create_services {
            tx.prepare_cached(
                "INSERT INTO namespace (name, ctime, mtime) VALUES (?1, ?2, ?2)
                 ON CONFLICT (name) DO NOTHING",
            )?
            .execute((namespace, now))?;
            tx.prepare_cached(
                "INSERT INTO service (id, name, namespace, ctime, mtime) VALUES (?1, ?2, ?3, ?4, ?4)
                 ON CONFLICT DO NOTHING",
            )?
            .execute((model::service_id(namespace, service), service, namespace, now))?;
            found = select
                .query_row((namespace, service), |r| r.get(0))
                .optional()?;
        }
        if let Some(id) = found {
            ids.insert(key.clone(), id);
        }
    }
    Ok(ids)
}

fn existing_instances(
    tx: &Transaction<'_>,
    rows: &[InstanceRecord],
) -> Result<HashMap<String, Existing>, StoreError> {
    let mut existing = HashMap::new();
    for chunk in rows.chunks(MAX_PARAMS) {
        let sql = format!(
            "SELECT id, revision, isolate FROM instance WHERE id IN ({})",
            list_placeholders(chunk.len())
        );
        let mut stmt = tx.prepare_cached(&sql)?;
        let ids = chunk.iter().map(|r| &r.id as &dyn ToSql);
        let mut found = stmt.query(rusqlite::params_from_iter(ids))?;
        while let Some(row) = found.next()? {
            existing.insert(
                row.get(0)?,
                Existing {
                    revision: row.get(1)?,
                    isolate: row.get(2)?,
                },
            );
        }
    }
    Ok(existing)
}

const INSTANCE_COLUMNS: usize = 19;

fn upsert_instances(
    tx: &Transaction<'_>,
    writes: &[PlannedWrite<'_>],
    now: &str,
) -> Result<(), StoreError> {
    let row = "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,0,?,?)";
    for chunk in writes.chunks(rows_per_statement(MAX_PARAMS, INSTANCE_COLUMNS)) {
        let sql = format!(
            "INSERT INTO instance (id, service_id, vpc_id, host, port, protocol, version,
                 health_status, isolate, weight, enable_health_check, logic_set, cmdb_region,
                 cmdb_zone, cmdb_idc, priority, revision, flag, ctime, mtime)
             VALUES {}
             ON CONFLICT (id) DO UPDATE SET
                 service_id = excluded.service_id, vpc_id = excluded.vpc_id,
                 host = excluded.host, port = excluded.port, protocol = excluded.protocol,
                 version = excluded.version, health_status = excluded.health_status,
                 isolate = excluded.isolate, weight = excluded.weight,
                 enable_health_check = excluded.enable_health_check,
                 logic_set = excluded.logic_set, cmdb_region = excluded.cmdb_region,
                 cmdb_zone = excluded.cmdb_zone, cmdb_idc = excluded.cmdb_idc,
                 priority = excluded.priority, revision = excluded.revision,
                 flag = 0, mtime = excluded.mtime",
            row_placeholders(chunk.len(), row)
        );
        let mut params: Vec<&dyn ToSql> = Vec::with_capacity(chunk.len() * INSTANCE_COLUMNS);
        for w in chunk {
            let r = w.record;
            params.extend_from_slice(&[
                &r.id as &dyn ToSql,
                &w.service_id,
                &r.vpc_id,
                &r.host,
                &r.port,
                &r.protocol,
                &r.version,
                &r.healthy,
                &w.isolate,
                &r.weight,
                &r.enable_health_check,
                &r.logic_set,
                &r.region,
                &r.zone,
                &r.campus,
                &r.priority,
                &w.revision,
                &now,
                &now,
            ]);
        }
        debug_assert_eq!(params.len(), chunk.len() * INSTANCE_COLUMNS);
        tx.prepare_cached(&sql)?
            .execute(rusqlite::params_from_iter(params))?;
    }
    Ok(())
}

fn insert_health_checks(
    tx: &Transaction<'_>,
    writes: &[PlannedWrite<'_>],
) -> Result<(), StoreError> {
    let checked: Vec<(&String, u32)> = writes
        .iter()
        .filter_map(|w| w.record.health_check_ttl.map(|ttl| (&w.record.id, ttl)))
        .collect();
    for chunk in checked.chunks(rows_per_statement(MAX_PARAMS, 2)) {
        let sql = format!(
            "INSERT INTO health_check (id, type, ttl) VALUES {}
             ON CONFLICT (id) DO UPDATE SET type = excluded.type, ttl = excluded.ttl",
            row_placeholders(chunk.len(), "(?,1,?)")
        );
        let mut params: Vec<&dyn ToSql> = Vec::with_capacity(chunk.len() * 2);
        for (id, ttl) in chunk {
            params.push(*id);
            params.push(ttl);
        }
        tx.prepare_cached(&sql)?
            .execute(rusqlite::params_from_iter(params))?;
    }
    Ok(())
}

fn insert_metadata(
    tx: &Transaction<'_>,
    writes: &[PlannedWrite<'_>],
    now: &str,
) -> Result<(), StoreError> {
    let entries: Vec<(&String, &String, &String)> = writes
        .iter()
        .flat_map(|w| {
            w.record
                .metadata
                .iter()
                .map(move |(k, v)| (&w.record.id, k, v))
        })
        .collect();
    for chunk in entries.chunks(rows_per_statement(MAX_PARAMS, 5)) {
        let sql = format!(
            "INSERT INTO instance_metadata (id, mkey, mvalue, ctime, mtime) VALUES {}",
            row_placeholders(chunk.len(), "(?,?,?,?,?)")
        );
        let mut params: Vec<&dyn ToSql> = Vec::with_capacity(chunk.len() * 5);
        for (id, key, value) in chunk {
            params.extend_from_slice(&[*id as &dyn ToSql, *key, *value, &now, &now]);
        }
        tx.prepare_cached(&sql)?
            .execute(rusqlite::params_from_iter(params))?;
    }
    Ok(())
}

/// `table` is one of this module's table names, never request data.
fn delete_where_id_in(
    tx: &Transaction<'_>,
    table: &str,
    ids: &[&str],
) -> Result<usize, StoreError> {
    let mut deleted = 0;
    for chunk in ids.chunks(MAX_PARAMS) {
        let sql = format!(
            "DELETE FROM {table} WHERE id IN ({})",
            list_placeholders(chunk.len())
        );
        deleted += tx
            .prepare_cached(&sql)?
            .execute(rusqlite::params_from_iter(chunk))?;
    }
    Ok(deleted)
}

fn deregister_in(
    tx: &Transaction<'_>,
    ids: &[String],
) -> Result<Vec<DeregisterOutcome>, StoreError> {
    let mut sorted: Vec<&str> = ids.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let mut present = std::collections::HashSet::new();
    for chunk in sorted.chunks(MAX_PARAMS) {
        let sql = format!(
            "SELECT id FROM instance WHERE id IN ({})",
            list_placeholders(chunk.len())
        );
        let mut stmt = tx.prepare_cached(&sql)?;
        let mut found = stmt.query(rusqlite::params_from_iter(chunk))?;
        while let Some(row) = found.next()? {
            present.insert(row.get::<_, String>(0)?);
        }
    }
    delete_where_id_in(tx, "instance_metadata", &sorted)?;
    delete_where_id_in(tx, "health_check", &sorted)?;
    delete_where_id_in(tx, "instance", &sorted)?;
    Ok(plan::deregister_outcomes(ids, &present))
}

fn read_instance(conn: &Connection, id: &str) -> Result<Option<StoredInstance>, StoreError> {
    let found = conn
        .query_row(
            "SELECT i.id, s.namespace, s.name, i.vpc_id, i.host, i.port, i.protocol, i.version,
                    i.priority, i.weight, i.health_status, i.isolate, i.enable_health_check,
                    h.ttl, i.logic_set, i.cmdb_region, i.cmdb_zone, i.cmdb_idc,
                    i.service_id, i.revision, i.ctime, i.mtime
             FROM instance i
             JOIN service s ON s.id = i.service_id
             LEFT JOIN health_check h ON h.id = i.id
             WHERE i.id = ?1",
            [id],
            |r| {
                Ok(StoredInstance {
                    record: InstanceRecord {
                        id: r.get(0)?,
                        namespace: r.get(1)?,
                        service: r.get(2)?,
                        vpc_id: r.get(3)?,
                        host: r.get(4)?,
                        port: r.get(5)?,
                        protocol: r.get(6)?,
                        version: r.get(7)?,
                        priority: r.get(8)?,
                        weight: r.get(9)?,
                        healthy: r.get(10)?,
                        isolate: Some(r.get(11)?),
                        enable_health_check: r.get(12)?,
                        health_check_ttl: r.get(13)?,
                        logic_set: r.get(14)?,
                        region: r.get(15)?,
                        zone: r.get(16)?,
                        campus: r.get(17)?,
                        metadata: Vec::new(),
                    },
                    isolate: r.get(11)?,
                    service_id: r.get(18)?,
                    revision: r.get(19)?,
                    ctime: r.get(20)?,
                    mtime: r.get(21)?,
                })
            },
        )
        .optional()?;
    let Some(mut stored) = found else {
        return Ok(None);
    };
    let mut stmt = conn
        .prepare_cached("SELECT mkey, mvalue FROM instance_metadata WHERE id = ?1 ORDER BY mkey")?;
    stored.record.metadata = stmt
        .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(Some(stored))
}
