//! `kanon demo`: the whole path through the real API. It generates data,
//! starts an embedded daemon on a free loopback port, and then acts every
//! role over HTTP. The operator creates two tenants. Each tenant ingests
//! its data and approves a bundled plugin. An analyst runs both plugins and
//! reads the gated tables. Each tenant verifies its audit log. Then a
//! vendor benchmarks eight carriers: they opt in, the vendor reads the
//! version in the meta data vault, one carrier reads its own position, and
//! one leaves, so the next version holds what it was in.

use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use kanon_client::types::{
    Approval, BenchmarkRun, DatasetMapping, JobState, NewApproval, NewBenchmark, OptInRequest, PluginRecord,
    SubmitRequest,
};
use kanon_client::{Client, NewTenant, NewToken, Role, UploadArgs};
use kanon_daemon::{Daemon, DaemonConfig};
use kanon_gate::{DpLayer, DpPolicy, Isolation, PolicyLayer, Privacy};
use kanon_vault::KeyEncryptionKey;
use serde_json::{Value, json};

use crate::local::run as runner;
use crate::remote::jobs::{follow, follow_with};
use crate::remote::output::{escaped, escaped_or_dash, or_dash};
use crate::render;
use kanon_datagen as datagen;

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
    /// Carriers in the cross-tenant benchmark.
    #[arg(long, default_value_t = 8)]
    carriers: usize,
    /// Trips of each carrier.
    #[arg(long, default_value_t = 100_000)]
    carrier_trips: usize,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

/// One tenant of the demo and what it holds.
struct DemoTenant {
    name: &'static str,
    dataset: &'static str,
    file: PathBuf,
    entity: &'static str,
    identifiers: &'static str,
    plugin: &'static [u8],
    /// Also run the job once per entity, each in its own instance.
    isolated: bool,
}

pub fn run(args: DemoArgs, options: &runner::RuntimeOptions) -> anyhow::Result<ExitCode> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let say = |line: String| {
        if !args.json {
            println!("{line}");
        }
    };
    let trips = dir.path().join("trips.csv");
    let employees = dir.path().join("employees.csv");
    let started = Instant::now();
    datagen::trips(&mut BufWriter::new(std::fs::File::create(&trips)?), args.trips, args.drivers, 7)?;
    datagen::employees(&mut BufWriter::new(std::fs::File::create(&employees)?), args.employees, 11)?;
    say(format!(
        "Generated {} trips by {} drivers and {} HR records in {:.1} s.",
        args.trips,
        args.drivers,
        args.employees,
        started.elapsed().as_secs_f64()
    ));

    let config = DaemonConfig {
        listen: "127.0.0.1:0".parse().expect("an address"),
        data_dir: dir.path().join("data"),
        ..DaemonConfig::default()
    };
    let runtime = runner::runtime(options)?;
    let tokio =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start tokio")?;
    let (daemon, first) = tokio.block_on(Daemon::start(config, KeyEncryptionKey::generate(), runtime))?;
    let base = format!("http://{}", daemon.local_addr());
    say(format!("Started an embedded daemon at {base}; everything below goes through its HTTP API.\n"));
    let operator = Client::new(&base, first.operator_token);

    let tenants = [
        DemoTenant {
            name: "fleetco",
            dataset: "trips",
            file: trips,
            entity: "driver_id",
            identifiers: "",
            plugin: kanon_bundled::EMISSIONS_BENCHMARK,
            isolated: true,
        },
        DemoTenant {
            name: "peoplefirst",
            dataset: "employees",
            file: employees,
            entity: "employee_id",
            identifiers: "manager_id",
            plugin: kanon_bundled::ABSENCE_RATE,
            isolated: false,
        },
    ];
    let result = walk(&operator, &tenants, args.json, &say).and_then(|code| {
        let benchmark = benchmark(&operator, &args, dir.path(), &say)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&json!({"jobs": code.1, "benchmark": benchmark}))?);
        }
        Ok(code.0)
    });
    tokio.block_on(daemon.shutdown());
    result
}

/// Issue a token of `role`.
fn token(operator: &Client, role: Role, name: &str, tenant: Option<&str>) -> anyhow::Result<Client> {
    let issued = operator.issue_token(&NewToken {
        role,
        name: name.to_owned(),
        tenant: tenant.map(str::to_owned),
        ttl_secs: None,
    })?;
    Ok(operator.with_token(Some(issued.token)))
}

/// Create `tenant` (operator), then enrol its admin with the one-time code
/// (no token): the admin's client. The operator never holds it.
fn tenant_with_admin(operator: &Client, tenant: &str) -> anyhow::Result<Client> {
    let created = operator.create_tenant(&NewTenant { name: tenant.to_owned(), enrolment_ttl_secs: None })?;
    Ok(operator.enrol(&created.enrolment.code, &format!("{tenant}-admin"), None)?.0)
}

