//! kanon's tenant data: the vault (encrypted, versioned, chunked datasets in
//! a data directory), the input readers, scans that hand plugins columnar
//! batches with keyed pseudonyms, the tenant's export, and backups.
//!
//! Architecture invariant: clear `entity` and `identifier` values never leave
//! this crate. A [`Scan`] hands them out only as per-run keyed pseudonyms
//! ([`PseudonymKey`]); the one way to read them in clear is the owning
//! tenant's export ([`export_csv`], [`export_parquet`]).

mod chunk;
mod export;
mod ingest;
mod pseudonym;
mod quote;
mod readers;
pub mod redb_file;
mod scan;
mod schema;
mod sealing;
mod store;
mod table;
mod timestamp;

pub use export::{export_csv, export_parquet};
pub use ingest::{InputFormat, open_file, open_stream};
pub use pseudonym::PseudonymKey;
pub use readers::{
    ArrowReader, CHUNK_BYTES, CHUNK_ROWS, ChunkReader, CsvReader, IngestOptions, InputLimits, JsonLinesReader,
};
pub use scan::{Batch, BatchColumn, BatchValues, Scan, ScanError};
pub use schema::{Classification, ColumnType, Field, Schema};
pub use sealing::{ChunkAddress, DataKey, KeyEncryptionKey, SEAL_OVERHEAD, SealError};
pub use store::{BackupSummary, DatasetVersion, Vault, VaultError, VersionInfo, WriteMode};
pub use table::{Column, ColumnData, Dictionary, Table, TableBuilder};
pub use timestamp::{format_timestamp, parse_timestamp};

/// Why reading input failed: names the file, and where known the row (1-based,
/// header excluded), the line and the column.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{source_name}{}: {detail}", location(.row, .line, .column))]
pub struct IngestError {
    pub source_name: String,
    pub row: Option<u64>,
    pub line: Option<u64>,
    pub column: Option<String>,
    pub detail: String,
}

impl IngestError {
    /// An error about the whole input. A detail longer than a few hundred
    /// bytes is cut: it may quote a decoder's message about the input.
    pub(crate) fn whole(source: &str, detail: String) -> Self {
        let detail = if detail.len() > quote::DETAIL_BYTES {
            quote::cut(&detail, quote::DETAIL_BYTES)
        } else {
            detail
        };
        Self { source_name: source.to_owned(), row: None, line: None, column: None, detail }
    }

    /// An error at a row (1-based, header excluded), line and column.
    pub(crate) fn at(source: &str, row: u64, line: Option<u64>, column: &str, detail: String) -> Self {
        Self { row: Some(row), line, ..Self::whole(source, detail).in_column(column) }
    }

    /// This error, about `column` (its name cut like any quote).
    pub(crate) fn in_column(self, column: &str) -> Self {
        Self { column: Some(quote::truncate(column)), ..self }
    }
}

fn location(row: &Option<u64>, line: &Option<u64>, column: &Option<String>) -> String {
    let mut out = String::new();
    if let Some(row) = row {
        out.push_str(&format!(", row {row}"));
    }
    if let Some(line) = line {
        out.push_str(&format!(" (line {line})"));
    }
    if let Some(column) = column {
        out.push_str(&format!(", column `{column}`"));
    }
    out
}
