//! The statements a storm of registrations uses, prepared in every size a batch uses
//! when a register worker's connection opens, so that the first batches after a start
//! do not each prepare their own (a prepare returns one column definition per placeholder,
//! 2,176 for a 128-row instance insert). Batches use the same shapes (see
//! `store::statements`), so a connection keeps a few dozen prepared statements.

use super::conn::Session;
use crate::store::schema::{OnDuplicate, Shape};
use crate::store::{StoreError, sql};

/// Instances per batch whose statements are prepared ahead: the default `max_batch`.
/// Larger shapes are prepared when first used.
const PREPARED_BATCH_ROWS: usize = 128;
/// Metadata entries per instance covered by the prepared metadata inserts.
const PREPARED_METADATA_PER_INSTANCE: usize = 4;
/// Distinct services per batch covered by the prepared service look-ups.
const PREPARED_SERVICES: usize = 16;

/// Every power of two up to `max`: the lengths of padded `IN` lists.
fn list_sizes(max: usize) -> impl Iterator<Item = usize> {
    (0..)
        .map(|bit| 1usize << bit)
        .take_while(move |&n| n <= max)
}

/// Every run length of `sql::shape_runs` up to `max`: the rows of multi-row inserts.
fn run_sizes(max: usize) -> impl Iterator<Item = usize> {
    (1..=max).filter(|&n| sql::floor_run(n) == n)
}

/// Prepares, on a new connection, the statements a storm of new and unchanged instances
/// uses, in every size up to the limits above.
pub(super) async fn prepare_register_statements(session: &mut Session) -> Result<(), StoreError> {
    let mut shapes = Vec::new();
    for ids in list_sizes(PREPARED_BATCH_ROWS) {
        for locked in [false, true] {
            shapes.push(Shape::ReadExisting { ids, locked });
        }
    }
    for rows in run_sizes(PREPARED_BATCH_ROWS) {
        shapes.push(Shape::InsertInstances {
            rows,
            on_duplicate: OnDuplicate::Fail,
        });
        shapes.push(Shape::UpsertHealthChecks { rows });
    }
    for rows in run_sizes(PREPARED_BATCH_ROWS * PREPARED_METADATA_PER_INSTANCE) {
        shapes.push(Shape::InsertMetadata { rows });
    }
    for services in list_sizes(PREPARED_SERVICES) {
        shapes.push(Shape::SelectServices { services });
    }
    for shape in shapes {
        session.prepared.get(&mut session.conn, shape).await?;
    }
    Ok(())
}
