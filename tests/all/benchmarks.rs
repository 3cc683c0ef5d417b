//! Cross-tenant benchmarks through the daemon's HTTP API: a vendor
//! publishes, tenants opt in with their own dataset and column names, runs
//! release gated versions into the meta data vault, each tenant reads its
//! own position, and a tenant leaving cannot be subtracted out.

use std::time::{Duration, Instant};

use arrow_array::Array;
use kanon_client::types::{BenchmarkRun, DatasetMapping, JobState, NewBenchmark, OptIn, OptInRequest};
use kanon_client::{Client, UploadArgs};
use kanon_daemon::Role;
use kanon_gate::PolicyLayer;
use serde_json::{Value, json};

use crate::daemon::{TestDaemon, actions, audit};

/// Carriers in the benchmark.
const CARRIERS: usize = 7;

/// A carrier's trips: 50 `rigid` drivers over the five regions (10 each).
/// Carriers 0 to 2 also run 12 `articulated` drivers in the north (a cell
/// of three tenants); carriers 0 to 4 have 2 small `van` drivers in the west
/// and carrier 5 has 12 large ones there (a cell one tenant dominates).
fn carrier_csv(carrier: usize) -> String {
    let mut csv = kanon_tests::fleet_csv(50, 1.0 + carrier as f64 * 0.1);
    let mut trip = |id: &str, class: &str, region: &str, fuel: f64| {
        csv.push_str(&format!("{id},{class},{region},100.0,5.0,{fuel:.1}\n"));
    };
    if carrier < 3 {
        (0..12).for_each(|i| trip(&format!("A{i:03}"), "articulated", "north", 30.0));
    }
    match carrier {
        0..=4 => (0..2).for_each(|i| trip(&format!("V{i:03}"), "van", "west", 10.0)),
        5 => (0..12).for_each(|i| trip(&format!("V{i:03}"), "van", "west", 900.0)),
        _ => {}
    }
    csv
}

fn carrier(i: usize) -> String {
    format!("carrier-{i}")
}

/// Tenant admins of the carriers, each with its trips ingested. The last
/// one names its dataset and columns its own way.
pub(crate) fn carriers(d: &TestDaemon) -> Vec<Client> {
    (0..CARRIERS)
        .map(|i| {
            let tenant = carrier(i);
            let admin = d.tenant(&tenant);
            let mut csv = carrier_csv(i);
            let (dataset, entity) = if i == CARRIERS - 1 {
                csv = csv.replacen("driver_id,", "chauffeur,", 1).replacen("fuel_litres", "liters", 1);
                ("ritten", "chauffeur")
            } else {
                ("trips", "driver_id")
            };
            let upload =
                UploadArgs { format: "csv".into(), entity: Some(entity.into()), ..UploadArgs::default() };
            admin.ingest(&tenant, dataset, &upload, std::io::Cursor::new(csv.into_bytes())).unwrap();
            admin
        })
        .collect()
}

fn opt_in(admin: &Client, i: usize) -> OptIn {
    join(admin, i, "co2")
}

pub(crate) fn join(admin: &Client, i: usize, benchmark: &str) -> OptIn {
    let mapping = if i == CARRIERS - 1 {
        let columns = [("driver_id", "chauffeur"), ("fuel_litres", "liters")];
        DatasetMapping {
            dataset: "ritten".into(),
            columns: columns.into_iter().map(|(from, to)| (from.to_owned(), to.to_owned())).collect(),
        }
    } else {
        DatasetMapping { dataset: "trips".into(), columns: Default::default() }
    };
    let request = OptInRequest { datasets: [("trips".to_owned(), mapping)].into() };
    admin.opt_in(&carrier(i), benchmark, &request).unwrap()
}

/// Publish `name` over the plugin `hash`, on demand.
pub(crate) fn publish(vendor: &Client, name: &str, hash: &str, description: &str) {
    let new = NewBenchmark {
        name: name.into(),
        plugin: hash.into(),
        description: description.into(),
        params: None,
        every_hours: None,
    };
    vendor.publish_benchmark(&new).unwrap();
}

/// Queue a run and wait for its end.
pub(crate) fn run(vendor: &Client, benchmark: &str) -> BenchmarkRun {
    let id = vendor.run_benchmark(benchmark).unwrap().id;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let run = vendor.wait_benchmark_run(benchmark, &id, Duration::from_secs(30)).unwrap();
        if [JobState::Succeeded, JobState::Failed].contains(&run.state) {
            return run;
        }
        assert!(Instant::now() < deadline, "run did not finish: {run:?}");
    }
}

