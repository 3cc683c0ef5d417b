//! The one reader of Arrow record batches, for the two columnar inputs:
//! Parquet files (decoded to Arrow by the `parquet` crate) and Arrow IPC
//! (Feather v2 files and IPC streams).
//!
//! Both formats carry their own types, so the schema is read from the file
//! rather than inferred. A column whose Arrow type is the vault column's own
//! is converted whole ranges at a time (`convert`); a value whose column the
//! tenant typed or classified differently (an integer entity column, say)
//! goes through its text form, so the conversion and its errors are the CSV
//! reader's. Memory is bounded by the file's largest row group or record
//! batch, never by the file.

mod convert;
mod ipc;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::io::Read;

use arrow_array::RecordBatch;
use arrow_schema::{ArrowError, DataType};

use self::convert::BatchColumn;
use super::shared::{self, ChunkReader, IngestOptions};
use crate::IngestError;
use crate::quote;
use crate::schema::{ColumnType, Schema};
use crate::table::{Table, TableBuilder};

type Batches = Box<dyn Iterator<Item = Result<RecordBatch, ArrowError>> + Send>;

/// A record batch, ready to convert, partly pushed.
struct PendingBatch {
    /// By column.
    columns: Vec<BatchColumn>,
    /// The columns that go in value by value.
    by_value: Vec<usize>,
    rows: usize,
    next_row: usize,
}

/// Reads Parquet or Arrow IPC, one chunk at a time.
pub struct ArrowReader {
    source: String,
    batches: Batches,
    options: IngestOptions,
    builder: TableBuilder,
    /// The batch being read, if a chunk filled up inside it.
    pending: Option<PendingBatch>,
    /// Data rows in the batches before `pending`.
    rows_before: u64,
}

impl std::fmt::Debug for ArrowReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArrowReader")
            .field("source", &self.source)
            .field("rows_before", &self.rows_before)
            .finish_non_exhaustive()
    }
}

impl ArrowReader {
    /// Read a Parquet file. Parquet keeps its schema in a footer, so it needs
    /// a file, not a stream.
    pub fn parquet(source: &str, file: File, options: &IngestOptions) -> Result<Self, IngestError> {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let invalid = |e: parquet::errors::ParquetError| {
            IngestError::whole(source, format!("not a readable Parquet file: {}", quote::message(&e)))
        };
        let batch_rows = options.chunk_rows.clamp(1, 1 << 16);
        let (schema, batches) = guarded(source, || {
            let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(invalid)?;
            let schema = builder.schema().clone();
            Ok((schema, builder.with_batch_size(batch_rows).build().map_err(invalid)?))
        })?;
        Self::new(source, &schema, Box::new(batches), options)
    }

    /// Read Arrow IPC: a Feather v2 file or an IPC stream.
    pub fn ipc(
        source: &str,
        input: impl Read + Send + 'static,
        options: &IngestOptions,
    ) -> Result<Self, IngestError> {
        let input = ipc::checked_stream(input, options.limits.max_columns)
            .map_err(|e| IngestError::whole(source, format!("cannot read: {e}")))?;
        let reader = guarded(source, || {
            arrow_ipc::reader::StreamReader::try_new(input, None).map_err(|e| {
                IngestError::whole(
                    source,
                    format!("not a readable Arrow IPC file or stream: {}", quote::message(&e)),
                )
            })
        })?;
        let schema = reader.schema();
        Self::new(source, &schema, Box::new(reader), options)
    }

    fn new(
        source: &str,
        arrow_schema: &arrow_schema::Schema,
        batches: Batches,
        options: &IngestOptions,
    ) -> Result<Self, IngestError> {
        let names: Vec<String> = arrow_schema.fields().iter().map(|f| f.name().clone()).collect();
        shared::check_columns(source, names.iter().map(String::as_str), &options.limits)?;
        let mut types = Vec::with_capacity(names.len());
        for field in arrow_schema.fields() {
            let column_type = column_type(field.data_type()).ok_or_else(|| {
                // A nested type's text names its fields: quote only so much.
                let data_type = quote::truncate(&field.data_type().to_string());
                IngestError::whole(
                    source,
                    format!(
                        "its type {data_type} is not one kanon stores (int, float, bool, text, timestamp): \
                         cast or flatten it first"
                    ),
                )
                .in_column(field.name())
            })?;
            types.push(column_type);
        }
        let schema = shared::classify(source, &names, options, |i| types[i])?;
        Ok(Self {
            source: source.to_owned(),
            batches,
            options: options.clone(),
            builder: TableBuilder::new("", schema),
            pending: None,
            rows_before: 0,
        })
    }

    /// `batch`'s columns, each ready to go into its vault column.
    fn prepare(&self, batch: &RecordBatch) -> Result<PendingBatch, IngestError> {
        let fields = &self.builder.schema().fields;
        let mut columns = Vec::with_capacity(batch.num_columns());
        for (i, array) in batch.columns().iter().enumerate() {
            columns.push(BatchColumn::of(array, fields[i].column_type).map_err(|(row, detail)| {
                let data_row = self.rows_before + row as u64 + 1;
                IngestError::at(&self.source, data_row, None, &fields[i].name, detail)
            })?);
        }
        let by_value = (0..columns.len()).filter(|&i| columns[i].by_value()).collect();
        Ok(PendingBatch { columns, by_value, rows: batch.num_rows(), next_row: 0 })
    }

