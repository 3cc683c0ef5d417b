//! The one CSV reader: header, type inference from the first rows, then
//! strict typed parsing in chunks; errors name the row, line and column.

use std::collections::VecDeque;
use std::io::Read;

use crate::IngestError;
use crate::ingest::{self, ChunkReader, INFER_ROWS, IngestOptions};
use crate::schema::Schema;
use crate::table::{Table, TableBuilder};

/// Reads CSV with a header row, one chunk at a time.
pub struct CsvReader<R: Read> {
    source: String,
    reader: csv::Reader<R>,
    options: IngestOptions,
    /// Records read to infer types, not yet parsed.
    sample: VecDeque<csv::StringRecord>,
    record: csv::StringRecord,
    builder: TableBuilder,
    /// Data rows parsed so far (1-based once one is).
    row: u64,
}

impl<R: Read> std::fmt::Debug for CsvReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsvReader")
            .field("source", &self.source)
            .field("row", &self.row)
            .finish_non_exhaustive()
    }
}

impl<R: Read> CsvReader<R> {
    /// Read the header and a sample, and settle the schema.
    pub fn new(source: &str, input: R, options: &IngestOptions) -> Result<Self, IngestError> {
        let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(input);
        let headers: Vec<String> = match reader.headers() {
            Ok(h) => h.iter().map(|h| h.trim().to_owned()).collect(),
            Err(e) => return Err(csv_error(source, &e)),
        };
        if headers.iter().all(String::is_empty) {
            return Err(IngestError {
                line: Some(1),
                ..IngestError::whole(source, "the file is empty: no header row".into())
            });
        }
        let mut sample = VecDeque::with_capacity(INFER_ROWS);
        let mut record = csv::StringRecord::new();
        while sample.len() < INFER_ROWS {
            match reader.read_record(&mut record) {
                Ok(true) => sample.push_back(record.clone()),
                Ok(false) => break,
                Err(e) => return Err(csv_error(source, &e)),
            }
        }
        let schema = ingest::classify(source, &headers, options, |i| {
            ingest::infer(sample.iter().map(|r| r.get(i).unwrap_or("")))
        })
        .map_err(|e| IngestError { line: Some(1), ..e })?;
        if sample.is_empty() {
            return Err(IngestError::whole(source, "the file has a header but no rows".into()));
        }
        Ok(Self {
            source: source.to_owned(),
            reader,
            options: options.clone(),
            sample,
            record,
            builder: TableBuilder::new("", schema),
            row: 0,
        })
    }

    fn push(&mut self, record: &csv::StringRecord) -> Result<(), IngestError> {
        self.row += 1;
        let line = record.position().map(|p| p.line());
        ingest::push_row(&mut self.builder, &self.source, self.row, line, record)
    }
}

impl<R: Read + Send> ChunkReader for CsvReader<R> {
    fn schema(&self) -> &Schema {
        self.builder.schema()
    }

    fn next_chunk(&mut self) -> Result<Option<Table>, IngestError> {
        while !ingest::chunk_full(&self.builder, &self.options) {
            if let Some(record) = self.sample.pop_front() {
                self.push(&record)?;
                continue;
            }
            let mut record = std::mem::take(&mut self.record);
            let more = self.reader.read_record(&mut record).map_err(|e| csv_error(&self.source, &e));
            let result = match more {
                Ok(true) => self.push(&record),
                Ok(false) => {
                    self.record = record;
                    break;
                }
                Err(e) => Err(e),
            };
            self.record = record;
            result?;
        }
        Ok((self.builder.rows() > 0).then(|| self.builder.take()))
    }
}

