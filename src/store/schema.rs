//! The tables both SQL stores hold, described once: the instance columns a write binds and
//! a planned write's values in that order, every statement of a batch by its number of
//! rows, the read SELECT and the record it gives, and each dialect's spelling of the few
//! clauses that differ. Statements carry placeholders only; every value is bound.

use super::StoreError;
use super::model::{InstanceRecord, StoredInstance, StoredService};
use super::plan::PlannedWrite;
use super::sql::{list_placeholders, row_placeholders};

/// The two SQL dialects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Mysql,
}

impl Dialect {
    /// The database's time now, with milliseconds, as the time columns hold it.
    fn now(self) -> &'static str {
        match self {
            Dialect::Sqlite => "strftime('%Y-%m-%d %H:%M:%f', 'now')",
            Dialect::Mysql => "NOW(3)",
        }
    }

    /// A time column read as text (`2026-12-01 13:15:00.123`).
    fn time_text(self, column: &str) -> String {
        match self {
            Dialect::Sqlite => column.to_owned(),
            Dialect::Mysql => format!("CAST({column} AS CHAR)"),
        }
    }

    /// A join that reads its left table first: MySQL's planner may otherwise start a
    /// page of instances from the service table and sort the whole join for each page.
    fn ordered_join(self) -> &'static str {
        match self {
            Dialect::Sqlite => "JOIN",
            Dialect::Mysql => "STRAIGHT_JOIN",
        }
    }

    /// On a row whose `key` is already stored, set each of `columns` to the inserted value.
    fn upsert(self, key: &str, columns: &[&str]) -> String {
        let (head, value): (String, fn(&str) -> String) = match self {
            Dialect::Sqlite => (format!("ON CONFLICT ({key}) DO UPDATE SET"), |c| {
                format!("excluded.{c}")
            }),
            Dialect::Mysql => ("ON DUPLICATE KEY UPDATE".to_owned(), |c| {
                format!("VALUES({c})")
            }),
        };
        let sets: Vec<String> = columns
            .iter()
            .map(|c| format!("{c} = {}", value(c)))
            .collect();
        format!("{head} {}", sets.join(", "))
    }

    /// On a row whose `key` is already stored, keep it as it is.
    fn keep_existing(self, key: &str) -> String {
        match self {
            Dialect::Sqlite => "ON CONFLICT DO NOTHING".to_owned(),
            Dialect::Mysql => format!("ON DUPLICATE KEY UPDATE {key} = {key}"),
        }
    }

    /// Locks the rows a read returns until the transaction ends. SQLite's immediate
    /// transaction already holds the only write lock.
    pub fn lock(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Mysql => " FOR UPDATE",
        }
    }
}

/// A value bound to a statement, borrowed from the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell<'a> {
    Text(&'a str),
    Number(u32),
    Flag(bool),
    /// The `writer` column: which store wrote a row last (see [`WriterId`]).
    Writer(WriterId),
}

/// Which store (one process's open store) wrote an instance row last: random when the
/// store opens, so that the change feed can leave out the rows its own process wrote,
/// which the process's cache already holds. Rows written before the column existed hold 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WriterId(pub i64);

impl WriterId {
    /// A new id, never 0.
    pub fn random() -> WriterId {
        WriterId(rand::random_range(1..=i64::MAX))
    }
}

/// The instance columns a write binds, in order. `flag` follows, 0 (live).
pub const INSTANCE_COLUMNS: [&str; 20] = [
    "id",
    "service_id",
    "vpc_id",
    "host",
    "port",
    "protocol",
    "version",
    "health_status",
    "isolate",
    "weight",
    "enable_health_check",
    "logic_set",
    "cmdb_region",
    "cmdb_zone",
    "cmdb_idc",
    "priority",
    "revision",
    "ctime",
    "mtime",
    "writer",
];

