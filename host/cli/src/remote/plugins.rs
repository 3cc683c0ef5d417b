//! `kanon plugins`: upload, list, show and delete plugins (the daemon's
//! `plugins` API).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use kanon_client::types::PluginRecord;

use super::Connection;
use super::output::{escaped, show};

#[derive(Debug, Args)]
pub struct PluginsArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: PluginsCommand,
}

#[derive(Debug, Subcommand)]
enum PluginsCommand {
    /// Upload a component (analyst, vendor).
    Upload { file: PathBuf },
    /// List registered plugins.
    List,
    /// A plugin's manifest, hash, size and uploader.
    Show { hash: String },
    /// Delete a plugin (its uploader or an operator).
    Delete { hash: String },
}

pub fn plugins(args: PluginsArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    // A manifest reads best as JSON.
    let json = args.conn.json || matches!(args.command, PluginsCommand::Show { .. });
    let header = ["hash", "plugin", "bytes", "uploader"];
    let one = |record: PluginRecord| show(json, &record, &header, || vec![row(&record)]);
    match &args.command {
        PluginsCommand::Upload { file } => {
            let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            one(client.upload_plugin(&bytes)?)
        }
        PluginsCommand::List => {
            let list = client.list_plugins()?;
            show(json, &list, &header, || list.iter().map(row).collect())
        }
        PluginsCommand::Show { hash } => one(client.plugin(hash)?),
        PluginsCommand::Delete { hash } => one(client.delete_plugin(hash)?),
    }
}

fn row(p: &PluginRecord) -> Vec<String> {
    vec![
        escaped(&p.hash),
        format!("{} {}", escaped(&p.manifest.name), escaped(&p.manifest.version)),
        p.size.to_string(),
        escaped(&p.uploader),
    ]
}
