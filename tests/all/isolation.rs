//! Entity-isolated runs: one fresh instance per entity, each seeing only its
//! own rows. The invariant: change one entity's rows, and no other entity's
//! contribution moves. Each attack below leaks in a shared instance (the
//! test shows the leak is real) and cannot reach another entity's rows
//! when isolated.

use std::collections::BTreeMap;

use kanon_gate::{Dominance, Isolation, Policy, Release};
use kanon_runtime::{FailureClass, LoadedPlugin, RunReport, RunRequest};
use kanon_vault::DatasetVersion;
use proptest::prelude::*;

use kanon_tests::{load_path, request, runtime, table};

/// Policies that release nearly everything, so what a plugin moves between
/// entities shows: k = 2, no dominance rule.
fn open(isolation: Isolation) -> Policy {
    Policy { min_entities: 2, dominance: Dominance { n: 1, percent: 100.0 }, isolation, ..Policy::default() }
}

/// Trips as `(driver, region, fuel)` rows.
fn trips(rows: &[(u32, &str, f64)]) -> BTreeMap<String, DatasetVersion> {
    let mut csv = String::from("driver_id,region,fuel_litres\n");
    for (driver, region, fuel) in rows {
        csv.push_str(&format!("D{driver:03},{region},{fuel}\n"));
    }
    [("trips".to_owned(), table("trips", &csv, "driver_id"))].into()
}

fn run(plugin: &LoadedPlugin, datasets: BTreeMap<String, DatasetVersion>, isolation: Isolation) -> RunReport {
    let request = RunRequest { policy: open(isolation), ..request(datasets, "{}") };
    runtime().run(plugin, request).expect("the request fits the plugin")
}

fn release(
    plugin: &LoadedPlugin,
    datasets: BTreeMap<String, DatasetVersion>,
    isolation: Isolation,
) -> Release {
    let report = run(plugin, datasets, isolation);
    report.outcome.unwrap_or_else(|f| panic!("{f}: {:?}", report.owner_log))
}

/// The released cells of the one table, by region: `[count, sum]` or `None`.
fn cells(release: &Release) -> BTreeMap<String, Option<Vec<f64>>> {
    release.tables[0].cells.iter().map(|c| (c.key[0].clone(), c.values.clone())).collect()
}

/// `rows` for drivers 1..=n spread over north, east and south, two trips each.
fn fleet(n: u32, fuel: impl Fn(u32) -> f64) -> Vec<(u32, &'static str, f64)> {
    let regions = ["north", "east", "south"];
    (1..=n)
        .flat_map(|d| [(d, regions[d as usize % 3], fuel(d)), (d, regions[d as usize % 3], fuel(d) / 2.0)])
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Two datasets that differ only in one driver's rows: in an isolated
    /// run, every cell without that driver is released identically, and the
    /// driver's own cell moves by exactly its own change. The fixture tries
    /// every channel an instance has to carry data from one driver to the
    /// next.
    #[test]
    fn changing_one_entitys_rows_moves_no_other_entitys_contribution(
        fuels in prop::collection::vec(1.0f64..300.0, 8..24),
        target in 0usize..8,
        changed in prop::collection::vec(1.0f64..300.0, 0..4),
    ) {
        let plugin = load_path(kanon_artifacts::MOVES_DATA_ACROSS_ENTITIES).unwrap();
        let regions = ["north", "east", "south"];
        let rows: Vec<(u32, &str, f64)> =
            fuels.iter().enumerate().map(|(i, &f)| (i as u32 + 1, regions[i % 3], f)).collect();
        let target = target as u32 + 1;
        let target_region = regions[(target as usize - 1) % 3];
        // D': the target's rows replaced (fewer, more or other values).
        let mut other: Vec<(u32, &str, f64)> = rows.iter().copied().filter(|r| r.0 != target).collect();
        other.extend(changed.iter().map(|&f| (target, target_region, f)));

        let before = cells(&release(&plugin, trips(&rows), Isolation::Entity));
        let after = cells(&release(&plugin, trips(&other), Isolation::Entity));
        for region in regions.iter().filter(|r| **r != target_region) {
            prop_assert_eq!(&before[*region], &after[*region], "{} moved", region);
        }
        if let (Some(b), Some(a)) = (&before[target_region], &after[target_region]) {
            let own = |rows: &[(u32, &str, f64)]| rows.iter().filter(|r| r.0 == target).map(|r| r.2).sum::<f64>();
            let moved = a[1] - b[1];
            prop_assert!((moved - (own(&other) - own(&rows))).abs() < 1e-6, "moved {} ≠ own change", moved);
        }
    }
}

