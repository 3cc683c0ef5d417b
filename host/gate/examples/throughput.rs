//! Contributions per second through the gate on one core: the contract
//! checks and exact per-entity accumulation, then the release. The same
//! workload as `kanon-bench`'s `gate_contributions_per_s` (200 000 issued
//! entities, each keeping to one cell of a 4 x 5 table, two measures, rows
//! in random order, batches of 64 K), without building the runtime.
//!
//! `cargo run --release -p kanon-gate --example throughput -- [contributions] [repetitions]`

use std::time::Instant;

use kanon_gate::{
    Contributions, Dimension, Domain, Gate, IssuedEntities, Measure, Policy, Scope, Statistic, TableSpec,
};

const ENTITIES: u64 = 200_000;
const BATCH: usize = 1 << 16;

fn table() -> TableSpec {
    let labels = |n: usize| Domain::Labels((0..n).map(|i| format!("v{i}")).collect());
    let measure = |name: &str| Measure { name: name.into(), lower: 0.0, upper: 1000.0 };
    TableSpec {
        name: "bench".into(),
        description: String::new(),
        dimensions: vec![
            Dimension { name: "a".into(), domain: labels(4) },
            Dimension { name: "b".into(), domain: labels(5) },
        ],
        measures: vec![measure("x"), measure("y")],
        statistics: vec![
            Statistic::Count,
            Statistic::Sum("x".into()),
            Statistic::Ratio("x".into(), "y".into()),
        ],
        margins: false,
    }
}

/// xorshift64*: enough randomness for a workload, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().expect("a number"));
    let total = args.next().unwrap_or(50_000_000);
    let repetitions = args.next().unwrap_or(5);

    let mut issued = IssuedEntities::new();
    let pseudonyms: Vec<u64> =
        (0..ENTITIES).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5555).collect();
    pseudonyms.iter().for_each(|&p| {
        issued.issue(p);
    });
    let mut rng = Rng(5);
    let (mut entities, mut a, mut b, mut x, mut y) = (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..BATCH {
        let e = rng.below(ENTITIES) as usize;
        entities.push(pseudonyms[e]);
        a.push((e % 4) as u32);
        b.push((e / 4 % 5) as u32);
        x.push(rng.below(1_200_000) as f64 / 1000.0);
        y.push(1.0 + rng.below(899_000) as f64 / 1000.0);
    }
    let gate = Gate::new(vec![table()], Policy::default(), Scope::Tenant).expect("a valid table");
    let batches = total.div_ceil(BATCH);
    let mut best = 0f64;
    for _ in 0..repetitions {
        let mut intake = gate.intake();
        let start = Instant::now();
        for _ in 0..batches {
            let batch = Contributions { entities: &entities, dimensions: &[&a, &b], measures: &[&x, &y] };
            intake.contribute(0, &issued, &batch).expect("valid contributions");
        }
        let release = gate.release(std::slice::from_ref(&intake));
        let rate = (batches * BATCH) as f64 / start.elapsed().as_secs_f64();
        std::hint::black_box(release);
        println!("{:.1} M contributions/s", rate / 1e6);
        best = best.max(rate);
    }
    println!("best of {repetitions}: {:.1} M contributions/s", best / 1e6);
}
