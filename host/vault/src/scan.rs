//! Sequential scans of a stored dataset version in columnar batches: chunk
//! by chunk, decrypting only the scanned columns, with `entity` and
//! `identifier` columns turned into the run's pseudonyms on the way out.

use rustc_hash::FxHashMap;

use crate::pseudonym::PseudonymKey;
use crate::schema::Classification;
use crate::store::{DatasetVersion, VaultError};
use crate::table::{Column, ColumnData};

/// Why a scan could not start.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("dataset `{dataset}` has no column `{column}`")]
    UnknownColumn { dataset: String, column: String },
    #[error("column `{0}` is named twice")]
    DuplicateColumn(String),
    #[error("a scan needs at least one row per batch")]
    ZeroBatchRows,
    /// The stored chunk could not be read: a host fault, not the reader's.
    #[error(transparent)]
    Vault(#[from] VaultError),
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
    /// Entity pseudonyms that may be new in this batch: every entity of a
    /// batch is listed here or in an earlier batch, and the gate must know
    /// them before it accepts contributions.
    pub new_entities: Vec<u64>,
}

/// A sequential pass over some columns of a dataset version.
#[derive(Debug)]
pub struct Scan {
    dataset: DatasetVersion,
    columns: Vec<usize>,
    classifications: Vec<Classification>,
    batch_rows: usize,
    key: PseudonymKey,
    next_chunk: usize,
    current: Option<LoadedChunk>,
    /// Per scanned text attribute: the scan's dictionary so far.
    dictionaries: Vec<FxHashMap<String, u32>>,
    /// Per scanned pseudonymised column: pseudonyms computed so far, so a
    /// value repeated across chunks is hashed with blake3 once per scan.
    pseudonyms: Vec<FxHashMap<String, u64>>,
}

/// A decoded chunk being handed out.
#[derive(Debug)]
struct LoadedChunk {
    columns: Vec<Column>,
    rows: usize,
    next_row: usize,
    /// Per scanned column: how its chunk-local dictionary codes map out.
    remaps: Vec<Remap>,
    /// For the chunk's first batch: dictionary entries new to the scan.
    new_entries: Vec<Vec<String>>,
    /// For the chunk's first batch: the chunk's entity pseudonyms.
    new_entities: Vec<u64>,
}

#[derive(Debug)]
enum Remap {
    Unchanged,
    /// Local code to the scan's dictionary code.
    Codes(Vec<u32>),
    /// Local code to the run's pseudonym.
    Pseudonyms(Vec<u64>),
}

