//! `kanon-bench`: the figures the design targets (BENCHMARKS.md), measured
//! side by side in one process, and with `--load` the daemon (`kanon
//! serve`, a child process) under many concurrent HTTP clients. Its own
//! binary, so the `kanon` binary carries no benchmark code.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use emissions_benchmark::kernel::{self, Groups, REGIONS, Trips, UNKNOWN, VEHICLE_CLASSES};
use kanon_datagen as datagen;
use kanon_gate::{
    Contributions, Dimension, Domain, Gate, Isolation, IssuedEntities, Measure, Policy, Privacy, Scope,
    Statistic, TableSpec,
};
use kanon_runtime::{CancelToken, RunRequest, Runtime, RuntimeConfig};
use kanon_vault::{
    Batch, BatchValues, ChunkAddress, DatasetVersion, IngestOptions, InputFormat, KeyEncryptionKey,
    PseudonymKey, Scan, Vault, WriteMode, open_stream,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(
    name = "kanon-bench",
    version,
    about = "Measure kanon: the plugin group-by against native Rust, \
    instantiation, compile caching, the gate, sealing; or, with --load, the daemon under load."
)]
struct BenchArgs {
    /// Smaller inputs and fewer repetitions: seconds instead of a minute.
    #[arg(long)]
    quick: bool,
    /// Print one JSON object per figure.
    #[arg(long)]
    json: bool,
    /// Instead of the figures above: start the daemon (`kanon serve`, in
    /// its own process, over a temporary data directory), load it over
    /// loopback with many clients submitting small jobs, and report
    /// throughput, latencies, errors and lost jobs.
    #[arg(long)]
    load: bool,
    /// With --load: the `kanon` binary to serve with (default: the one
    /// beside this binary, as `cargo build --release` leaves it).
    #[arg(long, value_name = "PATH", requires = "load")]
    kanon: Option<std::path::PathBuf>,
    /// With --load: how long the clients keep submitting.
    #[arg(long, default_value_t = 60, requires = "load")]
    seconds: u64,
    /// With --load: client threads, each with its own connection per call.
    #[arg(long, default_value_t = 200, requires = "load")]
    clients: usize,
}

#[derive(Debug, Serialize)]
struct Figure {
    name: &'static str,
    value: f64,
    unit: &'static str,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KANON_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(BenchArgs::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// A run request for data this process generated: a fresh secret, so its
/// pseudonyms link to nothing.
fn local_request(datasets: BTreeMap<String, DatasetVersion>, params: String, policy: Policy) -> RunRequest {
    let run_id: [u8; 16] = rand::random();
    RunRequest {
        run_id: run_id.iter().map(|b| format!("{b:02x}")).collect(),
        datasets,
        params,
        policy,
        tenant_secret: rand::random(),
        cancel: CancelToken::new(),
    }
}

fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let mut figures = Vec::new();
    let mut report = |figure: Figure| {
        if args.json {
            println!("{}", serde_json::to_string(&figure).expect("serialisable"));
        } else {
            println!("{:<34} {:>14.3} {}", figure.name, figure.value, figure.unit);
        }
        figures.push(figure);
    };
    if args.load {
        return load::run(args.kanon, args.seconds, args.clients, &mut report);
    }
    let (rows, repeats, instantiations, contributions) =
        if args.quick { (1_000_000, 3, 300, 20_000_000) } else { (4_000_000, 5, 3_000, 100_000_000) };

    let runtime = Runtime::new(RuntimeConfig::default())?;
    let vault = Vault::temporary()?;
    let trips = vault_io(&vault, rows, repeats, &mut report)?;
    group_by(&runtime, &trips, repeats, &mut report)?;
    isolation(&runtime, &vault, &trips, if args.quick { 20_000 } else { 100_000 }, repeats, &mut report)?;
    instantiation(&runtime, instantiations, &mut report)?;
    compile_cache(&mut report)?;
    gate(contributions, &mut report)?;
    gate_release(&mut report)?;
    sealing(if args.quick { 64 } else { 512 }, &mut report)?;
    Ok(ExitCode::SUCCESS)
}

fn best_of(repeats: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..repeats {
        let start = Instant::now();
        f()?;
        best = best.min(start.elapsed());
    }
    Ok(best)
}

const TRIP_COLUMNS: [&str; 6] =
    ["driver_id", "vehicle_class", "region", "distance_km", "load_tonnes", "fuel_litres"];

