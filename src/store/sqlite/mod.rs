//! The embedded store: one SQLite file in WAL mode, locked against a second process, one
//! writer connection shared by the store workers (SQLite has one writer), one immediate
//! transaction per batch, and a read-only connection for reads that must not wait for
//! the writer.

mod checkpoint;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::types::ToSqlOutput;
use rusqlite::{Connection, ToSql, Transaction, TransactionBehavior};

use super::clock::Clock;
use super::model::{self, DeregisterOutcome, InstanceRecord, RegisterOptions, Registered};
use super::plan::{self, Existing, ServiceIds, ServiceKey};
use super::schema::{self, Cell, Dialect, OnDuplicate, ResultRow, Shape, WriterId};
use super::sql;
use super::statements::{self, Limits, Statement};
use super::{
    ChangedRow, HealthChange, HealthSet, Store, StoreError, StoreWriter, StoredInstance,
    StoredService, migrate,
};
use checkpoint::Checkpointer;

/// Bound parameters per statement: below SQLite's default limit of 32,766. A statement's
/// size in bytes is not limited.
const LIMITS: Limits = Limits {
    max_params: 32_000,
    max_bytes: usize::MAX,
};

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
    /// Held (locked) for as long as the store is open: one process at a time.
    _lock: File,
    /// This process's clock: it is the database's.
    clock: Arc<Clock>,
    /// What this store marks the instance rows it writes with.
    writer_id: WriterId,
    /// Opened on first use, for reads that must not wait for the writer.
    reader: Mutex<Option<Connection>>,
    writer: Arc<Mutex<Connection>>,
    /// Shared with the writers: checkpoints go on while any of them is alive.
    checkpointer: Arc<Checkpointer>,
}

impl SqliteStore {
    /// Opens (creating it and its folder if needed) the database file and applies the
    /// migrations not yet recorded. Fails when another process has it open: the file
    /// `<path>.lock` beside it is locked while a store is open.
    pub fn open(path: impl AsRef<Path>, synchronous: Synchronous) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let open_error = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(open_error)?;
        }
        let lock_path = path.with_extension("db.lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(open_error)?;
        if let Err(error) = lock.try_lock() {
            return Err(match error {
                std::fs::TryLockError::WouldBlock => StoreError::Locked { path: lock_path },
                std::fs::TryLockError::Error(source) => open_error(source),
            });
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
            _lock: lock,
            clock: Arc::new(Clock::default()),
            writer_id: WriterId::random(),
            reader: Mutex::new(None),
            writer,
            checkpointer,
        })
    }

    /// Runs `read` on the read-only connection, opening it first if need be.
    fn with_reader<T>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut reader = self.reader.lock().map_err(|_| StoreError::Poisoned)?;
        if reader.is_none() {
            let conn = Connection::open_with_flags(
                &self.path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            *reader = Some(conn);
        }
        read(reader.as_ref().expect("opened above"))
    }
}

