//! The commands that talk to a daemon, one module per API module of the
//! daemon's (`kanon_daemon::api`), all through [`kanon_client::Client`]:
//! `login` and `enrol` (profiles), `tenants`, `tokens`, `datasets …`,
//! `plugins`, `approvals`, `jobs`, `results`, `budget`, `audit`, `grants`,
//! `backups`, `benchmarks`.
//!
//! Exit codes (beyond main's): 3 a job failed; 4 the daemon refused the
//! request (any 4xx; the message says why); 5 the daemon is unreachable or
//! failed (5xx).

pub mod approvals;
pub mod audit;
pub mod backups;
pub mod benchmarks;
pub mod budget;
pub mod datasets;
pub mod grants;
pub mod jobs;
pub mod login;
pub mod output;
pub mod plugins;
pub mod results;
pub mod tenants;
pub mod tokens;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use kanon_client::{Client, ClientError};
use serde::{Deserialize, Serialize};

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
pub(crate) struct Profiles {
    #[serde(default)]
    pub(crate) profiles: BTreeMap<String, Profile>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Profile {
    pub(crate) url: String,
    pub(crate) token: String,
}

pub(crate) fn profiles_path() -> anyhow::Result<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .context("no $HOME to keep profiles in")?;
    Ok(base.join("kanon").join("profiles.toml"))
}

pub(crate) fn read_profiles(path: &Path) -> anyhow::Result<Profiles> {
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
