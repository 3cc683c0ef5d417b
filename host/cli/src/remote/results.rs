//! `kanon results`: a job's released tables (its analyst; the daemon's
//! `jobs` API, `/v1/jobs/{id}/results`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use super::Connection;
use super::jobs::show_results;

#[derive(Debug, Args)]
pub struct ResultsArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: ResultsCommand,
}

#[derive(Debug, Subcommand)]
enum ResultsCommand {
    /// Print a succeeded job's released tables (its analyst).
    Show { id: String },
    /// Write them as CSV or JSON.
    Export {
        id: String,
        #[arg(long, default_value = "csv")]
        format: String,
        /// The file; stdout if absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub fn results(args: ResultsArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    match args.command {
        ResultsCommand::Show { id } => show_results(&client, &id, args.conn.json)?,
        ResultsCommand::Export { id, format, out } => {
            if !matches!(format.as_str(), "csv" | "json") {
                bail!("--format: csv or json");
            }
            let body = client.job_results_as(&id, &format)?;
            match out {
                Some(path) => {
                    std::fs::write(&path, body).with_context(|| format!("cannot write {}", path.display()))?
                }
                None => print!("{body}"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
