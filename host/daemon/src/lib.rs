//! kanon's host daemon: the HTTP API through which operators, tenant admins,
//! analysts and vendors work, and the state behind it.
//!
//! Architecture invariants:
//! - no wasmtime type crosses this crate's API; runs go through
//!   [`kanon_runtime::Runtime`], data through [`kanon_vault::Vault`];
//! - every route names the roles that may call it ([`api::ACCESS`]); a route
//!   missing from that table refuses everyone;
//! - every state change commits together with the audit entries it causes
//!   ([`ControlStore::write`]); a dataset change, which the vault commits,
//!   is bracketed by an intent and settled by `pending::reconcile`;
//! - an analyst or vendor sees a failed run's class, never the plugin's
//!   output: that is the tenant's ([`jobs`]).
//!
//! The records it keeps and serves (jobs, plugins, approvals, benchmarks,
//! audit chains) are `kanon_client::types`, re-exported by the module that
//! works with each; the control store keeps them as their JSON.

pub mod api;
pub mod approvals;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod benchmark_runs;
pub mod benchmarks;
mod budget;
pub mod config;
pub mod enrolment;
mod error;
pub mod export;
pub mod grants;
pub mod ids;
pub mod jobs;
mod metrics;
mod pending;
pub mod registry;
mod revocation;
mod sealed;
mod server;
mod store;
pub mod tenants;
mod work;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kanon_runtime::Runtime;
use kanon_vault::{KeyEncryptionKey, Vault, VaultError};
use tokio::sync::watch;

pub use audit::{AuditEntry, AuditExport, AuditHead, ChainBreak, verify};
pub use auth::Role;
pub use config::{ConfigError, DaemonConfig};
pub use error::Error;
pub use store::{CONTROL_FILE, ControlStore, StoreError};

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A random id with a readable prefix: `job_…`, `apr_…`.
pub(crate) fn new_id(prefix: &str) -> String {
    let bytes: [u8; 12] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}_{hex}")
}

/// The daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("cannot listen on {addr}: {detail}")]
    Listen { addr: SocketAddr, detail: String },
    #[error("{path}: {detail}")]
    Io { path: String, detail: String },
}

/// What every handler and the job scheduler share.
#[derive(Debug)]
pub(crate) struct App {
    pub config: DaemonConfig,
    pub store: ControlStore,
    pub vault: Vault,
    pub runtime: Arc<Runtime>,
    pub plugins: registry::PluginCache,
    pub scheduler: work::Scheduler,
    pub metrics: metrics::Metrics,
    /// The key token secrets are hashed under, read once at start.
    pub token_key: [u8; 32],
    /// Refusals folded into counts, not yet written.
    pub refusals: audit::Refusals,
    /// Dataset changes between the vault's commit and their audit entry.
    pub pending: pending::Pending,
}

/// A running daemon.
#[derive(Debug)]
pub struct Daemon {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
    app: Arc<App>,
}

/// What the first start printed or wrote: the operator token.
#[derive(Debug)]
pub struct FirstStart {
    /// The operator token, when this start created it and was not told to
    /// write it to a file.
    pub operator_token: Option<String>,
}

