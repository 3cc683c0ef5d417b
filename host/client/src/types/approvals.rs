//! Approvals: a tenant admin's instruction to process, as asked for and as
//! the daemon keeps it.

use std::collections::BTreeMap;

use kanon_gate::PolicyLayer;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::plugins::PluginRecord;

/// One dataset as approved: which of the tenant's datasets stands in for the
/// manifest's, and which of its columns the plugin may read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovedDataset {
    /// The tenant's dataset.
    pub dataset: String,
    /// Columns the plugin may read.
    pub columns: Vec<String>,
}

/// A tenant admin's approval as requested (`POST /v1/tenants/{t}/approvals`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApproval {
    /// The plugin's hash.
    pub plugin: String,
    /// The analyst's token name.
    pub analyst: String,
    /// The manifest's dataset names to the tenant's datasets and columns.
    pub datasets: BTreeMap<String, ApprovedDataset>,
    /// The output tables: exactly those the manifest declares.
    pub outputs: Vec<String>,
    /// The exact parameters jobs must pass. Default `{}`.
    #[schema(value_type = Option<Object>)]
    pub params: Option<serde_json::Value>,
    /// Instead of `params`: a JSON Schema every job's params must satisfy.
    #[schema(value_type = Option<Object>)]
    pub params_schema: Option<serde_json::Value>,
    /// Lifetime in seconds (at most a year).
    pub ttl_secs: u64,
    /// What every job under the approval is held to, on top of the tenant's
    /// policy: only ever stricter (e.g. `{"isolation": "entity"}`).
    #[schema(value_type = Option<Object>)]
    pub policy: Option<PolicyLayer>,
}

impl NewApproval {
    /// How long an approval lasts unless asked otherwise: a day.
    pub const DEFAULT_TTL_SECS: u64 = 86_400;

    /// A grant to `analyst` of everything `plugin` declares: each dataset it
    /// reads (as the tenant's dataset `dataset_for` names), with every
    /// column it reads, and every output table; the default params, no
    /// policy of its own, a day. What the CLI, the demo and the load bench
    /// approve unless told otherwise.
    pub fn covering(plugin: &PluginRecord, analyst: &str, dataset_for: impl Fn(&str) -> String) -> Self {
        let manifest = &plugin.manifest;
        let datasets = manifest
            .inputs
            .iter()
            .map(|need| {
                let columns = need.columns.iter().map(|c| c.name.clone()).collect();
                (need.name.clone(), ApprovedDataset { dataset: dataset_for(&need.name), columns })
            })
            .collect();
        Self {
            plugin: plugin.hash.clone(),
            analyst: analyst.to_owned(),
            datasets,
            outputs: manifest.outputs.iter().map(|t| t.name.clone()).collect(),
            params: None,
            params_schema: None,
            ttl_secs: Self::DEFAULT_TTL_SECS,
            policy: None,
        }
    }
}

/// A tenant's instruction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Approval {
    pub id: String,
    pub tenant: String,
    /// The plugin's blake3 hash.
    pub plugin: String,
    /// The analyst (token name) who may run it.
    pub analyst: String,
    /// By the manifest's dataset names.
    pub datasets: BTreeMap<String, ApprovedDataset>,
    /// The output tables, as the manifest declares them.
    pub outputs: Vec<String>,
    /// The parameters, exactly: a job must pass this very object. Null when
    /// `params_schema` is given instead.
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    /// A JSON Schema a job's parameters must satisfy, instead of exact ones.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub params_schema: Option<serde_json::Value>,
    /// What every job under it is held to on top of the tenant's policy
    /// (only stricter): a tenant can approve a plugin for isolated runs only.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub policy: PolicyLayer,
    pub approved_by: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub revoked_ms: Option<u64>,
}

impl Approval {
    pub fn live(&self, now_ms: u64) -> bool {
        self.revoked_ms.is_none() && now_ms < self.expires_ms
    }
}
