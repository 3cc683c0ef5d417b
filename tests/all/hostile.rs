//! One test per hostile fixture: the exact refusal or failure class, and
//! that nothing was released and nothing leaked to the caller.

use std::time::Instant;

use kanon_gate::{Dominance, Policy};
use kanon_runtime::{CancelToken, RunLimits, RunRequest, Runtime, RuntimeConfig};
use kanon_runtime::{FailureClass, RunReport, UploadError};
use kanon_tests::{
    fleet_csv, load_path, request, run_benchmark, run_on_trips, runtime, table, test_limits, trips,
};

// The attacks on entity isolation are tested in `isolation`.
use crate::isolation::{
    cancels_pairs, differences_by_params, joins_on_the_entity, moves_data_across_entities,
    spells_with_counts, traps_for_one_entity,
};

// A fixture without a test below fails to compile here.
macro_rules! has_test {
    ($name:ident) => {
        const _: fn() = $name;
    };
}
kanon_fixtures::foreach_hostile_fixture!(has_test);

/// Run a fixture that must fail with `class`; returns the report.
fn fails_with(path: &str, class: FailureClass) -> RunReport {
    let plugin = load_path(path).expect("the fixture passes upload");
    let report = run_on_trips(&plugin);
    let failure = report.outcome.clone().expect_err("nothing may be released");
    assert_eq!(failure.class, class, "owner log: {:?}", report.owner_log);
    // The caller's view is the class alone.
    let shown = failure.to_string();
    assert_eq!(shown, format!("the plugin run failed ({}); nothing was released", class.code()));
    report
}

#[test]
fn reads_file() {
    let err = load_path(kanon_fixtures::READS_FILE).unwrap_err();
    let UploadError::RefusedImport(import) = &err else { panic!("{err}") };
    assert!(import.starts_with("wasi:filesystem/"), "{import}");
    assert!(err.to_string().contains("which plugins may not use"));
}

#[test]
fn opens_socket() {
    let err = load_path(kanon_fixtures::OPENS_SOCKET).unwrap_err();
    let UploadError::RefusedImport(import) = &err else { panic!("{err}") };
    assert!(import.starts_with("wasi:sockets/"), "{import}");
}

#[test]
fn reads_env() {
    let report = fails_with(kanon_fixtures::READS_ENV, FailureClass::PluginError);
    let seen = report.owner_log.error.as_deref().unwrap();
    assert!(seen.starts_with("saw env=[] args=[] cwd="), "{seen}");
    assert!(!seen.contains("PATH") && !seen.contains("HOME"), "{seen}");
}

#[test]
fn loops_forever() {
    let start = Instant::now();
    fails_with(kanon_fixtures::LOOPS_FOREVER, FailureClass::Timeout);
    assert!(start.elapsed().as_secs() < 10, "the 2 s deadline held: {:?}", start.elapsed());
}

#[test]
fn loops_in_host_calls() {
    let start = Instant::now();
    let report = fails_with(kanon_fixtures::LOOPS_IN_HOST_CALLS, FailureClass::Timeout);
    assert!(start.elapsed().as_secs() < 10, "{:?}", start.elapsed());
    assert!(report.owner_log.error.is_some());
}

/// `work` on its own thread, failing the test if it has not returned after
/// `secs`: what a sleep past the deadline would do.
fn within<T: Send + 'static>(secs: u64, work: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(work()));
    finished.recv_timeout(std::time::Duration::from_secs(secs)).expect("still running past the deadline")
}

#[test]
fn sleeps_forever() {
    within(20, || fails_with(kanon_fixtures::SLEEPS_FOREVER, FailureClass::Timeout));
}

#[test]
fn sleeps_in_manifest() {
    let err = within(30, || load_path(kanon_fixtures::SLEEPS_IN_MANIFEST).unwrap_err());
    let UploadError::ManifestFailed(why) = &err else { panic!("{err}") };
    assert!(why.starts_with("timeout"), "the 5 s upload deadline held: {why}");
}

/// A cancel ends a run wherever it is: spinning in guest code, asleep in a
/// WASI poll, or going round host calls. Cancelled well before the 2 s
/// deadline, each run must say `cancelled`, not `timeout`.
#[test]
fn a_cancel_interrupts_a_run_wherever_it_is() {
    for path in
        [kanon_fixtures::LOOPS_FOREVER, kanon_fixtures::SLEEPS_FOREVER, kanon_fixtures::LOOPS_IN_HOST_CALLS]
    {
        let plugin = load_path(path).unwrap();
        let cancel = CancelToken::new();
        let canceller = std::thread::spawn({
            let cancel = cancel.clone();
            move || {
                std::thread::sleep(std::time::Duration::from_millis(200));
                cancel.cancel();
            }
        });
        let report = runtime().run(&plugin, RunRequest { cancel, ..request(trips(), "{}") }).unwrap();
        canceller.join().unwrap();
        let failure = report.outcome.expect_err("nothing may be released");
        assert_eq!(failure.class, FailureClass::Cancelled, "{path}: {:?}", report.owner_log);
    }
}