/// A planned write's values, in the order of [`INSTANCE_COLUMNS`], written by `writer`.
pub fn instance_cells<'a>(
    w: &'a PlannedWrite<'_>,
    writer: WriterId,
) -> [Cell<'a>; INSTANCE_COLUMNS.len()] {
    let r = w.record;
    [
        Cell::Text(&r.id),
        Cell::Text(w.service_id),
        Cell::Text(&r.vpc_id),
        Cell::Text(&r.host),
        Cell::Number(r.port),
        Cell::Text(&r.protocol),
        Cell::Text(&r.version),
        Cell::Flag(r.healthy),
        Cell::Flag(w.isolate),
        Cell::Number(r.weight),
        Cell::Flag(r.enable_health_check),
        Cell::Text(&r.logic_set),
        Cell::Text(&r.region),
        Cell::Text(&r.zone),
        Cell::Text(&r.campus),
        Cell::Number(r.priority),
        Cell::Text(&w.revision),
        Cell::Text(&w.ctime),
        Cell::Text(w.mtime),
        Cell::Writer(writer),
    ]
}

/// About how many bytes a planned instance row binds, to keep a statement under the
/// packet size.
pub fn instance_bytes(w: &&PlannedWrite<'_>) -> usize {
    let r = w.record;
    128 + [
        &r.id,
        &r.host,
        &r.vpc_id,
        &r.protocol,
        &r.version,
        &r.logic_set,
        &r.region,
        &r.zone,
        &r.campus,
    ]
    .iter()
    .map(|text| text.len())
    .sum::<usize>()
}

/// What an instance insert does with a row whose id is already stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OnDuplicate {
    /// Updates it in place (ctime kept).
    Update,
    /// Fails with the engine's duplicate-key error.
    Fail,
}

/// Inserts `rows` live instances; an update keeps the row's ctime.
fn insert_instances(dialect: Dialect, rows: usize, on_duplicate: OnDuplicate) -> String {
    let bound = vec!["?"; INSTANCE_COLUMNS.len()].join(",");
    let row = format!("({bound},0)");
    let update = match on_duplicate {
        OnDuplicate::Fail => String::new(),
        OnDuplicate::Update => {
            let mut columns: Vec<&str> = INSTANCE_COLUMNS[1..]
                .iter()
                .copied()
                .filter(|&c| c != "ctime")
                .collect();
            columns.push("flag");
            dialect.upsert("id", &columns)
        }
    };
    format!(
        "INSERT INTO instance ({}, flag) VALUES {} {update}",
        INSTANCE_COLUMNS.join(", "),
        row_placeholders(rows, &row)
    )
}

/// Values bound per health-check row: id and ttl (the type is always HEARTBEAT).
pub const HEALTH_CHECK_VALUES: usize = 2;

/// Inserts or replaces `rows` heartbeat health checks.
fn upsert_health_checks(dialect: Dialect, rows: usize) -> String {
    format!(
        "INSERT INTO health_check (id, type, ttl) VALUES {} {}",
        row_placeholders(rows, "(?,1,?)"),
        dialect.upsert("id", &["type", "ttl"])
    )
}

/// Values bound per metadata row: id, key and value.
pub const METADATA_VALUES: usize = 3;

/// Inserts `rows` metadata entries; ctime and mtime are the database's time.
fn insert_metadata(dialect: Dialect, rows: usize) -> String {
    let now = dialect.now();
    format!(
        "INSERT INTO instance_metadata (id, mkey, mvalue, ctime, mtime) VALUES {}",
        row_placeholders(rows, &format!("(?,?,?,{now},{now})"))
    )
}

/// The revision, isolate and deleted flags, ctime and mtime of `ids` instance rows, in id
/// order; `lock` is [`Dialect::lock`] or "".
fn read_existing(dialect: Dialect, ids: usize, lock: &str) -> String {
    format!(
        "SELECT id, revision, isolate, flag, {}, {} FROM instance WHERE id IN ({}) ORDER BY id{lock}",
        dialect.time_text("ctime"),
        dialect.time_text("mtime"),
        list_placeholders(ids)
    )
}

/// The ids among `ids` of live instances, in id order; `lock` as in [`read_existing`].
fn read_present(ids: usize, lock: &str) -> String {
    format!(
        "SELECT id FROM instance WHERE id IN ({}) AND flag = 0 ORDER BY id{lock}",
        list_placeholders(ids)
    )
}

/// Values bound per row of a health write: the id and revision in the CASE, the id in
/// the IN list.
pub const SET_HEALTH_VALUES: usize = 3;

/// Values bound once per health write: the health, the mtime and the writer.
pub const SET_HEALTH_FIXED: usize = 3;

