//! Entity-isolated runs: the data side. Every granted dataset is read once,
//! its declared columns kept in memory with the rows ordered by entity, and
//! each entity's instance is then handed only its own rows ([`SliceScan`]):
//! every granted dataset that carries the entity column is filtered to that
//! entity, so joins on the entity work inside one instance; reference data
//! (no entity) is handed whole.
//!
//! The instance never sees another entity's row, and the codes and
//! dictionaries it receives are its own (a text column's codes start at 0 in
//! every instance), so nothing it is given depends on anyone else's data.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kanon_gate::{IssuedEntities, TenantIntake};
use kanon_vault::{Batch, BatchColumn, BatchValues, DatasetVersion, PseudonymKey, Scan, ScanError};
use rustc_hash::FxHashMap;

use crate::RunLimits;
use crate::data::MAX_BATCH_ROWS;
use crate::run::{FailureClass, InstanceRun, OwnerLog, RunStats, Runtime, TenantRun, entity_seed};
use crate::sandbox::{DataState, Grant, StoreState, truncate};
use kanon_gate::DatasetNeed;

/// Every granted dataset of an isolated run, read once, and the entities
/// that run.
#[derive(Debug)]
pub(crate) struct IsolatedData {
    datasets: BTreeMap<String, Materialized>,
    /// Every entity of every dataset with an entity column, ascending: one
    /// instance each.
    pub(crate) entities: Vec<u64>,
}

/// One granted dataset in memory: its declared columns in entity order.
#[derive(Debug)]
struct Materialized {
    /// Per declared column, by name.
    columns: Vec<(String, Values)>,
    /// Per entity of [`IsolatedData::entities`], its rows here; `None` for
    /// reference data, every row of which every entity sees.
    ranges: Option<Vec<(u32, u32)>>,
    rows: usize,
}

/// A column's values over every row, with a text column's codes into the
/// whole dataset's dictionary.
#[derive(Debug)]
struct Values {
    data: BatchValues,
    /// `None` when no row is null.
    present: Option<Vec<bool>>,
}

/// Why an isolated run's data could not be prepared.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PrepareError {
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error("dataset `{0}` has neither an entity column nor the reference-data mark")]
    NoEntity(String),
    #[error("the run's data needs more than {limit} bytes of host memory")]
    TooLarge { limit: usize },
}

impl IsolatedData {
    /// Read every granted dataset's declared columns (and its entity
    /// column, to group by), once, within `host_memory` bytes.
    pub(crate) fn read(
        grants: &BTreeMap<String, (DatasetVersion, DatasetNeed)>,
        key: &PseudonymKey,
        host_memory: usize,
    ) -> Result<(Self, usize), PrepareError> {
        let mut read = Vec::with_capacity(grants.len());
        let mut bytes = 0;
        for (name, (dataset, need)) in grants {
            let (columns, entity, rows) =
                read_columns(dataset, need, key, host_memory.saturating_sub(bytes))?;
            bytes += columns.iter().map(|(_, v)| v.heap_bytes()).sum::<usize>()
                + entity.as_ref().map_or(0, |e| e.len() * 12);
            if bytes > host_memory {
                return Err(PrepareError::TooLarge { limit: host_memory });
            }
            read.push((name.clone(), columns, entity, rows));
        }
        // Every entity of every dataset, each once, ascending.
        let mut entities: Vec<u64> =
            read.iter().flat_map(|(_, _, e, _)| e.iter().flatten().copied()).collect();
        entities.sort_unstable();
        entities.dedup();
        let index: FxHashMap<u64, u32> = entities.iter().enumerate().map(|(i, &p)| (p, i as u32)).collect();
        let datasets = read
            .into_iter()
            .map(|(name, mut columns, entity, rows)| {
                let ranges = entity.map(|pseudonyms| {
                    let (order, ranges) = group_by_entity(&pseudonyms, &index, entities.len());
                    for (_, values) in &mut columns {
                        values.permute(&order);
                    }
                    ranges
                });
                (name, Materialized { columns, ranges, rows })
            })
            .collect();
        bytes += entities.len() * 8 * (grants.len() + 1);
        Ok((Self { datasets, entities }, bytes))
    }

