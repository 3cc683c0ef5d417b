//! `kanon run` and `kanon manifest`: any plugin over local files or a
//! tenant's stored datasets, through the same sandbox and gate as every
//! other run. Local files go through the vault too: ingested into a
//! temporary one by the same readers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use kanon_gate::{DpLayer, Isolation, Policy, PolicyLayer, Privacy};
use kanon_runtime::{
    CancelToken, CompileLimits, CompileWorker, LoadedPlugin, RunReport, RunRequest, Runtime, RuntimeConfig,
};
use kanon_vault::{DatasetVersion, IngestOptions, Vault, WriteMode, open_file};

use crate::local::vault::VaultArgs;
use crate::render;

/// Exit code of a run whose plugin failed.
pub const EXIT_RUN_FAILED: u8 = 3;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The plugin component (.wasm, built for wasm32-wasip2).
    #[arg(long)]
    plugin: PathBuf,
    /// A local file the plugin reads (.csv, .jsonl, .parquet, .arrow), as NAME=FILE; repeat
    /// for more.
    #[arg(long = "data", value_name = "NAME=FILE", required_unless_present = "tenant")]
    data: Vec<String>,
    /// The entity column of --data files (the person or customer group
    /// sizes count): COLUMN for every dataset, or NAME=COLUMN for one.
    #[arg(long, value_name = "[NAME=]COLUMN", requires = "data")]
    entity: Vec<String>,
    /// Another identifier column, pseudonymised like the entity: COLUMN or NAME=COLUMN.
    #[arg(long, value_name = "[NAME=]COLUMN")]
    identifier: Vec<String>,
    /// A --data dataset that is reference data (no personal data, no entity
    /// column); repeatable.
    #[arg(long, value_name = "NAME")]
    reference: Vec<String>,
    /// Read the stored datasets of this tenant instead of local files.
    #[arg(long, conflicts_with = "data", requires = "dataset")]
    tenant: Option<String>,
    /// A stored dataset the plugin reads, as NAME=DATASET[@VERSION] (the
    /// latest version if none); repeat for more.
    #[arg(long, value_name = "NAME=DATASET[@VERSION]", requires = "tenant")]
    dataset: Vec<String>,
    #[command(flatten)]
    vault: VaultArgs,
    /// Run parameters as a JSON object.
    #[arg(long, default_value = "{}")]
    params: String,
    /// The operator's floor policy (TOML); the built-in defaults if absent.
    #[arg(long, value_name = "FILE.toml")]
    floor: Option<PathBuf>,
    /// The data owner's policy (TOML): may only be stricter than the floor.
    #[arg(long, value_name = "FILE.toml")]
    tenant_policy: Option<PathBuf>,
    /// The job's requested policy (TOML): can only tighten the others.
    #[arg(long, value_name = "FILE.toml")]
    policy: Option<PathBuf>,
    /// Minimum distinct entities per released cell, as part of the job's
    /// request: can only tighten.
    #[arg(long)]
    min_entities: Option<u32>,
    /// `entity`: run the plugin once per entity, each in a fresh instance
    /// that sees only that entity's rows (part of the job's request: can only
    /// tighten).
    #[arg(long, value_parser = ["shared", "entity"])]
    isolation: Option<String>,
    /// Release with differential privacy, spending this ρ (zCDP) per run:
    /// 0.0243 is ε = 1 at δ = 1e-6. Every cell is released with noise, and
    /// the plugin runs once per entity. Locally there is no budget ledger:
    /// each run spends ρ again on the same people.
    #[arg(long, value_name = "RHO")]
    dp_rho: Option<f64>,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Also print what the plugin wrote and why it failed. This is the data
    /// owner's view: use it only on data you hold yourself.
    #[arg(long)]
    owner_log: bool,
}

#[derive(Debug, Args)]
pub struct ManifestArgs {
    /// The plugin component (.wasm).
    plugin: PathBuf,
}

/// How every command that loads a plugin compiles and caches it.
#[derive(Debug, Clone, Args)]
pub struct RuntimeOptions {
    /// Where compiled plugins are cached (default: ~/.cache/kanon).
    #[arg(long, global = true, env = "KANON_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Seconds compiling one plugin may take before it is refused.
    #[arg(long, global = true, env = "KANON_COMPILE_TIMEOUT", default_value_t = 60)]
    compile_timeout: u64,
    /// MiB of memory compiling one plugin may use before it is refused.
    #[arg(long, global = true, env = "KANON_COMPILE_MEMORY", default_value_t = 2048)]
    compile_memory: u64,
}

