//! The request and response types of the daemon's API: the daemon
//! (de)serialises these same types, and its OpenAPI document is generated
//! from their `ToSchema` derives. The records the daemon keeps (jobs,
//! plugins, approvals, benchmarks and their runs and versions, audit
//! chains) are among them: its control store holds them as this JSON, so a
//! change to a field's name, default or rename is a change to stored data.
//! One module per area beyond the small ones here.

mod approvals;
mod audit;
mod benchmarks;
mod budget;
mod datasets;
mod jobs;
mod plugins;

use std::collections::BTreeMap;

use kanon_gate::PolicyLayer;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub use approvals::{Approval, ApprovedDataset, NewApproval};
pub use audit::{AuditEntry, AuditExport, AuditHead};
pub use benchmarks::{
    Benchmark, BenchmarkRun, BenchmarkStats, BenchmarkVersion, BenchmarkView, DatasetMapping, NewBenchmark,
    OptIn, OptInRequest, PositionView, VersionSummary,
};
pub use budget::{BenchmarkBudget, Budget, Charge, ChargeState, rho_text};
pub use datasets::{
    DatasetClassification, DatasetColumnType, DatasetField, DatasetSchema, DatasetVersionInfo,
};
pub use jobs::{Job, JobLog, JobState, JobStats, RunFigures, SubmitRequest};
pub use plugins::PluginRecord;

/// Who may do what (see the design brief).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Runs the daemon, creates tenants, issues tokens; sees no tenant data.
    Operator,
    /// One tenant's data owner.
    TenantAdmin,
    /// Uploads plugins, runs approved jobs, reads its own jobs' results.
    Analyst,
    /// Deploys benchmark plugins across tenants.
    Vendor,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Operator, Role::TenantAdmin, Role::Analyst, Role::Vendor];

    pub fn name(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::TenantAdmin => "tenant-admin",
            Role::Analyst => "analyst",
            Role::Vendor => "vendor",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

// ---------------------------------------------------------------- system

/// Anyone may ask whether the daemon is up, and learns nothing more.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`, or `degraded` when storage failed (the status is then 503).
    pub status: String,
}

/// The daemon's state, for the operator.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DaemonStatus {
    pub version: String,
    pub running_jobs: usize,
    /// `None` while the control database cannot be read.
    pub queued_jobs: Option<usize>,
    /// Audit chains that do not verify, with why: the daemon refuses every
    /// change it would record in them until control.redb is restored.
    pub broken_chains: BTreeMap<String, String>,
    /// `ok`, or `degraded`: a write to the data directory failed (a full
    /// disk answers 507) and none has gone through since.
    pub storage: String,
    /// The last storage failure, while degraded.
    pub storage_error: Option<String>,
    /// When it happened, in milliseconds since the Unix epoch.
    pub storage_failed_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    pub token: String,
    pub role: Role,
    pub name: String,
    pub tenant: Option<String>,
}

/// The body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, for scripts: `bad-request`, `forbidden`, `not-found`, ...
    pub code: String,
    /// For people.
    pub message: String,
}

// ---------------------------------------------------------------- tenants, enrolment, tokens

/// A tenant as the daemon knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TenantRecord {
    pub name: String,
    pub created_ms: u64,
    /// The tenant's own policy: it may only tighten the operator's floor.
    #[schema(value_type = Object)]
    pub policy: PolicyLayer,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    pub name: String,
    /// How long the admin's enrolment code lasts, in seconds (default a
    /// week, at most 30 days).
    pub enrolment_ttl_secs: Option<u64>,
}

/// A code as issued: shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnrolmentCode {
    pub id: String,
    pub tenant: String,
    /// The one-time code the tenant's admin redeems with `POST /v1/enrol`.
    pub code: String,
    pub expires_ms: u64,
}

/// A new tenant and the one-time code its admin enrols with.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedTenant {
    #[serde(flatten)]
    pub tenant: TenantRecord,
    /// Hand this to the tenant's admin: `POST /v1/enrol` (or `kanon enrol`)
    /// gives it its token. Shown this once.
    pub enrolment: EnrolmentCode,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEnrolment {
    /// How long the code lasts, in seconds (default a week, at most 30 days).
    pub ttl_secs: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Enrol {
    /// The one-time code the operator handed over.
    pub code: String,
    /// The admin's holder name: unique among live tokens.
    pub name: String,
    /// The token's lifetime in seconds; none means until revoked.
    pub ttl_secs: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub role: Role,
    /// The holder's name: approvals and jobs refer to it. Unique among live
    /// tokens.
    pub name: String,
    /// The tenant of a tenant-admin token (a tenant admin's own, which is
    /// the default for it); refused for the other roles.
    pub tenant: Option<String>,
    /// Lifetime in seconds; none means until revoked.
    pub ttl_secs: Option<u64>,
}

/// A token as listed: never its secret.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    pub id: String,
    pub role: Role,
    pub name: String,
    pub tenant: Option<String>,
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
    pub revoked_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IssuedToken {
    /// The token itself: shown this once, stored only as a keyed hash.
    pub token: String,
    pub info: TokenInfo,
}

// ---------------------------------------------------------------- support grants

/// A tenant's grant to operator staff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SupportGrant {
    pub id: String,
    pub tenant: String,
    /// Who granted it (the audit actor).
    pub granted_by: String,
    /// Why, in the tenant's words (a ticket number, say).
    pub reason: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub revoked_ms: Option<u64>,
}

