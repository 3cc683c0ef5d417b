//! The daemon's client: `kanon tenants|tokens|datasets …|plugins|approvals|
//! jobs|results|audit|grants|login|enrol`, all through the HTTP API.
//!
//! Exit codes (beyond main's): 3 a job failed; 4 the daemon refused the
//! request (any 4xx; the message says why); 5 the daemon is unreachable or
//! failed (5xx).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use kanon_daemon::approvals::covering;
use kanon_daemon::client::{Client, ClientError};
use kanon_daemon::registry::PluginRecord;
use kanon_daemon::{AuditExport, Role};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::render;

pub const EXIT_REFUSED: u8 = 4;
pub const EXIT_UNREACHABLE: u8 = 5;

/// Which daemon, with which token.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// A profile saved by `kanon login` (~/.config/kanon/profiles.toml).
    #[arg(long, env = "KANON_PROFILE", global = true)]
    profile: Option<String>,
    /// The daemon's address (default: the profile's, else http://127.0.0.1:7878).
    #[arg(long, env = "KANON_URL", global = true)]
    url: Option<String>,
    /// The token (default: the profile's).
    #[arg(long, env = "KANON_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Profiles {
    #[serde(default)]
    profiles: BTreeMap<String, Profile>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Profile {
    url: String,
    token: String,
}

fn profiles_path() -> anyhow::Result<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .context("no $HOME to keep profiles in")?;
    Ok(base.join("kanon").join("profiles.toml"))
}

fn read_profiles(path: &Path) -> anyhow::Result<Profiles> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            toml::from_str(&text).with_context(|| format!("{} is not a profiles file", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Profiles::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

impl Connection {
    pub(crate) fn client(&self) -> anyhow::Result<Client> {
        let profile = match &self.profile {
            Some(name) => {
                let path = profiles_path()?;
                let profiles = read_profiles(&path)?;
                Some(profiles.profiles.get(name).cloned().with_context(|| {
                    format!("no profile `{name}` in {}; save one with `kanon login`", path.display())
                })?)
            }
            None => None,
        };
        let url = self
            .url
            .clone()
            .or_else(|| profile.as_ref().map(|p| p.url.clone()))
            .unwrap_or_else(|| "http://127.0.0.1:7878".into());
        let token = self.token.clone().or_else(|| profile.map(|p| p.token));
        Ok(Client::new(&url, token))
    }
}

/// A client error as an exit code, printing the message.
pub fn exit_code(error: &anyhow::Error) -> Option<ExitCode> {
    let client = error.downcast_ref::<ClientError>()?;
    // The daemon's message can quote what a plugin declared.
    eprintln!("error: {}", render::escape_controls(&format!("{error:#}")));
    Some(ExitCode::from(match client.status() {
        Some(status) if (400..500).contains(&status) => EXIT_REFUSED,
        _ => EXIT_UNREACHABLE,
    }))
}

pub(crate) fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Rows as aligned columns under a header.
pub(crate) fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_uppercase()).collect());
    for row in rows {
        line(row);
    }
}

/// A reply as JSON, or as a table of its items (one row per item).
pub(crate) fn show(
    json: bool,
    value: Value,
    header: &[&str],
    row: impl Fn(&Value) -> Vec<String>,
) -> anyhow::Result<ExitCode> {
    if json {
        print_json(&value)?;
    } else {
        let items = if value.is_array() { list_of(value) } else { vec![value] };
        print_table(header, items.iter().map(row).collect());
    }
    Ok(ExitCode::SUCCESS)
}

/// `revoked` or the live state's name.
fn revoked_or<'a>(item: &Value, live: &'a str) -> &'a str {
    if item["revoked_ms"].is_null() { live } else { "revoked" }
}

/// A value of the daemon's answer as text for a terminal; strings may be
/// plugin-supplied (names, labels, logs), so their control characters are
/// escaped.
pub(crate) fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => render::escape_controls(s).into_owned(),
        other => other.to_string(),
    }
}

pub(crate) fn when(ms: &Value) -> String {
    let Some(ms) = ms.as_u64() else { return "-".into() };
    kanon_vault::format_timestamp((ms * 1000) as i64)
}

pub(crate) fn list_of(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) => items,
        _ => Vec::new(),
    }
}

