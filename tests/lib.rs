//! Helpers for kanon's end-to-end tests.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use kanon_gate::Policy;
use kanon_runtime::{
    BenchmarkReport, BenchmarkRequest, CancelToken, LoadedPlugin, RunLimits, RunReport, RunRequest, Runtime,
    RuntimeConfig, TenantInput,
};
use kanon_vault::{CsvReader, DatasetVersion, IngestOptions, Vault, WriteMode};

/// Limits tight enough that the hostile fixtures fail fast.
pub fn test_limits() -> RunLimits {
    RunLimits {
        memory_bytes: 64 << 20,
        timeout: Duration::from_secs(2),
        max_bytes_to_host: 64 << 20,
        ..RunLimits::default()
    }
}

/// One runtime for the whole test binary, as one daemon would have.
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        Runtime::new(RuntimeConfig { limits: test_limits(), ..RuntimeConfig::default() }).expect("runtime")
    })
}

/// Load a plugin from a fixture path.
pub fn load_path(path: &str) -> Result<LoadedPlugin, kanon_runtime::UploadError> {
    runtime().load(&std::fs::read(path).expect("fixture built by kanon-fixtures"))
}

/// Trips by 60 drivers: 20 each in north, east and south, 4 in west and
/// none in central, so west is always suppressed.
pub fn trips_csv() -> String {
    let regions = [("north", 20), ("east", 20), ("south", 20), ("west", 4)];
    let mut csv = String::from("driver_id,vehicle_class,region,distance_km,load_tonnes,fuel_litres\n");
    let mut driver = 0;
    for (region, drivers) in regions {
        for _ in 0..drivers {
            driver += 1;
            for trip in 0..3 {
                let km = 100.0 + f64::from(trip) * 10.0;
                csv.push_str(&format!("D{driver:03},rigid,{region},{km:.1},5.0,{:.1}\n", km * 0.25));
            }
        }
    }
    csv
}

/// Trips by `drivers` drivers spread evenly over the five regions, with
/// fuel scaled by `fuel_scale`: one tenant's data in a benchmark.
pub fn fleet_csv(drivers: usize, fuel_scale: f64) -> String {
    let regions = ["north", "east", "south", "west", "central"];
    let mut csv = String::from("driver_id,vehicle_class,region,distance_km,load_tonnes,fuel_litres\n");
    for driver in 0..drivers {
        let region = regions[driver % regions.len()];
        for trip in 0..2 {
            let km = 80.0 + (driver % 7) as f64 * 10.0 + f64::from(trip);
            let fuel = km * 0.3 * fuel_scale;
            csv.push_str(&format!("F{driver:04},rigid,{region},{km:.1},4.0,{fuel:.2}\n"));
        }
    }
    csv
}

/// Run a benchmark over one trips dataset per tenant, default policy.
pub fn run_benchmark(plugin: &LoadedPlugin, tenants: &[String]) -> BenchmarkReport {
    let tenants = tenants
        .iter()
        .enumerate()
        .map(|(i, csv)| TenantInput {
            tenant: format!("tenant-{i}"),
            datasets: [("trips".to_owned(), table("trips", csv, "driver_id"))].into(),
            secret: [i as u8 + 1; 32],
            member: i as u32,
        })
        .collect();
    let request = BenchmarkRequest {
        run_id: "test-benchmark".into(),
        tenants,
        params: "{}".into(),
        policy: Policy::default(),
        history: Default::default(),
        version: 1,
        cancel: CancelToken::new(),
    };
    runtime().run_benchmark(plugin, request).expect("the request fits the plugin")
}

/// A dataset from CSV text with `entity` as the entity column, stored in a
/// temporary vault of its own (kept alive by the returned handle).
pub fn table(name: &str, csv: &str, entity: &str) -> DatasetVersion {
    let vault = Vault::temporary().expect("temporary vault");
    let source = format!("{name}.csv");
    let reader =
        CsvReader::new(&source, std::io::Cursor::new(csv.to_owned()), &IngestOptions::entity(entity))
            .expect("test CSV");
    vault.ingest("test", name, WriteMode::Replace, Box::new(reader), &source).expect("ingest");
    vault.dataset("test", name, None).expect("just stored")
}

/// The trips dataset, as the fixtures and the emissions plugin read it.
pub fn trips() -> BTreeMap<String, DatasetVersion> {
    [("trips".to_owned(), table("trips", &trips_csv(), "driver_id"))].into()
}

/// A request over `datasets` with default policy.
pub fn request(datasets: BTreeMap<String, DatasetVersion>, params: &str) -> RunRequest {
    RunRequest {
        run_id: "test-run".into(),
        datasets,
        params: params.into(),
        policy: Policy::default(),
        tenant_secret: [42; 32],
        cancel: CancelToken::new(),
    }
}

/// Run a plugin over the trips dataset.
pub fn run_on_trips(plugin: &LoadedPlugin) -> RunReport {
    runtime().run(plugin, request(trips(), "{}")).expect("the request fits the plugin")
}
