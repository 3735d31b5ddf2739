//! The embedded store: one SQLite file in WAL mode, one writer connection shared by the
//! store workers (SQLite has one writer), one immediate transaction per batch, and a
//! read-only connection for reads that must not wait for the writer.

mod checkpoint;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::types::ToSqlOutput;
use rusqlite::{Connection, ToSql, Transaction, TransactionBehavior};

use super::model::{self, DeregisterOutcome, InstanceRecord, RegisterOptions, RegisterOutcome};
use super::plan::{self, Existing, ServiceIds, ServiceKey};
use super::schema::{self, Cell, Dialect, OnDuplicate, ResultRow, Shape};
use super::statements::{self, Limits, Statement};
use super::{NamespaceCount, Store, StoreError, StoreWriter, StoredInstance, migrate};
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
    /// Opened on first use, for reads that must not wait for the writer.
    reader: Mutex<Option<Connection>>,
    writer: Arc<Mutex<Connection>>,
    /// Shared with the writers: checkpoints go on while any of them is alive.
    checkpointer: Arc<Checkpointer>,
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

    fn namespace_counts(&self) -> Result<Vec<NamespaceCount>, StoreError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(schema::NAMESPACE_COUNTS)?;
            let counts = stmt
                .query_map([], |r| {
                    Ok(NamespaceCount {
                        namespace: r.get(0)?,
                        services: r.get::<_, i64>(1)?.max(0) as u64,
                        instances: r.get::<_, i64>(2)?.max(0) as u64,
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(counts)
        })
    }

    fn instances_page(&self, after: &str, limit: usize) -> Result<Vec<StoredInstance>, StoreError> {
        self.with_reader(|conn| {
            // One read transaction: the page and its metadata are of the same moment.
            conn.execute_batch("BEGIN")?;
            let page = read_page(conn, after, limit);
            let ended = conn.execute_batch("COMMIT");
            let page = page?;
            ended?;
            Ok(page)
        })
    }
}

fn read_page(
    conn: &Connection,
    after: &str,
    limit: usize,
) -> Result<Vec<StoredInstance>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(&schema::instances_page(Dialect::Sqlite))?;
    let mut rows = stmt.query((after, limit))?;
    let mut page = Vec::new();
    while let Some(row) = rows.next()? {
        page.push(schema::stored_instance(&SqliteRow(row))?);
    }
    if let (Some(first), Some(last)) = (page.first(), page.last()) {
        let mut stmt = conn.prepare_cached(schema::METADATA_BETWEEN)?;
        let entries = stmt
            .query_map((&first.record.id, &last.record.id), |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        schema::attach_metadata(&mut page, entries);
    }
    Ok(page)
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
        })
    }
}

struct SqliteWriter {
    conn: Arc<Mutex<Connection>>,
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
    ) -> Result<Vec<RegisterOutcome>, StoreError> {
        self.transaction(|tx| register_in(tx, rows, options))
    }

    fn deregister(&mut self, ids: &[String]) -> Result<Vec<DeregisterOutcome>, StoreError> {
        self.transaction(|tx| deregister_in(tx, ids))
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
) -> Result<Vec<RegisterOutcome>, StoreError> {
    let service_ids = resolve_services(tx, &plan::distinct_services(rows), options)?;
    let existing = read_existing(tx, rows)?;
    let (outcomes, writes) = plan::plan_register(rows, &service_ids, &existing);
    if writes.is_empty() {
        return Ok(outcomes);
    }
    let (added, replaced): (Vec<_>, Vec<_>) = writes.iter().partition(|w| !w.replaced);
    execute(
        tx,
        statements::write_instances(LIMITS, &replaced, OnDuplicate::Update),
    )?;
    execute(
        tx,
        statements::write_instances(LIMITS, &added, OnDuplicate::Fail),
    )?;
    execute(tx, statements::replace_children(LIMITS, &writes))?;
    Ok(outcomes)
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
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
        let mut ids = ServiceIds::default();
        for (id, namespace, service) in found {
            ids.insert(namespace, service, id);
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
            },
        ))
    })?;
    Ok(found.into_iter().collect())
}

fn deregister_in(
    tx: &Transaction<'_>,
    ids: &[String],
) -> Result<Vec<DeregisterOutcome>, StoreError> {
    let mut sorted: Vec<&str> = ids.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let lists = statements::id_lists(LIMITS, &sorted, |ids| Shape::ReadPresent {
        ids,
        locked: false,
    });
    let present: HashSet<String> = query(tx, lists, |r| r.get(0))?.into_iter().collect();
    execute(tx, statements::delete_instances(LIMITS, &sorted))?;
    Ok(plan::deregister_outcomes(ids, &present))
}
