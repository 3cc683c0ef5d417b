//! The `kanon` binary: the local runner, the demo and the benchmarks.
//!
//! Exit codes: 0 success; 1 bad input or setup (the message says what);
//! 2 usage error; 3 the plugin run failed (nothing released).

mod bench;
mod datagen;
mod demo;
mod render;
mod runner;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "kanon",
    version,
    about = "Run sandboxed analytics plugins over private data; only gated aggregates leave."
)]
struct Cli {
    /// Where compiled plugins are cached (default: $KANON_CACHE_DIR, else ~/.cache/kanon).
    #[arg(long, global = true, env = "KANON_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a plugin over local CSV files through the sandbox and the gate.
    Run(runner::RunArgs),
    /// Print a plugin's manifest: what it reads and what it emits.
    Manifest(runner::ManifestArgs),
    /// Generate realistic synthetic data and run the bundled plugins on it.
    Demo(demo::DemoArgs),
    /// Measure the plugin group-by against native Rust, instantiation,
    /// compile caching and the gate.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KANON_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let cache_dir = cli.cache_dir.or_else(default_cache_dir);
    let result = match cli.command {
        Command::Run(args) => runner::run(args, cache_dir),
        Command::Manifest(args) => runner::manifest(args, cache_dir),
        Command::Demo(args) => demo::run(args, cache_dir),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("kanon"))
}
