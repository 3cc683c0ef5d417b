//! What the release rules look at, per released cell: distinct entities,
//! exact sums, and the largest contributors by entity and by tenant.
//!
//! Built from every tenant's accumulator of one table. An entity's total in a
//! cell is formed first (its slots merged, margins included) and only then
//! counted, summed and ranked, so dominance is judged on people, not rows.
//!
//! Every sum here is an exact integer: i128 sums and u128 magnitudes. A
//! released cell, a margin or a tenant's share adds up each contribution at
//! most once, and each is at most 2^40, so no sum passes 2^40 times the
//! rows of all tenants together: far inside 2^127 for any number of rows a
//! host could take (2^64 rows would still leave a factor of 2^23). Integer
//! addition in any order gives the same result.

use crate::accumulator::TableAccumulator;
use crate::shape::Shape;
use crate::suppression::{Derivation, OUTSIDE};

/// Per released cell statistics of one table.
#[derive(Debug)]
pub(crate) struct Tally {
    /// Position of each measure among the tracked ones, if its sum is
    /// released.
    position: Vec<Option<usize>>,
    tracked: usize,
    n: usize,
    /// Distinct entities per cell.
    pub entities: Vec<u64>,
    /// Distinct tenants per cell.
    pub tenants: Vec<u32>,
    /// Fixed-point sum per (cell, tracked measure).
    sums: Vec<i128>,
    /// Sum of the magnitudes of the per-entity totals per (cell, tracked
    /// measure): what dominance compares the largest contributors against.
    magnitude: Vec<u128>,
    /// The `n` largest per-entity magnitudes per (cell, tracked measure),
    /// descending.
    top_entities: Vec<u128>,
    /// The same per tenant; empty unless tenants are tallied.
    top_tenants: Vec<u128>,
}

/// Insert `value` into a descending top-`n` list.
fn insert_top(top: &mut [u128], value: u128) {
    if value <= top[top.len() - 1] {
        return;
    }
    let at = top.iter().position(|&t| value > t).expect("beats the last");
    top[at..].rotate_right(1);
    top[at] = value;
}