    /// A scan of `columns` of `dataset` as entity `entity` (an index into
    /// [`Self::entities`]) sees it; `None` if a column is named twice or was
    /// not read.
    pub(crate) fn scan(
        self: &Arc<Self>,
        entity: usize,
        dataset: &str,
        columns: &[&str],
        batch_rows: usize,
    ) -> Option<SliceScan> {
        if columns.iter().enumerate().any(|(i, c)| columns[..i].contains(c)) {
            return None;
        }
        let data = self.datasets.get(dataset)?;
        let positions = columns
            .iter()
            .map(|name| data.columns.iter().position(|(n, _)| n == name))
            .collect::<Option<Vec<usize>>>()?;
        let (start, end) = match &data.ranges {
            Some(ranges) => ranges[entity],
            None => (0, data.rows as u32),
        };
        let own_entity = data.ranges.as_ref().map(|_| self.entities[entity]);
        let dictionaries = positions.iter().map(|_| LocalDictionary::default()).collect();
        Some(SliceScan {
            data: Arc::clone(self),
            dataset: dataset.to_owned(),
            columns: positions,
            next: start as usize,
            end: end as usize,
            batch_rows: batch_rows.clamp(1, MAX_BATCH_ROWS as usize),
            own_entity,
            dictionaries,
        })
    }
}

/// Read a dataset's declared columns, and its entity column's pseudonyms
/// (`None` for reference data).
#[allow(clippy::type_complexity)]
fn read_columns(
    dataset: &DatasetVersion,
    need: &DatasetNeed,
    key: &PseudonymKey,
    budget: usize,
) -> Result<(Vec<(String, Values)>, Option<Vec<u64>>, usize), PrepareError> {
    let schema = dataset.schema();
    let entity = match schema.entity() {
        Some(field) => Some(field.name.clone()),
        None if schema.reference => None,
        None => return Err(PrepareError::NoEntity(dataset.name().to_owned())),
    };
    let mut names: Vec<&str> = need.columns.iter().map(|c| c.name.as_str()).collect();
    let entity_at = entity.as_deref().map(|e| match names.iter().position(|n| *n == e) {
        Some(at) => at,
        None => {
            names.push(e);
            names.len() - 1
        }
    });
    let mut scan = Scan::new(dataset.clone(), &names, MAX_BATCH_ROWS as usize, key.clone())?;
    let mut columns: Vec<Option<Values>> = names.iter().map(|_| None).collect();
    let mut rows = 0;
    while let Some(batch) = scan.next_batch()? {
        for (slot, column) in columns.iter_mut().zip(batch.columns) {
            match slot {
                Some(values) => values.append(column, rows),
                None => *slot = Some(Values::first(column, rows)),
            }
        }
        rows += batch.rows;
        if scan.held_bytes() + columns.iter().flatten().map(Values::heap_bytes).sum::<usize>() > budget {
            return Err(PrepareError::TooLarge { limit: budget });
        }
    }
    let mut columns: Vec<(String, Values)> = names
        .iter()
        .zip(columns)
        .map(|(name, values)| {
            let values = values.unwrap_or_else(|| Values::empty(dataset, name));
            ((*name).to_owned(), values)
        })
        .collect();
    let pseudonyms = entity_at.map(|at| {
        let pseudonyms = match &columns[at].1.data {
            BatchValues::Pseudonym(values) => values.clone(),
            _ => Vec::new(),
        };
        // Read only to group by: not handed to the plugin.
        if at == need.columns.len() {
            columns.pop();
        }
        pseudonyms
    });
    Ok((columns, pseudonyms, rows))
}

