//! Reading tenant data: datasets, scans and columnar batches.

use crate::bindings::kanon::plugin::data;
use crate::{ColumnInfo, DataError, Error};

/// Rows per batch unless a scan asks otherwise.
const DEFAULT_BATCH_ROWS: u32 = 64 * 1024;

/// A dataset granted to this run.
#[derive(Debug)]
pub struct Dataset {
    inner: data::Dataset,
}

impl Dataset {
    /// Open a dataset the manifest declared.
    pub fn open(name: &str) -> Result<Self, DataError> {
        Ok(Self { inner: data::open(name)? })
    }

    /// The granted columns, with their types and classifications.
    pub fn schema(&self) -> Vec<ColumnInfo> {
        self.inner.schema()
    }

    /// Read the named columns in batches of the default size.
    pub fn scan(&self, columns: &[&str]) -> Result<Scan, DataError> {
        self.scan_with_batch_rows(columns, DEFAULT_BATCH_ROWS)
    }

    /// Read the named columns, at most `batch_rows` rows a batch.
    pub fn scan_with_batch_rows(&self, columns: &[&str], batch_rows: u32) -> Result<Scan, DataError> {
        let names: Vec<String> = columns.iter().map(|&c| c.to_owned()).collect();
        Ok(Scan { inner: self.inner.scan(&names, batch_rows)? })
    }
}

/// A pass over a dataset; yields [`Batch`]es.
#[derive(Debug)]
pub struct Scan {
    inner: data::Scan,
}

impl Iterator for Scan {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        self.inner.next().map(|batch| Batch { inner: batch })
    }
}

/// The values of one column of a batch.
pub use data::ColumnValues;

/// A run of rows, column-wise, in the order the scan named the columns.
#[derive(Debug)]
pub struct Batch {
    inner: data::Batch,
}

/// Text as codes into the scan's dictionary, plus the dictionary entries this
/// batch appended. Feed `new_entries` to a [`LabelCoder`] before mapping codes.
#[derive(Debug, Clone, Copy)]
pub struct TextColumn<'a> {
    inner: &'a data::TextColumn,
}

impl<'a> TextColumn<'a> {
    /// Entries this batch appended to the scan's dictionary.
    pub fn new_entries(&self) -> &'a [String] {
        &self.inner.new_entries
    }

    /// Per row, an index into the scan's dictionary.
    pub fn codes(&self) -> &'a [u32] {
        &self.inner.codes
    }
}

macro_rules! typed_column {
    ($(#[$doc:meta])* $name:ident, $variant:ident, $ty:ty) => {
        $(#[$doc])*
        pub fn $name(&self, column: usize) -> Result<&[$ty], Error> {
            match self.values(column)? {
                ColumnValues::$variant(values) => Ok(values),
                _ => Err(self.mismatch(column, stringify!($variant))),
            }
        }
    };
}

impl Batch {
    /// Rows in this batch.
    pub fn rows(&self) -> usize {
        self.inner.rows as usize
    }

    /// The raw values of a column.
    pub fn values(&self, column: usize) -> Result<&ColumnValues, Error> {
        self.inner
            .columns
            .get(column)
            .map(|c| &c.values)
            .ok_or_else(|| Error::new(format!("batch has no column {column}")))
    }

    /// Whether `row` of `column` holds a value (not null).
    pub fn is_valid(&self, column: usize, row: usize) -> bool {
        match self.inner.columns.get(column).and_then(|c| c.validity.as_ref()) {
            None => true,
            Some(bits) => bits.get(row / 8).is_some_and(|byte| byte & (1 << (row % 8)) != 0),
        }
    }

    typed_column!(
        /// An `int` column.
        ints, Int, i64
    );
    typed_column!(
        /// A `float` column.
        floats, Float, f64
    );
    typed_column!(
        /// A `boolean` column.
        booleans, Boolean, bool
    );
    typed_column!(
        /// A `timestamp` column, in microseconds since the Unix epoch.
        timestamps, Timestamp, i64
    );
    typed_column!(
        /// An `entity` or `identifier` column, as host-issued pseudonyms.
        pseudonyms, Pseudonym, u64
    );

    /// A `text` column.
    pub fn text(&self, column: usize) -> Result<TextColumn<'_>, Error> {
        match self.values(column)? {
            ColumnValues::Text(inner) => Ok(TextColumn { inner }),
            _ => Err(self.mismatch(column, "Text")),
        }
    }

    fn mismatch(&self, column: usize, wanted: &str) -> Error {
        Error::new(format!("column {column} is not of type {wanted}"))
    }
}

/// Maps a scan's text dictionary onto a dimension's label codes, one entry at
/// a time as the dictionary grows, so the per-row work is one array lookup.
#[derive(Debug, Clone)]
pub struct LabelCoder {
    labels: Vec<String>,
    by_entry: Vec<u32>,
}

impl LabelCoder {
    /// Sentinel for dictionary entries that are not a label.
    const NONE: u32 = u32::MAX;

    /// A coder for the given labels (code i is `labels[i]`).
    pub fn new(labels: &[&str]) -> Self {
        Self { labels: labels.iter().map(|&l| l.to_owned()).collect(), by_entry: Vec::new() }
    }

    /// Learn the entries a batch appended to the scan's dictionary.
    pub fn extend(&mut self, new_entries: &[String]) {
        for entry in new_entries {
            let code = self.labels.iter().position(|label| label == entry);
            self.by_entry.push(code.map_or(Self::NONE, |c| c as u32));
        }
    }

    /// The label code of a dictionary entry, or `None` if it is no label.
    #[inline]
    pub fn code(&self, entry: u32) -> Option<u32> {
        match self.by_entry.get(entry as usize) {
            Some(&code) if code != Self::NONE => Some(code),
            _ => None,
        }
    }

    /// Codes per dictionary entry, `u32::MAX` for entries that are no label:
    /// for loops that want a plain slice.
    pub fn table(&self) -> &[u32] {
        &self.by_entry
    }
}