/// The vendor's side: carriers with generated trips opt in to a CO2
/// benchmark; the vendor runs it and reads its table; one carrier reads its
/// own position; one leaves, and the next version holds what it was in.
fn benchmark(operator: &Client, args: &DemoArgs, dir: &Path, say: &dyn Fn(String)) -> anyhow::Result<Value> {
    let vendor = token(operator, Role::Vendor, "benchco", None)?;
    say(format!(
        "operator: issued a vendor token for `benchco`; {} carriers, each enrolling its own admin, join its benchmark",
        args.carriers
    ));
    let mut admins = Vec::new();
    for i in 1..=args.carriers {
        let name = format!("carrier-{i:02}");
        let admin = tenant_with_admin(operator, &name)?;
        let file = dir.join(format!("{name}.csv"));
        // Each carrier's fleet burns its own share more or less fuel.
        let thirst = 0.85 + 0.3 * (i as f64 * 0.618).fract();
        datagen::carrier_trips(
            &mut BufWriter::new(std::fs::File::create(&file)?),
            args.carrier_trips,
            args.carrier_trips.div_ceil(300).max(40),
            100 + i as u64,
            thirst,
        )?;
        // The last carrier keeps its trips under its own dataset name.
        let dataset = if i == args.carriers { "ritten" } else { "trips" };
        let csv =
            UploadArgs { format: "csv".into(), entity: Some("driver_id".into()), ..UploadArgs::default() };
        admin.ingest(&name, dataset, &csv, std::fs::File::open(&file)?)?;
        admins.push((name, dataset, admin));
    }
    say(format!("carriers: each ingested {} trips", args.carrier_trips));

    let plugin = vendor.upload_plugin(kanon_bundled::EMISSIONS_BENCHMARK)?;
    let published = vendor.publish_benchmark(&NewBenchmark {
        name: "co2".into(),
        plugin: plugin.hash.clone(),
        description: "CO2 per tonne-km across carriers".into(),
        params: None,
        every_hours: None,
    })?;
    say(format!("benchco: published benchmark `{}` over {}", escaped(&published.name), &plugin.hash[..16]));
    for (name, dataset, admin) in &admins {
        let mapping = DatasetMapping { dataset: (*dataset).to_owned(), columns: Default::default() };
        admin.opt_in(name, "co2", &OptInRequest { datasets: [("trips".to_owned(), mapping)].into() })?;
    }
    say(format!("carriers: all {} opted in (the last maps its `ritten` to `trips`)", admins.len()));

    let rows = args.carrier_trips * admins.len();
    let first = run_benchmark(&vendor, rows, say)?;
    let version = vendor.benchmark_version("co2", &or_dash(first.version))?;
    say(format!(
        "benchco: version {} of `co2` in the meta data vault; it names no carrier:",
        version.version
    ));
    if !args.json {
        println!("{}", render::release_text(&version.release));
    }
    let (me, _, admin) = &admins[2.min(admins.len() - 1)];
    let position = admin.own_position(me, "co2", "latest")?;
    say(format!("{me}: its own position next to the peers, from its own data only:"));
    if !args.json {
        println!("{}", render::position_text(&position.position));
    }

    let (leaver, _, admin) = admins.last().expect("carriers");
    admin.opt_out(leaver, "co2")?;
    say(format!("{leaver}: opted out"));
    let second = run_benchmark(&vendor, rows - args.carrier_trips, say)?;
    let held = second.stats.as_ref().map_or(0, |stats| stats.held_cells);
    say(format!(
        "benchco: version {} holds {held} cells at version {}'s values: their carriers changed by one, \
         so no difference of the two versions gives {leaver}'s figures",
        or_dash(second.version),
        or_dash(first.version)
    ));
    Ok(json!({"version": version, "position": position, "first_run": first, "second_run": second}))
}

/// Queue a run of `co2` and follow it to its end.
fn run_benchmark(vendor: &Client, rows: usize, say: &dyn Fn(String)) -> anyhow::Result<BenchmarkRun> {
    let id = vendor.run_benchmark("co2")?.id;
    let done = follow_with(|wait| vendor.wait_benchmark_run("co2", &id, wait), |run| run.state, &id, false)?;
    if done.state != JobState::Succeeded {
        anyhow::bail!("benchmark run {id} failed: {}", escaped_or_dash(done.failure.as_deref()));
    }
    say(format!(
        "benchco: run {id} over {} carriers ({rows} trips), took {} s (vendors see whole seconds)",
        or_dash(done.participants),
        or_dash(done.stats.as_ref().map(|stats| stats.run_secs))
    ));
    Ok(done)
}

