//! The bundled plugins end to end, and requests that do not fit a plugin.

use kanon_gate::Policy;
use kanon_runtime::{DataMismatch, ParamsError, PluginColumnType, RunError};
use kanon_tests::{request, run_on_trips, runtime, table, trips, trips_csv};

fn emissions() -> kanon_runtime::LoadedPlugin {
    runtime().load(kanon_bundled::EMISSIONS_BENCHMARK).expect("bundled plugin loads")
}

#[test]
fn emissions_releases_only_cells_with_k_drivers() {
    let report = run_on_trips(&emissions());
    let release = report.outcome.expect("released");
    let table = &release.tables[0];
    assert_eq!(table.name, "co2_intensity");
    assert_eq!(table.statistics, ["count", "sum(co2_kg)", "ratio(co2_kg/tonne_km)"]);
    assert_eq!(table.cells.len(), 5 * 6, "every cell of the domain appears, and the totals");
    let cell = |class: &str, region: &str| {
        table.cells.iter().find(|c| c.key == [class, region]).unwrap_or_else(|| panic!("{class} {region}"))
    };
    // 20 drivers x 3 trips of 100, 110, 120 km, 5 t, 0.25 l/km.
    let north = cell("rigid", "east").values.clone().expect("20 drivers: released");
    assert_eq!(north[0], 20.0);
    let litres = 20.0 * (100.0 + 110.0 + 120.0) * 0.25;
    // Fixed-point sums: each contribution is exact to 2^-40 of its
    // measure's bound (2e6 kg CO2), so 20 of them to 20 * 2e6 * 2^-40.
    let tolerance = 20.0 * 2.0e6 * 2f64.powi(-40);
    assert!((north[1] - litres * 2.68).abs() <= tolerance, "{}", north[1]);
    let ratio = litres * 2.68 / (20.0 * 330.0 * 5.0);
    assert!((north[2] / ratio - 1.0).abs() <= 1e-8, "{}", north[2]);
    assert_eq!(cell("rigid", "west").values, None, "4 drivers: suppressed");
    assert_eq!(cell("van", "north").values, None, "no drivers: suppressed, same as small");
    // Totals: rigid over all regions and the grand total hold all 64; the
    // region totals equal the rigid cells.
    assert_eq!(cell("rigid", "*").values.as_ref().map(|v| v[0]), Some(64.0));
    assert_eq!(cell("*", "*").values.as_ref().map(|v| v[0]), Some(64.0));
    assert_eq!(cell("*", "east").values.as_ref().map(|v| v[0]), Some(20.0));
    assert_eq!(cell("*", "west").values, None);
    // The rigid total minus north, east and south would give west away,
    // central being empty (an empty cell hides nothing): north goes too.
    assert_eq!(cell("rigid", "north").values, None);
    assert_eq!(cell("*", "north").values, None);
    assert_eq!(table.suppressed_cells, 30 - 6);
    assert_eq!(report.stats.entities_issued, 64);
    assert_eq!(report.stats.contributions, 64);
    assert!(report.owner_log.error.is_none() && report.owner_log.refusals.is_empty());
}

#[test]
fn a_stricter_k_suppresses_more() {
    let plugin = emissions();
    let mut req = request(trips(), "{}");
    req.policy = Policy { min_entities: 21, ..Policy::default() };
    let release = runtime().run(&plugin, req).unwrap().outcome.unwrap();
    // Only the rigid total and the grand total (64 drivers) remain.
    assert_eq!(release.tables[0].suppressed_cells, 30 - 2);
}