/// Row indices in entity order (an entity's rows keep their stored order),
/// and per entity of the run (by its index in `index`) its rows in that
/// order: a counting sort, one pass to count and one to place, since every
/// row's entity is known.
fn group_by_entity(
    pseudonyms: &[u64],
    index: &FxHashMap<u64, u32>,
    entities: usize,
) -> (Vec<u32>, Vec<(u32, u32)>) {
    let of_row: Vec<u32> = pseudonyms.iter().map(|p| index[p]).collect();
    let mut ranges = vec![(0u32, 0u32); entities];
    for &entity in &of_row {
        ranges[entity as usize].1 += 1;
    }
    let mut start = 0;
    for range in &mut ranges {
        let count = range.1;
        *range = (start, start);
        start += count;
    }
    let mut order = vec![0u32; pseudonyms.len()];
    for (row, &entity) in of_row.iter().enumerate() {
        let range = &mut ranges[entity as usize];
        order[range.1 as usize] = row as u32;
        range.1 += 1;
    }
    (order, ranges)
}

impl Values {
    fn first(column: BatchColumn, rows_before: usize) -> Self {
        let mut values = Values { data: empty_like(&column.values), present: None };
        values.append(column, rows_before);
        values
    }

    fn empty(dataset: &DatasetVersion, name: &str) -> Self {
        let field = dataset.schema().fields.iter().find(|f| f.name == name);
        let data = match field.map(|f| (f.column_type, f.classification.is_pseudonymised())) {
            Some((_, true)) => BatchValues::Pseudonym(Vec::new()),
            Some((kanon_vault::ColumnType::Int, _)) => BatchValues::Int(Vec::new()),
            Some((kanon_vault::ColumnType::Float, _)) => BatchValues::Float(Vec::new()),
            Some((kanon_vault::ColumnType::Bool, _)) => BatchValues::Bool(Vec::new()),
            Some((kanon_vault::ColumnType::Timestamp, _)) => BatchValues::Timestamp(Vec::new()),
            _ => BatchValues::Text { new_entries: Vec::new(), codes: Vec::new() },
        };
        Values { data, present: None }
    }

    /// Append a batch's values; `rows_before` rows came before it.
    fn append(&mut self, column: BatchColumn, rows_before: usize) {
        let rows = match (&mut self.data, column.values) {
            (BatchValues::Int(all), BatchValues::Int(v))
            | (BatchValues::Timestamp(all), BatchValues::Timestamp(v)) => {
                let n = v.len();
                all.extend(v);
                n
            }
            (BatchValues::Float(all), BatchValues::Float(v)) => {
                let n = v.len();
                all.extend(v);
                n
            }
            (BatchValues::Bool(all), BatchValues::Bool(v)) => {
                let n = v.len();
                all.extend(v);
                n
            }
            (BatchValues::Pseudonym(all), BatchValues::Pseudonym(v)) => {
                let n = v.len();
                all.extend(v);
                n
            }
            // The scan's codes index its own dictionary, which each batch
            // extends: kept whole, they index the concatenated entries.
            (
                BatchValues::Text { new_entries: dictionary, codes: all },
                BatchValues::Text { new_entries, codes },
            ) => {
                dictionary.extend(new_entries);
                let n = codes.len();
                all.extend(codes);
                n
            }
            // A scan's column keeps its type from batch to batch.
            _ => 0,
        };
        match (&mut self.present, column.validity) {
            (Some(present), validity) => present.extend((0..rows).map(|r| is_set(validity.as_deref(), r))),
            (None, Some(validity)) => {
                let mut present = vec![true; rows_before];
                present.extend((0..rows).map(|r| is_set(Some(&validity), r)));
                self.present = Some(present);
            }
            (None, None) => {}
        }
    }