/// Seconds from `30s`, `15m`, `12h`, `7d` or a plain number of seconds.
pub(crate) fn duration_secs(text: &str) -> anyhow::Result<u64> {
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = digits.parse().with_context(|| format!("`{text}` is not a duration like 30m, 12h or 7d"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("`{text}` is not a duration like 30m, 12h or 7d"),
    };
    Ok(n * scale)
}

// ---------------------------------------------------------------- login

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The profile's name, e.g. one per role: operator, acme-admin, ana.
    name: String,
    #[arg(long)]
    url: String,
    /// The token; read from stdin if absent (keeps it out of shell history).
    #[arg(long)]
    token: Option<String>,
}

/// A secret from `given`, else the first line of stdin.
fn secret_or_stdin(given: Option<String>) -> anyhow::Result<String> {
    Ok(match given {
        Some(secret) => secret,
        None => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            line.trim().to_owned()
        }
    })
}

/// Save `token` for `url` as profile `name` (the file readable by its owner
/// only), and say whose it is.
fn save_profile(name: &str, url: &str, token: String) -> anyhow::Result<()> {
    let client = Client::new(url, Some(token.clone()));
    let me: Value = client.get("/v1/whoami")?;
    let path = profiles_path()?;
    let mut profiles = read_profiles(&path)?;
    profiles.profiles.insert(name.to_owned(), Profile { url: url.to_owned(), token });
    std::fs::create_dir_all(path.parent().expect("a file in a directory"))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(toml::to_string(&profiles)?.as_bytes())?;
    let tenant =
        me["tenant"].as_str().map(|t| format!(" of `{}`", render::escape_controls(t))).unwrap_or_default();
    println!(
        "profile `{name}`: {} {}{tenant} ({})",
        me["role"].as_str().unwrap_or("?"),
        text(&me["name"]),
        path.display()
    );
    Ok(())
}

pub fn login(args: LoginArgs) -> anyhow::Result<ExitCode> {
    let token = secret_or_stdin(args.token)?;
    save_profile(&args.name, &args.url, token)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct EnrolArgs {
    /// The profile to save the new token as.
    profile: String,
    #[arg(long)]
    url: String,
    /// Your holder name, unique on the daemon (default: the profile's name).
    #[arg(long)]
    name: Option<String>,
    /// The one-time enrolment code; read from stdin if absent (keeps it
    /// out of shell history).
    #[arg(long)]
    code: Option<String>,
    /// The token's lifetime: 90d, 12h; none means until revoked.
    #[arg(long)]
    ttl: Option<String>,
}

/// `kanon enrol`: a tenant's admin redeems the code the operator handed
/// over, and keeps the token as a profile.
pub fn enrol(args: EnrolArgs) -> anyhow::Result<ExitCode> {
    let code = secret_or_stdin(args.code)?;
    let name = args.name.unwrap_or_else(|| args.profile.clone());
    let ttl_secs = args.ttl.as_deref().map(duration_secs).transpose()?;
    let (_, token) = Client::new(&args.url, None).enrol(&code, &name, ttl_secs)?;
    save_profile(&args.profile, &args.url, token)?;
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------- tenants, tokens

#[derive(Debug, Args)]
pub struct TenantsArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: TenantsCommand,
}

#[derive(Debug, Subcommand)]
enum TenantsCommand {
    /// Create a tenant (operator); prints the one-time code its admin
    /// enrols with (`kanon enrol`).
    Create {
        name: String,
        /// How long the code lasts: 12h, 7d (at most 30d; default 7d).
        #[arg(long)]
        enrolment_ttl: Option<String>,
    },
    /// List tenants (operator).
    List,
    /// A fresh one-time enrolment code for a tenant whose admin lost access
    /// (operator). It replaces the tenant's unused code; its admin tokens
    /// stay, and its audit log shows the code.
    Enrolment {
        name: String,
        /// How long the code lasts: 12h, 7d (at most 30d; default 7d).
        #[arg(long)]
        ttl: Option<String>,
    },
}

/// Print an enrolment code: the code alone on stdout, how to use it on stderr.
fn print_enrolment(enrolment: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(enrolment);
    }
    println!("{}", text(&enrolment["code"]));
    eprintln!(
        "one-time enrolment code for the admin of `{}`, until {} (shown once): the admin runs \
         `kanon enrol PROFILE --url URL --name HOLDER` and pastes it",
        text(&enrolment["tenant"]),
        when(&enrolment["expires_ms"])
    );
    Ok(())
}