fn csv_error(source: &str, e: &csv::Error) -> IngestError {
    let position = e.position();
    let detail = match e.kind() {
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
            format!("the row has {len} fields, the header has {expected_len}")
        }
        csv::ErrorKind::Utf8 { err, .. } => format!("invalid UTF-8 in field {}", err.field() + 1),
        csv::ErrorKind::Io(io) => format!("cannot read: {io}"),
        _ => e.to_string(),
    };
    IngestError {
        source_name: source.to_owned(),
        // csv counts the header as record 0, so the record index is the data row.
        row: position.map(|p| p.record()).filter(|&r| r > 0),
        line: position.map(|p| p.line()),
        column: None,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Classification, ColumnType};
    use crate::table::ColumnData;

    fn options() -> IngestOptions {
        IngestOptions { chunk_rows: usize::MAX, ..IngestOptions::entity("driver") }
    }

    fn read_with(text: &str, options: &IngestOptions) -> Result<Table, IngestError> {
        let mut reader = CsvReader::new("trips.csv", text.as_bytes(), options)?;
        let table = reader.next_chunk()?.expect("one chunk");
        assert!(reader.next_chunk()?.is_none());
        Ok(table)
    }

    fn read(text: &str) -> Result<Table, IngestError> {
        read_with(text, &options())
    }

    #[test]
    fn infers_types_and_classifies_columns() {
        let csv = "driver,plate,km,loaded,when,region,n\nd1,AB-1,1.5,true,2024-01-01,north,3\nd2,AB-2,2,false,2024-01-02T10:00:00Z,,4\n";
        let options = IngestOptions { identifiers: vec!["plate".into()], ..options() };
        let t = read_with(csv, &options).unwrap();
        let types: Vec<_> = t.schema.fields.iter().map(|f| (f.column_type, f.classification)).collect();
        use {Classification::*, ColumnType::*};
        assert_eq!(
            types,
            [
                (Text, Entity),
                (Text, Identifier),
                (Float, Attribute),
                (Bool, Attribute),
                (Timestamp, Attribute),
                (Text, Attribute),
                (Int, Attribute)
            ]
        );
        assert_eq!(t.rows, 2);
        assert_eq!(t.columns[2].data, ColumnData::Float(vec![1.5, 2.0]));
        assert!(t.columns[5].is_valid(0) && !t.columns[5].is_valid(1));
    }

    #[test]
    fn given_types_win_over_inference() {
        let given = IngestOptions { types: vec![("n".into(), ColumnType::Float)], ..options() };
        let t = read_with("driver,n\nd1,3\n", &given).unwrap();
        assert_eq!(t.columns[1].data, ColumnData::Float(vec![3.0]));
        let options = IngestOptions { types: vec![("driver".into(), ColumnType::Int)], ..options() };
        let err = read_with("driver,n\nd1,3\n", &options).unwrap_err().to_string();
        assert!(err.contains("column `driver`: an entity or identifier column is text"), "{err}");
    }

    #[test]
    fn bad_input_names_the_row_and_column() {
        let cases = [
            ("", "empty"),
            ("driver,km\n", "no rows"),
            ("driver,km,km\nd1,1,2\n", "column `km`: the column name appears twice"),
            ("who,km\nd1,1\n", "column `driver`: no such column"),
            ("driver,km\nd1,1\nd2,2,3\n", "row 2 (line 3): the row has 3 fields, the header has 2"),
            ("driver,km\nd1,1\n,2\n", "row 2 (line 3), column `driver`: the entity column is empty"),
        ];
        for (text, expected) in cases {
            let err = read(text).map(|_| ()).unwrap_err().to_string();
            assert!(err.starts_with("trips.csv"), "{err}");
            assert!(err.contains(expected), "`{err}` should contain `{expected}`");
        }
        let invalid_utf8 = b"driver,km\nd1,1\nd\xff,2\n";
        let err =
            CsvReader::new("trips.csv", &invalid_utf8[..], &options()).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("row 2") && err.contains("invalid UTF-8"), "{err}");
    }

    #[test]
    fn a_type_change_after_the_sample_is_an_error_not_a_guess() {
        let mut text = String::from("driver,km\n");
        for i in 0..INFER_ROWS {
            text.push_str(&format!("d{i},{i}\n"));
        }
        text.push_str("dx,1.5\n");
        let err = read(&text).unwrap_err();
        assert_eq!(err.row, Some(INFER_ROWS as u64 + 1));
        assert_eq!(err.column.as_deref(), Some("km"));
        assert!(
            err.to_string().ends_with("row 1001 (line 1002), column `km`: expected int, found `1.5`"),
            "{err}"
        );
    }

    #[test]
    fn chunks_have_their_own_dictionaries_in_first_seen_order() {
        let options = IngestOptions { chunk_rows: 2, ..options() };
        let mut reader =
            CsvReader::new("t.csv", &b"driver,region\nd1,south\nd2,north\nd3,south\n"[..], &options).unwrap();
        let first = reader.next_chunk().unwrap().unwrap();
        let second = reader.next_chunk().unwrap().unwrap();
        assert!(reader.next_chunk().unwrap().is_none());
        let text = |t: &Table| match &t.columns[1].data {
            ColumnData::Text { entries, codes } => (entries.clone(), codes.clone()),
            other => panic!("{other:?}"),
        };
        assert_eq!(text(&first), (["south", "north"].into_iter().collect(), vec![0, 1]));
        assert_eq!(text(&second), (["south"].into_iter().collect(), vec![0]));
    }
}