impl Store for SqliteStore {
    fn writer(&self) -> Result<Box<dyn StoreWriter>, StoreError> {
        Ok(Box::new(SqliteWriter {
            conn: Arc::clone(&self.writer),
            clock: Arc::clone(&self.clock),
            writer_id: self.writer_id,
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

    fn error_reasons(&self) -> &'static [&'static str] {
        &[
            "busy",
            "locked",
            "constraint",
            "sqlite",
            "poisoned",
            "bad_row",
        ]
    }

    fn single_writer(&self) -> bool {
        true
    }

    fn instances_page(&self, after: &str, limit: usize) -> Result<Vec<StoredInstance>, StoreError> {
        self.read_snapshot(|conn| read_page(conn, after, limit))
    }

    fn instances(&self, ids: &[String]) -> Result<Vec<StoredInstance>, StoreError> {
        self.read_snapshot(|conn| read_instances(conn, ids))
    }

    fn services(&self, since: Option<&str>) -> Result<Vec<StoredService>, StoreError> {
        self.with_reader(|conn| {
            let mut stmt =
                conn.prepare_cached(&schema::services(Dialect::Sqlite, since.is_some()))?;
            let mut rows = match since {
                Some(since) => stmt.query([since])?,
                None => stmt.query([])?,
            };
            let mut services = Vec::new();
            while let Some(row) = rows.next()? {
                services.push(schema::stored_service(&SqliteRow(row))?);
            }
            Ok(services)
        })
    }

    fn changed_between(
        &self,
        from: &str,
        until: Option<&str>,
        others_only: bool,
        each: &mut dyn FnMut(ChangedRow),
    ) -> Result<(), StoreError> {
        self.with_reader(|conn| {
            let sql = schema::changed_between(Dialect::Sqlite, until.is_some(), others_only);
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut bounds: Vec<Cell<'_>> =
                std::iter::once(from).chain(until).map(Cell::Text).collect();
            if others_only {
                bounds.push(Cell::Writer(self.writer_id));
            }
            let rows = stmt.query_map(rusqlite::params_from_iter(bounds), |r| {
                Ok(ChangedRow {
                    id: r.get(0)?,
                    revision: r.get(1)?,
                    deleted: r.get::<_, i64>(2)? != 0,
                    mtime: r.get(3)?,
                })
            })?;
            for row in rows {
                each(row?);
            }
            Ok(())
        })
    }

    fn now(&self) -> Result<String, StoreError> {
        Ok(self.clock.now())
    }

    fn clock(&self) -> Arc<Clock> {
        Arc::clone(&self.clock)
    }

    fn purge_deregistered(&self, before: &str, limit: usize) -> Result<usize, StoreError> {
        let conn = self.writer.lock().map_err(|_| StoreError::Poisoned)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(conn
            .prepare_cached(schema::purge_deleted(Dialect::Sqlite))?
            .execute((before, limit))?)
    }
}

impl SqliteStore {
    /// Runs `read` in one read transaction on the read-only connection: what it reads
    /// is of one moment.
    fn read_snapshot<T>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.with_reader(|conn| snapshot(conn, read))
    }
}

/// Runs `read` in one read transaction on `conn`.
fn snapshot<T>(
    conn: &Connection,
    read: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.execute_batch("BEGIN")?;
    let result = read(conn);
    let ended = conn.execute_batch("COMMIT");
    let result = result?;
    ended?;
    Ok(result)
}

/// Reads the rows of `stmt` as instances, then gives each its metadata from the rows of
/// `metadata`.
fn instances_with_metadata(
    mut rows: rusqlite::Rows<'_>,
    metadata: impl FnOnce(&[StoredInstance]) -> Result<Vec<(String, String, String)>, StoreError>,
) -> Result<Vec<StoredInstance>, StoreError> {
    let mut instances = Vec::new();
    while let Some(row) = rows.next()? {
        instances.push(schema::stored_instance(&SqliteRow(row))?);
    }
    if !instances.is_empty() {
        let entries = metadata(&instances)?;
        schema::attach_metadata(&mut instances, entries);
    }
    Ok(instances)
}

fn read_instances(conn: &Connection, ids: &[String]) -> Result<Vec<StoredInstance>, StoreError> {
    let mut sorted: Vec<&str> = ids.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut instances = Vec::new();
    for list in sql::padded_lists(&sorted, LIMITS.max_params) {
        let mut stmt =
            conn.prepare_cached(&schema::instances_where_id_in(Dialect::Sqlite, list.len()))?;
        let rows = stmt.query(rusqlite::params_from_iter(&list))?;
        instances.extend(instances_with_metadata(rows, |_| {
            let mut stmt = conn.prepare_cached(&schema::metadata_where_id_in(list.len()))?;
            let entries = stmt
                .query_map(rusqlite::params_from_iter(&list), |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(entries)
        })?);
    }
    Ok(instances)
}

fn read_page(
    conn: &Connection,
    after: &str,
    limit: usize,
) -> Result<Vec<StoredInstance>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(&schema::instances_page(Dialect::Sqlite))?;
    let rows = stmt.query((after, limit))?;
    instances_with_metadata(rows, |page| {
        let (first, last) = (&page[0].record.id, &page[page.len() - 1].record.id);
        let mut stmt = conn.prepare_cached(schema::METADATA_BETWEEN)?;
        let entries = stmt
            .query_map((first, last), |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(entries)
    })
}

/// A rusqlite row, read by position.
struct SqliteRow<'a>(&'a rusqlite::Row<'a>);

impl ResultRow for SqliteRow<'_> {
    fn text(&self, column: usize) -> Result<String, StoreError> {
        Ok(self.0.get(column)?)
    }

    fn number(&self, column: usize) -> Result<u32, StoreError> {
        Ok(self.0.get(column)?)
    }

    fn optional_number(&self, column: usize) -> Result<Option<u32>, StoreError> {
        Ok(self.0.get(column)?)
    }
}

impl ToSql for Cell<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match *self {
            Cell::Text(text) => ToSqlOutput::from(text),
            Cell::Number(number) => ToSqlOutput::from(number),
            Cell::Flag(flag) => ToSqlOutput::from(flag),
            Cell::Writer(WriterId(id)) => ToSqlOutput::from(id),
        })
    }
}

