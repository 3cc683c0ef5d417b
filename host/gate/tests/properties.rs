//! Properties of the gate over random contributions, domains and policies.

use kanon_gate::{
    Contributions, Dimension, Domain, Gate, IssuedEntities, Measure, Policy, Release, Scope, Statistic,
    TableSpec,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Case {
    sizes: Vec<u32>,
    policy: Policy,
    entities: u64,
    rows: Vec<(u64, Vec<u32>, f64)>,
}

fn spec(sizes: &[u32]) -> TableSpec {
    TableSpec {
        name: "t".into(),
        description: String::new(),
        dimensions: sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| Dimension {
                name: format!("d{i}"),
                domain: Domain::Labels((0..n).map(|c| format!("v{c}")).collect()),
            })
            .collect(),
        measures: vec![Measure { name: "x".into(), lower: -5.0, upper: 20.0 }],
        statistics: vec![Statistic::Count, Statistic::Sum("x".into())],
        margins: false,
    }
}

fn case() -> impl Strategy<Value = Case> {
    (prop::collection::vec(1u32..4, 1..3), 2u32..6, 1u32..3, 1u64..40).prop_flat_map(|(sizes, k, m, n)| {
        let key = sizes.iter().map(|&s| 0..s).collect::<Vec<_>>();
        let row = (0..n, key, -50.0f64..50.0);
        prop::collection::vec(row, 0..200).prop_map(move |rows| Case {
            sizes: sizes.clone(),
            policy: Policy { min_entities: k, max_cells_per_entity: m, ..Policy::default() },
            entities: n,
            rows,
        })
    })
}

fn pseudonym(i: u64) -> u64 {
    i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xabcd
}

/// Run `rows` through a fresh gate in batches of `batch` rows.
fn release(case: &Case, rows: &[(u64, Vec<u32>, f64)], batch: usize) -> Release {
    let mut issued = IssuedEntities::new();
    (0..case.entities).for_each(|i| {
        issued.issue(pseudonym(i));
    });
    let gate = Gate::new(vec![spec(&case.sizes)], case.policy.clone(), Scope::Tenant).unwrap();
    let mut intake = gate.intake();
    for chunk in rows.chunks(batch.max(1)) {
        let entities: Vec<u64> = chunk.iter().map(|r| pseudonym(r.0)).collect();
        let dims: Vec<Vec<u32>> =
            (0..case.sizes.len()).map(|d| chunk.iter().map(|r| r.1[d]).collect()).collect();
        let dims: Vec<&[u32]> = dims.iter().map(Vec::as_slice).collect();
        let values: Vec<f64> = chunk.iter().map(|r| r.2).collect();
        intake
            .contribute(
                0,
                &issued,
                &Contributions { entities: &entities, dimensions: &dims, measures: &[&values] },
            )
            .unwrap();
    }
    gate.release(&[intake])
}

proptest! {
    #[test]
    fn release_does_not_depend_on_order_or_batching(case in case(), seed in any::<u64>(), batch in 1usize..64) {
        let base = release(&case, &case.rows, case.rows.len());
        let mut shuffled = case.rows.clone();
        // Fisher-Yates with a tiny LCG: proptest shrinks `seed`, not the permutation.
        let mut state = seed | 1;
        for i in (1..shuffled.len()).rev() {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (state >> 33) as usize % (i + 1));
        }
        prop_assert_eq!(&base, &release(&case, &shuffled, batch));
    }

    #[test]
    fn released_cells_hold_k_entities_and_bounded_sums(case in case()) {
        let out = release(&case, &case.rows, 17);
        let table = &out.tables[0];
        let mut counted = 0.0;
        for cell in &table.cells {
            if let Some(values) = &cell.values {
                let (count, sum) = (values[0], values[1]);
                prop_assert!(count >= f64::from(case.policy.min_entities));
                // Each contribution is clamped to [-5, 20]; rows bound the total.
                let rows = case.rows.len() as f64;
                prop_assert!(sum <= 20.0 * rows + 1e-9 && sum >= -5.0 * rows - 1e-9);
                counted += count;
            }
        }
        // Each entity counts towards at most `max_cells_per_entity` cells.
        prop_assert!(counted <= (case.entities * u64::from(case.policy.max_cells_per_entity)) as f64);
        let suppressed = table.cells.iter().filter(|c| c.values.is_none()).count();
        prop_assert_eq!(suppressed, table.suppressed_cells);
        prop_assert_eq!(table.cells.len(), case.sizes.iter().product::<u32>() as usize);
    }
}