/// Generated trips CSV into the encrypted vault (parse, encode, compress,
/// seal, write, commit), then the vault back out as plugin batches (read,
/// open, decompress, decode, pseudonymise).
fn vault_io(
    vault: &Vault,
    rows: usize,
    repeats: usize,
    report: &mut impl FnMut(Figure),
) -> anyhow::Result<DatasetVersion> {
    let mut csv = Vec::with_capacity(rows * 64);
    datagen::trips(&mut csv, rows, 20_000, 3)?;
    let csv = std::sync::Arc::new(csv);
    let csv_bytes = csv.len();
    let ingest = best_of(repeats, || {
        let input = std::io::Cursor::new(SharedBytes(csv.clone()));
        let reader = open_stream(InputFormat::Csv, "generated", input, &IngestOptions::entity("driver_id"))?;
        vault.ingest("bench", "trips", WriteMode::Replace, reader, "generated")?;
        Ok(())
    })?;
    drop(csv);
    let trips = vault.dataset("bench", "trips", None)?;
    let mut batch_bytes = 0;
    let scan = best_of(repeats, || {
        let key = PseudonymKey::for_run(&[7; 32], b"bench");
        let mut scan = Scan::new(trips.clone(), &TRIP_COLUMNS, 1 << 16, key)?;
        batch_bytes = 0;
        while let Some(batch) = scan.next_batch()? {
            batch_bytes += bytes_of(&batch);
        }
        Ok(())
    })?;
    let mb_per_s = |bytes: usize, d: Duration| bytes as f64 / d.as_secs_f64() / 1e6;
    report(Figure {
        name: "vault_ingest_csv_mb_per_s",
        value: mb_per_s(csv_bytes, ingest),
        unit: "MB/s of CSV",
    });
    report(Figure {
        name: "vault_scan_mb_per_s",
        value: mb_per_s(batch_bytes, scan),
        unit: "MB/s of batches",
    });
    report(Figure {
        name: "vault_scan_rows_per_s",
        value: trips.rows() as f64 / scan.as_secs_f64(),
        unit: "rows/s",
    });
    report(Figure {
        name: "vault_stored_bytes_per_csv_byte",
        value: trips.info().stored_bytes as f64 / csv_bytes as f64,
        unit: "ratio",
    });
    Ok(trips)
}

/// Bytes a batch hands a plugin: values, codes, new dictionary text, bitmaps.
fn bytes_of(batch: &Batch) -> usize {
    batch
        .columns
        .iter()
        .map(|c| {
            let values = match &c.values {
                BatchValues::Int(v) | BatchValues::Timestamp(v) => v.len() * 8,
                BatchValues::Float(v) => v.len() * 8,
                BatchValues::Bool(v) => v.len(),
                BatchValues::Pseudonym(v) => v.len() * 8,
                BatchValues::Text { new_entries, codes } => {
                    codes.len() * 4 + new_entries.iter().map(String::len).sum::<usize>()
                }
            };
            values + c.validity.as_ref().map_or(0, Vec::len)
        })
        .sum()
}

/// Bytes shared by repeated ingests of one generated file.
struct SharedBytes(std::sync::Arc<Vec<u8>>);

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The emissions plugin's whole run in the sandbox, against the same
/// pipeline natively: same scan batches, same group-by kernel, same gate.
fn group_by(
    runtime: &Runtime,
    trips: &DatasetVersion,
    repeats: usize,
    report: &mut impl FnMut(Figure),
) -> anyhow::Result<()> {
    let rows = trips.rows() as usize;
    let plugin = runtime.load(kanon_bundled::EMISSIONS_BENCHMARK)?;
    let datasets: BTreeMap<String, DatasetVersion> = [("trips".to_owned(), trips.clone())].into();

    let wasm = best_of(repeats, || {
        let report = runtime.run(&plugin, local_request(datasets.clone(), "{}".into(), Policy::default()))?;
        match report.outcome {
            Ok(_) => Ok(()),
            Err(failure) => bail!("{failure}: {:?}", report.owner_log.error),
        }
    })?;
    let spec = plugin.manifest.outputs[0].clone();
    let native = best_of(repeats, || native_group_by(trips, &spec))?;

    let per_s = |d: Duration| rows as f64 / d.as_secs_f64();
    report(Figure { name: "groupby_wasm_rows_per_s", value: per_s(wasm), unit: "rows/s" });
    report(Figure { name: "groupby_native_rows_per_s", value: per_s(native), unit: "rows/s" });
    report(Figure {
        name: "groupby_wasm_vs_native",
        value: native.as_secs_f64() / wasm.as_secs_f64(),
        unit: "ratio",
    });
    Ok(())
}

