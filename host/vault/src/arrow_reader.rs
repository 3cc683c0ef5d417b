//! The one reader of Arrow record batches, for the two columnar inputs:
//! Parquet files (decoded to Arrow by the `parquet` crate) and Arrow IPC
//! (Feather v2 files and IPC streams).
//!
//! Both formats carry their own types, so the schema is read from the file
//! rather than inferred. A value whose column the tenant typed or classified
//! differently (an integer entity column, say) goes through its text form, so
//! the conversion and its errors are the CSV reader's. Memory is bounded by
//! the file's largest row group or record batch, never by the file.

use std::fs::File;
use std::io::{BufReader, Read};

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Date64Type, Decimal32Type, Decimal64Type, Decimal128Type, DecimalType, Float16Type,
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use arrow_array::{
    Array, ArrayRef, BooleanArray, LargeStringArray, RecordBatch, StringArray, StringViewArray,
};
use arrow_buffer::ScalarBuffer;
use arrow_schema::{ArrowError, DataType, TimeUnit};

use crate::IngestError;
use crate::ingest::{self, ChunkReader, IngestOptions, InputLimits};
use crate::schema::{Classification, ColumnType, Schema};
use crate::table::{Table, TableBuilder};
use crate::timestamp::{TIMESTAMP_RANGE, format_timestamp};

type Batches = Box<dyn Iterator<Item = Result<RecordBatch, ArrowError>> + Send>;

/// A record batch, widened, partly pushed.
struct PendingBatch {
    /// By column.
    cells: Vec<Cells>,
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
            IngestError::whole(source, format!("not a readable Parquet file: {}", ingest::message(&e)))
        };
        let batch_rows = options.chunk_rows.clamp(1, 1 << 16);
        let (schema, batches) = guarded(source, || {
            let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(invalid)?;
            let schema = builder.schema().clone();
            Ok((schema, builder.with_batch_size(batch_rows).build().map_err(invalid)?))
        })?;
        Self::new(source, &schema, Box::new(batches), options)
    }

    /// Read Arrow IPC: a Feather v2 file or an IPC stream. A file is its
    /// magic padded with zeros to an 8-byte boundary (or a wider one), a
    /// stream and a footer, so both read as a stream from the start.
    pub fn ipc(
        source: &str,
        input: impl Read + Send + 'static,
        options: &IngestOptions,
    ) -> Result<Self, IngestError> {
        const FILE_MAGIC: &[u8] = b"ARROW1";
        const MAX_PADDING: usize = 64;
        let cannot_read = |e: std::io::Error| IngestError::whole(source, format!("cannot read: {e}"));
        let mut input = BufReader::with_capacity(1 << 20, input);
        // Bytes read ahead, passed on unless they are the magic or padding:
        // a pipe may hand them over a few at a time.
        let mut ahead = read_ahead(&mut input, 8).map_err(cannot_read)?;
        if ahead.starts_with(FILE_MAGIC) {
            let mut skipped = 8;
            ahead = read_ahead(&mut input, 8).map_err(cannot_read)?;
            while skipped < MAX_PADDING && ahead == [0; 8] {
                skipped += 8;
                ahead = read_ahead(&mut input, 8).map_err(cannot_read)?;
            }
        }
        let input = CheckedIpcStream {
            input: std::io::Cursor::new(ahead).chain(input),
            message: Vec::new(),
            served: 0,
            ended: false,
            max_columns: options.limits.max_columns,
        };
        let reader = guarded(source, || {
            arrow_ipc::reader::StreamReader::try_new(input, None).map_err(|e| {
                IngestError::whole(
                    source,
                    format!("not a readable Arrow IPC file or stream: {}", ingest::message(&e)),
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
        ingest::check_columns(source, names.iter().map(String::as_str), &options.limits)?;
        let mut types = Vec::with_capacity(names.len());
        for field in arrow_schema.fields() {
            let column_type = column_type(field.data_type()).ok_or_else(|| {
                // A nested type's text names its fields: quote only so much.
                let data_type = ingest::truncate(&field.data_type().to_string());
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
        let schema = ingest::classify(source, &names, options, |i| types[i])?;
        Ok(Self {
            source: source.to_owned(),
            batches,
            options: options.clone(),
            builder: TableBuilder::new("", schema),
            pending: None,
            rows_before: 0,
        })
    }

    /// Push row `row` of a batch's cells and end it.
    fn push_row(&mut self, cells: &[Cells], row: usize) -> Result<(), IngestError> {
        for (i, cell) in cells.iter().enumerate() {
            if let Err(detail) = push_cell(&mut self.builder, i, cell, row, &self.options.limits) {
                let field = &self.builder.schema().fields[i];
                let data_row = self.rows_before + row as u64 + 1;
                return Err(IngestError::at(&self.source, data_row, None, &field.name, detail));
            }
        }
        self.builder.end_row();
        Ok(())
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

impl ArrowReader {
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
                                    ingest::message(&e)
                                ),
                            )
                        })?;
                        let mut cells = Vec::with_capacity(batch.num_columns());
                        for (i, array) in batch.columns().iter().enumerate() {
                            cells.push(Cells::of(array).map_err(|(row, detail)| {
                                let column = &self.builder.schema().fields[i].name;
                                let data_row = self.rows_before + row as u64 + 1;
                                IngestError::at(&self.source, data_row, None, column, detail)
                            })?);
                        }
                        PendingBatch { cells, rows: batch.num_rows(), next_row: 0 }
                    }
                },
            };
            while batch.next_row < batch.rows {
                self.push_row(&batch.cells, batch.next_row)?;
                batch.next_row += 1;
                if ingest::chunk_full(&self.builder, &self.options) {
                    break;
                }
            }
            if batch.next_row < batch.rows {
                self.pending = Some(batch);
                return Ok(Some(self.builder.take()));
            }
            self.rows_before += batch.rows as u64;
            if ingest::chunk_full(&self.builder, &self.options) {
                return Ok(Some(self.builder.take()));
            }
        }
        if self.builder.rows() > 0 {
            return Ok(Some(self.builder.take()));
        }
        if self.rows_before == 0 {
            return Err(IngestError::whole(&self.source, "the file is empty: no rows".into()));
        }
        Ok(None)
    }
}

/// Most bytes the compressed buffers of one IPC message may declare they
/// hold once decompressed.
const MAX_DECLARED_BYTES: u64 = 1 << 30;

/// Most rows one IPC record batch (or dictionary batch) may declare. The
/// reader widens each column of a batch to 8 bytes a row or more (an i64,
/// an f64, a dictionary key), so a batch this long already takes
/// [`MAX_DECLARED_BYTES`] a column; a column of Arrow's Null type holds no
/// buffers, so nothing else bounds what its header declares.
const MAX_BATCH_ROWS: i64 = (MAX_DECLARED_BYTES / 8) as i64;