struct SqliteWriter {
    conn: Arc<Mutex<Connection>>,
    clock: Arc<Clock>,
    writer_id: WriterId,
    _checkpointer: Arc<Checkpointer>,
}

impl SqliteWriter {
    /// Runs `work` in one immediate transaction on the writer connection.
    fn transaction<T>(
        &self,
        work: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let result = work(&tx)?;
        tx.commit()?;
        Ok(result)
    }
}

impl StoreWriter for SqliteWriter {
    fn register(
        &mut self,
        rows: &[InstanceRecord],
        options: RegisterOptions,
    ) -> Result<Vec<Registered>, StoreError> {
        let now = self.clock.now();
        let writer = self.writer_id;
        self.transaction(|tx| register_in(tx, rows, options, &now, writer))
    }

    fn deregister(&mut self, ids: &[String]) -> Result<Vec<DeregisterOutcome>, StoreError> {
        let now = self.clock.now();
        let writer = self.writer_id;
        self.transaction(|tx| deregister_in(tx, ids, &now, writer))
    }

    fn set_health(
        &mut self,
        changes: &[HealthChange],
    ) -> Result<Vec<Option<HealthSet>>, StoreError> {
        let now = self.clock.now();
        self.transaction(|tx| {
            let mut ids: Vec<&str> = changes.iter().map(|c| c.record.id.as_str()).collect();
            ids.sort_unstable();
            let lists = statements::id_lists(LIMITS, &ids, |ids| Shape::ReadPresent {
                ids,
                locked: false,
            });
            let present: HashSet<String> = query(tx, lists, |r| r.get(0))?.into_iter().collect();
            let revisions = plan::health_revisions(changes, &present);
            for healthy in [true, false] {
                let rows = plan::health_rows(changes, &revisions, healthy);
                let writes = statements::set_health(LIMITS, healthy, &rows, &now, self.writer_id);
                execute(tx, writes)?;
            }
            Ok(revisions
                .into_iter()
                .map(|revision| {
                    revision.map(|revision| HealthSet {
                        revision,
                        mtime: now.clone(),
                    })
                })
                .collect())
        })
    }
}

fn execute(tx: &Transaction<'_>, statements: Vec<Statement<'_>>) -> Result<(), StoreError> {
    for statement in statements {
        tx.prepare_cached(&statement.shape.sql(Dialect::Sqlite))?
            .execute(rusqlite::params_from_iter(statement.cells))?;
    }
    Ok(())
}