pub fn tenants(args: TenantsArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let ttl = |text: Option<String>| text.as_deref().map(duration_secs).transpose();
    let value: Value = match args.command {
        TenantsCommand::Create { name, enrolment_ttl } => {
            let body = json!({"name": name, "enrolment_ttl_secs": ttl(enrolment_ttl)?});
            let created: Value = client.send("POST", "/v1/tenants", &body)?;
            if args.conn.json {
                print_json(&created)?;
            } else {
                eprintln!("created tenant `{}`", text(&created["name"]));
                print_enrolment(&created["enrolment"], false)?;
            }
            return Ok(ExitCode::SUCCESS);
        }
        TenantsCommand::Enrolment { name, ttl: given } => {
            let enrolment: Value = client.send(
                "POST",
                &format!("/v1/tenants/{name}/enrolments"),
                &json!({"ttl_secs": ttl(given)?}),
            )?;
            print_enrolment(&enrolment, args.conn.json)?;
            return Ok(ExitCode::SUCCESS);
        }
        TenantsCommand::List => client.get("/v1/tenants")?,
    };
    show(args.conn.json, value, &["tenant", "created"], |t| vec![text(&t["name"]), when(&t["created_ms"])])
}

#[derive(Debug, Args)]
pub struct TokensArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: TokensCommand,
}

#[derive(Debug, Subcommand)]
enum TokensCommand {
    /// Issue a token; it is printed once. The operator issues operator,
    /// analyst and vendor tokens; a tenant admin further tenant-admin tokens
    /// of its tenant.
    Issue {
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// The holder's name (approvals name analysts by it); unique among
        /// live tokens.
        #[arg(long)]
        name: String,
        /// The tenant of a tenant-admin token (default: the issuer's).
        #[arg(long)]
        tenant: Option<String>,
        /// Lifetime: 30m, 12h, 90d; none means until revoked.
        #[arg(long)]
        ttl: Option<String>,
    },
    /// List tokens, without secrets (the operator every one, a tenant
    /// admin its tenant's).
    List,
    /// Revoke a token by id (the operator any, a tenant admin its tenant's).
    Revoke { id: String },
}

fn parse_role(text: &str) -> Result<Role, String> {
    Role::ALL
        .into_iter()
        .find(|r| r.name() == text)
        .ok_or_else(|| format!("unknown role `{text}`: operator, tenant-admin, analyst or vendor"))
}

