//! Sequential scans of a stored dataset version in columnar batches: chunk
//! by chunk, decrypting only the scanned columns, with `entity` and
//! `identifier` columns turned into the run's pseudonyms on the way out.

use rustc_hash::FxHashMap;

use crate::chunk::{Decoded, decode_borrowed};
use crate::pseudonym::PseudonymKey;
use crate::schema::Classification;
use crate::store::{DatasetVersion, VaultError};
use crate::table::ColumnData;

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
    columns: Vec<ColumnScan>,
    batch_rows: usize,
    key: PseudonymKey,
    next_chunk: usize,
    current: Option<LoadedChunk>,
    /// Whether a chunk's columns may load on two threads.
    parallel: bool,
}

/// What a scan keeps per column to map chunks onto itself.
#[derive(Debug)]
struct ColumnScan {
    /// Index in the dataset's schema.
    index: usize,
    classification: Classification,
    /// A text attribute's dictionary so far.
    dictionary: FxHashMap<String, u32>,
    /// A pseudonymised column's pseudonyms so far, so a value repeated
    /// across chunks is hashed with blake3 once per scan.
    pseudonyms: FxHashMap<String, u64>,
}

/// A decoded chunk being handed out.
#[derive(Debug)]
struct LoadedChunk {
    columns: Vec<LoadedColumn>,
    rows: usize,
    next_row: usize,
    /// For the chunk's first batch: the chunk's entity pseudonyms.
    new_entities: Vec<u64>,
}

/// One column of a chunk, already in the scan's terms.
#[derive(Debug)]
struct LoadedColumn {
    values: BatchValues,
    validity: Option<Vec<u8>>,
}

