//! Realistic synthetic data for the demo and the benchmarks: trips of a
//! carrier's drivers, and an employer's HR records. Deterministic per seed.

use std::io::{self, Write};

use emissions_benchmark::kernel::{REGIONS, VEHICLE_CLASSES};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Pick an index with the given weights.
fn weighted(rng: &mut SmallRng, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut x = rng.random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.len() - 1
}

/// A (low, high) range.
type Range = (f64, f64);

/// Per vehicle class: (km range, tonnes range, litres per 100 km range).
const CLASS_PROFILE: [(Range, Range, Range); 4] = [
    ((20.0, 150.0), (0.3, 1.5), (9.0, 12.0)),
    ((50.0, 300.0), (2.0, 10.0), (22.0, 30.0)),
    ((100.0, 700.0), (8.0, 26.0), (30.0, 38.0)),
    ((80.0, 500.0), (4.0, 18.0), (32.0, 40.0)),
];

/// `rows` trips by `drivers` drivers; each driver keeps one vehicle class and
/// home region, and a few class-region pairs have too few drivers to release.
pub fn trips(out: &mut impl Write, rows: usize, drivers: usize, seed: u64) -> io::Result<()> {
    carrier_trips(out, rows, drivers, seed, 1.0)
}

/// [`trips`] of a carrier whose fleet burns `thirst` times the usual fuel:
/// carriers of a benchmark differ.
pub fn carrier_trips(
    out: &mut impl Write,
    rows: usize,
    drivers: usize,
    seed: u64,
    thirst: f64,
) -> io::Result<()> {
    let fleet = thirst;
    let mut rng = SmallRng::seed_from_u64(seed);
    let profile: Vec<(usize, usize, f64)> = (0..drivers)
        .map(|_| {
            let class = weighted(&mut rng, &[0.35, 0.30, 0.30, 0.05]);
            let region = weighted(&mut rng, &[0.25, 0.20, 0.25, 0.25, 0.05]);
            (class, region, rng.random_range(0.9..1.15))
        })
        .collect();
    writeln!(out, "trip_id,driver_id,vehicle_class,region,distance_km,load_tonnes,fuel_litres")?;
    for trip in 0..rows {
        let driver = rng.random_range(0..drivers);
        let (class, region, thirst) = profile[driver];
        let ((km_lo, km_hi), (t_lo, t_hi), (l_lo, l_hi)) = CLASS_PROFILE[class];
        let km: f64 = rng.random_range(km_lo..km_hi);
        let tonnes: f64 = rng.random_range(t_lo..t_hi);
        let litres = km * rng.random_range(l_lo..l_hi) / 100.0 * thirst * fleet * (1.0 + 0.01 * tonnes);
        writeln!(
            out,
            "T{trip:08},D{driver:05},{},{},{km:.1},{tonnes:.2},{litres:.2}",
            VEHICLE_CLASSES[class], REGIONS[region]
        )?;
    }
    Ok(())
}

/// Departments of the HR data, as the absence-rate plugin declares them.
const DEPARTMENTS: [(&str, f64); 6] = [
    ("finance", 0.01),
    ("it", 0.12),
    ("logistics", 0.30),
    ("operations", 0.28),
    ("sales", 0.15),
    ("support", 0.10),
];

/// One HR record per employee.
pub fn employees(out: &mut impl Write, rows: usize, seed: u64) -> io::Result<()> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let weights: Vec<f64> = DEPARTMENTS.iter().map(|d| d.1).collect();
    writeln!(out, "employee_id,department,age,contract_hours,sick_hours,manager_id")?;
    for e in 0..rows {
        let department = DEPARTMENTS[weighted(&mut rng, &weights)].0;
        let age = rng.random_range(18..67);
        let contract: f64 = [1872.0, 1664.0, 1248.0, 832.0][weighted(&mut rng, &[0.6, 0.2, 0.15, 0.05])];
        // Most take a few days; some are out for weeks.
        let days = if rng.random::<f64>() < 0.06 {
            rng.random_range(15.0..120.0)
        } else {
            rng.random_range(0.0..9.0)
        };
        let sick = (days * contract / 260.0 * (1.0 + (age as f64 - 40.0) / 200.0)).min(contract);
        let manager = rng.random_range(0..rows.div_ceil(12).max(1));
        writeln!(out, "E{e:06},{department},{age},{contract:.0},{sick:.1},E{manager:06}")?;
    }
    Ok(())
}