fn walk(
    operator: &Client,
    tenants: &[DemoTenant],
    json: bool,
    say: &dyn Fn(String),
) -> anyhow::Result<(ExitCode, Value)> {
    let token = |role, name: &str, tenant| token(operator, role, name, tenant);
    let analyst = token(Role::Analyst, "ana", None)?;
    say("operator: issued an analyst token for `ana`".into());
    let mut code = ExitCode::SUCCESS;
    let mut releases = serde_json::Map::new();
    for tenant in tenants {
        let admin = tenant_with_admin(operator, tenant.name)?;
        say(format!(
            "operator: created tenant `{}`; its admin enrolled with the one-time code (the operator holds no admin token)",
            tenant.name
        ));

        let started = Instant::now();
        let csv = UploadArgs {
            format: "csv".into(),
            entity: Some(tenant.entity.into()),
            identifiers: Some(tenant.identifiers.into()),
            ..UploadArgs::default()
        };
        let stored = admin.ingest(tenant.name, tenant.dataset, &csv, std::fs::File::open(&tenant.file)?)?;
        say(format!(
            "{}: ingested {} rows into `{}` ({:.1} s)",
            tenant.name,
            stored.rows,
            tenant.dataset,
            started.elapsed().as_secs_f64()
        ));

        let plugin = analyst.upload_plugin(tenant.plugin)?;
        let manifest = &plugin.manifest;
        say(format!("ana: uploaded plugin {} {} ({})", manifest.name, manifest.version, &plugin.hash[..16]));

        let approval = approve(&admin, tenant, &plugin)?;
        say(format!(
            "{}: approved it for ana on `{}` ({})",
            tenant.name,
            tenant.dataset,
            escaped(&approval.id)
        ));

        let isolated = PolicyLayer { isolation: Some(Isolation::Entity), ..PolicyLayer::default() };
        let dp = PolicyLayer {
            privacy: Some(Privacy::Dp),
            dp: Some(DpLayer { rho: Some(DpPolicy::DEFAULT_RHO), ..DpLayer::default() }),
            ..PolicyLayer::default()
        };
        let modes = if tenant.isolated {
            vec![("", PolicyLayer::default()), ("_isolated", isolated), ("_dp", dp)]
        } else {
            vec![("", PolicyLayer::default())]
        };
        for (suffix, policy) in modes {
            match suffix {
                "_isolated" => {
                    say("ana: the same job with one instance per driver, each seeing only its own trips:"
                        .into())
                }
                "_dp" => say(format!(
                    "ana: the same job under differential privacy at ρ = {} (ε = 1 at δ = 10⁻⁶ by CKS20's \
                     Corollary 13), charged to {}'s privacy budget: every cell released with noise and its \
                     95 % interval. Sums are noised to the plugin's declared bound per driver, so a wide \
                     bound leaves them mostly noise; counts are not:",
                    DpPolicy::DEFAULT_RHO,
                    tenant.name
                )),
                _ => {}
            }
            let id = analyst
                .submit_job(&SubmitRequest {
                    tenant: tenant.name.to_owned(),
                    plugin: plugin.hash.clone(),
                    approval: approval.id.clone(),
                    datasets: [(tenant.dataset.to_owned(), tenant.dataset.to_owned())].into(),
                    params: None,
                    policy: Some(policy),
                })?
                .id;
            let done = follow(&analyst, &id, false)?;
            if done.state != JobState::Succeeded {
                say(format!(
                    "ana: job {id} {}: {}; nothing was released",
                    done.state.name(),
                    escaped_or_dash(done.failure.as_deref())
                ));
                code = ExitCode::from(runner::EXIT_RUN_FAILED);
                continue;
            }
            let release = analyst.job_results(&id)?;
            say(format!(
                "ana: job {id} succeeded in {} s (analysts see whole seconds); the gate released:",
                or_dash(done.stats.as_ref().map(|stats| stats.run_secs))
            ));
            if json {
                releases.insert(format!("{}{suffix}", tenant.name), serde_json::to_value(&release)?);
            } else {
                println!("{}", render::release_text(&release));
            }
            if release.dp.is_some() {
                let budget = admin.tenant_budget(tenant.name)?;
                say(format!(
                    "{}: the job charged ρ = {}; its privacy budget has ρ = {} of {} left in its {}-day window \
                     (`kanon budget {}`); the same request again is answered from the stored release, free\n",
                    tenant.name,
                    kanon_client::rho_text(done.rho_charged_nanos),
                    kanon_client::rho_text(budget.remaining_nanos),
                    kanon_client::rho_text(budget.budget_nanos),
                    budget.window_days,
                    tenant.name
                ));
            }
        }

        let audit = admin.tenant_audit(tenant.name)?;
        let count = kanon_daemon::verify(&audit.chain, &audit.entries, &audit.head)
            .map_err(|e| anyhow::anyhow!("the audit log of {} does not verify: {e}", tenant.name))?;
        let actions: Vec<&str> = audit.entries.iter().map(|e| e.action.as_str()).collect();
        say(format!("{}: audit log verifies, {count} entries: {}\n", tenant.name, actions.join(", ")));
    }
    Ok((code, Value::Object(releases)))
}

/// Approve `plugin` on the tenant's dataset: every column and output the
/// manifest declares, default params, a day.
fn approve(admin: &Client, tenant: &DemoTenant, plugin: &PluginRecord) -> anyhow::Result<Approval> {
    let new = NewApproval::covering(plugin, "ana", |_| tenant.dataset.to_owned());
    Ok(admin.grant_approval(tenant.name, &new)?)
}
