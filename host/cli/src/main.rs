//! The `kanon` binary: the local runner, the tenant-data commands, the demo
//! and the benchmarks.
//!
//! Exit codes: 0 success; 1 bad input or setup (the message says what);
//! 2 usage error; 3 the plugin run failed (nothing released); 4 the daemon
//! refused the request; 5 the daemon is unreachable or failed.

mod bench;
mod benchmark_cmd;
mod client_cmd;
mod datagen;
mod demo;
mod render;
mod runner;
mod serve;
mod vault_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    Login(client_cmd::LoginArgs),
    /// Redeem a tenant admin's one-time enrolment code and save the token
    /// as a profile.
    Enrol(client_cmd::EnrolArgs),
    /// Daemon: create and list tenants, new enrolment codes (operator).
    Tenants(client_cmd::TenantsArgs),
    /// Daemon: issue, list and revoke tokens (operator; a tenant admin its
    /// tenant's admins).
    Tokens(client_cmd::TokensArgs),
    /// Daemon: upload, list, show and delete plugins.
    Plugins(client_cmd::PluginsArgs),
    /// Daemon: approve plugins on your data, list and revoke approvals (tenant admin).
    Approvals(client_cmd::ApprovalsArgs),
    /// Daemon: run jobs under approvals, follow, cancel, read logs.
    Jobs(client_cmd::JobsArgs),
    /// Daemon: a job's released tables.
    Results(client_cmd::ResultsArgs),
    /// Daemon: show, export and verify audit logs.
    Audit(client_cmd::AuditArgs),
    /// Daemon: support-access grants (tenant admin).
    Grants(client_cmd::GrantsArgs),
    /// Daemon: back up the whole data directory while it serves (operator).
    Backups(client_cmd::BackupsArgs),
    /// Daemon: cross-tenant benchmarks: publish and run (vendor), join and
    /// leave, your own position (tenant admin), versions from the meta data vault.
    Benchmarks(benchmark_cmd::BenchmarksArgs),
    /// Generate realistic synthetic data and run the bundled plugins on it.
    Demo(demo::DemoArgs),
    /// Measure the plugin group-by against native Rust, instantiation,
    /// compile caching and the gate.
    Bench(bench::BenchArgs),
    /// Compile one uploaded component from stdin under memory and CPU
    /// limits: the child process every upload is compiled in.
    #[command(hide = true)]
    CompileWorker,
}

fn main() -> ExitCode {
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
        Command::Login(args) => client_cmd::login(args),
        Command::Enrol(args) => client_cmd::enrol(args),
        Command::Tenants(args) => client_cmd::tenants(args),
        Command::Tokens(args) => client_cmd::tokens(args),
        Command::Plugins(args) => client_cmd::plugins(args),
        Command::Approvals(args) => client_cmd::approvals(args),
        Command::Jobs(args) => client_cmd::jobs(args),
        Command::Results(args) => client_cmd::results(args),
        Command::Audit(args) => client_cmd::audit(args),
        Command::Grants(args) => client_cmd::grants(args),
        Command::Backups(args) => client_cmd::backups(args),
        Command::Benchmarks(args) => benchmark_cmd::benchmarks(args),
        Command::Bench(args) => bench::run(args),
        Command::CompileWorker => return kanon_runtime::compile_worker_main(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            if let Some(code) = client_cmd::exit_code(&e) {
                return code;
            }
            eprintln!("error: {}", render::escape_controls(&format!("{e:#}")));
            ExitCode::from(1)
        }
    }
}
