//! `kanon audit`: show, export and verify audit logs (the daemon's audit
//! routes; verification runs here, on the caller's machine).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use kanon_client::types::AuditExport;

use super::Connection;
use super::output::{at, print_json, print_table};

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Print a tenant's audit log (tenant admin), or the host's (operator, no --tenant).
    Show {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Save the log with its head, to verify later or elsewhere.
    Export {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify the hash chain here, on your machine: of the daemon's log, or
    /// of an exported file. Exit 1 names the first broken entry.
    Verify {
        #[arg(long)]
        tenant: Option<String>,
        /// An exported log instead of the daemon's.
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

fn fetch_audit(conn: &Connection, tenant: &Option<String>) -> anyhow::Result<AuditExport> {
    let client = conn.client()?;
    Ok(match tenant {
        Some(tenant) => client.tenant_audit(tenant)?,
        None => client.host_audit()?,
    })
}

pub fn audit(args: AuditArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        AuditCommand::Show { tenant } => {
            let export = fetch_audit(&args.conn, tenant)?;
            if args.conn.json {
                print_json(&export)?;
            } else {
                let rows = export
                    .entries
                    .iter()
                    .map(|e| {
                        vec![
                            e.seq.to_string(),
                            at(Some(e.at_ms)),
                            e.actor.clone(),
                            e.action.clone(),
                            e.detail.to_string(),
                        ]
                    })
                    .collect();
                print_table(&["seq", "at", "actor", "action", "detail"], rows);
            }
        }
        AuditCommand::Export { tenant, out } => {
            let export = fetch_audit(&args.conn, tenant)?;
            std::fs::write(out, serde_json::to_vec_pretty(&export)?)
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!("{} entries of `{}`, head {}", export.head.count, export.chain, export.head.hash);
        }
        AuditCommand::Verify { tenant, file } => {
            let export: AuditExport = match file {
                Some(path) => {
                    let bytes =
                        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
                    serde_json::from_slice(&bytes)
                        .with_context(|| format!("{} is not an exported audit log", path.display()))?
                }
                None => fetch_audit(&args.conn, tenant)?,
            };
            match kanon_daemon::verify(&export.chain, &export.entries, &export.head) {
                Ok(count) => println!(
                    "audit log of `{}` verifies: {count} entries, head {}",
                    export.chain, export.head.hash
                ),
                Err(broken) => {
                    eprintln!("audit log of `{}` does NOT verify: {broken}", export.chain);
                    return Ok(ExitCode::from(1));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
