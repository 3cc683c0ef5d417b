//! Per-entity state of one output table while a run contributes to it.
//!
//! Each issued entity owns `max_cells_per_entity` slots in flat arrays: a
//! cell index and that entity's fixed-point sums for the cell. That gives
//! exact distinct counts and per-entity totals with one array access per
//! contribution, and bounds the cells an entity reaches without depending on
//! the order contributions arrive in.
//!
//! Sums are exact over any number of contributions. A contribution is an
//! integer of at most 2^40 in magnitude ([`fixed_point_scales`]); a slot
//! keeps its sum as an i64 word that wraps, and counts each wrap on the side
//! ([`Wraps`]), so the slot's exact sum is the word plus 2^64 times its wrap
//! count. Wrapping addition is associative and commutative, and a wrap is
//! counted exactly when it happens, so the result does not depend on the
//! order of contributions. One entity sending the largest value 10^8 times
//! (the runtime's cap per run) reaches about 2^67, far past i64 and far
//! below i128, which holds every sum after the slots ([`SlotSums::get`]).

use std::collections::HashMap;

use crate::spec::TableSpec;
use crate::{ContractViolation, ExcessContributions, IssuedEntities, Policy};

/// Most measures a table may declare.
pub const MAX_MEASURES: usize = 16;

const EMPTY: i64 = -1;

/// A batch of contributions to one table, column-wise: row i contributes
/// `measures[m][i]` for `entities[i]` to the cell keyed by `dimensions[d][i]`.
#[derive(Debug, Clone, Copy)]
pub struct Contributions<'a> {
    pub entities: &'a [u64],
    pub dimensions: &'a [&'a [u32]],
    pub measures: &'a [&'a [f64]],
}

/// One table's accumulated contributions.
#[derive(Debug)]
pub struct TableAccumulator {
    pub(crate) spec: TableSpec,
    radix: Vec<u32>,
    lower: Vec<f64>,
    upper: Vec<f64>,
    pub(crate) scales: Vec<f64>,
    slots_per_entity: usize,
    excess: ExcessContributions,
    /// The gate derives this table from a linked one: contributions are
    /// checked against the contract and then not kept.
    derived: bool,
    /// Per entity, `slots_per_entity` slots of `1 + measures` words: the
    /// cell (`EMPTY` when unused), then the entity's fixed-point sum of each
    /// measure in that cell. One slot is one contiguous run of memory, so a
    /// contribution costs one random access.
    pub(crate) slots: Vec<i64>,
    /// Per word of `slots` whose sum left i64's range: how many times it
    /// wrapped upwards, less the times it wrapped downwards. Empty unless an
    /// entity's sum in one cell passes 2^63, which takes 2^23 maximal
    /// contributions.
    wraps: Wraps,
    pub(crate) dropped: u64,
    /// Per-batch scratch, kept to avoid reallocating.
    scratch: Scratch,
}

#[derive(Debug, Default)]
struct Scratch {
    entities: Vec<u32>,
    cells: Vec<u32>,
    values: Vec<i64>,
}

/// The power of two that maps the largest bound to at most 2^40: every
/// clamped contribution becomes an integer of at most 2^40 in magnitude,
/// with a relative precision of 2^-40 of the bound. Integer sums make the
/// release independent of contribution order.
///
/// The exponent stops at 2^1023, the largest finite power of two: below
/// bounds of about 2^-983 the precision is less, but the scale stays finite
/// (an infinite one turned every contribution into `i64::MAX`).
fn fixed_point_scale(lower: f64, upper: f64) -> f64 {
    let magnitude = lower.abs().max(upper.abs());
    if magnitude == 0.0 {
        return 1.0;
    }
    let exponent = 40 - magnitude.log2().ceil() as i32;
    2f64.powi(exponent.min(f64::MAX_EXP - 1))
}

/// The fixed-point scale of each measure of a table.
pub(crate) fn fixed_point_scales(spec: &TableSpec) -> Vec<f64> {
    spec.measures.iter().map(|m| fixed_point_scale(m.lower, m.upper)).collect()
}

/// Per word of the slots, its net count of wraps past i64's range.
#[derive(Debug, Default)]
pub(crate) struct Wraps(HashMap<usize, i64>);

impl Wraps {
    /// Word `word` wrapped while `value` was added to it.
    #[cold]
    #[inline(never)]
    fn record(&mut self, word: usize, value: i64) {
        let count = self.0.entry(word).or_default();
        *count += if value > 0 { 1 } else { -1 };
        if *count == 0 {
            self.0.remove(&word);
        }
    }

