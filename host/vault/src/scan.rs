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
    /// An earlier batch failed to load; the scan's dictionaries may hold
    /// entries no batch handed out, so it cannot go on.
    #[error("the scan failed earlier and cannot go on")]
    Stopped,
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

impl BatchValues {
    /// Heap bytes these values hold.
    pub fn heap_bytes(&self) -> usize {
        match self {
            BatchValues::Int(v) | BatchValues::Timestamp(v) => v.capacity() * 8,
            BatchValues::Float(v) => v.capacity() * 8,
            BatchValues::Bool(v) => v.capacity(),
            BatchValues::Pseudonym(v) => v.capacity() * 8,
            BatchValues::Text { new_entries, codes } => {
                new_entries.iter().map(|e| e.capacity() + ENTRY_OVERHEAD).sum::<usize>()
                    + codes.capacity() * 4
            }
        }
    }
}

/// What one string in a dictionary or map costs beyond its bytes: its
/// `String`, the value beside it and the hash table's slot, about.
const ENTRY_OVERHEAD: usize = 48;

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
    /// The second thread's stack size, if not the default: tests ask for
    /// one the OS refuses.
    worker_stack: Option<usize>,
    /// A chunk failed to load: the columns that did load may have extended
    /// their dictionaries with entries no batch carried.
    failed: bool,
}

/// Whether this machine can load a chunk's columns on two threads; asked
/// once per process (it reads cgroup files).
fn parallel_loads() -> bool {
    static PARALLEL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PARALLEL.get_or_init(|| std::thread::available_parallelism().is_ok_and(|n| n.get() > 1))
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
    /// Heap bytes of `dictionary` and `pseudonyms`, about.
    map_bytes: usize,
}

