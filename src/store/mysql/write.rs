//! The register and deregister transactions. Each batch is one READ COMMITTED transaction
//! that locks the batch's rows in id order (a stable lock order across replicas; read
//! committed takes no gap locks, so fresh inserts of different batches do not deadlock),
//! updates the rows it found in place and inserts the ones it did not.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Transaction};

use super::conn::WorkerConnection;
use super::{Shared, params};
use crate::store::model::{
    self, DeregisterOutcome, InstanceRecord, RegisterOptions, RegisterOutcome,
};
use crate::store::plan::{self, Existing, PlannedWrite, ServiceKey};
use crate::store::schema::{self, Dialect, OnDuplicate};
use crate::store::statements::{self, Limits, Statement};
use crate::store::{StoreError, StoreWriter};

/// MySQL's "Duplicate entry for key" error.
const ER_DUP_ENTRY: u16 = 1062;

/// The writer of one store worker.
pub(super) struct MysqlWriter {
    pub(super) connection: WorkerConnection,
    limits: Limits,
    /// Whether the last batch wrote nothing: then the next one is first looked up
    /// without a transaction, since a restart storm re-registers what is stored. In a
    /// storm of new instances that look-up would be wasted, so it is skipped until a
    /// batch writes nothing again.
    pub(super) expect_unchanged: bool,
}

impl MysqlWriter {
    pub(super) fn new(shared: Arc<Shared>) -> Result<Self, StoreError> {
        let limits = shared.limits;
        Ok(MysqlWriter {
            connection: WorkerConnection::new(shared)?,
            limits,
            expect_unchanged: true,
        })
    }
}

impl StoreWriter for MysqlWriter {
    fn register(
        &mut self,
        rows: &[InstanceRecord],
        options: RegisterOptions,
    ) -> Result<Vec<RegisterOutcome>, StoreError> {
        let limits = self.limits;
        // A restart storm re-registers what is already stored: one plain read shows it,
        // with no transaction and no locks. The database held this exact content when read.
        if self.expect_unchanged {
            let existing = self
                .connection
                .run(async |conn| read_existing(conn, limits, rows, "").await)?;
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
        let service_ids = self
            .connection
            .run(async |conn| resolve_services(conn, limits, &services, options).await)?;
        let outcomes = self
            .connection
            .transaction(async |tx| register_in(tx, limits, rows, &service_ids).await)?;
        self.expect_unchanged = outcomes.iter().all(|o| *o == RegisterOutcome::Unchanged);
        Ok(outcomes)
    }

    fn deregister(&mut self, ids: &[String]) -> Result<Vec<DeregisterOutcome>, StoreError> {
        let limits = self.limits;
        self.connection
            .transaction(async |tx| deregister_in(tx, limits, ids).await)
    }

    fn prepare_for_registrations(&mut self) -> Result<(), StoreError> {
        self.connection.prepare_for_registrations()
    }
}

/// Runs `statements` in order.
async fn execute(
    conn: &mut impl Queryable,
    statements: Vec<Statement<'_>>,
) -> Result<(), StoreError> {
    for statement in statements {
        let (sql, values) = params(statement);
        conn.exec_drop(sql, values).await?;
    }
    Ok(())
}

/// Runs `statements` and collects every row of their results.
async fn query<T: mysql_async::prelude::FromRow + Send + 'static>(
    conn: &mut impl Queryable,
    statements: Vec<Statement<'_>>,
) -> Result<Vec<T>, StoreError> {
    let mut found = Vec::new();
    for statement in statements {
        let (sql, values) = params(statement);
        found.extend(conn.exec::<T, _, _>(sql, values).await?);
    }
    Ok(found)
}

async fn register_in(
    tx: &mut Transaction<'_>,
    limits: Limits,
    rows: &[InstanceRecord],
    service_ids: &HashMap<ServiceKey, String>,
) -> Result<Vec<RegisterOutcome>, StoreError> {
    let existing = read_existing(tx, limits, rows, Dialect::Mysql.lock()).await?;
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
    execute(
        tx,
        statements::write_instances(limits, &replaced, OnDuplicate::Update),
    )
    .await?;
    match execute(
        tx,
        statements::write_instances(limits, &added, OnDuplicate::Fail),
    )
    .await
    {
        Err(StoreError::Mysql(mysql_async::Error::Server(err))) if err.code == ER_DUP_ENTRY => {
            return Err(StoreError::Raced);
        }
        done => done?,
    }
    execute(tx, statements::replace_children(limits, &writes)).await?;
    Ok(outcomes)
}

/// The ids of the batch's services, creating the missing ones if allowed. Run outside a
/// transaction: each insert commits (and releases its locks) at once.
async fn resolve_services(
    conn: &mut Conn,
    limits: Limits,
    services: &[ServiceKey],
    options: RegisterOptions,
) -> Result<HashMap<ServiceKey, String>, StoreError> {
    let mut ids = select_services(conn, limits, services).await?;
    let missing: Vec<ServiceKey> = services
        .iter()
        .filter(|k| !ids.contains_key(*k))
        .cloned()
        .collect();
    if missing.is_empty() || !options.create_services {
        return Ok(ids);
    }
    for (namespace, service) in &missing {
        conn.exec_drop(schema::create_namespace(Dialect::Mysql), (namespace,))
            .await?;
        conn.exec_drop(
            schema::create_service(Dialect::Mysql),
            (model::service_id(namespace, service), service, namespace),
        )
        .await?;
    }
    // Another replica may have created a service first, under another id.
    ids.extend(select_services(conn, limits, &missing).await?);
    Ok(ids)
}

/// The ids of the services that exist.
async fn select_services(
    conn: &mut Conn,
    limits: Limits,
    services: &[ServiceKey],
) -> Result<HashMap<ServiceKey, String>, StoreError> {
    let found: Vec<(String, String, String)> =
        query(conn, statements::service_lists(limits, services)).await?;
    Ok(found
        .into_iter()
        .map(|(id, namespace, service)| ((namespace, service), id))
        .collect())
}

/// Reads the stored revisions of the rows the batch names, in id order. With `lock` =
/// [`Dialect::lock`] inside the batch's transaction it also locks them.
async fn read_existing(
    conn: &mut impl Queryable,
    limits: Limits,
    rows: &[InstanceRecord],
    lock: &'static str,
) -> Result<HashMap<String, Existing>, StoreError> {
    let mut ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    ids.sort_unstable();
    let lists = statements::id_lists(limits, &ids, |n| schema::read_existing(n, lock));
    let found: Vec<(String, String, bool)> = query(conn, lists).await?;
    Ok(found
        .into_iter()
        .map(|(id, revision, isolate)| (id, Existing { revision, isolate }))
        .collect())
}

async fn deregister_in(
    tx: &mut Transaction<'_>,
    limits: Limits,
    ids: &[String],
) -> Result<Vec<DeregisterOutcome>, StoreError> {
    let mut sorted: Vec<&str> = ids.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let lists = statements::id_lists(limits, &sorted, |n| {
        schema::read_present(n, Dialect::Mysql.lock())
    });
    let present: HashSet<String> = query::<String>(tx, lists).await?.into_iter().collect();
    execute(tx, statements::delete_instances(limits, &sorted)).await?;
    Ok(plan::deregister_outcomes(ids, &present))
}
