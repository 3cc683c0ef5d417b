//! Attack: write to a table the manifest did not declare.
use kanon_guest::Table;
hostile_common::fixture!("undeclared-table", {
    let raw = Table::open("raw_rows").map(|_| ());
    Err(format!("raw_rows={raw:?}").into())
});