    /// Put the rows in `order`.
    fn permute(&mut self, order: &[u32]) {
        fn gather<T: Copy>(values: &mut Vec<T>, order: &[u32]) {
            *values = order.iter().map(|&row| values[row as usize]).collect();
        }
        match &mut self.data {
            BatchValues::Int(v) | BatchValues::Timestamp(v) => gather(v, order),
            BatchValues::Float(v) => gather(v, order),
            BatchValues::Bool(v) => gather(v, order),
            BatchValues::Pseudonym(v) => gather(v, order),
            BatchValues::Text { codes, .. } => gather(codes, order),
        }
        if let Some(present) = &mut self.present {
            gather(present, order);
        }
    }

    fn heap_bytes(&self) -> usize {
        self.data.heap_bytes() + self.present.as_ref().map_or(0, Vec::capacity)
    }
}

fn empty_like(values: &BatchValues) -> BatchValues {
    match values {
        BatchValues::Int(_) => BatchValues::Int(Vec::new()),
        BatchValues::Float(_) => BatchValues::Float(Vec::new()),
        BatchValues::Bool(_) => BatchValues::Bool(Vec::new()),
        BatchValues::Timestamp(_) => BatchValues::Timestamp(Vec::new()),
        BatchValues::Pseudonym(_) => BatchValues::Pseudonym(Vec::new()),
        BatchValues::Text { .. } => BatchValues::Text { new_entries: Vec::new(), codes: Vec::new() },
    }
}

fn is_set(bits: Option<&[u8]>, row: usize) -> bool {
    bits.is_none_or(|bits| bits[row / 8] & (1 << (row % 8)) != 0)
}

/// One instance's scan of one dataset: its entity's rows only, in batches,
/// with text codes of its own.
#[derive(Debug)]
pub(crate) struct SliceScan {
    data: Arc<IsolatedData>,
    dataset: String,
    /// Positions of the scanned columns among the materialized ones.
    columns: Vec<usize>,
    next: usize,
    end: usize,
    batch_rows: usize,
    /// The instance's entity, issued with the first batch; `None` for
    /// reference data.
    own_entity: Option<u64>,
    dictionaries: Vec<LocalDictionary>,
}

/// A text column's codes as this instance knows them: the dataset-wide code
/// of each entry it was given, in the order it was given.
#[derive(Debug, Default)]
struct LocalDictionary {
    given: Vec<u32>,
}

impl LocalDictionary {
    fn code(&mut self, global: u32, new_entries: &mut Vec<String>, dictionary: &[String]) -> u32 {
        // Small per entity: a scan of its own entries beats a hash map.
        match self.given.iter().position(|&g| g == global) {
            Some(local) => local as u32,
            None => {
                self.given.push(global);
                new_entries.push(dictionary.get(global as usize).cloned().unwrap_or_default());
                (self.given.len() - 1) as u32
            }
        }
    }
}

impl SliceScan {
    /// The next batch of the entity's rows, or `None` at the end.
    pub(crate) fn next_batch(&mut self) -> Option<Batch> {
        let new_entities: Vec<u64> = self.own_entity.take().into_iter().collect();
        if self.next >= self.end {
            return None;
        }
        let data = &self.data.datasets[&self.dataset];
        let (start, end) = (self.next, (self.next + self.batch_rows).min(self.end));
        self.next = end;
        let columns = self
            .columns
            .iter()
            .zip(&mut self.dictionaries)
            .map(|(&position, dictionary)| {
                let values = &data.columns[position].1;
                let slice = match &values.data {
                    BatchValues::Int(v) => BatchValues::Int(v[start..end].to_vec()),
                    BatchValues::Float(v) => BatchValues::Float(v[start..end].to_vec()),
                    BatchValues::Bool(v) => BatchValues::Bool(v[start..end].to_vec()),
                    BatchValues::Timestamp(v) => BatchValues::Timestamp(v[start..end].to_vec()),
                    BatchValues::Pseudonym(v) => BatchValues::Pseudonym(v[start..end].to_vec()),
                    BatchValues::Text { new_entries: entries, codes } => {
                        let mut new_entries = Vec::new();
                        let codes = codes[start..end]
                            .iter()
                            .map(|&global| dictionary.code(global, &mut new_entries, entries))
                            .collect();
                        BatchValues::Text { new_entries, codes }
                    }
                };
                let validity = values.present.as_ref().and_then(|present| bitmap(&present[start..end]));
                BatchColumn { values: slice, validity }
            })
            .collect();
        Some(Batch { rows: end - start, columns, new_entities })
    }
}

