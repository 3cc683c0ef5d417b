//! The tenant-data commands: ingest, list, export, erase, backup, restore
//! and key rotation, all on one data directory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use kanon_vault::{
    ColumnType, IngestOptions, InputFormat, KeyEncryptionKey, Vault, VersionInfo, WriteMode, export_csv,
    export_parquet, open_file,
};

/// Where the data directory is and how to get its key.
#[derive(Debug, Args)]
pub struct VaultArgs {
    /// The data directory.
    #[arg(long, env = "KANON_DATA_DIR", default_value = "kanon-data")]
    data_dir: PathBuf,
    #[command(flatten)]
    key: KeyArgs,
}

/// How to get the key-encryption key.
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// The key-encryption key: 32 raw bytes or 64 hex digits ($KANON_KEY
    /// may hold the hex instead).
    #[arg(long, env = "KANON_KEY_FILE", value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Development only: use (or create) a key kept inside the data
    /// directory, next to the data it protects.
    #[arg(long)]
    dev_key: bool,
}

/// The development key's file name inside the data directory.
const DEV_KEY: &str = "dev.key";

impl KeyArgs {
    /// The key, from the file, $KANON_KEY, or the development key in `data_dir`.
    pub fn key(&self, data_dir: &Path) -> anyhow::Result<KeyEncryptionKey> {
        if let Some(path) = &self.key_file {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read key file {}", path.display()))?;
            return Ok(KeyEncryptionKey::from_key_file(&path.display().to_string(), &bytes)?);
        }
        if let Ok(hex) = std::env::var("KANON_KEY") {
            return Ok(KeyEncryptionKey::from_key_file("$KANON_KEY", hex.as_bytes())?);
        }
        if !self.dev_key {
            bail!(
                "no key-encryption key: give --key-file FILE (or $KANON_KEY_FILE, or the hex in $KANON_KEY); \
                 --dev-key keeps a development key inside the data directory"
            );
        }
        let path = data_dir.join(DEV_KEY);
        if let Ok(bytes) = std::fs::read(&path) {
            return Ok(KeyEncryptionKey::from_key_file(&path.display().to_string(), &bytes)?);
        }
        let key = KeyEncryptionKey::generate();
        std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
        write_private(&path, key.to_hex().as_bytes())?;
        eprintln!(
            "warning: generated a DEVELOPMENT key-encryption key in {}. It sits next to the data it \
             protects, so the encryption protects nothing; use --key-file in production.",
            path.display()
        );
        Ok(key)
    }
}

impl VaultArgs {
    /// Open the data directory.
    pub fn open(&self) -> anyhow::Result<Vault> {
        let key = self.key.key(&self.data_dir)?;
        Vault::open(&self.data_dir, key)
            .with_context(|| format!("cannot open data directory {}", self.data_dir.display()))
    }
}

/// Create `path` readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

/// How the tenant classifies and types an input's columns.
#[derive(Debug, Args)]
pub struct ColumnArgs {
    /// The entity column (the person or customer group sizes count).
    #[arg(long, required_unless_present = "reference")]
    pub entity: Option<String>,
    /// Reference data: no personal data, no entity or identifier column.
    /// An entity-isolated run gives it whole to every entity.
    #[arg(long, conflicts_with_all = ["entity", "identifier"])]
    pub reference: bool,
    /// Another identifier column, pseudonymised like the entity; repeatable.
    #[arg(long)]
    pub identifier: Vec<String>,
    /// A column's type, COLUMN=int|float|bool|text|timestamp, instead of
    /// inferring it; repeatable.
    #[arg(long = "type", value_name = "COLUMN=TYPE")]
    pub types: Vec<String>,
}

