//! `kanon serve`: the host daemon, until SIGTERM or Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use kanon_daemon::{Daemon, DaemonConfig};

use crate::local::run as runner;
use crate::local::vault::KeyArgs;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Settings file (TOML); $KANON_LISTEN and $KANON_DATA_DIR override it.
    #[arg(long, env = "KANON_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    key: KeyArgs,
}

pub fn run(args: ServeArgs, options: &runner::RuntimeOptions) -> anyhow::Result<ExitCode> {
    let config = DaemonConfig::load(args.config.as_deref())?;
    let kek = args.key.key(&config.data_dir)?;
    let runtime = runner::runtime(options)?;
    let tokio =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start tokio")?;
    let served = tokio.block_on(async move {
        // Listening for the signals before the daemon answers: a SIGTERM
        // right after start still stops it gracefully.
        let stop = shutdown_signal()?;
        let (daemon, first) = Daemon::start(config, kek, runtime).await?;
        if let Some(token) = first.operator_token {
            println!("operator token (shown once; keep it safe): {token}");
        }
        eprintln!("kanon daemon listening on http://{}", daemon.local_addr());
        stop.await;
        eprintln!("stopping: finishing running jobs");
        daemon.shutdown().await;
        Ok(ExitCode::SUCCESS)
    });
    // Dropping the runtime would wait for every blocking task; the daemon's
    // shutdown already bounded and recorded what mattered.
    tokio.shutdown_timeout(Duration::from_secs(1));
    served
}

/// SIGTERM or Ctrl-C, registered now, awaited later.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    })
}