/// An Arrow IPC stream passed on one message at a time, each checked first:
/// arrow-ipc allocates a compressed buffer's declared decompressed size as
/// given, and an allocation that fails aborts the process.
struct CheckedIpcStream<R> {
    input: R,
    /// The message being passed on: its framing, metadata and body.
    message: Vec<u8>,
    served: usize,
    /// Past the end-of-stream marker (a file's footer follows it).
    ended: bool,
    /// Most fields the schema may have: refused before arrow-ipc decodes it.
    max_columns: usize,
}

impl<R: Read> Read for CheckedIpcStream<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.served == self.message.len() {
            if self.ended {
                return Ok(0);
            }
            self.next_message()?;
        }
        let n = out.len().min(self.message.len() - self.served);
        out[..n].copy_from_slice(&self.message[self.served..self.served + n]);
        self.served += n;
        Ok(n)
    }
}

impl<R: Read> CheckedIpcStream<R> {
    fn next_message(&mut self) -> std::io::Result<()> {
        let invalid = |detail: String| std::io::Error::new(std::io::ErrorKind::InvalidData, detail);
        self.message.clear();
        self.served = 0;
        // A length, after a continuation marker unless the stream predates it.
        let mut length = self.read_u32()?;
        if length == Some(u32::MAX) {
            length = self.read_u32()?;
        }
        let Some(length) = length.filter(|&l| l != 0) else {
            self.ended = true;
            return Ok(());
        };
        self.read_exactly(u64::from(length))?;
        // A copy: flatbuffers wants the metadata at an aligned start.
        let metadata = self.message[self.message.len() - length as usize..].to_vec();
        let message =
            arrow_ipc::root_as_message(&metadata).map_err(|e| invalid(format!("bad message header: {e}")))?;
        let columns = message.header_as_schema().and_then(|s| s.fields()).map_or(0, |f| f.len());
        if columns > self.max_columns {
            return Err(invalid(format!(
                "the schema has {columns} columns, over the limit of {}",
                self.max_columns
            )));
        }
        let batch = message
            .header_as_record_batch()
            .or_else(|| message.header_as_dictionary_batch().and_then(|d| d.data()));
        if let Some(rows) = batch.map(|b| b.length())
            && !(0..=MAX_BATCH_ROWS).contains(&rows)
        {
            return Err(invalid(format!(
                "a record batch declares {rows} rows, outside the limit of 0 to {MAX_BATCH_ROWS}: \
                 write it in smaller batches"
            )));
        }
        let compressed = batch.is_some_and(|b| b.compression().is_some());
        let buffers: Vec<(i64, i64)> =
            batch.and_then(|b| b.buffers()).into_iter().flatten().map(|b| (b.offset(), b.length())).collect();
        let body_length =
            u64::try_from(message.bodyLength()).map_err(|_| invalid("negative body length".into()))?;
        let body_start = self.message.len();
        self.read_exactly(body_length)?;
        if compressed {
            let body = &self.message[body_start..];
            let declared: u64 = buffers
                .iter()
                .filter_map(|&(offset, length)| {
                    let start = usize::try_from(offset).ok()?;
                    let prefix = body.get(start..start.checked_add(8)?).filter(|_| length >= 8)?;
                    // -1 marks a buffer stored uncompressed.
                    u64::try_from(i64::from_le_bytes(prefix.try_into().expect("8 bytes"))).ok()
                })
                .fold(0, u64::saturating_add);
            if declared > MAX_DECLARED_BYTES {
                return Err(invalid(format!(
                    "a record batch declares {declared} bytes once decompressed, over the limit of {MAX_DECLARED_BYTES}"
                )));
            }
        }
        Ok(())
    }

    /// The next 4 bytes as a little-endian u32, also kept in `message`;
    /// `None` if the stream ends cleanly before a message.
    fn read_u32(&mut self) -> std::io::Result<Option<u32>> {
        let start = self.message.len();
        (&mut self.input).take(4).read_to_end(&mut self.message)?;
        match &self.message[start..] {
            [] if start == 0 => Ok(None),
            &[a, b, c, d] => Ok(Some(u32::from_le_bytes([a, b, c, d]))),
            _ => Err(cut_short()),
        }
    }

    /// Read `n` bytes onto `message`. It grows as bytes arrive, so a length
    /// that lies costs no more than the file holds.
    fn read_exactly(&mut self, n: u64) -> std::io::Result<()> {
        let start = self.message.len();
        (&mut self.input).take(n).read_to_end(&mut self.message)?;
        if ((self.message.len() - start) as u64) < n {
            return Err(cut_short());
        }
        Ok(())
    }
}

/// The next `n` bytes of `input`, fewer only at its end.
fn read_ahead(input: &mut impl Read, n: u64) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    input.take(n).read_to_end(&mut out)?;
    Ok(out)
}

/// Not `UnexpectedEof`: arrow-ipc takes that, met at a message's start, for
/// the stream's end, and the truncation would go unnoticed.
fn cut_short() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, "the stream ends inside a message")
}

