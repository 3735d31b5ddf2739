//! The register and deregister transactions. Each batch is one READ COMMITTED transaction
//! that locks the batch's rows in id order (a stable lock order across replicas; read
//! committed takes no gap locks, so fresh inserts of different batches do not deadlock),
//! updates the rows it found in place and inserts the ones it did not.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use mysql_async::Transaction;
use mysql_async::prelude::{FromRow, Queryable};

use super::conn::{Decision, Prepared, Session, WorkerConnection};
use super::{MysqlRow, Shared, params};
use crate::store::model::{
    self, DeregisterOutcome, InstanceRecord, RegisterOptions, RegisterOutcome, Registered,
};
use crate::store::plan::{self, Existing, PlannedWrite, ServiceIds, ServiceKey};
use crate::store::schema::{self, Cell, OnDuplicate, Shape, WriterId};
use crate::store::statements::{self, Limits, Statement};
use crate::store::{HealthChange, HealthSet, StoreError, StoreWriter};

/// MySQL's "Duplicate entry for key" error.
const ER_DUP_ENTRY: u16 = 1062;

/// The writer of one store worker.
pub(super) struct MysqlWriter {
    pub(super) connection: WorkerConnection,
    shared: Arc<Shared>,
    limits: Limits,
    /// The ids of the services this writer has looked up. batchreg never deletes a
    /// service and a service's id never changes, so an id once read stays right.
    services: ServiceIds,
    /// Whether the last batch wrote nothing: then the next one is first looked up
    /// without a transaction, since a restart storm re-registers what is stored. In a
    /// storm of new instances that look-up would be wasted, so it is skipped until a
    /// batch writes nothing again.
    pub(super) expect_unchanged: bool,
    /// Whether the last batch created every one of its instances: then the next one is
    /// first simply inserted, without reading or locking anything, since a storm of new
    /// instances registers what is not stored. If one of them is stored after all, that
    /// transaction is rolled back and the batch takes the full path.
    expect_new: bool,
}

impl MysqlWriter {
    pub(super) fn new(shared: &Arc<Shared>) -> Result<Self, StoreError> {
        Ok(MysqlWriter {
            connection: WorkerConnection::new(shared)?,
            shared: Arc::clone(shared),
            limits: shared.limits,
            services: ServiceIds::default(),
            expect_unchanged: true,
            expect_new: false,
        })
    }
}

impl StoreWriter for MysqlWriter {
    fn register(
        &mut self,
        rows: &[InstanceRecord],
        options: RegisterOptions,
    ) -> Result<Vec<Registered>, StoreError> {
        let limits = self.limits;
        let now = self.shared.clock.now();
        let writer = self.shared.writer;
        // A restart storm re-registers what is already stored: one plain read shows it,
        // with no transaction and no locks. The database held this exact content when read.
        let mut unchanged = None;
        if self.expect_unchanged {
            let existing = self.connection.run(async |session| {
                let Session { conn, prepared } = session;
                read_existing(conn, prepared, limits, rows, false).await
            })?;
            if plan::all_unchanged(rows, &existing) {
                unchanged = Some(existing);
            }
        }
        // Services are looked up, and the missing ones created, before the batch's
        // transaction, each insert committed at once. Created inside it, they would keep
        // the namespace row locked until the batch commits, and every other batch that
        // creates a service in that namespace would wait for it, as all do at the start
        // of a storm. A service created for a batch that then fails stays: it would be
        // created again when the batch is tried again.
        let missing = self.services.missing(&plan::distinct_services(rows));
        if !missing.is_empty() {
            let found = self
                .connection
                .run(async |session| resolve_services(session, limits, &missing, options).await)?;
            self.services.extend(found);
        }
        let services = &self.services;
        if let Some(existing) = unchanged {
            return Ok(plan::plan_register(rows, services, &existing, &now).0);
        }
        if self.expect_new
            && let Some(results) =
                self.connection
                    .transaction_or_roll_back(async |tx, prepared| {
                        insert_all(tx, prepared, limits, rows, services, &now, writer).await
                    })?
        {
            return Ok(results);
        }
        let results = self.connection.transaction(async |tx, prepared| {
            register_in(tx, prepared, limits, rows, services, &now, writer).await
        })?;
        let all = |outcome| results.iter().all(|r| r.outcome == outcome);
        self.expect_unchanged = all(RegisterOutcome::Unchanged);
        self.expect_new = all(RegisterOutcome::Created);
        Ok(results)
    }

