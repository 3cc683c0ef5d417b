//! Approvals: a tenant admin's instruction to process, and its revocation.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use kanon_client::routes;
use kanon_gate::Policy;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{JsonBody, PathArgs};
use super::tenant_admin_of;
use crate::approvals::{Approval, NewApproval, check_against_manifest, check_schema};
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::registry::PluginRecord;
use crate::revocation::revoke;
use crate::store::{APPROVALS, APPROVALS_OF_ANALYST, APPROVALS_OF_TENANT, PLUGINS};
use crate::tenants::{self, check_name};
use crate::{App, ids, now_ms};

pub(super) fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(create_approval, list_approvals))
        .routes(routes!(revoke_approval))
        .routes(routes!(my_approvals))
}

/// Longest an approval may last.
const MAX_APPROVAL_SECS: u64 = 366 * 24 * 3600;

/// The shapes of a new approval's ids and names, before anything is looked
/// up.
fn check_new(new: &NewApproval) -> Result<()> {
    ids::check_hash(&new.plugin)?;
    check_name("analyst", &new.analyst)?;
    ids::check_count("datasets", new.datasets.len(), ids::MAX_DATASETS)?;
    for (name, approved) in &new.datasets {
        ids::check_manifest_name("dataset", name)?;
        check_name("dataset", &approved.dataset)?;
        ids::check_count("columns", approved.columns.len(), ids::MAX_COLUMNS)?;
        for column in &approved.columns {
            ids::check_column_name(column)?;
        }
    }
    ids::check_count("outputs", new.outputs.len(), ids::MAX_OUTPUTS)?;
    for output in &new.outputs {
        ids::check_manifest_name("table", output)?;
    }
    Ok(())
}

/// Approve a plugin for an analyst on this tenant's data (tenant admin).
#[utoipa::path(post, path = routes::TENANT_APPROVALS, tag = "approvals", security(("token" = [])),
    params(("tenant" = String, Path)), request_body = NewApproval,
    responses((status = 201, body = Approval), (status = 404, body = super::ErrorBody), (status = 422, body = super::ErrorBody)))]
async fn create_approval(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    PathArgs(tenant): PathArgs<String>,
    JsonBody(new): JsonBody<NewApproval>,
) -> Result<(StatusCode, axum::Json<Approval>)> {
    tenant_admin_of(&app, &caller, &tenant)?;
    check_new(&new)?;
    if !(1..=MAX_APPROVAL_SECS).contains(&new.ttl_secs) {
        return Err(Error::BadRequest(format!("ttl_secs must be 1 to {MAX_APPROVAL_SECS}")));
    }
    let params = match (new.params, &new.params_schema) {
        (Some(_), Some(_)) => {
            return Err(Error::BadRequest("give params or params_schema, not both".into()));
        }
        (None, Some(schema)) => {
            check_schema(schema).map_err(Error::Unprocessable)?;
            serde_json::Value::Null
        }
        (params, None) => params.unwrap_or_else(|| json!({})),
    };
    let policy = new.policy.clone().unwrap_or_default();
    crate::budget::refuse_budget_terms(&policy)?;
    Policy::floor(&policy)
        .and_then(|_| Policy::floor(&app.config.floor))
        .and_then(|floor| floor.check_not_looser(&policy))
        .map_err(|e| Error::Unprocessable(e.to_string()))?;
    let plugin: PluginRecord = app
        .store
        .read()?
        .get(PLUGINS, &new.plugin)?
        .ok_or_else(|| Error::NotFound(format!("plugin `{}`", new.plugin)))?;
    check_against_manifest(&plugin.manifest, &new.datasets, &new.outputs, &params)
        .map_err(Error::Unprocessable)?;
    for approved in new.datasets.values() {
        let version = app.vault.dataset(&tenant, &approved.dataset, None)?;
        if let Some(missing) = approved.columns.iter().find(|c| version.schema().index_of(c).is_none()) {
            return Err(Error::Unprocessable(format!(
                "dataset `{}` has no column `{missing}`",
                approved.dataset
            )));
        }
    }
    let approval = app.store.write(|w| {
        tenants::get(w, &tenant)?;
        let now = now_ms();
        let approval = Approval {
            id: crate::new_id("apr"),
            tenant: tenant.clone(),
            plugin: new.plugin.clone(),
            analyst: new.analyst.clone(),
            datasets: new.datasets.clone(),
            outputs: new.outputs.clone(),
            params: params.clone(),
            params_schema: new.params_schema.clone(),
            policy: policy.clone(),
            approved_by: caller.actor(),
            created_ms: now,
            expires_ms: now + new.ttl_secs * 1000,
            revoked_ms: None,
        };
        w.put(APPROVALS, &approval.id, &approval)?;
        w.audit(
            &tenant,
            &caller.actor(),
            "approval.grant",
            json!({"approval": approval.id, "plugin": approval.plugin, "analyst": approval.analyst,
                   "datasets": approval.datasets, "outputs": approval.outputs, "params": approval.params, "params_schema": approval.params_schema,
                   "policy": approval.policy, "expires_ms": approval.expires_ms}),
        )?;
        Ok::<_, Error>(approval)
    })?;
    Ok((StatusCode::CREATED, axum::Json(approval)))
}

/// The tenant's approvals, live and past (tenant admin).
#[utoipa::path(get, path = routes::TENANT_APPROVALS, tag = "approvals", security(("token" = [])),
    params(("tenant" = String, Path)), responses((status = 200, body = Vec<Approval>)))]
async fn list_approvals(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    PathArgs(tenant): PathArgs<String>,
) -> Result<axum::Json<Vec<Approval>>> {
    tenant_admin_of(&app, &caller, &tenant)?;
    Ok(axum::Json(app.store.read()?.listed(APPROVALS, APPROVALS_OF_TENANT, &tenant)?))
}

/// Revoke an approval (tenant admin): no job under it starts any more.
#[utoipa::path(delete, path = routes::TENANT_APPROVAL, tag = "approvals", security(("token" = [])),
    params(("tenant" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = Approval), (status = 404, body = super::ErrorBody), (status = 409, body = super::ErrorBody)))]
async fn revoke_approval(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    PathArgs((tenant, id)): PathArgs<(String, String)>,
) -> Result<axum::Json<Approval>> {
    tenant_admin_of(&app, &caller, &tenant)?;
    let approval = app
        .store
        .write(|w| revoke::<Approval>(w, &caller.actor(), &id, |a| a.tenant == tenant, |_| Ok(())))?;
    Ok(axum::Json(approval))
}

/// The approvals naming the calling analyst.
#[utoipa::path(get, path = routes::APPROVALS, tag = "approvals", security(("token" = [])),
    responses((status = 200, body = Vec<Approval>)))]
async fn my_approvals(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
) -> Result<axum::Json<Vec<Approval>>> {
    Ok(axum::Json(app.store.read()?.listed(APPROVALS, APPROVALS_OF_ANALYST, &caller.name)?))
}
