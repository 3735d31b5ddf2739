//! The statements a storm of registrations uses, prepared in every power-of-two size when
//! a register worker's connection opens, so that the first batches after a start do not
//! each prepare their own (a prepare returns one column definition per placeholder,
//! 2,176 for a 128-row instance insert). Batches use the same shapes (see
//! `store::statements`), so a connection keeps a few dozen prepared statements.

use super::conn::Session;
use crate::store::StoreError;
use crate::store::schema::{OnDuplicate, Shape};

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
pub(super) async fn prepare_register_statements(session: &mut Session) -> Result<(), StoreError> {
    let mut shapes = Vec::new();
    for rows in sizes(PREPARED_BATCH_ROWS) {
        for locked in [false, true] {
            shapes.push(Shape::ReadExisting { ids: rows, locked });
        }
        shapes.push(Shape::InsertInstances {
            rows,
            on_duplicate: OnDuplicate::Fail,
        });
        shapes.push(Shape::UpsertHealthChecks { rows });
    }
    for rows in sizes(PREPARED_BATCH_ROWS * PREPARED_METADATA_PER_INSTANCE) {
        shapes.push(Shape::InsertMetadata { rows });
    }
    for services in sizes(PREPARED_SERVICES) {
        shapes.push(Shape::SelectServices { services });
    }
    for shape in shapes {
        session.prepared.get(&mut session.conn, shape).await?;
    }
    Ok(())
}
