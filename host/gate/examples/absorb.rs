//! The gate's share of an entity-isolated run, per entity: a scratch intake
//! and issued set fed one entity's rows, absorbed into the run's intake,
//! then cleared for the next entity. Two tables (a 4 x 5 table with
//! margins, two measures, and a table by its first dimension, which the
//! gate derives from it), 1 M entities issued to the run in random order.
//!
//! Prints, per entity, the whole loop (issue, contribute, absorb, clear),
//! the same loop without the absorb (so the difference is what absorb
//! costs with the scratch intake in cache, as right after an instance
//! ends), with entities in random order (then absorb waits on two cache
//! misses: the run's issued set and the entity's slots) and in the order
//! they were issued; and absorb and clear timed alone over 100 000 intakes
//! built beforehand.
//!
//! `cargo run --release -p kanon-gate --example absorb -- [entities] [rows per entity] [cells per entity]`

use std::hint::black_box;
use std::time::Instant;

use kanon_gate::{
    Contributions, Dimension, Domain, Gate, IssuedEntities, Measure, Policy, Scope, Statistic, TableSpec,
    TenantIntake,
};

fn tables() -> Vec<TableSpec> {
    let labels = |n: usize| Domain::Labels((0..n).map(|i| format!("v{i}")).collect());
    let measure = |name: &str| Measure { name: name.into(), lower: 0.0, upper: 1000.0 };
    let statistics =
        vec![Statistic::Count, Statistic::Sum("x".into()), Statistic::Ratio("x".into(), "y".into())];
    let fine = TableSpec {
        name: "fine".into(),
        description: String::new(),
        dimensions: vec![
            Dimension { name: "a".into(), domain: labels(4) },
            Dimension { name: "b".into(), domain: labels(5) },
        ],
        measures: vec![measure("x"), measure("y")],
        statistics: statistics.clone(),
        margins: true,
    };
    let coarse = TableSpec {
        name: "coarse".into(),
        dimensions: vec![Dimension { name: "a".into(), domain: labels(4) }],
        margins: false,
        ..fine.clone()
    };
    vec![fine, coarse]
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

/// One entity's rows: the same pseudonym, random cells and values.
struct Rows {
    entities: Vec<u64>,
    a: Vec<u32>,
    b: Vec<u32>,
    x: Vec<f64>,
    y: Vec<f64>,
}

impl Rows {
    fn new(rows: usize, rng: &mut Rng) -> Rows {
        let mut r = Rows { entities: vec![0; rows], a: vec![], b: vec![], x: vec![], y: vec![] };
        for _ in 0..rows {
            r.a.push(rng.below(4) as u32);
            r.b.push(rng.below(5) as u32);
            r.x.push(rng.below(1_000_000) as f64 / 1000.0);
            r.y.push(1.0 + rng.below(999_000) as f64 / 1000.0);
        }
        r
    }

    /// Contribute these rows for `pseudonym` to both tables.
    fn contribute(&mut self, intake: &mut TenantIntake, issued: &IssuedEntities, pseudonym: u64) {
        self.entities.fill(pseudonym);
        let fine = Contributions {
            entities: &self.entities,
            dimensions: &[&self.a, &self.b],
            measures: &[&self.x, &self.y],
        };
        intake.contribute(0, issued, &fine).expect("valid contributions");
        let coarse =
            Contributions { entities: &self.entities, dimensions: &[&self.a], measures: &[&self.x, &self.y] };
        intake.contribute(1, issued, &coarse).expect("valid contributions");
    }
}

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().expect("a number"));
    let entities = args.next().unwrap_or(1_000_000);
    let rows = args.next().unwrap_or(4);
    let cells = args.next().unwrap_or(1) as u32;

    let policy = Policy { max_cells_per_entity: cells, ..Policy::default() };
    let gate = Gate::new(tables(), policy, Scope::Tenant).expect("valid tables");
    let mut rng = Rng(7);
    let pseudonyms: Vec<u64> = (0..entities).map(|_| rng.next()).collect();
    let mut issued = IssuedEntities::new();
    pseudonyms.iter().for_each(|&p| {
        issued.issue(p);
    });
    // Entities run in another order than they were issued.
    let mut order = pseudonyms.clone();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut batch = Rows::new(rows, &mut rng);
    println!("{entities} entities, {rows} rows each to two tables, {cells} cell(s) per entity");

    let per_entity = |order: &[u64], with_absorb: bool, batch: &mut Rows| {
        let mut run = gate.intake();
        let (mut scratch, mut own) = (gate.intake(), IssuedEntities::new());
        let start = Instant::now();
        for &p in order {
            own.issue(p);
            batch.contribute(&mut scratch, &own, p);
            if with_absorb {
                run.absorb(&issued, &scratch, &own).expect("issued to the run");
            }
            scratch.clear();
            own.clear();
        }
        let ns = start.elapsed().as_nanos() as f64 / entities as f64;
        black_box(&run);
        (ns, run)
    };
    for (name, order) in [("in random order", &order), ("in the order issued", &pseudonyms)] {
        for _ in 0..3 {
            let (with, run) = per_entity(order, true, &mut batch);
            let (without, _) = per_entity(order, false, &mut batch);
            println!(
                "{name}, per entity: issue + contribute + absorb + clear {with:.0} ns; \
                 without absorb {without:.0} ns; absorb {:.0} ns",
                with - without
            );
            black_box(gate.release(&[run]));
        }
    }

    // absorb and clear alone, over intakes built beforehand (cold in cache).
    let built = entities.min(100_000);
    let mut intakes: Vec<(TenantIntake, IssuedEntities)> = order[..built]
        .iter()
        .map(|&p| {
            let (mut intake, mut own) = (gate.intake(), IssuedEntities::new());
            own.issue(p);
            batch.contribute(&mut intake, &own, p);
            (intake, own)
        })
        .collect();
    let mut run = gate.intake();
    run.absorb(&issued, &intakes[0].0, &intakes[0].1).expect("issued to the run");
    let start = Instant::now();
    for (intake, own) in &intakes {
        run.absorb(&issued, intake, own).expect("issued to the run");
    }
    let absorb = start.elapsed().as_nanos() as f64 / built as f64;
    let start = Instant::now();
    for (intake, own) in &mut intakes {
        intake.clear();
        own.clear();
    }
    let clear = start.elapsed().as_nanos() as f64 / built as f64;
    println!(
        "alone, over {built} intakes built beforehand: absorb {absorb:.0} ns, clear (intake and issued) {clear:.0} ns"
    );

    // clear in cache: the work does not depend on what the intake held (a
    // length set to zero per table, the issued set's 16 buckets zeroed).
    let (scratch, own) = &mut intakes[0];
    let start = Instant::now();
    for _ in 0..1_000_000 {
        black_box(&mut *scratch).clear();
        black_box(&mut *own).clear();
    }
    println!("clear (intake and issued) in cache: {:.1} ns", start.elapsed().as_nanos() as f64 / 1e6);
}
