//! A tenant's own export: a dataset version in clear, as CSV or Parquet that
//! the readers read back to the same contents. The only way clear `entity`
//! and `identifier` values leave the vault.

use std::io::Write;
use std::sync::Arc;

use arrow_array::builder::StringBuilder;
use arrow_array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, TimestampMicrosecondArray};
use arrow_buffer::{BooleanBuffer, Buffer, NullBuffer};
use arrow_schema::{DataType, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::schema::{Classification, ColumnType, Schema};
use crate::store::{DatasetVersion, VaultError};
use crate::table::{Column, ColumnData};
use crate::timestamp::format_timestamp;

/// Write `dataset` as CSV with a header row; returns the rows written.
/// Nulls are empty fields; floats keep a decimal point so they read back as
/// floats.
pub fn export_csv(dataset: &DatasetVersion, out: impl Write) -> Result<u64, VaultError> {
    let failed = |e: csv::Error| VaultError::Export(e.to_string());
    let mut writer = csv::Writer::from_writer(out);
    let schema = dataset.schema();
    writer.write_record(schema.fields.iter().map(|f| f.name.as_str())).map_err(failed)?;
    let all: Vec<usize> = (0..schema.fields.len()).collect();
    let mut record = csv::StringRecord::new();
    let mut written = 0;
    for chunk in 0..dataset.chunk_count() {
        let columns = dataset.read_chunk(chunk, &all)?;
        for row in 0..dataset.chunk_rows(chunk) {
            record.clear();
            for column in &columns {
                if !column.is_valid(row) {
                    record.push_field("");
                    continue;
                }
                match &column.data {
                    ColumnData::Int(v) => record.push_field(&v[row].to_string()),
                    ColumnData::Float(v) => record.push_field(&format!("{:?}", v[row])),
                    ColumnData::Bool(v) => record.push_field(if v[row] { "true" } else { "false" }),
                    ColumnData::Timestamp(v) => record.push_field(&format_timestamp(v[row])),
                    ColumnData::Text { entries, codes } => record.push_field(&entries[codes[row] as usize]),
                }
            }
            writer.write_record(&record).map_err(failed)?;
            written += 1;
        }
    }
    writer.flush().map_err(|e| VaultError::Export(e.to_string()))?;
    Ok(written)
}

/// Write `dataset` as one Parquet file, ZSTD-compressed, a row group per
/// million rows; returns the rows written. Timestamps are UTC microseconds,
/// text plain UTF-8: what pandas, DuckDB and Spark read as they are.
pub fn export_parquet(dataset: &DatasetVersion, out: impl Write + Send) -> Result<u64, VaultError> {
    let failed = |e: parquet::errors::ParquetError| VaultError::Export(e.to_string());
    let schema = Arc::new(arrow_schema(dataset.schema()));
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(1 << 20))
        .build();
    let mut writer = ArrowWriter::try_new(out, schema.clone(), Some(properties)).map_err(failed)?;
    let all: Vec<usize> = (0..schema.fields().len()).collect();
    let mut written = 0;
    for chunk in 0..dataset.chunk_count() {
        let rows = dataset.chunk_rows(chunk);
        let columns = dataset.read_chunk(chunk, &all)?;
        let arrays = columns.into_iter().map(|column| arrow_array(column, rows)).collect();
        let batch =
            RecordBatch::try_new(schema.clone(), arrays).map_err(|e| VaultError::Export(e.to_string()))?;
        writer.write(&batch).map_err(failed)?;
        written += rows as u64;
    }
    writer.into_inner().map_err(failed)?.flush().map_err(|e| VaultError::Export(e.to_string()))?;
    Ok(written)
}

/// The Arrow schema a dataset exports as; only the entity column is never null.
fn arrow_schema(schema: &Schema) -> arrow_schema::Schema {
    let fields = schema.fields.iter().map(|field| {
        let data_type = match field.column_type {
            ColumnType::Int => DataType::Int64,
            ColumnType::Float => DataType::Float64,
            ColumnType::Bool => DataType::Boolean,
            ColumnType::Text => DataType::Utf8,
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        };
        arrow_schema::Field::new(&field.name, data_type, field.classification != Classification::Entity)
    });
    arrow_schema::Schema::new(fields.collect::<Vec<_>>())
}

/// One chunk's column as an Arrow array; the validity bitmaps are the same
/// layout (LSB first, 1 = present), so they move over as they are.
fn arrow_array(column: Column, rows: usize) -> ArrayRef {
    let nulls =
        column.validity.map(|bits| NullBuffer::new(BooleanBuffer::new(Buffer::from_vec(bits), 0, rows)));
    match column.data {
        ColumnData::Int(values) => Arc::new(Int64Array::new(values.into(), nulls)),
        ColumnData::Float(values) => Arc::new(Float64Array::new(values.into(), nulls)),
        ColumnData::Bool(values) => {
            Arc::new(BooleanArray::new(BooleanBuffer::from(values.as_slice()), nulls))
        }
        ColumnData::Timestamp(values) => {
            Arc::new(TimestampMicrosecondArray::new(values.into(), nulls).with_timezone("UTC"))
        }
        ColumnData::Text { entries, codes } => {
            let bytes = codes.iter().map(|&c| entries[c as usize].len()).sum();
            let mut builder = StringBuilder::with_capacity(rows, bytes);
            for (row, &code) in codes.iter().enumerate() {
                match &nulls {
                    Some(nulls) if nulls.is_null(row) => builder.append_null(),
                    _ => builder.append_value(&entries[code as usize]),
                }
            }
            Arc::new(builder.finish())
        }
    }
}
