//! The input readers, one per format, and the part they share. Each reader
//! depends only on `shared`; what picks a reader for an input is `ingest`.

mod arrow;
mod csv;
mod jsonl;
mod shared;

pub use self::arrow::ArrowReader;
pub use self::csv::CsvReader;
pub use self::jsonl::JsonLinesReader;
pub use self::shared::{CHUNK_BYTES, CHUNK_ROWS, ChunkReader, IngestOptions, InputLimits};
