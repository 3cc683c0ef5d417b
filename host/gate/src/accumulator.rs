//! Per-entity state of one output table while a run contributes to it.
//!
//! Each issued entity owns `max_cells_per_entity` slots in flat arrays: a
//! cell index and that entity's fixed-point sums for the cell. That gives
//! exact distinct counts and per-entity totals with one array access per
//! contribution, and bounds the cells an entity reaches without depending on
//! the order contributions arrive in.

use crate::spec::TableSpec;
use crate::{ContractViolation, ExcessContributions, IssuedEntities, Policy};

/// Most measures a table may declare.
pub const MAX_MEASURES: usize = 16;

const EMPTY: u32 = u32::MAX;

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
    /// `slots_per_entity` cell indexes per entity, `EMPTY` when unused.
    pub(crate) cells: Vec<u32>,
    /// Per slot, one fixed-point sum per measure.
    pub(crate) sums: Vec<i128>,
    pub(crate) dropped: u64,
}

/// The power of two that maps the largest bound to about 2^52, so every
/// clamped value converts to an integer without losing more than the bound's
/// own float precision, and integer sums are order-independent.
fn fixed_point_scale(lower: f64, upper: f64) -> f64 {
    let magnitude = lower.abs().max(upper.abs());
    if magnitude == 0.0 {
        return 1.0;
    }
    2f64.powi(52 - magnitude.log2().ceil() as i32)
}

/// A stable pseudo-random rank of (entity, cell): which cells an entity keeps
/// when it reaches too many. Lower wins; ties cannot happen between
/// different cells because the mix is a bijection of distinct inputs.
#[inline]
fn rank(pseudonym: u64, cell: u32) -> u64 {
    let mut z = pseudonym ^ u64::from(cell).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl TableAccumulator {
    /// An empty accumulator for a validated spec.
    pub fn new(spec: TableSpec, policy: &Policy) -> Self {
        let radix = spec.dimensions.iter().map(|d| d.domain.len() as u32).collect();
        let lower: Vec<f64> = spec.measures.iter().map(|m| m.lower).collect();
        let upper: Vec<f64> = spec.measures.iter().map(|m| m.upper).collect();
        let scales = lower.iter().zip(&upper).map(|(&l, &u)| fixed_point_scale(l, u)).collect();
        Self {
            spec,
            radix,
            lower,
            upper,
            scales,
            slots_per_entity: policy.max_cells_per_entity as usize,
            excess: policy.excess_contributions,
            cells: Vec::new(),
            sums: Vec::new(),
            dropped: 0,
        }
    }

    /// The table's spec.
    pub fn spec(&self) -> &TableSpec {
        &self.spec
    }

    /// Bytes of state per (entity, cell) slot.
    pub fn bytes_per_slot(&self) -> usize {
        size_of::<u32>() + self.spec.measures.len() * size_of::<i128>()
    }

    /// Slots in use per entity (for `entity` in `0..entities`), in slot
    /// order: the cell each one counts towards.
    pub(crate) fn slots(&self) -> impl Iterator<Item = (usize, u32)> + '_ {
        self.cells.iter().enumerate().filter(|(_, c)| **c != EMPTY).map(|(slot, &c)| (slot, c))
    }

    fn violation(&self, detail: String) -> ContractViolation {
        ContractViolation::MalformedBatch { table: self.spec.name.clone(), detail }
    }

    /// Add a batch. On a violation the run is over, so what the batch
    /// already added does not matter.
    pub fn contribute(&mut self, issued: &IssuedEntities, batch: &Contributions<'_>) -> Result<(), ContractViolation> {
        let rows = batch.entities.len();
        let measure_count = self.spec.measures.len();
        if batch.dimensions.len() != self.radix.len() || batch.measures.len() != measure_count {
            return Err(self.violation(format!(
                "expected {} dimension and {} measure columns, got {} and {}",
                self.radix.len(),
                measure_count,
                batch.dimensions.len(),
                batch.measures.len()
            )));
        }
        if batch.dimensions.iter().any(|c| c.len() != rows) || batch.measures.iter().any(|c| c.len() != rows) {
            return Err(self.violation("columns of unequal length".into()));
        }
        let slots_needed = issued.len() * self.slots_per_entity;
        if self.cells.len() < slots_needed {
            self.cells.resize(slots_needed, EMPTY);
            self.sums.resize(slots_needed * measure_count, 0);
        }

        let mut values = [0i128; MAX_MEASURES];
        for row in 0..rows {
            let pseudonym = batch.entities[row];
            let Some(entity) = issued.lookup(pseudonym) else {
                return Err(ContractViolation::UnknownEntity { table: self.spec.name.clone(), pseudonym });
            };
            let mut cell = 0u32;
            for (d, codes) in batch.dimensions.iter().enumerate() {
                let code = codes[row];
                if code >= self.radix[d] {
                    return Err(self.outside_domain(d, code));
                }
                cell = cell * self.radix[d] + code;
            }
            for (m, column) in batch.measures.iter().enumerate() {
                let value = column[row];
                if value.is_nan() {
                    return Err(ContractViolation::NotANumber {
                        table: self.spec.name.clone(),
                        measure: self.spec.measures[m].name.clone(),
                    });
                }
                let clamped = value.clamp(self.lower[m], self.upper[m]);
                values[m] = (clamped * self.scales[m]).round() as i128;
            }
            self.add(entity as usize, pseudonym, cell, &values[..measure_count])?;
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
    fn add(&mut self, entity: usize, pseudonym: u64, cell: u32, values: &[i128]) -> Result<(), ContractViolation> {
        let first = entity * self.slots_per_entity;
        let slots = &self.cells[first..first + self.slots_per_entity];
        let slot = match slots.iter().position(|&c| c == cell || c == EMPTY) {
            Some(i) => first + i,
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
                    let (worst, worst_rank) = slots
                        .iter()
                        .enumerate()
                        .map(|(i, &c)| (i, rank(pseudonym, c)))
                        .max_by_key(|&(_, r)| r)
                        .expect("at least one slot per entity");
                    self.dropped += 1;
                    if rank(pseudonym, cell) > worst_rank {
                        return Ok(());
                    }
                    let slot = first + worst;
                    let m = values.len();
                    self.sums[slot * m..slot * m + m].fill(0);
                    self.cells[slot] = EMPTY;
                    slot
                }
            },
        };
        self.cells[slot] = cell;
        let m = values.len();
        for (sum, &v) in self.sums[slot * m..slot * m + m].iter_mut().zip(values) {
            *sum += v;
        }
        Ok(())
    }

    /// The dimension codes of a cell index.
    pub fn cell_codes(&self, mut cell: usize) -> Vec<usize> {
        let mut codes = vec![0; self.radix.len()];
        for (d, &size) in self.radix.iter().enumerate().rev() {
            codes[d] = cell % size as usize;
            cell /= size as usize;
        }
        codes
    }

    /// The labels of a cell index.
    pub fn cell_labels(&self, cell: usize) -> Vec<String> {
        let codes = self.cell_codes(cell);
        self.spec.dimensions.iter().zip(codes).map(|(d, code)| d.domain.label(code)).collect()
    }
}