/// Chunks smaller than this load on one thread: a thread costs more.
const PARALLEL_BYTES: u64 = 256 << 10;

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
        let mut scans = Vec::with_capacity(columns.len());
        for (i, &name) in columns.iter().enumerate() {
            if columns[..i].contains(&name) {
                return Err(ScanError::DuplicateColumn(name.to_owned()));
            }
            let index = dataset.schema().index_of(name).ok_or_else(|| ScanError::UnknownColumn {
                dataset: dataset.name().to_owned(),
                column: name.to_owned(),
            })?;
            scans.push(ColumnScan {
                index,
                classification: dataset.schema().fields[index].classification,
                dictionary: FxHashMap::default(),
                pseudonyms: FxHashMap::default(),
            });
        }
        let parallel = std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
        Ok(Self { dataset, columns: scans, batch_rows, key, next_chunk: 0, current: None, parallel })
    }

    /// Decode the next chunk and map its dictionaries onto the scan's. The
    /// columns are independent, so a large chunk loads on two threads, the
    /// columns split between them by stored size.
    fn load(&mut self, chunk: usize) -> Result<LoadedChunk, ScanError> {
        let (dataset, key) = (&self.dataset, &self.key);
        let rows = dataset.chunk_rows(chunk);
        let sizes: Vec<u64> = self.columns.iter().map(|c| dataset.segment_len(chunk, c.index)).collect();
        let load =
            |(position, column): (usize, &mut ColumnScan)| (position, column.load(dataset, key, chunk, rows));
        let mut loaded =
            if self.parallel && self.columns.len() > 1 && sizes.iter().sum::<u64>() >= PARALLEL_BYTES {
                // Largest first, each to the lighter side.
                let mut order: Vec<(usize, &mut ColumnScan)> = self.columns.iter_mut().enumerate().collect();
                order.sort_by_key(|&(position, _)| std::cmp::Reverse(sizes[position]));
                let (mut here, mut there, mut weights) = (Vec::new(), Vec::new(), [0, 0]);
                for item in order {
                    let side = usize::from(weights[1] < weights[0]);
                    weights[side] += sizes[item.0];
                    if side == 0 { here.push(item) } else { there.push(item) }
                }
                std::thread::scope(|scope| {
                    let other = scope.spawn(|| there.into_iter().map(load).collect::<Vec<_>>());
                    let mut loaded: Vec<_> = here.into_iter().map(load).collect();
                    loaded.extend(other.join().expect("a column load does not panic"));
                    loaded
                })
            } else {
                self.columns.iter_mut().enumerate().map(load).collect()
            };
        loaded.sort_by_key(|&(position, _)| position);
        let mut columns = Vec::with_capacity(loaded.len());
        let mut new_entities = Vec::new();
        for (_, result) in loaded {
            let (column, entities) = result?;
            columns.push(column);
            new_entities.extend(entities);
        }
        Ok(LoadedChunk { columns, rows, next_row: 0, new_entities })
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

impl ColumnScan {
    /// This column of chunk `chunk`: text codes mapped onto the scan's
    /// dictionary (whose new entries it carries), pseudonymised columns
    /// turned into pseudonyms. Also returns the entity pseudonyms.
    fn load(
        &mut self,
        dataset: &DatasetVersion,
        key: &PseudonymKey,
        chunk: usize,
        rows: usize,
    ) -> Result<(LoadedColumn, Vec<u64>), VaultError> {
        let plain = dataset.read_segment(chunk, self.index)?;
        let column_type = dataset.schema().fields[self.index].column_type;
        let (decoded, validity) =
            decode_borrowed(&plain, column_type, rows).map_err(|e| dataset.corrupt(chunk, e.to_string()))?;
        let (entries, codes) = match decoded {
            Decoded::Values(data) => {
                let values = match data {
                    ColumnData::Int(v) => BatchValues::Int(v),
                    ColumnData::Float(v) => BatchValues::Float(v),
                    ColumnData::Bool(v) => BatchValues::Bool(v),
                    ColumnData::Timestamp(v) => BatchValues::Timestamp(v),
                    ColumnData::Text { .. } => unreachable!("text decodes borrowed"),
                };
                return Ok((LoadedColumn { values, validity }, Vec::new()));
            }
            Decoded::Text { entries, codes } => (entries, codes),
        };
        if self.classification.is_pseudonymised() {
            let known = &mut self.pseudonyms;
            let pseudonyms: Vec<u64> = entries
                .iter()
                .map(|&e| match known.get(e) {
                    Some(&p) => p,
                    None => *known.entry(e.to_owned()).or_insert_with(|| key.pseudonym(e)),
                })
                .collect();
            let values = BatchValues::Pseudonym(codes.iter().map(|&c| pseudonyms[c as usize]).collect());
            let entities =
                if self.classification == Classification::Entity { pseudonyms } else { Vec::new() };
            return Ok((LoadedColumn { values, validity }, entities));
        }
        let dictionary = &mut self.dictionary;
        let mut new_entries = Vec::new();
        let map: Vec<u32> = entries
            .iter()
            .map(|&entry| match dictionary.get(entry) {
                Some(&code) => code,
                None => {
                    let code = dictionary.len() as u32;
                    dictionary.insert(entry.to_owned(), code);
                    new_entries.push(entry.to_owned());
                    code
                }
            })
            .collect();
        let codes = codes.iter().map(|&c| map[c as usize]).collect();
        Ok((LoadedColumn { values: BatchValues::Text { new_entries, codes }, validity }, Vec::new()))
    }
}

impl LoadedChunk {
    fn batch(&mut self, batch_rows: usize) -> Batch {
        let (start, end) = (self.next_row, (self.next_row + batch_rows).min(self.rows));
        self.next_row = end;
        // A batch that is the whole chunk takes its vectors instead of copying.
        let whole = start == 0 && end == self.rows;
        fn part<T: Clone>(v: &mut Vec<T>, whole: bool, start: usize, end: usize) -> Vec<T> {
            if whole { std::mem::take(v) } else { v[start..end].to_vec() }
        }
        let columns = self
            .columns
            .iter_mut()
            .map(|column| {
                let values = match &mut column.values {
                    BatchValues::Int(v) => BatchValues::Int(part(v, whole, start, end)),
                    BatchValues::Float(v) => BatchValues::Float(part(v, whole, start, end)),
                    BatchValues::Bool(v) => BatchValues::Bool(part(v, whole, start, end)),
                    BatchValues::Timestamp(v) => BatchValues::Timestamp(part(v, whole, start, end)),
                    BatchValues::Pseudonym(v) => BatchValues::Pseudonym(part(v, whole, start, end)),
                    BatchValues::Text { new_entries, codes } => BatchValues::Text {
                        new_entries: std::mem::take(new_entries),
                        codes: part(codes, whole, start, end),
                    },
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
    fn a_chunk_loaded_on_two_threads_reads_as_on_one() {
        let mut csv = String::from("driver,region,km,litres,note\n");
        let mut x = 7u64;
        for row in 0..60_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let null = if row % 9 == 0 { String::new() } else { format!("{}", x % 1000) };
            csv.push_str(&format!(
                "d{},r{},{}.{},{null},n{}\n",
                x % 5000,
                x % 7,
                x % 997,
                x % 13,
                row % 3000
            ));
        }
        let options = IngestOptions { chunk_rows: 30_000, ..IngestOptions::entity("driver") };
        let vault = Vault::temporary().unwrap();
        let reader = CsvReader::new("trips.csv", std::io::Cursor::new(csv), &options).unwrap();
        vault.ingest("acme", "trips", WriteMode::Replace, Box::new(reader), "trips.csv").unwrap();
        let trips = vault.dataset("acme", "trips", None).unwrap();
        let chunk_bytes: u64 = (0..5).map(|c| trips.segment_len(0, c)).sum();
        assert!(chunk_bytes >= PARALLEL_BYTES, "{chunk_bytes} bytes: the chunk must be worth two threads");
        let columns = ["note", "km", "driver", "litres", "region"];
        let mut parallel = Scan::new(trips.clone(), &columns, 20_000, key()).unwrap();
        let mut serial = Scan::new(trips, &columns, 20_000, key()).unwrap();
        parallel.parallel = true;
        serial.parallel = false;
        let batches = all(&mut parallel);
        assert_eq!(batches.len(), 4, "two batches per chunk");
        assert_eq!(batches, all(&mut serial));
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