    fn deregister(&mut self, ids: &[String]) -> Result<Vec<DeregisterOutcome>, StoreError> {
        let limits = self.limits;
        let now = self.shared.clock.now();
        let writer = self.shared.writer;
        self.connection.transaction(async |tx, prepared| {
            deregister_in(tx, prepared, limits, ids, &now, writer).await
        })
    }

    fn set_health(
        &mut self,
        changes: &[HealthChange],
    ) -> Result<Vec<Option<HealthSet>>, StoreError> {
        let limits = self.limits;
        let now = self.shared.clock.now();
        let writer = self.shared.writer;
        self.connection.transaction(async |tx, prepared| {
            let mut ids: Vec<&str> = changes.iter().map(|c| c.record.id.as_str()).collect();
            ids.sort_unstable();
            let lists =
                statements::id_lists(limits, &ids, |ids| Shape::ReadPresent { ids, locked: true });
            let present: HashSet<String> = query::<String>(tx, prepared, lists)
                .await?
                .into_iter()
                .collect();
            let revisions = plan::health_revisions(changes, &present);
            for healthy in [true, false] {
                let rows = plan::health_rows(changes, &revisions, healthy);
                execute(
                    tx,
                    prepared,
                    statements::set_health(limits, healthy, &rows, &now, writer),
                )
                .await?;
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

    fn prepare_for_registrations(&mut self) -> Result<(), StoreError> {
        self.connection.prepare_for_registrations()
    }

    fn set_answer_timeout(&mut self, limit: std::time::Duration) {
        self.connection.answer_timeout = limit;
    }
}

/// Runs `statements` in order.
async fn execute(
    conn: &mut impl Queryable,
    prepared: &mut Prepared,
    statements: Vec<Statement<'_>>,
) -> Result<(), StoreError> {
    for statement in statements {
        let (shape, values) = params(statement);
        let prepared = prepared.get(conn, shape).await?;
        conn.exec_drop(prepared, values).await?;
    }
    Ok(())
}

/// Runs `statements` and collects every row of their results.
async fn query<T: FromRow + Send + 'static>(
    conn: &mut impl Queryable,
    prepared: &mut Prepared,
    statements: Vec<Statement<'_>>,
) -> Result<Vec<T>, StoreError> {
    let mut found = Vec::new();
    for statement in statements {
        let (shape, values) = params(statement);
        let prepared = prepared.get(conn, shape).await?;
        found.extend(conn.exec::<T, _, _>(prepared, values).await?);
    }
    Ok(found)
}

async fn register_in(
    tx: &mut Transaction<'_>,
    prepared: &mut Prepared,
    limits: Limits,
    rows: &[InstanceRecord],
    service_ids: &ServiceIds,
    now: &str,
    writer: WriterId,
) -> Result<Vec<Registered>, StoreError> {
    let existing = read_existing(tx, prepared, limits, rows, true).await?;
    let (results, writes) = plan::plan_register(rows, service_ids, &existing, now);
    if writes.is_empty() {
        return Ok(results);
    }
    // Rows this batch found are locked and updated in place. Rows it did not find are
    // inserted without `ON DUPLICATE KEY`: if another writer inserted one since (read
    // committed locks no gaps), the insert fails and the batch is tried again, and then
    // finds it. So an inserted row is new, with no metadata or health check to replace.
    let (added, replaced): (Vec<&PlannedWrite<'_>>, Vec<&PlannedWrite<'_>>) =
        writes.iter().partition(|w| !w.replaced);
    execute(
        tx,
        prepared,
        statements::write_instances(limits, &replaced, OnDuplicate::Update, writer),
    )
    .await?;
    match execute(
        tx,
        prepared,
        statements::write_instances(limits, &added, OnDuplicate::Fail, writer),
    )
    .await
    {
        Err(StoreError::Mysql(mysql_async::Error::Server(err))) if err.code == ER_DUP_ENTRY => {
            return Err(StoreError::Raced);
        }
        done => done?,
    }
    execute(tx, prepared, statements::replace_children(limits, &writes)).await?;
    Ok(results)
}

/// Inserts every row as a new instance. `None` (the transaction rolled back) when one of
/// them is stored already.
async fn insert_all(
    tx: &mut Transaction<'_>,
    prepared: &mut Prepared,
    limits: Limits,
    rows: &[InstanceRecord],
    service_ids: &ServiceIds,
    now: &str,
    writer: WriterId,
) -> Result<Decision<Option<Vec<Registered>>>, StoreError> {
    let (results, writes) = plan::plan_register(rows, service_ids, &HashMap::new(), now);
    let added: Vec<&PlannedWrite<'_>> = writes.iter().collect();
    match execute(
        tx,
        prepared,
        statements::write_instances(limits, &added, OnDuplicate::Fail, writer),
    )
    .await
    {
        Err(StoreError::Mysql(mysql_async::Error::Server(err))) if err.code == ER_DUP_ENTRY => {
            return Ok(Decision::RollBack(None));
        }
        done => done?,
    }
    execute(tx, prepared, statements::replace_children(limits, &writes)).await?;
    Ok(Decision::Commit(Some(results)))
}

/// The ids of `services`, creating the missing ones if allowed. Run outside a
/// transaction: each insert commits (and releases its locks) at once.
async fn resolve_services(
    session: &mut Session,
    limits: Limits,
    services: &[ServiceKey<'_>],
    options: RegisterOptions,
) -> Result<ServiceIds, StoreError> {
    let Session { conn, prepared } = session;
    let mut ids = select_services(conn, prepared, limits, services).await?;
    let missing = ids.missing(services);
    if missing.is_empty() || !options.create_services {
        return Ok(ids);
    }
    for &(namespace, service) in &missing {
        let id = model::service_id(namespace, service);
        let creates = [
            Statement {
                shape: Shape::CreateNamespace,
                cells: vec![Cell::Text(namespace)],
            },
            Statement {
                shape: Shape::CreateService,
                cells: vec![Cell::Text(&id), Cell::Text(service), Cell::Text(namespace)],
            },
        ];
        execute(conn, prepared, creates.into()).await?;
    }
    // Another replica may have created a service first, under another id.
    ids.extend(select_services(conn, prepared, limits, &missing).await?);
    Ok(ids)
}

/// The ids of the services that exist.
async fn select_services(
    conn: &mut impl Queryable,
    prepared: &mut Prepared,
    limits: Limits,
    services: &[ServiceKey<'_>],
) -> Result<ServiceIds, StoreError> {
    let found: Vec<mysql_async::Row> =
        query(conn, prepared, statements::service_lists(limits, services)).await?;
    let mut ids = ServiceIds::default();
    for row in &found {
        ids.insert(schema::stored_service(&MysqlRow(row))?);
    }
    Ok(ids)
}

/// Reads the stored revisions of the rows the batch names, in id order. `locked` inside
/// the batch's transaction also locks them.
async fn read_existing(
    conn: &mut impl Queryable,
    prepared: &mut Prepared,
    limits: Limits,
    rows: &[InstanceRecord],
    locked: bool,
) -> Result<HashMap<String, Existing>, StoreError> {
    let mut ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    ids.sort_unstable();
    let lists = statements::id_lists(limits, &ids, |ids| Shape::ReadExisting { ids, locked });
    let found: Vec<(String, String, bool, u8, String, String)> =
        query(conn, prepared, lists).await?;
    Ok(found
        .into_iter()
        .map(|(id, revision, isolate, flag, ctime, mtime)| {
            let deleted = flag != 0;
            (
                id,
                Existing {
                    revision,
                    isolate,
                    deleted,
                    ctime,
                    mtime,
                },
            )
        })
        .collect())
}

async fn deregister_in(
    tx: &mut Transaction<'_>,
    prepared: &mut Prepared,
    limits: Limits,
    ids: &[String],
    now: &str,
    writer: WriterId,
) -> Result<Vec<DeregisterOutcome>, StoreError> {
    let mut sorted: Vec<&str> = ids.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let lists = statements::id_lists(limits, &sorted, |ids| Shape::ReadPresent {
        ids,
        locked: true,
    });
    let present: HashSet<String> = query::<String>(tx, prepared, lists)
        .await?
        .into_iter()
        .collect();
    let mut live: Vec<&str> = sorted
        .into_iter()
        .filter(|id| present.contains(*id))
        .collect();
    live.dedup();
    execute(
        tx,
        prepared,
        statements::deregister(limits, &live, now, writer),
    )
    .await?;
    Ok(plan::deregister_outcomes(ids, &present, now))
}
