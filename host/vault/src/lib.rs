//! kanon's tenant data: the vault (encrypted, versioned, chunked datasets in
//! a data directory), the input readers, scans that hand plugins columnar
//! batches with keyed pseudonyms, the tenant's export, and backups.
//!
//! Architecture invariant: clear `entity` and `identifier` values never leave
//! this crate. A [`Scan`] hands them out only as per-run keyed pseudonyms
//! ([`PseudonymKey`]); the one way to read them in clear is the owning
//! tenant's export ([`export_csv`], [`export_parquet`]).

mod arrow_reader;
mod backup;
mod chunk;
mod csv_reader;
mod export;
mod ingest;
mod jsonl_reader;
mod pseudonym;
pub mod redb_file;
mod scan;
mod schema;
mod sealing;
mod store;
mod table;
mod timestamp;

pub use arrow_reader::ArrowReader;
pub use backup::BackupSummary;
pub use csv_reader::CsvReader;
pub use export::{export_csv, export_parquet};
pub use ingest::{
    CHUNK_BYTES, CHUNK_ROWS, ChunkReader, IngestOptions, InputFormat, InputLimits, open_file, open_stream,
};
pub use jsonl_reader::JsonLinesReader;
pub use pseudonym::PseudonymKey;
pub use scan::{Batch, BatchColumn, BatchValues, Scan, ScanError};
pub use schema::{Classification, ColumnType, Field, Schema};
pub use sealing::{ChunkAddress, DataKey, KeyEncryptionKey, SEAL_OVERHEAD, SealError};
pub use store::{DatasetVersion, Vault, VaultError, VersionInfo, WriteMode};
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