/// 32 open scans of a column of 2 KB texts, one batch in each, would hold
/// about 16 MB each on the host; a 64 MiB budget ends the run.
#[test]
fn hoards_scans() {
    let runtime = Runtime::new(RuntimeConfig {
        limits: RunLimits { host_memory_bytes: 64 << 20, ..test_limits() },
        ..RuntimeConfig::default()
    })
    .unwrap();
    let mut csv = String::from("driver_id,region,fuel_litres\n");
    for row in 0..4000 {
        csv.push_str(&format!("D{row},r{row:01999},1.0\n"));
    }
    let plugin = runtime.load(&std::fs::read(kanon_fixtures::HOARDS_SCANS).unwrap()).unwrap();
    let datasets = [("trips".to_owned(), table("trips", &csv, "driver_id"))].into();
    let report = runtime.run(&plugin, request(datasets, "{}")).unwrap();
    let failure = report.outcome.expect_err("nothing may be released");
    assert_eq!(failure.class, FailureClass::Limit, "{:?}", report.owner_log);
    assert!(report.owner_log.error.as_deref().unwrap().contains("host memory"), "{:?}", report.owner_log);
    let peak = report.stats.peak_host_bytes;
    assert!((64 << 20..(64 << 20) + (40 << 20)).contains(&peak), "overshoot by at most one chunk: {peak}");
}

/// The same request, run again under a fresh run id, flips the same coins:
/// with fresh randomness, 16 runs would agree with a chance of 2^-15.
#[test]
fn flips_a_coin() {
    let plugin = load_path(kanon_fixtures::FLIPS_A_COIN).unwrap();
    let releases: Vec<_> = (0..16)
        .map(|i| {
            let request = RunRequest { run_id: format!("run-{i}"), ..request(trips(), "{}") };
            runtime().run(&plugin, request).unwrap().outcome.unwrap()
        })
        .collect();
    assert!(releases.windows(2).all(|w| w[0] == w[1]), "a repeated request released something else");
}

#[test]
fn grows_memory() {
    let report = fails_with(kanon_fixtures::GROWS_MEMORY, FailureClass::Memory);
    assert!(report.stats.peak_memory_bytes <= 64 << 20, "{}", report.stats.peak_memory_bytes);
}

#[test]
fn floods_host() {
    let report = fails_with(kanon_fixtures::FLOODS_HOST, FailureClass::Limit);
    assert!(report.owner_log.error.as_deref().unwrap().contains("bytes passed to the host"));
    assert!(report.stats.bytes_to_host > 64 << 20);
}

#[test]
fn forges_pseudonym() {
    let report = fails_with(kanon_fixtures::FORGES_PSEUDONYM, FailureClass::ContractViolation);
    assert!(report.owner_log.error.as_deref().unwrap().contains("was never issued to this run"));
}

#[test]
fn code_outside_domain() {
    let report = fails_with(kanon_fixtures::CODE_OUTSIDE_DOMAIN, FailureClass::ContractViolation);
    let error = report.owner_log.error.unwrap();
    assert!(error.contains("is outside the domain of dimension `region` (5 values)"), "{error}");
}