/// Entity-isolated runs of the emissions plugin: one fresh instance per
/// driver. Over the same trips as `group_by`, side by side with a shared run
/// and a differentially private one (isolated too, with noise instead of
/// suppression); then over `small` drivers of one trip each, where the
/// per-entity cost is all there is.
fn isolation(
    runtime: &Runtime,
    vault: &Vault,
    trips: &DatasetVersion,
    small: usize,
    repeats: usize,
    report: &mut impl FnMut(Figure),
) -> anyhow::Result<()> {
    let plugin = runtime.load(kanon_bundled::EMISSIONS_BENCHMARK)?;
    let run = |dataset: &DatasetVersion, isolation, privacy| -> anyhow::Result<kanon_runtime::RunStats> {
        let datasets: BTreeMap<String, DatasetVersion> = [("trips".to_owned(), dataset.clone())].into();
        let policy = Policy { isolation, privacy, ..Policy::default() };
        let report = runtime.run(&plugin, local_request(datasets, "{}".into(), policy))?;
        match report.outcome {
            Ok(_) if report.stats.entities_failed == 0 => Ok(report.stats),
            Ok(_) => bail!("{} entities failed: {:?}", report.stats.entities_failed, report.owner_log),
            Err(failure) => bail!("{failure}: {:?}", report.owner_log.error),
        }
    };
    let mut stats = kanon_runtime::RunStats::default();
    let shared = best_of(repeats, || run(trips, Isolation::Shared, Privacy::Threshold).map(drop))?;
    let isolated = best_of(repeats, || {
        stats = run(trips, Isolation::Entity, Privacy::Threshold)?;
        Ok(())
    })?;
    let private = best_of(repeats, || run(trips, Isolation::Entity, Privacy::Dp).map(drop))?;
    report(Figure { name: "isolated_run_s", value: isolated.as_secs_f64(), unit: "s" });
    report(Figure {
        name: "isolated_vs_shared",
        value: isolated.as_secs_f64() / shared.as_secs_f64(),
        unit: "ratio",
    });
    report(Figure {
        name: "dp_vs_isolated",
        value: private.as_secs_f64() / isolated.as_secs_f64(),
        unit: "ratio",
    });
    report(Figure {
        name: "isolated_entities_per_s",
        value: stats.entities_run as f64 / isolated.as_secs_f64(),
        unit: "entities/s",
    });
    report(Figure {
        name: "isolated_instantiate_p50",
        value: stats.instantiation.as_secs_f64() * 1e6,
        unit: "us",
    });
    report(Figure {
        name: "isolated_peak_host_mib",
        value: stats.peak_host_bytes as f64 / 1048576.0,
        unit: "MiB",
    });

    let mut csv = Vec::with_capacity(small * 64);
    datagen::trips(&mut csv, small, small, 5)?;
    let reader = open_stream(
        InputFormat::Csv,
        "small",
        std::io::Cursor::new(csv),
        &IngestOptions::entity("driver_id"),
    )?;
    vault.ingest("bench", "small", WriteMode::Replace, reader, "generated")?;
    let small = vault.dataset("bench", "small", None)?;
    let time = best_of(repeats, || {
        stats = run(&small, Isolation::Entity, Privacy::Threshold)?;
        Ok(())
    })?;
    report(Figure {
        name: "isolated_small_entities_per_s",
        value: stats.entities_run as f64 / time.as_secs_f64(),
        unit: "entities/s",
    });

    // A benchmark run over five tenants of that size, isolated: under
    // thresholds (benchmark rules, subtraction rule, positions with bands)
    // and under DP (one noisy release, positions without bands).
    let benchmark = |privacy| -> anyhow::Result<()> {
        let tenants = (0..5)
            .map(|member| kanon_runtime::TenantInput {
                tenant: format!("tenant-{member}"),
                datasets: [("trips".to_owned(), small.clone())].into(),
                secret: rand::random(),
                member,
            })
            .collect();
        let policy = Policy { isolation: Isolation::Entity, privacy, ..Policy::default() };
        let request = kanon_runtime::BenchmarkRequest {
            run_id: "bench".into(),
            tenants,
            params: "{}".into(),
            policy,
            history: Default::default(),
            version: 1,
            cancel: CancelToken::new(),
        };
        match runtime.run_benchmark(&plugin, request)?.outcome {
            Ok(_) => Ok(()),
            Err(failure) => bail!("{failure}"),
        }
    };
    let threshold = best_of(repeats, || benchmark(Privacy::Threshold))?;
    let private = best_of(repeats, || benchmark(Privacy::Dp))?;
    report(Figure { name: "benchmark_5_tenants_s", value: threshold.as_secs_f64(), unit: "s" });
    report(Figure {
        name: "benchmark_dp_vs_threshold",
        value: private.as_secs_f64() / threshold.as_secs_f64(),
        unit: "ratio",
    });
    Ok(())
}

fn native_group_by(trips: &DatasetVersion, spec: &TableSpec) -> anyhow::Result<()> {
    let key = PseudonymKey::for_run(&rand::random(), b"native");
    let mut scan = Scan::new(trips.clone(), &TRIP_COLUMNS, 1 << 16, key)?;
    let mut issued = IssuedEntities::new();
    let (mut classes, mut regions) = (Vec::new(), Vec::new());
    let mut groups = Groups::default();
    let extend = |table: &mut Vec<u32>, labels: &[&str], entries: &[String]| {
        table
            .extend(entries.iter().map(|e| labels.iter().position(|l| l == e).map_or(UNKNOWN, |c| c as u32)));
    };
    while let Some(batch) = scan.next_batch()? {
        batch.new_entities.iter().for_each(|&p| {
            issued.issue(p);
        });
        let [driver, class, region, km, tonnes, litres] = batch.columns.as_slice() else {
            bail!("six columns")
        };
        let (
            BatchValues::Pseudonym(drivers),
            BatchValues::Text { new_entries: new_classes, codes: class_codes },
            BatchValues::Text { new_entries: new_regions, codes: region_codes },
            BatchValues::Float(km),
            BatchValues::Float(tonnes),
            BatchValues::Float(litres),
        ) = (&driver.values, &class.values, &region.values, &km.values, &tonnes.values, &litres.values)
        else {
            bail!("unexpected column types");
        };
        extend(&mut classes, &VEHICLE_CLASSES, new_classes);
        extend(&mut regions, &REGIONS, new_regions);
        let trips = Trips {
            drivers,
            vehicle_class: class_codes,
            vehicle_class_domain: &classes,
            region: region_codes,
            region_domain: &regions,
            distance_km: km,
            load_tonnes: tonnes,
            fuel_litres: litres,
        };
        kernel::accumulate(&mut groups, &trips, kernel::DIESEL_KG_CO2_PER_LITRE);
    }
    let gate = Gate::new(vec![spec.clone()], Policy::default(), Scope::Tenant)?;
    let mut intake = gate.intake();
    let (mut entities, mut class_keys, mut region_keys, mut co2, mut tkm) =
        (vec![], vec![], vec![], vec![], vec![]);
    for ((driver, cell), totals) in groups {
        let [c, r] = kernel::cell_keys(cell);
        entities.push(driver);
        class_keys.push(c);
        region_keys.push(r);
        co2.push(totals.co2_kg);
        tkm.push(totals.tonne_km);
    }
    let batch = Contributions {
        entities: &entities,
        dimensions: &[&class_keys, &region_keys],
        measures: &[&co2, &tkm],
    };
    intake.contribute(0, &issued, &batch)?;
    std::hint::black_box(gate.release(&[intake]));
    Ok(())
}