/// An LSB-first bitmap of `present`, or `None` when every row is present.
fn bitmap(present: &[bool]) -> Option<Vec<u8>> {
    if present.iter().all(|&p| p) {
        return None;
    }
    let mut bits = vec![0u8; present.len().div_ceil(8)];
    for (row, _) in present.iter().enumerate().filter(|(_, p)| **p) {
        bits[row / 8] |= 1 << (row % 8);
    }
    Some(bits)
}

/// Most bytes of stdout and of stderr one entity's instance keeps; the run's
/// owner log keeps the first `RunLimits::output_bytes` of them all.
const ENTITY_OUTPUT_BYTES: usize = 4 << 10;

impl Runtime {
    /// One tenant's part of an entity-isolated run: its data read once, then
    /// one fresh instance per entity, on as many threads as the machine has,
    /// each seeing only its entity's rows and contributing only for it. An
    /// entity whose instance fails is left out and counted in the owner log;
    /// the run fails only at its own deadline, on cancel, or if its data
    /// cannot be read.
    pub(crate) fn run_isolated(&self, run: &TenantRun<'_>) -> InstanceRun {
        let TenantRun { plugin, gate, run_id, datasets, secret, .. } = *run;
        let limits = &self.config().limits;
        let deadline = Instant::now() + limits.timeout;
        let key = PseudonymKey::for_run(secret, run_id.as_bytes());
        let needs: BTreeMap<String, (DatasetVersion, DatasetNeed)> = plugin
            .manifest
            .inputs
            .iter()
            .map(|need| (need.name.clone(), (datasets[&need.name].clone(), need.clone())))
            .collect();
        let mut log = LogCollector::new(limits.output_bytes);
        let mut stats = RunStats::default();
        let (data, held) = match IsolatedData::read(&needs, &key, limits.host_memory_bytes) {
            Ok(read) => read,
            Err(e) => {
                let class = match e {
                    PrepareError::TooLarge { .. } => FailureClass::Limit,
                    PrepareError::Scan(_) | PrepareError::NoEntity(_) => FailureClass::HostError,
                };
                log.error(e.to_string());
                return InstanceRun {
                    result: Err(class),
                    intake: gate.intake(),
                    owner_log: log.finish(Some(class)),
                    stats,
                };
            }
        };
        stats.peak_host_bytes = held;
        let data = Arc::new(data);
        let grants: Arc<BTreeMap<String, Grant>> = Arc::new(
            needs.into_iter().map(|(name, (dataset, need))| (name, Grant { dataset, need })).collect(),
        );
        let budget = &gate.policy().entity_budget;
        let entity_limits = RunLimits {
            memory_bytes: budget.memory_bytes() as usize,
            timeout: budget.timeout(),
            max_bytes_to_host: budget.bytes_to_host(),
            max_contributions: budget.contributions,
            output_bytes: ENTITY_OUTPUT_BYTES,
            ..limits.clone()
        };
        let shared = Shared {
            run,
            data: &data,
            grants: &grants,
            key: &key,
            limits: &entity_limits,
            deadline,
            next: AtomicUsize::new(0),
        };
        let workers = self.config().isolated_workers.clamp(1, data.entities.len().max(1));
        let outcomes: Vec<Worker> = std::thread::scope(|scope| {
            let handles: Vec<_> =
                (0..workers).map(|_| scope.spawn(|| self.isolated_worker(&shared))).collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });

        let mut intake = gate.intake();
        let mut issued = IssuedEntities::new();
        let mut instantiations = Vec::with_capacity(data.entities.len());
        let mut result = Ok(());
        for worker in outcomes {
            for (pseudonym, _) in worker.issued.iter() {
                issued.issue(pseudonym);
            }
            if let Err(e) = intake.absorb(&issued, &worker.intake, &worker.issued) {
                log.error(format!("merging the entities' contributions failed: {e}"));
                result = Err(FailureClass::HostError);
            }
            log.merge(worker.log);
            instantiations.extend(worker.instantiations);
            stats.entities_run += worker.entities_run;
            stats.entities_failed += worker.entities_failed;
            stats.contributions += worker.contributions;
            stats.bytes_to_host += worker.bytes_to_host;
            stats.peak_memory_bytes = stats.peak_memory_bytes.max(worker.peak_memory_bytes);
            if let Err(class) = worker.result {
                result = result.and(Err(class));
            }
        }
        if workers > 0 && stats.entities_run < data.entities.len() && result.is_ok() {
            // A worker thread died: the run is not whole.
            result = Err(FailureClass::HostError);
        }
        instantiations.sort_unstable();
        stats.instantiation = instantiations.get(instantiations.len() / 2).copied().unwrap_or_default();
        stats.entities_issued = issued.len();
        stats.dropped_contributions = intake.dropped_contributions();
        InstanceRun { result, intake, owner_log: log.finish(result.err()), stats }
    }