#[test]
fn params_are_checked_before_the_plugin_runs() {
    let plugin = emissions();
    let run = |params: &str| runtime().run(&plugin, request(trips(), params)).map(|_| ());
    assert_eq!(
        run(r#"{"kg_co2_per_litre": "lots"}"#).unwrap_err(),
        RunError::Params(ParamsError::WrongType {
            name: "kg_co2_per_litre".into(),
            expected: kanon_runtime::ParamType::Float,
        })
    );
    assert_eq!(run(r#"{"secret": 1}"#).unwrap_err(), RunError::Params(ParamsError::Unknown("secret".into())));
    assert!(matches!(run("not json").unwrap_err(), RunError::Params(ParamsError::NotAnObject(_))));
    // A value the plugin itself rejects fails as a plugin error.
    let report = runtime().run(&plugin, request(trips(), r#"{"kg_co2_per_litre": -1}"#)).unwrap();
    assert_eq!(report.outcome.unwrap_err().class, kanon_runtime::FailureClass::PluginError);
}

#[test]
fn data_that_does_not_fit_the_manifest_is_refused() {
    let plugin = emissions();
    let run = |datasets| runtime().run(&plugin, request(datasets, "{}")).map(|_| ());
    assert_eq!(
        run(Default::default()).unwrap_err(),
        RunError::Data(DataMismatch::MissingDataset("trips".into()))
    );

    let without_fuel = trips_csv().replace("fuel_litres", "fuel");
    let datasets = [("trips".to_owned(), table("trips", &without_fuel, "driver_id"))].into();
    assert_eq!(
        run(datasets).unwrap_err(),
        RunError::Data(DataMismatch::MissingColumn { dataset: "trips".into(), column: "fuel_litres".into() })
    );

    // The wrong column classified as the entity: the driver would reach the
    // plugin in clear, so the run is refused.
    let datasets = [("trips".to_owned(), table("trips", &trips_csv(), "region"))].into();
    let err = run(datasets).unwrap_err();
    assert_eq!(
        err,
        RunError::Data(DataMismatch::WrongType {
            dataset: "trips".into(),
            column: "driver_id".into(),
            expected: PluginColumnType::Pseudonym,
            found: PluginColumnType::Text,
        })
    );
}

#[test]
fn ints_widen_to_floats_the_plugin_declared() {
    let whole_km = trips_csv().replace(".0,", ",");
    assert!(whole_km.contains(",100,5,"), "distance and load are whole numbers now");
    let datasets = [("trips".to_owned(), table("trips", &whole_km, "driver_id"))].into();
    let release = runtime().run(&emissions(), request(datasets, "{}")).unwrap().outcome.unwrap();
    let direct = run_on_trips(&emissions()).outcome.unwrap();
    assert_eq!(release.tables, direct.tables);
}

#[test]
fn absence_rate_reads_nulls_and_buckets() {
    let mut csv = String::from("employee_id,department,age,contract_hours,sick_hours\n");
    for e in 0..30 {
        let sick = if e == 0 { String::new() } else { format!("{}", e * 2) };
        csv.push_str(&format!("E{e},logistics,{},1600,{sick}\n", 30 + e % 5));
    }
    let datasets = [("employees".to_owned(), table("employees", &csv, "employee_id"))].into();
    let plugin = runtime().load(kanon_bundled::ABSENCE_RATE).unwrap();
    let release = runtime().run(&plugin, request(datasets, "{}")).unwrap().outcome.unwrap();
    let table = &release.tables[0];
    let cell = table.cells.iter().find(|c| c.key == ["logistics", "[25, 35)"]).unwrap();
    // 29 employees (the null one is skipped), aged 30-34.
    let values = cell.values.as_ref().expect("29 employees");
    assert_eq!(values[0], 29.0);
    assert_eq!(values[1], (1..30).map(|e| f64::from(e * 2)).sum::<f64>() / 29.0);
    // The cell, its row and column totals and the grand total: all the same 29.
    assert_eq!(table.suppressed_cells, table.cells.len() - 4);
    for key in [["logistics", "*"], ["*", "[25, 35)"], ["*", "*"]] {
        let total = table.cells.iter().find(|c| c.key == key).unwrap();
        assert_eq!(total.values.as_ref().map(|v| v[0]), Some(29.0), "{key:?}");
    }
}

#[test]
fn a_benchmark_merges_tenants_under_the_tenant_rules() {
    let plugin = emissions();
    let cell = |report: &kanon_runtime::BenchmarkReport, key: [&str; 2]| {
        let release = report.outcome.as_ref().expect("released");
        release.tables[0].cells.iter().find(|c| c.key == key).unwrap().values.clone()
    };
    // Five even tenants of 40 drivers: every region of `rigid` has 40
    // drivers from five tenants.
    let even: Vec<String> = (0..5).map(|_| kanon_tests::fleet_csv(40, 1.0)).collect();
    let report = kanon_tests::run_benchmark(&plugin, &even);
    assert_eq!(cell(&report, ["rigid", "north"]).map(|v| v[0]), Some(40.0));
    assert_eq!(report.tenants.len(), 5);
    assert!(report.tenants.iter().all(|(_, log, stats)| log.error.is_none() && stats.entities_issued == 40));
    let record = report.record().unwrap();
    assert_eq!(record.scope, kanon_gate::Scope::Benchmark);

    // No tenant at all: refused before anything runs.
    let none = kanon_runtime::BenchmarkRequest {
        run_id: "empty".into(),
        tenants: Vec::new(),
        params: "{}".into(),
        policy: Policy::default(),
        history: Default::default(),
        version: 1,
        cancel: kanon_runtime::CancelToken::new(),
    };
    assert!(matches!(runtime().run_benchmark(&plugin, none), Err(RunError::NoTenants)));

    // Four tenants: below t = 5, nothing is released, however many drivers.
    let report = kanon_tests::run_benchmark(&plugin, &even[..4]);
    let release = report.outcome.unwrap();
    assert_eq!(release.tables[0].suppressed_cells, release.tables[0].cells.len());

    // Five tenants, one with ten times the fuel of all others together:
    // it dominates every cell it is in.
    let mut skewed = even.clone();
    skewed[0] = kanon_tests::fleet_csv(40, 45.0);
    let report = kanon_tests::run_benchmark(&plugin, &skewed);
    assert_eq!(cell(&report, ["rigid", "north"]), None);
}
