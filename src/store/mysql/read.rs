//! What the registry cache reads: pages of live instances at start, and in cluster mode
//! the rows other replicas changed; services; the database's clock. On pooled
//! connections, never on a store worker's.

use std::time::SystemTime;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, IsolationLevel, Params, Pool, Transaction, TxOpts, Value};

use super::{MysqlRow, POOL_WAIT};
use crate::store::clock::Clock;
use crate::store::schema::{self, Dialect, WriterId};
use crate::store::sql;
use crate::store::statements::Limits;
use crate::store::{ChangedRow, StoreError, StoredInstance, StoredService};

/// One read-only snapshot: rows and their metadata are of the same moment.
async fn snapshot(conn: &mut Conn) -> Result<Transaction<'_>, StoreError> {
    let mut options = TxOpts::default();
    options
        .with_isolation_level(IsolationLevel::RepeatableRead)
        .with_consistent_snapshot(true)
        .with_readonly(true);
    Ok(conn.start_transaction(options).await?)
}

/// Instances from the rows of an instance SELECT, without metadata.
fn instances_of(rows: &[mysql_async::Row]) -> Result<Vec<StoredInstance>, StoreError> {
    rows.iter()
        .map(|row| schema::stored_instance(&MysqlRow(row)))
        .collect()
}

pub(super) async fn instances_page(
    conn: &mut Conn,
    after: &str,
    limit: usize,
) -> Result<Vec<StoredInstance>, StoreError> {
    let mut tx = snapshot(conn).await?;
    let rows: Vec<mysql_async::Row> = tx
        .exec(
            schema::instances_page(Dialect::Mysql),
            (after, limit as u64),
        )
        .await?;
    let mut page = instances_of(&rows)?;
    if let (Some(first), Some(last)) = (page.first(), page.last()) {
        let entries: Vec<(String, String, String)> = tx
            .exec(
                schema::METADATA_BETWEEN,
                (first.record.id.as_str(), last.record.id.as_str()),
            )
            .await?;
        schema::attach_metadata(&mut page, entries);
    }
    tx.commit().await?;
    Ok(page)
}

pub(super) async fn instances(
    conn: &mut Conn,
    limits: Limits,
    ids: &[String],
) -> Result<Vec<StoredInstance>, StoreError> {
    let mut sorted: Vec<&str> = ids.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut tx = snapshot(conn).await?;
    let mut found = Vec::new();
    for list in sql::padded_lists(&sorted, limits.max_params) {
        let rows: Vec<mysql_async::Row> = tx
            .exec(
                schema::instances_where_id_in(Dialect::Mysql, list.len()),
                list.clone(),
            )
            .await?;
        let mut instances = instances_of(&rows)?;
        if !instances.is_empty() {
            let entries: Vec<(String, String, String)> = tx
                .exec(schema::metadata_where_id_in(list.len()), list)
                .await?;
            schema::attach_metadata(&mut instances, entries);
        }
        found.extend(instances);
    }
    tx.commit().await?;
    Ok(found)
}

pub(super) async fn services(
    conn: &mut Conn,
    since: Option<&str>,
) -> Result<Vec<StoredService>, StoreError> {
    let sql = schema::services(Dialect::Mysql, since.is_some());
    let rows: Vec<mysql_async::Row> = match since {
        Some(since) => conn.exec(sql, (since,)).await?,
        None => conn.query(sql).await?,
    };
    rows.iter()
        .map(|row| schema::stored_service(&MysqlRow(row)))
        .collect()
}

pub(super) async fn changed_between(
    conn: &mut Conn,
    from: &str,
    until: Option<&str>,
    skipped: Option<WriterId>,
    each: &mut dyn FnMut(ChangedRow),
) -> Result<(), StoreError> {
    let sql = schema::changed_between(Dialect::Mysql, until.is_some(), skipped.is_some());
    let params: Vec<Value> = std::iter::once(Value::from(from))
        .chain(until.map(Value::from))
        .chain(skipped.map(|WriterId(id)| Value::from(id)))
        .collect();
    let params = Params::Positional(params);
    // Row by row: a storm's rows are not all held at once (each read would take fresh
    // pages from the system for them).
    let mut malformed = None;
    conn.exec_iter(sql, params)
        .await?
        .for_each(
            |row| match mysql_async::from_row_opt::<(String, String, u8, String)>(row) {
                Ok((id, revision, flag, mtime)) => each(ChangedRow {
                    id,
                    revision,
                    deleted: flag != 0,
                    mtime,
                }),
                Err(error) => {
                    malformed.get_or_insert(error);
                }
            },
        )
        .await?;
    match malformed {
        Some(error) => Err(StoreError::BadRow {
            column: 0,
            reason: format!("a changed instance row: {error}"),
        }),
        None => Ok(()),
    }
}

/// Reads the database's clock and sets `clock`'s offset to it.
pub(super) async fn align_clock(pool: &Pool, clock: &Clock) -> Result<(), StoreError> {
    let mut conn = tokio::time::timeout(POOL_WAIT, pool.get_conn())
        .await
        .map_err(|_| StoreError::PoolTimeout)??;
    let sent = SystemTime::now();
    let database_ms: Option<i64> = conn
        .query_first("SELECT CAST(ROUND(UNIX_TIMESTAMP(NOW(3)) * 1000) AS SIGNED)")
        .await?;
    let received = SystemTime::now();
    if let Some(database_ms) = database_ms {
        clock.align(database_ms, sent, received);
    }
    Ok(())
}