pub fn tokens(args: TokensArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    match args.command {
        TokensCommand::Issue { role, name, tenant, ttl } => {
            let ttl_secs = ttl.as_deref().map(duration_secs).transpose()?;
            let issued: Value = client.send(
                "POST",
                "/v1/tokens",
                &json!({"role": role, "name": name, "tenant": tenant, "ttl_secs": ttl_secs}),
            )?;
            if args.conn.json {
                print_json(&issued)?;
            } else {
                println!("{}", text(&issued["token"]));
                eprintln!("token {} for {} {} (shown once)", text(&issued["info"]["id"]), role, name);
            }
        }
        TokensCommand::List => {
            let list: Value = client.get("/v1/tokens")?;
            return show(args.conn.json, list, &["id", "role", "name", "tenant", "expires", "state"], |t| {
                let columns = ["id", "role", "name", "tenant"].map(|c| text(&t[c]));
                let mut row = columns.to_vec();
                row.extend([when(&t["expires_ms"]), revoked_or(t, "live").into()]);
                row
            });
        }
        TokensCommand::Revoke { id } => {
            let info: Value = client.delete(&format!("/v1/tokens/{id}"))?;
            if args.conn.json { print_json(&info)? } else { println!("revoked token {id}") }
        }
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------- datasets

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
    columns: crate::vault_cmd::ColumnArgs,
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
            let mut query = match &columns.entity {
                Some(entity) => format!("format={format}&entity={entity}"),
                None => format!("format={format}&reference=true"),
            };
            if !columns.identifier.is_empty() {
                query.push_str(&format!("&identifiers={}", columns.identifier.join(",")));
            }
            if !columns.types.is_empty() {
                let types: Vec<String> = columns.types.iter().map(|t| t.replacen('=', ":", 1)).collect();
                query.push_str(&format!("&types={}", types.join(",")));
            }
            if args.append {
                query.push_str("&mode=append");
            }
            let draw = std::io::stderr().is_terminal() && !args.conn.json;
            let reader =
                Progress { inner: std::io::BufReader::new(file), read: 0, total, last: Instant::now(), draw };
            let client = args.conn.client()?;
            let info: Result<Value, ClientError> = client.upload(
                "PUT",
                &format!("/v1/tenants/{}/datasets/{}?{query}", args.tenant, args.dataset),
                "application/octet-stream",
                reader,
            );
            if draw {
                eprintln!();
            }
            let info = info?;
            if args.conn.json {
                print_json(&info)?;
            } else {
                println!("{} version {}: {} rows", args.dataset, text(&info["version"]), text(&info["rows"]));
            }
        }
        DatasetsCommand::List { conn, tenant } => {
            let list: Value = conn.client()?.get(&format!("/v1/tenants/{tenant}/datasets"))?;
            if conn.json {
                print_json(&list)?;
            } else {
                let rows = list_of(list)
                    .iter()
                    .map(|d| {
                        vec![
                            text(&d["dataset"]),
                            text(&d["version"]),
                            text(&d["rows"]),
                            when(&d["created_unix_ms"]),
                        ]
                    })
                    .collect();
                print_table(&["dataset", "version", "rows", "created"], rows);
            }
        }
        DatasetsCommand::Delete { conn, tenant, dataset } => {
            let info: Value = conn.client()?.delete(&format!("/v1/tenants/{tenant}/datasets/{dataset}"))?;
            if conn.json {
                print_json(&info)?
            } else {
                println!("deleted {dataset} (versions up to {})", text(&info["version"]))
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------- plugins

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
            client.call("POST", "/v1/plugins", Some(("application/wasm", &bytes)))?
        }
        PluginsCommand::List => client.get("/v1/plugins")?,
        PluginsCommand::Show { hash } => client.get(&format!("/v1/plugins/{hash}"))?,
        PluginsCommand::Delete { hash } => client.delete(&format!("/v1/plugins/{hash}"))?,
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

// ---------------------------------------------------------------- approvals

#[derive(Debug, Args)]
pub struct ApprovalsArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: ApprovalsCommand,
}

#[derive(Debug, Subcommand)]
enum ApprovalsCommand {
    /// Approve a plugin for an analyst on your data (tenant admin). The
    /// datasets and outputs default to everything the manifest declares.
    Grant {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        plugin: String,
        #[arg(long)]
        analyst: String,
        /// MANIFEST_NAME=YOUR_DATASET; repeatable (default: the same names).
        #[arg(long = "dataset", value_name = "NAME=DATASET")]
        datasets: Vec<String>,
        /// The exact parameters jobs must pass (a JSON object).
        #[arg(long, default_value = "{}", conflicts_with = "params_schema")]
        params: String,
        /// Instead: a JSON Schema every job's params must satisfy (JSON text).
        #[arg(long)]
        params_schema: Option<String>,
        /// Lifetime: 12h, 30d.
        #[arg(long, default_value = "30d")]
        ttl: String,
        /// `entity`: every job under this approval runs once per entity, each
        /// instance seeing only that entity's rows.
        #[arg(long, value_parser = ["shared", "entity"])]
        isolation: Option<String>,
    },
    /// List approvals: a tenant's (tenant admin), or those naming you (analyst).
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke an approval (tenant admin).
    Revoke {
        #[arg(long)]
        tenant: String,
        id: String,
    },
}

pub fn approvals(args: ApprovalsArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let value: Value = match args.command {
        ApprovalsCommand::Grant {
            tenant,
            plugin,
            analyst,
            datasets,
            params,
            params_schema,
            ttl,
            isolation,
        } => {
            let record: PluginRecord = client.get(&format!("/v1/plugins/{plugin}"))?;
            let mapping: BTreeMap<String, String> = datasets
                .iter()
                .map(|spec| {
                    let (name, dataset) = spec
                        .split_once('=')
                        .with_context(|| format!("--dataset takes NAME=DATASET, got `{spec}`"))?;
                    Ok((name.to_owned(), dataset.to_owned()))
                })
                .collect::<anyhow::Result<_>>()?;
            let (approved, outputs) = covering(&record.manifest, |name| {
                mapping.get(name).cloned().unwrap_or_else(|| name.to_owned())
            });
            let mut body = json!({"plugin": plugin, "analyst": analyst, "datasets": approved, "outputs": outputs,
                                  "ttl_secs": duration_secs(&ttl)?});
            if let Some(isolation) = isolation {
                body["policy"] = json!({"isolation": isolation});
            }
            match params_schema {
                Some(schema) => {
                    body["params_schema"] =
                        serde_json::from_str(&schema).context("--params-schema is not JSON")?;
                }
                None => body["params"] = serde_json::from_str(&params).context("--params is not JSON")?,
            }
            client.send("POST", &format!("/v1/tenants/{tenant}/approvals"), &body)?
        }
        ApprovalsCommand::List { tenant: Some(tenant) } => {
            client.get(&format!("/v1/tenants/{tenant}/approvals"))?
        }
        ApprovalsCommand::List { tenant: None } => client.get("/v1/approvals")?,
        ApprovalsCommand::Revoke { tenant, id } => {
            client.delete(&format!("/v1/tenants/{tenant}/approvals/{id}"))?
        }
    };
    show(args.conn.json, value, &["id", "tenant", "plugin", "analyst", "datasets", "expires", "state"], |a| {
        let datasets: Vec<String> = a["datasets"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| format!("{k}={}", text(&v["dataset"]))).collect())
            .unwrap_or_default();
        vec![
            text(&a["id"]),
            text(&a["tenant"]),
            text(&a["plugin"]).chars().take(12).collect(),
            text(&a["analyst"]),
            datasets.join(","),
            when(&a["expires_ms"]),
            revoked_or(a, "live").into(),
        ]
    })
}

