//! Releases as files: every released table's cells in one flat table, as
//! CSV (job results and benchmark versions) or Parquet (benchmark versions).
//!
//! Columns: `table`, then every dimension and statistic of any table (empty
//! where a table has no such column), then `suppressed` and, for benchmark
//! versions, `held_from` (the version a held cell's values come from).

use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, Float64Builder, StringBuilder, UInt64Builder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use kanon_gate::Release;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::error::{Error, Result};

/// The union of the tables' dimension and statistic names, in first-seen
/// order.
struct Columns<'a> {
    dimensions: Vec<&'a str>,
    statistics: Vec<&'a str>,
}

impl<'a> Columns<'a> {
    fn of(release: &'a Release) -> Self {
        let mut columns = Columns { dimensions: Vec::new(), statistics: Vec::new() };
        for table in &release.tables {
            for name in &table.dimensions {
                if !columns.dimensions.contains(&name.as_str()) {
                    columns.dimensions.push(name);
                }
            }
            for name in &table.statistics {
                if !columns.statistics.contains(&name.as_str()) {
                    columns.statistics.push(name);
                }
            }
        }
        columns
    }
}

/// One cell as a flat row: its key and values placed in the union's
/// columns.
struct Row<'a> {
    table: &'a str,
    key: Vec<Option<&'a str>>,
    values: Vec<Option<f64>>,
    suppressed: bool,
    held_from: Option<u64>,
}

/// Every cell of every table, as flat rows.
fn rows<'a>(release: &'a Release, columns: &'a Columns<'a>) -> impl Iterator<Item = Row<'a>> + 'a {
    release.tables.iter().flat_map(move |table| {
        table.cells.iter().map(move |cell| {
            let mut key = vec![None; columns.dimensions.len()];
            for (dimension, label) in table.dimensions.iter().zip(&cell.key) {
                key[columns.dimensions.iter().position(|c| c == dimension).expect("listed")] =
                    Some(label.as_str());
            }
            let mut values = vec![None; columns.statistics.len()];
            for (statistic, &value) in table.statistics.iter().zip(cell.values.iter().flatten()) {
                values[columns.statistics.iter().position(|c| c == statistic).expect("listed")] = Some(value);
            }
            Row {
                table: &table.name,
                key,
                values,
                suppressed: cell.values.is_none(),
                held_from: cell.held_from,
            }
        })
    })
}

/// A release as CSV; `held_column` adds `held_from` (benchmark versions).
pub fn release_csv(release: &Release, held_column: bool) -> Result<String> {
    let columns = Columns::of(release);
    let csv_err = |e: csv::Error| Error::Internal(e.to_string());
    let mut out = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["table"];
    header.extend(columns.dimensions.iter().chain(&columns.statistics));
    header.push("suppressed");
    if held_column {
        header.push("held_from");
    }
    out.write_record(&header).map_err(csv_err)?;
    for cell in rows(release, &columns) {
        let mut row = vec![cell.table.to_owned()];
        row.extend(cell.key.iter().map(|k| k.unwrap_or_default().to_owned()));
        row.extend(cell.values.iter().map(|v| v.map(|v| v.to_string()).unwrap_or_default()));
        row.push(cell.suppressed.to_string());
        if held_column {
            row.push(cell.held_from.map(|v| v.to_string()).unwrap_or_default());
        }
        out.write_record(&row).map_err(csv_err)?;
    }
    String::from_utf8(out.into_inner().map_err(|e| Error::Internal(e.to_string()))?)
        .map_err(|e| Error::Internal(e.to_string()))
}

/// A release as one Parquet file (Snappy, like pyarrow's default), with
/// `held_from`.
pub fn release_parquet(release: &Release) -> Result<Vec<u8>> {
    let columns = Columns::of(release);
    let mut table = StringBuilder::new();
    let mut keys: Vec<StringBuilder> = columns.dimensions.iter().map(|_| StringBuilder::new()).collect();
    let mut values: Vec<Float64Builder> = columns.statistics.iter().map(|_| Float64Builder::new()).collect();
    let mut suppressed = BooleanBuilder::new();
    let mut held = UInt64Builder::new();
    for cell in rows(release, &columns) {
        table.append_value(cell.table);
        keys.iter_mut().zip(cell.key).for_each(|(b, k)| b.append_option(k));
        values.iter_mut().zip(cell.values).for_each(|(b, v)| b.append_option(v));
        suppressed.append_value(cell.suppressed);
        held.append_option(cell.held_from);
    }
    let mut fields = vec![Field::new("table", DataType::Utf8, false)];
    fields.extend(columns.dimensions.iter().map(|d| Field::new(*d, DataType::Utf8, true)));
    fields.extend(columns.statistics.iter().map(|s| Field::new(*s, DataType::Float64, true)));
    fields.push(Field::new("suppressed", DataType::Boolean, false));
    fields.push(Field::new("held_from", DataType::UInt64, true));
    let mut arrays: Vec<ArrayRef> = vec![Arc::new(table.finish())];
    arrays.extend(keys.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    arrays.extend(values.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    arrays.push(Arc::new(suppressed.finish()));
    arrays.push(Arc::new(held.finish()));
    let failed = |e: &dyn std::fmt::Display| Error::Internal(format!("parquet export: {e}"));
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).map_err(|e| failed(&e))?;
    let properties = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
    let mut out = Vec::new();
    let mut writer =
        ArrowWriter::try_new(&mut out, batch.schema(), Some(properties)).map_err(|e| failed(&e))?;
    writer.write(&batch).map_err(|e| failed(&e))?;
    writer.close().map_err(|e| failed(&e))?;
    Ok(out)
}