/// Sets the health of `rows` instances to one value, each with its own revision; binds
/// the health, the mtime and the writer, then `(id, revision)` of each row, then each id.
fn set_health(rows: usize) -> String {
    format!(
        "UPDATE instance SET health_status = ?, mtime = ?, writer = ?, revision = CASE id {} END
         WHERE id IN ({}) AND flag = 0",
        vec!["WHEN ? THEN ?"; rows].join(" "),
        list_placeholders(rows)
    )
}

/// Values bound once per soft delete: the mtime and the writer.
pub const SOFT_DELETE_FIXED: usize = 2;

/// Marks `ids` instances deregistered (soft delete); binds the mtime and the writer, then
/// the ids.
fn soft_delete(ids: usize) -> String {
    format!(
        "UPDATE instance SET flag = 1, mtime = ?, writer = ? WHERE id IN ({})",
        list_placeholders(ids)
    )
}

/// The tables that hold an instance's children, keyed by its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstanceTable {
    Metadata,
    HealthCheck,
}

impl InstanceTable {
    fn name(self) -> &'static str {
        match self {
            InstanceTable::Metadata => "instance_metadata",
            InstanceTable::HealthCheck => "health_check",
        }
    }
}

/// Deletes the rows of `ids` instances from `table`.
fn delete_where_id_in(table: InstanceTable, ids: usize) -> String {
    format!(
        "DELETE FROM {} WHERE id IN ({})",
        table.name(),
        list_placeholders(ids)
    )
}

/// Values bound per service key: namespace and name.
pub const SERVICE_KEY_VALUES: usize = 2;

/// The `services` (namespace, name) pairs that exist: the columns of
/// [`stored_service`].
fn select_services(dialect: Dialect, services: usize) -> String {
    format!(
        "{} WHERE (namespace, name) IN ({})",
        service_select(dialect),
        row_placeholders(services, "(?,?)")
    )
}

/// The columns [`stored_service`] reads.
fn service_select(dialect: Dialect) -> String {
    format!(
        "SELECT id, namespace, name, {}, {} FROM service",
        dialect.time_text("ctime"),
        dialect.time_text("mtime")
    )
}

/// Every service, or those written at or after the bound time: the columns of
/// [`stored_service`].
pub fn services(dialect: Dialect, since: bool) -> String {
    let select = service_select(dialect);
    if since {
        format!("{select} WHERE mtime >= ?")
    } else {
        select
    }
}

/// A service from a row of [`services`].
pub fn stored_service(row: &impl ResultRow) -> Result<StoredService, StoreError> {
    Ok(StoredService {
        id: row.text(0)?,
        namespace: row.text(1)?,
        name: row.text(2)?,
        ctime: row.text(3)?,
        mtime: row.text(4)?,
    })
}

/// Creates a namespace unless it exists; binds its name.
fn create_namespace(dialect: Dialect) -> String {
    let now = dialect.now();
    format!(
        "INSERT INTO namespace (name, ctime, mtime) VALUES (?, {now}, {now}) {}",
        dialect.keep_existing("name")
    )
}

/// Creates a service unless it exists; binds its id, name and namespace.
fn create_service(dialect: Dialect) -> String {
    let now = dialect.now();
    format!(
        "INSERT INTO service (id, name, namespace, ctime, mtime) VALUES (?, ?, ?, {now}, {now}) {}",
        dialect.keep_existing("id")
    )
}

/// Each statement of a batch, by its kind and number of rows: the key under which an
/// engine keeps it prepared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape {
    InsertInstances {
        rows: usize,
        on_duplicate: OnDuplicate,
    },
    UpsertHealthChecks {
        rows: usize,
    },
    InsertMetadata {
        rows: usize,
    },
    DeleteWhereIdIn {
        table: InstanceTable,
        ids: usize,
    },
    /// With `locked`, the rows read are locked until the transaction ends.
    ReadExisting {
        ids: usize,
        locked: bool,
    },
    ReadPresent {
        ids: usize,
        locked: bool,
    },
    SoftDelete {
        ids: usize,
    },
    SetHealth {
        rows: usize,
    },
    SelectServices {
        services: usize,
    },
    CreateNamespace,
    CreateService,
}

