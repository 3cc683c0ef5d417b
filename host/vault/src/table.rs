//! Columnar tables: typed vectors, text as a first-seen-order dictionary plus
//! codes, nulls as a validity bitmap.

use std::hash::BuildHasher;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

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
        entries: Dictionary,
        codes: Vec<u32>,
    },
}

/// A text column's distinct values, in one buffer: one allocation per chunk
/// instead of one per value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dictionary {
    text: String,
    /// Where each entry ends in `text`.
    ends: Vec<u32>,
}

impl Dictionary {
    /// An empty dictionary with room for `entries` entries of `text` bytes.
    pub fn with_capacity(entries: usize, text: usize) -> Self {
        Self { text: String::with_capacity(text), ends: Vec::with_capacity(entries) }
    }

    /// Entries.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Bytes of text in all entries.
    pub fn text_len(&self) -> usize {
        self.text.len()
    }

    /// Entry `i`.
    pub fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.text[start..self.ends[i] as usize]
    }

    /// Add an entry at the end (entries need not be distinct here).
    pub fn push(&mut self, entry: &str) {
        self.text.push_str(entry);
        self.ends.push(u32::try_from(self.text.len()).expect("a chunk's text stays below 4 GiB"));
    }

    /// The entries in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// The entries' text, one after another, and where each ends in it.
    pub(crate) fn into_parts(self) -> (String, Vec<u32>) {
        (self.text, self.ends)
    }
}

impl std::ops::Index<usize> for Dictionary {
    type Output = str;

    fn index(&self, i: usize) -> &str {
        self.get(i)
    }
}

impl<const N: usize> PartialEq<[&str; N]> for Dictionary {
    fn eq(&self, other: &[&str; N]) -> bool {
        self.iter().eq(other.iter().copied())
    }
}

impl<S: AsRef<str>> FromIterator<S> for Dictionary {
    fn from_iter<I: IntoIterator<Item = S>>(entries: I) -> Self {
        let mut dictionary = Self::default();
        entries.into_iter().for_each(|e| dictionary.push(e.as_ref()));
        dictionary
    }
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
    /// Codes of a text column's entries, by the entries' hash.
    dictionary: HashTable<u32>,
    nulls: Vec<usize>,
}

impl TableBuilder {
    /// An empty table with this schema.
    pub fn new(name: impl Into<String>, schema: Schema) -> Self {
        let columns = Self::empty_columns(&schema);
        Self { name: name.into(), schema, rows: 0, columns, text_bytes: 0 }
    }

    fn empty_columns(schema: &Schema) -> Vec<ColumnBuilder> {
        Self::empty_columns_like(schema, 0, &[])
    }

    /// Empty columns with room for `rows` rows and, per text column, as
    /// many entries as `previous` (the last chunk's columns) had.
    fn empty_columns_like(schema: &Schema, rows: usize, previous: &[ColumnBuilder]) -> Vec<ColumnBuilder> {
        schema
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let (entries, text) = match previous.get(i).map(|c| &c.data) {
                    Some(ColumnData::Text { entries, .. }) => (entries.len(), entries.text_len()),
                    _ => (0, 0),
                };
                ColumnBuilder {
                    data: match f.column_type {
                        ColumnType::Int => ColumnData::Int(Vec::with_capacity(rows)),
                        ColumnType::Float => ColumnData::Float(Vec::with_capacity(rows)),
                        ColumnType::Bool => ColumnData::Bool(Vec::with_capacity(rows)),
                        ColumnType::Timestamp => ColumnData::Timestamp(Vec::with_capacity(rows)),
                        ColumnType::Text => ColumnData::Text {
                            entries: Dictionary::with_capacity(entries, text),
                            codes: Vec::with_capacity(rows),
                        },
                    },
                    dictionary: HashTable::with_capacity(entries),
                    nulls: Vec::new(),
                }
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
        self.push_text_code(column, value);
    }

    /// Append a text value; returns its code in this chunk's dictionary.
    pub(crate) fn push_text_code(&mut self, column: usize, value: &str) -> u32 {
        let (code, added) = Self::push_text_into(&mut self.columns[column], value);
        self.text_bytes += added;
        code
    }

    /// Append the text value that has `code` in this chunk's dictionary
    /// (from [`Self::push_text_code`] since the last [`Self::take`]).
    pub(crate) fn push_code(&mut self, column: usize, code: u32) {
        let ColumnData::Text { entries, codes } = &mut self.columns[column].data else {
            panic!("push_code on a column that is not text")
        };
        debug_assert!((code as usize) < entries.len(), "a code of this chunk");
        codes.push(code);
    }

    /// Push `value`; returns its code and the dictionary bytes it added.
    fn push_text_into(c: &mut ColumnBuilder, value: &str) -> (u32, usize) {
        let ColumnData::Text { entries, codes } = &mut c.data else { panic!("push_text on {:?}", c.data) };
        let hash = FxBuildHasher.hash_one(value);
        let (code, added) = match c.dictionary.find(hash, |&code| entries.get(code as usize) == value) {
            Some(&code) => (code, 0),
            None => {
                let code = entries.len() as u32;
                entries.push(value);
                c.dictionary
                    .insert_unique(hash, code, |&code| FxBuildHasher.hash_one(entries.get(code as usize)));
                (code, value.len())
            }
        };
        codes.push(code);
        (code, added)
    }

    /// Values in `column` so far. Columns filled a run at a time (below)
    /// may lag the rows ended; every column holds as many values as rows
    /// were ended when the table is taken.
    pub(crate) fn column_len(&self, column: usize) -> usize {
        match &self.columns[column].data {
            ColumnData::Int(v) | ColumnData::Timestamp(v) => v.len(),
            ColumnData::Float(v) => v.len(),
            ColumnData::Bool(v) => v.len(),
            ColumnData::Text { codes, .. } => codes.len(),
        }
    }

    /// An int or timestamp column's values, to append a run to at once;
    /// its nulls are then marked with [`Self::set_null`].
    pub(crate) fn ints_mut(&mut self, column: usize) -> &mut Vec<i64> {
        match &mut self.columns[column].data {
            ColumnData::Int(v) | ColumnData::Timestamp(v) => v,
            other => panic!("ints_mut on {other:?}"),
        }
    }

    /// A float column's values, to append a run to at once.
    pub(crate) fn floats_mut(&mut self, column: usize) -> &mut Vec<f64> {
        match &mut self.columns[column].data {
            ColumnData::Float(v) => v,
            other => panic!("floats_mut on {other:?}"),
        }
    }

    /// A bool column's values, to append a run to at once.
    pub(crate) fn bools_mut(&mut self, column: usize) -> &mut Vec<bool> {
        match &mut self.columns[column].data {
            ColumnData::Bool(v) => v,
            other => panic!("bools_mut on {other:?}"),
        }
    }

    /// Make value `row` of a column that is not text, already appended, a
    /// null: it holds the default value, as [`Self::push_null`] leaves it.
    pub(crate) fn set_null(&mut self, column: usize, row: usize) {
        let c = &mut self.columns[column];
        c.nulls.push(row);
        match &mut c.data {
            ColumnData::Int(v) | ColumnData::Timestamp(v) => v[row] = 0,
            ColumnData::Float(v) => v[row] = 0.0,
            ColumnData::Bool(v) => v[row] = false,
            ColumnData::Text { .. } => panic!("set_null on a text column"),
        }
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
        // The next chunk is likely much like this one: size it so.
        let next = Self::empty_columns_like(&self.schema, self.rows, &self.columns);
        let columns = std::mem::replace(&mut self.columns, next);
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