impl Scan {
    /// Start reading `columns` of `dataset`, at most `batch_rows` rows at a time.
    pub fn new(
        dataset: DatasetVersion,
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
            let index = dataset.schema().index_of(name).ok_or_else(|| ScanError::UnknownColumn {
                dataset: dataset.name().to_owned(),
                column: name.to_owned(),
            })?;
            indexes.push(index);
        }
        let classifications = indexes.iter().map(|&i| dataset.schema().fields[i].classification).collect();
        Ok(Self {
            dictionaries: vec![FxHashMap::default(); indexes.len()],
            pseudonyms: vec![FxHashMap::default(); indexes.len()],
            dataset,
            columns: indexes,
            classifications,
            batch_rows,
            key,
            next_chunk: 0,
            current: None,
        })
    }

    /// Decode the next chunk and map its dictionaries onto the scan's.
    fn load(&mut self, chunk: usize) -> Result<LoadedChunk, ScanError> {
        let columns = self.dataset.read_chunk(chunk, &self.columns)?;
        let mut remaps = Vec::with_capacity(columns.len());
        let mut new_entries = vec![Vec::new(); columns.len()];
        let mut new_entities = Vec::new();
        for (i, column) in columns.iter().enumerate() {
            let ColumnData::Text { entries, .. } = &column.data else {
                remaps.push(Remap::Unchanged);
                continue;
            };
            let classification = self.classifications[i];
            if classification.is_pseudonymised() {
                let known = &mut self.pseudonyms[i];
                let key = &self.key;
                let pseudonyms: Vec<u64> = entries
                    .iter()
                    .map(|e| match known.get(e.as_str()) {
                        Some(&p) => p,
                        None => *known.entry(e.clone()).or_insert_with(|| key.pseudonym(e)),
                    })
                    .collect();
                if classification == Classification::Entity {
                    new_entities.extend_from_slice(&pseudonyms);
                }
                remaps.push(Remap::Pseudonyms(pseudonyms));
            } else {
                let dictionary = &mut self.dictionaries[i];
                let codes = entries
                    .iter()
                    .map(|entry| match dictionary.get(entry) {
                        Some(&code) => code,
                        None => {
                            let code = dictionary.len() as u32;
                            dictionary.insert(entry.clone(), code);
                            new_entries[i].push(entry.clone());
                            code
                        }
                    })
                    .collect();
                remaps.push(Remap::Codes(codes));
            }
        }
        let rows = self.dataset.chunk_rows(chunk);
        Ok(LoadedChunk { columns, rows, next_row: 0, remaps, new_entries, new_entities })
    }

    /// The next batch, or `None` at the end.
    pub fn next_batch(&mut self) -> Result<Option<Batch>, ScanError> {
        loop {
            if let Some(chunk) = &mut self.current
                && chunk.next_row < chunk.rows
            {
                return Ok(Some(chunk.batch(self.batch_rows)));
            }
            if self.next_chunk >= self.dataset.chunk_count() {
                self.current = None;
                return Ok(None);
            }
            let chunk = self.next_chunk;
            self.next_chunk += 1;
            self.current = Some(self.load(chunk)?);
        }
    }
}

impl LoadedChunk {
    fn batch(&mut self, batch_rows: usize) -> Batch {
        let (start, end) = (self.next_row, (self.next_row + batch_rows).min(self.rows));
        self.next_row = end;
        let columns = self
            .columns
            .iter()
            .zip(&self.remaps)
            .zip(&mut self.new_entries)
            .map(|((column, remap), new_entries)| {
                let values = match (&column.data, remap) {
                    (ColumnData::Int(v), _) => BatchValues::Int(v[start..end].to_vec()),
                    (ColumnData::Float(v), _) => BatchValues::Float(v[start..end].to_vec()),
                    (ColumnData::Bool(v), _) => BatchValues::Bool(v[start..end].to_vec()),
                    (ColumnData::Timestamp(v), _) => BatchValues::Timestamp(v[start..end].to_vec()),
                    (ColumnData::Text { codes, .. }, Remap::Pseudonyms(map)) => {
                        BatchValues::Pseudonym(codes[start..end].iter().map(|&c| map[c as usize]).collect())
                    }
                    (ColumnData::Text { codes, .. }, Remap::Codes(map)) => BatchValues::Text {
                        new_entries: std::mem::take(new_entries),
                        codes: codes[start..end].iter().map(|&c| map[c as usize]).collect(),
                    },
                    (ColumnData::Text { .. }, Remap::Unchanged) => unreachable!("text columns are remapped"),
                };
                let validity = column.validity.as_ref().and_then(|bits| slice_bits(bits, start, end));
                BatchColumn { values, validity }
            })
            .collect();
        Batch { rows: end - start, columns, new_entities: std::mem::take(&mut self.new_entities) }
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
    use crate::{CsvReader, IngestOptions, Vault, WriteMode};

    fn dataset(chunk_rows: usize) -> (Vault, DatasetVersion) {
        let csv = "driver,region,km\nd1,south,1\nd2,north,\nd1,east,3\nd3,south,4\nd2,west,5\n";
        let options = IngestOptions { chunk_rows, ..IngestOptions::entity("driver") };
        let vault = Vault::temporary().unwrap();
        let reader = CsvReader::new("trips.csv", csv.as_bytes(), &options).unwrap();
        vault.ingest("acme", "trips", WriteMode::Replace, Box::new(reader), "trips.csv").unwrap();
        let version = vault.dataset("acme", "trips", None).unwrap();
        (vault, version)
    }

    fn key() -> PseudonymKey {
        PseudonymKey::for_run(&[1; 32], b"run")
    }

    fn all(scan: &mut Scan) -> Vec<Batch> {
        std::iter::from_fn(|| scan.next_batch().unwrap()).collect()
    }

    #[test]
    fn batches_carry_dictionary_deltas_and_pseudonyms_not_clear_ids() {
        let (_vault, trips) = dataset(usize::MAX);
        let mut scan = Scan::new(trips, &["driver", "region", "km"], 2, key()).unwrap();
        let [b1, b2, b3] = <[Batch; 3]>::try_from(all(&mut scan)).unwrap();
        assert_eq!((b1.rows, b2.rows, b3.rows), (2, 2, 1));

        let region = |b: &Batch| b.columns[1].values.clone();
        let entries = |e: &[&str]| e.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            region(&b1),
            BatchValues::Text {
                new_entries: entries(&["south", "north", "east", "west"]),
                codes: vec![0, 1]
            }
        );
        assert_eq!(region(&b2), BatchValues::Text { new_entries: vec![], codes: vec![2, 0] });
        assert_eq!(region(&b3), BatchValues::Text { new_entries: vec![], codes: vec![3] });

        let k = key();
        let p = |id: &str| k.pseudonym(id);
        assert_eq!(b1.columns[0].values, BatchValues::Pseudonym(vec![p("d1"), p("d2")]));
        assert_eq!(b2.columns[0].values, BatchValues::Pseudonym(vec![p("d1"), p("d3")]));
        assert_eq!(b1.new_entities, vec![p("d1"), p("d2"), p("d3")]);
        assert!(b2.new_entities.is_empty() && b3.new_entities.is_empty());

        assert_eq!(b1.columns[2].validity, Some(vec![0b01]));
        assert_eq!(b2.columns[2].validity, None);
    }

