//! The statements a storm of registrations uses, prepared in every power-of-two size when
//! a register worker's connection opens, so that the first batches after a start do not
//! each prepare their own (a prepare returns one column definition per placeholder,
//! 2,176 for a 128-row instance insert). Batches use the same shapes (see
//! `store::statements`), so a connection keeps a few dozen prepared statements.

use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use crate::store::StoreError;
use crate::store::schema::{self, Dialect, OnDuplicate};

/// Instances per batch whose statements are prepared ahead: the default `max_batch`.
/// Larger shapes are prepared when first used.
const PREPARED_BATCH_ROWS: usize = 128;
/// Metadata entries per instance covered by the prepared metadata inserts.
const PREPARED_METADATA_PER_INSTANCE: usize = 4;
/// Distinct services per batch covered by the prepared service look-ups.
const PREPARED_SERVICES: usize = 16;

/// Every power of two up to `max`.
fn sizes(max: usize) -> impl Iterator<Item = usize> {
    (0..)
        .map(|bit| 1usize << bit)
        .take_while(move |&n| n <= max)
}

/// Prepares, on a new connection, the statements a storm of new and unchanged instances
/// uses, in every power-of-two size up to the limits above.
pub(super) async fn prepare_register_statements(conn: &mut Conn) -> Result<(), StoreError> {
    let mut statements = Vec::new();
    for rows in sizes(PREPARED_BATCH_ROWS) {
        statements.push(schema::read_existing(rows, ""));
        statements.push(schema::read_existing(rows, Dialect::Mysql.lock()));
        statements.push(schema::insert_instances(
            Dialect::Mysql,
            rows,
            OnDuplicate::Fail,
        ));
        statements.push(schema::upsert_health_checks(Dialect::Mysql, rows));
    }
    for rows in sizes(PREPARED_BATCH_ROWS * PREPARED_METADATA_PER_INSTANCE) {
        statements.push(schema::insert_metadata(Dialect::Mysql, rows));
    }
    for services in sizes(PREPARED_SERVICES) {
        statements.push(schema::select_services(services));
    }
    for sql in statements {
        conn.prep(sql).await?;
    }
    Ok(())
}
