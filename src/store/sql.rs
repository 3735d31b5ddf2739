//! Helpers that shape multi-row statements. Only placeholders are generated here; every
//! value is bound as a parameter.

/// `(?,?,…)` repeated `rows` times, comma separated, for a row of `row` placeholders.
pub fn row_placeholders(rows: usize, row: &str) -> String {
    debug_assert!(rows > 0);
    let mut sql = String::with_capacity(rows * (row.len() + 1));
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(row);
    }
    sql
}

/// `?,?,…` with `count` placeholders, for an `IN (…)` list.
pub fn list_placeholders(count: usize) -> String {
    row_placeholders(count, "?")
}

/// How many rows of `columns` bound values fit in one statement under `max_params`.
pub fn rows_per_statement(max_params: usize, columns: usize) -> usize {
    debug_assert!(columns > 0 && columns <= max_params);
    max_params / columns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders() {
        assert_eq!(row_placeholders(3, "(?,?)"), "(?,?),(?,?),(?,?)");
        assert_eq!(list_placeholders(2), "?,?");
        assert_eq!(rows_per_statement(65_535, 17), 3_855);
    }
}

/// Splits `rows` into runs that each fit one statement: at most `max_params` bound values
/// (`params_per_row` a row) and about `max_bytes` of values (`bytes` of a row). A row that
/// alone exceeds `max_bytes` still gets a statement of its own.
pub fn statement_chunks<'a, T>(
    rows: &'a [T],
    params_per_row: usize,
    max_params: usize,
    max_bytes: usize,
    bytes: impl Fn(&T) -> usize,
) -> Vec<&'a [T]> {
    let max_rows = rows_per_statement(max_params, params_per_row);
    let mut chunks = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, row) in rows.iter().enumerate() {
        let row_bytes = bytes(row);
        if i > start && (i - start == max_rows || size + row_bytes > max_bytes) {
            chunks.push(&rows[start..i]);
            start = i;
            size = 0;
        }
        size += row_bytes;
    }
    if start < rows.len() {
        chunks.push(&rows[start..]);
    }
    chunks
}

#[cfg(test)]
mod chunk_tests {
    use super::*;

    #[test]
    fn chunks_respect_both_limits() {
        let rows: Vec<usize> = vec![10; 100];
        let by_params = statement_chunks(&rows, 2, 50, usize::MAX, |r| *r);
        assert_eq!(
            by_params.iter().map(|c| c.len()).collect::<Vec<_>>(),
            vec![25; 4]
        );
        let by_bytes = statement_chunks(&rows, 2, 65_535, 95, |r| *r);
        assert!(by_bytes.iter().all(|c| c.len() == 9 || c.len() == 1));
        assert_eq!(by_bytes.iter().map(|c| c.len()).sum::<usize>(), 100);
        let huge = vec![1_000usize, 1, 1];
        assert_eq!(statement_chunks(&huge, 1, 10, 100, |r| *r).len(), 2);
        assert!(statement_chunks::<usize>(&[], 1, 10, 100, |r| *r).is_empty());
    }
}
