//! Columnar tables: typed vectors, text as a first-seen-order dictionary plus
//! codes, nulls as a validity bitmap.

use rustc_hash::FxHashMap;

use crate::schema::{ColumnType, Schema};

/// A dataset's rows, column-wise.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub name: String,
    pub schema: Schema,
    pub rows: usize,
    pub columns: Vec<Column>,
}

/// One column's values and nulls.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub data: ColumnData,
    /// LSB-first, 1 = present; `None` when the column has no nulls. A null
    /// row holds a default value (0, false, code of "").
    pub validity: Option<Vec<u8>>,
}

/// Typed values of one column.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnData {
    Int(Vec<i64>),
    Float(Vec<f64>),
    Bool(Vec<bool>),
    Timestamp(Vec<i64>),
    /// `entries` are in the order rows first used them, so the codes of rows
    /// `0..r` are always below the number of distinct values in those rows:
    /// a sequential scan's new dictionary entries form one contiguous range.
    Text {
        entries: Vec<String>,
        codes: Vec<u32>,
    },
}

impl Column {
    /// Whether `row` holds a value.
    pub fn is_valid(&self, row: usize) -> bool {
        self.validity.as_ref().is_none_or(|bits| bits[row / 8] & (1 << (row % 8)) != 0)
    }
}

/// Builds a [`Table`] row by row; the readers drive it.
#[derive(Debug)]
pub struct TableBuilder {
    name: String,
    schema: Schema,
    rows: usize,
    columns: Vec<ColumnBuilder>,
    /// Bytes of text held in this chunk's dictionaries.
    text_bytes: usize,
}

#[derive(Debug)]
struct ColumnBuilder {
    data: ColumnData,
    dictionary: FxHashMap<String, u32>,
    nulls: Vec<usize>,
}

impl TableBuilder {
    /// An empty table with this schema.
    pub fn new(name: impl Into<String>, schema: Schema) -> Self {
        let columns = Self::empty_columns(&schema);
        Self { name: name.into(), schema, rows: 0, columns, text_bytes: 0 }
    }

    fn empty_columns(schema: &Schema) -> Vec<ColumnBuilder> {
        Self::empty_columns_sized(schema, 0)
    }

    fn empty_columns_sized(schema: &Schema, rows: usize) -> Vec<ColumnBuilder> {
        schema
            .fields
            .iter()
            .map(|f| ColumnBuilder {
                data: match f.column_type {
                    ColumnType::Int => ColumnData::Int(Vec::with_capacity(rows)),
                    ColumnType::Float => ColumnData::Float(Vec::with_capacity(rows)),
                    ColumnType::Bool => ColumnData::Bool(Vec::with_capacity(rows)),
                    ColumnType::Timestamp => ColumnData::Timestamp(Vec::with_capacity(rows)),
                    ColumnType::Text => {
                        ColumnData::Text { entries: Vec::new(), codes: Vec::with_capacity(rows) }
                    }
                },
                dictionary: FxHashMap::default(),
                nulls: Vec::new(),
            })
            .collect()
    }

    /// The schema being built.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Append a null to `column`.
    pub fn push_null(&mut self, column: usize) {
        let c = &mut self.columns[column];
        c.nulls.push(self.rows);
        match &mut c.data {
            ColumnData::Int(v) | ColumnData::Timestamp(v) => v.push(0),
            ColumnData::Float(v) => v.push(0.0),
            ColumnData::Bool(v) => v.push(false),
            ColumnData::Text { .. } => {
                Self::push_text_into(c, "");
            }
        }
    }

    /// Append an int or timestamp.
    pub fn push_i64(&mut self, column: usize, value: i64) {
        match &mut self.columns[column].data {
            ColumnData::Int(v) | ColumnData::Timestamp(v) => v.push(value),
            other => panic!("push_i64 on {other:?}"),
        }
    }

    /// Append a float.
    pub fn push_f64(&mut self, column: usize, value: f64) {
        match &mut self.columns[column].data {
            ColumnData::Float(v) => v.push(value),
            other => panic!("push_f64 on {other:?}"),
        }
    }

    /// Append a bool.
    pub fn push_bool(&mut self, column: usize, value: bool) {
        match &mut self.columns[column].data {
            ColumnData::Bool(v) => v.push(value),
            other => panic!("push_bool on {other:?}"),
        }
    }

    /// Append a text value.
    pub fn push_text(&mut self, column: usize, value: &str) {
        self.text_bytes += Self::push_text_into(&mut self.columns[column], value);
    }

    /// Push `value`; returns the dictionary bytes it added.
    fn push_text_into(c: &mut ColumnBuilder, value: &str) -> usize {
        let ColumnData::Text { entries, codes } = &mut c.data else { panic!("push_text on {:?}", c.data) };
        let (code, added) = match c.dictionary.get(value) {
            Some(&code) => (code, 0),
            None => {
                let code = entries.len() as u32;
                entries.push(value.to_owned());
                c.dictionary.insert(value.to_owned(), code);
                (code, value.len())
            }
        };
        codes.push(code);
        added
    }

    /// Mark the current row complete: every column got exactly one value.
    pub fn end_row(&mut self) {
        self.rows += 1;
    }

    /// Rows completed so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Roughly the memory the rows so far hold: what bounds a chunk.
    pub fn approx_bytes(&self) -> usize {
        self.rows * self.columns.len() * 8 + self.text_bytes
    }

    /// The rows so far as a table; the builder starts over, empty, with the
    /// same schema and fresh dictionaries.
    pub fn take(&mut self) -> Table {
        // The next chunk is likely as long as this one: size it so.
        let columns =
            std::mem::replace(&mut self.columns, Self::empty_columns_sized(&self.schema, self.rows));
        let rows = std::mem::take(&mut self.rows);
        self.text_bytes = 0;
        Self::build(self.name.clone(), self.schema.clone(), rows, columns)
    }

    /// The finished table.
    pub fn finish(self) -> Table {
        Self::build(self.name, self.schema, self.rows, self.columns)
    }

    fn build(name: String, schema: Schema, rows: usize, columns: Vec<ColumnBuilder>) -> Table {
        let columns = columns
            .into_iter()
            .map(|c| {
                let validity = (!c.nulls.is_empty()).then(|| {
                    let mut bits = vec![0xffu8; rows.div_ceil(8)];
                    for &row in &c.nulls {
                        bits[row / 8] &= !(1 << (row % 8));
                    }
                    bits
                });
                Column { data: c.data, validity }
            })
            .collect();
        Table { name, schema, rows, columns }
    }
}
