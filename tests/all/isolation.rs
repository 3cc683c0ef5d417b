//! Entity-isolated runs: one fresh instance per entity, each seeing only its
//! own rows. The invariant: change one entity's rows, and no other entity's
//! contribution moves. Each attack below leaks in a shared instance (the
//! test shows the leak is real) and cannot reach another entity's rows
//! when isolated.

use std::collections::BTreeMap;

use kanon_gate::{Dominance, Isolation, Policy, PolicyLayer, Privacy, Release};
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
        let plugin = load_path(kanon_fixtures::MOVES_DATA_ACROSS_ENTITIES).unwrap();
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
    let plugin = load_path(kanon_fixtures::MOVES_DATA_ACROSS_ENTITIES).unwrap();
    let rows = fleet(12, |d| 10.0 * f64::from(d));
    let mut other = rows.clone();
    other[0].2 += 100.0; // driver 1, in east
    let before = cells(&release(&plugin, trips(&rows), Isolation::Shared));
    let after = cells(&release(&plugin, trips(&other), Isolation::Shared));
    assert_ne!(before["north"], after["north"], "the leak is real in a shared instance");
}

/// Through the runtime under a DP policy: every cell of the domain is
/// released, each run with fresh noise from the operating system, and over
/// 40 runs the released values err from the honest ones as the σ the
/// release states (chi-square bounds at p = 10⁻⁶ for 200 errors).
#[test]
fn a_dp_run_releases_every_cell_with_noise_of_the_stated_scale() {
    let plugin = load_path(kanon_fixtures::MOVES_DATA_ACROSS_ENTITIES).unwrap();
    let rows = fleet(12, |d| 10.0 * f64::from(d));
    let honest = |region: &str| {
        let own: Vec<_> = rows.iter().filter(|r| r.1 == region).collect();
        let drivers: std::collections::BTreeSet<u32> = own.iter().map(|r| r.0).collect();
        (drivers.len() as f64, own.iter().map(|r| r.2).sum::<f64>())
    };
    // Isolation is what DP needs; the policy turns it on.
    let layer = PolicyLayer { privacy: Some(Privacy::Dp), ..PolicyLayer::default() };
    let policy = Policy::for_run(&open(Isolation::Shared), [], &layer).unwrap();
    assert_eq!(policy.isolation, Isolation::Entity);
    let (mut counts, mut sums, mut sigma) = (Vec::new(), Vec::new(), (0.0, 0.0));
    let mut first = None;
    for _ in 0..40 {
        let request = RunRequest { policy: policy.clone(), ..request(trips(&rows), "{}") };
        let release = runtime().run(&plugin, request).unwrap().outcome.unwrap();
        let table = &release.tables[0];
        assert_eq!(release.dp.as_ref().unwrap().rho_nanos, 24_300_000);
        assert_eq!((table.cells.len(), table.suppressed_cells), (5, 0), "west and central too");
        let sd = table.noise_sd.as_ref().unwrap();
        sigma = (sd[0].unwrap(), sd[1].unwrap());
        for cell in &table.cells {
            let values = cell.values.as_ref().unwrap();
            let (count, sum) = honest(&cell.key[0]);
            counts.push(values[0] - count);
            sums.push(values[1] - sum);
        }
        first.get_or_insert(release.tables.clone());
    }
    assert_ne!(
        first.unwrap(),
        runtime()
            .run(&plugin, RunRequest { policy, ..request(trips(&rows), "{}") })
            .unwrap()
            .outcome
            .unwrap()
            .tables,
        "fresh noise every run"
    );
    for (errors, sigma) in [(counts, sigma.0), (sums, sigma.1)] {
        let n = errors.len() as f64;
        let mean = errors.iter().sum::<f64>() / n;
        assert!(mean.abs() <= 5.0 * sigma / n.sqrt(), "mean error {mean} at σ {sigma}");
        let sd = (errors.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
        assert!((0.76..=1.26).contains(&(sd / sigma)), "s = {sd}, σ = {sigma}");
    }
}

#[test]
pub(crate) fn moves_data_across_entities() {
    // Isolated, each driver carries nothing in: the release is the honest sums.
    let plugin = load_path(kanon_fixtures::MOVES_DATA_ACROSS_ENTITIES).unwrap();
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
    let plugin = load_path(kanon_fixtures::SPELLS_WITH_COUNTS).unwrap();
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
    let plugin = load_path(kanon_fixtures::CANCELS_PAIRS).unwrap();
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

/// Differencing by params: two runs whose params leave out only the
/// target. Under thresholds both exact releases pass k and dominance, and
/// isolation does not help (each instance decides on its own rows), so
/// their difference is the target's exact fuel. Under differential privacy
/// each release draws its own noise: over 60 pairs the attacker's estimate
/// errs by about 0 on average with the spread of σ√2 (chi-square bounds at
/// p = 10⁻⁶), never by 0. (Through the daemon each release is another
/// request, charged to the tenant's budget.)
#[test]
pub(crate) fn differences_by_params() {
    let plugin = load_path(kanon_fixtures::DIFFERENCES_BY_PARAMS).unwrap();
    // 36 drivers, 12 in north; driver 36 (north) alone has more than 100
    // litres: 300 + 150.
    let rows = fleet(36, |d| if d == 36 { 300.0 } else { 10.0 + f64::from(d) });
    let target = 450.0;
    let north_sum = |policy: &Policy, above: &str| {
        let params = format!(r#"{{"leave_out_above": "{above}"}}"#);
        let request = RunRequest { policy: policy.clone(), ..request(trips(&rows), &params) };
        let release = runtime().run(&plugin, request).unwrap().outcome.unwrap();
        let sd = release.tables[0].noise_sd.as_ref().and_then(|sd| sd[1]);
        (release.tables[0].cells[0].values.as_ref().map(|v| v[1]), sd)
    };
    let exact = Policy { isolation: Isolation::Entity, ..Policy::default() };
    let (all, _) = north_sum(&exact, "inf");
    let (without, _) = north_sum(&exact, "100");
    assert_eq!(all.unwrap() - without.unwrap(), target, "exact releases give the target away");

    let layer = PolicyLayer { privacy: Some(Privacy::Dp), ..PolicyLayer::default() };
    let dp = Policy::for_run(&Policy::default(), [], &layer).unwrap();
    const PAIRS: usize = 60;
    let mut errors = Vec::with_capacity(PAIRS);
    let mut sigma = 0.0;
    for _ in 0..PAIRS {
        let ((all, sd), (without, _)) = (north_sum(&dp, "inf"), north_sum(&dp, "100"));
        sigma = sd.expect("a DP release states its σ");
        errors.push(all.unwrap() - without.unwrap() - target);
    }
    let spread = sigma * 2f64.sqrt();
    let mean = errors.iter().sum::<f64>() / PAIRS as f64;
    assert!(mean.abs() <= 5.0 * spread / (PAIRS as f64).sqrt(), "mean error {mean} at σ√2 = {spread}");
    assert!(errors.iter().all(|e| *e != 0.0 && *e != -target), "{errors:?}");
    let chi2: f64 = errors.iter().map(|e| (e / spread).powi(2)).sum();
    let df = PAIRS as f64;
    let quantile = |z: f64| df * (1.0 - 2.0 / (9.0 * df) + z * (2.0 / (9.0 * df)).sqrt()).powi(3);
    assert!((quantile(-4.89)..=quantile(4.89)).contains(&chi2), "χ² {chi2:.1} on {df} df");
}

/// One driver's instance traps: that driver is left out, and the release is
/// the one of a run without its rows. A shared run fails whole.
#[test]
pub(crate) fn traps_for_one_entity() {
    let plugin = load_path(kanon_fixtures::TRAPS_FOR_ONE_ENTITY).unwrap();
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

/// Through the daemon: a plugin that joins two datasets on the entity and
/// weighs by a reference table releases the same table isolated as shared,
/// and the release record says which mode it ran in.
#[test]
pub(crate) fn joins_on_the_entity() {
    use kanon_client::UploadArgs;
    use kanon_client::types::{Approval, JobState, NewApproval, PluginRecord, SubmitRequest};
    use kanon_daemon::Role;
    use serde_json::{Value, json};

    use crate::daemon::{TestDaemon, audit, json_body, upload_plugin};

    let d = TestDaemon::start();
    let admin = d.tenant("acme");
    let (analyst, _) = d.token(Role::Analyst, "ana", None, None);
    let regions = ["north", "east", "south"];
    let mut trips = String::from("driver_id,region,fuel_litres\n");
    let mut contracts = String::from("driver_id,contract\n");
    // 120 drivers: 40 per region, half employed (20 a cell, over k = 10);
    // two trips each.
    let mut expected: BTreeMap<(&str, &str), (f64, f64)> = BTreeMap::new();
    let factor = |region: &str| match region {
        "north" => 1.5,
        "east" => 2.0,
        _ => 1.0,
    };
    for d in 0..120 {
        let (region, contract) = (regions[d % 3], if d % 2 == 0 { "employed" } else { "freelance" });
        let fuel = 10.0 + d as f64;
        trips.push_str(&format!("D{d},{region},{fuel}\nD{d},{region},{}\n", fuel / 2.0));
        contracts.push_str(&format!("D{d},{contract}\n"));
        let cell = expected.entry((contract, region)).or_default();
        cell.0 += 1.0;
        cell.1 += 1.5 * fuel * factor(region);
    }
    let put = |name: &str, entity: Option<&str>, csv: String| {
        let upload = UploadArgs {
            format: "csv".into(),
            entity: entity.map(str::to_owned),
            reference: entity.is_none().then_some(true),
            ..UploadArgs::default()
        };
        admin.ingest("acme", name, &upload, std::io::Cursor::new(csv.into_bytes())).unwrap();
    };
    put("trips", Some("driver_id"), trips);
    put("contracts", Some("driver_id"), contracts);
    put("factors", None, "region,factor\nnorth,1.5\neast,2.0\nsouth,1.0\n".into());
    let ingested = audit(&admin, "acme");
    let reference: Vec<&Value> = ingested
        .entries
        .iter()
        .filter(|e| e.action == "dataset.ingest")
        .map(|e| &e.detail["reference"])
        .collect();
    assert_eq!(reference, [&json!(false), &json!(false), &json!(true)], "the mark is on the chain");

    let bytes = std::fs::read(kanon_fixtures::JOINS_ON_THE_ENTITY).unwrap();
    let uploaded = upload_plugin(&analyst, &bytes);
    assert_eq!(uploaded.status, 201, "{}", uploaded.text());
    let plugin: PluginRecord = uploaded.json().unwrap();
    let new_approval = |policy: Option<PolicyLayer>| NewApproval {
        ttl_secs: 3600,
        policy,
        ..NewApproval::covering(&plugin, "ana", str::to_owned)
    };
    let approval = admin.grant_approval("acme", &new_approval(None)).unwrap();
    let run_under = |approval: &Approval, policy: PolicyLayer| {
        let datasets = ["trips", "contracts", "factors"].map(|d| (d.to_owned(), d.to_owned()));
        let id = analyst
            .submit_job(&SubmitRequest {
                tenant: "acme".into(),
                plugin: plugin.hash.clone(),
                approval: approval.id.clone(),
                datasets: datasets.into(),
                params: None,
                policy: Some(policy),
            })
            .unwrap()
            .id;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let job = analyst.job(&id).unwrap();
            if job.state == JobState::Succeeded {
                return analyst.job_results(&id).unwrap();
            }
            assert!([JobState::Queued, JobState::Running].contains(&job.state), "{job:?}");
            assert!(std::time::Instant::now() < deadline, "{job:?}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let entity = PolicyLayer { isolation: Some(Isolation::Entity), ..PolicyLayer::default() };
    let run = |policy: PolicyLayer| run_under(&approval, policy);
    let shared = run(PolicyLayer::default());
    let isolated = run(entity.clone());
    assert_eq!(shared.tables, isolated.tables, "the join is the same in both modes");
    assert_eq!(isolated.policy.isolation, Isolation::Entity);
    for cell in &isolated.tables[0].cells {
        let key = (cell.key[0].as_str(), cell.key[1].as_str());
        let (count, sum) = expected[&key];
        let values = cell.values.as_ref().unwrap_or_else(|| panic!("{key:?} suppressed: {isolated:?}"));
        assert_eq!(values[0], count, "{key:?}");
        assert!((values[1] - sum).abs() < 1e-6, "{key:?}: {values:?} vs {sum}");
    }

    // A tenant can approve the plugin for isolated runs only: a job that asks
    // for nothing more runs isolated, and a looser approval is refused.
    let grant = |policy: PolicyLayer| {
        let body = json_body(&new_approval(Some(policy)));
        admin.raw("POST", "/v1/tenants/acme/approvals", Some(("application/json", &body))).unwrap()
    };
    let strict = grant(entity);
    assert_eq!(strict.status, 201, "{}", strict.text());
    let strict: Approval = strict.json().unwrap();
    assert_eq!(run_under(&strict, PolicyLayer::default()).policy.isolation, Isolation::Entity);
    let loose = grant(PolicyLayer { min_entities: Some(2), ..PolicyLayer::default() });
    assert_eq!(loose.status, 422, "looser than the floor: {}", loose.text());

    // An approval may require differential privacy (its job then runs
    // isolated and noised, charged to the tenant's budget), but it cannot
    // set the budget, which is the tenant's.
    let dp = PolicyLayer { privacy: Some(Privacy::Dp), ..PolicyLayer::default() };
    let dp_approval = grant(dp.clone());
    assert_eq!(dp_approval.status, 201, "{}", dp_approval.text());
    let dp_approval: Approval = dp_approval.json().unwrap();
    let noised = run_under(&dp_approval, PolicyLayer::default());
    assert_eq!((noised.policy.privacy, noised.policy.isolation), (Privacy::Dp, Isolation::Entity));
    assert!(noised.dp.is_some() && noised.tables[0].noise_sd.is_some(), "{noised:?}");
    let budget = r#"{"dp": {"budget_rho": 1.0}}"#;
    let sub_budget = grant(serde_json::from_str(budget).unwrap());
    assert_eq!(sub_budget.status, 422, "{}", sub_budget.text());
    assert!(sub_budget.text().contains("are the tenant's"), "{}", sub_budget.text());
}

/// Every hostile fixture that passes upload, run isolated over two datasets
/// that differ only in one driver's fuel: whatever the fixture does (loop,
/// sleep, trap, forge, flood, carry state, subtract), the run's outcome is
/// the same for both, and at most the two cells that driver can reach (one
/// under each dataset; an entity counts in one cell of a table) differ,
/// totals aside. What isolation claims holds for each attack, not only for
/// the ones written against it.
#[test]
fn every_hostile_fixture_isolated_leaves_the_other_entities_cells_alone() {
    let fixtures = [
        kanon_fixtures::CANCELS_PAIRS,
        kanon_fixtures::CARRIES_STATE,
        kanon_fixtures::CODE_OUTSIDE_DOMAIN,
        kanon_fixtures::DIFFERENCES_BY_PARAMS,
        kanon_fixtures::ERROR_WITH_DATA,
        kanon_fixtures::FLIPS_A_COIN,
        kanon_fixtures::FLOODS_HOST,
        kanon_fixtures::FORGES_PSEUDONYM,
        kanon_fixtures::GROWS_MEMORY,
        kanon_fixtures::HOARDS_SCANS,
        kanon_fixtures::LOOPS_FOREVER,
        kanon_fixtures::LOOPS_IN_HOST_CALLS,
        kanon_fixtures::MOVES_DATA_ACROSS_ENTITIES,
        kanon_fixtures::PADS_WITH_ZEROS,
        kanon_fixtures::PANICS_WITH_DATA,
        kanon_fixtures::READS_ENV,
        kanon_fixtures::SINGLES_OUT_A_TENANT,
        kanon_fixtures::SLEEPS_FOREVER,
        kanon_fixtures::SPELLS_WITH_COUNTS,
        kanon_fixtures::SPREADS_ONE_ENTITY,
        kanon_fixtures::SUBTRACTS_MARGINS,
        kanon_fixtures::TRAPS_FOR_ONE_ENTITY,
        kanon_fixtures::UNDECLARED_DATASET,
        kanon_fixtures::UNDECLARED_TABLE,
    ];
    // Driver 1 is in east (`fleet` puts driver d in region d % 3).
    let rows = fleet(24, |d| 10.0 + f64::from(d));
    let mut other = rows.clone();
    for row in other.iter_mut().filter(|r| r.0 == 1) {
        row.2 += 37.0;
    }
    for path in fixtures {
        let plugin = load_path(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let before = run(&plugin, trips(&rows), Isolation::Entity).outcome;
        let after = run(&plugin, trips(&other), Isolation::Entity).outcome;
        match (before, after) {
            (Ok(before), Ok(after)) => {
                for (b, a) in before.tables.iter().zip(&after.tables) {
                    let moved: Vec<&Vec<String>> = b
                        .cells
                        .iter()
                        .zip(&a.cells)
                        .filter(|(b, a)| !b.key.iter().any(|k| k == kanon_gate::TOTAL_LABEL) && b != a)
                        .map(|(b, _)| &b.key)
                        .collect();
                    assert!(moved.len() <= 2, "{path}: {moved:?} moved with one driver's rows");
                }
            }
            (Err(before), Err(after)) => assert_eq!(before.class, after.class, "{path}"),
            (before, after) => {
                panic!("{path}: one driver's rows changed the outcome: {before:?} vs {after:?}")
            }
        }
    }
}

/// Every hostile fixture that releases anything, under differential
/// privacy: whatever it does (cancelling pairs, padding, subtracting
/// margins, spelling with counts, moving data, singling out), every count
/// and sum of every cell it releases carries independent noise of the σ the
/// release states, so one release tells an attacker its target's value
/// only to within that noise, never exactly. Over 30 releases of each,
/// each value's spread around its cell's mean, pooled over cells and
/// quantities, is the stated σ (chi-square bounds at p = 10⁻⁶, for each
/// fixture and for all together).
#[test]
fn every_hostile_fixture_under_dp_releases_every_value_with_the_stated_noise() {
    let fixtures = [
        kanon_fixtures::CANCELS_PAIRS,
        kanon_fixtures::CARRIES_STATE,
        kanon_fixtures::DIFFERENCES_BY_PARAMS,
        kanon_fixtures::FLIPS_A_COIN,
        kanon_fixtures::MOVES_DATA_ACROSS_ENTITIES,
        kanon_fixtures::PADS_WITH_ZEROS,
        kanon_fixtures::SINGLES_OUT_A_TENANT,
        kanon_fixtures::SPELLS_WITH_COUNTS,
        kanon_fixtures::SPREADS_ONE_ENTITY,
        kanon_fixtures::SUBTRACTS_MARGINS,
        kanon_fixtures::TRAPS_FOR_ONE_ENTITY,
    ];
    const RUNS: usize = 30;
    let rows = fleet(24, |d| 10.0 + f64::from(d));
    let layer = PolicyLayer { privacy: Some(Privacy::Dp), ..PolicyLayer::default() };
    let policy = Policy::for_run(&open(Isolation::Shared), [], &layer).unwrap();
    // Wilson–Hilferty quantiles of the chi-square on `df` at z = ±4.89.
    let within = |chi2: f64, df: f64| {
        let quantile = |z: f64| df * (1.0 - 2.0 / (9.0 * df) + z * (2.0 / (9.0 * df)).sqrt()).powi(3);
        (quantile(-4.89)..=quantile(4.89)).contains(&chi2)
    };
    let (mut all_chi2, mut all_df) = (0.0, 0.0);
    for path in fixtures {
        let plugin = load_path(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // Per (table, cell, statistic) with a noise σ: the released values.
        let mut values: BTreeMap<(usize, usize, usize), (f64, Vec<f64>)> = BTreeMap::new();
        for _ in 0..RUNS {
            let report =
                runtime().run(&plugin, RunRequest { policy: policy.clone(), ..request(trips(&rows), "{}") });
            let release = report.unwrap().outcome.unwrap_or_else(|f| panic!("{path}: {f}"));
            assert!(release.dp.is_some(), "{path}");
            for (t, table) in release.tables.iter().enumerate() {
                assert_eq!(table.suppressed_cells, 0, "{path}");
                let sd = table.noise_sd.as_ref().unwrap_or_else(|| panic!("{path}: no σ"));
                for (c, cell) in table.cells.iter().enumerate() {
                    let released = cell.values.as_ref().unwrap_or_else(|| panic!("{path}: {cell:?}"));
                    for (s, (&value, sigma)) in released.iter().zip(sd).enumerate() {
                        if let Some(sigma) = *sigma {
                            values.entry((t, c, s)).or_insert((sigma, Vec::new())).1.push(value);
                        }
                    }
                }
            }
        }
        assert!(!values.is_empty(), "{path}: nothing noised");
        // Σ over cells of Σ (x − x̄)² / σ², a chi-square on cells × (RUNS − 1) df.
        let (mut chi2, mut df) = (0.0, 0.0);
        for (sigma, released) in values.values() {
            assert_eq!(released.len(), RUNS, "{path}: every run releases every cell");
            let mean = released.iter().sum::<f64>() / RUNS as f64;
            chi2 += released.iter().map(|x| ((x - mean) / sigma).powi(2)).sum::<f64>();
            df += (RUNS - 1) as f64;
        }
        assert!(within(chi2, df), "{path}: the spread is not the stated σ: χ² {chi2:.0} on {df} df");
        (all_chi2, all_df) = (all_chi2 + chi2, all_df + df);
    }
    // Together, finer: a σ 10 % off fails.
    assert!(within(all_chi2, all_df), "the spread is not the stated σ: χ² {all_chi2:.0} on {all_df} df");
}
