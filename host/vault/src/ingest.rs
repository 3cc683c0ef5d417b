//! What every input reader shares: the options, the formats, the chunked
//! output, and turning text into typed values.
//!
//! A reader yields a dataset as a stream of chunks (tables of at most
//! [`IngestOptions::chunk_rows`] rows and about [`CHUNK_BYTES`]), so memory
//! stays flat whatever the file's size.

use std::io::Read;
use std::path::Path;

use crate::IngestError;
use crate::arrow_reader::ArrowReader;
use crate::schema::{Classification, ColumnType, Field, Schema};
use crate::table::{Table, TableBuilder};
use crate::timestamp::parse_timestamp;

/// Rows per chunk unless the options say otherwise: one plugin batch.
pub const CHUNK_ROWS: usize = 1 << 16;
/// A chunk is cut early once its values take about this much memory.
pub const CHUNK_BYTES: usize = 32 << 20;
/// Rows read to infer column types before parsing strictly.
pub(crate) const INFER_ROWS: usize = 1000;

/// How to read an input: the tenant's classification of its columns and,
/// optionally, their types.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// The entity column (the privacy unit): required.
    pub entity: String,
    /// Other identifier columns, pseudonymised like the entity.
    pub identifiers: Vec<String>,
    /// Column types the tenant states; the others are inferred.
    pub types: Vec<(String, ColumnType)>,
    /// Most rows per chunk.
    pub chunk_rows: usize,
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self { entity: String::new(), identifiers: Vec::new(), types: Vec::new(), chunk_rows: CHUNK_ROWS }
    }
}

impl IngestOptions {
    /// Options naming the entity column and nothing else.
    pub fn entity(column: impl Into<String>) -> Self {
        Self { entity: column.into(), ..Self::default() }
    }
}

/// An input format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    Csv,
    /// One JSON object per line.
    JsonLines,
    /// Apache Parquet; read from a file only (its schema is in a footer).
    Parquet,
    /// Arrow IPC: a Feather v2 file or an IPC stream.
    ArrowIpc,
}

impl InputFormat {
    /// The format a file name's extension names.
    pub fn of_path(path: &Path) -> Option<Self> {
        let extension = path.extension()?.to_str()?.to_ascii_lowercase();
        match extension.as_str() {
            "csv" => Some(Self::Csv),
            "jsonl" | "ndjson" => Some(Self::JsonLines),
            "parquet" | "pq" => Some(Self::Parquet),
            "arrow" | "arrows" | "feather" | "ipc" => Some(Self::ArrowIpc),
            _ => None,
        }
    }
}

impl std::str::FromStr for InputFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "csv" => Ok(Self::Csv),
            "jsonl" | "ndjson" => Ok(Self::JsonLines),
            "parquet" => Ok(Self::Parquet),
            "arrow" | "ipc" | "feather" => Ok(Self::ArrowIpc),
            _ => Err(format!("unknown format `{s}`: use csv, jsonl, parquet or arrow")),
        }
    }
}

/// A dataset being read, one chunk at a time.
pub trait ChunkReader: Send {
    /// The dataset's schema, known before the first chunk.
    fn schema(&self) -> &Schema;
    /// The next chunk, or `None` after the last.
    fn next_chunk(&mut self) -> Result<Option<Table>, IngestError>;
}

/// Open `path` for reading in `format` (named by its extension if `None`).
pub fn open_file(
    path: &Path,
    format: Option<InputFormat>,
    options: &IngestOptions,
) -> Result<Box<dyn ChunkReader>, IngestError> {
    let source = path.display().to_string();
    let format = format.or_else(|| InputFormat::of_path(path)).ok_or_else(|| {
        IngestError::whole(
            &source,
            "unknown file type: name it .csv, .jsonl, .parquet or .arrow, or give the format".into(),
        )
    })?;
    let file =
        std::fs::File::open(path).map_err(|e| IngestError::whole(&source, format!("cannot open: {e}")))?;
    match format {
        InputFormat::Parquet => Ok(Box::new(ArrowReader::parquet(&source, file, options)?)),
        // These buffer their input themselves.
        InputFormat::ArrowIpc | InputFormat::JsonLines => open_stream(format, &source, file, options),
        InputFormat::Csv => {
            open_stream(format, &source, std::io::BufReader::with_capacity(1 << 20, file), options)
        }
    }
}

/// Read `input` (named `source` in errors) in `format`.
pub fn open_stream(
    format: InputFormat,
    source: &str,
    input: impl Read + Send + 'static,
    options: &IngestOptions,
) -> Result<Box<dyn ChunkReader>, IngestError> {
    Ok(match format {
        InputFormat::Csv => Box::new(crate::csv_reader::CsvReader::new(source, input, options)?),
        InputFormat::JsonLines => {
            Box::new(crate::jsonl_reader::JsonLinesReader::new(source, input, options)?)
        }
        InputFormat::ArrowIpc => Box::new(ArrowReader::ipc(source, input, options)?),
        InputFormat::Parquet => {
            return Err(IngestError::whole(
                source,
                "Parquet keeps its schema at the end of the file: give a file, not a stream".into(),
            ));
        }
    })
}

impl IngestError {
    /// An error about the whole input.
    pub(crate) fn whole(source: &str, detail: String) -> Self {
        Self { source_name: source.to_owned(), row: None, line: None, column: None, detail }
    }

    /// An error at a row (1-based, header excluded), line and column.
    pub(crate) fn at(source: &str, row: u64, line: Option<u64>, column: &str, detail: String) -> Self {
        Self { source_name: source.to_owned(), row: Some(row), line, column: Some(column.to_owned()), detail }
    }
}

