//! A planned batch as the statements that write it, the same on both engines: multi-row
//! statements in a few shapes (see `sql::shape_runs`), each under the
//! engine's limits of bound values and bytes, with the values borrowed from the batch.

use super::plan::{PlannedWrite, ServiceKey};
use super::schema::{self, Cell, InstanceTable, OnDuplicate, Shape, WriterId};
use super::sql::{padded_lists, shape_runs, statement_chunks};

/// One statement and the values it binds.
#[derive(Debug)]
pub struct Statement<'a> {
    pub shape: Shape,
    pub cells: Vec<Cell<'a>>,
}

/// How large one statement may be.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bound values per statement.
    pub max_params: usize,
    /// Bytes of values per statement, about.
    pub max_bytes: usize,
}

/// Writes the instance rows of `writes`, marked as written by `writer`.
pub fn write_instances<'a>(
    limits: Limits,
    writes: &[&'a PlannedWrite<'a>],
    on_duplicate: OnDuplicate,
    writer: WriterId,
) -> Vec<Statement<'a>> {
    let columns = schema::INSTANCE_COLUMNS.len();
    statement_chunks(
        writes,
        columns,
        limits.max_params,
        limits.max_bytes,
        schema::instance_bytes,
    )
    .into_iter()
    .map(|chunk| Statement {
        shape: Shape::InsertInstances {
            rows: chunk.len(),
            on_duplicate,
        },
        cells: chunk
            .iter()
            .flat_map(|w| schema::instance_cells(w, writer))
            .collect(),
    })
    .collect()
}

/// Gives every written instance the health check and metadata of its record: those of a
/// replaced row are deleted first (its health check only when it no longer has one; the
/// others are replaced in place), then health checks are upserted and metadata inserted.
pub fn replace_children<'a>(limits: Limits, writes: &'a [PlannedWrite<'a>]) -> Vec<Statement<'a>> {
    let replaced: Vec<&str> = writes
        .iter()
        .filter(|w| w.replaced)
        .map(|w| w.record.id.as_str())
        .collect();
    let unchecked: Vec<&str> = writes
        .iter()
        .filter(|w| w.replaced && w.record.health_check_ttl.is_none())
        .map(|w| w.record.id.as_str())
        .collect();
    let mut statements = delete_where_id_in(limits, InstanceTable::Metadata, &replaced);
    statements.extend(delete_where_id_in(
        limits,
        InstanceTable::HealthCheck,
        &unchecked,
    ));

    let checked: Vec<(&str, u32)> = writes
        .iter()
        .filter_map(|w| {
            w.record
                .health_check_ttl
                .map(|ttl| (w.record.id.as_str(), ttl))
        })
        .collect();
    for run in shape_runs(&checked, limits.max_params / schema::HEALTH_CHECK_VALUES) {
        statements.push(Statement {
            shape: Shape::UpsertHealthChecks { rows: run.len() },
            cells: run
                .iter()
                .flat_map(|&(id, ttl)| [Cell::Text(id), Cell::Number(ttl)])
                .collect(),
        });
    }

    let entries: Vec<(&str, &str, &str)> = writes
        .iter()
        .flat_map(|w| {
            w.record
                .metadata
                .iter()
                .map(move |(k, v)| (w.record.id.as_str(), k.as_str(), v.as_str()))
        })
        .collect();
    let bytes = |(id, k, v): &(&str, &str, &str)| 64 + id.len() + k.len() + v.len();
    for chunk in statement_chunks(
        &entries,
        schema::METADATA_VALUES,
        limits.max_params,
        limits.max_bytes,
        bytes,
    ) {
        statements.push(Statement {
            shape: Shape::InsertMetadata { rows: chunk.len() },
            cells: chunk
                .iter()
                .flat_map(|&(id, k, v)| [Cell::Text(id), Cell::Text(k), Cell::Text(v)])
                .collect(),
        });
    }
    statements
}

/// Deregisters the live instances `ids` (sorted): deletes their metadata and health
/// checks, and marks their rows deregistered at `mtime` (a soft delete, which the other
/// replicas' change feeds see; the rows are purged later), by `writer`.
pub fn deregister<'a>(
    limits: Limits,
    ids: &[&'a str],
    mtime: &'a str,
    writer: WriterId,
) -> Vec<Statement<'a>> {
    let mut statements = delete_where_id_in(limits, InstanceTable::Metadata, ids);
    statements.extend(delete_where_id_in(limits, InstanceTable::HealthCheck, ids));
    for list in padded_lists(ids, limits.max_params - schema::SOFT_DELETE_FIXED) {
        let mut cells = Vec::with_capacity(list.len() + schema::SOFT_DELETE_FIXED);
        cells.push(Cell::Text(mtime));
        cells.push(Cell::Writer(writer));
        cells.extend(list.iter().map(|id| Cell::Text(id)));
        statements.push(Statement {
            shape: Shape::SoftDelete { ids: list.len() },
            cells,
        });
    }
    statements
}

