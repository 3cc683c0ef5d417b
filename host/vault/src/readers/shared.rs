//! What every reader shares: the options and limits, the chunked output,
//! the column checks, type inference, and turning text into typed values.
//! Readers depend on this and on nothing of one another.
//!
//! A reader yields a dataset as a stream of chunks (tables of at most
//! [`IngestOptions::chunk_rows`] rows and about [`CHUNK_BYTES`]), so memory
//! stays flat whatever the file's size.

use std::collections::{HashMap, HashSet};

use crate::IngestError;
use crate::quote::truncate;
use crate::schema::{Classification, ColumnType, Field, Schema};
use crate::table::{Table, TableBuilder};
use crate::timestamp::parse_timestamp;

/// Rows per chunk unless the options say otherwise: one plugin batch.
pub const CHUNK_ROWS: usize = 1 << 16;
/// A chunk is cut early once its values take about this much memory.
pub const CHUNK_BYTES: usize = 32 << 20;
/// Rows read to infer column types before parsing strictly.
pub(crate) const INFER_ROWS: usize = 1000;
/// Most bytes of input the rows read to infer types may take: the sample is
/// held in memory, so it stops at [`INFER_ROWS`] rows or this, the first
/// reached.
pub(crate) const INFER_BYTES: usize = CHUNK_BYTES;

/// What one input may hold, enforced while it is read: a longer record is
/// refused before it is in memory whole. The defaults are generous for
/// analytics tables and keep one ingest within some hundreds of MiB
/// whatever the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLimits {
    /// Most columns.
    pub max_columns: usize,
    /// Most bytes of the header: a CSV header line, or all column names.
    pub max_header_bytes: usize,
    /// Most bytes of one record: a CSV record (quoted newlines included) or
    /// a JSON line.
    pub max_record_bytes: usize,
    /// Most bytes of one value.
    pub max_field_bytes: usize,
}

impl Default for InputLimits {
    fn default() -> Self {
        Self {
            max_columns: 4096,
            max_header_bytes: 1 << 20,
            max_record_bytes: 16 << 20,
            max_field_bytes: 4 << 20,
        }
    }
}

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
    /// What one input may hold.
    pub limits: InputLimits,
    /// Reference data (no personal data): no entity and no identifier column.
    pub reference: bool,
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self {
            entity: String::new(),
            identifiers: Vec::new(),
            types: Vec::new(),
            chunk_rows: CHUNK_ROWS,
            limits: InputLimits::default(),
            reference: false,
        }
    }
}

impl IngestOptions {
    /// Options naming the entity column and nothing else.
    pub fn entity(column: impl Into<String>) -> Self {
        Self { entity: column.into(), ..Self::default() }
    }

    /// Options for reference data: no entity, no identifiers.
    pub fn reference() -> Self {
        Self { reference: true, ..Self::default() }
    }
}

/// A dataset being read, one chunk at a time.
pub trait ChunkReader: Send {
    /// The dataset's schema, known before the first chunk.
    fn schema(&self) -> &Schema;
    /// The next chunk, or `None` after the last.
    fn next_chunk(&mut self) -> Result<Option<Table>, IngestError>;
}

/// `columns`, listed for an error: as many names as fit a quote.
fn list_columns(columns: &[String]) -> String {
    let list = truncate(&columns.join(", "));
    if columns.len() > 1 { format!("{list} ({} columns)", columns.len()) } else { list }
}

/// Refuse more columns than the limit allows, or names that take more
/// bytes than a header may.
pub(crate) fn check_columns<'a>(
    source: &str,
    names: impl ExactSizeIterator<Item = &'a str>,
    limits: &InputLimits,
) -> Result<(), IngestError> {
    let count = names.len();
    if count > limits.max_columns {
        return Err(IngestError::whole(
            source,
            format!("the input has {count} columns, over the limit of {}", limits.max_columns),
        ));
    }
    let bytes: usize = names.map(str::len).sum();
    if bytes > limits.max_header_bytes {
        return Err(IngestError::whole(
            source,
            format!(
                "the column names take {bytes} bytes, over the limit of {} for a header",
                size(limits.max_header_bytes)
            ),
        ));
    }
    Ok(())
}

