//! `kanon benchmarks` (the daemon's `benchmarks` API): the vendor publishes, runs and reads versions; a
//! tenant admin reads the manifest, joins with its own dataset, leaves, and
//! reads its own position.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use kanon_client::Client;
use kanon_client::types::{
    Benchmark, BenchmarkRun, BenchmarkView, DatasetMapping, JobState, NewBenchmark, OptIn, OptInRequest,
};
use kanon_gate::Manifest;
use serde_json::Value;

use super::Connection;
use super::jobs::{follow_with, print_log};
use super::output::{at, duration_secs, escaped, escaped_or_dash, or_dash, print_record, print_table, show};

#[derive(Debug, Args)]
pub struct BenchmarksArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: BenchmarksCommand,
}

#[derive(Debug, Subcommand)]
enum BenchmarksCommand {
    /// Publish a benchmark over an uploaded plugin (vendor).
    Publish {
        name: String,
        /// The plugin's hash (`kanon plugins upload` prints it).
        #[arg(long)]
        plugin: String,
        #[arg(long, default_value = "")]
        description: String,
        /// The plugin's parameters, the same for every tenant (a JSON object).
        #[arg(long, default_value = "{}")]
        params: String,
        /// Run on a schedule: every 24h, 7d; on demand only if absent.
        #[arg(long)]
        every: Option<String>,
    },
    /// Benchmarks: your own (vendor), or every one (tenant admin, operator).
    List,
    /// A benchmark's manifest: the datasets and columns to map, the tables.
    Show { name: String },
    /// Retire a benchmark (vendor): no more runs or opt-ins; its versions stay.
    Retire { name: String },
    /// Opt in with your own data (tenant admin). Datasets and columns
    /// default to the manifest's names.
    Join {
        name: String,
        #[arg(long)]
        tenant: String,
        /// MANIFEST_DATASET=YOUR_DATASET; repeatable.
        #[arg(long = "dataset", value_name = "NAME=DATASET")]
        datasets: Vec<String>,
        /// MANIFEST_DATASET.COLUMN=YOUR_COLUMN; repeatable.
        #[arg(long = "column", value_name = "NAME.COLUMN=COLUMN")]
        columns: Vec<String>,
    },
    /// Opt out (tenant admin): no later run reads your data.
    Leave {
        name: String,
        #[arg(long)]
        tenant: String,
    },
    /// Queue a run (vendor); with --wait, follow it and print the version.
    Run {
        name: String,
        #[arg(long)]
        wait: bool,
    },
    /// A benchmark's runs (vendor, operator).
    Runs { name: String },
    /// Cancel a run (vendor, operator): a queued one never starts, a
    /// running one is interrupted; neither releases anything.
    Cancel { name: String, run: String },
    /// The versions in the meta data vault (vendor, operator).
    Versions { name: String },
    /// A version's released tables (vendor, operator).
    Table {
        name: String,
        /// A version number, or `latest`.
        #[arg(long, default_value = "latest")]
        version: String,
        /// text (default), json, csv or parquet.
        #[arg(long, default_value = "text")]
        format: String,
        /// The file; stdout if absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Your own position in a version (tenant admin): the peers' values,
    /// your own, and your band.
    Position {
        name: String,
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value = "latest")]
        version: String,
    },
    /// What the plugin printed in your instance of a run (tenant admin).
    Log {
        run: String,
        #[arg(long)]
        tenant: String,
    },
}

