//! Turning accumulated contributions into what may leave the host.

use serde::{Deserialize, Serialize};

use crate::accumulator::{Contributions, TableAccumulator};
use crate::spec::{SpecError, Statistic, TableSpec, validate_tables};
use crate::{ContractViolation, IssuedEntities, Policy};

/// The gate of one run: its output tables and the policy they answer to.
#[derive(Debug)]
pub struct Gate {
    policy: Policy,
    tables: Vec<TableAccumulator>,
}

/// One released cell: its key labels and either its statistics (in the
/// table's `statistics` order) or nothing, when suppressed. A suppressed cell
/// carries no reason and no hint of its size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleasedCell {
    pub key: Vec<String>,
    pub values: Option<Vec<f64>>,
}

/// One released table: every cell of its domain, in key order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleasedTable {
    pub name: String,
    pub dimensions: Vec<String>,
    pub statistics: Vec<String>,
    pub cells: Vec<ReleasedCell>,
    pub suppressed_cells: usize,
}

/// What a run releases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    pub policy: Policy,
    pub tables: Vec<ReleasedTable>,
}

impl Gate {
    /// A gate for the given tables under `policy`.
    pub fn new(tables: Vec<TableSpec>, policy: Policy) -> Result<Self, SpecError> {
        validate_tables(&tables)?;
        let tables = tables.into_iter().map(|spec| TableAccumulator::new(spec, &policy)).collect();
        Ok(Self { policy, tables })
    }

    /// The index of a declared table.
    pub fn table_index(&self, name: &str) -> Option<usize> {
        self.tables.iter().position(|t| t.spec.name == name)
    }

    /// The accumulator of table `index`.
    pub fn table(&self, index: usize) -> &TableAccumulator {
        &self.tables[index]
    }

    /// Add a batch of contributions to table `index`.
    pub fn contribute(
        &mut self,
        index: usize,
        issued: &IssuedEntities,
        batch: &Contributions<'_>,
    ) -> Result<(), ContractViolation> {
        self.tables[index].contribute(issued, batch)
    }

    /// Contributions dropped because their entity had reached its cell limit.
    pub fn dropped_contributions(&self) -> u64 {
        self.tables.iter().map(|t| t.dropped).sum()
    }

    /// Apply the release rules and produce what may leave the host.
    pub fn release(&self) -> Release {
        Release {
            policy: self.policy.clone(),
            tables: self.tables.iter().map(|t| self.release_table(t)).collect(),
        }
    }