/// The schema of `columns`, classified by `options`: the type of each column
/// is the tenant's, else the `inferred` one. Checks the names first.
pub(crate) fn classify(
    source: &str,
    columns: &[String],
    options: &IngestOptions,
    mut inferred: impl FnMut(usize) -> ColumnType,
) -> Result<Schema, IngestError> {
    let error = |column: Option<&str>, detail: String| {
        let error = IngestError::whole(source, detail);
        match column {
            Some(column) => error.in_column(column),
            None => error,
        }
    };
    if columns.is_empty() {
        return Err(error(None, "the input has no columns".into()));
    }
    check_columns(source, columns.iter().map(String::as_str), &options.limits)?;
    // Sets, not scans of the list: a file of 100 000 columns took 22 s.
    let mut seen = HashSet::with_capacity(columns.len());
    for (i, name) in columns.iter().enumerate() {
        if name.is_empty() {
            return Err(error(None, format!("column {} has no name", i + 1)));
        }
        if !seen.insert(name.as_str()) {
            return Err(error(Some(name), "the column name appears twice".into()));
        }
    }
    match (options.reference, options.entity.is_empty() && options.identifiers.is_empty()) {
        (false, _) if options.entity.is_empty() => {
            return Err(error(None, "no entity column given (or mark the dataset as reference data)".into()));
        }
        (true, false) => {
            return Err(error(None, "reference data has no entity or identifier column".into()));
        }
        _ => {}
    }
    let named = std::iter::once(&options.entity)
        .filter(|entity| !entity.is_empty())
        .chain(&options.identifiers)
        .chain(options.types.iter().map(|(name, _)| name));
    for wanted in named {
        if !seen.contains(wanted.as_str()) {
            return Err(error(
                Some(wanted),
                format!("no such column; the columns are: {}", list_columns(columns)),
            ));
        }
    }
    let identifiers: HashSet<&str> = options.identifiers.iter().map(String::as_str).collect();
    let mut types: HashMap<&str, ColumnType> = HashMap::with_capacity(options.types.len());
    for (name, column_type) in &options.types {
        // The first one given wins, as before.
        types.entry(name.as_str()).or_insert(*column_type);
    }
    let fields = columns
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let classification = if *name == options.entity {
                Classification::Entity
            } else if identifiers.contains(name.as_str()) {
                Classification::Identifier
            } else {
                Classification::Attribute
            };
            let given = types.get(name.as_str()).copied();
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
    Ok(Schema { fields, reference: options.reference })
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

/// Why `value` is not a `column_type`: the detail to report.
pub(crate) fn expected(column_type: ColumnType, value: &str) -> String {
    format!("expected {column_type}, found `{}`", truncate(value))
}

/// Push the text `raw` into column `i` as its schema type: an empty value is
/// a null, except in the entity column. The error is the detail to report.
pub(crate) fn push_text_value(
    builder: &mut TableBuilder,
    i: usize,
    raw: &str,
    limits: &InputLimits,
) -> Result<(), String> {
    let field = &builder.schema().fields[i];
    check_field(raw, limits)?;
    let value = raw.trim();
    if value.is_empty() {
        if field.classification == Classification::Entity {
            return Err("the entity column is empty".into());
        }
        builder.push_null(i);
        return Ok(());
    }
    let bad = |what: ColumnType| expected(what, value);
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
    limits: &InputLimits,
) -> Result<(), IngestError> {
    for (i, raw) in values.into_iter().enumerate() {
        if let Err(detail) = push_text_value(builder, i, raw, limits) {
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

/// Refuse a value longer than the limit; the error is the detail to report.
pub(crate) fn check_field(value: &str, limits: &InputLimits) -> Result<(), String> {
    if value.len() > limits.max_field_bytes {
        return Err(format!(
            "the value takes {} bytes, over the limit of {}",
            value.len(),
            size(limits.max_field_bytes)
        ));
    }
    Ok(())
}

/// `bytes` for a person: in KiB or MiB where that is exact.
pub(crate) fn size(bytes: usize) -> String {
    match bytes {
        0 => "0 bytes".into(),
        b if b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}
