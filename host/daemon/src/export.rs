//! Releases as files: every released table's cells in one flat table, as
//! CSV (job results and benchmark versions) or Parquet (benchmark versions).
//!
//! Columns: `table`, then every dimension and statistic of any table (empty
//! where a table has no such column), then `suppressed` and, for benchmark
//! versions, `held_from` (the version a held cell's values come from).
//! In a differentially private release each statistic `X` is followed by
//! `X_sd` (its noise's standard deviation, empty for means and ratios),
//! `X_lo95` and `X_hi95` (the 95 % interval of its noise, both empty when
//! unbounded); a release under the threshold rules has none of these.

use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, Float64Builder, StringBuilder, UInt64Builder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use kanon_gate::Release;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::error::{Error, Result};

/// What follows each statistic's column in a DP release, in this order.
const NOISE_SUFFIXES: [&str; 3] = ["_sd", "_lo95", "_hi95"];

/// The union of the tables' dimension and statistic names, in first-seen
/// order.
struct Columns<'a> {
    dimensions: Vec<&'a str>,
    statistics: Vec<&'a str>,
    /// A DP release: its values are only useful with their noise, so each
    /// statistic brings [`NOISE_SUFFIXES`] columns along.
    dp: bool,
}

impl<'a> Columns<'a> {
    fn of(release: &'a Release) -> Self {
        let mut columns =
            Columns { dimensions: Vec::new(), statistics: Vec::new(), dp: release.dp.is_some() };
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

    /// The value columns per statistic.
    fn width(&self) -> usize {
        if self.dp { 1 + NOISE_SUFFIXES.len() } else { 1 }
    }

    /// The value columns' names, in a row's `values` order.
    fn values(&self) -> Vec<String> {
        let suffixes: &[&str] = if self.dp { &NOISE_SUFFIXES } else { &[] };
        self.statistics
            .iter()
            .flat_map(|s| {
                std::iter::once(s.to_string()).chain(suffixes.iter().map(move |x| format!("{s}{x}")))
            })
            .collect()
    }
}

/// One cell as a flat row: its key and values placed in the union's
/// columns.
struct Row<'a> {
    table: &'a str,
    key: Vec<Option<&'a str>>,
    /// Per [`Columns::values`] column.
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
            let width = columns.width();
            let mut values = vec![None; columns.statistics.len() * width];
            let noise_sd = table.noise_sd.as_deref().unwrap_or_default();
            let intervals = cell.intervals.as_deref().unwrap_or_default();
            for (i, (statistic, &value)) in
                table.statistics.iter().zip(cell.values.iter().flatten()).enumerate()
            {
                let at = columns.statistics.iter().position(|c| c == statistic).expect("listed") * width;
                values[at] = Some(value);
                if columns.dp {
                    // Only beside a value, so a suppressed cell shows none;
                    // missing noise reads as empty, never as a made-up number.
                    let interval = intervals.get(i);
                    let noise: [Option<f64>; NOISE_SUFFIXES.len()] = [
                        noise_sd.get(i).copied().flatten(),
                        interval.and_then(|v| v.lo),
                        interval.and_then(|v| v.hi),
                    ];
                    values[at + 1..at + width].copy_from_slice(&noise);
                }
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
    let value_names = columns.values();
    let mut header = vec!["table"];
    header.extend(columns.dimensions.iter().copied().chain(value_names.iter().map(String::as_str)));
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
    let value_names = columns.values();
    let mut values: Vec<Float64Builder> = value_names.iter().map(|_| Float64Builder::new()).collect();
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
    fields.extend(value_names.iter().map(|s| Field::new(s, DataType::Float64, true)));
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

#[cfg(test)]
mod tests {
    use std::io::{Seek, Write};

    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::Float64Type;
    use kanon_gate::dp::{DpSummary, Interval};
    use kanon_gate::{Policy, ReleasedCell, ReleasedTable, Scope};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use super::*;

    fn cell(key: &str, values: Option<Vec<f64>>, intervals: Option<Vec<Interval>>) -> ReleasedCell {
        ReleasedCell { key: vec![key.to_owned()], values, held_from: None, intervals }
    }

    fn bounded(lo: f64, hi: f64) -> Interval {
        Interval { lo: Some(lo), hi: Some(hi) }
    }

    /// `fuel` by site (a count and a mean), then `regions` by region (a
    /// count only, so its mean columns stay empty).
    fn release(dp: bool) -> Release {
        let unbounded = Interval { lo: None, hi: None };
        let noise = |sd: Vec<Option<f64>>| dp.then_some(sd);
        let intervals = |i: Vec<Interval>| dp.then_some(i);
        Release {
            scope: Scope::Tenant,
            policy: Policy::default(),
            tables: vec![
                ReleasedTable {
                    name: "fuel".to_owned(),
                    dimensions: vec!["site".to_owned()],
                    statistics: vec!["count".to_owned(), "mean(litres)".to_owned()],
                    cells: vec![
                        cell(
                            "a",
                            Some(vec![12.0, 2.5]),
                            intervals(vec![bounded(9.5, 14.5), bounded(1.25, 3.75)]),
                        ),
                        cell("b", Some(vec![0.5, 4.0]), intervals(vec![bounded(-2.0, 3.0), unbounded])),
                    ],
                    suppressed_cells: 0,
                    held_cells: 0,
                    noise_sd: noise(vec![Some(1.25), None]),
                },
                ReleasedTable {
                    name: "regions".to_owned(),
                    dimensions: vec!["region".to_owned()],
                    statistics: vec!["count".to_owned()],
                    cells: vec![cell("north", Some(vec![7.0]), intervals(vec![bounded(4.5, 9.5)]))],
                    suppressed_cells: 0,
                    held_cells: 0,
                    noise_sd: noise(vec![Some(1.25)]),
                },
            ],
            dp: dp.then_some(DpSummary {
                rho: 0.02,
                rho_nanos: 24_300_000,
                noise_multiplier: 5.0,
                cells_per_entity: 1,
            }),
        }
    }

    #[test]
    fn dp_csv_follows_each_statistic_with_its_noise() {
        let csv = release_csv(&release(true), false).unwrap();
        assert_eq!(
            csv,
            "table,site,region,count,count_sd,count_lo95,count_hi95,\
             mean(litres),mean(litres)_sd,mean(litres)_lo95,mean(litres)_hi95,suppressed\n\
             fuel,a,,12,1.25,9.5,14.5,2.5,,1.25,3.75,false\n\
             fuel,b,,0.5,1.25,-2,3,4,,,,false\n\
             regions,,north,7,1.25,4.5,9.5,,,,,false\n"
        );
    }

    #[test]
    fn dp_csv_keeps_held_from_last() {
        let header = release_csv(&release(true), true).unwrap().lines().next().unwrap().to_owned();
        assert!(header.ends_with(",mean(litres)_hi95,suppressed,held_from"), "{header}");
    }

    #[test]
    fn dp_parquet_has_nullable_noise_columns() {
        let bytes = release_parquet(&release(true)).unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&bytes).unwrap();
        file.rewind().unwrap();
        let batches: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        assert_eq!(batches.len(), 1);
        let batch = &batches[0];
        let names: Vec<&str> = batch.schema_ref().fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            [
                "table",
                "site",
                "region",
                "count",
                "count_sd",
                "count_lo95",
                "count_hi95",
                "mean(litres)",
                "mean(litres)_sd",
                "mean(litres)_lo95",
                "mean(litres)_hi95",
                "suppressed",
                "held_from",
            ]
        );
        let column = |name: &str| -> Vec<Option<f64>> {
            let field = batch.schema_ref().field_with_name(name).unwrap().clone();
            assert_eq!(field.data_type(), &DataType::Float64, "{name}");
            assert!(field.is_nullable(), "{name}");
            let array = batch.column_by_name(name).unwrap().as_primitive::<Float64Type>();
            (0..array.len()).map(|i| array.is_valid(i).then(|| array.value(i))).collect()
        };
        assert_eq!(column("count"), [Some(12.0), Some(0.5), Some(7.0)]);
        assert_eq!(column("count_sd"), [Some(1.25), Some(1.25), Some(1.25)]);
        assert_eq!(column("count_lo95"), [Some(9.5), Some(-2.0), Some(4.5)]);
        assert_eq!(column("count_hi95"), [Some(14.5), Some(3.0), Some(9.5)]);
        assert_eq!(column("mean(litres)"), [Some(2.5), Some(4.0), None]);
        assert_eq!(column("mean(litres)_sd"), [None, None, None]);
        assert_eq!(column("mean(litres)_lo95"), [Some(1.25), None, None]);
        assert_eq!(column("mean(litres)_hi95"), [Some(3.75), None, None]);
    }

    #[test]
    fn threshold_csv_is_unchanged() {
        let mut release = release(false);
        release.tables[0].cells[1].values = None;
        release.tables[0].suppressed_cells = 1;
        release.tables[1].cells[0].held_from = Some(3);
        assert_eq!(
            release_csv(&release, true).unwrap(),
            "table,site,region,count,mean(litres),suppressed,held_from\n\
             fuel,a,,12,2.5,false,\n\
             fuel,b,,,,true,\n\
             regions,,north,7,,false,3\n"
        );
        // Noise without a DP summary is not a DP release: no extra columns.
        release.tables[0].noise_sd = Some(vec![Some(1.0), None]);
        release.tables[0].cells[0].intervals = Some(vec![bounded(0.0, 1.0), bounded(0.0, 1.0)]);
        let header = release_csv(&release, false).unwrap().lines().next().unwrap().to_owned();
        assert_eq!(header, "table,site,region,count,mean(litres),suppressed");
    }
}
