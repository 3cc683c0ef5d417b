//! Which reader reads an input: the formats, and opening a file or a stream
//! in one. The readers and what they share are in `readers`.

use std::io::Read;
use std::path::Path;

use crate::IngestError;
use crate::readers::{ArrowReader, ChunkReader, CsvReader, IngestOptions, JsonLinesReader};

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
        InputFormat::Csv => Box::new(CsvReader::new(source, input, options)?),
        InputFormat::JsonLines => Box::new(JsonLinesReader::new(source, input, options)?),
        InputFormat::ArrowIpc => Box::new(ArrowReader::ipc(source, input, options)?),
        InputFormat::Parquet => {
            return Err(IngestError::whole(
                source,
                "Parquet keeps its schema at the end of the file: give a file, not a stream".into(),
            ));
        }
    })
}