impl SupportGrant {
    pub fn live(&self, now_ms: u64) -> bool {
        self.revoked_ms.is_none() && now_ms < self.expires_ms
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewGrant {
    /// How long the grant lasts, in seconds (at most 30 days).
    pub ttl_secs: u64,
    /// Why: a ticket number, say. Kept in the audit log.
    pub reason: String,
}

// ---------------------------------------------------------------- backups

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBackup {
    /// The backup's name: a new directory under the daemon's `backup_dir`.
    pub name: String,
}

/// What a backup holds.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BackupInfo {
    pub name: String,
    /// Where it is, on the daemon's machine.
    pub path: String,
    pub tenants: usize,
    pub versions: usize,
    /// The vault's chunk files and their bytes (sealed).
    pub chunk_files: usize,
    pub chunk_bytes: u64,
    /// The daemon's files: `control.redb` and the plugins.
    pub daemon_files: usize,
    pub daemon_bytes: u64,
}

// ---------------------------------------------------------------- datasets, jobs

/// The query of a dataset upload (`PUT /v1/tenants/{t}/datasets/{d}`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UploadArgs {
    /// `csv`, `jsonl`, `parquet` or `arrow` (Arrow IPC file or stream).
    pub format: String,
    /// The entity column: the person or customer whom group sizes count.
    /// Required unless `reference` is true.
    pub entity: Option<String>,
    /// `true`: reference data, with no personal data in it (no entity or
    /// identifier column). An entity-isolated run gives it whole to every
    /// entity's instance. Recorded in the version and on the audit chain.
    pub reference: Option<bool>,
    /// Other identifier columns, comma-separated: pseudonymised like the entity.
    pub identifiers: Option<String>,
    /// Column types instead of inferring them: `col:int,col2:text`.
    pub types: Option<String>,
    /// `replace` (default) or `append` to the latest version.
    pub mode: Option<String>,
}

impl UploadArgs {
    /// As a query string, without the `?`; values are percent-encoded.
    pub fn query(&self) -> String {
        let mut pairs = vec![("format", self.format.clone())];
        let optional = [
            ("entity", self.entity.clone()),
            ("reference", self.reference.map(|r| r.to_string())),
            ("identifiers", self.identifiers.clone()),
            ("types", self.types.clone()),
            ("mode", self.mode.clone()),
        ];
        pairs.extend(optional.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", crate::routes::encode_query(v)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// The longest a state request waits for its work to end
/// ([`WaitArgs`]); a longer wait is cut to it.
pub const MAX_WAIT_SECS: u64 = 60;

/// The query of a job's or a benchmark run's state
/// (`GET /v1/jobs/{id}?wait=30`): a long poll instead of polling.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WaitArgs {
    /// Seconds to wait for it to end (succeed, fail or be cancelled): the
    /// answer comes as soon as it has ended, or once the wait is over with
    /// its state then. At most 60 (more waits 60); without it, or 0, the
    /// answer is at once.
    pub wait: Option<u64>,
}

impl WaitArgs {
    /// A wait of `wait`, in whole seconds rounded up and cut to
    /// [`MAX_WAIT_SECS`].
    pub fn of(wait: std::time::Duration) -> Self {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Self { wait: Some(secs.min(MAX_WAIT_SECS)) }
    }

    /// How long to wait, if at all, cut to [`MAX_WAIT_SECS`].
    pub fn duration(&self) -> Option<std::time::Duration> {
        self.wait.filter(|&secs| secs > 0).map(|secs| std::time::Duration::from_secs(secs.min(MAX_WAIT_SECS)))
    }

    /// As a query string, without the `?`.
    pub fn query(&self) -> String {
        self.wait.map(|secs| format!("wait={secs}")).unwrap_or_default()
    }
}

/// The query of a job's results or a benchmark version.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ResultArgs {
    /// `json` (default) or `csv`; a benchmark version also `parquet`.
    pub format: Option<String>,
}