impl Tally {
    /// Tally one table over every tenant's accumulator. Only the measures in
    /// `summed` (those whose sums are released) are tracked; `n` is how many
    /// of the largest contributors to keep; the largest tenants are kept
    /// only when `by_tenant`. With a `derivation`, the accumulators are
    /// those of the family's root, and each slot counts in the derived
    /// table's cell it falls in, with the root's measures of the same name.
    /// With `clamp` (per tracked measure, fixed point), each entity's total
    /// in a released cell is clamped before it is summed: what bounds one
    /// entity's effect on a sum however many rows it has there.
    pub fn new(
        shape: &Shape,
        tenants: &[&TableAccumulator],
        summed: &[usize],
        derivation: Option<&Derivation>,
        n: usize,
        by_tenant: bool,
        clamp: Option<&[(i128, i128)]>,
    ) -> Tally {
        let cells = shape.count();
        let measures = summed.iter().max().map_or(0, |&m| m + 1);
        // The measure each tracked sum reads from a slot.
        let read: Vec<usize> = summed.iter().map(|&m| derivation.map_or(m, |d| d.measures[m])).collect();
        let mut position = vec![None; measures];
        summed.iter().enumerate().for_each(|(k, &m)| position[m] = Some(k));
        let tracked = summed.len();
        let n = n.max(1);
        let mut tally = Tally {
            position,
            tracked,
            n,
            entities: vec![0; cells],
            tenants: vec![0; cells],
            sums: vec![0; cells * tracked],
            magnitude: vec![0; cells * tracked],
            top_entities: vec![0; cells * tracked * n],
            top_tenants: if by_tenant { vec![0; cells * tracked * n] } else { Vec::new() },
        };
        let mut tenant_magnitude = vec![0u128; if by_tenant { cells * tracked } else { 0 }];
        let mut touched = Vec::new();
        let mut in_tenant = vec![false; cells];
        // One entity's (released cell, its totals there), merged by cell.
        let mut own_cells: Vec<usize> = Vec::new();
        let mut own_sums: Vec<i128> = Vec::new();
        let mut order: Vec<usize> = Vec::new();
        let mut merged_cells: Vec<usize> = Vec::new();
        let mut merged_sums: Vec<i128> = Vec::new();
        let mut covering = Vec::new();
        for table in tenants {
            for slots in table.entities() {
                own_cells.clear();
                own_sums.clear();
                for (cell, sums) in slots {
                    let interior = match derivation {
                        None => cell,
                        Some(d) => match d.cells[cell] {
                            OUTSIDE => continue,
                            derived => derived as usize,
                        },
                    };
                    shape.covering(shape.cell_of_interior(interior), &mut covering);
                    for &c in &covering {
                        own_cells.push(c);
                        own_sums.extend(read.iter().map(|&m| sums.get(m)));
                    }
                }
                // Cells of one slot are distinct; several slots may share a
                // margin (or, derived, a coarser cell), which must count the
                // entity once with its total.
                order.clear();
                order.extend(0..own_cells.len());
                order.sort_unstable_by_key(|&i| own_cells[i]);
                merged_cells.clear();
                merged_sums.clear();
                for &i in &order {
                    let sums = &own_sums[i * tracked..(i + 1) * tracked];
                    if merged_cells.last() == Some(&own_cells[i]) {
                        let last = merged_sums.len() - tracked;
                        merged_sums[last..].iter_mut().zip(sums).for_each(|(t, s)| *t += s);
                    } else {
                        merged_cells.push(own_cells[i]);
                        merged_sums.extend_from_slice(sums);
                    }
                }
                for (j, &cell) in merged_cells.iter().enumerate() {
                    tally.entities[cell] += 1;
                    if !in_tenant[cell] {
                        in_tenant[cell] = true;
                        touched.push(cell);
                    }
                    for (k, &total) in merged_sums[j * tracked..(j + 1) * tracked].iter().enumerate() {
                        let i = cell * tracked + k;
                        let total = clamp.map_or(total, |c| total.clamp(c[k].0, c[k].1));
                        let size = total.unsigned_abs();
                        tally.sums[i] += total;
                        tally.magnitude[i] += size;
                        insert_top(&mut tally.top_entities[i * n..(i + 1) * n], size);
                        if by_tenant {
                            tenant_magnitude[i] += size;
                        }
                    }
                }
            }
            for &cell in &touched {
                in_tenant[cell] = false;
                tally.tenants[cell] += 1;
                if by_tenant {
                    let own = &mut tenant_magnitude[cell * tracked..(cell + 1) * tracked];
                    let tops = &mut tally.top_tenants[cell * tracked * n..(cell + 1) * tracked * n];
                    for (magnitude, top) in own.iter_mut().zip(tops.chunks_exact_mut(n)) {
                        insert_top(top, std::mem::take(magnitude));
                    }
                }
            }
            touched.clear();
        }
        tally
    }

    /// Free what only the primary rules read (magnitudes and the largest
    /// contributors): a run keeps every table's tally until it is released,
    /// a benchmark one per tenant too, and these lists are most of a tally
    /// (16 bytes per cell, summed measure and contributor ranked).
    /// [`Tally::magnitude`], [`Tally::top_entities`] and
    /// [`Tally::top_tenants`] are not to be called after this.
    pub fn forget_contributors(&mut self) {
        self.magnitude = Vec::new();
        self.top_entities = Vec::new();
        self.top_tenants = Vec::new();
    }

    fn index(&self, cell: usize, m: usize) -> usize {
        cell * self.tracked + self.position[m].expect("a tracked measure")
    }

    /// The fixed-point sum of measure `m` in `cell`.
    pub fn sum(&self, cell: usize, m: usize) -> i128 {
        self.sums[self.index(cell, m)]
    }

    /// The magnitude all contributors of measure `m` in `cell` add up to.
    pub fn magnitude(&self, cell: usize, m: usize) -> u128 {
        self.magnitude[self.index(cell, m)]
    }

    /// The summed magnitude of the `take` largest entities.
    pub fn top_entities(&self, cell: usize, m: usize, take: usize) -> u128 {
        let i = self.index(cell, m);
        self.top_entities[i * self.n..i * self.n + take.min(self.n)].iter().sum()
    }

    /// The summed magnitude of the `take` largest tenants.
    pub fn top_tenants(&self, cell: usize, m: usize, take: usize) -> u128 {
        let i = self.index(cell, m);
        self.top_tenants[i * self.n..i * self.n + take.min(self.n)].iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_lists_stay_sorted() {
        let mut top = [0u128; 3];
        for v in [5, 1, 9, 7, 2, 9] {
            insert_top(&mut top, v);
        }
        assert_eq!(top, [9, 9, 7]);
    }
}
