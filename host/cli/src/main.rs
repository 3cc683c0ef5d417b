//! The `kanon` binary, by what each command talks to: `local` (the sandbox
//! and the vault on this machine), `serve` (the daemon), `remote` (a
//! daemon, through `kanon-client`) and `demo` (an embedded daemon). The
//! performance figures are `kanon-bench`'s, another binary.
//!
//! Exit codes: 0 success; 1 bad input or setup (the message says what);
//! 2 usage error; 3 the plugin run failed (nothing released); 4 the daemon
//! refused the request; 5 the daemon is unreachable or failed.

mod demo;
mod local;
mod remote;
mod render;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use local::{run as runner, vault as vault_cmd};
use remote::{
    approvals, audit, backups, benchmarks, budget, grants, jobs, login, plugins, results, tenants, tokens,
};

#[derive(Debug, Parser)]
#[command(
    name = "kanon",
    version,
    about = "Run sandboxed analytics plugins over private data; only gated aggregates leave."
)]
struct Cli {
    #[command(flatten)]
    runtime: runner::RuntimeOptions,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a plugin through the sandbox and the gate, over local files or a
    /// tenant's datasets in a data directory.
    Run(runner::RunArgs),
    /// Store a file (CSV, JSON lines, Parquet, Arrow IPC) as a new version of a tenant's dataset.
    Ingest(vault_cmd::IngestArgs),
    /// List tenants, a tenant's datasets, or a dataset's versions, in a data
    /// directory; with a subcommand, on the daemon.
    Datasets(vault_cmd::DatasetsArgs),
    /// Write a dataset version in clear, as CSV or Parquet: the tenant's own export.
    Export(vault_cmd::ExportArgs),
    /// Erase a tenant (its data key destroyed, its files removed), or delete
    /// one dataset.
    Erase(vault_cmd::EraseArgs),
    /// Write a consistent, still encrypted snapshot of a data directory no
    /// daemon serves (with the daemon's state, if one served it).
    Backup(vault_cmd::BackupArgs),
    /// Restore a backup (the vault, and the daemon's state if it holds it)
    /// into an empty data directory.
    Restore(vault_cmd::RestoreArgs),
    /// Re-wrap every tenant's data key under a new key-encryption key.
    RotateKey(vault_cmd::RotateKeyArgs),
    /// Print a plugin's manifest: what it reads and what it emits.
    Manifest(runner::ManifestArgs),
    /// Run the host daemon: the HTTP API for operators, tenants, analysts and vendors.
    Serve(serve::ServeArgs),
    /// Save a daemon address and token as a named profile.
    Login(login::LoginArgs),
    /// Redeem a tenant admin's one-time enrolment code and save the token
    /// as a profile.
    Enrol(login::EnrolArgs),
    /// Daemon: create and list tenants, new enrolment codes (operator).
    Tenants(tenants::TenantsArgs),
    /// Daemon: issue, list and revoke tokens (operator; a tenant admin its
    /// tenant's admins).
    Tokens(tokens::TokensArgs),
    /// Daemon: upload, list, show and delete plugins.
    Plugins(plugins::PluginsArgs),
    /// Daemon: approve plugins on your data, list and revoke approvals (tenant admin).
    Approvals(approvals::ApprovalsArgs),
    /// Daemon: run jobs under approvals, follow, cancel, read logs.
    Jobs(jobs::JobsArgs),
    /// Daemon: a job's released tables.
    Results(results::ResultsArgs),
    /// Daemon: a tenant's privacy budget, what differentially private runs
    /// charged and what remains; or what a benchmark's runs charge.
    Budget(budget::BudgetArgs),
    /// Daemon: show, export and verify audit logs.
    Audit(audit::AuditArgs),
    /// Daemon: support-access grants (tenant admin).
    Grants(grants::GrantsArgs),
    /// Daemon: back up the whole data directory while it serves (operator).
    Backups(backups::BackupsArgs),
    /// Daemon: cross-tenant benchmarks: publish and run (vendor), join and
    /// leave, your own position (tenant admin), versions from the meta data vault.
    Benchmarks(benchmarks::BenchmarksArgs),
    /// Generate realistic synthetic data and run the bundled plugins on it.
    Demo(demo::DemoArgs),
    /// Compile one uploaded component from stdin under memory and CPU
    /// limits: the child process every upload is compiled in.
    #[command(hide = true)]
    CompileWorker,
}

/// `kanon … | head`: `println!` panics once the reader has gone (Rust
/// ignores SIGPIPE, and this workspace denies the unsafe code that would
/// restore it). End as a shell expects a command whose pipe closed
/// (128 + SIGPIPE) instead of printing a backtrace.
fn end_quietly_on_a_closed_stdout() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info.payload_as_str().unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        report(info);
    }));
}

fn main() -> ExitCode {
    end_quietly_on_a_closed_stdout();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KANON_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = cli.runtime;
    let result = match cli.command {
        Command::Run(args) => runner::run(args, &runtime),
        Command::Ingest(args) => vault_cmd::ingest(args),
        Command::Datasets(args) => vault_cmd::datasets(args),
        Command::Export(args) => vault_cmd::export(args),
        Command::Erase(args) => vault_cmd::erase(args),
        Command::Backup(args) => vault_cmd::backup(args),
        Command::Restore(args) => vault_cmd::restore(args),
        Command::RotateKey(args) => vault_cmd::rotate_key(args),
        Command::Manifest(args) => runner::manifest(args, &runtime),
        Command::Demo(args) => demo::run(args, &runtime),
        Command::Serve(args) => serve::run(args, &runtime),
        Command::Login(args) => login::login(args),
        Command::Enrol(args) => login::enrol(args),
        Command::Tenants(args) => tenants::tenants(args),
        Command::Tokens(args) => tokens::tokens(args),
        Command::Plugins(args) => plugins::plugins(args),
        Command::Approvals(args) => approvals::approvals(args),
        Command::Jobs(args) => jobs::jobs(args),
        Command::Results(args) => results::results(args),
        Command::Budget(args) => budget::budget(args),
        Command::Audit(args) => audit::audit(args),
        Command::Grants(args) => grants::grants(args),
        Command::Backups(args) => backups::backups(args),
        Command::Benchmarks(args) => benchmarks::benchmarks(args),
        Command::CompileWorker => return kanon_runtime::compile_worker_main(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            if let Some(code) = remote::exit_code(&e) {
                return code;
            }
            eprintln!("error: {}", render::escape_controls(&format!("{e:#}")));
            ExitCode::from(1)
        }
    }
}