/// A decoded chunk being handed out.
#[derive(Debug)]
struct LoadedChunk {
    columns: Vec<LoadedColumn>,
    rows: usize,
    next_row: usize,
    /// For the chunk's first batch: the chunk's entity pseudonyms.
    new_entities: Vec<u64>,
    /// Heap bytes of the chunk as decoded.
    bytes: usize,
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
                return Err(ScanError::DuplicateColumn(crate::quote::truncate(name)));
            }
            let index = dataset.schema().index_of(name).ok_or_else(|| ScanError::UnknownColumn {
                dataset: dataset.name().to_owned(),
                column: crate::quote::truncate(name),
            })?;
            scans.push(ColumnScan {
                index,
                classification: dataset.schema().fields[index].classification,
                dictionary: FxHashMap::default(),
                pseudonyms: FxHashMap::default(),
                map_bytes: 0,
            });
        }
        let parallel = parallel_loads();
        Ok(Self {
            dataset,
            columns: scans,
            batch_rows,
            key,
            next_chunk: 0,
            current: None,
            parallel,
            worker_stack: None,
            failed: false,
        })
    }

    /// Decode the next chunk and map its dictionaries onto the scan's. The
    /// columns are independent, so a large chunk loads on two threads, the
    /// columns split between them by stored size; if the OS refuses the
    /// second thread, its columns load on this one.
    fn load(&mut self, chunk: usize) -> Result<LoadedChunk, ScanError> {
        let (dataset, key, worker_stack) = (&self.dataset, &self.key, self.worker_stack);
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
                // Taken by the second thread, or by this one if there is none.
                let there = std::sync::Mutex::new(there);
                let take = || std::mem::take(&mut *there.lock().expect("a column load does not panic"));
                std::thread::scope(|scope| {
                    let mut worker = std::thread::Builder::new();
                    if let Some(size) = worker_stack {
                        worker = worker.stack_size(size);
                    }
                    let other =
                        worker.spawn_scoped(scope, || take().into_iter().map(load).collect::<Vec<_>>());
                    let mut loaded: Vec<_> = here.into_iter().map(load).collect();
                    match other {
                        Ok(other) => loaded.extend(other.join().expect("a column load does not panic")),
                        Err(e) => {
                            tracing::debug!("no second thread to load a chunk on ({e}); loading it on one");
                            loaded.extend(take().into_iter().map(load));
                        }
                    }
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
        let bytes = new_entities.capacity() * 8
            + columns
                .iter()
                .map(|c| c.values.heap_bytes() + c.validity.as_ref().map_or(0, Vec::capacity))
                .sum::<usize>();
        Ok(LoadedChunk { columns, rows, next_row: 0, new_entities, bytes })
    }

    /// Heap bytes the scan holds for its reader: the chunk being handed out
    /// (counted whole until the next one loads) and the text dictionaries and
    /// pseudonyms seen so far. About: what a run charges against its host
    /// memory budget.
    pub fn held_bytes(&self) -> usize {
        self.current.as_ref().map_or(0, |c| c.bytes) + self.columns.iter().map(|c| c.map_bytes).sum::<usize>()
    }

    /// The next batch, or `None` at the end. After an error, every call
    /// returns [`ScanError::Stopped`].
    pub fn next_batch(&mut self) -> Result<Option<Batch>, ScanError> {
        if self.failed {
            return Err(ScanError::Stopped);
        }
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
            // Until the chunk has loaded whole, an error or a panic included.
            self.failed = true;
            self.current = Some(self.load(chunk)?);
            self.failed = false;
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
                    None => {
                        self.map_bytes += e.len() + ENTRY_OVERHEAD;
                        *known.entry(e.to_owned()).or_insert_with(|| key.pseudonym(e))
                    }
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
                    self.map_bytes += entry.len() + ENTRY_OVERHEAD;
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

    /// Two chunks of 30 000 rows, each worth loading on two threads.
    fn large_dataset() -> (Vault, DatasetVersion) {
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
        (vault, trips)
    }

    #[test]
    fn a_chunk_loaded_on_two_threads_reads_as_on_one() {
        let (_vault, trips) = large_dataset();
        let columns = ["note", "km", "driver", "litres", "region"];
        let mut parallel = Scan::new(trips.clone(), &columns, 20_000, key()).unwrap();
        let mut serial = Scan::new(trips, &columns, 20_000, key()).unwrap();
        parallel.parallel = true;
        serial.parallel = false;
        let batches = all(&mut parallel);
        assert_eq!(batches.len(), 4, "two batches per chunk");
        assert_eq!(batches, all(&mut serial));
    }

    /// The OS refuses the second thread (a stack of 2^60 bytes): the chunk
    /// loads on one thread instead of the scan panicking.
    #[test]
    fn a_chunk_loads_on_one_thread_when_the_os_refuses_a_second() {
        let (_vault, trips) = large_dataset();
        let columns = ["note", "km", "driver", "litres", "region"];
        let mut refused = Scan::new(trips.clone(), &columns, 20_000, key()).unwrap();
        let mut serial = Scan::new(trips, &columns, 20_000, key()).unwrap();
        (refused.parallel, refused.worker_stack) = (true, Some(usize::MAX / 16 + 1));
        serial.parallel = false;
        assert_eq!(all(&mut refused), all(&mut serial));
    }

    /// A chunk that fails to load may have extended some columns'
    /// dictionaries: the scan stops rather than hand out codes whose entries
    /// no batch carried.
    #[test]
    fn after_a_load_error_the_scan_stops() {
        let (vault, trips) = dataset(2);
        // Break the last column's segment of the second chunk (of three).
        fn find(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
            std::fs::read_dir(dir).unwrap().find_map(|entry| {
                let path = entry.unwrap().path();
                if path.is_dir() { find(&path, name) } else { path.ends_with(name).then_some(path) }
            })
        }
        let path = find(vault.dir(), "00000001.kc").expect("the second chunk's file");
        let mut bytes = std::fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&path, bytes).unwrap();

        let mut scan = Scan::new(trips, &["region", "km"], 10, key()).unwrap();
        assert_eq!(scan.next_batch().unwrap().unwrap().rows, 2);
        let err = scan.next_batch().unwrap_err();
        assert!(matches!(err, ScanError::Vault(VaultError::Corrupt { chunk: 1, .. })), "{err}");
        for _ in 0..2 {
            let next = scan.next_batch();
            assert!(matches!(next, Err(ScanError::Stopped)), "{next:?}");
        }
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