/// The runtime every command uses: plugins compile in a child process of
/// this binary (`kanon compile-worker`), under time and memory limits.
pub fn runtime(options: &RuntimeOptions) -> anyhow::Result<Runtime> {
    let program = std::env::current_exe().context("cannot find the kanon binary to compile plugins with")?;
    Ok(Runtime::new(RuntimeConfig {
        cache_dir: options.cache_dir.clone().or_else(default_cache_dir),
        compile_worker: Some(CompileWorker { program, args: vec!["compile-worker".into()] }),
        compile_limits: CompileLimits {
            timeout: Duration::from_secs(options.compile_timeout),
            memory_bytes: options.compile_memory << 20,
        },
        ..RuntimeConfig::default()
    })?)
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("kanon"))
}

pub fn load(runtime: &Runtime, path: &Path) -> anyhow::Result<LoadedPlugin> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    runtime.load(&bytes).with_context(|| format!("plugin {} refused", path.display()))
}

pub fn manifest(args: ManifestArgs, options: &RuntimeOptions) -> anyhow::Result<ExitCode> {
    let plugin = load(&runtime(options)?, &args.plugin)?;
    let out = serde_json::json!({ "hash": plugin.hash, "size": plugin.size, "manifest": plugin.manifest });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}

/// Split `NAME=VALUE` per dataset, or a bare `VALUE` for every dataset.
fn per_dataset(values: &[String], dataset: &str) -> Vec<String> {
    values
        .iter()
        .filter_map(|v| match v.split_once('=') {
            Some((name, column)) => (name == dataset).then(|| column.to_owned()),
            None => Some(v.clone()),
        })
        .collect()
}

/// Ingest `NAME=FILE` datasets, with their classifications, into a
/// temporary vault that lives as long as the returned versions.
pub fn read_datasets(
    data: &[String],
    entity: &[String],
    identifier: &[String],
    reference: &[String],
) -> anyhow::Result<BTreeMap<String, DatasetVersion>> {
    let vault = Vault::temporary()?;
    let mut datasets = BTreeMap::new();
    for spec in data {
        let Some((name, file)) = spec.split_once('=') else {
            bail!("--data takes NAME=FILE, got `{spec}`");
        };
        let options = if reference.iter().any(|r| r == name) {
            IngestOptions::reference()
        } else {
            let entities = per_dataset(entity, name);
            let [entity] = entities.as_slice() else {
                bail!(
                    "dataset `{name}` needs exactly one entity column (--entity COLUMN or --entity \
                     {name}=COLUMN), or --reference {name} if it holds no personal data"
                );
            };
            IngestOptions {
                identifiers: per_dataset(identifier, name),
                ..IngestOptions::entity(entity.clone())
            }
        };
        let reader = open_file(Path::new(file), None, &options)?;
        let stored = vault.ingest(LOCAL_TENANT, name, WriteMode::Replace, reader, file)?;
        let version = vault.dataset(LOCAL_TENANT, name, Some(stored.version))?;
        if datasets.insert(name.to_owned(), version).is_some() {
            bail!("dataset `{name}` is given twice");
        }
    }
    Ok(datasets)
}

/// A policy file, or an empty layer.
fn policy_layer(path: Option<&Path>) -> anyhow::Result<PolicyLayer> {
    let Some(path) = path else { return Ok(PolicyLayer::default()) };
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(PolicyLayer::from_toml(&path.display().to_string(), &text)?)
}

/// The run's policy: floor, then the tenant's layer, then the job's.
fn run_policy(args: &RunArgs) -> anyhow::Result<Policy> {
    let floor = Policy::floor(&policy_layer(args.floor.as_deref())?)?;
    let tenant = policy_layer(args.tenant_policy.as_deref())?;
    let mut job = policy_layer(args.policy.as_deref())?;
    if let Some(k) = args.min_entities {
        job.min_entities = Some(job.min_entities.map_or(k, |j| j.max(k)));
    }
    if args.isolation.as_deref() == Some("entity") {
        job.isolation = Some(Isolation::Entity);
    }
    if let Some(rho) = args.dp_rho {
        job.privacy = Some(Privacy::Dp);
        let dp = job.dp.unwrap_or_default();
        job.dp = Some(DpLayer { rho: Some(dp.rho.map_or(rho, |j| j.min(rho))), ..dp });
    }
    Ok(Policy::for_run(&floor, [&tenant], &job)?)
}