/// Sets health transitions: `(id, new revision)` of the instances turning `healthy`, at
/// `mtime`, by `writer`.
pub fn set_health<'a>(
    limits: Limits,
    healthy: bool,
    rows: &[(&'a str, &'a str)],
    mtime: &'a str,
    writer: WriterId,
) -> Vec<Statement<'a>> {
    let per_statement = (limits.max_params - schema::SET_HEALTH_FIXED) / schema::SET_HEALTH_VALUES;
    shape_runs(rows, per_statement)
        .into_iter()
        .map(|run| {
            let mut cells = Vec::with_capacity(
                schema::SET_HEALTH_FIXED + run.len() * schema::SET_HEALTH_VALUES,
            );
            cells.push(Cell::Flag(healthy));
            cells.push(Cell::Text(mtime));
            cells.push(Cell::Writer(writer));
            cells.extend(
                run.iter()
                    .flat_map(|&(id, revision)| [Cell::Text(id), Cell::Text(revision)]),
            );
            cells.extend(run.iter().map(|&(id, _)| Cell::Text(id)));
            Statement {
                shape: Shape::SetHealth { rows: run.len() },
                cells,
            }
        })
        .collect()
}

/// Deletes the rows of `ids` from `table`, in `IN` lists padded to a power of two.
fn delete_where_id_in<'a>(
    limits: Limits,
    table: InstanceTable,
    ids: &[&'a str],
) -> Vec<Statement<'a>> {
    padded_lists(ids, limits.max_params)
        .into_iter()
        .map(|list| Statement {
            shape: Shape::DeleteWhereIdIn {
                table,
                ids: list.len(),
            },
            cells: list.into_iter().map(Cell::Text).collect(),
        })
        .collect()
}

/// Reads of `ids`, in `IN` lists padded to a power of two: `shape` is the statement for
/// a list of that many.
pub fn id_lists<'a>(
    limits: Limits,
    ids: &[&'a str],
    shape: impl Fn(usize) -> Shape,
) -> Vec<Statement<'a>> {
    padded_lists(ids, limits.max_params)
        .into_iter()
        .map(|list| Statement {
            shape: shape(list.len()),
            cells: list.into_iter().map(Cell::Text).collect(),
        })
        .collect()
}

/// Look-ups of the `(namespace, name)` services, padded to a power of two.
pub fn service_lists<'a>(limits: Limits, services: &[ServiceKey<'a>]) -> Vec<Statement<'a>> {
    padded_lists(services, limits.max_params / schema::SERVICE_KEY_VALUES)
        .into_iter()
        .map(|list| Statement {
            shape: Shape::SelectServices {
                services: list.len(),
            },
            cells: list
                .iter()
                .flat_map(|(namespace, name)| [Cell::Text(namespace), Cell::Text(name)])
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::model::InstanceRecord;
    use crate::store::schema::Dialect;

    fn record(id: &str, ttl: Option<u32>, metadata: usize) -> InstanceRecord {
        InstanceRecord {
            enable_health_check: ttl.is_some(),
            health_check_ttl: ttl,
            metadata: (0..metadata)
                .map(|k| (format!("k{k}"), "v".to_owned()))
                .collect(),
            ..InstanceRecord::sample(id)
        }
    }

    const LIMITS: Limits = Limits {
        max_params: 65_535,
        max_bytes: usize::MAX,
    };

    #[test]
    fn children_of_replaced_rows_are_deleted_first_and_unchecked_ones_lose_their_check() {
        let (a, b, c) = (
            record("a", Some(5), 2),
            record("b", None, 1),
            record("c", Some(7), 0),
        );
        let write = |record, replaced| PlannedWrite {
            record,
            service_id: "s",
            isolate: false,
            revision: "r".to_owned(),
            replaced,
            ctime: "t".to_owned(),
            mtime: "t",
        };
        let writes = [write(&a, true), write(&b, true), write(&c, false)];
        let statements = replace_children(LIMITS, &writes);
        let sql: Vec<String> = statements
            .iter()
            .map(|s| s.shape.sql(Dialect::Mysql))
            .collect();
        assert!(sql[0].starts_with("DELETE FROM instance_metadata WHERE id IN (?,?)"));
        assert_eq!(statements[0].cells, [Cell::Text("a"), Cell::Text("b")]);
        assert!(sql[1].starts_with("DELETE FROM health_check WHERE id IN (?)"));
        assert_eq!(statements[1].cells, [Cell::Text("b")]);
        assert!(sql[2].starts_with("INSERT INTO health_check"));
        assert_eq!(
            statements[2].cells,
            [
                Cell::Text("a"),
                Cell::Number(5),
                Cell::Text("c"),
                Cell::Number(7)
            ]
        );
        assert!(sql[3].starts_with("INSERT INTO instance_metadata"));
        // 3 metadata rows: one run.
        assert_eq!(statements[3].cells.len(), 3 * schema::METADATA_VALUES);
        assert_eq!(statements.len(), 4);
    }

    #[test]
    fn a_deregistration_deletes_children_then_marks_the_rows_in_padded_lists() {
        let statements = deregister(LIMITS, &["a", "b", "c"], "t", WriterId(7));
        let shapes: Vec<Shape> = statements.iter().map(|s| s.shape).collect();
        assert_eq!(
            shapes,
            [
                Shape::DeleteWhereIdIn {
                    table: InstanceTable::Metadata,
                    ids: 4
                },
                Shape::DeleteWhereIdIn {
                    table: InstanceTable::HealthCheck,
                    ids: 4
                },
                Shape::SoftDelete { ids: 4 },
            ]
        );
        assert_eq!(
            statements[2].cells,
            [
                Cell::Text("t"),
                Cell::Writer(WriterId(7)),
                Cell::Text("a"),
                Cell::Text("b"),
                Cell::Text("c"),
                Cell::Text("c")
            ]
        );
    }
}
