//! `kanon plugins`: upload, list, show and delete plugins (the daemon's
//! `plugins` API).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::Value;

use super::Connection;
use super::output::{show, text};

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
    let value: Value = match &args.command {
        PluginsCommand::Upload { file } => {
            let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            client.upload_plugin(&bytes)?
        }
        PluginsCommand::List => client.list_plugins()?,
        PluginsCommand::Show { hash } => client.plugin(hash)?,
        PluginsCommand::Delete { hash } => client.delete_plugin(hash)?,
    };
    // A manifest reads best as JSON.
    let json = args.conn.json || matches!(args.command, PluginsCommand::Show { .. });
    show(json, value, &["hash", "plugin", "bytes", "uploader"], |p| {
        let m = &p["manifest"];
        vec![
            text(&p["hash"]),
            format!("{} {}", text(&m["name"]), text(&m["version"])),
            text(&p["size"]),
            text(&p["uploader"]),
        ]
    })
}
