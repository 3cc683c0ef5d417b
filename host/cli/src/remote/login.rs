//! `kanon login` and `kanon enrol`: a daemon's address and a token, saved
//! as a named profile (`/v1/whoami`, `POST /v1/enrol`).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use kanon_client::Client;

use super::output::{duration_secs, escaped};
use super::{Profile, profiles_path, read_profiles};

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
    let me = client.whoami()?;
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
    let tenant = me.tenant.as_deref().map(|t| format!(" of `{}`", escaped(t))).unwrap_or_default();
    println!("profile `{name}`: {} {}{tenant} ({})", me.role, escaped(&me.name), path.display());
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
