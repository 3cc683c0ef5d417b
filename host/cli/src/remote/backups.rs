//! `kanon backups`: back up the whole data directory while the daemon
//! serves (operator; the daemon's `backups` API).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use kanon_client::NewBackup;

use super::Connection;
use super::output::{escaped, print_json};

#[derive(Debug, Args)]
pub struct BackupsArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: BackupsCommand,
}

#[derive(Debug, Subcommand)]
enum BackupsCommand {
    /// Back up the whole data directory while the daemon serves (operator):
    /// written under the daemon's `backup_dir`, restored with `kanon restore`.
    Create { name: String },
}

pub fn backups(args: BackupsArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let BackupsCommand::Create { name } = args.command;
    let info = client.create_backup(&NewBackup { name })?;
    if args.conn.json {
        print_json(&info)?;
    } else {
        println!(
            "backed up {} tenants, {} dataset versions ({} files, {} bytes, still encrypted) and the daemon's \
             state ({} files, {} bytes) to {} on the daemon's machine",
            info.tenants,
            info.versions,
            info.chunk_files,
            info.chunk_bytes,
            info.daemon_files,
            info.daemon_bytes,
            escaped(&info.path),
        );
    }
    Ok(ExitCode::SUCCESS)
}
