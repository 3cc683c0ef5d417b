//! Approvals: processing only on the tenant's instruction. A tenant admin
//! approves one plugin (by hash) for one analyst, on named datasets and
//! columns, with exact parameters, until a deadline. A job runs only under a
//! live approval that covers it, checked at submission and again when the
//! job starts, so a revocation stops every job not yet started.

use std::collections::BTreeMap;

use kanon_runtime::Manifest;

// The records are the API's: the client reads these same types, and the
// control store keeps them as their JSON.
pub use kanon_client::types::{Approval, ApprovedDataset, NewApproval};

/// What a job asks to run.
#[derive(Debug, Clone, PartialEq)]
pub struct JobAsk<'a> {
    pub tenant: &'a str,
    pub plugin: &'a str,
    pub analyst: &'a str,
    pub datasets: &'a BTreeMap<String, String>,
    pub params: &'a serde_json::Value,
}

/// Why `approval` does not cover `ask`, if it does not.
pub fn uncovered(approval: &Approval, ask: &JobAsk<'_>, now_ms: u64) -> Option<String> {
    if approval.revoked_ms.is_some() {
        return Some(format!("approval {} was revoked", approval.id));
    }
    if now_ms >= approval.expires_ms {
        return Some(format!("approval {} has expired", approval.id));
    }
    if approval.tenant != ask.tenant || approval.plugin != ask.plugin || approval.analyst != ask.analyst {
        return Some(format!("approval {} is for another tenant, plugin or analyst", approval.id));
    }
    let approved: BTreeMap<&String, &String> =
        approval.datasets.iter().map(|(k, v)| (k, &v.dataset)).collect();
    let asked: BTreeMap<&String, &String> = ask.datasets.iter().collect();
    if approved != asked {
        return Some(format!("approval {} covers other datasets", approval.id));
    }
    match &approval.params_schema {
        Some(schema) => {
            if let Err(reason) = schema_allows(schema, ask.params) {
                return Some(format!(
                    "the parameters do not satisfy approval {}'s schema: {reason}",
                    approval.id
                ));
            }
        }
        None if &approval.params != ask.params => {
            return Some(format!("approval {} covers other parameters", approval.id));
        }
        None => {}
    }
    None
}

/// Why approval `id` (as `write` sees it) does not cover `ask`, if it does
/// not: the one check behind both submitting and starting a job.
pub(crate) fn refusal(
    write: &crate::store::Write<'_>,
    id: &str,
    ask: &JobAsk<'_>,
) -> Result<Option<String>, crate::StoreError> {
    let approval = write.get(crate::store::APPROVALS, id)?;
    Ok(match approval.filter(|a| a.tenant == ask.tenant) {
        Some(approval) => uncovered(&approval, ask, crate::now_ms()),
        None => Some(format!("no approval `{id}` of tenant `{}`", ask.tenant)),
    })
}

/// Whether `schema` compiles: checked when the approval is made.
pub fn check_schema(schema: &serde_json::Value) -> Result<(), String> {
    jsonschema::validator_for(schema)
        .map(|_| ())
        .map_err(|e| format!("params_schema is not a valid JSON Schema: {e}"))
}

/// Whether `params` satisfy `schema`; the first violation otherwise.
fn schema_allows(schema: &serde_json::Value, params: &serde_json::Value) -> Result<(), String> {
    let validator = jsonschema::validator_for(schema).map_err(|e| e.to_string())?;
    match validator.iter_errors(params).next() {
        Some(error) => Err(format!("{error} (at `{}`)", error.instance_path())),
        None => Ok(()),
    }
}

/// Check a new approval against the plugin's manifest: every dataset the
/// plugin reads mapped, every column it reads granted, the outputs exactly
/// the declared ones, the parameters acceptable to the plugin.
pub fn check_against_manifest(
    manifest: &Manifest,
    datasets: &BTreeMap<String, ApprovedDataset>,
    outputs: &[String],
    params: &serde_json::Value,
) -> Result<(), String> {
    for need in &manifest.inputs {
        let Some(approved) = datasets.get(&need.name) else {
            return Err(format!("the plugin reads dataset `{}`; map it to one of yours", need.name));
        };
        for column in &need.columns {
            if !approved.columns.contains(&column.name) {
                return Err(format!(
                    "the plugin reads column `{}` of `{}`; the approval must grant it",
                    column.name, need.name
                ));
            }
        }
    }
    if let Some(extra) = datasets.keys().find(|name| !manifest.inputs.iter().any(|n| &n.name == *name)) {
        return Err(format!("the plugin declares no dataset `{extra}`"));
    }
    let mut declared: Vec<&str> = manifest.outputs.iter().map(|t| t.name.as_str()).collect();
    let mut given: Vec<&str> = outputs.iter().map(String::as_str).collect();
    declared.sort_unstable();
    given.sort_unstable();
    if declared != given {
        return Err(format!("the outputs must be exactly the declared tables: {}", declared.join(", ")));
    }
    match params {
        // A schema approval: each job's params are checked against it.
        serde_json::Value::Null => Ok(()),
        serde_json::Value::Object(_) => {
            manifest.check_params(&params.to_string()).map(|_| ()).map_err(|e| e.to_string())
        }
        _ => Err("params must be a JSON object".into()),
    }
}