impl Shape {
    /// The statement's text in `dialect`.
    pub fn sql(self, dialect: Dialect) -> String {
        let lock = |locked: bool| if locked { dialect.lock() } else { "" };
        match self {
            Shape::InsertInstances { rows, on_duplicate } => {
                insert_instances(dialect, rows, on_duplicate)
            }
            Shape::UpsertHealthChecks { rows } => upsert_health_checks(dialect, rows),
            Shape::InsertMetadata { rows } => insert_metadata(dialect, rows),
            Shape::DeleteWhereIdIn { table, ids } => delete_where_id_in(table, ids),
            Shape::ReadExisting { ids, locked } => read_existing(dialect, ids, lock(locked)),
            Shape::ReadPresent { ids, locked } => read_present(ids, lock(locked)),
            Shape::SoftDelete { ids } => soft_delete(ids),
            Shape::SetHealth { rows } => set_health(rows),
            Shape::SelectServices { services } => select_services(dialect, services),
            Shape::CreateNamespace => create_namespace(dialect),
            Shape::CreateService => create_service(dialect),
        }
    }
}

/// The columns [`stored_instance`] reads, of live instances.
fn instance_select(dialect: Dialect) -> String {
    format!(
        "SELECT i.id, s.namespace, s.name, i.vpc_id, i.host, i.port, i.protocol, i.version,
                i.priority, i.weight, i.health_status, i.isolate, i.enable_health_check,
                h.ttl, i.logic_set, i.cmdb_region, i.cmdb_zone, i.cmdb_idc,
                i.service_id, i.revision, {}, {}
         FROM instance i
         {} service s ON s.id = i.service_id
         LEFT JOIN health_check h ON h.id = i.id
         WHERE i.flag = 0",
        dialect.time_text("i.ctime"),
        dialect.time_text("i.mtime"),
        dialect.ordered_join()
    )
}

/// A page of live instances in id order, after the bound id, at most the bound count.
pub fn instances_page(dialect: Dialect) -> String {
    format!(
        "{} AND i.id > ? ORDER BY i.id LIMIT ?",
        instance_select(dialect)
    )
}

/// The live instances among `ids`, in id order.
pub fn instances_where_id_in(dialect: Dialect, ids: usize) -> String {
    format!(
        "{} AND i.id IN ({}) ORDER BY i.id",
        instance_select(dialect),
        list_placeholders(ids)
    )
}

/// The metadata of the instances whose ids are between the two bound ids (inclusive), in
/// id and key order: the metadata of one page.
pub const METADATA_BETWEEN: &str = "SELECT id, mkey, mvalue FROM instance_metadata
     WHERE id >= ? AND id <= ? ORDER BY id, mkey";

/// The metadata of `ids` instances, in id and key order.
pub fn metadata_where_id_in(ids: usize) -> String {
    format!(
        "SELECT id, mkey, mvalue FROM instance_metadata WHERE id IN ({}) ORDER BY id, mkey",
        list_placeholders(ids)
    )
}

/// The instance rows (live or deregistered) written at or after the first bound time
/// and, when `bounded`, before the second, and, when `others_only`, last written by
/// another writer than the bound one: id, revision, flag and mtime, read from the
/// `instance_changes` index on MySQL.
pub fn changed_between(dialect: Dialect, bounded: bool, others_only: bool) -> String {
    format!(
        "SELECT id, revision, flag, {} FROM instance WHERE mtime >= ?{}{}",
        dialect.time_text("mtime"),
        if bounded { " AND mtime < ?" } else { "" },
        if others_only { " AND writer <> ?" } else { "" }
    )
}

/// Deletes at most the bound count of instance rows deregistered before the bound time
/// (their metadata and health checks went with the deregistration).
pub fn purge_deleted(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Sqlite => {
            "DELETE FROM instance WHERE id IN
                 (SELECT id FROM instance WHERE flag = 1 AND mtime < ? LIMIT ?)"
        }
        Dialect::Mysql => "DELETE FROM instance WHERE flag = 1 AND mtime < ? LIMIT ?",
    }
}

/// A row of a query, read by column position, whatever the driver.
pub trait ResultRow {
    fn text(&self, column: usize) -> Result<String, StoreError>;
    fn number(&self, column: usize) -> Result<u32, StoreError>;
    fn optional_number(&self, column: usize) -> Result<Option<u32>, StoreError>;