    /// Heap bytes, about (a hash map's entry and control byte per wrap).
    fn heap_bytes(&self) -> usize {
        self.0.capacity() * (size_of::<(usize, i64)>() + 1)
    }

    /// Whether no word ever wrapped (or every wrap was undone).
    #[inline]
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The net wrap count of word `word`.
    #[inline]
    fn count(&self, word: usize) -> i64 {
        if self.0.is_empty() { 0 } else { self.0.get(&word).copied().unwrap_or(0) }
    }

    /// Add `count` net wraps to word `word`.
    fn add(&mut self, word: usize, count: i64) {
        if count == 0 {
            return;
        }
        let total = self.0.entry(word).or_default();
        *total += count;
        if *total == 0 {
            self.0.remove(&word);
        }
    }

    /// Forget every wrap, keeping the map's allocation.
    fn reset(&mut self) {
        self.0.clear();
    }

    /// Forget the wraps of `words` (an evicted slot's sums, now zero).
    fn clear(&mut self, words: std::ops::Range<usize>) {
        if !self.0.is_empty() {
            words.for_each(|w| {
                self.0.remove(&w);
            });
        }
    }

    /// The exact value of word `word`, which holds `low`.
    #[inline]
    fn exact(&self, word: usize, low: i64) -> i128 {
        let wraps = if self.0.is_empty() { 0 } else { self.0.get(&word).copied().unwrap_or(0) };
        i128::from(low) + (i128::from(wraps) << 64)
    }
}

/// Claim `slot`, which starts at word `at` of the slots, for `cell` and add
/// one contribution's fixed-point values. A sum that passes i64's range
/// wraps, and the wrap is counted: the slot stays exact.
///
/// Bound: a contribution is at most 2^40 in magnitude, so a wrap takes at
/// least 2^23 contributions to one slot, and the wrap count (an i64) and
/// the exact sum (an i128, 2^127) cannot overflow in fewer than 2^86
/// contributions, which no run can send.
#[inline]
fn accumulate(slot: &mut [i64], at: usize, cell: i64, values: &[i64], wraps: &mut Wraps) {
    slot[0] = cell;
    for (m, (sum, &v)) in slot[1..].iter_mut().zip(values).enumerate() {
        let (next, wrapped) = sum.overflowing_add(v);
        *sum = next;
        if wrapped {
            wraps.record(at + 1 + m, v);
        }
    }
}

/// One entity's exact sums in one of its cells, by measure.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SlotSums<'a> {
    words: &'a [i64],
    /// Index of `words[0]` among the slots.
    at: usize,
    wraps: &'a Wraps,
}

impl SlotSums<'_> {
    /// The exact fixed-point sum of measure `m`.
    #[inline]
    pub fn get(&self, m: usize) -> i128 {
        self.wraps.exact(self.at + m, self.words[m])
    }
}