    #[test]
    fn chunk_dictionaries_map_onto_one_scan_dictionary() {
        let (_vault, trips) = dataset(2);
        let mut scan = Scan::new(trips, &["region", "driver"], 10, key()).unwrap();
        let batches = all(&mut scan);
        assert_eq!(batches.iter().map(|b| b.rows).collect::<Vec<_>>(), [2, 2, 1], "one batch per chunk");
        let mut dictionary: Vec<String> = Vec::new();
        let mut regions = Vec::new();
        for b in &batches {
            let BatchValues::Text { new_entries, codes } = &b.columns[0].values else { panic!() };
            dictionary.extend(new_entries.iter().cloned());
            regions.extend(codes.iter().map(|&c| dictionary[c as usize].clone()));
        }
        assert_eq!(regions, ["south", "north", "east", "south", "west"]);
        assert_eq!(dictionary, ["south", "north", "east", "west"], "south is sent once");
        let k = key();
        let issued: std::collections::HashSet<u64> =
            batches.iter().flat_map(|b| b.new_entities.clone()).collect();
        for b in &batches {
            let BatchValues::Pseudonym(ids) = &b.columns[1].values else { panic!() };
            assert!(ids.iter().all(|id| issued.contains(id)));
        }
        assert_eq!(issued.len(), 3);
        assert!(issued.contains(&k.pseudonym("d3")));
    }

    #[test]
    fn bad_requests_are_refused() {
        let (_vault, trips) = dataset(usize::MAX);
        let err = Scan::new(trips.clone(), &["salary"], 8, key()).unwrap_err();
        assert_eq!(err.to_string(), "dataset `trips` has no column `salary`");
        let err = Scan::new(trips.clone(), &["km", "km"], 8, key()).unwrap_err();
        assert_eq!(err.to_string(), "column `km` is named twice");
        assert!(matches!(Scan::new(trips, &["km"], 0, key()), Err(ScanError::ZeroBatchRows)));
    }
}
