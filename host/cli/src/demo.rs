//! `kanon demo`: generate realistic data, then run both bundled plugins over
//! it exactly as `kanon run` would, printing the gated tables.

use std::io::BufWriter;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use kanon_gate::Policy;
use kanon_runtime::LoadedPlugin;

use crate::{datagen, runner};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Trips to generate.
    #[arg(long, default_value_t = 1_000_000)]
    trips: usize,
    /// Drivers making them.
    #[arg(long, default_value_t = 2_000)]
    drivers: usize,
    /// Employees in the HR data.
    #[arg(long, default_value_t = 5_000)]
    employees: usize,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

pub fn run(args: DemoArgs, cache_dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let trips = dir.path().join("trips.csv");
    let employees = dir.path().join("employees.csv");
    let started = Instant::now();
    datagen::trips(&mut BufWriter::new(std::fs::File::create(&trips)?), args.trips, args.drivers, 7)?;
    datagen::employees(&mut BufWriter::new(std::fs::File::create(&employees)?), args.employees, 11)?;
    if !args.json {
        println!(
            "Generated {} trips by {} drivers and {} HR records in {:.1} s ({}).\n",
            args.trips,
            args.drivers,
            args.employees,
            started.elapsed().as_secs_f64(),
            dir.path().display()
        );
    }

    let runtime = runner::runtime(cache_dir)?;
    let bundled: [(&[u8], String, Vec<String>); 2] = [
        (
            kanon_artifacts::EMISSIONS_BENCHMARK,
            format!("trips={}", trips.display()),
            vec!["driver_id".into()],
        ),
        (
            kanon_artifacts::ABSENCE_RATE,
            format!("employees={}", employees.display()),
            vec!["employee_id".into()],
        ),
    ];
    let mut code = ExitCode::SUCCESS;
    for (bytes, data, entity) in bundled {
        let plugin: LoadedPlugin = runtime.load(bytes).context("a bundled plugin was refused")?;
        let identifiers = vec!["employees=manager_id".to_owned()];
        let datasets = runner::read_datasets(&[data], &entity, &identifiers)?;
        let request = runner::local_request(datasets, "{}".into(), Policy::default());
        let report = runtime.run(&plugin, request)?;
        if !args.json {
            println!("== {}: {}", plugin.manifest.name, plugin.manifest.description);
        }
        if runner::print_report(&plugin, &report, args.json, false) != ExitCode::SUCCESS {
            code = ExitCode::from(runner::EXIT_RUN_FAILED);
        }
        if !args.json {
            println!();
        }
    }
    Ok(code)
}