impl ColumnArgs {
    pub fn options(&self) -> anyhow::Result<IngestOptions> {
        let types = self
            .types
            .iter()
            .map(|spec| {
                let (column, name) = spec
                    .split_once('=')
                    .with_context(|| format!("--type takes COLUMN=TYPE, got `{spec}`"))?;
                let column_type = match name {
                    "int" => ColumnType::Int,
                    "float" => ColumnType::Float,
                    "bool" => ColumnType::Bool,
                    "text" => ColumnType::Text,
                    "timestamp" => ColumnType::Timestamp,
                    other => bail!("unknown type `{other}`: use int, float, bool, text or timestamp"),
                };
                Ok((column.to_owned(), column_type))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(IngestOptions {
            entity: self.entity.clone().unwrap_or_default(),
            identifiers: self.identifier.clone(),
            types,
            reference: self.reference,
            ..IngestOptions::default()
        })
    }
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    #[command(flatten)]
    vault: VaultArgs,
    /// The tenant whose data this is.
    #[arg(long)]
    tenant: String,
    /// The dataset to create a new version of.
    #[arg(long)]
    dataset: String,
    /// The input file (.csv, .jsonl, .parquet, .arrow or .feather).
    file: PathBuf,
    /// The input format, if the file name does not say.
    #[arg(long)]
    format: Option<InputFormat>,
    #[command(flatten)]
    columns: ColumnArgs,
    /// Add the rows to the latest version instead of replacing it.
    #[arg(long)]
    append: bool,
}

pub fn ingest(args: IngestArgs) -> anyhow::Result<ExitCode> {
    let options = args.columns.options()?;
    let vault = args.vault.open()?;
    let reader = open_file(&args.file, args.format, &options)?;
    let mode = if args.append { WriteMode::Append } else { WriteMode::Replace };
    let info = vault.ingest(&args.tenant, &args.dataset, mode, reader, &args.file.display().to_string())?;
    println!("{}", describe(&info));
    Ok(ExitCode::SUCCESS)
}

fn describe(info: &VersionInfo) -> String {
    format!(
        "{}/{} v{}: {} rows, {} columns, {} chunks, {} bytes sealed, content {}",
        info.tenant,
        info.dataset,
        info.version,
        info.rows,
        info.schema.fields.len(),
        info.chunks,
        info.stored_bytes,
        &info.content_hash[..16]
    )
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DatasetsArgs {
    /// On the daemon instead of a data directory.
    #[command(subcommand)]
    pub remote: Option<crate::remote::datasets::DatasetsCommand>,
    #[command(flatten)]
    vault: VaultArgs,
    /// The tenant; all tenants' names if absent.
    #[arg(long)]
    tenant: Option<String>,
    /// List every version of this dataset.
    #[arg(long)]
    versions: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn datasets(args: DatasetsArgs) -> anyhow::Result<ExitCode> {
    if let Some(remote) = args.remote {
        return crate::remote::datasets::datasets(remote);
    }
    let vault = args.vault.open()?;
    let Some(tenant) = &args.tenant else {
        for tenant in vault.tenants()? {
            println!("{tenant}");
        }
        return Ok(ExitCode::SUCCESS);
    };
    let infos = match &args.versions {
        Some(dataset) => vault.versions(tenant, dataset)?,
        None => vault.datasets(tenant)?,
    };
    for info in &infos {
        if args.json {
            println!("{}", serde_json::to_string(info)?);
        } else {
            println!("{}", describe(info));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    vault: VaultArgs,
    #[arg(long)]
    tenant: String,
    #[arg(long)]
    dataset: String,
    /// The version; the latest if absent.
    #[arg(long)]
    version: Option<u64>,
    /// Write here instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// csv or parquet; by default the `--out` file's extension says, else csv.
    #[arg(long)]
    format: Option<ExportFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ExportFormat {
    Csv,
    Parquet,
}

pub fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let vault = args.vault.open()?;
    let dataset = vault.dataset(&args.tenant, &args.dataset, args.version)?;
    let format = args.format.unwrap_or_else(|| {
        let named = args.out.as_ref().and_then(|path| InputFormat::of_path(path));
        if named == Some(InputFormat::Parquet) { ExportFormat::Parquet } else { ExportFormat::Csv }
    });
    let write = |out: Box<dyn Write + Send>| match format {
        ExportFormat::Csv => export_csv(&dataset, out),
        ExportFormat::Parquet => export_parquet(&dataset, out),
    };
    match &args.out {
        Some(path) => {
            let file =
                std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
            let rows = write(Box::new(std::io::BufWriter::new(file)))?;
            eprintln!("{rows} rows written to {}", path.display());
        }
        None => {
            write(Box::new(std::io::BufWriter::new(std::io::stdout())))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct EraseArgs {
    #[command(flatten)]
    vault: VaultArgs,
    #[arg(long)]
    tenant: String,
    /// Delete only this dataset (every version); without it the whole tenant
    /// is erased, its data key destroyed.
    #[arg(long)]
    dataset: Option<String>,
}

pub fn erase(args: EraseArgs) -> anyhow::Result<ExitCode> {
    let vault = args.vault.open()?;
    match &args.dataset {
        Some(dataset) => {
            let info = vault.delete_dataset(&args.tenant, dataset)?;
            println!("deleted {}/{} (latest version {})", info.tenant, info.dataset, info.version);
        }
        None => {
            let versions = vault.erase_tenant(&args.tenant)?;
            println!("erased tenant {}: its data key and {versions} dataset versions", args.tenant);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    vault: VaultArgs,
    /// The backup directory to create (absent or empty).
    #[arg(long)]
    to: PathBuf,
}

pub fn backup(args: BackupArgs) -> anyhow::Result<ExitCode> {
    let data_dir = &args.vault.data_dir;
    let vault = args.vault.open().map_err(|e| {
        if e.downcast_ref::<kanon_vault::VaultError>().is_some_and(|e| matches!(e, kanon_vault::VaultError::InUse(_)))
        {
            e.context("a daemon serves this data directory: back it up through the daemon with `kanon backups create NAME`")
        } else {
            e
        }
    })?;
    // The daemon's state, if a daemon ever served this directory.
    let control = data_dir.join(kanon_daemon::CONTROL_FILE);
    let store = if control.exists() {
        Some(
            kanon_daemon::ControlStore::open(data_dir)
                .with_context(|| format!("cannot open {}", control.display()))?,
        )
    } else {
        None
    };
    let plugins = data_dir.join(kanon_daemon::registry::PLUGINS_DIR);
    let summary = kanon_daemon::backup::backup(&vault, store.as_ref(), &plugins, &args.to)?;
    println!(
        "backed up {} tenants, {} dataset versions, {} files ({} bytes, still encrypted){} to {}",
        summary.tenants,
        summary.versions,
        summary.files,
        summary.bytes,
        daemon_part(&summary),
        args.to.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// What a backup holds of the daemon, for the summary line.
fn daemon_part(summary: &kanon_vault::BackupSummary) -> String {
    match summary.extra_files {
        0 => String::new(),
        n => format!(", and the daemon's state and {} plugins ({} bytes)", n - 1, summary.extra_bytes),
    }
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    vault: VaultArgs,
    /// The backup directory.
    #[arg(long)]
    from: PathBuf,
}

pub fn restore(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let key = args.vault.key.key(&args.vault.data_dir)?;
    let summary = kanon_daemon::backup::restore(&args.from, &args.vault.data_dir, key)?;
    println!(
        "restored {} tenants, {} dataset versions, {} files{} into {}",
        summary.tenants,
        summary.versions,
        summary.files,
        daemon_part(&summary),
        args.vault.data_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct RotateKeyArgs {
    #[command(flatten)]
    vault: VaultArgs,
    /// The new key-encryption key (32 raw bytes or 64 hex digits). From now
    /// on the data directory opens only with it.
    #[arg(long, value_name = "FILE")]
    new_key_file: PathBuf,
}

pub fn rotate_key(args: RotateKeyArgs) -> anyhow::Result<ExitCode> {
    let path = &args.new_key_file;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read key file {}", path.display()))?;
    let next = KeyEncryptionKey::from_key_file(&path.display().to_string(), &bytes)?;
    let tenants = args.vault.open()?.rotate_key(next)?;
    println!("re-wrapped the data keys of {tenants} tenants; no data was rewritten");
    Ok(ExitCode::SUCCESS)
}
