//! The one JSON-lines reader: one flat object per line. Columns are the keys
//! of the first rows in first-seen order; scalars are read through their text
//! form, so typing and errors are the CSV reader's.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read};

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

use super::shared::{self, ChunkReader, INFER_BYTES, INFER_ROWS, IngestOptions};
use crate::IngestError;
use crate::schema::Schema;
use crate::table::{Table, TableBuilder};

/// One value of a line, as the reader keeps it: no tree of nested values,
/// which a line of a million `[[]]` would make large.
#[derive(Debug)]
enum Scalar {
    Null,
    Text(String),
    /// An array or object, skipped unread: refused with its column's name.
    Nested,
}

impl<'de> serde::Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl<'de> Visitor<'de> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<Scalar, E> {
                Ok(Scalar::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Text(v.to_string()))
            }
            // Numbers as serde_json's `Number` writes them.
            fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Text(Number::from(v).to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar::Text(Number::from(v).to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::Text(Number::from_f64(v).map_or_else(|| v.to_string(), |n| n.to_string())))
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Text(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar::Text(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Nested)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Nested)
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// A line's fields in the order they appear, at most `max_keys` of them.
type Fields = Vec<(String, Scalar)>;

/// Reads one object of at most `max_keys` keys; says so in `over` if it
/// has more.
struct RowSeed<'a> {
    max_keys: usize,
    over: &'a std::cell::Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = Fields;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Fields, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = Fields;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
        let mut fields = Vec::new();
        while let Some(entry) = map.next_entry::<String, Scalar>()? {
            if fields.len() == self.max_keys {
                self.over.set(true);
                return Err(serde::de::Error::custom("too many keys"));
            }
            fields.push(entry);
        }
        Ok(fields)
    }
}

/// A row as text values by column, `None` where absent or null.
type TextRow = Vec<Option<String>>;

/// Reads JSON lines, one chunk at a time.
pub struct JsonLinesReader<R: Read> {
    source: String,
    input: BufReader<R>,
    options: IngestOptions,
    line_bytes: Vec<u8>,
    /// Physical lines read so far.
    line: u64,
    /// Data rows parsed so far.
    row: u64,
    /// Sampled rows, as text by column, with their line numbers.
    sample: VecDeque<(u64, TextRow)>,
    /// Each column's index by name: a key is found in constant time, so a
    /// line is read in time linear in its keys (a line of 100 000 keys took
    /// 53 s when each was looked for in a list).
    index: HashMap<String, usize>,
    builder: TableBuilder,
}

impl<R: Read> std::fmt::Debug for JsonLinesReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonLinesReader")
            .field("source", &self.source)
            .field("row", &self.row)
            .finish_non_exhaustive()
    }
}

impl<R: Read> JsonLinesReader<R> {
    /// Read a sample, collect its columns and settle the schema.
    pub fn new(source: &str, input: R, options: &IngestOptions) -> Result<Self, IngestError> {
        let mut reader = Self {
            source: source.to_owned(),
            input: BufReader::with_capacity(1 << 20, input),
            options: options.clone(),
            line_bytes: Vec::new(),
            line: 0,
            row: 0,
            sample: VecDeque::new(),
            index: HashMap::new(),
            builder: TableBuilder::new("", Schema::default()),
        };
        let max_columns = options.limits.max_columns;
        let mut columns: Vec<String> = Vec::new();
        let mut raw_sample = Vec::new();
        let mut sample_bytes = 0;
        while raw_sample.len() < INFER_ROWS && sample_bytes < INFER_BYTES {
            let row = raw_sample.len() as u64 + 1;
            let Some(fields) = reader.next_object(row)? else { break };
            sample_bytes += reader.line_bytes.len();
            for (name, _) in &fields {
                if !reader.index.contains_key(name) {
                    if columns.len() == max_columns {
                        return Err(IngestError {
                            row: Some(row),
                            line: Some(reader.line),
                            ..IngestError::whole(
                                source,
                                format!(
                                    "the first rows have more than {max_columns} keys, the limit of columns"
                                ),
                            )
                        });
                    }
                    reader.index.insert(name.clone(), columns.len());
                    columns.push(name.clone());
                }
            }
            raw_sample.push((reader.line, fields));
        }
        if raw_sample.is_empty() {
            return Err(IngestError::whole(source, "the file is empty: no rows".into()));
        }
        for (line, fields) in raw_sample {
            let row = reader.row + reader.sample.len() as u64 + 1;
            let text = reader.text_row(row, line, fields)?;
            reader.sample.push_back((line, text));
        }
        let sample = &reader.sample;
        let schema = shared::classify(source, &columns, options, |i| {
            shared::infer(sample.iter().map(|(_, r)| r[i].as_deref().unwrap_or("")))
        })?;
        reader.builder = TableBuilder::new("", schema);
        Ok(reader)
    }

