//! The one JSON-lines reader: one flat object per line. Columns are the keys
//! of the first rows in first-seen order; scalars are read through their text
//! form, so typing and errors are the CSV reader's.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use crate::IngestError;
use crate::ingest::{self, ChunkReader, INFER_ROWS, IngestOptions};
use crate::schema::Schema;
use crate::table::{Table, TableBuilder};

/// One line's fields, in the order they appear.
struct Row(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Row {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RowVisitor;
        impl<'de> Visitor<'de> for RowVisitor {
            type Value = Row;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Row, A::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    fields.push(entry);
                }
                Ok(Row(fields))
            }
        }
        deserializer.deserialize_map(RowVisitor)
    }
}

/// A row as text values by column, `None` where absent or null.
type TextRow = Vec<Option<String>>;

/// Reads JSON lines, one chunk at a time.
pub struct JsonLinesReader<R: Read> {
    source: String,
    input: BufReader<R>,
    options: IngestOptions,
    line_text: String,
    /// Physical lines read so far.
    line: u64,
    /// Data rows parsed so far.
    row: u64,
    /// Sampled rows, as text by column, with their line numbers.
    sample: VecDeque<(u64, TextRow)>,
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
            line_text: String::new(),
            line: 0,
            row: 0,
            sample: VecDeque::new(),
            builder: TableBuilder::new("", Schema::default()),
        };
        let mut columns: Vec<String> = Vec::new();
        let mut raw_sample = Vec::new();
        while raw_sample.len() < INFER_ROWS {
            let Some(fields) = reader.next_object(raw_sample.len() as u64 + 1)? else { break };
            for (name, _) in &fields {
                if !columns.contains(name) {
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
            let text = reader.text_row(&columns, row, line, fields)?;
            reader.sample.push_back((line, text));
        }
        let sample = &reader.sample;
        let schema = ingest::classify(source, &columns, options, |i| {
            ingest::infer(sample.iter().map(|(_, r)| r[i].as_deref().unwrap_or("")))
        })?;
        reader.builder = TableBuilder::new("", schema);
        Ok(reader)
    }

    /// The next non-blank line, data row `row`, as an object; `None` at the end.
    fn next_object(&mut self, row: u64) -> Result<Option<Vec<(String, Value)>>, IngestError> {
        loop {
            self.line_text.clear();
            let read = self.input.read_line(&mut self.line_text).map_err(|e| {
                let detail = if e.kind() == std::io::ErrorKind::InvalidData {
                    "invalid UTF-8".to_owned()
                } else {
                    format!("cannot read: {e}")
                };
                IngestError { line: Some(self.line + 1), ..IngestError::whole(&self.source, detail) }
            })?;
            if read == 0 {
                return Ok(None);
            }
            self.line += 1;
            if self.line_text.trim().is_empty() {
                continue;
            }
            return match serde_json::from_str::<Row>(&self.line_text) {
                Ok(Row(fields)) => Ok(Some(fields)),
                Err(e) => Err(IngestError {
                    row: Some(row),
                    line: Some(self.line),
                    ..IngestError::whole(&self.source, format!("not a JSON object: {e}"))
                }),
            };
        }
    }

    /// `fields` as text by `columns`; keys outside them, nested values and
    /// repeated keys are errors.
    fn text_row(
        &self,
        columns: &[String],
        row: u64,
        line: u64,
        fields: Vec<(String, Value)>,
    ) -> Result<TextRow, IngestError> {
        let mut out: TextRow = vec![None; columns.len()];
        let mut seen = vec![false; columns.len()];
        for (name, value) in fields {
            let error =
                |detail: &str| IngestError::at(&self.source, row, Some(line), &name, detail.to_owned());
            let Some(i) = columns.iter().position(|c| *c == name) else {
                return Err(error("a column the first rows did not have"));
            };
            if std::mem::replace(&mut seen[i], true) {
                return Err(error("the key appears twice"));
            }
            out[i] = match value {
                Value::Null => None,
                Value::Bool(b) => Some(b.to_string()),
                Value::Number(n) => Some(n.to_string()),
                Value::String(s) => Some(s),
                Value::Array(_) | Value::Object(_) => return Err(error("nested values are not supported")),
            };
        }
        Ok(out)
    }

    fn push(&mut self, line: u64, text: &TextRow) -> Result<(), IngestError> {
        self.row += 1;
        let values = text.iter().map(|v| v.as_deref().unwrap_or(""));
        ingest::push_row(&mut self.builder, &self.source, self.row, Some(line), values)
    }
}

impl<R: Read + Send> ChunkReader for JsonLinesReader<R> {
    fn schema(&self) -> &Schema {
        self.builder.schema()
    }

    fn next_chunk(&mut self) -> Result<Option<Table>, IngestError> {
        let columns: Vec<String> = self.builder.schema().fields.iter().map(|f| f.name.clone()).collect();
        while !ingest::chunk_full(&self.builder, &self.options) {
            if let Some((line, text)) = self.sample.pop_front() {
                self.push(line, &text)?;
                continue;
            }
            let Some(fields) = self.next_object(self.row + 1)? else { break };
            let text = self.text_row(&columns, self.row + 1, self.line, fields)?;
            self.push(self.line, &text)?;
        }
        Ok((self.builder.rows() > 0).then(|| self.builder.take()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
