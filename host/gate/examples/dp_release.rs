//! What a differentially private release costs and how wide its noise is.
//!
//! 1. Sampling: `Gate::release_dp` over an empty intake of one table of
//!    `cells` cells, counts only (σ = z, a few units) and sums only (σ = z
//!    times a bound of 2⁴⁰ in fixed point), with ChaCha20 seeded from the
//!    operating system as the runtime does: noised values per second.
//! 2. Width: for the emissions plugin's table shape (2-D with margins, a
//!    count and two sums) at ε = 1 (ρ = 0.0243), the 95 % half-width of a
//!    count and of a sum whose entities contribute `mean` each, relative to
//!    the true value, for cells of 100, 1 000 and 10 000 entities.
//!
//! `cargo run --release -p kanon-gate --example dp_release -- [cells] [bound] [mean per entity]`

use std::time::Instant;

use kanon_gate::{Dimension, Domain, Gate, Isolation, Measure, Policy, Privacy, Scope, Statistic, TableSpec};
use rand_010::SeedableRng;
use rand_010::rngs::{ChaCha20Rng, SysRng};

fn table(dimensions: Vec<usize>, margins: bool, statistics: Vec<Statistic>, upper: f64) -> TableSpec {
    TableSpec {
        name: "t".into(),
        description: String::new(),
        dimensions: dimensions
            .into_iter()
            .enumerate()
            .map(|(d, n)| Dimension {
                name: format!("d{d}"),
                domain: Domain::Labels((0..n).map(|i| format!("v{i}")).collect()),
            })
            .collect(),
        measures: vec![
            Measure { name: "x".into(), lower: 0.0, upper },
            Measure { name: "y".into(), lower: 0.0, upper },
        ],
        statistics,
        margins,
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let cells: usize = args.next().map_or(20_000, |a| a.parse().expect("cells"));
    let bound: f64 = args.next().map_or(2e6, |a| a.parse().expect("bound"));
    let mean: f64 = args.next().map_or(bound / 10.0, |a| a.parse().expect("mean"));
    // ρ = 0.0243, the default: ε = 1 at δ = 10⁻⁶.
    let dp = Policy { privacy: Privacy::Dp, isolation: Isolation::Entity, ..Policy::default() };

    for (name, statistic) in [("counts", Statistic::Count), ("sums", Statistic::Sum("x".into()))] {
        let gate =
            Gate::new(vec![table(vec![cells], false, vec![statistic], bound)], dp.clone(), Scope::Tenant)
                .expect("a valid table");
        let intake = gate.intake();
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let mut rng = ChaCha20Rng::try_from_rng(&mut SysRng).expect("the OS generator");
            let started = Instant::now();
            let release = gate.release_dp(std::slice::from_ref(&intake), &mut rng).expect("a DP gate");
            best = best.min(started.elapsed().as_secs_f64());
            assert_eq!(release.tables[0].cells.len(), cells);
        }
        println!(
            "sampling {name}: {cells} values in {:.1} ms, {:.0} values/s",
            best * 1e3,
            cells as f64 / best
        );
    }

    // The emissions plugin's shape: vehicle class (4) × region (5) with
    // margins; count, a sum and a ratio of two sums.
    let statistics =
        vec![Statistic::Count, Statistic::Sum("x".into()), Statistic::Ratio("x".into(), "y".into())];
    let gate = Gate::new(vec![table(vec![4, 5], true, statistics, bound)], dp, Scope::Tenant)
        .expect("a valid table");
    let plan = gate.dp_plan().expect("a DP gate");
    let eps = kanon_gate::dp::epsilon(plan.rho_spent(), 1e-6);
    println!(
        "\nemissions shape at rho = 0.0243 (epsilon {eps:.3} at delta 1e-6): W = {}, z = {:.2}",
        plan.weight,
        plan.noise_multiplier()
    );
    let count_sd = plan.groups[0].sigma();
    let sum_sd = plan.groups[1].sigma();
    println!("count sd {count_sd:.2}; sum sd {sum_sd:.4e} (bound {bound:e}, mean per entity {mean:e})");
    println!("{:>10}  {:>22}  {:>22}", "entities", "count: 95 % half-width", "sum: 95 % half-width");
    for n in [100.0, 1_000.0, 10_000.0] {
        // 95 % of a discrete Gaussian this wide is 1.96 σ to a unit.
        let (wc, ws) = (1.959_964 * count_sd, 1.959_964 * sum_sd);
        println!("{n:>10.0}  {:>21.2}%  {:>21.2}%", 100.0 * wc / n, 100.0 * ws / (n * mean));
    }
}