    fn release_table(&self, table: &TableAccumulator) -> ReleasedTable {
        let spec = &table.spec;
        let measures = spec.measures.len();
        let cell_count = spec.cell_count();
        let mut entities = vec![0u64; cell_count];
        let mut totals = vec![0i128; cell_count * measures];
        for (cell, sums) in table.used_slots() {
            entities[cell] += 1;
            for (total, &sum) in totals[cell * measures..(cell + 1) * measures].iter_mut().zip(sums) {
                *total += i128::from(sum);
            }
        }

        let k = u64::from(self.policy.min_entities);
        let mut suppressed_cells = 0;
        let cells = (0..cell_count)
            .map(|cell| {
                let key = table.cell_labels(cell);
                if entities[cell] < k {
                    suppressed_cells += 1;
                    return ReleasedCell { key, values: None };
                }
                let sum = |name: &str| {
                    let m = spec.measure_index(name).expect("validated statistic");
                    totals[cell * measures + m] as f64 / table.scales[m]
                };
                let count = entities[cell] as f64;
                let values = spec
                    .statistics
                    .iter()
                    .map(|s| match s {
                        Statistic::Count => count,
                        Statistic::Sum(m) => sum(m),
                        Statistic::Mean(m) => sum(m) / count,
                        Statistic::Ratio(a, b) => sum(a) / sum(b),
                    })
                    .collect();
                ReleasedCell { key, values: Some(values) }
            })
            .collect();

        ReleasedTable {
            name: spec.name.clone(),
            dimensions: spec.dimensions.iter().map(|d| d.name.clone()).collect(),
            statistics: spec.statistics.iter().map(Statistic::column_name).collect(),
            cells,
            suppressed_cells,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Dimension, Domain, ExcessContributions, Measure};

    fn spec() -> TableSpec {
        TableSpec {
            name: "fuel".into(),
            description: String::new(),
            dimensions: vec![Dimension {
                name: "region".into(),
                domain: Domain::Labels(vec!["north".into(), "south".into(), "east".into()]),
            }],
            measures: vec![Measure { name: "litres".into(), lower: 0.0, upper: 100.0 }],
            statistics: vec![
                Statistic::Count,
                Statistic::Sum("litres".into()),
                Statistic::Mean("litres".into()),
            ],
            margins: false,
        }
    }

    fn issued(n: u64) -> (IssuedEntities, Vec<u64>) {
        let mut issued = IssuedEntities::new();
        let ids: Vec<u64> = (0..n).map(|i| 0x5eed_0000 + i * 7919).collect();
        ids.iter().for_each(|&p| {
            issued.issue(p);
        });
        (issued, ids)
    }

    fn run(
        gate: &mut Gate,
        issued: &IssuedEntities,
        entities: &[u64],
        codes: &[u32],
        values: &[f64],
    ) -> Result<(), ContractViolation> {
        gate.contribute(0, issued, &Contributions { entities, dimensions: &[codes], measures: &[values] })
    }

    #[test]
    fn cells_below_k_are_suppressed_and_others_released() {
        let (issued, ids) = issued(19);
        let mut gate = Gate::new(vec![spec()], Policy::default()).unwrap();
        // 10 entities in north, 9 in south, none in east.
        let codes: Vec<u32> = (0..19).map(|i| u32::from(i >= 10)).collect();
        run(&mut gate, &issued, &ids, &codes, &[10.0; 19]).unwrap();
        let table = &gate.release().tables[0];
        assert_eq!(table.cells[0].values, Some(vec![10.0, 100.0, 10.0]));
        assert_eq!(table.cells[1], ReleasedCell { key: vec!["south".into()], values: None });
        assert_eq!(table.cells[2].values, None);
        assert_eq!(table.suppressed_cells, 2);
    }

    #[test]
    fn counts_are_distinct_entities_not_rows() {
        let (issued, ids) = issued(5);
        let mut gate = Gate::new(vec![spec()], Policy::default()).unwrap();
        let many: Vec<u64> = ids.iter().cycle().take(50).copied().collect();
        run(&mut gate, &issued, &many, &[0; 50], &[1.0; 50]).unwrap();
        assert_eq!(gate.release().tables[0].cells[0].values, None, "5 entities, 50 rows: below k = 10");
    }

    #[test]
    fn contract_violations_name_what_was_wrong() {
        let (issued, ids) = issued(3);
        let mut gate = Gate::new(vec![spec()], Policy::default()).unwrap();
        let err = run(&mut gate, &issued, &[12345], &[0], &[1.0]).unwrap_err();
        assert!(matches!(err, ContractViolation::UnknownEntity { pseudonym: 12345, .. }), "{err}");
        let err = run(&mut gate, &issued, &ids[..1], &[3], &[1.0]).unwrap_err();
        assert!(matches!(err, ContractViolation::CodeOutsideDomain { code: 3, size: 3, .. }), "{err}");
        let err = run(&mut gate, &issued, &ids[..1], &[0], &[f64::NAN]).unwrap_err();
        assert!(matches!(err, ContractViolation::NotANumber { .. }), "{err}");
        let err = run(&mut gate, &issued, &ids[..2], &[0], &[1.0, 2.0]).unwrap_err();
        assert!(err.to_string().contains("unequal length"), "{err}");
        let err = gate
            .contribute(
                0,
                &issued,
                &Contributions { entities: &ids[..1], dimensions: &[], measures: &[&[1.0]] },
            )
            .unwrap_err();
        assert!(err.to_string().contains("expected 1 dimension"), "{err}");
    }

    #[test]
    fn measures_are_clamped_to_their_bounds() {
        let (issued, ids) = issued(10);
        let mut gate = Gate::new(vec![spec()], Policy::default()).unwrap();
        let mut values = vec![50.0; 10];
        values[0] = 1e12;
        values[1] = f64::NEG_INFINITY;
        run(&mut gate, &issued, &ids, &[0; 10], &values).unwrap();
        let released = gate.release().tables[0].cells[0].values.clone().unwrap();
        assert_eq!(released[1], 8.0 * 50.0 + 100.0 + 0.0);
    }

    #[test]
    fn an_entity_counts_towards_at_most_its_cell_limit() {
        let (issued, ids) = issued(10);
        let mut gate = Gate::new(vec![spec()], Policy::default()).unwrap();
        // Every entity contributes to all three cells.
        for code in 0..3 {
            run(&mut gate, &issued, &ids, &[code; 10], &[1.0; 10]).unwrap();
        }
        let table = &gate.release().tables[0];
        let counted: f64 = table.cells.iter().map(|c| c.values.as_ref().map_or(0.0, |v| v[0])).sum();
        assert!(counted <= 10.0, "each entity counts once in all, got {counted}");
        assert_eq!(gate.dropped_contributions(), 20);

        let fail = Policy { excess_contributions: ExcessContributions::Fail, ..Policy::default() };
        let mut gate = Gate::new(vec![spec()], fail).unwrap();
        run(&mut gate, &issued, &ids[..1], &[0], &[1.0]).unwrap();
        let err = run(&mut gate, &issued, &ids[..1], &[1], &[1.0]).unwrap_err();
        assert!(matches!(err, ContractViolation::TooManyCells { limit: 1, .. }), "{err}");
    }
}