impl Daemon {
    /// Open the data directory, recover jobs a crash interrupted, bind the
    /// listener, create the first operator token (on the first start, once
    /// the port is bound) and start serving. Must be called inside a tokio
    /// runtime.
    pub async fn start(
        config: DaemonConfig,
        kek: KeyEncryptionKey,
        runtime: Runtime,
    ) -> Result<(Daemon, FirstStart), StartError> {
        let vault = Vault::open(&config.data_dir, kek)?;
        let store = ControlStore::open(&config.data_dir)?;
        for (chain, reason) in store.verify_chains()? {
            tracing::error!(%chain, %reason, "an audit chain does not verify; the daemon refuses to append to it");
        }
        let token_key = store.write(auth::token_key)?;
        let interrupted = work::recover(&store)?;
        if interrupted > 0 {
            tracing::warn!(interrupted, "runs that were running when the daemon stopped are marked failed");
        }
        let listener = listen(config.listen)
            .map_err(|e| StartError::Listen { addr: config.listen, detail: e.to_string() })?;
        let addr = listener
            .local_addr()
            .map_err(|e| StartError::Listen { addr: config.listen, detail: e.to_string() })?;
        let plugins_dir = config.data_dir.join(registry::PLUGINS_DIR);
        std::fs::create_dir_all(&plugins_dir).map_err(io_err(&plugins_dir))?;
        remove_leftovers(&config.data_dir)?;
        let app = Arc::new(App {
            scheduler: work::Scheduler::new(config.jobs.clone()),
            plugins: registry::PluginCache::new(plugins_dir),
            metrics: metrics::Metrics::new(),
            token_key,
            refusals: audit::Refusals::default(),
            pending: pending::Pending::default(),
            config,
            store,
            vault,
            runtime: Arc::new(runtime),
        });
        // Dataset changes a stop or a storage failure left unaudited.
        if let Err(e) = pending::reconcile(&app) {
            tracing::error!(error = %e, "dataset changes are still waiting for their audit entries");
        }
        // Only now, with the port bound and nothing left to fail before the
        // server runs: a start that fails never makes a token it cannot show.
        let first = auth::ensure_operator_token(&app.store, app.config.operator_token_file.as_deref())?;
        let (stop, stopped) = watch::channel(false);
        work::Scheduler::spawn(app.clone(), stopped.clone());
        let router = api::router(app.clone());
        let server = tokio::spawn(server::serve(listener, router, app.clone(), stopped));
        tracing::info!(%addr, "kanon daemon listening");
        Ok((Daemon { addr, stop, server, app }, first))
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop taking requests and starting jobs; let requests in flight
    /// finish for up to `limits.shutdown_grace_secs` and drop the rest; let
    /// running jobs finish for up to `jobs.shutdown_grace_secs`, then
    /// interrupt them: they are recorded as failed (`interrupted`), or,
    /// when even that takes too long, marked so at the next start.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.server.await;
        api::write_folded_refusals(&self.app, None);
        let grace = Duration::from_secs(self.app.config.jobs.shutdown_grace_secs);
        if !self.app.scheduler.wait_idle(grace).await {
            tracing::warn!(?grace, "runs still running at the end of the grace are interrupted");
            self.app.scheduler.cancel_all();
            // A cancelled run stops at its next epoch tick or host call; its
            // record is one commit.
            if !self.app.scheduler.wait_idle(INTERRUPT_GRACE).await {
                tracing::warn!("interrupted runs are abandoned; the next start marks them failed");
            }
        }
    }
}

/// Delete what requests that never finished left in the data directory:
/// uploads being received (`uploads/`) and plugins being stored
/// (`plugins/.tmp*`). Only this process uses the directory (the vault's
/// lock), and nothing runs yet.
fn remove_leftovers(data_dir: &Path) -> Result<(), StartError> {
    let mut removed = (0u64, 0u64);
    let mut remove = |path: &Path| -> Result<(), StartError> {
        let len = std::fs::symlink_metadata(path).map_err(io_err(path))?.len();
        std::fs::remove_file(path).map_err(io_err(path))?;
        removed = (removed.0 + 1, removed.1 + len);
        Ok(())
    };
    for (dir, leftover) in [
        (api::UPLOADS_DIR, (|_: &str| true) as fn(&str) -> bool),
        (registry::PLUGINS_DIR, |name: &str| name.starts_with(".tmp")),
    ] {
        let dir = data_dir.join(dir);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err(&dir))?;
            let is_file = entry.file_type().map_err(io_err(&dir))?.is_file();
            if is_file && entry.file_name().to_str().is_some_and(leftover) {
                remove(&entry.path())?;
            }
        }
    }
    if removed.0 > 0 {
        tracing::info!(files = removed.0, bytes = removed.1, "deleted the leftovers of unfinished uploads");
    }
    Ok(())
}

/// How long interrupted runs get to record themselves at shutdown.
const INTERRUPT_GRACE: Duration = Duration::from_secs(5);

/// Bind with a deep accept backlog: with tokio's default of 128, a burst of
/// clients overflows the kernel's queue and each dropped connection waits a
/// second for its retry.
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket =
        if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

pub(crate) fn io_err(path: &Path) -> impl Fn(std::io::Error) -> StartError + '_ {
    move |e| StartError::Io { path: path.display().to_string(), detail: e.to_string() }
}
