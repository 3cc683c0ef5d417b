//! `kanon datasets ingest|list|delete`: a tenant's datasets on the daemon
//! (tenant admin; the daemon's `datasets` API). Without a subcommand,
//! `kanon datasets` lists a local data directory (`crate::local::vault`).

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use kanon_client::UploadArgs;

use super::Connection;
use super::output::{at, escaped, print_record, print_table};

#[derive(Debug, Subcommand)]
pub enum DatasetsCommand {
    /// Upload a file as a new version of a dataset (tenant admin).
    Ingest(IngestRemote),
    /// List the tenant's datasets on the daemon (tenant admin).
    List {
        #[command(flatten)]
        conn: Connection,
        #[arg(long)]
        tenant: String,
    },
    /// Delete a dataset on the daemon, every version (tenant admin).
    Delete {
        #[command(flatten)]
        conn: Connection,
        #[arg(long)]
        tenant: String,
        dataset: String,
    },
}

#[derive(Debug, Args)]
pub struct IngestRemote {
    #[command(flatten)]
    conn: Connection,
    #[arg(long)]
    tenant: String,
    /// The dataset's name.
    #[arg(long)]
    dataset: String,
    /// The file: .csv, .jsonl, .parquet, .arrow/.feather.
    file: PathBuf,
    #[command(flatten)]
    columns: crate::local::vault::ColumnArgs,
    /// Append to the latest version instead of replacing it.
    #[arg(long)]
    append: bool,
}

/// Counts bytes read and draws a progress line on a terminal.
struct Progress<R> {
    inner: R,
    read: u64,
    total: u64,
    last: Instant,
    draw: bool,
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.draw && (n == 0 || self.last.elapsed() >= Duration::from_millis(200)) {
            self.last = Instant::now();
            let percent = (self.read * 100).checked_div(self.total).unwrap_or(100).min(100);
            let filled = (percent / 4) as usize;
            eprint!(
                "\r[{}{}] {percent:>3}%  {} / {} MB",
                "#".repeat(filled),
                " ".repeat(25 - filled),
                self.read >> 20,
                self.total >> 20
            );
        }
        Ok(n)
    }
}

pub fn datasets(command: DatasetsCommand) -> anyhow::Result<ExitCode> {
    match command {
        DatasetsCommand::Ingest(args) => {
            let format = match kanon_vault::InputFormat::of_path(&args.file) {
                Some(kanon_vault::InputFormat::Csv) => "csv",
                Some(kanon_vault::InputFormat::JsonLines) => "jsonl",
                Some(kanon_vault::InputFormat::Parquet) => "parquet",
                Some(kanon_vault::InputFormat::ArrowIpc) => "arrow",
                None => bail!("{}: name it .csv, .jsonl, .parquet or .arrow", args.file.display()),
            };
            let file = std::fs::File::open(&args.file)
                .with_context(|| format!("cannot open {}", args.file.display()))?;
            let total = file.metadata()?.len();
            let columns = &args.columns;
            let upload = UploadArgs {
                format: format.into(),
                reference: columns.entity.is_none().then_some(true),
                entity: columns.entity.clone(),
                identifiers: (!columns.identifier.is_empty()).then(|| columns.identifier.join(",")),
                types: (!columns.types.is_empty()).then(|| {
                    columns.types.iter().map(|t| t.replacen('=', ":", 1)).collect::<Vec<_>>().join(",")
                }),
                mode: args.append.then(|| "append".into()),
            };
            let draw = std::io::stderr().is_terminal() && !args.conn.json;
            let reader =
                Progress { inner: std::io::BufReader::new(file), read: 0, total, last: Instant::now(), draw };
            let client = args.conn.client()?;
            let info = client.ingest(&args.tenant, &args.dataset, &upload, reader);
            if draw {
                eprintln!();
            }
            let info = info?;
            if args.conn.json {
                print_record(&info)?;
            } else {
                println!("{} version {}: {} rows", args.dataset, info.version, info.rows);
            }
        }
        DatasetsCommand::List { conn, tenant } => {
            let list = conn.client()?.list_datasets(&tenant)?;
            if conn.json {
                print_record(&list)?;
            } else {
                let rows = list
                    .iter()
                    .map(|d| {
                        vec![
                            escaped(&d.dataset),
                            d.version.to_string(),
                            d.rows.to_string(),
                            at(Some(d.created_unix_ms)),
                        ]
                    })
                    .collect();
                print_table(&["dataset", "version", "rows", "created"], rows);
            }
        }
        DatasetsCommand::Delete { conn, tenant, dataset } => {
            let info = conn.client()?.delete_dataset(&tenant, &dataset)?;
            if conn.json {
                print_record(&info)?
            } else {
                println!("deleted {dataset} (versions up to {})", info.version)
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
