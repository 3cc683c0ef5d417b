//! Cross-tenant benchmarks: what a vendor publishes and a tenant opts in
//! with, the runs, the versions in the meta data vault, and a tenant's own
//! position.

use std::collections::BTreeMap;

use kanon_gate::{Manifest, OwnPosition, Release};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::JobState;

/// A published benchmark.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Benchmark {
    pub name: String,
    /// The vendor (token name) who published it; only it runs it and reads
    /// its versions.
    pub vendor: String,
    /// The plugin's hash: fixed for the benchmark's life, so every version
    /// answers the same manifest.
    pub plugin: String,
    pub description: String,
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    /// Run every this many hours; none: on demand only.
    pub every_hours: Option<u32>,
    pub published_ms: u64,
    /// When the schedule last queued a run (or the benchmark was published).
    pub scheduled_ms: u64,
    /// Versions released so far.
    pub versions: u64,
    /// Set when its vendor retired it: no more runs or opt-ins; its
    /// versions stay readable.
    #[serde(default)]
    pub retired_ms: Option<u64>,
}

/// What a vendor publishes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBenchmark {
    pub name: String,
    /// The plugin's hash (upload it first).
    pub plugin: String,
    #[serde(default)]
    pub description: String,
    /// The plugin's parameters, the same for every tenant. Default `{}`.
    #[schema(value_type = Option<Object>)]
    pub params: Option<serde_json::Value>,
    /// Run every this many hours (1 to a year); leave out for on demand.
    pub every_hours: Option<u32>,
}

/// Which of a tenant's datasets stands for one the plugin reads, and which
/// of its columns for the plugin's. A column left out maps to the column of
/// the same name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetMapping {
    pub dataset: String,
    /// The plugin's column names to the tenant's.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
}

/// A tenant's participation in a benchmark.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OptIn {
    pub benchmark: String,
    pub tenant: String,
    /// The tenant's ordinal, the same in every benchmark: what the
    /// subtraction rule compares tenant sets by.
    pub member: u32,
    /// The manifest's dataset names to the tenant's datasets and columns.
    pub datasets: BTreeMap<String, DatasetMapping>,
    pub by: String,
    pub opted_in_ms: u64,
    /// Set when the tenant opted out: no later run reads its data.
    pub opted_out_ms: Option<u64>,
}

impl OptIn {
    pub fn active(&self) -> bool {
        self.opted_out_ms.is_none()
    }
}

/// What a tenant admin sends to opt in.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OptInRequest {
    /// The manifest's dataset names to the tenant's datasets and columns.
    pub datasets: BTreeMap<String, DatasetMapping>,
}

/// A benchmark as its readers see it: the definition, the manifest a tenant
/// opts in to, how many tenants take part, and the caller's own opt-in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BenchmarkView {
    pub benchmark: Benchmark,
    #[schema(value_type = Object)]
    pub manifest: Manifest,
    pub participants: usize,
    /// A tenant admin's own opt-in, past or present.
    pub opt_in: Option<OptIn>,
}

/// A run of a benchmark.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BenchmarkRun {
    pub id: String,
    pub seq: u64,
    pub benchmark: String,
    /// Who queued it: the vendor, or `schedule`.
    pub trigger: String,
    pub state: JobState,
    pub submitted_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// Why it failed: `failed` when a plugin instance failed (which one, and
    /// its class, only that tenant's owner log says), or a reason no plugin
    /// influences (`too-few-tenants`, `interrupted`, ...).
    pub failure: Option<String>,
    /// Tenants whose data the run read.
    pub participants: Option<usize>,
    /// The version it released, or the one that answers it.
    pub version: Option<u64>,
    /// Set when the same differentially private request (plugin, params,
    /// policy, tenants and their data versions) was answered before: the
    /// run that released `version`. Nothing was read or charged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<String>,
    /// ρ the run charged each tenant whose data it read, in nano-ρ: 0 under
    /// thresholds and for a replay.
    #[serde(default)]
    pub rho_charged_nanos: u64,
    pub stats: Option<BenchmarkStats>,
    /// Set when a cancel arrived while it ran: nothing it made is released.
    #[serde(default)]
    pub cancel_requested: bool,
}

/// Figures of a finished run, as its vendor sees them. Rows read and
/// instance memory are not among them: the difference of two runs would
/// give one tenant's dataset size, and a plugin sets its own memory. They
/// are on the host's chain, for the operator.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BenchmarkStats {
    /// Whole seconds; the exact time is on the host's chain.
    #[serde(default)]
    pub run_secs: u64,
    pub cells: usize,
    pub suppressed_cells: usize,
    pub held_cells: usize,
}

/// A version in the meta data vault: the vendor's. It names no tenant and
/// holds no tenant's own value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BenchmarkVersion {
    pub benchmark: String,
    pub version: u64,
    pub run: String,
    pub released_ms: u64,
    pub plugin: String,
    pub params_hash: String,
    pub participants: usize,
    #[schema(value_type = Object)]
    pub release: Release,
}

/// A line of the version list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VersionSummary {
    pub version: u64,
    pub run: String,
    pub released_ms: u64,
    pub participants: usize,
    pub cells: usize,
    pub suppressed_cells: usize,
    pub held_cells: usize,
}

impl BenchmarkVersion {
    pub fn summary(&self) -> VersionSummary {
        VersionSummary {
            version: self.version,
            run: self.run.clone(),
            released_ms: self.released_ms,
            participants: self.participants,
            cells: self.release.tables.iter().map(|t| t.cells.len()).sum(),
            suppressed_cells: self.release.tables.iter().map(|t| t.suppressed_cells).sum(),
            held_cells: self.release.tables.iter().map(|t| t.held_cells).sum(),
        }
    }
}

/// A tenant's own view of a version: the peers' released values next to
/// its own, and its rank bands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PositionView {
    pub benchmark: String,
    pub version: u64,
    pub tenant: String,
    #[schema(value_type = Object)]
    pub position: OwnPosition,
}