    /// A worker's share of an isolated run: entities taken one at a time
    /// until none is left, each in a fresh instance; the intake of every one
    /// that succeeded is absorbed into the worker's.
    fn isolated_worker(&self, shared: &Shared<'_>) -> Worker {
        let TenantRun { plugin, gate, secret, params, cancel, .. } = *shared.run;
        let mut worker = Worker {
            intake: gate.intake(),
            issued: IssuedEntities::new(),
            log: LogCollector::new(self.config().limits.output_bytes),
            instantiations: Vec::new(),
            entities_run: 0,
            entities_failed: 0,
            contributions: 0,
            bytes_to_host: 0,
            peak_memory_bytes: 0,
            result: Ok(()),
        };
        // One entity's intake and issued set, cleared and reused.
        let mut scratch = (gate.intake(), IssuedEntities::new());
        loop {
            let entity = shared.next.fetch_add(1, Ordering::Relaxed);
            let Some(&pseudonym) = shared.data.entities.get(entity) else { break };
            if cancel.is_cancelled() {
                worker.result = Err(FailureClass::Cancelled);
                break;
            }
            let now = Instant::now();
            if now >= shared.deadline {
                worker.result = Err(FailureClass::Timeout);
                break;
            }
            let limits = RunLimits {
                timeout: shared.limits.timeout.min(shared.deadline - now),
                ..shared.limits.clone()
            };
            let data = DataState {
                grants: Arc::clone(shared.grants),
                key: shared.key.clone(),
                entity: Some((Arc::clone(shared.data), entity)),
            };
            let seed = entity_seed(secret, &plugin.hash, params, pseudonym);
            let mut state = StoreState::new(limits, cancel.clone(), seed, data, scratch.0);
            state.issued = scratch.1;
            let (result, state, instantiation) = self.instance(plugin, state, params);
            let (stdout, stderr) = state.output();
            worker.log.output(&stdout, &stderr);
            worker.log.refusals(&state.meter.refusals);
            worker.instantiations.push(instantiation);
            worker.entities_run += 1;
            worker.contributions += state.meter.contributions;
            worker.bytes_to_host += state.meter.bytes_to_host;
            worker.peak_memory_bytes = worker.peak_memory_bytes.max(state.limiter.peak_memory);
            let (mut intake, mut issued) = (state.intake, state.issued);
            match result {
                Ok(()) => {
                    worker.issued.issue(pseudonym);
                    if let Err(e) = worker.intake.absorb(&worker.issued, &intake, &issued) {
                        worker.log.error(format!("merging an entity's contributions failed: {e}"));
                        worker.result = Err(FailureClass::HostError);
                        break;
                    }
                }
                // The entity is absent from the release; the run goes on,
                // unless what ended this instance ends the run.
                Err((class, error)) => {
                    worker.entities_failed += 1;
                    worker.log.entity_failed(class, error);
                    if cancel.is_cancelled() {
                        worker.result = Err(FailureClass::Cancelled);
                        break;
                    }
                    if Instant::now() >= shared.deadline {
                        worker.result = Err(FailureClass::Timeout);
                        break;
                    }
                }
            }
            intake.clear();
            issued.clear();
            scratch = (intake, issued);
        }
        worker
    }
}