#[test]
fn undeclared_dataset() {
    let report = fails_with(kanon_fixtures::UNDECLARED_DATASET, FailureClass::PluginError);
    let seen = report.owner_log.error.unwrap();
    assert!(seen.contains(r#"salaries=Err(DataError::DatasetNotGranted("salaries"))"#), "{seen}");
    assert!(seen.contains(r#"home_address=Err(DataError::ColumnNotGranted("home_address"))"#), "{seen}");
    // The schema shows only the declared columns, not vehicle_class etc.
    assert!(seen.contains(r#"schema=["driver_id", "region", "fuel_litres"]"#), "{seen}");
    assert_eq!(report.owner_log.refusals.len(), 2, "{:?}", report.owner_log.refusals);
}

#[test]
fn undeclared_table() {
    let report = fails_with(kanon_fixtures::UNDECLARED_TABLE, FailureClass::PluginError);
    assert!(report.owner_log.error.unwrap().contains(r#"UnknownTable("raw_rows")"#));
    assert_eq!(report.owner_log.refusals, vec!["opened undeclared table `raw_rows`".to_owned()]);
}

#[test]
fn panics_with_data() {
    let report = fails_with(kanon_fixtures::PANICS_WITH_DATA, FailureClass::Trap);
    assert!(report.owner_log.stderr.contains("secret fuel="), "{:?}", report.owner_log);
}

#[test]
fn error_with_data() {
    let report = fails_with(kanon_fixtures::ERROR_WITH_DATA, FailureClass::PluginError);
    assert!(report.owner_log.error.unwrap().starts_with("secret fuel="));
}

/// The released cells of the first table, by key, `None` when suppressed.
fn cells(report: &RunReport) -> Vec<(String, Option<Vec<f64>>)> {
    let release = report.outcome.as_ref().expect("a release");
    release.tables[0].cells.iter().map(|c| (c.key.join("/"), c.values.clone())).collect()
}

#[test]
fn spreads_one_entity() {
    let plugin = load_path(kanon_fixtures::SPREADS_ONE_ENTITY).unwrap();
    let report = run_on_trips(&plugin);
    // The target's four extra cells are dropped: it counts in one cell only.
    assert_eq!(report.stats.dropped_contributions, 4);
    let counted: f64 = cells(&report).iter().filter_map(|(_, v)| v.as_ref().map(|v| v[0])).sum();
    assert_eq!(counted, 60.0, "64 drivers, west (4) suppressed, the target counted once");
}

#[test]
fn pads_with_zeros() {
    let plugin = load_path(kanon_fixtures::PADS_WITH_ZEROS).unwrap();
    let report = run_on_trips(&plugin);
    let central = cells(&report).into_iter().find(|(k, _)| k == "central").unwrap();
    assert_eq!(central.1, None, "10 entities, but one holds the whole sum: dominance suppresses");

    // Without the dominance rule the attack works: the sum is one person's.
    let off = Policy { dominance: Dominance { n: 1, percent: 100.0 }, ..Policy::default() };
    let report = runtime().run(&plugin, RunRequest { policy: off, ..request(trips(), "{}") }).unwrap();
    let central = cells(&report).into_iter().find(|(k, _)| k == "central").unwrap();
    let values = central.1.expect("released without dominance");
    assert_eq!(values[0], 10.0);
    assert!(values[1] > 0.0, "the target's fuel alone: {values:?}");
}

#[test]
fn subtracts_margins() {
    let plugin = load_path(kanon_fixtures::SUBTRACTS_MARGINS).unwrap();
    let report = run_on_trips(&plugin);
    let cells = cells(&report);
    assert_eq!(cells.len(), 6, "five regions and the total");
    assert_eq!(cells[4], ("central".into(), None), "the target alone");
    // One line: cells sum to the total. A hidden cell is recoverable unless
    // another cell of the line is hidden too.
    let hidden = cells.iter().filter(|(_, v)| v.is_none()).count();
    assert!(hidden >= 2, "central must not be total minus the released cells: {cells:?}");
    // Every other region holds 15 or 16 drivers, so only the gate's
    // complement hides a second cell, and no more than the line needs.
    assert_eq!(hidden, 2, "{cells:?}");
    assert!(cells[5].1.is_some(), "the total itself stays released");
}

#[test]
fn singles_out_a_tenant() {
    let plugin = load_path(kanon_fixtures::SINGLES_OUT_A_TENANT).unwrap();
    // Tenant 0 is large (more than 100 drivers), five others are small.
    let mut tenants = vec![fleet_csv(150, 1.0)];
    tenants.extend((0..5).map(|_| fleet_csv(40, 1.0)));
    let report = run_benchmark(&plugin, &tenants);
    let release = report.outcome.as_ref().expect("a release");
    let central = &release.tables[0].cells[4];
    assert_eq!(central.key, vec!["central".to_owned()]);
    assert_eq!(central.values, None, "six tenants and 350 drivers, but one tenant holds the sum");
    assert_eq!(report.tenants.len(), 6);
}

/// What every run of `carries-state` must see: nothing left by an earlier one.
const NOTHING_CARRIED: &str = "carried: static=0 runs=0 fuel=0 thread_local=0 env=absent";

#[test]
fn carries_state() {
    let plugin = load_path(kanon_fixtures::CARRIES_STATE).unwrap();
    let tenants: Vec<String> = (0..5).map(|_| fleet_csv(40, 1.0)).collect();
    // The honest sums, from the CSV itself: each driver's fuel, by region.
    let regions = ["north", "east", "south", "west", "central"];
    let mut expected = [0.0; 5];
    for line in tenants.iter().flat_map(|csv| csv.lines().skip(1)) {
        let fields: Vec<&str> = line.split(',').collect();
        let region = regions.iter().position(|r| *r == fields[2]).unwrap();
        expected[region] += fields[5].parse::<f64>().unwrap();
    }

    // Two whole benchmarks in a row on one runtime: neither tenant after
    // tenant nor run after run may see state, and both release the same.
    let mut releases = Vec::new();
    for _ in 0..2 {
        let report = run_benchmark(&plugin, &tenants);
        assert_eq!(report.tenants.len(), 5);
        // Had the second tenant reused the first's instance, it would say
        // static=40 runs=1 and contribute 1000 per driver.
        for (tenant, log, _) in &report.tenants {
            assert_eq!(log.stderr.trim_end(), NOTHING_CARRIED, "{tenant}: {log:?}");
        }
        let release = report.outcome.expect("a release");
        let cells = &release.tables[0].cells;
        assert_eq!(cells.len(), 5);
        for ((cell, region), sum) in cells.iter().zip(regions).zip(expected) {
            assert_eq!(cell.key, vec![region.to_owned()]);
            let values = cell.values.as_ref().expect("8 drivers from each of 5 tenants: released");
            assert_eq!(values[0], 40.0, "{region}");
            assert!((values[1] - sum).abs() < 1e-6, "{region}: released {values:?}, honest {sum}");
        }
        releases.push(release);
    }
    assert_eq!(releases[0], releases[1]);
}