    /// Push `batch`'s rows from its next one until the batch ends or the
    /// chunk is full. Values that go in one at a time (text, and any value
    /// of another type than its column's) go row by row, which finds where
    /// the chunk fills up; the columns of matching types then follow, a range
    /// of rows at once. An error is the one a row-by-row reader would meet
    /// first: the lowest row, and in it the leftmost column.
    fn push_rows(&mut self, batch: &mut PendingBatch) -> Result<(), IngestError> {
        let start = batch.next_row;
        let room = self.options.chunk_rows.max(1).saturating_sub(self.builder.rows());
        let end = batch.rows.min(start + room);
        let limits = &self.options.limits;
        // (row in the batch, column, detail) of the first error met.
        let mut first_error: Option<(usize, usize, String)> = None;
        let mut cut = end;
        'rows: for row in start..end {
            for &i in &batch.by_value {
                if let Err(detail) = batch.columns[i].push_one(&mut self.builder, i, row, limits) {
                    first_error = Some((row, i, detail));
                    cut = row + 1;
                    break 'rows;
                }
            }
            self.builder.end_row();
            if shared::chunk_full(&self.builder, &self.options) {
                cut = row + 1;
                break;
            }
        }
        for (i, column) in batch.columns.iter().enumerate() {
            if let Err((row, detail)) = column.push_range(&mut self.builder, i, start..cut)
                && first_error.as_ref().is_none_or(|&(r, c, _)| (row, i) < (r, c))
            {
                first_error = Some((row, i, detail));
            }
        }
        if let Some((row, i, detail)) = first_error {
            let data_row = self.rows_before + row as u64 + 1;
            let column = &self.builder.schema().fields[i].name;
            return Err(IngestError::at(&self.source, data_row, None, column, detail));
        }
        batch.next_row = cut;
        Ok(())
    }

    /// The chunk built so far; what the pending batch remembers of this
    /// chunk's dictionaries is forgotten.
    fn take_chunk(&mut self) -> Table {
        if let Some(pending) = &mut self.pending {
            pending.columns.iter_mut().for_each(BatchColumn::new_chunk);
        }
        self.builder.take()
    }

    fn read_chunk(&mut self) -> Result<Option<Table>, IngestError> {
        loop {
            let mut batch = match self.pending.take() {
                Some(pending) => pending,
                None => match self.batches.next() {
                    None => break,
                    Some(batch) => {
                        let batch = batch.map_err(|e| {
                            IngestError::whole(
                                &self.source,
                                format!(
                                    "cannot decode the rows after row {}: {}",
                                    self.rows_before,
                                    quote::message(&e)
                                ),
                            )
                        })?;
                        self.prepare(&batch)?
                    }
                },
            };
            self.push_rows(&mut batch)?;
            if batch.next_row < batch.rows {
                self.pending = Some(batch);
                return Ok(Some(self.take_chunk()));
            }
            self.rows_before += batch.rows as u64;
            if shared::chunk_full(&self.builder, &self.options) {
                return Ok(Some(self.take_chunk()));
            }
        }
        if self.builder.rows() > 0 {
            return Ok(Some(self.take_chunk()));
        }
        if self.rows_before == 0 {
            return Err(IngestError::whole(&self.source, "the file is empty: no rows".into()));
        }
        Ok(None)
    }
}

impl ChunkReader for ArrowReader {
    fn schema(&self) -> &Schema {
        self.builder.schema()
    }

    fn next_chunk(&mut self) -> Result<Option<Table>, IngestError> {
        let source = self.source.clone();
        guarded(&source, || self.read_chunk())
    }
}

/// Run `decode`, turning a panic into an error. arrow-rs panics on some
/// malformed files (a buffer slice past its end, a negative offset) where it
/// should return an error; a tenant's broken file must not take the host down.
fn guarded<T>(source: &str, decode: impl FnOnce() -> Result<T, IngestError>) -> Result<T, IngestError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)).unwrap_or_else(|panic| {
        let what = quote::panic_message(&*panic);
        Err(IngestError::whole(
            source,
            format!("the file is malformed: its decoder failed ({})", quote::message(&what)),
        ))
    })
}

/// The column type an Arrow type is stored as; `None` for nested, binary
/// and other types kanon does not store.
fn column_type(data_type: &DataType) -> Option<ColumnType> {
    use DataType as D;
    Some(match data_type {
        D::Int8 | D::Int16 | D::Int32 | D::Int64 | D::UInt8 | D::UInt16 | D::UInt32 | D::UInt64 => {
            ColumnType::Int
        }
        D::Float16 | D::Float32 | D::Float64 | D::Decimal32(..) | D::Decimal64(..) | D::Decimal128(..) => {
            ColumnType::Float
        }
        D::Boolean => ColumnType::Bool,
        D::Utf8 | D::LargeUtf8 | D::Utf8View | D::Null => ColumnType::Text,
        D::Dictionary(_, values) if matches!(**values, D::Utf8 | D::LargeUtf8 | D::Utf8View) => {
            ColumnType::Text
        }
        D::Timestamp(..) | D::Date32 | D::Date64 => ColumnType::Timestamp,
        _ => return None,
    })
}