pub fn benchmarks(args: BenchmarksArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let json_out = args.conn.json;
    let list_header = ["name", "vendor", "plugin", "schedule", "tenants", "versions", "you"];
    match args.command {
        BenchmarksCommand::Publish { name, plugin, description, params, every } => {
            let params: Value = serde_json::from_str(&params).context("--params is not JSON")?;
            let every_hours = every.map(|e| duration_secs(&e).map(|s| s.div_ceil(3600))).transpose()?;
            let new = NewBenchmark {
                name,
                plugin,
                description,
                params: Some(params),
                // Past u32, the daemon's own bound (a year) refuses it.
                every_hours: every_hours.map(|h| u32::try_from(h).unwrap_or(u32::MAX)),
            };
            let published = client.publish_benchmark(&new)?;
            show(json_out, &published, &["name", "plugin", "schedule"], || {
                vec![vec![escaped(&published.name), short(&published.plugin), schedule(&published)]]
            })
        }
        BenchmarksCommand::List => {
            let views = client.list_benchmarks()?;
            show(json_out, &views, &list_header, || views.iter().map(list_row).collect())
        }
        BenchmarksCommand::Show { name } => {
            let shown = client.benchmark(&name)?;
            if json_out {
                print_record(&shown)?;
            } else {
                print_table(&list_header, vec![list_row(&shown)]);
                print_manifest(&shown.manifest);
            }
            Ok(ExitCode::SUCCESS)
        }
        BenchmarksCommand::Retire { name } => {
            let retired = client.retire_benchmark(&name)?;
            show(json_out, &retired, &list_header[..4], || {
                vec![vec![
                    escaped(&retired.name),
                    escaped(&retired.vendor),
                    short(&retired.plugin),
                    schedule(&retired),
                ]]
            })
        }
        BenchmarksCommand::Join { name, tenant, datasets, columns } => {
            let shown = client.benchmark(&name)?;
            let datasets = mapping(&shown.manifest, &datasets, &columns)?;
            let joined = client.opt_in(&tenant, &name, &OptInRequest { datasets })?;
            show(json_out, &joined, &OPT_IN_HEADER, || vec![opt_in_row(&joined)])
        }
        BenchmarksCommand::Leave { name, tenant } => {
            let left = client.opt_out(&tenant, &name)?;
            show(json_out, &left, &OPT_IN_HEADER, || vec![opt_in_row(&left)])
        }
        BenchmarksCommand::Run { name, wait } => {
            let run = client.run_benchmark(&name)?;
            if !wait {
                return show(json_out, &run, &RUN_HEADER, || vec![run_row(&run)]);
            }
            let id = run.id;
            let run = follow_with(
                |wait| client.wait_benchmark_run(&name, &id, wait),
                |run| run.state,
                &format!("run {id}"),
                !json_out,
            )?;
            if run.state != JobState::Succeeded {
                if json_out {
                    print_record(&run)?;
                } else {
                    let state = run.state.name();
                    match &run.failure {
                        Some(failure) => eprintln!("run {id} {state}: {failure}; nothing was released"),
                        None => eprintln!("run {id} {state}; nothing was released"),
                    }
                }
                return Ok(ExitCode::from(crate::local::run::EXIT_RUN_FAILED));
            }
            print_version(&client, &name, &or_dash(run.version), json_out)?;
            Ok(ExitCode::SUCCESS)
        }
        BenchmarksCommand::Runs { name } => {
            let runs = client.benchmark_runs(&name)?;
            show(json_out, &runs, &RUN_HEADER, || runs.iter().map(run_row).collect())
        }
        BenchmarksCommand::Cancel { name, run } => {
            let run = client.cancel_benchmark_run(&name, &run)?;
            show(json_out, &run, &RUN_HEADER, || vec![run_row(&run)])
        }
        BenchmarksCommand::Versions { name } => {
            let versions = client.benchmark_versions(&name)?;
            show(
                json_out,
                &versions,
                &["version", "released", "tenants", "cells", "suppressed", "held"],
                || {
                    versions
                        .iter()
                        .map(|v| {
                            vec![
                                v.version.to_string(),
                                at(Some(v.released_ms)),
                                v.participants.to_string(),
                                v.cells.to_string(),
                                v.suppressed_cells.to_string(),
                                v.held_cells.to_string(),
                            ]
                        })
                        .collect()
                },
            )
        }
        BenchmarksCommand::Table { name, version, format, out } => {
            let body = match format.as_str() {
                "text" if out.is_none() => {
                    return print_version(&client, &name, &version, json_out).map(|_| ExitCode::SUCCESS);
                }
                "json" | "csv" | "parquet" => client.benchmark_version_as(&name, &version, &format)?,
                _ => bail!("--format: text, json, csv or parquet"),
            };
            match out {
                Some(file) => {
                    std::fs::write(&file, body).with_context(|| format!("cannot write {}", file.display()))?
                }
                None => {
                    use std::io::Write;
                    std::io::stdout().write_all(&body)?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        BenchmarksCommand::Position { name, tenant, version } => {
            let view = client.own_position(&tenant, &name, &version)?;
            if json_out {
                print_record(&view)?;
            } else {
                println!("{tenant} in {name} version {}:", view.version);
                print!("{}", crate::render::position_text(&view.position));
            }
            Ok(ExitCode::SUCCESS)
        }
        BenchmarksCommand::Log { run, tenant } => {
            print_log(&client.benchmark_run_log(&tenant, &run)?, json_out)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

const RUN_HEADER: [&str; 8] = ["id", "state", "failure", "tenants", "version", "rho", "submitted", "by"];

const OPT_IN_HEADER: [&str; 4] = ["benchmark", "tenant", "datasets", "since"];

fn run_row(run: &BenchmarkRun) -> Vec<String> {
    vec![
        escaped(&run.id),
        run.state.name().into(),
        escaped_or_dash(run.failure.as_deref()),
        or_dash(run.participants),
        match (run.version, &run.replay_of) {
            (Some(version), Some(_)) => format!("{version} (replay)"),
            (version, _) => or_dash(version),
        },
        if run.rho_charged_nanos == 0 { "-".into() } else { kanon_client::rho_text(run.rho_charged_nanos) },
        at(Some(run.submitted_ms)),
        escaped(&run.trigger),
    ]
}

fn short(hash: &str) -> String {
    escaped(hash).chars().take(12).collect()
}

fn schedule(benchmark: &Benchmark) -> String {
    if benchmark.retired_ms.is_some() {
        return "retired".into();
    }
    benchmark.every_hours.map_or("on demand".into(), |h| format!("every {h}h"))
}

fn list_row(view: &BenchmarkView) -> Vec<String> {
    let b = &view.benchmark;
    let you = match &view.opt_in {
        None => "-",
        Some(o) if o.active() => "in",
        Some(_) => "left",
    };
    vec![
        escaped(&b.name),
        escaped(&b.vendor),
        format!("{} {}", escaped(&view.manifest.name), short(&b.plugin)),
        schedule(b),
        view.participants.to_string(),
        b.versions.to_string(),
        you.into(),
    ]
}

fn opt_in_row(o: &OptIn) -> Vec<String> {
    let datasets: Vec<String> =
        o.datasets.iter().map(|(k, v)| format!("{k}={}", escaped(&v.dataset))).collect();
    let state = if o.active() { at(Some(o.opted_in_ms)) } else { "left".into() };
    vec![escaped(&o.benchmark), escaped(&o.tenant), datasets.join(","), state]
}

/// What a tenant must provide, and what comes out.
fn print_manifest(manifest: &Manifest) {
    println!("\n{}: {}", escaped(&manifest.name), escaped(&manifest.description));
    for input in &manifest.inputs {
        println!("\nreads dataset `{}`:", escaped(&input.name));
        let rows =
            input.columns.iter().map(|c| vec![escaped(&c.name), c.column_type.name().into()]).collect();
        print_table(&["column", "type"], rows);
    }
    for output in &manifest.outputs {
        let dims: Vec<String> = output.dimensions.iter().map(|d| escaped(&d.name)).collect();
        println!("\nreleases table `{}` by {}", escaped(&output.name), dims.join(" x "));
    }
}

/// The opt-in's mapping from `--dataset` and `--column` flags: every
/// dataset the manifest reads, by default to the tenant's of that name.
fn mapping(
    manifest: &Manifest,
    datasets: &[String],
    columns: &[String],
) -> anyhow::Result<BTreeMap<String, DatasetMapping>> {
    let mut mapped: BTreeMap<String, DatasetMapping> = manifest
        .inputs
        .iter()
        .map(|input| {
            (input.name.clone(), DatasetMapping { dataset: input.name.clone(), columns: BTreeMap::new() })
        })
        .collect();
    for spec in datasets {
        let (name, dataset) =
            spec.split_once('=').with_context(|| format!("--dataset takes NAME=DATASET, got `{spec}`"))?;
        let entry =
            mapped.get_mut(name).with_context(|| format!("the benchmark reads no dataset `{name}`"))?;
        entry.dataset = dataset.to_owned();
    }
    for spec in columns {
        let (from, column) = spec
            .split_once('=')
            .and_then(|(from, column)| Some((from.split_once('.')?, column)))
            .with_context(|| format!("--column takes NAME.COLUMN=COLUMN, got `{spec}`"))?;
        let entry =
            mapped.get_mut(from.0).with_context(|| format!("the benchmark reads no dataset `{}`", from.0))?;
        entry.columns.insert(from.1.to_owned(), column.to_owned());
    }
    Ok(mapped)
}

/// A version as text (or JSON).
fn print_version(client: &Client, benchmark: &str, version: &str, json_out: bool) -> anyhow::Result<()> {
    let stored = client.benchmark_version(benchmark, version)?;
    if json_out {
        return print_record(&stored);
    }
    println!("{benchmark} version {} ({} tenants)", stored.version, stored.participants);
    print!("{}", crate::render::release_text(&stored.release));
    Ok(())
}