fn instantiation(runtime: &Runtime, count: usize, report: &mut impl FnMut(Figure)) -> anyhow::Result<()> {
    let plugin = runtime.load(kanon_bundled::ABSENCE_RATE)?;
    let mut times: Vec<Duration> = (0..count)
        .map(|_| runtime.instantiate_empty(&plugin).map_err(anyhow::Error::msg))
        .collect::<Result<_, _>>()?;
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6;
    report(Figure { name: "instantiate_p50", value: at(0.5), unit: "us" });
    report(Figure { name: "instantiate_p99", value: at(0.99), unit: "us" });
    Ok(())
}

fn compile_cache(report: &mut impl FnMut(Figure)) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = || RuntimeConfig { cache_dir: Some(dir.path().to_owned()), ..RuntimeConfig::default() };
    let timed_load = || -> anyhow::Result<(Duration, kanon_runtime::CacheOutcome)> {
        // A new runtime each time, as after a restart.
        let runtime = Runtime::new(config())?;
        let start = Instant::now();
        let plugin = runtime.load(kanon_bundled::EMISSIONS_BENCHMARK)?;
        Ok((start.elapsed(), plugin.cache))
    };
    let (cold, first) = timed_load()?;
    let (warm, second) = timed_load()?;
    if (first, second) != (kanon_runtime::CacheOutcome::Compiled, kanon_runtime::CacheOutcome::Hit) {
        bail!("expected a compile then a cache hit, got {first:?} then {second:?}");
    }
    report(Figure { name: "load_cold_compile_ms", value: cold.as_secs_f64() * 1e3, unit: "ms" });
    report(Figure { name: "load_cached_ms", value: warm.as_secs_f64() * 1e3, unit: "ms" });
    Ok(())
}

/// A bench table of `a` x `b` label cells, two measures, count, sum and ratio.
fn two_way_table(a: usize, b: usize, margins: bool) -> TableSpec {
    let labels = |n: usize| Domain::Labels((0..n).map(|i| format!("v{i}")).collect());
    let measure = |name: &str| Measure { name: name.into(), lower: 0.0, upper: 1000.0 };
    TableSpec {
        name: "bench".into(),
        description: String::new(),
        dimensions: vec![
            Dimension { name: "a".into(), domain: labels(a) },
            Dimension { name: "b".into(), domain: labels(b) },
        ],
        measures: vec![measure("x"), measure("y")],
        statistics: vec![
            Statistic::Count,
            Statistic::Sum("x".into()),
            Statistic::Ratio("x".into(), "y".into()),
        ],
        margins,
    }
}

/// `count` issued entity pseudonyms, spread like keyed-hash outputs.
fn issue_entities(count: u64) -> (IssuedEntities, Vec<u64>) {
    let mut issued = IssuedEntities::new();
    let pseudonyms: Vec<u64> = (0..count).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5555).collect();
    pseudonyms.iter().for_each(|&p| {
        issued.issue(p);
    });
    (issued, pseudonyms)
}