/// A stored version as JSON: what the vendor reads, to the last field.
fn version_json(vendor: &Client, benchmark: &str, version: Option<u64>) -> Value {
    vendor.get(&format!("/v1/benchmarks/{benchmark}/versions/{}", version.unwrap())).unwrap()
}

/// A version's cell by key.
fn cell<'a>(version: &'a Value, key: [&str; 2]) -> &'a Value {
    let cells = version["release"]["tables"][0]["cells"].as_array().unwrap();
    cells.iter().find(|c| c["key"] == json!(key)).unwrap_or_else(|| panic!("no cell {key:?}"))
}

#[test]
fn a_benchmark_releases_gated_versions_and_a_leaving_tenant_cannot_be_subtracted_out() {
    let d = TestDaemon::start();
    let admins = carriers(&d);
    let (vendor, _) = d.token(Role::Vendor, "benchco", None, None);
    let plugin = vendor.upload_plugin(kanon_bundled::EMISSIONS_BENCHMARK).unwrap();
    let hash = plugin.hash.as_str();
    let published = vendor
        .publish_benchmark(&NewBenchmark {
            name: "co2".into(),
            plugin: hash.into(),
            description: "CO2 per tonne-km".into(),
            params: None,
            every_hours: None,
        })
        .unwrap();
    assert_eq!(published.vendor, "benchco");

    // A tenant admin reads the shape it must provide, then opts in.
    let shown = admins[0].benchmark("co2").unwrap();
    assert_eq!(shown.manifest.inputs[0].name, "trips");
    assert_eq!(shown.participants, 0);
    let members: std::collections::BTreeSet<u32> =
        admins.iter().enumerate().map(|(i, admin)| opt_in(admin, i).member).collect();
    assert_eq!(members.len(), CARRIERS, "one ordinal per tenant");
    assert_eq!(admins[0].benchmark("co2").unwrap().participants, CARRIERS);

    let first = run(&vendor, "co2");
    assert_eq!(first.state, JobState::Succeeded, "{first:?}");
    assert_eq!((first.participants, first.version), (Some(7), Some(1)));
    // No figure of the run's that a difference of two runs could tie to
    // one tenant: no rows read, no instance memory. As JSON: the fields
    // the daemon sends, whatever the client's type holds.
    let sent: Value = vendor.get(&format!("/v1/benchmarks/co2/runs/{}", first.id)).unwrap();
    let stats: Vec<&String> = sent["stats"].as_object().unwrap().keys().collect();
    assert_eq!(stats, ["cells", "held_cells", "run_secs", "suppressed_cells"]);
    let v1 = version_json(&vendor, "co2", Some(1));
    // Seven tenants of ten drivers each, the last one read through its own
    // column names.
    assert_eq!(cell(&v1, ["rigid", "north"])["values"][0], 70.0);
    assert_eq!(cell(&v1, ["articulated", "north"])["values"], Value::Null, "three tenants: fewer than t");
    assert_eq!(cell(&v1, ["van", "west"])["values"], Value::Null, "carrier 5 holds the sum");
    let summary = &vendor.benchmark_versions("co2").unwrap()[0];
    assert!(summary.suppressed_cells >= 2, "{summary:?}");
    assert_eq!(summary.participants, 7);

    // Nothing in the vendor's view names a tenant, in any format.
    let csv = vendor.get_text("/v1/benchmarks/co2/versions/latest?format=csv").unwrap();
    let parquet = vendor.raw("GET", "/v1/benchmarks/co2/versions/1?format=parquet", None).unwrap();
    assert_eq!(parquet.status, 200);
    for text in [v1.to_string(), csv.clone(), String::from_utf8_lossy(&parquet.body).into_owned()] {
        assert!(!text.contains("carrier") && !text.contains("ritten"), "a tenant is named");
    }
    assert!(csv.starts_with(
        "table,vehicle_class,region,count,sum(co2_kg),ratio(co2_kg/tonne_km),suppressed,held_from\n"
    ));
    let rows = read_parquet(&parquet.body);
    assert_eq!(rows.0, v1["release"]["tables"][0]["cells"].as_array().unwrap().len());
    assert_eq!(
        rows.1,
        [
            "table",
            "vehicle_class",
            "region",
            "count",
            "sum(co2_kg)",
            "ratio(co2_kg/tonne_km)",
            "suppressed",
            "held_from"
        ]
    );

    // A tenant's own position: its own values next to the peers', and a band.
    // As JSON: the fields the daemon sends, whatever the client's type holds.
    let position: Value = admins[0].get("/v1/tenants/carrier-0/benchmarks/co2/versions/latest").unwrap();
    let north = &position["position"]["tables"][0]["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["key"] == json!(["rigid", "north"]))
        .unwrap()
        .clone();
    assert_eq!(north["own"][0], 10.0);
    assert_eq!(north["peers"], cell(&v1, ["rigid", "north"])["values"]);
    assert_eq!(north["bands"][0]["of"], 2, "seven tenants: halves; quintiles from ten");
    let fields: Vec<&String> = north.as_object().unwrap().keys().collect();
    assert_eq!(fields, ["bands", "key", "own", "peers"], "nothing else of the peers");
    // Only its own admin reads it.
    let other = admins[1].raw("GET", "/v1/tenants/carrier-0/benchmarks/co2/versions/latest", None).unwrap();
    assert_eq!(other.status, 403);
    assert_eq!(
        vendor.raw("GET", "/v1/tenants/carrier-0/benchmarks/co2/versions/1", None).unwrap().status,
        403
    );

    // Carrier 6 leaves. Every cell it was in now differs by one tenant from
    // version 1: the new values are not released, version 1's stand.
    let left = admins[6].opt_out("carrier-6", "co2").unwrap();
    assert!(left.opted_out_ms.is_some());
    let second = run(&vendor, "co2");
    assert_eq!((second.participants, second.version), (Some(6), Some(2)));
    let v2 = version_json(&vendor, "co2", Some(2));
    for rigid in
        v2["release"]["tables"][0]["cells"].as_array().unwrap().iter().filter(|c| c["key"][0] == "rigid")
    {
        let before = cell(&v1, [0, 1].map(|k| rigid["key"][k].as_str().unwrap()));
        if rigid["values"].is_null() {
            continue;
        }
        assert_eq!(rigid["held_from"], 1, "{rigid}");
        assert_eq!(rigid["values"], before["values"]);
    }
    assert_eq!(
        cell(&v2, ["rigid", "north"])["values"][0],
        70.0,
        "not 60: carrier 6 cannot be subtracted out"
    );
    assert!(vendor.benchmark_versions("co2").unwrap()[1].held_cells > 0);
    let csv = vendor.get_text("/v1/benchmarks/co2/versions/2?format=csv").unwrap();
    assert!(
        csv.lines().any(|l| l.starts_with("co2_intensity,rigid,north,70,") && l.ends_with(",false,1")),
        "{csv}"
    );
    // Its data left no trace in the run: no position, no run on its chain.
    let gone = admins[6].raw("GET", "/v1/tenants/carrier-6/benchmarks/co2/versions/2", None).unwrap();
    assert_eq!(gone.status, 404);
    let chain = audit(&admins[6], "carrier-6");
    assert_eq!(actions(&chain).iter().filter(|a| **a == "benchmark.run").count(), 1);
    assert!(actions(&chain).contains(&"benchmark.opt-out"));
    assert!(kanon_daemon::verify("carrier-6", &chain.entries, &chain.head).is_ok());

    // The same plugin published again under another name, without
    // carrier 6: its cells differ by one tenant from co2's version 1, so
    // they are suppressed, though this benchmark has released nothing yet.
    publish(&vendor, "co2-again", hash, "");
    for (i, admin) in admins.iter().enumerate().take(6) {
        join(admin, i, "co2-again");
    }
    let again = run(&vendor, "co2-again");
    let fresh = version_json(&vendor, "co2-again", again.version);
    assert_eq!(cell(&fresh, ["rigid", "north"]), &json!({"key": ["rigid", "north"], "values": null}));

    // Back in with the same data: the set is version 1's again, released.
    opt_in(&admins[6], 6);
    let third = run(&vendor, "co2");
    let v3 = version_json(&vendor, "co2", third.version);
    assert_eq!(cell(&v3, ["rigid", "north"])["held_from"], Value::Null);
    assert_eq!(cell(&v3, ["rigid", "north"])["values"], cell(&v1, ["rigid", "north"])["values"]);

    // Every participant's chain tells when its data was read: three runs of
    // co2, one of co2-again.
    let chain = audit(&admins[0], "carrier-0");
    assert_eq!(actions(&chain).iter().filter(|a| **a == "benchmark.run").count(), 4);
    let host = d.operator.host_audit().unwrap();
    let host_actions = actions(&host);
    assert!(host_actions.contains(&"benchmark.publish") && host_actions.contains(&"benchmark.release"));
}

/// Rows and column names of a Parquet file.
fn read_parquet(bytes: &[u8]) -> (usize, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.parquet");
    std::fs::write(&path, bytes).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&path).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let mut rows = 0;
    let mut names = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        rows += batch.num_rows();
        names = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
        let held = batch.column_by_name("held_from").unwrap();
        assert_eq!(held.null_count(), batch.num_rows(), "version 1 holds nothing");
    }
    (rows, names)
}

