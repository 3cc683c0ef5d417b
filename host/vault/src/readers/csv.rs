//! The one CSV reader: header, type inference from the first rows, then
//! strict typed parsing in chunks; errors name the row, line and column.

use std::collections::VecDeque;
use std::io::Read;

use super::shared::{self, ChunkReader, INFER_BYTES, INFER_ROWS, IngestOptions, InputLimits};
use crate::IngestError;
use crate::schema::Schema;
use crate::table::{Table, TableBuilder};

/// Reads CSV with a header row, one chunk at a time.
pub struct CsvReader<R: Read> {
    source: String,
    reader: csv::Reader<Bounded<R>>,
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

/// The input as the csv crate reads it, failing once one record runs past
/// its limit: csv reads a record whole, however long, before it returns
/// it, so a 500 MB header line or field would otherwise be in memory
/// (several times over) before anything could refuse it.
struct Bounded<R> {
    input: R,
    /// Bytes handed on so far.
    read: u64,
    /// Where the record being read starts.
    record_start: u64,
    /// Most bytes that record may take.
    limit: u64,
    /// Whether a read failed because the record ran past `limit`.
    over: bool,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        // csv asks for more input only once it has used all it was given,
        // so every byte since the record's start is the record's (or blank
        // lines before it). It holds at most one buffer more than this.
        if self.read - self.record_start > self.limit {
            self.over = true;
            return Err(std::io::Error::other("the record runs past its limit"));
        }
        let n = self.input.read(out)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// Read the next record of `reader` into `record`, data row `row` (0 for
/// the header), within `limit` bytes; `false` at the end.
fn read_record<R: Read>(
    reader: &mut csv::Reader<Bounded<R>>,
    record: &mut csv::StringRecord,
    source: &str,
    row: u64,
    limit: usize,
) -> Result<bool, IngestError> {
    let line = reader.position().line();
    let start = reader.get_ref().record_start;
    reader.get_mut().limit = limit as u64;
    let read = if row == 0 {
        reader.headers().map(|h| {
            record.clone_from(h);
            true
        })
    } else {
        reader.read_record(record)
    };
    let end = reader.position().byte();
    let over = || {
        let what = if row == 0 { "the header line" } else { "the record" };
        IngestError {
            row: (row > 0).then_some(row),
            line: Some(line),
            ..IngestError::whole(
                source,
                format!("{what} is longer than the limit of {}", shared::size(limit)),
            )
        }
    };
    match read {
        Err(_) if reader.get_ref().over => Err(over()),
        Err(e) => Err(csv_error(source, &e)),
        // It ended inside the last buffer read, past the limit.
        Ok(true) if end.saturating_sub(start) > limit as u64 => Err(over()),
        Ok(more) => {
            reader.get_mut().record_start = end;
            Ok(more)
        }
    }
}

impl<R: Read> CsvReader<R> {
    /// Read the header and a sample, and settle the schema.
    pub fn new(source: &str, input: R, options: &IngestOptions) -> Result<Self, IngestError> {
        let limits = &options.limits;
        let input = Bounded { input, read: 0, record_start: 0, limit: 0, over: false };
        let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(input);
        let mut record = csv::StringRecord::new();
        read_record(&mut reader, &mut record, source, 0, limits.max_header_bytes)?;
        if record.len() > limits.max_columns {
            return Err(IngestError {
                line: Some(1),
                ..IngestError::whole(
                    source,
                    format!(
                        "the header has {} columns, over the limit of {}",
                        record.len(),
                        limits.max_columns
                    ),
                )
            });
        }
        let headers: Vec<String> = record.iter().map(|h| h.trim().to_owned()).collect();
        if headers.iter().all(String::is_empty) {
            return Err(IngestError {
                line: Some(1),
                ..IngestError::whole(source, "the file is empty: no header row".into())
            });
        }
        let mut sample = VecDeque::new();
        let mut sample_bytes = 0;
        while sample.len() < INFER_ROWS && sample_bytes < INFER_BYTES {
            let row = sample.len() as u64 + 1;
            if !read_record(&mut reader, &mut record, source, row, limits.max_record_bytes)? {
                break;
            }
            sample_bytes += record.as_byte_record().as_slice().len();
            sample.push_back(record.clone());
        }
        let schema = shared::classify(source, &headers, options, |i| {
            shared::infer(sample.iter().map(|r| r.get(i).unwrap_or("")))
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
        let limits: &InputLimits = &self.options.limits;
        shared::push_row(&mut self.builder, &self.source, self.row, line, record, limits)
    }
}

impl<R: Read + Send> ChunkReader for CsvReader<R> {
    fn schema(&self) -> &Schema {
        self.builder.schema()
    }

    fn next_chunk(&mut self) -> Result<Option<Table>, IngestError> {
        while !shared::chunk_full(&self.builder, &self.options) {
            if let Some(record) = self.sample.pop_front() {
                self.push(&record)?;
                continue;
            }
            let mut record = std::mem::take(&mut self.record);
            let limit = self.options.limits.max_record_bytes;
            let more = read_record(&mut self.reader, &mut record, &self.source, self.row + 1, limit);
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
        _ => crate::quote::message(e),
    };
    IngestError {
        // csv counts the header as record 0, so the record index is the data row.
        row: position.map(|p| p.record()).filter(|&r| r > 0),
        line: position.map(|p| p.line()),
        ..IngestError::whole(source, detail)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::readers::InputLimits;
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
    fn reference_data_has_no_entity_and_other_data_must_have_one() {
        let csv = "region,factor\nnorth,1.5\nsouth,2\n";
        let reference = IngestOptions { chunk_rows: usize::MAX, ..IngestOptions::reference() };
        let t = read_with(csv, &reference).unwrap();
        assert!(t.schema.reference && t.schema.entity().is_none());
        assert!(t.schema.fields.iter().all(|f| f.classification == Classification::Attribute));

        let err = read_with(csv, &IngestOptions { chunk_rows: usize::MAX, ..IngestOptions::default() });
        assert!(err.unwrap_err().to_string().contains("no entity column given"));
        let err = read_with(csv, &IngestOptions { entity: "region".into(), ..reference.clone() });
        assert!(err.unwrap_err().to_string().contains("reference data has no entity or identifier column"));
        let err = read_with(csv, &IngestOptions { identifiers: vec!["region".into()], ..reference });
        assert!(err.unwrap_err().to_string().contains("reference data has no entity or identifier column"));
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

    /// `prefix`, then `fill` up to `len` bytes in all, counting the bytes
    /// handed out.
    pub(crate) struct Endless {
        prefix: Vec<u8>,
        fill: u8,
        len: usize,
        pub(crate) served: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Endless {
        pub(crate) fn new(prefix: &str, fill: u8, len: usize) -> Self {
            Self { prefix: prefix.as_bytes().to_vec(), fill, len, served: Default::default() }
        }
    }

    impl Read for Endless {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            use std::sync::atomic::Ordering;
            let at = self.served.load(Ordering::Relaxed);
            let n = out.len().min(self.len.saturating_sub(at));
            for (i, byte) in out[..n].iter_mut().enumerate() {
                *byte = self.prefix.get(at + i).copied().unwrap_or(self.fill);
            }
            self.served.fetch_add(n, Ordering::Relaxed);
            Ok(n)
        }
    }

    fn limited(limits: InputLimits) -> IngestOptions {
        IngestOptions { limits, ..options() }
    }

    /// A 32 MiB header line or record is refused once it passes its limit,
    /// having read little more than the limit: the csv crate alone would
    /// read (and hold) it whole first.
    #[test]
    fn a_long_header_or_record_is_refused_before_it_is_read_whole() {
        let limits =
            InputLimits { max_header_bytes: 64 << 10, max_record_bytes: 256 << 10, ..InputLimits::default() };
        let cases = [
            ("driver,", b'x', "t.csv (line 1): the header line is longer than the limit of 64 KiB"),
            (
                "driver,note\nd1,",
                b'y',
                "t.csv, row 1 (line 2): the record is longer than the limit of 256 KiB",
            ),
            // Quoted newlines: one record over many lines.
            (
                "driver,note\nd1,\"",
                b'\n',
                "t.csv, row 1 (line 2): the record is longer than the limit of 256 KiB",
            ),
            (
                "driver,note\nd1,a\nd2,b\nd3,",
                b'z',
                "t.csv, row 3 (line 4): the record is longer than the limit of 256 KiB",
            ),
        ];
        for (prefix, fill, expected) in cases {
            let input = Endless::new(prefix, fill, 32 << 20);
            let served = input.served.clone();
            let err = CsvReader::new("t.csv", input, &limited(limits))
                .and_then(|mut reader| reader.next_chunk())
                .map(|_| ())
                .unwrap_err();
            assert_eq!(err.to_string(), expected);
            let served = served.load(std::sync::atomic::Ordering::Relaxed);
            assert!(served < 1 << 20, "{prefix:?}: read {served} bytes");
        }
        // One that ends inside the last buffer read is refused too; one
        // within the limit is read.
        let text = |n: usize| format!("driver,note\nd0,a\nd1,{}\nd2,b\n", "v".repeat(n));
        let err = read_with(&text(300 << 10), &limited(limits)).unwrap_err().to_string();
        assert_eq!(err, "trips.csv, row 2 (line 3): the record is longer than the limit of 256 KiB");
        let limits = InputLimits { max_field_bytes: 1 << 20, ..limits };
        assert_eq!(read_with(&text(200 << 10), &limited(limits)).unwrap().rows, 3);
    }

    #[test]
    fn a_long_value_is_refused_naming_its_row_and_column() {
        let limits = InputLimits { max_field_bytes: 1 << 10, ..InputLimits::default() };
        let text = format!("driver,note\nd1,{}\nd2,{}\n", "a".repeat(1 << 10), "b".repeat(2000));
        let err = read_with(&text, &limited(limits)).unwrap_err().to_string();
        assert_eq!(
            err,
            "trips.csv, row 2 (line 3), column `note`: the value takes 2000 bytes, over the limit of 1 KiB"
        );
    }

    /// More columns than the limit are refused; many columns are checked
    /// for duplicates in linear time (100 000 took 22 s when each name was
    /// looked for among the ones before it).
    #[test]
    fn the_column_count_is_capped() {
        let header = |n: usize| {
            let names: Vec<String> = (1..n).map(|i| format!("c{i}")).collect();
            format!("driver,{}\n", names.join(","))
        };
        let row = |n: usize| format!("d1{}\n", ",1".repeat(n - 1));
        let at_limit = format!("{}{}", header(4096), row(4096));
        assert_eq!(read(&at_limit).unwrap().schema.fields.len(), 4096);
        for n in [4097, 100_000] {
            let err = read(&format!("{}{}", header(n), row(n))).unwrap_err().to_string();
            assert_eq!(
                err,
                format!("trips.csv (line 1): the header has {n} columns, over the limit of 4096")
            );
        }
        let twice = format!("{},c1\n{}", header(4095).trim_end(), row(4096));
        let err = read(&twice).unwrap_err().to_string();
        assert_eq!(err, "trips.csv (line 1), column `c1`: the column name appears twice");
    }

    /// Errors quote at most 100 bytes of any name or value, cut on a
    /// character boundary and marked with `…`. A 500 MB header once came
    /// back whole in the error.
    #[test]
    fn errors_quote_a_short_cut_of_the_input() {
        let long = "é".repeat(5000);
        let row = vec!["1"; 2000].join(",");
        let cases = [
            (format!("{long}\n1\n"), options()),
            (
                format!(
                    "{}\n{}\n",
                    (0..2000).map(|i| format!("a-long-column-name-{i}")).collect::<Vec<_>>().join(","),
                    row
                ),
                options(),
            ),
            ("driver\nd1\n".to_owned(), IngestOptions::entity(long.clone())),
            (
                format!("driver,n\nd1,{long}\n"),
                IngestOptions { types: vec![("n".into(), ColumnType::Int)], ..options() },
            ),
            (
                format!("driver,{long}\nd1,x\n"),
                IngestOptions { types: vec![(long.clone(), ColumnType::Int)], ..options() },
            ),
        ];
        for (text, options) in cases {
            let err = read_with(&text, &options).map(|_| ()).unwrap_err().to_string();
            assert!(err.len() < 400, "{} bytes: {err}", err.len());
            assert!(err.contains('…'), "{err}");
        }
    }

    /// The rows read to infer types are held in memory, so the sample stops
    /// at [`INFER_BYTES`] as well as at [`INFER_ROWS`] rows.
    #[test]
    fn the_type_sample_stops_at_its_byte_budget() {
        let note = "n".repeat(64 << 10);
        let mut text = String::from("driver,km,note\n");
        for i in 0..600 {
            let km = if i == 599 { "1.5".to_owned() } else { i.to_string() };
            text.push_str(&format!("d{i},{km},{note}\n"));
        }
        let err = read(&text).unwrap_err().to_string();
        assert!(err.ends_with("row 600 (line 601), column `km`: expected int, found `1.5`"), "{err}");
    }
}