    fn flag(&self, column: usize) -> Result<bool, StoreError> {
        Ok(self.number(column)? != 0)
    }
}

/// An instance from a row of [`instances_page`], without its metadata.
pub fn stored_instance(row: &impl ResultRow) -> Result<StoredInstance, StoreError> {
    let isolate = row.flag(11)?;
    Ok(StoredInstance {
        record: InstanceRecord {
            id: row.text(0)?,
            namespace: row.text(1)?,
            service: row.text(2)?,
            vpc_id: row.text(3)?,
            host: row.text(4)?,
            port: row.number(5)?,
            protocol: row.text(6)?,
            version: row.text(7)?,
            priority: row.number(8)?,
            weight: row.number(9)?,
            healthy: row.flag(10)?,
            isolate: Some(isolate),
            enable_health_check: row.flag(12)?,
            health_check_ttl: row.optional_number(13)?,
            logic_set: row.text(14)?,
            region: row.text(15)?,
            zone: row.text(16)?,
            campus: row.text(17)?,
            metadata: Vec::new(),
        },
        isolate,
        service_id: row.text(18)?,
        revision: row.text(19)?,
        ctime: row.text(20)?,
        mtime: row.text(21)?,
    })
}

/// Puts each `(id, key, value)` of [`METADATA_BETWEEN`] on its instance of `page`; both
/// are in id order.
pub fn attach_metadata(page: &mut [StoredInstance], entries: Vec<(String, String, String)>) {
    let mut instances = page.iter_mut().peekable();
    for (id, key, value) in entries {
        while instances.next_if(|i| i.record.id < id).is_some() {}
        if let Some(instance) = instances.peek_mut()
            && instance.record.id == id
        {
            instance.record.metadata.push((key, value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_inserts_bind_every_column_and_update_all_but_id_and_ctime() {
        let sql = insert_instances(Dialect::Mysql, 2, OnDuplicate::Update);
        assert_eq!(sql.matches('?').count(), 2 * INSTANCE_COLUMNS.len());
        assert!(sql.contains("service_id = VALUES(service_id)"));
        assert!(sql.contains("mtime = VALUES(mtime)"));
        assert!(!sql.contains("id = VALUES(id)"));
        assert!(!sql.contains("ctime = VALUES"));
        let sqlite = insert_instances(Dialect::Sqlite, 1, OnDuplicate::Update);
        assert!(sqlite.contains("ON CONFLICT (id) DO UPDATE SET service_id = excluded.service_id"));
        assert!(!insert_instances(Dialect::Sqlite, 1, OnDuplicate::Fail).contains("CONFLICT"));
    }

    #[test]
    fn metadata_is_attached_to_its_instance() {
        let instance = |id: &str| StoredInstance {
            record: InstanceRecord {
                id: id.to_owned(),
                namespace: String::new(),
                service: String::new(),
                vpc_id: String::new(),
                host: String::new(),
                port: 0,
                protocol: String::new(),
                version: String::new(),
                priority: 0,
                weight: 0,
                healthy: true,
                isolate: None,
                enable_health_check: false,
                health_check_ttl: None,
                logic_set: String::new(),
                region: String::new(),
                zone: String::new(),
                campus: String::new(),
                metadata: Vec::new(),
            },
            isolate: false,
            service_id: String::new(),
            revision: String::new(),
            ctime: String::new(),
            mtime: String::new(),
        };
        let mut page = vec![instance("a"), instance("c"), instance("d")];
        let entry = |id: &str, k: &str| (id.to_owned(), k.to_owned(), "v".to_owned());
        // "b" is not in the page (a row deleted meanwhile): its entry is skipped.
        attach_metadata(
            &mut page,
            vec![
                entry("a", "k1"),
                entry("a", "k2"),
                entry("b", "x"),
                entry("d", "k"),
            ],
        );
        let keys = |i: &StoredInstance| -> Vec<String> {
            i.record.metadata.iter().map(|(k, _)| k.clone()).collect()
        };
        assert_eq!(keys(&page[0]), ["k1", "k2"]);
        assert!(keys(&page[1]).is_empty());
        assert_eq!(keys(&page[2]), ["k"]);
    }
}