/// Contributions per second through the gate's contract checks and exact
/// per-entity accumulation, on one core.
fn gate(total: usize, report: &mut impl FnMut(Figure)) -> anyhow::Result<()> {
    const ENTITIES: u64 = 200_000;
    const BATCH: usize = 1 << 16;
    let spec = two_way_table(4, 5, false);
    let (issued, pseudonyms) = issue_entities(ENTITIES);
    // Each entity keeps to one cell, as real data does; rows come in random order.
    let mut rng = SmallRng::seed_from_u64(5);
    let mut entities = Vec::with_capacity(BATCH);
    let (mut a, mut b) = (Vec::with_capacity(BATCH), Vec::with_capacity(BATCH));
    let (x, y): (Vec<f64>, Vec<f64>) =
        (0..BATCH).map(|_| (rng.random_range(0.0..1200.0), rng.random_range(1.0..900.0))).unzip();
    for _ in 0..BATCH {
        let e = rng.random_range(0..ENTITIES as usize);
        entities.push(pseudonyms[e]);
        a.push((e % 4) as u32);
        b.push((e / 4 % 5) as u32);
    }
    let gate = Gate::new(vec![spec], Policy::default(), Scope::Tenant).context("bench spec")?;
    let mut intake = gate.intake();
    let batches = total.div_ceil(BATCH);
    let start = Instant::now();
    for _ in 0..batches {
        let batch = Contributions { entities: &entities, dimensions: &[&a, &b], measures: &[&x, &y] };
        intake.contribute(0, &issued, &batch)?;
    }
    let release = gate.release(std::slice::from_ref(&intake));
    let elapsed = start.elapsed();
    std::hint::black_box(release);
    report(Figure {
        name: "gate_contributions_per_s",
        value: (batches * BATCH) as f64 / elapsed.as_secs_f64(),
        unit: "contributions/s",
    });
    report(Figure {
        name: "gate_bytes_per_entity_cell",
        value: intake.table(0).bytes_per_slot() as f64,
        unit: "bytes",
    });
    Ok(())
}

/// The release rules on a table with margins: a 40 x 50 table (2 091 cells
/// with its totals) and 24 000 entities, about 12 per cell, so that about a
/// quarter of the cells fall below k, scattered, and need complements.
/// Primary rules, dominance and the exact recoverability check included.
fn gate_release(report: &mut impl FnMut(Figure)) -> anyhow::Result<()> {
    const ENTITIES: u64 = 24_000;
    let gate = Gate::new(vec![two_way_table(40, 50, true)], Policy::default(), Scope::Tenant)?;
    let mut intake = gate.intake();
    let (issued, entities) = issue_entities(ENTITIES);
    let mut rng = SmallRng::seed_from_u64(9);
    let (a, b): (Vec<u32>, Vec<u32>) =
        (0..ENTITIES).map(|_| (rng.random_range(0..40), rng.random_range(0..50))).unzip();
    let x: Vec<f64> = (0..ENTITIES).map(|i| (i % 97) as f64).collect();
    let y = vec![1.0; x.len()];
    let batch = Contributions { entities: &entities, dimensions: &[&a, &b], measures: &[&x, &y] };
    intake.contribute(0, &issued, &batch)?;
    let start = Instant::now();
    let release = gate.release(std::slice::from_ref(&intake));
    let elapsed = start.elapsed();
    let table = &release.tables[0];
    report(Figure { name: "gate_release_margins_ms", value: elapsed.as_secs_f64() * 1e3, unit: "ms" });
    report(Figure {
        name: "gate_release_margins_suppressed",
        value: table.suppressed_cells as f64,
        unit: "cells of 2091",
    });
    Ok(())
}

/// Encryption at rest on one core: sealing and opening 1 MiB chunks with a
/// tenant's data key (XChaCha20-Poly1305, address bound in).
fn sealing(mebibytes: usize, report: &mut impl FnMut(Figure)) -> anyhow::Result<()> {
    let (key, _) = KeyEncryptionKey::generate().new_data_key("bench");
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i * 31 % 251) as u8).collect();
    let address = |chunk| ChunkAddress { tenant: "bench", dataset: "trips", version: 1, chunk, column: 0 };
    let start = Instant::now();
    let sealed: Vec<Vec<u8>> = (0..mebibytes as u64).map(|i| key.seal(&address(i), &chunk)).collect();
    let seal = start.elapsed();
    let start = Instant::now();
    for (i, s) in sealed.iter().enumerate() {
        std::hint::black_box(key.open(&address(i as u64), s)?);
    }
    let open = start.elapsed();
    let per_s = |d: Duration| (mebibytes << 20) as f64 / d.as_secs_f64() / 1e6;
    report(Figure { name: "vault_seal_mb_per_s", value: per_s(seal), unit: "MB/s" });
    report(Figure { name: "vault_open_mb_per_s", value: per_s(open), unit: "MB/s" });
    Ok(())
}