/// A stable pseudo-random rank of (entity, cell): which cells an entity keeps
/// when it reaches too many. Lower wins; the mix is a bijection, so distinct
/// cells of one entity never tie.
#[inline]
fn rank(pseudonym: u64, cell: i64) -> u64 {
    let mut z = pseudonym ^ (cell as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl TableAccumulator {
    /// Heap bytes the accumulator holds, its per-entity slots above all:
    /// what a run charges to its host memory.
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * 8
            + self.wraps.heap_bytes()
            + self.scratch.entities.capacity() * 4
            + self.scratch.cells.capacity() * 4
            + self.scratch.values.capacity() * 8
    }

    /// An empty accumulator for a validated spec.
    pub fn new(spec: TableSpec, policy: &Policy) -> Self {
        let radix = spec.dimensions.iter().map(|d| d.domain.len() as u32).collect();
        let lower: Vec<f64> = spec.measures.iter().map(|m| m.lower).collect();
        let upper: Vec<f64> = spec.measures.iter().map(|m| m.upper).collect();
        let scales = fixed_point_scales(&spec);
        Self {
            spec,
            radix,
            lower,
            upper,
            scales,
            slots_per_entity: policy.max_cells_per_entity as usize,
            excess: policy.excess_contributions,
            derived: false,
            slots: Vec::new(),
            wraps: Wraps::default(),
            dropped: 0,
            scratch: Scratch::default(),
        }
    }

    /// The same accumulator for a table the gate derives from a linked one
    /// (see [`crate::suppression`]): it checks contributions and keeps none.
    pub(crate) fn derived(self) -> Self {
        Self { derived: true, ..self }
    }

    /// Whether the gate derives this table from a linked one, so that what
    /// is contributed to it is checked and then not used.
    pub fn is_derived(&self) -> bool {
        self.derived
    }

    /// The table's spec.
    pub fn spec(&self) -> &TableSpec {
        &self.spec
    }

    /// Words per slot: the cell, then one sum per measure.
    fn stride(&self) -> usize {
        1 + self.spec.measures.len()
    }

    /// Bytes of state per (entity, cell) slot.
    pub fn bytes_per_slot(&self) -> usize {
        self.stride() * size_of::<i64>()
    }

    /// Per entity, its used slots: (interior cell, the entity's exact sums
    /// in it).
    pub(crate) fn entities(&self) -> impl Iterator<Item = impl Iterator<Item = (usize, SlotSums<'_>)>> + '_ {
        let stride = self.stride();
        let per_entity = self.slots_per_entity * stride;
        let wraps = &self.wraps;
        self.slots.chunks_exact(per_entity).enumerate().map(move |(entity, own)| {
            own.chunks_exact(stride).enumerate().filter(|(_, s)| s[0] != EMPTY).map(move |(i, s)| {
                let at = entity * per_entity + i * stride + 1;
                (s[0] as usize, SlotSums { words: &s[1..], at, wraps })
            })
        })
    }

    /// Whether `other` keeps its slots as this accumulator does (the same
    /// table under the same policy, derived or not), so that its entities
    /// can be absorbed into this one.
    pub(crate) fn same_layout(&self, other: &TableAccumulator) -> bool {
        self.derived == other.derived
            && self.slots_per_entity == other.slots_per_entity
            && self.excess == other.excess
            && self.radix == other.radix
            && self.lower == other.lower
            && self.upper == other.upper
            && self.scales == other.scales
    }

    /// How many entities have slots (used or not) in this accumulator.
    pub(crate) fn entities_with_slots(&self) -> usize {
        self.slots.len() / (self.slots_per_entity * self.stride()).max(1)
    }

    /// Forget every contribution, keeping the allocations: the slots are
    /// marked unused again as the next contribution needs them.
    pub(crate) fn clear(&mut self) {
        self.slots.clear();
        self.wraps.reset();
        self.dropped = 0;
    }

    /// Make room for the slots of `entities` entities, new slots unused.
    fn reserve_entities(&mut self, entities: usize) {
        let stride = self.stride();
        let words_needed = entities * self.slots_per_entity * stride;
        if self.slots.len() < words_needed {
            let old = self.slots.len();
            self.slots.resize(words_needed, 0);
            self.slots[old..].chunks_exact_mut(stride).for_each(|s| s[0] = EMPTY);
        }
    }

    /// Add entity `from` of `other` (whose pseudonym is `pseudonym`) to
    /// entity `to` of this accumulator, which has slots for `entities`
    /// entities at least; `other` has [`same_layout`](Self::same_layout).
    ///
    /// When `to` holds nothing yet, its slots become a copy of `from`'s,
    /// wrap counts included: O(slots). Otherwise each of `from`'s cells is
    /// merged as [`add`](Self::add) would take a contribution with those
    /// sums: added to the same cell (wraps added, and counted where the
    /// addition wraps), or put in an unused slot, or, with every slot used,
    /// under `drop` kept in place of the highest-ranked cell if it ranks
    /// lower (counted as dropped either way), under `fail` refused. The kept
    /// cells are then the lowest-ranked of all the entity's cells, as in one
    /// accumulator fed both sets of contributions, since each side kept its
    /// lowest-ranked ones.
    pub(crate) fn absorb_entity(
        &mut self,
        entities: usize,
        to: usize,
        other: &TableAccumulator,
        from: usize,
        pseudonym: u64,
    ) -> Result<(), ContractViolation> {
        if self.derived {
            return Ok(());
        }
        let stride = self.stride();
        let per_entity = self.slots_per_entity * stride;
        let from_first = from * per_entity;
        let Some(source) = other.slots.get(from_first..from_first + per_entity) else {
            // The entity never contributed to this table.
            return Ok(());
        };
        if source.chunks_exact(stride).all(|s| s[0] == EMPTY) {
            return Ok(());
        }
        self.reserve_entities(entities.max(to + 1));
        let first = to * per_entity;
        let own = &mut self.slots[first..first + per_entity];
        if own.chunks_exact(stride).all(|s| s[0] == EMPTY) {
            // The entity is new here: the common case, and an exact copy.
            own.copy_from_slice(source);
            if !other.wraps.is_empty() {
                for w in 0..per_entity {
                    self.wraps.add(first + w, other.wraps.count(from_first + w));
                }
            }
            return Ok(());
        }
        for (i, slot) in source.chunks_exact(stride).enumerate().filter(|(_, s)| s[0] != EMPTY) {
            self.merge_slot(first, pseudonym, slot, &other.wraps, from_first + i * stride)?;
        }
        Ok(())
    }

    /// Merge one slot of another accumulator (`slot`, its words; `wraps`
    /// and `at`, its wrap counts and the index of its first word there)
    /// into the entity whose slots start at word `first`.
    fn merge_slot(
        &mut self,
        first: usize,
        pseudonym: u64,
        slot: &[i64],
        wraps: &Wraps,
        at: usize,
    ) -> Result<(), ContractViolation> {
        let stride = self.stride();
        let cell = slot[0];
        let own = &mut self.slots[first..first + self.slots_per_entity * stride];
        let found = own
            .chunks_exact(stride)
            .position(|s| s[0] == cell)
            .or_else(|| own.chunks_exact(stride).position(|s| s[0] == EMPTY));
        let target = match found {
            Some(i) => i,
            None => match self.excess {
                ExcessContributions::Fail => {
                    return Err(ContractViolation::TooManyCells {
                        table: self.spec.name.clone(),
                        limit: self.slots_per_entity as u32,
                    });
                }
                ExcessContributions::Drop => {
                    let worst = own
                        .chunks_exact(stride)
                        .map(|s| rank(pseudonym, s[0]))
                        .enumerate()
                        .max_by_key(|&(_, r)| r);
                    self.dropped += 1;
                    let Some((worst, worst_rank)) = worst else { return Ok(()) };
                    if rank(pseudonym, cell) > worst_rank {
                        return Ok(());
                    }
                    own[worst * stride + 1..(worst + 1) * stride].fill(0);
                    self.wraps.clear(first + worst * stride + 1..first + (worst + 1) * stride);
                    worst
                }
            },
        };
        let to = first + target * stride;
        self.slots[to] = cell;
        for (m, &value) in slot.iter().enumerate().skip(1) {
            let (sum, wrapped) = self.slots[to + m].overflowing_add(value);
            self.slots[to + m] = sum;
            let carried = if wrapped { value.signum() } else { 0 };
            self.wraps.add(to + m, wraps.count(at + m) + carried);
        }
        Ok(())
    }

    fn violation(&self, detail: String) -> ContractViolation {
        ContractViolation::MalformedBatch { table: self.spec.name.clone(), detail }
    }

    /// Add a batch. On a violation the run is over, so what the batch
    /// already added does not matter.
    ///
    /// The work goes column by column (resolve entities, compute cells,
    /// convert values, accumulate) so each pass is a tight loop the CPU can
    /// pipeline, rather than one loop that waits on every lookup.
    pub fn contribute(
        &mut self,
        issued: &IssuedEntities,
        batch: &Contributions<'_>,
    ) -> Result<(), ContractViolation> {
        let rows = batch.entities.len();
        let measures = self.spec.measures.len();
        if batch.dimensions.len() != self.radix.len() || batch.measures.len() != measures {
            return Err(self.violation(format!(
                "expected {} dimension and {} measure columns, got {} and {}",
                self.radix.len(),
                measures,
                batch.dimensions.len(),
                batch.measures.len()
            )));
        }
        if batch.dimensions.iter().any(|c| c.len() != rows) || batch.measures.iter().any(|c| c.len() != rows)
        {
            return Err(self.violation("columns of unequal length".into()));
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let result = self.contribute_with(issued, batch, &mut scratch);
        self.scratch = scratch;
        result
    }

    fn contribute_with(
        &mut self,
        issued: &IssuedEntities,
        batch: &Contributions<'_>,
        scratch: &mut Scratch,
    ) -> Result<(), ContractViolation> {
        let rows = batch.entities.len();
        let measures = self.spec.measures.len();

        /// How many rows ahead the loops below ask for their memory.
        const AHEAD: usize = 16;

        scratch.entities.clear();
        for (row, &pseudonym) in batch.entities.iter().enumerate() {
            if let Some(&next) = batch.entities.get(row + AHEAD) {
                issued.prefetch(next);
            }
            match issued.lookup(pseudonym) {
                Some(entity) => scratch.entities.push(entity),
                None => {
                    return Err(ContractViolation::UnknownEntity {
                        table: self.spec.name.clone(),
                        pseudonym,
                    });
                }
            }
        }

        scratch.cells.clear();
        scratch.cells.resize(rows, 0);
        for (d, codes) in batch.dimensions.iter().enumerate() {
            let size = self.radix[d];
            if let Some(&code) = codes.iter().find(|&&c| c >= size) {
                return Err(self.outside_domain(d, code));
            }
            for (cell, &code) in scratch.cells.iter_mut().zip(codes.iter()) {
                *cell = *cell * size + code;
            }
        }

        // Row-major fixed-point values: row i's measures at i * measures.
        scratch.values.clear();
        scratch.values.resize(rows * measures, 0);
        for (m, column) in batch.measures.iter().enumerate() {
            if column.iter().any(|v| v.is_nan()) {
                return Err(ContractViolation::NotANumber {
                    table: self.spec.name.clone(),
                    measure: self.spec.measures[m].name.clone(),
                });
            }
            if self.derived {
                continue;
            }
            let (lower, upper, scale) = (self.lower[m], self.upper[m], self.scales[m]);
            for (row, &v) in column.iter().enumerate() {
                scratch.values[row * measures + m] = (v.clamp(lower, upper) * scale).round() as i64;
            }
        }

        if self.derived {
            // Checked; the release computes this table from its family's root.
            return Ok(());
        }
        let stride = self.stride();
        let words_per_entity = self.slots_per_entity * stride;
        self.reserve_entities(issued.len());
        for row in 0..rows {
            if let Some(&next) = scratch.entities.get(row + AHEAD) {
                crate::prefetch::prefetch(&self.slots[next as usize * words_per_entity]);
            }
            let values = &scratch.values[row * measures..(row + 1) * measures];
            let cell = i64::from(scratch.cells[row]);
            let entity = scratch.entities[row] as usize;
            if self.slots_per_entity == 1 {
                // The default policy's fast path: one slot, no search.
                let at = entity * stride;
                let slot = &mut self.slots[at..at + stride];
                if slot[0] == cell || slot[0] == EMPTY {
                    accumulate(slot, at, cell, values, &mut self.wraps);
                    continue;
                }
            }
            self.add(entity, batch.entities[row], cell, values)?;
        }
        Ok(())
    }

    fn outside_domain(&self, dimension: usize, code: u32) -> ContractViolation {
        let d = &self.spec.dimensions[dimension];
        ContractViolation::CodeOutsideDomain {
            table: self.spec.name.clone(),
            dimension: d.name.clone(),
            code,
            size: d.domain.len() as u32,
        }
    }

    #[inline]
    fn add(
        &mut self,
        entity: usize,
        pseudonym: u64,
        cell: i64,
        values: &[i64],
    ) -> Result<(), ContractViolation> {
        let stride = self.stride();
        let first = entity * self.slots_per_entity * stride;
        let own = &mut self.slots[first..first + self.slots_per_entity * stride];
        let found = own.chunks_exact(stride).position(|s| s[0] == cell || s[0] == EMPTY);
        let slot = match found {
            Some(i) => i,
            None => match self.excess {
                ExcessContributions::Fail => {
                    return Err(ContractViolation::TooManyCells {
                        table: self.spec.name.clone(),
                        limit: self.slots_per_entity as u32,
                    });
                }
                ExcessContributions::Drop => {
                    // Keep the lowest-ranked cells: the final set is the same
                    // whatever the order, since a cell evicted here ranks
                    // above every kept one and will be refused again later.
                    let (worst, worst_rank) = own
                        .chunks_exact(stride)
                        .map(|s| rank(pseudonym, s[0]))
                        .enumerate()
                        .max_by_key(|&(_, r)| r)
                        .expect("at least one slot per entity");
                    self.dropped += 1;
                    if rank(pseudonym, cell) > worst_rank {
                        return Ok(());
                    }
                    own[worst * stride + 1..(worst + 1) * stride].fill(0);
                    self.wraps.clear(first + worst * stride + 1..first + (worst + 1) * stride);
                    worst
                }
            },
        };
        let at = first + slot * stride;
        accumulate(&mut own[slot * stride..(slot + 1) * stride], at, cell, values, &mut self.wraps);
        Ok(())
    }
}