// ---------------------------------------------------------------- jobs, results

#[derive(Debug, Args)]
pub struct JobsArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: JobsCommand,
}

#[derive(Debug, Subcommand)]
enum JobsCommand {
    /// Submit a job under an approval (analyst); with --wait, follow it to
    /// the end and print the results.
    Run {
        /// The approval; its tenant, plugin, datasets and params are used.
        #[arg(long)]
        approval: String,
        /// A stricter policy than the tenant's (a TOML file).
        #[arg(long)]
        policy: Option<PathBuf>,
        #[arg(long)]
        wait: bool,
    },
    /// Your jobs (analyst), or your tenant's (tenant admin).
    List,
    /// One job's state.
    Show { id: String },
    /// Cancel a job.
    Cancel { id: String },
    /// The plugin's output log of a job (tenant admin, or support under a grant).
    Log { id: String },
}

pub fn jobs(args: JobsArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let json_out = args.conn.json;
    match args.command {
        JobsCommand::Run { approval, policy, wait } => {
            let approvals: Value = client.get("/v1/approvals")?;
            let found = list_of(approvals)
                .into_iter()
                .find(|a| a["id"] == approval.as_str())
                .with_context(|| format!("no approval `{approval}` names you"))?;
            let datasets: BTreeMap<String, Value> = found["datasets"]
                .as_object()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v["dataset"].clone())).collect())
                .unwrap_or_default();
            let policy: Option<Value> = match policy {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    let layer = kanon_gate::PolicyLayer::from_toml(&path.display().to_string(), &text)?;
                    Some(serde_json::to_value(layer)?)
                }
                None => None,
            };
            let job: Value = client.send(
                "POST",
                "/v1/jobs",
                &json!({"tenant": found["tenant"], "plugin": found["plugin"], "approval": approval,
                        "datasets": datasets, "params": found["params"], "policy": policy}),
            )?;
            let id = text(&job["id"]);
            if !wait {
                if json_out {
                    print_json(&job)?
                } else {
                    println!("{id}")
                }
                return Ok(ExitCode::SUCCESS);
            }
            let job = follow(&client, &id, !json_out)?;
            if job["state"] != "succeeded" {
                if json_out {
                    print_json(&job)?;
                } else {
                    eprintln!(
                        "job {id} {}: {}; nothing was released",
                        text(&job["state"]),
                        text(&job["failure"])
                    );
                }
                return Ok(ExitCode::from(crate::runner::EXIT_RUN_FAILED));
            }
            show_results(&client, &id, json_out)?;
        }
        JobsCommand::List => {
            let list: Value = client.get("/v1/jobs")?;
            if json_out {
                print_json(&list)?;
            } else {
                print_table(
                    &["id", "tenant", "state", "failure", "submitted"],
                    list_of(list).iter().map(job_row).collect(),
                );
            }
        }
        JobsCommand::Show { id } => {
            let job: Value = client.get(&format!("/v1/jobs/{id}"))?;
            if json_out {
                print_json(&job)?
            } else {
                print_table(&["id", "tenant", "state", "failure", "submitted"], vec![job_row(&job)])
            }
        }
        JobsCommand::Cancel { id } => {
            let job: Value = client.send("POST", &format!("/v1/jobs/{id}/cancel"), &json!({}))?;
            if json_out { print_json(&job)? } else { println!("job {id}: {}", text(&job["state"])) }
        }
        JobsCommand::Log { id } => print_log(&client.get(&format!("/v1/jobs/{id}/log"))?, json_out)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// A plugin's output log of a run.