/// `kanon-bench --load`: the daemon under many concurrent clients.
mod load {
    use std::collections::BTreeMap;
    use std::io::BufRead;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, ExitCode, Stdio};
    use std::sync::{Arc, Barrier, Mutex};
    use std::time::{Duration, Instant};

    use anyhow::{Context, bail};
    use kanon_client::types::{JobState, NewApproval, SubmitRequest};
    use kanon_client::{Client, ClientError, NewTenant, NewToken, Role, UploadArgs};
    use kanon_vault::KeyEncryptionKey;

    use super::{Figure, datagen};

    /// Tenants, each with its own dataset, analyst and approval.
    const TENANTS: usize = 4;
    /// Rows in each tenant's trips, by 60 drivers.
    const ROWS: usize = 400;
    /// How long a client pauses after a refused submit.
    const POLL: Duration = Duration::from_millis(50);
    /// How long a job submitted before the end may take to finish before it
    /// counts as lost.
    const DRAIN: Duration = Duration::from_secs(120);

    /// What one client saw.
    #[derive(Default)]
    struct Tally {
        submitted: Vec<String>,
        completed: usize,
        /// Requests sent: submits and waits.
        requests: usize,
        /// Jobs this client gave up on: not final by the drain deadline.
        unfinished: Vec<String>,
        submit: Vec<Duration>,
        done: Vec<Duration>,
        /// When each job was seen done, from the start.
        done_at: Vec<Duration>,
        errors: BTreeMap<String, usize>,
    }

    impl Tally {
        fn error(&mut self, what: &str, e: impl std::fmt::Display) {
            *self.errors.entry(format!("{what}: {e}")).or_default() += 1;
        }

        fn merge(&mut self, other: Tally) {
            self.submitted.extend(other.submitted);
            self.completed += other.completed;
            self.requests += other.requests;
            self.unfinished.extend(other.unfinished);
            self.submit.extend(other.submit);
            self.done.extend(other.done);
            self.done_at.extend(other.done_at);
            for (e, n) in other.errors {
                *self.errors.entry(e).or_default() += n;
            }
        }
    }

    /// A tenant: its admin's client, its analyst's token, its job submission.
    struct Tenant {
        name: String,
        admin: Client,
        analyst: String,
        submit: SubmitRequest,
    }

    /// `kanon serve` in a child process, over a temporary data directory.
    struct Served {
        child: Child,
        base: String,
        operator_token: String,
        log: PathBuf,
    }

    impl Served {
        /// Start `kanon` serving over `dir`, with jobs `cores` at once, and
        /// wait until it answers.
        fn start(kanon: &Path, dir: &Path, cores: usize) -> anyhow::Result<Self> {
            let settings = dir.join("kanon.toml");
            std::fs::write(
                &settings,
                format!("[jobs]\nconcurrent = {cores}\nper_tenant = {cores}\nqueued_per_tenant = 1000000\n"),
            )?;
            // A port the OS just handed out and nobody holds now.
            let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let log = dir.join("serve.log");
            let mut child = Command::new(kanon)
                .args(["serve", "--config"])
                .arg(&settings)
                .env("KANON_DATA_DIR", dir.join("data"))
                .env("KANON_LISTEN", format!("127.0.0.1:{port}"))
                .env("KANON_CACHE_DIR", dir.join("cache"))
                .env("KANON_KEY", KeyEncryptionKey::generate().to_hex())
                .env_remove("KANON_CONFIG")
                .env_remove("KANON_KEY_FILE")
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&log)?)
                .spawn()
                .with_context(|| format!("cannot start {}", kanon.display()))?;
            let stdout = child.stdout.take().context("the daemon's stdout")?;
            let mut served =
                Self { child, base: format!("http://127.0.0.1:{port}"), operator_token: String::new(), log };
            // A first start prints its operator token. Read on a thread
            // that keeps the pipe open while the daemon runs.
            let (sender, receiver) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut stdout = std::io::BufReader::new(stdout);
                let mut line = String::new();
                let _ = stdout.read_line(&mut line);
                let _ = sender.send(line);
                let _ = std::io::copy(&mut stdout, &mut std::io::sink());
            });
            let line = receiver.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
            let Some(token) = line.trim().strip_prefix("operator token (shown once; keep it safe): ") else {
                bail!("kanon serve printed no operator token ({line:?}): {}", served.stderr());
            };
            served.operator_token = token.to_owned();
            let deadline = Instant::now() + Duration::from_secs(60);
            while Client::new(&served.base, None).health().is_err() {
                if let Some(status) = served.child.try_wait()? {
                    bail!("kanon serve exited with {status}: {}", served.stderr());
                }
                if Instant::now() > deadline {
                    bail!("kanon serve did not answer: {}", served.stderr());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(served)
        }

        fn stderr(&self) -> String {
            String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
        }

        /// SIGTERM, as an operator stops it, then wait for it to exit.
        fn stop(mut self) -> anyhow::Result<()> {
            let pid = self.child.id().to_string();
            Command::new("kill").args(["-TERM", &pid]).status().context("cannot run kill")?;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(status) = self.child.try_wait()? {
                    if !status.success() {
                        bail!("kanon serve exited with {status}: {}", self.stderr());
                    }
                    return Ok(());
                }
                if Instant::now() > deadline {
                    bail!("kanon serve did not stop within 30 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    impl Drop for Served {
        fn drop(&mut self) {
            // Stopped already, or the bench failed: no daemon outlives it.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// The `kanon` binary beside this one.
    fn kanon_beside() -> anyhow::Result<PathBuf> {
        let me = std::env::current_exe().context("cannot find this binary")?;
        let kanon = me.with_file_name(format!("kanon{}", std::env::consts::EXE_SUFFIX));
        if !kanon.is_file() {
            bail!(
                "no kanon binary at {}: build it (cargo build --release --workspace) or give --kanon PATH",
                kanon.display()
            );
        }
        Ok(kanon)
    }

    pub(super) fn run(
        kanon: Option<PathBuf>,
        seconds: u64,
        clients: usize,
        report: &mut impl FnMut(Figure),
    ) -> anyhow::Result<ExitCode> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let kanon = match kanon {
            Some(path) => path,
            None => kanon_beside()?,
        };
        let dir = tempfile::tempdir()?;
        let daemon = Served::start(&kanon, dir.path(), cores)?;
        let base = daemon.base.clone();
        let operator = Client::new(&base, Some(daemon.operator_token.clone()));
        let tenants = (0..TENANTS)
            .map(|i| tenant(&operator, &format!("load{i}"), i as u64))
            .collect::<Result<Vec<_>, _>>()?;
        eprintln!(
            "{} serving on {base} (pid {}): {TENANTS} tenants of {ROWS} rows, jobs {cores} at once; \
             {clients} clients for {seconds} s",
            kanon.display(),
            daemon.child.id()
        );

        let tenants = Arc::new(tenants);
        let start = Arc::new(Barrier::new(clients + 1));
        let total = Arc::new(Mutex::new(Tally::default()));
        let threads: Vec<_> = (0..clients)
            .map(|i| {
                let (tenants, start, total) = (tenants.clone(), start.clone(), total.clone());
                std::thread::Builder::new()
                    .name(format!("client-{i}"))
                    .spawn(move || {
                        let tenant = &tenants[i % TENANTS];
                        // Its own client, as a separate process would have.
                        let analyst = Client::new(tenant.admin.base(), Some(tenant.analyst.clone()));
                        start.wait();
                        let tally =
                            client(&analyst, &tenant.submit, Instant::now(), Duration::from_secs(seconds));
                        total.lock().expect("lock").merge(tally);
                    })
                    .context("cannot start a client thread")
            })
            .collect::<anyhow::Result<_>>()?;
        start.wait();
        let began = Instant::now();
        // A request that reads nothing, every 100 ms: how long a request
        // waits for the daemon's threads at all.
        let probe = Client::new(&base, None);
        let end = began + Duration::from_secs(seconds);
        let mut health = Vec::new();
        while Instant::now() < end {
            let sent = Instant::now();
            if probe.health().is_ok() {
                health.push(sent.elapsed());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for thread in threads {
            if thread.join().is_err() {
                bail!("a client thread panicked");
            }
        }
        let elapsed = began.elapsed();
        let mut tally = std::mem::take(&mut *total.lock().expect("lock"));

        // The daemon's own account: every submitted job there and final.
        let mut lost = tally.unfinished.len();
        let mut known = 0;
        // What the daemon says of the jobs whose end no client saw: whether
        // they never ended or their waiters were not told.
        let mut unfinished_states: BTreeMap<&str, usize> = BTreeMap::new();
        for tenant in tenants.iter() {
            let jobs = tenant.admin.tenant_jobs(&tenant.name)?;
            known += jobs.len();
            for job in jobs.iter().filter(|j| tally.unfinished.contains(&j.id)) {
                *unfinished_states.entry(job.state.name()).or_default() += 1;
            }
            lost += jobs.iter().filter(|j| !j.state.is_final() && !tally.unfinished.contains(&j.id)).count();
            let export = tenant.admin.tenant_audit(&tenant.name)?;
            if let Err(e) = kanon_daemon::verify(&tenant.name, &export.entries, &export.head) {
                tally.error("audit chain", format!("{}: {e:?}", tenant.name));
            }
        }
        if known != tally.submitted.len() {
            tally.error(
                "daemon's job count",
                format!("{known} jobs, clients submitted {}", tally.submitted.len()),
            );
            lost += tally.submitted.len().saturating_sub(known);
        }
        daemon.stop()?;

        let errors: usize = tally.errors.values().sum();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let at = |times: &mut Vec<Duration>, q: f64| {
            times.sort();
            times.get(((times.len().max(1) - 1) as f64 * q).round() as usize).map_or(f64::NAN, |d| ms(*d))
        };
        report(Figure { name: "load_clients", value: clients as f64, unit: "threads" });
        report(Figure {
            name: "load_seconds",
            value: elapsed.as_secs_f64(),
            unit: "s, submitting and draining",
        });
        report(Figure { name: "load_jobs_submitted", value: tally.submitted.len() as f64, unit: "jobs" });
        report(Figure { name: "load_jobs_completed", value: tally.completed as f64, unit: "jobs" });
        report(Figure { name: "load_errors", value: errors as f64, unit: "errors" });
        report(Figure { name: "load_lost_jobs", value: lost as f64, unit: "jobs" });
        report(Figure {
            name: "load_jobs_per_s",
            value: tally.completed as f64 / elapsed.as_secs_f64(),
            unit: "jobs/s",
        });
        report(Figure {
            name: "load_requests_per_s",
            value: tally.requests as f64 / elapsed.as_secs_f64(),
            unit: "requests/s, submits and waits",
        });
        // Whether the rate holds as jobs pile up in the control database.
        let quarter = Duration::from_secs(seconds).max(Duration::from_secs(4)) / 4;
        let rate = |from: Duration| {
            let done = tally.done_at.iter().filter(|at| (from..from + quarter).contains(at)).count();
            done as f64 / quarter.as_secs_f64()
        };
        report(Figure { name: "load_jobs_per_s_first_quarter", value: rate(Duration::ZERO), unit: "jobs/s" });
        report(Figure {
            name: "load_jobs_per_s_last_quarter",
            value: rate(Duration::from_secs(seconds).saturating_sub(quarter)),
            unit: "jobs/s",
        });
        report(Figure { name: "load_submit_p50", value: at(&mut tally.submit, 0.5), unit: "ms" });
        report(Figure { name: "load_submit_p99", value: at(&mut tally.submit, 0.99), unit: "ms" });
        report(Figure {
            name: "load_done_p50",
            value: at(&mut tally.done, 0.5),
            unit: "ms, submit to seen done",
        });
        report(Figure {
            name: "load_done_p99",
            value: at(&mut tally.done, 0.99),
            unit: "ms, submit to seen done",
        });
        report(Figure { name: "load_health_p50", value: at(&mut health, 0.5), unit: "ms, GET /health" });
        report(Figure { name: "load_health_p99", value: at(&mut health, 0.99), unit: "ms, GET /health" });
        for (error, count) in &tally.errors {
            eprintln!("error x{count}: {error}");
        }
        if errors > 0 || lost > 0 {
            eprintln!("the load run had {errors} errors and {lost} lost jobs");
            if !unfinished_states.is_empty() {
                eprintln!("jobs no client saw end, by their state in the daemon: {unfinished_states:?}");
            }
            // The evidence: the daemon's data directory and its log.
            eprintln!("kept for a look: {}", dir.keep().display());
            return Ok(ExitCode::FAILURE);
        }
        Ok(ExitCode::SUCCESS)
    }

    /// A tenant with its trips, an admin, an analyst and an approval of the
    /// emissions plugin.
    fn tenant(operator: &Client, name: &str, seed: u64) -> anyhow::Result<Tenant> {
        let created =
            operator.create_tenant(&NewTenant { name: name.to_owned(), enrolment_ttl_secs: None })?;
        let (admin, _) = operator.enrol(&created.enrolment.code, &format!("{name}-admin"), None)?;
        let analyst_name = format!("{name}-analyst");
        let issued = operator.issue_token(&NewToken {
            role: Role::Analyst,
            name: analyst_name.clone(),
            tenant: None,
            ttl_secs: None,
        })?;
        let analyst = operator.with_token(Some(issued.token.clone()));
        let mut csv = Vec::new();
        datagen::trips(&mut csv, ROWS, 60, seed)?;
        let upload =
            UploadArgs { format: "csv".into(), entity: Some("driver_id".into()), ..UploadArgs::default() };
        admin.ingest(name, "trips", &upload, std::io::Cursor::new(csv))?;
        let plugin = analyst.upload_plugin(kanon_bundled::EMISSIONS_BENCHMARK)?;
        let approval = admin
            .grant_approval(name, &NewApproval::covering(&plugin, &analyst_name, |_| "trips".to_owned()))?;
        let input = plugin.manifest.inputs.first().context("an input")?;
        let submit = SubmitRequest {
            tenant: name.to_owned(),
            plugin: plugin.hash,
            approval: approval.id,
            datasets: BTreeMap::from([(input.name.clone(), "trips".to_owned())]),
            params: None,
            policy: None,
        };
        Ok(Tenant { name: name.to_owned(), admin, analyst: issued.token, submit })
    }

    /// Submit a job, wait for it (the daemon's long poll) until it is done,
    /// again, for `seconds` from `began`.
    fn client(analyst: &Client, submit: &SubmitRequest, began: Instant, seconds: Duration) -> Tally {
        let end = began + seconds;
        let mut tally = Tally::default();
        while Instant::now() < end {
            let submitted = Instant::now();
            tally.requests += 1;
            let job = match analyst.submit_job(submit) {
                Ok(job) => job,
                Err(e) => {
                    tally.error("submit", describe(&e));
                    std::thread::sleep(POLL);
                    continue;
                }
            };
            tally.submit.push(submitted.elapsed());
            tally.submitted.push(job.id.clone());
            let deadline = Instant::now().max(end) + DRAIN;
            loop {
                tally.requests += 1;
                let wait = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
                let asked = Instant::now();
                match analyst.wait_job(&job.id, wait) {
                    Ok(now) if now.state == JobState::Succeeded => {
                        tally.done.push(submitted.elapsed());
                        tally.done_at.push(began.elapsed());
                        tally.completed += 1;
                        break;
                    }
                    Ok(now) if now.state.is_final() => {
                        tally.error("job", format!("{} ({:?})", now.state.name(), now.failure));
                        break;
                    }
                    // Answered at once though not ended: the daemon's wait
                    // budget was full. Pause before asking again.
                    Ok(_) => std::thread::sleep(POLL.saturating_sub(asked.elapsed())),
                    Err(e) => {
                        tally.error("wait", describe(&e));
                        std::thread::sleep(POLL);
                    }
                }
                if Instant::now() > deadline {
                    tally.unfinished.push(job.id.clone());
                    break;
                }
            }
        }
        tally
    }

    /// An error without the parts that differ per call (ids).
    fn describe(e: &ClientError) -> String {
        match e {
            ClientError::Api { status, code, message } => {
                let message: String = message.split('`').step_by(2).collect::<Vec<_>>().join("`…`");
                format!("HTTP {status} {code}: {message}")
            }
            other => other.to_string(),
        }
    }
}
