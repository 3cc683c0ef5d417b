//! What one released cell costs the host at release: the peak of live heap
//! bytes while `Gate::release` (or `release_benchmark`) runs, less what was
//! live before, divided by the released cells (margins included). Every
//! cell gets an entity, so every part of the tally is written.
//!
//! `cargo run --release -p kanon-gate --example release_memory`
//!
//! Prints one line per declaration: a typical table, bucket tables like the
//! reported attack, and the worst a declaration can ask for per cell (eight
//! dimensions of 256-byte labels, every statistic and summed measure the
//! spec allows, dominance over the 16 largest), in a tenant's run and in
//! benchmarks of 2 and 5 tenants (each tenant adds its own values and
//! position). Every table here releases `MAX_RELEASED_CELLS` or fewer.

// A counting allocator needs `unsafe impl GlobalAlloc`; it only forwards to
// the system allocator. Measurement only: the library stays free of unsafe.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use kanon_gate::{
    Contributions, Dimension, Domain, Dominance, Gate, IssuedEntities, Measure, Policy, ReleaseHistory,
    Scope, Statistic, TableSpec,
};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A declaration to measure.
struct Case {
    name: &'static str,
    /// Per dimension: codes and label length (0: buckets).
    dims: Vec<(usize, usize)>,
    margins: bool,
    measures: usize,
    statistics: usize,
    n: u32,
    /// Tenants, for a benchmark; 0 for a tenant's run.
    tenants: usize,
}

fn spec(case: &Case) -> TableSpec {
    let dimensions = case
        .dims
        .iter()
        .enumerate()
        .map(|(d, &(codes, length))| {
            let domain = if length == 0 {
                Domain::Buckets((0..=codes).map(|e| 1000.0 + e as f64).collect())
            } else {
                Domain::Labels((0..codes).map(|c| format!("{c:0>length$}")).collect())
            };
            Dimension { name: format!("d{d}"), domain }
        })
        .collect();
    let measures: Vec<Measure> =
        (0..case.measures).map(|m| Measure { name: format!("m{m}"), lower: 0.0, upper: 100.0 }).collect();
    let mut statistics = vec![Statistic::Count];
    statistics.extend(measures.iter().map(|m| Statistic::Sum(m.name.clone())));
    let mut more = measures.iter().cycle().map(|m| Statistic::Mean(m.name.clone()));
    while statistics.len() < case.statistics {
        statistics.push(more.next().unwrap_or(Statistic::Count));
    }
    statistics.truncate(case.statistics.max(1));
    TableSpec {
        name: "t".into(),
        description: String::new(),
        dimensions,
        measures,
        statistics,
        margins: case.margins,
    }
}

fn measure(case: &Case) {
    let spec = spec(case);
    let interior = spec.cell_count();
    let released: usize =
        spec.dimensions.iter().map(|d| d.domain.len() + usize::from(spec.margins)).product();
    let policy = Policy {
        min_entities: 2,
        dominance: Dominance { n: case.n, percent: 90.0 },
        max_cells_per_entity: 1,
        ..Policy::default()
    };
    let scope = if case.tenants > 0 { Scope::Benchmark } else { Scope::Tenant };
    let gate = Gate::new(vec![spec.clone()], policy, scope).expect("a valid table");
    let sizes: Vec<u32> = spec.dimensions.iter().map(|d| d.domain.len() as u32).collect();
    let intakes: Vec<_> = (0..case.tenants.max(1))
        .map(|tenant| {
            // One entity per interior cell.
            let mut issued = IssuedEntities::new();
            let entities: Vec<u64> = (0..interior as u64).map(|i| i << 8 | tenant as u64).collect();
            entities.iter().for_each(|&e| {
                issued.issue(e);
            });
            let mut columns = vec![Vec::with_capacity(interior); sizes.len()];
            for cell in 0..interior {
                let mut rest = cell as u32;
                for d in (0..sizes.len()).rev() {
                    columns[d].push(rest % sizes[d]);
                    rest /= sizes[d];
                }
            }
            let columns: Vec<&[u32]> = columns.iter().map(Vec::as_slice).collect();
            let values = vec![1.0; interior];
            let measures: Vec<&[f64]> = (0..case.measures).map(|_| values.as_slice()).collect();
            let mut intake = gate.intake();
            let batch = Contributions { entities: &entities, dimensions: &columns, measures: &measures };
            intake.contribute(0, &issued, &batch).expect("valid contributions");
            intake
        })
        .collect();
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let kept = if case.tenants > 0 {
        let members: Vec<u32> = (0..case.tenants as u32).collect();
        let version = gate.release_benchmark(&intakes, &members, &ReleaseHistory::default(), 1);
        LIVE.load(Ordering::Relaxed) - before + usize::from(version.positions.is_empty())
    } else {
        let release = gate.release(&intakes);
        LIVE.load(Ordering::Relaxed) - before + usize::from(release.tables.is_empty())
    };
    let peak = PEAK.load(Ordering::Relaxed) - before;
    println!(
        "{:<58} {:>8} cells  peak {:>7.1} MB  {:>6.0} B/cell  (the release itself {:>5.0} B/cell)",
        case.name,
        released,
        peak as f64 / 1e6,
        peak as f64 / released as f64,
        kept as f64 / released as f64,
    );
}

fn main() {
    let cases = [
        Case {
            name: "99 x 99, 8-byte labels, margins, 2 measures, 3 stats, n 2",
            dims: vec![(99, 8), (99, 8)],
            margins: true,
            measures: 2,
            statistics: 3,
            n: 2,
            tenants: 0,
        },
        Case {
            name: "1 dim of buckets, 2 measures, 3 stats, n 2",
            dims: vec![(1 << 15, 0)],
            margins: false,
            measures: 2,
            statistics: 3,
            n: 2,
            tenants: 0,
        },
        Case {
            name: "1 dim of buckets, 1 measure, count and sum, n 2",
            dims: vec![(1 << 15, 0)],
            margins: false,
            measures: 1,
            statistics: 2,
            n: 2,
            tenants: 0,
        },
        Case {
            name: "8 dims of 256-byte labels, 16 measures, 32 stats, n 16",
            dims: [vec![(4, 256); 7], vec![(2, 256)]].concat(),
            margins: false,
            measures: 16,
            statistics: 32,
            n: 16,
            tenants: 0,
        },
        Case {
            name: "the same, a benchmark of 2 tenants",
            dims: [vec![(4, 256); 7], vec![(2, 256)]].concat(),
            margins: false,
            measures: 16,
            statistics: 32,
            n: 16,
            tenants: 2,
        },
        Case {
            name: "the same, a benchmark of 5 tenants",
            dims: [vec![(4, 256); 7], vec![(2, 256)]].concat(),
            margins: false,
            measures: 16,
            statistics: 32,
            n: 16,
            tenants: 5,
        },
    ];
    for case in &cases {
        measure(case);
    }
}
