//! The one CSV reader: schema inference, typed parsing, errors that name the
//! row and column.

use std::io::Read;
use std::path::Path;

use crate::IngestError;
use crate::schema::{Classification, ColumnType, Field, Schema};
use crate::table::{Table, TableBuilder};
use crate::timestamp::parse_timestamp;

/// Rows read to infer column types before parsing strictly.
const INFER_ROWS: usize = 1000;

/// How to read a CSV file.
#[derive(Debug, Clone, Default)]
pub struct CsvOptions {
    /// The entity column (the privacy unit): required.
    pub entity: String,
    /// Other identifier columns, pseudonymised like the entity.
    pub identifiers: Vec<String>,
}

/// Read a CSV file into a table named `name`.
pub fn read_csv_file(name: &str, path: &Path, options: &CsvOptions) -> Result<Table, IngestError> {
    let source = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| IngestError {
        source_name: source.clone(),
        row: None,
        line: None,
        column: None,
        detail: format!("cannot open: {e}"),
    })?;
    read_csv(name, &source, std::io::BufReader::with_capacity(1 << 20, file), options)
}

/// Read CSV from `input` (named `source` in errors) into a table named `name`.
pub fn read_csv(
    name: &str,
    source: &str,
    input: impl Read,
    options: &CsvOptions,
) -> Result<Table, IngestError> {
    let error = |row: Option<u64>, line: Option<u64>, column: Option<&str>, detail: String| IngestError {
        source_name: source.to_owned(),
        row,
        line,
        column: column.map(str::to_owned),
        detail,
    };
    let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(input);
    let headers: Vec<String> = match reader.headers() {
        Ok(h) => h.iter().map(|h| h.trim().to_owned()).collect(),
        Err(e) => return Err(csv_error(source, &e)),
    };
    if headers.is_empty() || headers.iter().all(String::is_empty) {
        return Err(error(None, Some(1), None, "the file is empty: no header row".into()));
    }
    for (i, h) in headers.iter().enumerate() {
        if h.is_empty() {
            return Err(error(None, Some(1), None, format!("header {} is empty", i + 1)));
        }
        if headers[..i].contains(h) {
            return Err(error(None, Some(1), Some(h), "the column name appears twice".into()));
        }
    }
    if options.entity.is_empty() {
        return Err(error(None, None, None, "no entity column given".into()));
    }
    for wanted in std::iter::once(&options.entity).chain(&options.identifiers) {
        if !headers.contains(wanted) {
            return Err(error(
                None,
                Some(1),
                Some(wanted),
                format!("no such column; the columns are: {}", headers.join(", ")),
            ));
        }
    }
    let classify = |h: &String| {
        if *h == options.entity {
            Classification::Entity
        } else if options.identifiers.contains(h) {
            Classification::Identifier
        } else {
            Classification::Attribute
        }
    };

    // Buffer a sample, infer the types from it, then parse everything strictly.
    let mut records = reader.into_records();
    let mut sample = Vec::with_capacity(INFER_ROWS);
    for record in records.by_ref().take(INFER_ROWS) {
        sample.push(record.map_err(|e| csv_error(source, &e))?);
    }
    if sample.is_empty() {
        return Err(error(None, None, None, "the file has a header but no rows".into()));
    }
    let fields: Vec<Field> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let classification = classify(h);
            let column_type = if classification.is_pseudonymised() {
                ColumnType::Text
            } else {
                infer(sample.iter().map(|r| r.get(i).unwrap_or("")))
            };
            Field { name: h.clone(), column_type, classification }
        })
        .collect();
    let entity = fields.iter().position(|f| f.classification == Classification::Entity).expect("checked");

    let mut builder = TableBuilder::new(name, Schema { fields });
    let mut row: u64 = 0;
    let mut push = |builder: &mut TableBuilder, record: &csv::StringRecord| -> Result<(), IngestError> {
        row += 1;
        let line = record.position().map(|p| p.line());
        for (i, raw) in record.iter().enumerate() {
            let field = &builder.schema().fields[i];
            let value = raw.trim();
            if value.is_empty() {
                if i == entity {
                    return Err(error(
                        Some(row),
                        line,
                        Some(&field.name),
                        "the entity column is empty".into(),
                    ));
                }
                builder.push_null(i);
                continue;
            }
            let bad = |what: ColumnType| {
                error(
                    Some(row),
                    line,
                    Some(&field.name),
                    format!("expected {what}, found `{}`", truncate(value)),
                )
            };
            match field.column_type {
                ColumnType::Int => {
                    let v = value.parse::<i64>().map_err(|_| bad(ColumnType::Int))?;
                    builder.push_i64(i, v);
                }
                ColumnType::Float => {
                    let v = value
                        .parse::<f64>()
                        .ok()
                        .filter(|v| v.is_finite())
                        .ok_or_else(|| bad(ColumnType::Float))?;
                    builder.push_f64(i, v);
                }
                ColumnType::Bool => {
                    builder.push_bool(i, parse_bool(value).ok_or_else(|| bad(ColumnType::Bool))?)
                }
                ColumnType::Timestamp => {
                    builder.push_i64(i, parse_timestamp(value).ok_or_else(|| bad(ColumnType::Timestamp))?);
                }
                ColumnType::Text => builder.push_text(i, value),
            }
        }
        builder.end_row();
        Ok(())
    };
    for record in &sample {
        push(&mut builder, record)?;
    }
    drop(sample);
    for record in records {
        push(&mut builder, &record.map_err(|e| csv_error(source, &e))?)?;
    }
    Ok(builder.finish())
}

/// The narrowest type every non-empty sample value parses as.
fn infer<'a>(values: impl Iterator<Item = &'a str> + Clone) -> ColumnType {
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

fn parse_bool(value: &str) -> Option<bool> {
    if value.eq_ignore_ascii_case("true") {
        Some(true)
    } else if value.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

fn truncate(value: &str) -> String {
    match value.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &value[..i]),
        None => value.to_owned(),
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
    use crate::table::ColumnData;

    fn options() -> CsvOptions {
        CsvOptions { entity: "driver".into(), identifiers: vec![] }
    }

    fn read(text: &str) -> Result<Table, IngestError> {
        read_csv("trips", "trips.csv", text.as_bytes(), &options())
    }

    #[test]
    fn infers_types_and_classifies_columns() {
        let csv = "driver,plate,km,loaded,when,region,n\nd1,AB-1,1.5,true,2024-01-01,north,3\nd2,AB-2,2,false,2024-01-02T10:00:00Z,,4\n";
        let options = CsvOptions { entity: "driver".into(), identifiers: vec!["plate".into()] };
        let t = read_csv("trips", "trips.csv", csv.as_bytes(), &options).unwrap();
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
        let err = read_csv("t", "trips.csv", &invalid_utf8[..], &options()).unwrap_err().to_string();
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
    fn dictionaries_are_in_first_seen_order() {
        let t = read("driver,region\nd1,south\nd2,north\nd3,south\n").unwrap();
        let ColumnData::Text { entries, codes } = &t.columns[1].data else { panic!() };
        assert_eq!(
            (entries.as_slice(), codes.as_slice()),
            (&["south".to_owned(), "north".to_owned()][..], &[0, 1, 0][..])
        );
    }
}
