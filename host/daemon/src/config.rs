//! The daemon's settings: a TOML file, then environment overrides.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kanon_gate::PolicyLayer;
use serde::Deserialize;

/// Everything `kanon serve` is told.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Where to listen. Loopback unless the operator says otherwise.
    pub listen: SocketAddr,
    /// The data directory: the vault, the control database, plugins.
    pub data_dir: PathBuf,
    /// Where to write the first operator token (mode 0600) instead of
    /// printing it.
    pub operator_token_file: Option<PathBuf>,
    /// Where `POST /v1/backups` writes backups: `backups/` in the data
    /// directory unless set. Another disk is better.
    pub backup_dir: Option<PathBuf>,
    pub limits: RequestLimits,
    pub jobs: JobLimits,
    /// The operator's floor under every tenant's policy.
    pub floor: PolicyLayer,
}

/// Limits on every request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestLimits {
    /// Largest JSON body.
    pub max_body_bytes: usize,
    /// Largest dataset upload.
    pub max_upload_bytes: u64,
    /// Largest plugin upload.
    pub max_plugin_bytes: usize,
    /// Time a JSON request may take.
    pub request_timeout_secs: u64,
    /// Time an upload (dataset or plugin) may take.
    pub upload_timeout_secs: u64,
    /// Requests served at once; more are refused with 503.
    pub max_concurrent_requests: usize,
    /// Connections open at once. At the cap, the oldest connection that has
    /// not sent a whole request head is closed to make room; if every one
    /// has, the new one is answered 503 and closed. Keep it well below the
    /// process's file limit (`ulimit -n`).
    pub max_connections: usize,
    /// Time a client has to send a request's headers (and that a
    /// keep-alive connection may sit idle) before its connection is closed.
    pub header_read_timeout_secs: u64,
    /// At shutdown, how long requests in flight may take to finish before
    /// they are dropped.
    pub shutdown_grace_secs: u64,
}

/// Limits on jobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobLimits {
    /// Jobs running at once, over all tenants.
    pub concurrent: usize,
    /// Jobs running at once on one tenant's data.
    pub per_tenant: usize,
    /// Jobs one tenant may have waiting; more are refused with 429.
    pub queued_per_tenant: usize,
    /// At shutdown, how long running jobs may take to finish before they are
    /// abandoned (and marked failed at the next start).
    pub shutdown_grace_secs: u64,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7878)),
            data_dir: PathBuf::from("kanon-data"),
            operator_token_file: None,
            backup_dir: None,
            limits: RequestLimits::default(),
            jobs: JobLimits::default(),
            floor: PolicyLayer::default(),
        }
    }
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            max_upload_bytes: 8 << 30,
            max_plugin_bytes: 64 << 20,
            request_timeout_secs: 30,
            upload_timeout_secs: 3600,
            max_concurrent_requests: 512,
            max_connections: 512,
            header_read_timeout_secs: 10,
            shutdown_grace_secs: 10,
        }
    }
}

impl Default for JobLimits {
    fn default() -> Self {
        Self { concurrent: 2, per_tenant: 1, queued_per_tenant: 1000, shutdown_grace_secs: 30 }
    }
}

impl DaemonConfig {
    /// Where online backups go.
    pub fn backup_dir(&self) -> PathBuf {
        self.backup_dir.clone().unwrap_or_else(|| self.data_dir.join("backups"))
    }
}

impl RequestLimits {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    pub fn upload_timeout(&self) -> Duration {
        Duration::from_secs(self.upload_timeout_secs)
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_secs)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

/// The settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {detail}")]
    Read { path: String, detail: String },
    #[error("{path}: {detail}")]
    Parse { path: String, detail: String },
    #[error("${name}: {detail}")]
    Env { name: &'static str, detail: String },
    #[error("{0}")]
    Invalid(String),
}

impl DaemonConfig {
    /// The file's settings (defaults if `path` is `None`), then `KANON_LISTEN`
    /// and `KANON_DATA_DIR` from the environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                    path: path.display().to_string(),
                    detail: e.to_string(),
                })?;
                Self::from_toml(&path.display().to_string(), &text)?
            }
            None => Self::default(),
        };
        config.apply_env(|name| std::env::var(name).ok())?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_toml(source: &str, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: source.to_owned(), detail: e.to_string() })
    }

    fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(listen) = var("KANON_LISTEN") {
            self.listen = listen.parse().map_err(|e: std::net::AddrParseError| ConfigError::Env {
                name: "KANON_LISTEN",
                detail: format!("`{listen}` is not an address:port ({e})"),
            })?;
        }
        if let Some(dir) = var("KANON_DATA_DIR") {
            self.data_dir = PathBuf::from(dir);
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("jobs.concurrent", self.jobs.concurrent),
            ("jobs.per_tenant", self.jobs.per_tenant),
            ("limits.max_body_bytes", self.limits.max_body_bytes),
            ("limits.max_concurrent_requests", self.limits.max_concurrent_requests),
            ("limits.max_connections", self.limits.max_connections),
            ("limits.header_read_timeout_secs", self.limits.header_read_timeout_secs as usize),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Invalid(format!("{name} must be at least 1")));
        }
        kanon_gate::Policy::floor(&self.floor).map_err(|e| ConfigError::Invalid(format!("floor: {e}")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_then_the_environment() {
        let mut config = DaemonConfig::from_toml(
            "kanon.toml",
            "listen = \"127.0.0.1:9000\"\n[jobs]\nconcurrent = 4\n[floor]\nmin_entities = 20\n",
        )
        .unwrap();
        assert_eq!(config.jobs.concurrent, 4);
        assert_eq!(config.jobs.per_tenant, 1);
        assert_eq!(config.floor.min_entities, Some(20));
        config
            .apply_env(|name| match name {
                "KANON_LISTEN" => Some("127.0.0.1:9100".into()),
                "KANON_DATA_DIR" => Some("/srv/kanon".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(config.listen.port(), 9100);
        assert_eq!(config.data_dir, PathBuf::from("/srv/kanon"));
        config.validate().unwrap();
    }

    #[test]
    fn bad_settings_are_refused_by_name() {
        let unknown = DaemonConfig::from_toml("kanon.toml", "listn = \"x\"").unwrap_err().to_string();
        assert!(unknown.contains("listn"), "{unknown}");
        let mut config = DaemonConfig::default();
        let env = config.apply_env(|n| (n == "KANON_LISTEN").then(|| "localhost".into())).unwrap_err();
        assert!(env.to_string().starts_with("$KANON_LISTEN"), "{env}");
        config.jobs.concurrent = 0;
        assert!(config.validate().unwrap_err().to_string().contains("jobs.concurrent"));
        let loose = DaemonConfig::from_toml("kanon.toml", "[floor]\nmin_entities = 0\n").unwrap();
        assert!(loose.validate().unwrap_err().to_string().starts_with("floor"));
        // A DP floor is fine; a budget smaller than one release is not.
        let dp = DaemonConfig::from_toml("kanon.toml", "[floor]\nprivacy = \"dp\"\n").unwrap();
        dp.validate().unwrap();
        let tiny = "[floor]\nprivacy = \"dp\"\n[floor.dp]\nbudget_rho = 0.001\n";
        let err = DaemonConfig::from_toml("kanon.toml", tiny).unwrap().validate().unwrap_err().to_string();
        assert!(err.starts_with("floor") && err.contains("dp.budget_rho"), "{err}");
    }
}