pub(crate) fn print_log(log: &Value, json_out: bool) -> anyhow::Result<()> {
    if json_out {
        return print_json(log);
    }
    for (name, value) in [("stdout", &log["stdout"]), ("stderr", &log["stderr"]), ("error", &log["error"])] {
        println!("== {name}\n{}", text(value));
    }
    Ok(())
}

fn job_row(job: &Value) -> Vec<String> {
    vec![
        text(&job["id"]),
        text(&job["tenant"]),
        text(&job["state"]),
        text(&job["failure"]),
        when(&job["submitted_ms"]),
    ]
}

/// Poll a job until it ends, showing its state on stderr.
pub(crate) fn follow(client: &Client, id: &str, show: bool) -> anyhow::Result<Value> {
    follow_at(client, &format!("/v1/jobs/{id}"), &format!("job {id}"), show)
}

/// Poll a job or a benchmark run at `path` until it ends, showing its state
/// on stderr as `what`'s.
pub(crate) fn follow_at(client: &Client, path: &str, what: &str, show: bool) -> anyhow::Result<Value> {
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let item: Value = client.get(path)?;
        let state = text(&item["state"]);
        if show && state != last {
            eprintln!("{what}: {state} ({:.1} s)", started.elapsed().as_secs_f64());
            last = state.clone();
        }
        if matches!(state.as_str(), "succeeded" | "failed" | "cancelled") {
            return Ok(item);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn show_results(client: &Client, id: &str, json_out: bool) -> anyhow::Result<()> {
    let release: kanon_gate::Release = client.get(&format!("/v1/jobs/{id}/results"))?;
    if json_out {
        return print_json(&release);
    }
    print!("{}", render::release_text(&release));
    Ok(())
}

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
            let body = client.get_text(&format!("/v1/jobs/{id}/results?format={format}"))?;
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

// ---------------------------------------------------------------- audit, grants

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
        Some(tenant) => client.get(&format!("/v1/tenants/{tenant}/audit"))?,
        None => client.get("/v1/audit")?,
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
                            when(&json!(e.at_ms)),
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

#[derive(Debug, Args)]
pub struct GrantsArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: GrantsCommand,
}

#[derive(Debug, Subcommand)]
enum GrantsCommand {
    /// Let operator staff read your job metadata and logs for a while (tenant admin).
    Create {
        #[arg(long)]
        tenant: String,
        /// How long: 2h, 3d (at most 30d).
        #[arg(long)]
        ttl: String,
        /// Why: a ticket number, say.
        #[arg(long)]
        reason: String,
    },
    List {
        #[arg(long)]
        tenant: String,
    },
    Revoke {
        #[arg(long)]
        tenant: String,
        id: String,
    },
}

pub fn grants(args: GrantsArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let value: Value = match args.command {
        GrantsCommand::Create { tenant, ttl, reason } => client.send(
            "POST",
            &format!("/v1/tenants/{tenant}/grants"),
            &json!({"ttl_secs": duration_secs(&ttl)?, "reason": reason}),
        )?,
        GrantsCommand::List { tenant } => client.get(&format!("/v1/tenants/{tenant}/grants"))?,
        GrantsCommand::Revoke { tenant, id } => {
            client.delete(&format!("/v1/tenants/{tenant}/grants/{id}"))?
        }
    };
    show(args.conn.json, value, &["id", "expires", "state", "reason"], |g| {
        vec![text(&g["id"]), when(&g["expires_ms"]), revoked_or(g, "granted").into(), text(&g["reason"])]
    })
}

// ---------------------------------------------------------------- backups

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
    let info: Value = client.send("POST", "/v1/backups", &json!({"name": name}))?;
    if args.conn.json {
        print_json(&info)?;
    } else {
        println!(
            "backed up {} tenants, {} dataset versions ({} files, {} bytes, still encrypted) and the daemon's \
             state ({} files, {} bytes) to {} on the daemon's machine",
            info["tenants"],
            info["versions"],
            info["chunk_files"],
            info["chunk_bytes"],
            info["daemon_files"],
            info["daemon_bytes"],
            text(&info["path"]),
        );
    }
    Ok(ExitCode::SUCCESS)
}
