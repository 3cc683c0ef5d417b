//! Sequential scans of a table in columnar batches, with `entity` and
//! `identifier` columns turned into the run's pseudonyms on the way out.

use std::sync::Arc;

use crate::pseudonym::PseudonymKey;
use crate::schema::Classification;
use crate::table::{ColumnData, Table};

/// Why a scan could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("dataset `{dataset}` has no column `{column}`")]
    UnknownColumn { dataset: String, column: String },
    #[error("column `{0}` is named twice")]
    DuplicateColumn(String),
    #[error("a scan needs at least one row per batch")]
    ZeroBatchRows,
}

/// One column of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchColumn {
    pub values: BatchValues,
    /// LSB-first, 1 = present; `None` when this batch has no nulls here.
    pub validity: Option<Vec<u8>>,
}

/// The values of one column of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchValues {
    Int(Vec<i64>),
    Float(Vec<f64>),
    Bool(Vec<bool>),
    Timestamp(Vec<i64>),
    /// Codes index the scan's dictionary, which this batch extends by
    /// `new_entries`.
    Text {
        new_entries: Vec<String>,
        codes: Vec<u32>,
    },
    Pseudonym(Vec<u64>),
}

/// A run of rows, in the order the scan named the columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub rows: usize,
    pub columns: Vec<BatchColumn>,
    /// Entity pseudonyms this scan handed out for the first time in this
    /// batch: the gate must know them before it accepts contributions.
    pub new_entities: Vec<u64>,
}

/// A sequential pass over some columns of a table.
#[derive(Debug)]
pub struct Scan {
    table: Arc<Table>,
    columns: Vec<usize>,
    batch_rows: usize,
    next_row: usize,
    key: PseudonymKey,
    /// Per selected column: dictionary entries already sent (text) or
    /// pseudonymised (entity, identifier).
    seen: Vec<usize>,
    /// Per selected pseudonymised column: the pseudonym of each entry so far.
    pseudonyms: Vec<Vec<u64>>,
}

impl Scan {
    /// Start reading `columns` of `table`, `batch_rows` rows at a time.
    pub fn new(
        table: Arc<Table>,
        columns: &[&str],
        batch_rows: usize,
        key: PseudonymKey,
    ) -> Result<Self, ScanError> {
        if batch_rows == 0 {
            return Err(ScanError::ZeroBatchRows);
        }
        let mut indexes = Vec::with_capacity(columns.len());
        for (i, &name) in columns.iter().enumerate() {
            if columns[..i].contains(&name) {
                return Err(ScanError::DuplicateColumn(name.to_owned()));
            }
            let index = table.schema.index_of(name).ok_or_else(|| ScanError::UnknownColumn {
                dataset: table.name.clone(),
                column: name.to_owned(),
            })?;
            indexes.push(index);
        }
        let n = indexes.len();
        Ok(Self {
            table,
            columns: indexes,
            batch_rows,
            next_row: 0,
            key,
            seen: vec![0; n],
            pseudonyms: vec![Vec::new(); n],
        })
    }

    /// Rows not yet read.
    pub fn remaining_rows(&self) -> usize {
        self.table.rows - self.next_row
    }

    /// The next batch, or `None` at the end.
    pub fn next_batch(&mut self) -> Option<Batch> {
        let start = self.next_row;
        let end = (start + self.batch_rows).min(self.table.rows);
        if start >= end {
            return None;
        }
        self.next_row = end;
        let mut new_entities = Vec::new();
        let columns = (0..self.columns.len())
            .map(|i| {
                let index = self.columns[i];
                let column = &self.table.columns[index];
                let classification = self.table.schema.fields[index].classification;
                let values = match &column.data {
                    ColumnData::Int(v) => BatchValues::Int(v[start..end].to_vec()),
                    ColumnData::Float(v) => BatchValues::Float(v[start..end].to_vec()),
                    ColumnData::Bool(v) => BatchValues::Bool(v[start..end].to_vec()),
                    ColumnData::Timestamp(v) => BatchValues::Timestamp(v[start..end].to_vec()),
                    ColumnData::Text { entries, codes } => {
                        let codes = &codes[start..end];
                        // First-seen order: everything new is one range at the end.
                        let upto = codes.iter().max().map_or(0, |&m| m as usize + 1).max(self.seen[i]);
                        let fresh = &entries[self.seen[i]..upto];
                        self.seen[i] = upto;
                        if classification.is_pseudonymised() {
                            let known = &mut self.pseudonyms[i];
                            let first_new = known.len();
                            known.extend(fresh.iter().map(|value| self.key.pseudonym(value)));
                            if classification == Classification::Entity {
                                new_entities.extend_from_slice(&known[first_new..]);
                            }
                            BatchValues::Pseudonym(codes.iter().map(|&c| known[c as usize]).collect())
                        } else {
                            BatchValues::Text { new_entries: fresh.to_vec(), codes: codes.to_vec() }
                        }
                    }
                };
                let validity = column.validity.as_ref().and_then(|bits| slice_bits(bits, start, end));
                BatchColumn { values, validity }
            })
            .collect();
        Some(Batch { rows: end - start, columns, new_entities })
    }
}