#[test]
fn opt_ins_are_checked_and_others_see_nothing_of_a_benchmark() {
    let d = TestDaemon::start();
    let admins = carriers(&d);
    let (vendor, _) = d.token(Role::Vendor, "benchco", None, None);
    let (rival, _) = d.token(Role::Vendor, "rival", None, None);
    let (analyst, _) = d.token(Role::Analyst, "ana", None, None);
    let plugin = vendor.upload_plugin(kanon_bundled::EMISSIONS_BENCHMARK).unwrap();
    let hash = plugin.hash.as_str();
    publish(&vendor, "co2", hash, "");

    // Bad definitions.
    for (body, status) in [
        (json!({"name": "co2", "plugin": hash}), 409),
        (json!({"name": "../x", "plugin": hash}), 400),
        (json!({"name": "x", "plugin": "0".repeat(64)}), 404),
        (json!({"name": "x", "plugin": hash, "params": {"kg_co2_per_litre": "lots"}}), 422),
        (json!({"name": "x", "plugin": hash, "every_hours": 0}), 400),
    ] {
        let reply = vendor
            .raw("POST", "/v1/benchmarks", Some(("application/json", body.to_string().as_bytes())))
            .unwrap();
        assert_eq!(reply.status, status, "{body}: {}", reply.text());
    }

    // Bad mappings: each refused with what does not fit, nothing stored.
    let put = |admin: &Client, tenant: &str, mapping: Value| {
        let body = json!({"datasets": mapping}).to_string();
        admin
            .raw(
                "PUT",
                &format!("/v1/tenants/{tenant}/benchmarks/co2"),
                Some(("application/json", body.as_bytes())),
            )
            .unwrap()
    };
    for (mapping, status, says) in [
        (json!({}), 422, "map a dataset of yours to `trips`"),
        (json!({"trips": {"dataset": "nope"}}), 404, "no dataset `nope`"),
        (json!({"trips": {"dataset": "ritten"}}), 422, "no column `driver_id`"),
        (
            json!({"trips": {"dataset": "ritten", "columns": {"driver_id": "chauffeur", "fuel_litres": "region"}}}),
            422,
            "`region` is mapped twice",
        ),
        (
            json!({"trips": {"dataset": "ritten", "columns": {"driver_id": "chauffeur", "fuel_litres": "liters",
                                                              "region": "distance_km", "distance_km": "region"}}}),
            422,
            "column `region`: the plugin expects Text, the data is Float",
        ),
        (
            json!({"trips": {"dataset": "ritten", "columns": {"driver": "chauffeur"}}}),
            422,
            "no column `driver` to map",
        ),
        (json!({"trips": {"dataset": "trips"}, "hr": {"dataset": "trips"}}), 422, "reads no dataset `hr`"),
        (
            json!({"trips": {"dataset": "ritten", "columns": {"driver_id": "region", "region": "chauffeur", "fuel_litres": "liters"}}}),
            422,
            "map the entity column of `ritten` to one of `driver_id`",
        ),
    ] {
        let reply = put(&admins[CARRIERS - 1], "carrier-6", mapping.clone());
        assert_eq!(reply.status, status, "{mapping}: {}", reply.text());
        assert!(reply.text().contains(says), "{mapping}: {}", reply.text());
    }
    assert_eq!(
        put(&admins[0], "carrier-1", json!({"trips": {"dataset": "trips"}})).status,
        403,
        "another tenant's"
    );
    assert_eq!(admins[0].benchmark("co2").unwrap().participants, 0);
    let leave = admins[0].raw("DELETE", "/v1/tenants/carrier-0/benchmarks/co2", None).unwrap();
    assert_eq!(leave.status, 404, "not in it");

    // Another vendor, an analyst: nothing.
    assert_eq!(rival.raw("GET", "/v1/benchmarks/co2", None).unwrap().status, 404);
    assert_eq!(rival.raw("POST", "/v1/benchmarks/co2/runs", None).unwrap().status, 404);
    assert!(rival.list_benchmarks().unwrap().is_empty());
    assert_eq!(analyst.raw("GET", "/v1/benchmarks", None).unwrap().status, 403);

    // Fewer tenants than t: the run reads nothing and fails with a reason.
    for (i, admin) in admins.iter().enumerate().take(3) {
        opt_in(admin, i);
    }
    let small = run(&vendor, "co2");
    assert_eq!((small.state, small.failure.as_deref()), (JobState::Failed, Some("too-few-tenants")));
    assert_eq!(vendor.benchmark_versions("co2").unwrap(), []);
    let log = admins[0].benchmark_run_log("carrier-0", &small.id).unwrap();
    assert!(log.error.as_deref().unwrap().contains("3 tenants take part; the policy needs 5"), "{log:?}");

    // A tenant asking for more tenants than take part is left out and told;
    // the others run. Every tenant's chain said its data might be read
    // before the run read any.
    for (i, admin) in admins.iter().enumerate().skip(3) {
        opt_in(admin, i);
    }
    admins[0]
        .set_tenant_policy("carrier-0", &PolicyLayer { min_tenants: Some(50), ..PolicyLayer::default() })
        .unwrap();
    let full = run(&vendor, "co2");
    assert_eq!((full.state, full.participants), (JobState::Succeeded, Some(6)), "{full:?}");
    let chain = audit(&admins[0], "carrier-0");
    let skipped = chain.entries.iter().find(|e| e.action == "benchmark.skipped").expect("told");
    assert!(skipped.detail["reason"].as_str().unwrap().contains("its policy needs 50 tenants; 7 take part"));
    assert!(actions(&audit(&admins[1], "carrier-1")).contains(&"benchmark.run.start"));

    // The plugin cannot be deleted under a benchmark, until it is retired:
    // then no run or opt-in follows, and its versions stay.
    assert_eq!(vendor.raw("DELETE", &format!("/v1/plugins/{hash}"), None).unwrap().status, 409);
    assert_eq!(rival.raw("DELETE", "/v1/benchmarks/co2", None).unwrap().status, 404, "not its own");
    let retired = vendor.retire_benchmark("co2").unwrap();
    assert!(retired.retired_ms.is_some());
    assert_eq!(vendor.raw("POST", "/v1/benchmarks/co2/runs", None).unwrap().status, 409);
    assert_eq!(put(&admins[0], "carrier-0", json!({"trips": {"dataset": "trips"}})).status, 409);
    assert_eq!(vendor.benchmark_versions("co2").unwrap().len(), 1);
    assert_eq!(vendor.raw("DELETE", &format!("/v1/plugins/{hash}"), None).unwrap().status, 200);
}

