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