    /// The next non-blank line, data row `row`, as an object; `None` at the end.
    fn next_object(&mut self, row: u64) -> Result<Option<Fields>, IngestError> {
        let limit = self.options.limits.max_record_bytes;
        loop {
            let at = |line: u64, detail: String| IngestError {
                row: Some(row),
                line: Some(line),
                ..IngestError::whole(&self.source, detail)
            };
            let ended = read_line(&mut self.input, &mut self.line_bytes, limit).map_err(|e| {
                let line = self.line + 1;
                match e {
                    LineError::TooLong => {
                        at(line, format!("the line is longer than the limit of {}", shared::size(limit)))
                    }
                    LineError::Io(e) => IngestError {
                        line: Some(line),
                        ..IngestError::whole(&self.source, format!("cannot read: {e}"))
                    },
                }
            })?;
            if ended {
                return Ok(None);
            }
            self.line += 1;
            let Ok(text) = std::str::from_utf8(&self.line_bytes) else {
                return Err(IngestError {
                    line: Some(self.line),
                    ..IngestError::whole(&self.source, "invalid UTF-8".into())
                });
            };
            if text.trim().is_empty() {
                continue;
            }
            let mut deserializer = serde_json::Deserializer::from_str(text);
            let max_keys = self.options.limits.max_columns;
            let over = std::cell::Cell::new(false);
            let fields =
                RowSeed { max_keys, over: &over }.deserialize(&mut deserializer).and_then(|fields| {
                    deserializer.end()?;
                    Ok(fields)
                });
            return fields.map(Some).map_err(|e| {
                let detail = if over.get() {
                    format!("the object has more than {max_keys} keys, the limit of columns")
                } else {
                    // serde_json's message may quote the line.
                    format!("not a JSON object: {}", crate::quote::message(&e))
                };
                at(self.line, detail)
            });
        }
    }

    /// `fields` as text by column; keys outside the columns, nested values,
    /// repeated keys and values over the limit are errors.
    fn text_row(&self, row: u64, line: u64, fields: Fields) -> Result<TextRow, IngestError> {
        let columns = self.index.len();
        let mut out: TextRow = vec![None; columns];
        let mut seen = vec![false; columns];
        for (name, value) in fields {
            let error = |detail: String| IngestError::at(&self.source, row, Some(line), &name, detail);
            let Some(&i) = self.index.get(&name) else {
                return Err(error("a column the first rows did not have".into()));
            };
            if std::mem::replace(&mut seen[i], true) {
                return Err(error("the key appears twice".into()));
            }
            out[i] = match value {
                Scalar::Null => None,
                Scalar::Text(text) => {
                    shared::check_field(&text, &self.options.limits).map_err(error)?;
                    Some(text)
                }
                Scalar::Nested => return Err(error("nested values are not supported".into())),
            };
        }
        Ok(out)
    }

    fn push(&mut self, line: u64, text: &TextRow) -> Result<(), IngestError> {
        self.row += 1;
        let values = text.iter().map(|v| v.as_deref().unwrap_or(""));
        shared::push_row(&mut self.builder, &self.source, self.row, Some(line), values, &self.options.limits)
    }
}

enum LineError {
    TooLong,
    Io(std::io::Error),
}

/// Read the next line of `input` into `line` (without its `\n`), refusing
/// one longer than `limit` bytes before it is read whole. `true` at the end.
fn read_line(input: &mut impl BufRead, line: &mut Vec<u8>, limit: usize) -> Result<bool, LineError> {
    line.clear();
    let mut any = false;
    loop {
        let available = match input.fill_buf() {
            Ok(available) => available,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(LineError::Io(e)),
        };
        if available.is_empty() {
            return Ok(!any);
        }
        any = true;
        let (part, done) = match newline(available) {
            Some(end) => (&available[..end], end + 1),
            None => (available, available.len()),
        };
        if line.len() + part.len() > limit {
            return Err(LineError::TooLong);
        }
        line.extend_from_slice(part);
        let found = done > part.len();
        input.consume(done);
        if found {
            return Ok(false);
        }
    }
}

fn newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

impl<R: Read + Send> ChunkReader for JsonLinesReader<R> {
    fn schema(&self) -> &Schema {
        self.builder.schema()
    }

