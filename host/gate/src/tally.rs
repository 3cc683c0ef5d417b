//! What the release rules look at, per released cell: distinct entities,
//! exact sums, and the largest contributors by entity and by tenant.
//!
//! Built from every tenant's accumulator of one table. An entity's total in a
//! cell is formed first (its slots merged, margins included) and only then
//! counted, summed and ranked, so dominance is judged on people, not rows.

use crate::accumulator::TableAccumulator;
use crate::shape::Shape;

/// Per released cell statistics of one table.
#[derive(Debug)]
pub(crate) struct Tally {
    measures: usize,
    n: usize,
    /// Distinct entities per cell.
    pub entities: Vec<u64>,
    /// Distinct tenants per cell.
    pub tenants: Vec<u32>,
    /// Fixed-point sum per (cell, measure).
    sums: Vec<i128>,
    /// Sum of the magnitudes of the per-entity totals per (cell, measure):
    /// what dominance compares the largest contributors against.
    magnitude: Vec<u128>,
    /// The `n` largest per-entity magnitudes per (cell, measure), descending.
    top_entities: Vec<u128>,
    /// The `n` largest per-tenant magnitudes per (cell, measure), descending.
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
    /// Tally one table over every tenant's accumulator; `n` is how many of
    /// the largest contributors to keep (at least 1, for the tenant share).
    pub fn new(shape: &Shape, tenants: &[&TableAccumulator], n: usize) -> Tally {
        let cells = shape.count();
        let measures = tenants.first().map_or(0, |t| t.spec.measures.len());
        let n = n.max(1);
        let mut tally = Tally {
            measures,
            n,
            entities: vec![0; cells],
            tenants: vec![0; cells],
            sums: vec![0; cells * measures],
            magnitude: vec![0; cells * measures],
            top_entities: vec![0; cells * measures * n],
            top_tenants: vec![0; cells * measures * n],
        };
        let mut tenant_magnitude = vec![0u128; cells * measures];
        let mut touched = Vec::new();
        let mut in_tenant = vec![false; cells];
        // One entity's (released cell, its totals there), then merged by cell.
        let mut own_cells: Vec<usize> = Vec::new();
        let mut own_sums: Vec<i128> = Vec::new();
        let mut order: Vec<usize> = Vec::new();
        let mut merged: Vec<(usize, Vec<i128>)> = Vec::new();
        let mut covering = Vec::new();
        for table in tenants {
            for slots in table.entities() {
                own_cells.clear();
                own_sums.clear();
                for (cell, sums) in slots {
                    shape.covering(shape.cell_of_interior(cell), &mut covering);
                    for &c in &covering {
                        own_cells.push(c);
                        own_sums.extend(sums.iter().map(|&s| i128::from(s)));
                    }
                }
                // Cells of one slot are distinct; several slots may share a
                // margin, which must count the entity once with its total.
                order.clear();
                order.extend(0..own_cells.len());
                order.sort_unstable_by_key(|&i| own_cells[i]);
                merged.clear();
                for &i in &order {
                    let sums = &own_sums[i * measures..(i + 1) * measures];
                    match merged.last_mut() {
                        Some((cell, total)) if *cell == own_cells[i] => {
                            total.iter_mut().zip(sums).for_each(|(t, s)| *t += s)
                        }
                        _ => merged.push((own_cells[i], sums.to_vec())),
                    }
                }
                let own = &merged;
                for (cell, totals) in own {
                    let cell = *cell;
                    tally.entities[cell] += 1;
                    if !in_tenant[cell] {
                        in_tenant[cell] = true;
                        touched.push(cell);
                    }
                    for (m, &total) in totals.iter().enumerate() {
                        let i = cell * measures + m;
                        let size = total.unsigned_abs();
                        tally.sums[i] += total;
                        tally.magnitude[i] += size;
                        tenant_magnitude[i] += size;
                        insert_top(&mut tally.top_entities[i * n..(i + 1) * n], size);
                    }
                }
            }
            for &cell in &touched {
                in_tenant[cell] = false;
                tally.tenants[cell] += 1;
                for m in 0..measures {
                    let i = cell * measures + m;
                    insert_top(&mut tally.top_tenants[i * n..(i + 1) * n], tenant_magnitude[i]);
                    tenant_magnitude[i] = 0;
                }
            }
            touched.clear();
        }
        tally
    }

    /// The fixed-point sum of measure `m` in `cell`.
    pub fn sum(&self, cell: usize, m: usize) -> i128 {
        self.sums[cell * self.measures + m]
    }

    /// The magnitude all contributors of measure `m` in `cell` add up to.
    pub fn magnitude(&self, cell: usize, m: usize) -> u128 {
        self.magnitude[cell * self.measures + m]
    }

    /// The summed magnitude of the `take` largest entities.
    pub fn top_entities(&self, cell: usize, m: usize, take: usize) -> u128 {
        let i = cell * self.measures + m;
        self.top_entities[i * self.n..i * self.n + take.min(self.n)].iter().sum()
    }

    /// The summed magnitude of the `take` largest tenants.
    pub fn top_tenants(&self, cell: usize, m: usize, take: usize) -> u128 {
        let i = cell * self.measures + m;
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