/// Runs `statements` and collects each row of their results with `read`.
fn query<T>(
    tx: &Transaction<'_>,
    statements: Vec<Statement<'_>>,
    mut read: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, StoreError> {
    let mut found = Vec::new();
    for statement in statements {
        let mut stmt = tx.prepare_cached(&statement.shape.sql(Dialect::Sqlite))?;
        let mut rows = stmt.query(rusqlite::params_from_iter(statement.cells))?;
        while let Some(row) = rows.next()? {
            found.push(read(row)?);
        }
    }
    Ok(found)
}

/// Under the immediate transaction this writer is the only one, so every row it did not
/// find is new and inserted, and every row it found is updated in place.
fn register_in(
    tx: &Transaction<'_>,
    rows: &[InstanceRecord],
    options: RegisterOptions,
    now: &str,
    writer: WriterId,
) -> Result<Vec<Registered>, StoreError> {
    let service_ids = resolve_services(tx, &plan::distinct_services(rows), options)?;
    let existing = read_existing(tx, rows)?;
    let (results, writes) = plan::plan_register(rows, &service_ids, &existing, now);
    if writes.is_empty() {
        return Ok(results);
    }
    let (added, replaced): (Vec<_>, Vec<_>) = writes.iter().partition(|w| !w.replaced);
    execute(
        tx,
        statements::write_instances(LIMITS, &replaced, OnDuplicate::Update, writer),
    )?;
    execute(
        tx,
        statements::write_instances(LIMITS, &added, OnDuplicate::Fail, writer),
    )?;
    execute(tx, statements::replace_children(LIMITS, &writes))?;
    Ok(results)
}

/// Finds each service's id, creating namespace and service when allowed. A service
/// missing and not created has no id.
fn resolve_services(
    tx: &Transaction<'_>,
    services: &[ServiceKey<'_>],
    options: RegisterOptions,
) -> Result<ServiceIds, StoreError> {
    let select = |services: &[ServiceKey<'_>]| -> Result<ServiceIds, StoreError> {
        let found = query(tx, statements::service_lists(LIMITS, services), |r| {
            Ok(schema::stored_service(&SqliteRow(r)))
        })?;
        let mut ids = ServiceIds::default();
        for service in found {
            ids.insert(service?);
        }
        Ok(ids)
    };
    let mut ids = select(services)?;
    let missing = ids.missing(services);
    if missing.is_empty() || !options.create_services {
        return Ok(ids);
    }
    for &(namespace, service) in &missing {
        tx.prepare_cached(&Shape::CreateNamespace.sql(Dialect::Sqlite))?
            .execute([namespace])?;
        tx.prepare_cached(&Shape::CreateService.sql(Dialect::Sqlite))?
            .execute((model::service_id(namespace, service), service, namespace))?;
    }
    ids.extend(select(&missing)?);
    Ok(ids)
}

fn read_existing(
    tx: &Transaction<'_>,
    rows: &[InstanceRecord],
) -> Result<HashMap<String, Existing>, StoreError> {
    let mut ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    ids.sort_unstable();
    let lists = statements::id_lists(LIMITS, &ids, |ids| Shape::ReadExisting {
        ids,
        locked: false,
    });
    let found = query(tx, lists, |r| {
        Ok((
            r.get(0)?,
            Existing {
                revision: r.get(1)?,
                isolate: r.get(2)?,
                deleted: r.get::<_, i64>(3)? != 0,
                ctime: r.get(4)?,
                mtime: r.get(5)?,
            },
        ))
    })?;
    Ok(found.into_iter().collect())
}

fn deregister_in(
    tx: &Transaction<'_>,
    ids: &[String],
    now: &str,
    writer: WriterId,
) -> Result<Vec<DeregisterOutcome>, StoreError> {
    let mut sorted: Vec<&str> = ids.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let lists = statements::id_lists(LIMITS, &sorted, |ids| Shape::ReadPresent {
        ids,
        locked: false,
    });
    let present: HashSet<String> = query(tx, lists, |r| r.get(0))?.into_iter().collect();
    let mut live: Vec<&str> = sorted
        .into_iter()
        .filter(|id| present.contains(*id))
        .collect();
    live.dedup();
    execute(tx, statements::deregister(LIMITS, &live, now, writer))?;
    Ok(plan::deregister_outcomes(ids, &present, now))
}