/// What every worker of an isolated run shares.
struct Shared<'a> {
    run: &'a TenantRun<'a>,
    data: &'a Arc<IsolatedData>,
    grants: &'a Arc<BTreeMap<String, Grant>>,
    key: &'a PseudonymKey,
    /// One entity's instance's limits.
    limits: &'a RunLimits,
    deadline: Instant,
    /// The next entity to run, by index.
    next: AtomicUsize,
}

/// What one worker thread of an isolated run leaves.
struct Worker {
    intake: TenantIntake,
    issued: IssuedEntities,
    log: LogCollector,
    instantiations: Vec<Duration>,
    entities_run: usize,
    entities_failed: usize,
    contributions: u64,
    bytes_to_host: u64,
    peak_memory_bytes: usize,
    result: Result<(), FailureClass>,
}

/// The owner log of an isolated run, gathered from many instances within
/// the bounds of one run's log.
struct LogCollector {
    stdout: String,
    stderr: String,
    output_bytes: usize,
    error: Option<String>,
    refusals: Vec<String>,
    failures: BTreeMap<FailureClass, u64>,
}

/// Most refusals an owner log keeps, as in a shared run.
const MAX_REFUSALS: usize = 100;

impl LogCollector {
    fn new(output_bytes: usize) -> Self {
        Self {
            stdout: String::new(),
            stderr: String::new(),
            output_bytes,
            error: None,
            refusals: Vec::new(),
            failures: BTreeMap::new(),
        }
    }

    fn output(&mut self, stdout: &str, stderr: &str) {
        for (all, more) in [(&mut self.stdout, stdout), (&mut self.stderr, stderr)] {
            let room = self.output_bytes.saturating_sub(all.len());
            if room > 0 && !more.is_empty() {
                all.push_str(&truncate(more.to_owned(), room));
            }
        }
    }

    fn refusals(&mut self, refusals: &[String]) {
        let room = MAX_REFUSALS.saturating_sub(self.refusals.len());
        self.refusals.extend(refusals.iter().take(room).cloned());
    }

    fn error(&mut self, error: String) {
        self.error.get_or_insert_with(|| truncate(error, self.output_bytes));
    }

    fn entity_failed(&mut self, class: FailureClass, error: String) {
        *self.failures.entry(class).or_default() += 1;
        self.error(format!("an entity's instance failed ({}): {error}", class.code()));
    }

    fn merge(&mut self, other: LogCollector) {
        self.output(&other.stdout, &other.stderr);
        self.refusals(&other.refusals);
        if let Some(error) = other.error {
            self.error(error);
        }
        for (class, count) in other.failures {
            *self.failures.entry(class).or_default() += count;
        }
    }

    fn finish(self, failure: Option<FailureClass>) -> OwnerLog {
        OwnerLog {
            stdout: self.stdout,
            stderr: self.stderr,
            error: self.error,
            refusals: self.refusals,
            failure,
            entity_failures: self.failures,
        }
    }
}