/// Run `decode`, turning a panic into an error. arrow-rs panics on some
/// malformed files (a buffer slice past its end, a negative offset) where it
/// should return an error; a tenant's broken file must not take the host down.
fn guarded<T>(source: &str, decode: impl FnOnce() -> Result<T, IngestError>) -> Result<T, IngestError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)).unwrap_or_else(|panic| {
        let what = ingest::panic_message(&*panic);
        Err(IngestError::whole(
            source,
            format!("the file is malformed: its decoder failed ({})", ingest::message(&what)),
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

/// One batch column's values, widened to the vault's types, with its nulls.
struct Cells {
    values: Values,
    nulls: Option<arrow_buffer::NullBuffer>,
}

/// A column's values, widened only where that loses nothing: a value that
/// goes into a column of another type (an entity, say) is converted from
/// what the file holds.
enum Values {
    Int(Vec<i64>),
    /// Whether a value fits an int column is known only once pushed there.
    UInt64(ScalarBuffer<u64>),
    /// 16- and 64-bit floats.
    Float(Vec<f64>),
    /// As text, `1.1` stays `1.1`, not its f64 widening `1.100000023841858`.
    Float32(ScalarBuffer<f32>),
    /// Unscaled values: an f64 would merge two 20-digit identifiers.
    Decimal {
        values: Vec<i128>,
        scale: i8,
    },
    Bool(BooleanArray),
    /// Microseconds since the epoch.
    Timestamp(Vec<i64>),
    Text(Text),
    /// Arrow's all-null type.
    Null,
}

enum Text {
    Utf8(StringArray),
    Large(LargeStringArray),
    View(StringViewArray),
    Dictionary { keys: Vec<usize>, values: Box<Text> },
}

impl Text {
    /// The text of `array`, or `None` for a dictionary column with an empty
    /// dictionary: every row of it is null (arrow-rs asserts on its keys).
    fn of(array: &ArrayRef) -> Result<Option<Self>, (usize, String)> {
        Ok(Some(match array.data_type() {
            DataType::Utf8 => Self::Utf8(array.as_string::<i32>().clone()),
            DataType::LargeUtf8 => Self::Large(array.as_string::<i64>().clone()),
            DataType::Utf8View => Self::View(array.as_string_view().clone()),
            DataType::Dictionary(..) => {
                let dictionary = array.as_any_dictionary();
                if dictionary.values().is_empty() {
                    let keys = dictionary.keys();
                    return match (0..keys.len()).find(|&row| keys.is_valid(row)) {
                        None => Ok(None),
                        Some(row) => {
                            Err((row, "the value's dictionary key points into an empty dictionary".into()))
                        }
                    };
                }
                let values =
                    Self::of(dictionary.values())?.expect("a dictionary's values are not a dictionary");
                Self::Dictionary { keys: dictionary.normalized_keys(), values: Box::new(values) }
            }
            other => unreachable!("column_type admitted {other} as text"),
        }))
    }

    fn value(&self, row: usize) -> &str {
        match self {
            Self::Utf8(a) => a.value(row),
            Self::Large(a) => a.value(row),
            Self::View(a) => a.value(row),
            Self::Dictionary { keys, values } => values.value(keys[row]),
        }
    }
}

impl Cells {
    /// Widen `array`, a column whose type [`column_type`] admitted; an
    /// error names the row (0-based) of a value that does not fit.
    fn of(array: &ArrayRef) -> Result<Self, (usize, String)> {
        // Not through logical_nulls(): for Arrow's Null type it allocates a
        // bitmap as long as the batch declares.
        if array.data_type() == &DataType::Null {
            return Ok(Self { values: Values::Null, nulls: None });
        }
        let nulls = array.logical_nulls();
        let present = |row: usize| nulls.as_ref().is_none_or(|n| n.is_valid(row));
        macro_rules! ints {
            ($t:ty) => {
                Values::Int(array.as_primitive::<$t>().values().iter().map(|&v| i64::from(v)).collect())
            };
        }
        macro_rules! micros {
            ($t:ty, $per_unit:expr) => {{
                let values = array.as_primitive::<$t>().values();
                let mut out = Vec::with_capacity(values.len());
                for (row, &v) in values.iter().enumerate() {
                    let scaled = i64::from(v).checked_mul($per_unit);
                    match scaled {
                        Some(us) => out.push(us),
                        None if present(row) => return Err((row, format!("timestamp {v} is out of range"))),
                        None => out.push(0),
                    }
                }
                Values::Timestamp(out)
            }};
        }
        macro_rules! decimals {
            ($t:ty, $scale:expr) => {
                Values::Decimal {
                    values: array.as_primitive::<$t>().values().iter().map(|&v| i128::from(v)).collect(),
                    scale: $scale,
                }
            };
        }
        use DataType as D;
        let values = match array.data_type() {
            D::Int8 => ints!(Int8Type),
            D::Int16 => ints!(Int16Type),
            D::Int32 => ints!(Int32Type),
            D::Int64 => ints!(Int64Type),
            D::UInt8 => ints!(UInt8Type),
            D::UInt16 => ints!(UInt16Type),
            D::UInt32 => ints!(UInt32Type),
            D::UInt64 => Values::UInt64(array.as_primitive::<UInt64Type>().values().clone()),
            D::Float16 => Values::Float(
                array.as_primitive::<Float16Type>().values().iter().map(|&v| v.into()).collect(),
            ),
            D::Float32 => Values::Float32(array.as_primitive::<Float32Type>().values().clone()),
            D::Float64 => Values::Float(array.as_primitive::<Float64Type>().values().to_vec()),
            D::Decimal32(_, scale) => decimals!(Decimal32Type, *scale),
            D::Decimal64(_, scale) => decimals!(Decimal64Type, *scale),
            D::Decimal128(_, scale) => decimals!(Decimal128Type, *scale),
            D::Boolean => Values::Bool(array.as_boolean().clone()),
            D::Timestamp(TimeUnit::Second, _) => micros!(TimestampSecondType, 1_000_000),
            D::Timestamp(TimeUnit::Millisecond, _) => micros!(TimestampMillisecondType, 1_000),
            D::Timestamp(TimeUnit::Microsecond, _) => micros!(TimestampMicrosecondType, 1),
            D::Timestamp(TimeUnit::Nanosecond, _) => Values::Timestamp(
                array
                    .as_primitive::<TimestampNanosecondType>()
                    .values()
                    .iter()
                    .map(|v| v.div_euclid(1_000))
                    .collect(),
            ),
            D::Date32 => micros!(Date32Type, 86_400_000_000),
            D::Date64 => micros!(Date64Type, 1_000),
            D::Null => unreachable!("handled above"),
            _ => Text::of(array)?.map_or(Values::Null, Values::Text),
        };
        Ok(Self { values, nulls })
    }
}

/// Push row `row` of `cells` into column `i`. A value of the column's own
/// type goes in as it is; any other through its text form, as CSV would.
fn push_cell(
    builder: &mut TableBuilder,
    i: usize,
    cells: &Cells,
    row: usize,
    limits: &InputLimits,
) -> Result<(), String> {
    let field = &builder.schema().fields[i];
    let entity = field.classification == Classification::Entity;
    // NaN is how pandas writes a missing float.
    let nan = match &cells.values {
        Values::Float(v) => v[row].is_nan(),
        Values::Float32(v) => v[row].is_nan(),
        _ => false,
    };
    if nan || matches!(cells.values, Values::Null) || cells.nulls.as_ref().is_some_and(|n| n.is_null(row)) {
        if entity {
            return Err("the entity column is empty".into());
        }
        builder.push_null(i);
        return Ok(());
    }
    // A decimal goes into an int column exactly, or through its text (and
    // its error).
    let decimal_int = match (&cells.values, field.column_type) {
        (Values::Decimal { values, scale }, ColumnType::Int) => decimal_to_int(values[row], *scale),
        _ => None,
    };
    match (&cells.values, field.column_type) {
        (Values::Int(v), ColumnType::Int) => builder.push_i64(i, v[row]),
        (Values::UInt64(v), ColumnType::Int) => {
            let v = v[row];
            builder.push_i64(i, i64::try_from(v).map_err(|_| format!("{v} does not fit a 64-bit int"))?)
        }
        (Values::Decimal { .. }, ColumnType::Int) if decimal_int.is_some() => {
            builder.push_i64(i, decimal_int.expect("checked"))
        }
        (Values::Timestamp(v), ColumnType::Timestamp) => {
            // What the CSV reader could not read back from an export.
            let v = v[row];
            if !TIMESTAMP_RANGE.contains(&v) {
                return Err(format!(
                    "timestamp {} is outside the years 0000 to 9999",
                    ingest::truncate(&format_timestamp(v))
                ));
            }
            builder.push_i64(i, v)
        }
        (Values::Bool(v), ColumnType::Bool) => builder.push_bool(i, v.value(row)),
        (Values::Float(v), ColumnType::Float) if v[row].is_finite() => builder.push_f64(i, v[row]),
        (Values::Float32(v), ColumnType::Float) if v[row].is_finite() => builder.push_f64(i, v[row].into()),
        (Values::Decimal { values, scale }, ColumnType::Float) => {
            builder.push_f64(i, values[row] as f64 / 10f64.powi(i32::from(*scale)))
        }
        (Values::Text(t), ColumnType::Text) => {
            let value = t.value(row);
            ingest::check_field(value, limits)?;
            // Trimmed, as the CSV reader trims.
            let value = value.trim();
            if entity && value.is_empty() {
                return Err("the entity column is empty".into());
            }
            builder.push_text(i, value)
        }
        (values, _) => {
            let text = match values {
                Values::Int(v) => v[row].to_string(),
                Values::UInt64(v) => v[row].to_string(),
                Values::Float(v) => v[row].to_string(),
                Values::Float32(v) => v[row].to_string(),
                Values::Decimal { values, scale } => Decimal128Type::format_decimal(values[row], 38, *scale),
                Values::Bool(v) => v.value(row).to_string(),
                Values::Timestamp(v) => format_timestamp(v[row]),
                Values::Text(t) => t.value(row).to_owned(),
                Values::Null => unreachable!("handled above"),
            };
            return ingest::push_text_value(builder, i, &text, limits);
        }
    }
    Ok(())
}

/// The unscaled decimal `value` as an int, if it is a whole number that fits.
fn decimal_to_int(value: i128, scale: i8) -> Option<i64> {
    let power = 10i128.checked_pow(u32::from(scale.unsigned_abs()))?;
    let whole =
        if scale >= 0 { (value % power == 0).then(|| value / power)? } else { value.checked_mul(power)? };
    i64::try_from(whole).ok()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::types::UInt32Type;
    use arrow_array::{
        DictionaryArray, Float32Array, Int32Array, ListArray, NullArray, TimestampNanosecondArray,
        UInt64Array,
    };
    use arrow_schema::{Field, Schema as ArrowSchema};
    use parquet::arrow::ArrowWriter;
    use parquet::basic::{Compression, GzipLevel, ZstdLevel};
    use parquet::file::properties::WriterProperties;

    use super::*;
    use crate::CsvReader;
    use crate::ingest::InputFormat;
    use crate::table::ColumnData;

    /// Three batches of every admitted type, some of them null.
    fn batches() -> Vec<RecordBatch> {
        let schema = Arc::new(ArrowSchema::new(vec![
            Field::new("customer", DataType::Int32, false),
            Field::new(
                "segment",
                DataType::Dictionary(Box::new(DataType::UInt32), Box::new(DataType::Utf8)),
                true,
            ),
            Field::new("visits", DataType::UInt64, true),
            Field::new("spend", DataType::Float32, true),
            Field::new("amount", DataType::Decimal128(10, 2), true),
            Field::new("seen", DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())), true),
            Field::new("day", DataType::Date32, true),
            Field::new("member", DataType::Boolean, true),
            Field::new("city", DataType::LargeUtf8, true),
            Field::new("note", DataType::Utf8View, true),
            Field::new("unused", DataType::Null, true),
        ]));
        (0..3)
            .map(|b| {
                let rows = 0..4i32;
                let ids: Vec<i32> = rows.clone().map(|r| b * 4 + r).collect();
                let columns: Vec<ArrayRef> = vec![
                    Arc::new(Int32Array::from(ids.clone())),
                    Arc::new(DictionaryArray::<UInt32Type>::new(
                        vec![Some(1), None, Some(0), Some(1)].into(),
                        Arc::new(StringArray::from(vec!["retail", "business"])),
                    )),
                    Arc::new(UInt64Array::from(vec![Some(1), None, Some(u64::from(u32::MAX)), Some(3)])),
                    Arc::new(Float32Array::from(vec![Some(1.5), Some(f32::NAN), None, Some(-2.25)])),
                    Arc::new(
                        arrow_array::Decimal128Array::from(vec![Some(12345), None, Some(-5), Some(0)])
                            .with_precision_and_scale(10, 2)
                            .unwrap(),
                    ),
                    Arc::new(
                        TimestampNanosecondArray::from(vec![Some(1_500), Some(-1_500), None, Some(0)])
                            .with_timezone("UTC"),
                    ),
                    Arc::new(arrow_array::Date32Array::from(vec![Some(1), None, Some(-1), Some(0)])),
                    Arc::new(BooleanArray::from(vec![Some(true), Some(false), None, Some(true)])),
                    Arc::new(LargeStringArray::from(vec![Some("Delft"), None, Some(""), Some("Delft")])),
                    Arc::new(StringViewArray::from(vec![
                        Some("a rather long note, not inlined"),
                        None,
                        Some("x"),
                        None,
                    ])),
                    Arc::new(NullArray::new(4)),
                ];
                RecordBatch::try_new(schema.clone(), columns).unwrap()
            })
            .collect()
    }

    fn options(chunk_rows: usize) -> IngestOptions {
        IngestOptions { chunk_rows, ..IngestOptions::entity("customer") }
    }

    fn parquet_file(batches: &[RecordBatch], compression: Compression) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        let properties = WriterProperties::builder().set_compression(compression).build();
        let mut writer =
            ArrowWriter::try_new(file.reopen().unwrap(), batches[0].schema(), Some(properties)).unwrap();
        for batch in batches {
            writer.write(batch).unwrap();
        }
        writer.close().unwrap();
        file
    }

    fn ipc_bytes(batches: &[RecordBatch], file_format: bool) -> Vec<u8> {
        ipc_bytes_compressed(batches, file_format, Some(arrow_ipc::CompressionType::LZ4_FRAME))
    }

    fn ipc_bytes_compressed(
        batches: &[RecordBatch],
        file_format: bool,
        compression: Option<arrow_ipc::CompressionType>,
    ) -> Vec<u8> {
        use arrow_ipc::writer::{FileWriter, IpcWriteOptions, StreamWriter};
        let options = IpcWriteOptions::default().try_with_compression(compression).unwrap();
        let mut out = Vec::new();
        if file_format {
            let mut writer =
                FileWriter::try_new_with_options(&mut out, &batches[0].schema(), options).unwrap();
            batches.iter().for_each(|b| writer.write(b).unwrap());
            writer.finish().unwrap();
        } else {
            let mut writer =
                StreamWriter::try_new_with_options(&mut out, &batches[0].schema(), options).unwrap();
            batches.iter().for_each(|b| writer.write(b).unwrap());
            writer.finish().unwrap();
        }
        out
    }

    fn read_all(reader: &mut dyn ChunkReader) -> Result<Vec<Table>, IngestError> {
        let mut tables = Vec::new();
        while let Some(table) = reader.next_chunk()? {
            tables.push(table);
        }
        Ok(tables)
    }

    #[test]
    fn every_format_and_codec_reads_the_same_typed_rows() {
        let batches = batches();
        let mut inputs: Vec<(String, Box<dyn ChunkReader>)> = Vec::new();
        for compression in [
            Compression::UNCOMPRESSED,
            Compression::SNAPPY,
            Compression::ZSTD(ZstdLevel::default()),
            Compression::LZ4_RAW,
            Compression::GZIP(GzipLevel::default()),
        ] {
            let file = parquet_file(&batches, compression);
            let reader = ArrowReader::parquet("in.parquet", file.reopen().unwrap(), &options(5)).unwrap();
            inputs.push((format!("parquet {compression:?}"), Box::new(reader)));
        }
        for file_format in [true, false] {
            let bytes = ipc_bytes(&batches, file_format);
            let reader = ArrowReader::ipc("in.arrow", std::io::Cursor::new(bytes), &options(5)).unwrap();
            inputs.push((format!("ipc file={file_format}"), Box::new(reader)));
        }
        for (name, mut reader) in inputs {
            let types: Vec<_> = reader.schema().fields.iter().map(|f| f.column_type).collect();
            use ColumnType::*;
            assert_eq!(
                types,
                [Text, Text, Int, Float, Float, Timestamp, Timestamp, Bool, Text, Text, Text],
                "{name}"
            );
            let tables = read_all(&mut *reader).unwrap();
            assert_eq!(tables.iter().map(|t| t.rows).collect::<Vec<_>>(), [5, 5, 2], "{name}: cut at 5 rows");
            let first = &tables[0];
            let ColumnData::Text { entries, codes } = &first.columns[0].data else { panic!() };
            assert_eq!(entries, &["0", "1", "2", "3", "4"], "{name}: an int entity is stored as text");
            assert_eq!(codes, &[0, 1, 2, 3, 4]);
            let ColumnData::Text { entries, codes } = &first.columns[1].data else { panic!() };
            assert_eq!(entries, &["business", "", "retail"], "{name}");
            assert_eq!(codes, &[0, 1, 2, 0, 0], "{name}");
            assert!(!first.columns[1].is_valid(1));
            assert_eq!(first.columns[2].data, ColumnData::Int(vec![1, 0, 4_294_967_295, 3, 1]), "{name}");
            assert_eq!(first.columns[3].data, ColumnData::Float(vec![1.5, 0.0, 0.0, -2.25, 1.5]), "{name}");
            assert!(!first.columns[3].is_valid(1) && !first.columns[3].is_valid(2), "{name}: NaN is a null");
            assert_eq!(
                first.columns[4].data,
                ColumnData::Float(vec![123.45, 0.0, -0.05, 0.0, 123.45]),
                "{name}"
            );
            assert_eq!(
                first.columns[5].data,
                ColumnData::Timestamp(vec![1, -2, 0, 0, 1]),
                "{name}: ns floor to µs"
            );
            assert_eq!(
                first.columns[6].data,
                ColumnData::Timestamp(vec![86_400_000_000, 0, -86_400_000_000, 0, 86_400_000_000]),
                "{name}"
            );
            assert_eq!(
                first.columns[7].data,
                ColumnData::Bool(vec![true, false, false, true, true]),
                "{name}"
            );
            let ColumnData::Text { entries, .. } = &first.columns[8].data else { panic!() };
            assert_eq!(entries, &["Delft", ""], "{name}: a null and the empty value share an entry");
            assert!(first.columns[8].is_valid(2) && !first.columns[8].is_valid(1), "{name}: \"\" is a value");
            assert!((0..5).all(|r| !first.columns[10].is_valid(r)), "{name}");
        }
    }

    #[test]
    fn a_type_the_tenant_gives_converts_through_text() {
        let options = IngestOptions {
            types: vec![("visits".into(), ColumnType::Float), ("member".into(), ColumnType::Text)],
            identifiers: vec!["spend".into()],
            ..options(100)
        };
        let bytes = ipc_bytes(&batches(), false);
        let mut reader = ArrowReader::ipc("in.arrows", std::io::Cursor::new(bytes), &options).unwrap();
        let table = reader.next_chunk().unwrap().unwrap();
        assert_eq!(table.columns[2].data, ColumnData::Float([1.0, 0.0, 4_294_967_295.0, 3.0].repeat(3)));
        let ColumnData::Text { entries, .. } = &table.columns[3].data else {
            panic!("an identifier is text")
        };
        assert_eq!(entries, &["1.5", "", "-2.25"]);
        let ColumnData::Text { entries, .. } = &table.columns[7].data else { panic!() };
        assert_eq!(entries, &["true", "false", ""]);

        let options = IngestOptions { types: vec![("city".into(), ColumnType::Int)], ..options };
        let bytes = ipc_bytes(&batches(), true);
        let mut reader = ArrowReader::ipc("in.arrow", std::io::Cursor::new(bytes), &options).unwrap();
        let err = reader.next_chunk().unwrap_err().to_string();
        assert_eq!(err, "in.arrow, row 1, column `city`: expected int, found `Delft`");
    }

    fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        RecordBatch::try_from_iter(columns).unwrap()
    }

    /// Arrow text is trimmed as CSV text is: a whitespace entity is empty.
    #[test]
    fn arrow_text_is_trimmed_as_csv_text_is() {
        let padded = batch(vec![
            ("customer", Arc::new(StringArray::from(vec![" a", "a ", "b"]))),
            ("city", Arc::new(LargeStringArray::from(vec![" Delft ", "Delft", "Leiden\t"]))),
            (
                "note",
                Arc::new(DictionaryArray::<UInt32Type>::new(
                    vec![0, 0, 1].into(),
                    Arc::new(StringArray::from(vec![" x ", "y"])),
                )),
            ),
        ]);
        let csv = "customer,city,note\n a, Delft , x \na ,Delft, x \nb,Leiden\t,y\n";
        let expected = CsvReader::new("in.csv", csv.as_bytes(), &options(100)).unwrap().next_chunk().unwrap();
        let expected = expected.unwrap().columns;
        let text = |data: &ColumnData| match data {
            ColumnData::Text { entries, codes } => {
                (entries.iter().map(str::to_owned).collect(), codes.clone())
            }
            other => panic!("{other:?}"),
        };
        for file_format in [true, false] {
            let bytes = ipc_bytes(std::slice::from_ref(&padded), file_format);
            let tables = ArrowReader::ipc("in.arrow", std::io::Cursor::new(bytes), &options(100))
                .and_then(|mut reader| read_all(&mut reader))
                .unwrap();
            let columns = &tables[0].columns;
            let (entries, codes): (Vec<String>, Vec<u32>) = text(&columns[0].data);
            assert_eq!((entries, codes), (vec!["a".to_owned(), "b".into()], vec![0, 0, 1]), "one entity");
            for (column, expected) in columns.iter().zip(&expected) {
                assert_eq!(text(&column.data), text(&expected.data), "as CSV reads it");
            }
        }
        let blank = batch(vec![("customer", Arc::new(StringArray::from(vec!["a", " \t "])))]);
        let bytes = ipc_bytes(&[blank], false);
        let err = ArrowReader::ipc("in.arrow", std::io::Cursor::new(bytes), &options(100))
            .and_then(|mut reader| read_all(&mut reader))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "in.arrow, row 2, column `customer`: the entity column is empty");
    }

    /// A timestamp the CSV reader could not read back from an export (its
    /// year has more or fewer than four digits) is refused, as from CSV.
    #[test]
    fn a_timestamp_outside_the_years_0000_to_9999_is_refused() {
        let (first, last) = (*TIMESTAMP_RANGE.start(), *TIMESTAMP_RANGE.end());
        let read = |seen: Vec<i64>| {
            let ids: Vec<String> = (0..seen.len()).map(|i| format!("c{i}")).collect();
            let seen = arrow_array::TimestampMicrosecondArray::from(seen).with_timezone("UTC");
            let bytes = ipc_bytes(
                &[batch(vec![("customer", Arc::new(StringArray::from(ids))), ("seen", Arc::new(seen))])],
                true,
            );
            ArrowReader::ipc("in.arrow", std::io::Cursor::new(bytes), &options(100))
                .and_then(|mut reader| read_all(&mut reader))
        };
        let tables = read(vec![first, 0, last]).unwrap();
        assert_eq!(tables[0].columns[1].data, ColumnData::Timestamp(vec![first, 0, last]));
        let err = read(vec![0, last + 1]).unwrap_err().to_string();
        assert_eq!(
            err,
            "in.arrow, row 2, column `seen`: timestamp 10000-01-01T00:00:00Z is outside the years 0000 to 9999"
        );
        let err = read(vec![first - 1]).unwrap_err().to_string();
        assert!(err.starts_with("in.arrow, row 1, column `seen`: timestamp "), "{err}");
        assert!(err.ends_with(" is outside the years 0000 to 9999"), "{err}");
    }

    /// Entity and identifier values are the file's own, not their f64
    /// widening; whether a value fits is asked only of an int or float column.
    #[test]
    fn an_identifier_keeps_the_value_the_file_holds() {
        let decimal = |values: Vec<i128>, scale: i8| -> ArrayRef {
            Arc::new(arrow_array::Decimal128Array::from(values).with_precision_and_scale(20, scale).unwrap())
        };
        let wide = batch(vec![
            // Equal as f64: two entities would merge.
            ("customer", decimal(vec![12_345_678_901_234_567_890, 12_345_678_901_234_567_891], 0)),
            ("account", Arc::new(UInt64Array::from(vec![u64::MAX, 7]))),
            ("score", Arc::new(Float32Array::from(vec![1.1, 2.5]))),
            ("units", decimal(vec![10_000, 900_719_925_474_099_300], 2)),
            ("visits", Arc::new(UInt64Array::from(vec![u64::MAX, 7]))),
        ]);
        let typed = IngestOptions {
            identifiers: vec!["account".into(), "score".into()],
            types: vec![("units".into(), ColumnType::Int), ("visits".into(), ColumnType::Float)],
            ..options(100)
        };
        let parquet = parquet_file(std::slice::from_ref(&wide), Compression::SNAPPY);
        let mut inputs: Vec<(String, Box<dyn ChunkReader>)> = vec![(
            "parquet".into(),
            Box::new(ArrowReader::parquet("in.parquet", parquet.reopen().unwrap(), &typed).unwrap()),
        )];
        for file_format in [true, false] {
            let bytes = ipc_bytes(std::slice::from_ref(&wide), file_format);
            let reader = ArrowReader::ipc("in.arrow", std::io::Cursor::new(bytes), &typed).unwrap();
            inputs.push((format!("ipc file={file_format}"), Box::new(reader)));
        }
        for (name, mut reader) in inputs {
            let table = read_all(&mut *reader).unwrap_or_else(|e| panic!("{name}: {e}")).remove(0);
            let text = |column: usize| match &table.columns[column].data {
                ColumnData::Text { entries, .. } => entries.iter().map(str::to_owned).collect::<Vec<_>>(),
                other => panic!("{name}: {other:?}"),
            };
            assert_eq!(text(0), ["12345678901234567890", "12345678901234567891"], "{name}");
            assert_eq!(text(1), ["18446744073709551615", "7"], "{name}");
            assert_eq!(text(2), ["1.1", "2.5"], "{name}");
            assert_eq!(table.columns[3].data, ColumnData::Int(vec![100, 9_007_199_254_740_993]), "{name}");
            assert_eq!(table.columns[4].data, ColumnData::Float(vec![u64::MAX as f64, 7.0]), "{name}");
        }

        let fraction = batch(vec![
            ("customer", Arc::new(StringArray::from(vec!["a", "b"]))),
            ("units", decimal(vec![100, 12_345], 2)),
        ]);
        let units = IngestOptions { types: vec![("units".into(), ColumnType::Int)], ..options(100) };
        let bytes = ipc_bytes(&[fraction], false);
        let err = ArrowReader::ipc("in.arrow", std::io::Cursor::new(bytes), &units)
            .and_then(|mut reader| read_all(&mut reader))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "in.arrow, row 2, column `units`: expected int, found `123.45`");
    }

    #[test]
    fn bad_input_names_the_file_row_and_column() {
        let ids = || -> ArrayRef { Arc::new(StringArray::from(vec!["a", "b", "c"])) };
        let list = ListArray::from_iter_primitive::<Int32Type, _, _>(vec![Some(vec![Some(1)]), None, None]);
        let cases: Vec<(RecordBatch, &str)> = vec![
            (
                batch(vec![("customer", ids()), ("tags", Arc::new(list))]),
                "in.arrow, column `tags`: its type List(Int32) is not one kanon stores",
            ),
            (
                batch(vec![("customer", ids()), ("n", Arc::new(UInt64Array::from(vec![1, 2, u64::MAX])))]),
                "in.arrow, row 3, column `n`: 18446744073709551615 does not fit a 64-bit int",
            ),
            (
                batch(vec![("customer", Arc::new(StringArray::from(vec![Some("a"), None, Some("c")])))]),
                "in.arrow, row 2, column `customer`: the entity column is empty",
            ),
            (
                batch(vec![("customer", Arc::new(StringArray::from(vec!["a", "b", ""])))]),
                "in.arrow, row 3, column `customer`: the entity column is empty",
            ),
            (
                batch(vec![
                    ("customer", ids()),
                    ("x", Arc::new(arrow_array::Float64Array::from(vec![1.0, f64::INFINITY, 2.0]))),
                ]),
                "in.arrow, row 2, column `x`: expected float, found `inf`",
            ),
            (
                batch(vec![("customer", ids()), ("customer", ids())]),
                "in.arrow, column `customer`: the column name appears twice",
            ),
            (batch(vec![("id", ids())]), "in.arrow, column `customer`: no such column; the columns are: id"),
            (
                batch(vec![("customer", Arc::new(StringArray::from(Vec::<&str>::new())))]),
                "in.arrow: the file is empty: no rows",
            ),
        ];
        for (batch, expected) in cases {
            for file_format in [true, false] {
                let bytes = ipc_bytes(std::slice::from_ref(&batch), file_format);
                let err = ArrowReader::ipc("in.arrow", std::io::Cursor::new(bytes), &options(100))
                    .and_then(|mut reader| read_all(&mut reader))
                    .unwrap_err()
                    .to_string();
                assert!(err.starts_with(expected), "{err}\nwanted: {expected}");
            }
        }
    }

    #[test]
    fn a_damaged_file_is_refused_clearly() {
        let good = parquet_file(&batches(), Compression::SNAPPY);
        let bytes = std::fs::read(good.path()).unwrap();
        let open = |bytes: &[u8]| {
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), bytes).unwrap();
            ArrowReader::parquet("in.parquet", file.reopen().unwrap(), &options(100))
                .and_then(|mut reader| read_all(&mut reader))
        };
        for damaged in [&bytes[..bytes.len() - 3], &bytes[..0], b"customer,x\n1,2\n"] {
            let err = open(damaged).unwrap_err().to_string();
            assert!(err.starts_with("in.parquet: not a readable Parquet file"), "{err}");
        }
        // A flipped byte inside the data pages: the page fails to decode.
        let mut flipped = bytes.clone();
        for byte in &mut flipped[4..bytes.len() / 2] {
            *byte ^= 0x5a;
        }
        let err = open(&flipped).unwrap_err().to_string();
        assert!(err.starts_with("in.parquet"), "{err}");

        let ipc = ipc_bytes(&batches(), true);
        for damaged in [&ipc[..ipc.len() / 2], &ipc[..0], b"ARROW1\0\0garbage".as_slice()] {
            let err = ArrowReader::ipc("in.arrow", std::io::Cursor::new(damaged.to_vec()), &options(100))
                .and_then(|mut reader| read_all(&mut reader))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("in.arrow"), "{err}");
        }
        let err =
            ingest::open_stream(InputFormat::Parquet, "-", std::io::empty(), &options(1)).err().unwrap();
        assert!(err.to_string().contains("give a file, not a stream"), "{err}");
    }

    /// A Feather file through a pipe: its magic arrives a few bytes at a time.
    #[test]
    fn a_file_read_a_few_bytes_at_a_time_is_recognised() {
        struct Trickle(std::io::Cursor<Vec<u8>>, usize);
        impl Read for Trickle {
            fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
                let n = out.len().min(self.1);
                self.0.read(&mut out[..n])
            }
        }
        for file_format in [true, false] {
            for step in [1, 3, 7] {
                let bytes = ipc_bytes(&batches(), file_format);
                let input = Trickle(std::io::Cursor::new(bytes), step);
                let tables = ArrowReader::ipc("in.arrow", input, &options(100))
                    .and_then(|mut reader| read_all(&mut reader))
                    .unwrap_or_else(|e| panic!("file={file_format}, {step} bytes a read: {e}"));
                assert_eq!(tables.iter().map(|t| t.rows).sum::<usize>(), 12);
            }
        }
        // A file is handed over unbuffered: the reader buffers it.
        let file = tempfile::Builder::new().suffix(".feather").tempfile().unwrap();
        std::fs::write(file.path(), ipc_bytes(&batches(), true)).unwrap();
        let mut reader = ingest::open_file(file.path(), None, &options(5)).unwrap();
        assert_eq!(read_all(&mut *reader).unwrap().iter().map(|t| t.rows).collect::<Vec<_>>(), [5, 5, 2]);
    }

    /// arrow-rs asserts on the keys of a dictionary with no values, which is
    /// how an all-null dictionary column (or an empty batch) is written.
    #[test]
    fn an_all_null_dictionary_column_reads_as_nulls() {
        let schema = Arc::new(ArrowSchema::new(vec![
            Field::new("customer", DataType::Utf8, false),
            Field::new(
                "segment",
                DataType::Dictionary(Box::new(DataType::UInt32), Box::new(DataType::Utf8)),
                true,
            ),
        ]));
        let batch = |ids: Vec<&str>| {
            let keys: Vec<Option<u32>> = vec![None; ids.len()];
            let columns: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from(ids)),
                Arc::new(DictionaryArray::<UInt32Type>::new(
                    keys.into(),
                    Arc::new(StringArray::from(Vec::<&str>::new())),
                )),
            ];
            RecordBatch::try_new(schema.clone(), columns).unwrap()
        };
        let batches = [batch(vec![]), batch(vec!["a", "b", "c"])];
        let parquet = parquet_file(&batches, Compression::SNAPPY);
        let mut inputs: Vec<(String, Box<dyn ChunkReader>)> = vec![(
            "parquet".into(),
            Box::new(ArrowReader::parquet("in.parquet", parquet.reopen().unwrap(), &options(100)).unwrap()),
        )];
        for file_format in [true, false] {
            let bytes = ipc_bytes(&batches, file_format);
            let reader = ArrowReader::ipc("in.arrow", std::io::Cursor::new(bytes), &options(100)).unwrap();
            inputs.push((format!("ipc file={file_format}"), Box::new(reader)));
        }
        for (name, mut reader) in inputs {
            let tables = read_all(&mut *reader).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(tables.len(), 1, "{name}");
            assert_eq!(tables[0].rows, 3, "{name}");
            assert!((0..3).all(|row| !tables[0].columns[1].is_valid(row)), "{name}: every segment is null");
        }
    }

    /// Files with bytes overwritten at random (a fixed seed): each is read
    /// to the end or refused with an error; arrow-rs's panics on some of them
    /// come back as errors. Uncompressed, because arrow-ipc trusts a
    /// compressed buffer's declared size (SECURITY.md).
    #[test]
    fn damaged_files_are_errors_never_panics() {
        let batches = batches();
        let parquet = std::fs::read(parquet_file(&batches, Compression::UNCOMPRESSED).path()).unwrap();
        let ipc = ipc_bytes_compressed(&batches, true, None);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut random = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut decoder_failures = 0;
        for round in 0..600 {
            let mut bytes = if round % 2 == 0 { parquet.clone() } else { ipc.clone() };
            for _ in 0..1 + random() % 8 {
                let at = random() as usize % bytes.len();
                bytes[at] = random() as u8;
            }
            let read = if round % 2 == 0 {
                std::fs::write(file.path(), &bytes).unwrap();
                ArrowReader::parquet("in.parquet", file.reopen().unwrap(), &options(5))
            } else {
                ArrowReader::ipc("in.arrow", std::io::Cursor::new(bytes), &options(5))
            };
            if let Err(e) = read.and_then(|mut reader| read_all(&mut reader)) {
                decoder_failures += usize::from(e.detail.contains("its decoder failed"));
            }
        }
        assert!(decoder_failures > 0, "the seed no longer reaches a decoder panic; pick another");
    }

    /// A forged batch header declares more rows than the file holds; a
    /// column of the Null type has no buffers that would show it.
    #[test]
    fn a_batch_declaring_too_many_rows_is_refused() {
        const ROWS: i64 = 12_345;
        let nothing = batch(vec![("customer", Arc::new(NullArray::new(ROWS as usize)))]);
        for file_format in [false, true] {
            let mut bytes = ipc_bytes(std::slice::from_ref(&nothing), file_format);
            let (declared, forged) = (ROWS.to_le_bytes(), (MAX_BATCH_ROWS * 2).to_le_bytes());
            let at: Vec<usize> = (0..bytes.len() - 8).filter(|&i| bytes[i..i + 8] == declared).collect();
            assert!(!at.is_empty() && at.len() <= 3, "the batch's and its column's length: {at:?}");
            for i in at {
                bytes[i..i + 8].copy_from_slice(&forged);
            }
            let err = ArrowReader::ipc("in.arrow", std::io::Cursor::new(bytes), &options(100))
                .and_then(|mut reader| read_all(&mut reader))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("in.arrow: ")
                    && err.contains(
                        "a record batch declares 268435456 rows, outside the limit of 0 to 134217728"
                    ),
                "{err}"
            );
        }
    }

    /// A compressed buffer that claims to decompress to 786 GB is refused
    /// before arrow-ipc would try to allocate it (and abort).
    #[test]
    fn a_declared_decompressed_size_past_the_limit_is_refused() {
        for file_format in [false, true] {
            let mut bytes = ipc_bytes(&batches(), file_format);
            // Walk the messages to the first record batch's first buffer.
            let mut at = if file_format { 8 } else { 0 };
            let word = |bytes: &[u8], at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
            while word(&bytes, at) == 0 {
                at += 8; // a file's padding after its magic
            }
            let prefix = loop {
                assert_eq!(word(&bytes, at), u32::MAX, "a continuation marker");
                let length = word(&bytes, at + 4) as usize;
                let metadata = bytes[at + 8..at + 8 + length].to_vec();
                let message = arrow_ipc::root_as_message(&metadata).unwrap();
                let body = at + 8 + length;
                if let Some(batch) = message.header_as_record_batch() {
                    let buffer = batch.buffers().unwrap().iter().find(|b| b.length() >= 8).unwrap();
                    break body + buffer.offset() as usize;
                }
                at = body + message.bodyLength() as usize;
            };
            bytes[prefix..prefix + 8].copy_from_slice(&785_979_015_170i64.to_le_bytes());
            let err = ArrowReader::ipc("bomb.arrow", std::io::Cursor::new(bytes), &options(100))
                .and_then(|mut reader| read_all(&mut reader))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("declares 7859790") && err.contains("bytes once decompressed, over the limit"),
                "{err}"
            );
        }
    }

    /// Parquet and Arrow IPC are held to the same column limit as CSV; IPC's
    /// schema is refused before arrow-ipc decodes it.
    #[test]
    fn the_column_count_is_capped() {
        let wide = |n: usize| {
            let mut columns: Vec<(String, ArrayRef)> =
                vec![("customer".into(), Arc::new(StringArray::from(vec!["a", "b"])))];
            columns.extend(
                (1..n).map(|i| (format!("c{i}"), Arc::new(Int32Array::from(vec![1, 2])) as ArrayRef)),
            );
            RecordBatch::try_from_iter(columns).unwrap()
        };
        let limits = InputLimits { max_columns: 10, ..InputLimits::default() };
        let options = IngestOptions { limits, ..options(100) };
        let file = parquet_file(&[wide(10)], Compression::UNCOMPRESSED);
        assert!(ArrowReader::parquet("in.parquet", file.reopen().unwrap(), &options).is_ok());
        let file = parquet_file(&[wide(11)], Compression::UNCOMPRESSED);
        let err = ArrowReader::parquet("in.parquet", file.reopen().unwrap(), &options).unwrap_err();
        assert_eq!(err.to_string(), "in.parquet: the input has 11 columns, over the limit of 10");
        for file_format in [true, false] {
            let bytes = ipc_bytes(&[wide(10)], file_format);
            assert!(ArrowReader::ipc("in.arrow", std::io::Cursor::new(bytes), &options).is_ok());
            let bytes = ipc_bytes(&[wide(11)], file_format);
            let err = ArrowReader::ipc("in.arrow", std::io::Cursor::new(bytes), &options).unwrap_err();
            assert!(err.to_string().ends_with("the schema has 11 columns, over the limit of 10"), "{err}");
        }
    }

    #[test]
    fn a_long_value_or_name_is_refused_and_quoted_short() {
        let limits = InputLimits { max_field_bytes: 1 << 10, ..InputLimits::default() };
        let limited = IngestOptions { limits, ..options(100) };
        let long = "é".repeat(5000);
        let values = batch(vec![
            ("customer", Arc::new(StringArray::from(vec!["a", "b"]))),
            ("note", Arc::new(StringArray::from(vec!["short".to_owned(), "n".repeat(2000)]))),
        ]);
        let bytes = ipc_bytes(&[values], true);
        let err = ArrowReader::ipc("in.arrow", std::io::Cursor::new(bytes), &limited)
            .and_then(|mut reader| read_all(&mut reader))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "in.arrow, row 2, column `note`: the value takes 2000 bytes, over the limit of 1 KiB"
        );

        // A nested type, its field named at length, under a long name.
        let inner = Field::new(long.clone(), DataType::Int32, true);
        let offsets = arrow_buffer::OffsetBuffer::from_lengths([1]);
        let list = ListArray::new(Arc::new(inner), offsets, Arc::new(Int32Array::from(vec![1])), None);
        let nested = batch(vec![
            ("customer", Arc::new(StringArray::from(vec!["a"]))),
            (long.as_str(), Arc::new(list)),
        ]);
        let bytes = ipc_bytes(&[nested], true);
        let err =
            ArrowReader::ipc("in.arrow", std::io::Cursor::new(bytes), &options(100)).unwrap_err().to_string();
        assert!(err.len() < 400 && err.contains('…'), "{} bytes: {err}", err.len());
    }
}
