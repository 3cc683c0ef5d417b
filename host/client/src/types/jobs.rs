//! Jobs: what an analyst submits, the job record the daemon keeps (and
//! stores as is in its control store), and the owner log its tenant reads.

use std::collections::BTreeMap;

use kanon_gate::PolicyLayer;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where a job (or a benchmark run) is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    }

    pub fn name(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

/// Figures of a finished run as its analyst sees them: nothing the plugin
/// could set from one person's value. The run time is in whole seconds; the
/// exact figures are in the owner log ([`RunFigures`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobStats {
    #[serde(default)]
    pub run_secs: u64,
    pub cells: usize,
    pub suppressed_cells: usize,
}

/// A job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub id: String,
    /// Submission order.
    pub seq: u64,
    pub tenant: String,
    /// The analyst (token name) who submitted it.
    pub analyst: String,
    pub plugin: String,
    pub approval: String,
    /// The manifest's dataset names to the tenant's datasets.
    pub datasets: BTreeMap<String, String>,
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    /// What the analyst asked of the gate; it can only tighten.
    #[schema(value_type = Object)]
    pub policy: PolicyLayer,
    pub state: JobState,
    /// Set when a cancel arrived while the job ran: its result is discarded.
    pub cancel_requested: bool,
    pub submitted_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// Why a job failed, as its submitter may know it: `failed` when the
    /// plugin's run failed (its class is in the owner log), or a reason
    /// that no plugin influences (`not-approved`, `data-unavailable`,
    /// `bad-request`, `policy`, `privacy-budget`, `interrupted`).
    pub failure: Option<String>,
    /// The dataset versions the run read.
    pub versions: BTreeMap<String, u64>,
    pub stats: Option<JobStats>,
    /// The earlier job whose stored release answered this identical request:
    /// the same plugin, params, dataset versions and policy get the same
    /// release, never a second run.
    #[serde(default)]
    pub replay_of: Option<String>,
    /// ρ the run charged its tenant's privacy budget, in nano-ρ: 0 unless
    /// it ran under differential privacy (a replay charges nothing).
    #[serde(default)]
    pub rho_charged_nanos: u64,
}

/// What the tenant admin (and support staff under a grant) may read of a
/// run: the plugin's output and error text, the exact failure class and the
/// run's figures, any of which a plugin can make carry data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobLog {
    pub job: String,
    pub stdout: String,
    pub stderr: String,
    pub error: Option<String>,
    pub refusals: Vec<String>,
    /// The failure class (`trap`, `timeout`, `memory`, `limit`,
    /// `contract-violation`, `plugin-error`, `host-error`, `cancelled`).
    #[serde(default)]
    pub failure: Option<String>,
    #[serde(default)]
    pub figures: Option<RunFigures>,
}

/// A run's exact figures, for the data owner.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunFigures {
    pub run_ms: u64,
    pub instantiation_us: u64,
    pub contributions: u64,
    pub dropped_contributions: u64,
    pub entities: usize,
    pub bytes_to_host: u64,
    pub peak_memory_bytes: usize,
    pub peak_host_bytes: usize,
}

/// A job as submitted.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    pub tenant: String,
    pub plugin: String,
    pub approval: String,
    /// The manifest's dataset names to the tenant's datasets.
    pub datasets: BTreeMap<String, String>,
    /// The parameters; must equal the approval's. Default `{}`.
    #[schema(value_type = Option<Object>)]
    pub params: Option<serde_json::Value>,
    /// A stricter policy than the tenant's, if the analyst wants one.
    #[schema(value_type = Option<Object>)]
    pub policy: Option<PolicyLayer>,
}