    fn next_chunk(&mut self) -> Result<Option<Table>, IngestError> {
        while !shared::chunk_full(&self.builder, &self.options) {
            if let Some((line, text)) = self.sample.pop_front() {
                self.push(line, &text)?;
                continue;
            }
            let Some(fields) = self.next_object(self.row + 1)? else { break };
            let text = self.text_row(self.row + 1, self.line, fields)?;
            self.push(self.line, &text)?;
        }
        Ok((self.builder.rows() > 0).then(|| self.builder.take()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readers::InputLimits;
    use crate::schema::ColumnType;
    use crate::table::ColumnData;

    fn read(text: &str) -> Result<Table, IngestError> {
        let options = IngestOptions { chunk_rows: usize::MAX, ..IngestOptions::entity("driver") };
        let mut reader = JsonLinesReader::new("trips.jsonl", text.as_bytes(), &options)?;
        Ok(reader.next_chunk()?.expect("one chunk"))
    }

    #[test]
    fn columns_in_first_seen_order_typed_like_csv() {
        let t = read(
            "{\"driver\":\"d1\",\"km\":1.5,\"n\":3}\n\n{\"n\":4,\"driver\":17,\"loaded\":true,\"km\":null}\n",
        )
        .unwrap();
        let names: Vec<_> = t.schema.fields.iter().map(|f| (f.name.as_str(), f.column_type)).collect();
        assert_eq!(
            names,
            [
                ("driver", ColumnType::Text),
                ("km", ColumnType::Float),
                ("n", ColumnType::Int),
                ("loaded", ColumnType::Bool)
            ]
        );
        assert_eq!(
            t.columns[0].data,
            ColumnData::Text { entries: ["d1", "17"].into_iter().collect(), codes: vec![0, 1] }
        );
        assert!(!t.columns[1].is_valid(1) && !t.columns[3].is_valid(0));
    }

    #[test]
    fn bad_lines_name_the_row_line_and_column() {
        let cases = [
            ("", "the file is empty"),
            ("{\"driver\":\"d1\"}\n[1,2]\n", "row 2 (line 2): not a JSON object"),
            ("{\"driver\":\"d1\"}\n{\"driver\":\"d2\"\n", "row 2 (line 2): not a JSON object"),
            ("{\"driver\":\"d1\",\"km\":{\"a\":1}}\n", "row 1 (line 1), column `km`: nested values"),
            ("{\"driver\":\"d1\",\"driver\":\"d2\"}\n", "column `driver`: the key appears twice"),
            (
                "{\"driver\":\"d1\",\"km\":1}\n{\"km\":2}\n",
                "row 2 (line 2), column `driver`: the entity column is empty",
            ),
            ("{\"who\":\"d1\"}\n", "column `driver`: no such column"),
        ];
        for (text, expected) in cases {
            let err = read(text).map(|_| ()).unwrap_err().to_string();
            assert!(err.starts_with("trips.jsonl"), "{err}");
            assert!(err.contains(expected), "`{err}` should contain `{expected}`");
        }
        let mut late = String::new();
        for i in 0..INFER_ROWS {
            late.push_str(&format!("{{\"driver\":\"d{i}\",\"km\":{i}}}\n"));
        }
        late.push_str("{\"driver\":\"x\",\"km\":1,\"extra\":2}\n");
        late.push_str("{\"driver\":\"y\",\"km\":\"far\"}\n");
        let err = read(&late).unwrap_err().to_string();
        assert!(
            err.contains("row 1001 (line 1001), column `extra`: a column the first rows did not have"),
            "{err}"
        );
        let err = read(&late.replace(",\"extra\":2", "")).unwrap_err().to_string();
        assert!(err.contains("row 1002 (line 1002), column `km`: expected int, found `far`"), "{err}");
        let bad_utf8 = b"{\"driver\":\"d1\"}\n{\"driver\":\"\xff\"}\n";
        let options = IngestOptions::entity("driver");
        let err = JsonLinesReader::new("trips.jsonl", &bad_utf8[..], &options).map(|_| ()).unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(err.to_string().contains("invalid UTF-8"), "{err}");
    }

    fn read_with(text: &str, limits: InputLimits) -> Result<Table, IngestError> {
        let options = IngestOptions { chunk_rows: usize::MAX, limits, ..IngestOptions::entity("driver") };
        let mut reader = JsonLinesReader::new("trips.jsonl", text.as_bytes(), &options)?;
        Ok(reader.next_chunk()?.expect("one chunk"))
    }

    /// A 32 MiB line is refused once it passes the limit, having read about
    /// the limit and one buffer: `read_line` would hold it whole first.
    #[test]
    fn a_long_line_is_refused_before_it_is_read_whole() {
        let limits = InputLimits { max_record_bytes: 256 << 10, ..InputLimits::default() };
        let options = IngestOptions { limits, ..IngestOptions::entity("driver") };
        for prefix in ["{\"driver\":\"", "{\"driver\":\"d1\"}\n{\"driver\":\""] {
            let input = crate::readers::csv::tests::Endless::new(prefix, b'x', 32 << 20);
            let served = input.served.clone();
            let err = JsonLinesReader::new("t.jsonl", input, &options).map(|_| ()).unwrap_err().to_string();
            let line = prefix.matches('\n').count() + 1;
            assert_eq!(
                err,
                format!("t.jsonl, row {line} (line {line}): the line is longer than the limit of 256 KiB")
            );
            let served = served.load(std::sync::atomic::Ordering::Relaxed);
            assert!(served < 2 << 20, "read {served} bytes");
        }
        let line = |n: usize| format!("{{\"driver\":\"{}\"}}\n", "d".repeat(n));
        let limits = InputLimits { max_field_bytes: 1 << 20, ..limits };
        assert!(read_with(&line((256 << 10) - 20), limits).is_ok());
        assert!(read_with(&line(256 << 10), limits).is_err());
    }

    /// Keys are capped at the column limit, per line and over the sample;
    /// a line's keys are found in constant time each (a line of 100 000
    /// keys took 53 s when each was looked for in a list).
    #[test]
    fn keys_are_capped_at_the_column_limit() {
        let object = |keys: std::ops::Range<usize>| {
            let keys: Vec<String> = keys.map(|i| format!("\"k{i}\":{i}")).collect();
            format!("{{\"driver\":\"d1\",{}}}\n", keys.join(","))
        };
        let wide = read_with(&object(0..4095), InputLimits::default()).unwrap();
        assert_eq!(wide.schema.fields.len(), 4096);
        for keys in [4096, 100_000] {
            let err = read_with(&object(0..keys), InputLimits::default()).unwrap_err().to_string();
            assert_eq!(
                err,
                "trips.jsonl, row 1 (line 1): the object has more than 4096 keys, the limit of columns"
            );
        }
        let err = read_with(&format!("{}{}", object(0..3000), object(3000..6000)), InputLimits::default())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "trips.jsonl, row 2 (line 2): the first rows have more than 4096 keys, the limit of columns"
        );
    }

    #[test]
    fn a_long_value_is_refused_naming_its_row_and_column() {
        let limits = InputLimits { max_field_bytes: 1 << 10, ..InputLimits::default() };
        let text = format!("{{\"driver\":\"d1\",\"note\":\"{}\"}}\n", "b".repeat(2000));
        let err = read_with(&text, limits).unwrap_err().to_string();
        assert_eq!(
            err,
            "trips.jsonl, row 1 (line 1), column `note`: the value takes 2000 bytes, over the limit of 1 KiB"
        );
    }

    /// Errors quote at most a short cut of a key, a value or serde_json's
    /// message (which quotes the line).
    #[test]
    fn errors_quote_a_short_cut_of_the_input() {
        let long = "é".repeat(5000);
        let mut late_key = String::new();
        for i in 0..INFER_ROWS {
            late_key.push_str(&format!("{{\"driver\":\"d{i}\"}}\n"));
        }
        late_key.push_str(&format!("{{\"driver\":\"x\",\"{long}\":1}}\n"));
        let cases = [
            late_key,
            format!("\"{long}\"\n"),
            format!("{{\"driver\":\"d1\",\"{long}\":[1]}}\n"),
            format!("{{\"driver\":\"d1\",\"{long}\":1,\"{long}\":2}}\n"),
            format!("{{\"{long}\":1}}\n"),
        ];
        for text in cases {
            let err = read(&text).map(|_| ()).unwrap_err().to_string();
            assert!(err.len() < 400, "{} bytes: {err}", err.len());
            assert!(err.contains('…'), "{err}");
        }
    }

    /// Deeply or widely nested values are skipped unread, not built.
    #[test]
    fn nested_values_are_refused_by_column() {
        let deep = format!("{{\"driver\":\"d1\",\"km\":{}{}}}\n", "[".repeat(100), "]".repeat(100));
        let wide = format!("{{\"driver\":\"d1\",\"km\":[{}0]}}\n", "[1,{\"a\":[]}],".repeat(100_000));
        for text in [deep, wide] {
            let err = read(&text).unwrap_err().to_string();
            assert_eq!(err, "trips.jsonl, row 1 (line 1), column `km`: nested values are not supported");
        }
    }

    /// As in CSV, the rows read to infer types stop at [`INFER_BYTES`].
    #[test]
    fn the_type_sample_stops_at_its_byte_budget() {
        let note = "n".repeat(64 << 10);
        let mut text = String::new();
        for i in 0..600 {
            let km = if i == 599 { "1.5".to_owned() } else { i.to_string() };
            text.push_str(&format!("{{\"driver\":\"d{i}\",\"km\":{km},\"note\":\"{note}\"}}\n"));
        }
        let err = read(&text).unwrap_err().to_string();
        assert!(err.ends_with("row 600 (line 600), column `km`: expected int, found `1.5`"), "{err}");
    }
}