/// The same fixture in a shared instance: one driver's rows move other
/// drivers' contributions, so the property above is not vacuous.
#[test]
fn in_a_shared_instance_one_entitys_rows_move_the_others() {
    let plugin = load_path(kanon_artifacts::MOVES_DATA_ACROSS_ENTITIES).unwrap();
    let rows = fleet(12, |d| 10.0 * f64::from(d));
    let mut other = rows.clone();
    other[0].2 += 100.0; // driver 1, in east
    let before = cells(&release(&plugin, trips(&rows), Isolation::Shared));
    let after = cells(&release(&plugin, trips(&other), Isolation::Shared));
    assert_ne!(before["north"], after["north"], "the leak is real in a shared instance");
}

#[test]
pub(crate) fn moves_data_across_entities() {
    // Isolated, each driver carries nothing in: the release is the honest sums.
    let plugin = load_path(kanon_artifacts::MOVES_DATA_ACROSS_ENTITIES).unwrap();
    let rows = fleet(12, |d| 10.0 * f64::from(d));
    let released = cells(&release(&plugin, trips(&rows), Isolation::Entity));
    let honest = |region: &str| rows.iter().filter(|r| r.1 == region).map(|r| r.2).sum::<f64>();
    for region in ["north", "east", "south"] {
        let values = released[region].as_ref().unwrap();
        assert_eq!(values[0], 4.0, "{region}: four drivers");
        assert!((values[1] - honest(region)).abs() < 1e-6, "{region}: {values:?}");
    }
}

#[test]
pub(crate) fn spells_with_counts() {
    let plugin = load_path(kanon_artifacts::SPELLS_WITH_COUNTS).unwrap();
    // The target is driver 1 (first seen), with 17 + 8.5 litres.
    let rows = fleet(30, |d| if d == 1 { 17.0 } else { 5.0 });
    let shared = cells(&release(&plugin, trips(&rows), Isolation::Shared));
    assert_eq!(shared["north"].as_ref().unwrap()[0], 25.0, "a count spells the target's fuel when shared");
    // Isolated: every driver is its own instance's first; the counts say
    // nothing of anyone's fuel, whatever the target's is.
    let mut other = rows.clone();
    other[0].2 = 33.0;
    let before = cells(&release(&plugin, trips(&rows), Isolation::Entity));
    let after = cells(&release(&plugin, trips(&other), Isolation::Entity));
    assert_eq!(before, after);
    assert_eq!(before["east"].as_ref().unwrap()[0], 30.0);
}

#[test]
pub(crate) fn cancels_pairs() {
    let plugin = load_path(kanon_artifacts::CANCELS_PAIRS).unwrap();
    // Driver 1 (the target, first seen) has 42 litres; 21 drivers in all,
    // so the 20 others cancel in pairs.
    let rows: Vec<(u32, &str, f64)> =
        (1..=21).map(|d| (d, "north", if d == 1 { 42.0 } else { 7.0 })).collect();
    // Under the default policy: k = 10, dominance (2, 90%) on magnitudes.
    let default = |isolation| {
        let request =
            RunRequest { policy: Policy { isolation, ..Policy::default() }, ..request(trips(&rows), "{}") };
        cells(&runtime().run(&plugin, request).unwrap().outcome.unwrap())
    };
    let shared = default(Isolation::Shared);
    assert_eq!(shared["north"].as_ref().unwrap()[1], 42.0, "dominance passed, the sum is the target's");
    let isolated = default(Isolation::Entity);
    assert_eq!(isolated["north"].as_ref().unwrap()[1], 42.0 + 20.0 * 7.0, "each contributes its own fuel");
}

/// One driver's instance traps: that driver is left out, and the release is
/// the one of a run without its rows. A shared run fails whole.
#[test]
pub(crate) fn traps_for_one_entity() {
    let plugin = load_path(kanon_artifacts::TRAPS_FOR_ONE_ENTITY).unwrap();
    let rows = fleet(12, |d| if d == 5 { 180.0 } else { 20.0 });
    let without: Vec<_> = rows.iter().copied().filter(|r| r.0 != 5).collect();

    let shared = run(&plugin, trips(&rows), Isolation::Shared);
    assert_eq!(shared.outcome.unwrap_err().class, FailureClass::Trap);

    let isolated = run(&plugin, trips(&rows), Isolation::Entity);
    let clean = run(&plugin, trips(&without), Isolation::Entity);
    assert_eq!(isolated.outcome.clone().unwrap(), clean.outcome.clone().unwrap());
    assert_eq!(isolated.owner_log.entity_failures, [(FailureClass::Trap, 1)].into());
    assert_eq!(isolated.owner_log.failure, None);
    assert!(isolated.owner_log.error.as_deref().unwrap().contains("(trap)"), "{:?}", isolated.owner_log);
    assert!(isolated.owner_log.stderr.contains("more than 100 litres"), "{:?}", isolated.owner_log);
    assert_eq!((isolated.stats.entities_run, isolated.stats.entities_failed), (12, 1));
    assert_eq!((clean.stats.entities_run, clean.stats.entities_failed), (11, 0));
}