#[test]
fn another_plugin_releasing_the_same_table_shares_the_subtraction_rule() {
    let d = TestDaemon::start();
    let admins = carriers(&d);
    let (vendor, _) = d.token(Role::Vendor, "benchco", None, None);
    // Two different components that release the same `by_region` table.
    let publish = |name: &str, path: &str| {
        let plugin = vendor.upload_plugin(&std::fs::read(path).unwrap()).unwrap();
        publish(&vendor, name, &plugin.hash, "");
        plugin.hash
    };
    let first = publish("fuel", kanon_fixtures::CARRIES_STATE);
    let second = publish("fuel-again", kanon_fixtures::SINGLES_OUT_A_TENANT);
    assert_ne!(first, second);
    for (i, admin) in admins.iter().enumerate().take(6) {
        join(admin, i, "fuel");
    }
    let v1 = run(&vendor, "fuel");
    let v1 = version_json(&vendor, "fuel", v1.version);
    let released: Vec<&Value> = v1["release"]["tables"][0]["cells"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| !c["values"].is_null())
        .collect();
    assert!(released.len() >= 3, "{v1}");

    // The other plugin, without carrier 5: every cell differs from `fuel`'s
    // version 1 by one tenant, so nothing of it is released.
    for (i, admin) in admins.iter().enumerate().take(5) {
        join(admin, i, "fuel-again");
    }
    let again = run(&vendor, "fuel-again");
    assert_eq!(again.state, JobState::Succeeded, "{again:?}");
    let version = version_json(&vendor, "fuel-again", again.version);
    for cell in version["release"]["tables"][0]["cells"].as_array().unwrap() {
        assert_eq!(cell["values"], Value::Null, "{cell}");
    }
}
