//! A tenant's own export: a dataset version in clear, as CSV or Parquet that
//! the readers read back to the same contents. The only way clear `entity`
//! and `identifier` values leave the vault.

use std::io::Write;
use std::sync::Arc;

use arrow_array::types::UInt32Type;
use arrow_array::{
    ArrayRef, BooleanArray, DictionaryArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray, UInt32Array,
};
use arrow_buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
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
/// text UTF-8 as each chunk's dictionary and codes (pandas reads it as a
/// categorical, DuckDB and Spark as strings): text is never spelled out row
/// by row, which past 2 GiB in a chunk would overflow Arrow's 32-bit offsets.
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
        let arrays = columns.into_iter().map(|column| arrow_array(column, rows)).collect::<Result<_, _>>()?;
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
            ColumnType::Text => DataType::Dictionary(Box::new(DataType::UInt32), Box::new(DataType::Utf8)),
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        };
        arrow_schema::Field::new(&field.name, data_type, field.classification != Classification::Entity)
    });
    arrow_schema::Schema::new(fields.collect::<Vec<_>>())
}

/// One chunk's column as an Arrow array; the validity bitmaps are the same
/// layout (LSB first, 1 = present), so they move over as they are, and so
/// do a text column's dictionary and codes.
fn arrow_array(column: Column, rows: usize) -> Result<ArrayRef, VaultError> {
    let nulls =
        column.validity.map(|bits| NullBuffer::new(BooleanBuffer::new(Buffer::from_vec(bits), 0, rows)));
    let array: ArrayRef = match column.data {
        ColumnData::Int(values) => Arc::new(Int64Array::new(values.into(), nulls)),
        ColumnData::Float(values) => Arc::new(Float64Array::new(values.into(), nulls)),
        ColumnData::Bool(values) => {
            Arc::new(BooleanArray::new(BooleanBuffer::from(values.as_slice()), nulls))
        }
        ColumnData::Timestamp(values) => {
            Arc::new(TimestampMicrosecondArray::new(values.into(), nulls).with_timezone("UTC"))
        }
        ColumnData::Text { entries, codes } => {
            let (text, ends) = entries.into_parts();
            let failed = |e: arrow_schema::ArrowError| VaultError::Export(e.to_string());
            let offsets = std::iter::once(Ok(0))
                .chain(ends.into_iter().map(i32::try_from))
                .collect::<Result<Vec<i32>, _>>()
                .map_err(|_| {
                    VaultError::Export("a chunk's distinct text values take more than 2 GiB".into())
                })?;
            let values = StringArray::try_new(
                OffsetBuffer::new(ScalarBuffer::from(offsets)),
                Buffer::from_vec(text.into_bytes()),
                None,
            )
            .map_err(failed)?;
            let keys = UInt32Array::new(codes.into(), nulls);
            Arc::new(DictionaryArray::<UInt32Type>::try_new(keys, Arc::new(values)).map_err(failed)?)
        }
    };
    Ok(array)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Field;
    use crate::table::{Table, TableBuilder};
    use crate::{ChunkReader, IngestOptions, InputFormat, open_file, open_stream};
    use crate::{IngestError, Vault, WriteMode};

    /// What a Parquet export holds reads back to the same contents.
    #[test]
    fn a_parquet_export_ingests_back_to_the_same_contents() {
        let csv = "id,when,ok,n,x,label,note\n\
                   A,2024-01-02T03:04:05.5Z,true,-3,2.0,,x\n\
                   B,,false,,1e-7,h\u{e9} \"quoted\",\n\
                   C,0000-01-01,,7,,a,x\n";
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::temporary().unwrap();
        for chunk_rows in [1, 2, 100] {
            let options = IngestOptions { chunk_rows, ..IngestOptions::entity("id") };
            let reader =
                open_stream(InputFormat::Csv, "in.csv", std::io::Cursor::new(csv), &options).unwrap();
            let first = vault.ingest("t", "d", WriteMode::Replace, reader, "in.csv").unwrap();
            let path = dir.path().join("out.parquet");
            let rows = export_parquet(
                &vault.dataset("t", "d", None).unwrap(),
                std::fs::File::create(&path).unwrap(),
            );
            assert_eq!(rows.unwrap(), 3);
            let reader = open_file(&path, None, &options).unwrap();
            let second = vault.ingest("t", "d", WriteMode::Replace, reader, "out.parquet").unwrap();
            assert_eq!(first.schema, second.schema);
            assert_eq!(first.content_hash, second.content_hash, "{chunk_rows} rows a chunk");
        }
    }

    /// One chunk of `rows` rows whose `note` is the same long text each time.
    struct Repeated {
        schema: Schema,
        rows: usize,
        note: String,
        done: bool,
    }

    impl ChunkReader for Repeated {
        fn schema(&self) -> &Schema {
            &self.schema
        }

        fn next_chunk(&mut self) -> Result<Option<Table>, IngestError> {
            if std::mem::replace(&mut self.done, true) {
                return Ok(None);
            }
            let mut builder = TableBuilder::new("", self.schema.clone());
            for row in 0..self.rows {
                builder.push_text(0, &format!("e{row}"));
                builder.push_text(1, &self.note);
                builder.end_row();
            }
            Ok(Some(builder.finish()))
        }
    }

    /// Text that, spelled out row by row, is past what 32-bit offsets reach
    /// in one chunk (the export used to build it so, and panicked).
    #[test]
    fn a_chunk_of_more_than_2_gib_of_text_exports() {
        let text = |name: &str, classification| Field {
            name: name.into(),
            column_type: ColumnType::Text,
            classification,
        };
        let schema = Schema {
            fields: vec![text("id", Classification::Entity), text("note", Classification::Attribute)],
            reference: false,
        };
        let rows = 33_000;
        let note = "n".repeat(1 << 16);
        assert!(rows * note.len() > i32::MAX as usize);
        let vault = Vault::temporary().unwrap();
        let reader = Repeated { schema, rows, note, done: false };
        vault.ingest("t", "d", WriteMode::Replace, Box::new(reader), "long").unwrap();
        let mut out = Vec::new();
        assert_eq!(export_parquet(&vault.dataset("t", "d", None).unwrap(), &mut out).unwrap(), rows as u64);
        assert!(out.len() < 16 << 20, "{} bytes: the note is stored once per page", out.len());
    }
}
