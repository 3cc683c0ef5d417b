//! `kanon benchmarks` (the daemon's `benchmarks` API): the vendor publishes, runs and reads versions; a
//! tenant admin reads the manifest, joins with its own dataset, leaves, and
//! reads its own position.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use kanon_client::Client;
use serde_json::{Value, json};

use super::Connection;
use super::jobs::{follow_with, print_log};
use super::output::{duration_secs, list_of, print_json, print_table, show, text, when};

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
            let body = json!({"name": name, "plugin": plugin, "description": description, "params": params,
                              "every_hours": every_hours});
            let published: Value = client.publish_benchmark(&body)?;
            show(json_out, published, &["name", "plugin", "schedule"], |b| {
                vec![text(&b["name"]), short(&b["plugin"]), schedule(b)]
            })
        }
        BenchmarksCommand::List => show(json_out, client.list_benchmarks()?, &list_header, list_row),
        BenchmarksCommand::Show { name } => {
            let shown: Value = client.benchmark(&name)?;
            if json_out {
                print_json(&shown)?;
            } else {
                print_table(&list_header, vec![list_row(&shown)]);
                print_manifest(&shown["manifest"]);
            }
            Ok(ExitCode::SUCCESS)
        }
        BenchmarksCommand::Retire { name } => {
            show(json_out, client.retire_benchmark(&name)?, &list_header[..4], |b| {
                vec![text(&b["name"]), text(&b["vendor"]), short(&b["plugin"]), schedule(b)]
            })
        }
        BenchmarksCommand::Join { name, tenant, datasets, columns } => {
            let shown: Value = client.benchmark(&name)?;
            let mapping = mapping(&shown["manifest"], &datasets, &columns)?;
            let joined: Value = client.opt_in(&tenant, &name, &json!({"datasets": mapping}))?;
            show(json_out, joined, &["benchmark", "tenant", "datasets", "since"], opt_in_row)
        }
        BenchmarksCommand::Leave { name, tenant } => {
            let left: Value = client.opt_out(&tenant, &name)?;
            show(json_out, left, &["benchmark", "tenant", "datasets", "since"], opt_in_row)
        }
        BenchmarksCommand::Run { name, wait } => {
            let run: Value = client.run_benchmark(&name)?;
            let id = text(&run["id"]);
            if !wait {
                return show(json_out, run, &RUN_HEADER, run_row);
            }
            let run = follow_with(
                |wait| client.wait_benchmark_run(&name, &id, wait),
                &format!("run {id}"),
                !json_out,
            )?;
            if run["state"] != "succeeded" {
                if json_out {
                    print_json(&run)?;
                } else {
                    let state = text(&run["state"]);
                    match run["failure"].as_str() {
                        Some(failure) => eprintln!("run {id} {state}: {failure}; nothing was released"),
                        None => eprintln!("run {id} {state}; nothing was released"),
                    }
                }
                return Ok(ExitCode::from(crate::local::run::EXIT_RUN_FAILED));
            }
            print_version(&client, &name, &text(&run["version"]), json_out)?;
            Ok(ExitCode::SUCCESS)
        }
        BenchmarksCommand::Runs { name } => {
            show(json_out, client.benchmark_runs(&name)?, &RUN_HEADER, run_row)
        }
        BenchmarksCommand::Cancel { name, run } => {
            show(json_out, client.cancel_benchmark_run(&name, &run)?, &RUN_HEADER, run_row)
        }
        BenchmarksCommand::Versions { name } => show(
            json_out,
            client.benchmark_versions(&name)?,
            &["version", "released", "tenants", "cells", "suppressed", "held"],
            |v| {
                vec![
                    text(&v["version"]),
                    when(&v["released_ms"]),
                    text(&v["participants"]),
                    text(&v["cells"]),
                    text(&v["suppressed_cells"]),
                    text(&v["held_cells"]),
                ]
            },
        ),
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
            let view: Value = client.own_position(&tenant, &name, &version)?;
            if json_out {
                print_json(&view)?;
            } else {
                let position: kanon_gate::OwnPosition = serde_json::from_value(view["position"].clone())?;
                println!("{tenant} in {name} version {}:", text(&view["version"]));
                print!("{}", crate::render::position_text(&position));
            }
            Ok(ExitCode::SUCCESS)
        }
        BenchmarksCommand::Log { run, tenant } => {
            let log: Value = client.benchmark_run_log(&tenant, &run)?;
            print_log(&log, json_out)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

const RUN_HEADER: [&str; 7] = ["id", "state", "failure", "tenants", "version", "submitted", "by"];

fn run_row(run: &Value) -> Vec<String> {
    vec![
        text(&run["id"]),
        text(&run["state"]),
        text(&run["failure"]),
        text(&run["participants"]),
        text(&run["version"]),
        when(&run["submitted_ms"]),
        text(&run["trigger"]),
    ]
}

fn short(hash: &Value) -> String {
    text(hash).chars().take(12).collect()
}

fn schedule(benchmark: &Value) -> String {
    if !benchmark["retired_ms"].is_null() {
        return "retired".into();
    }
    benchmark["every_hours"].as_u64().map_or("on demand".into(), |h| format!("every {h}h"))
}

fn list_row(view: &Value) -> Vec<String> {
    let b = &view["benchmark"];
    let you = match &view["opt_in"] {
        Value::Null => "-",
        o if o["opted_out_ms"].is_null() => "in",
        _ => "left",
    };
    vec![
        text(&b["name"]),
        text(&b["vendor"]),
        format!("{} {}", text(&view["manifest"]["name"]), short(&b["plugin"])),
        schedule(b),
        text(&view["participants"]),
        text(&b["versions"]),
        you.into(),
    ]
}

fn opt_in_row(o: &Value) -> Vec<String> {
    let datasets: Vec<String> = o["datasets"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", text(&v["dataset"]))).collect())
        .unwrap_or_default();
    let state = if o["opted_out_ms"].is_null() { when(&o["opted_in_ms"]) } else { "left".into() };
    vec![text(&o["benchmark"]), text(&o["tenant"]), datasets.join(","), state]
}

/// What a tenant must provide, and what comes out.
fn print_manifest(manifest: &Value) {
    println!("\n{}: {}", text(&manifest["name"]), text(&manifest["description"]));
    for input in list_of(manifest["inputs"].clone()) {
        println!("\nreads dataset `{}`:", text(&input["name"]));
        let rows = list_of(input["columns"].clone())
            .iter()
            .map(|c| vec![text(&c["name"]), text(&c["column_type"])])
            .collect();
        print_table(&["column", "type"], rows);
    }
    for output in list_of(manifest["outputs"].clone()) {
        let dims: Vec<String> =
            list_of(output["dimensions"].clone()).iter().map(|d| text(&d["name"])).collect();
        println!("\nreleases table `{}` by {}", text(&output["name"]), dims.join(" x "));
    }
}

/// The request body's mapping from `--dataset` and `--column` flags.
fn mapping(manifest: &Value, datasets: &[String], columns: &[String]) -> anyhow::Result<Value> {
    let mut mapped: BTreeMap<String, Value> = BTreeMap::new();
    for input in list_of(manifest["inputs"].clone()) {
        let name = text(&input["name"]);
        mapped.insert(name.clone(), json!({"dataset": name, "columns": {}}));
    }
    for spec in datasets {
        let (name, dataset) =
            spec.split_once('=').with_context(|| format!("--dataset takes NAME=DATASET, got `{spec}`"))?;
        let entry =
            mapped.get_mut(name).with_context(|| format!("the benchmark reads no dataset `{name}`"))?;
        entry["dataset"] = json!(dataset);
    }
    for spec in columns {
        let (from, column) = spec
            .split_once('=')
            .and_then(|(from, column)| Some((from.split_once('.')?, column)))
            .with_context(|| format!("--column takes NAME.COLUMN=COLUMN, got `{spec}`"))?;
        let entry =
            mapped.get_mut(from.0).with_context(|| format!("the benchmark reads no dataset `{}`", from.0))?;
        entry["columns"][from.1] = json!(column);
    }
    Ok(json!(mapped))
}

/// A version as text (or JSON).
fn print_version(client: &Client, benchmark: &str, version: &str, json_out: bool) -> anyhow::Result<()> {
    let stored: Value = client.benchmark_version(benchmark, version)?;
    if json_out {
        return print_json(&stored);
    }
    let release: kanon_gate::Release = serde_json::from_value(stored["release"].clone())?;
    println!("{benchmark} version {} ({} tenants)", text(&stored["version"]), text(&stored["participants"]));
    print!("{}", crate::render::release_text(&release));
    Ok(())
}