/// Bits `start..end` of an LSB-first bitmap, or `None` if all are set.
fn slice_bits(bits: &[u8], start: usize, end: usize) -> Option<Vec<u8>> {
    let get = |row: usize| bits[row / 8] & (1 << (row % 8)) != 0;
    if (start..end).all(get) {
        return None;
    }
    let mut out = vec![0u8; (end - start).div_ceil(8)];
    for (i, row) in (start..end).enumerate() {
        if get(row) {
            out[i / 8] |= 1 << (i % 8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CsvOptions, read_csv};

    fn table() -> Arc<Table> {
        let csv = "driver,region,km\nd1,south,1\nd2,north,\nd1,east,3\nd3,south,4\nd2,west,5\n";
        let options = CsvOptions { entity: "driver".into(), identifiers: vec![] };
        Arc::new(read_csv("trips", "trips.csv", csv.as_bytes(), &options).unwrap())
    }

    fn key() -> PseudonymKey {
        PseudonymKey::for_run(&[1; 32], b"run")
    }

    #[test]
    fn batches_carry_dictionary_deltas_and_pseudonyms_not_clear_ids() {
        let mut scan = Scan::new(table(), &["driver", "region", "km"], 2, key()).unwrap();
        let b1 = scan.next_batch().unwrap();
        let b2 = scan.next_batch().unwrap();
        let b3 = scan.next_batch().unwrap();
        assert!(scan.next_batch().is_none());
        assert_eq!((b1.rows, b2.rows, b3.rows), (2, 2, 1));

        let region = |b: &Batch| b.columns[1].values.clone();
        assert_eq!(
            region(&b1),
            BatchValues::Text { new_entries: vec!["south".into(), "north".into()], codes: vec![0, 1] }
        );
        assert_eq!(region(&b2), BatchValues::Text { new_entries: vec!["east".into()], codes: vec![2, 0] });
        assert_eq!(region(&b3), BatchValues::Text { new_entries: vec!["west".into()], codes: vec![3] });

        let k = key();
        let p = |id: &str| k.pseudonym(id);
        assert_eq!(b1.columns[0].values, BatchValues::Pseudonym(vec![p("d1"), p("d2")]));
        assert_eq!(b2.columns[0].values, BatchValues::Pseudonym(vec![p("d1"), p("d3")]));
        assert_eq!(b1.new_entities, vec![p("d1"), p("d2")]);
        assert_eq!(b2.new_entities, vec![p("d3")]);
        assert!(b3.new_entities.is_empty());

        assert_eq!(b1.columns[2].validity, Some(vec![0b01]));
        assert_eq!(b2.columns[2].validity, None);
    }

    #[test]
    fn bad_requests_are_refused() {
        assert_eq!(
            Scan::new(table(), &["salary"], 8, key()).unwrap_err(),
            ScanError::UnknownColumn { dataset: "trips".into(), column: "salary".into() }
        );
        assert_eq!(
            Scan::new(table(), &["km", "km"], 8, key()).unwrap_err(),
            ScanError::DuplicateColumn("km".into())
        );
        assert_eq!(Scan::new(table(), &["km"], 0, key()).unwrap_err(), ScanError::ZeroBatchRows);
    }
}