/// The schema of `columns`, classified by `options`: the type of each column
/// is the tenant's, else the `inferred` one. Checks the names first.
pub(crate) fn classify(
    source: &str,
    columns: &[String],
    options: &IngestOptions,
    mut inferred: impl FnMut(usize) -> ColumnType,
) -> Result<Schema, IngestError> {
    let error = |column: Option<&str>, detail: String| IngestError {
        column: column.map(str::to_owned),
        ..IngestError::whole(source, detail)
    };
    if columns.is_empty() {
        return Err(error(None, "the input has no columns".into()));
    }
    for (i, name) in columns.iter().enumerate() {
        if name.is_empty() {
            return Err(error(None, format!("column {} has no name", i + 1)));
        }
        if columns[..i].contains(name) {
            return Err(error(Some(name), "the column name appears twice".into()));
        }
    }
    if options.entity.is_empty() {
        return Err(error(None, "no entity column given".into()));
    }
    let named = std::iter::once(&options.entity)
        .chain(&options.identifiers)
        .chain(options.types.iter().map(|(name, _)| name));
    for wanted in named {
        if !columns.contains(wanted) {
            return Err(error(
                Some(wanted),
                format!("no such column; the columns are: {}", columns.join(", ")),
            ));
        }
    }
    let fields = columns
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let classification = if *name == options.entity {
                Classification::Entity
            } else if options.identifiers.contains(name) {
                Classification::Identifier
            } else {
                Classification::Attribute
            };
            let given = options.types.iter().find(|(n, _)| n == name).map(|&(_, t)| t);
            let column_type = match (classification.is_pseudonymised(), given) {
                (true, None | Some(ColumnType::Text)) => ColumnType::Text,
                (true, Some(other)) => {
                    return Err(error(
                        Some(name),
                        format!("an entity or identifier column is text, not {other}"),
                    ));
                }
                (false, Some(given)) => given,
                (false, None) => inferred(i),
            };
            Ok(Field { name: name.clone(), column_type, classification })
        })
        .collect::<Result<_, _>>()?;
    Ok(Schema { fields })
}

/// The narrowest type every non-empty sample value parses as.
pub(crate) fn infer<'a>(values: impl Iterator<Item = &'a str> + Clone) -> ColumnType {
    let present = values.map(str::trim).filter(|v| !v.is_empty());
    if present.clone().next().is_none() {
        return ColumnType::Text;
    }
    if present.clone().all(|v| v.parse::<i64>().is_ok()) {
        ColumnType::Int
    } else if present.clone().all(|v| v.parse::<f64>().is_ok_and(f64::is_finite)) {
        ColumnType::Float
    } else if present.clone().all(|v| parse_bool(v).is_some()) {
        ColumnType::Bool
    } else if present.clone().all(|v| parse_timestamp(v).is_some()) {
        ColumnType::Timestamp
    } else {
        ColumnType::Text
    }
}

pub(crate) fn parse_bool(value: &str) -> Option<bool> {
    if value.eq_ignore_ascii_case("true") {
        Some(true)
    } else if value.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// Push the text `raw` into column `i` as its schema type: an empty value is
/// a null, except in the entity column. The error is the detail to report.
pub(crate) fn push_text_value(builder: &mut TableBuilder, i: usize, raw: &str) -> Result<(), String> {
    let field = &builder.schema().fields[i];
    let value = raw.trim();
    if value.is_empty() {
        if field.classification == Classification::Entity {
            return Err("the entity column is empty".into());
        }
        builder.push_null(i);
        return Ok(());
    }
    let bad = |what: ColumnType| format!("expected {what}, found `{}`", truncate(value));
    match field.column_type {
        ColumnType::Int => builder.push_i64(i, value.parse().map_err(|_| bad(ColumnType::Int))?),
        ColumnType::Float => {
            let v =
                value.parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| bad(ColumnType::Float))?;
            builder.push_f64(i, v);
        }
        ColumnType::Bool => builder.push_bool(i, parse_bool(value).ok_or_else(|| bad(ColumnType::Bool))?),
        ColumnType::Timestamp => {
            builder.push_i64(i, parse_timestamp(value).ok_or_else(|| bad(ColumnType::Timestamp))?)
        }
        ColumnType::Text => builder.push_text(i, value),
    }
    Ok(())
}

/// Push one row of text `values`, data row `row` at `line` of `source`, as
/// the schema types them, and end it; an error names the row and column.
pub(crate) fn push_row<'a>(
    builder: &mut TableBuilder,
    source: &str,
    row: u64,
    line: Option<u64>,
    values: impl IntoIterator<Item = &'a str>,
) -> Result<(), IngestError> {
    for (i, raw) in values.into_iter().enumerate() {
        if let Err(detail) = push_text_value(builder, i, raw) {
            return Err(IngestError::at(source, row, line, &builder.schema().fields[i].name, detail));
        }
    }
    builder.end_row();
    Ok(())
}

/// Whether the chunk being built is full.
pub(crate) fn chunk_full(builder: &TableBuilder, options: &IngestOptions) -> bool {
    builder.rows() >= options.chunk_rows.max(1) || builder.approx_bytes() >= CHUNK_BYTES
}

/// What a caught panic said, if it said it as text.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("no message")
}

pub(crate) fn truncate(value: &str) -> String {
    match value.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &value[..i]),
        None => value.to_owned(),
    }
}