/// The tenant name local files are ingested under.
const LOCAL_TENANT: &str = "local";

/// `NAME=DATASET[@VERSION]` of `tenant`, read from the data directory.
fn stored_datasets(
    vault: &Vault,
    tenant: &str,
    specs: &[String],
) -> anyhow::Result<BTreeMap<String, DatasetVersion>> {
    let mut datasets = BTreeMap::new();
    for spec in specs {
        let (name, stored) = spec.split_once('=').unwrap_or((spec, spec));
        let (dataset, version) = match stored.split_once('@') {
            Some((dataset, version)) => {
                let version = version.parse().with_context(|| format!("bad version in `{spec}`"))?;
                (dataset, Some(version))
            }
            None => (stored, None),
        };
        if datasets.insert(name.to_owned(), vault.dataset(tenant, dataset, version)?).is_some() {
            bail!("dataset `{name}` is given twice");
        }
    }
    Ok(datasets)
}

pub fn run(args: RunArgs, options: &RuntimeOptions) -> anyhow::Result<ExitCode> {
    let policy = run_policy(&args)?;
    let runtime = runtime(options)?;
    let plugin = load(&runtime, &args.plugin)?;
    let request = match &args.tenant {
        Some(tenant) => {
            let vault = args.vault.open()?;
            let datasets = stored_datasets(&vault, tenant, &args.dataset)?;
            RunRequest {
                run_id: random_run_id(),
                datasets,
                params: args.params,
                policy,
                tenant_secret: vault.pseudonym_secret(tenant)?,
                cancel: CancelToken::new(),
            }
        }
        None => {
            let datasets = read_datasets(&args.data, &args.entity, &args.identifier, &args.reference)?;
            local_request(datasets, args.params, policy)
        }
    };
    let report = runtime.run(&plugin, request)?;
    Ok(print_report(&plugin, &report, args.json, args.owner_log))
}

fn random_run_id() -> String {
    let run_id: [u8; 16] = rand::random();
    run_id.iter().map(|b| format!("{b:02x}")).collect()
}

/// A run request for data this process holds: a fresh secret, so its
/// pseudonyms link to nothing.
pub fn local_request(
    datasets: BTreeMap<String, DatasetVersion>,
    params: String,
    policy: Policy,
) -> RunRequest {
    RunRequest {
        run_id: random_run_id(),
        datasets,
        params,
        policy,
        tenant_secret: rand::random(),
        cancel: CancelToken::new(),
    }
}

/// Print a run's release (or its failure class) and return the exit code.
pub fn print_report(plugin: &LoadedPlugin, report: &RunReport, json: bool, owner_log: bool) -> ExitCode {
    let code = match &report.outcome {
        Ok(release) if json => {
            println!("{}", render::release_json(report, release));
            ExitCode::SUCCESS
        }
        Ok(release) => {
            println!("{} {} (plugin {})", plugin.manifest.name, plugin.manifest.version, &plugin.hash[..16]);
            print!("{}", render::release_text(release));
            let s = &report.stats;
            let isolated = match s.entities_run {
                0 => String::new(),
                run => format!(
                    ", each in its own instance ({run} run, {} failed and left out)",
                    s.entities_failed
                ),
            };
            println!(
                "\n{} entities{isolated}, {} contributions, {:.0} ms",
                s.entities_issued,
                s.contributions,
                s.duration.as_secs_f64() * 1000.0
            );
            ExitCode::SUCCESS
        }
        Err(failure) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "run_id": report.run_id, "failure": failure.class.code() })
                );
            }
            eprintln!("{failure}");
            ExitCode::from(EXIT_RUN_FAILED)
        }
    };
    if owner_log {
        let log = &report.owner_log;
        eprintln!("--- owner log (data owner only) ---");
        for (label, text) in [("stdout", &log.stdout), ("stderr", &log.stderr)] {
            if !text.is_empty() {
                eprintln!("{label}:\n{}", render::escape_controls(text));
            }
        }
        if let Some(error) = &log.error {
            eprintln!("error: {}", render::escape_controls(error));
        }
        for refusal in &log.refusals {
            eprintln!("refused: {}", render::escape_controls(refusal));
        }
        for (class, count) in &log.entity_failures {
            eprintln!("entities whose instance failed ({}): {count}", class.code());
        }
    }
    code
}
