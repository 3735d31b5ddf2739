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

/// The largest power of two not above `n` (at least 1).
fn floor_power_of_two(n: usize) -> usize {
    if n <= 1 {
        1
    } else {
        1 << (usize::BITS - 1 - n.leading_zeros())
    }
}

/// The largest run length not above `n` (at least 1): a power of two, or three times one
/// (so that 3 metadata entries of 128 instances are one run of 384).
pub fn floor_run(n: usize) -> usize {
    let power = floor_power_of_two(n);
    let three_halves = power / 2 * 3;
    if power >= 2 && three_halves <= n {
        three_halves
    } else {
        power
    }
}

/// Splits `rows` into runs of at most `max_rows` whose lengths are powers of two or three
/// times one ([`floor_run`]), longest first: 100 rows are 96 + 4. Multi-row statements
/// then come in a few shapes that stay prepared, instead of a new shape (a prepare, on
/// MySQL with one column definition sent back per placeholder) for every batch size.
pub fn shape_runs<T>(rows: &[T], max_rows: usize) -> Vec<&[T]> {
    let max_rows = floor_run(max_rows);
    let mut runs = Vec::new();
    let mut rest = rows;
    while !rest.is_empty() {
        let len = floor_run(rest.len()).min(max_rows);
        let (run, tail) = rest.split_at(len);
        runs.push(run);
        rest = tail;
    }
    runs
}

/// `values` cut into `IN (…)` lists of at most `max` (rounded down to a power of two),
/// each padded to a power of two by repeating its last value: a repeated value matches
/// nothing more, and the statement keeps one of a few shapes.
pub fn padded_lists<T: Copy>(values: &[T], max: usize) -> Vec<Vec<T>> {
    values
        .chunks(floor_power_of_two(max))
        .map(|chunk| {
            let mut list = chunk.to_vec();
            let last = *chunk.last().expect("chunks are not empty");
            list.resize(chunk.len().next_power_of_two(), last);
            list
        })
        .collect()
}

/// Splits `rows` into runs that each fit one statement: at most `max_params` bound values
/// (`params_per_row` a row) and about `max_bytes` of values (`bytes` of a row), each run
/// of a length [`shape_runs`] gives. A row that alone exceeds
/// `max_bytes` still gets a statement of its own.
pub fn statement_chunks<T>(
    rows: &[T],
    params_per_row: usize,
    max_params: usize,
    max_bytes: usize,
    bytes: impl Fn(&T) -> usize,
) -> Vec<&[T]> {
    let max_rows = rows_per_statement(max_params, params_per_row);
    let mut chunks = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, row) in rows.iter().enumerate() {
        let row_bytes = bytes(row);
        if i > start && (i - start == max_rows || size + row_bytes > max_bytes) {
            chunks.extend(shape_runs(&rows[start..i], max_rows));
            start = i;
            size = 0;
        }
        size += row_bytes;
    }
    if start < rows.len() {
        chunks.extend(shape_runs(&rows[start..], max_rows));
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
        // 25 rows fit; runs are of the shapes: 24 + 1 per 25.
        assert_eq!(
            by_params.iter().map(|c| c.len()).collect::<Vec<_>>(),
            [24, 1].repeat(4)
        );
        let by_bytes = statement_chunks(&rows, 2, 65_535, 95, |r| *r);
        assert!(by_bytes.iter().all(|c| [8, 1].contains(&c.len())));
        assert_eq!(by_bytes.iter().map(|c| c.len()).sum::<usize>(), 100);
        let whole = statement_chunks(&rows, 2, 65_535, usize::MAX, |r| *r);
        assert_eq!(whole.iter().map(|c| c.len()).collect::<Vec<_>>(), [96, 4]);
        let huge = vec![1_000usize, 1, 1];
        assert_eq!(statement_chunks(&huge, 1, 10, 100, |r| *r).len(), 2);
        assert!(statement_chunks::<usize>(&[], 1, 10, 100, |r| *r).is_empty());
    }

    #[test]
    fn runs_are_powers_of_two_or_three_times_one_in_order() {
        let rows: Vec<u32> = (0..100).collect();
        let runs = shape_runs(&rows, 128);
        assert_eq!(runs.iter().map(|r| r.len()).collect::<Vec<_>>(), [96, 4]);
        assert_eq!(runs.concat(), rows);
        // A cap of no such length is rounded down.
        let capped = shape_runs(&rows, 40);
        assert_eq!(
            capped.iter().map(|r| r.len()).collect::<Vec<_>>(),
            [32, 32, 32, 4]
        );
        assert!(shape_runs::<u32>(&[], 8).is_empty());
        let lengths: Vec<usize> = (1..=13).map(floor_run).collect();
        assert_eq!(lengths, [1, 2, 3, 4, 4, 6, 6, 8, 8, 8, 8, 12, 12]);
        // 3 metadata entries of 128 instances: one statement.
        let entries: Vec<u32> = (0..384).collect();
        assert_eq!(shape_runs(&entries, 1 << 15).len(), 1);
    }

    #[test]
    fn lists_are_padded_with_their_last_value() {
        assert_eq!(padded_lists(&[1, 2, 3], 8), vec![vec![1, 2, 3, 3]]);
        assert_eq!(
            padded_lists(&[1, 2, 3, 4, 5], 4),
            vec![vec![1, 2, 3, 4], vec![5]]
        );
        assert_eq!(padded_lists(&[7], 1 << 15), vec![vec![7]]);
        assert!(padded_lists::<u8>(&[], 4).is_empty());
        // 65,535 placeholders allowed: lists of 32,768 at most.
        let many: Vec<u32> = (0..40_000).collect();
        let lists = padded_lists(&many, 65_535);
        assert_eq!(
            lists.iter().map(Vec::len).collect::<Vec<_>>(),
            [32_768, 8_192]
        );
    }
}
