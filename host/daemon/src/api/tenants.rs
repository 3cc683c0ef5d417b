//! Tenants, tokens, a tenant's policy, its audit log and its support grants.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use kanon_client::{
    Budget, CreatedTenant, Enrol, IssuedToken, NewEnrolment, NewGrant, NewTenant, NewToken, TokenInfo, routes,
};
use kanon_gate::PolicyLayer;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{JsonBody, PathArgs};
use super::{Refusal, tenant_admin_of, write_folded_refusals};
use crate::approvals::Approval;
use crate::audit::{AuditExport, HOST_CHAIN};
use crate::auth::{self, Caller, Role, TokenRecord, TokenSpec};
use crate::budget::{Standing, Terms};
use crate::enrolment::{self, EnrolmentCode};
use crate::error::{Error, Result};
use crate::grants::{MAX_GRANT_SECS, SupportGrant};
use crate::revocation::revoke;
use crate::store::{
    APPROVALS, APPROVALS_OF_ANALYST, GRANTS, GRANTS_OF_TENANT, TENANTS, TOKENS, TOKENS_OF_TENANT,
};
use crate::tenants::{self, TenantRecord, check_name};
use crate::{App, now_ms};

pub(super) fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(create_tenant, list_tenants))
        .routes(routes!(issue_enrolment))
        .routes(routes!(enrol))
        .routes(routes!(issue_token, list_tokens))
        .routes(routes!(revoke_token))
        .routes(routes!(get_policy, set_policy))
        .routes(routes!(get_budget))
        .routes(routes!(tenant_audit))
        .routes(routes!(create_grant, list_grants))
        .routes(routes!(revoke_grant))
}

/// Create a tenant (operator). The answer carries a one-time enrolment
/// code for its admin: the operator never holds a tenant-admin token.
#[utoipa::path(post, path = routes::TENANTS, tag = "tenants", security(("token" = [])), request_body = NewTenant,
    responses((status = 201, body = CreatedTenant), (status = 409, body = super::ErrorBody)))]
async fn create_tenant(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    JsonBody(new): JsonBody<NewTenant>,
) -> Result<(StatusCode, axum::Json<CreatedTenant>)> {
    check_name("tenant", &new.name)?;
    let ttl = new.enrolment_ttl_secs.unwrap_or(enrolment::DEFAULT_TTL_SECS);
    let created = app.store.write(|w| {
        if w.get::<TenantRecord>(TENANTS, &new.name)?.is_some() {
            return Err(Error::Conflict(format!("tenant `{}` exists", new.name)));
        }
        let record =
            TenantRecord { name: new.name.clone(), created_ms: now_ms(), policy: PolicyLayer::default() };
        w.put(TENANTS, &record.name, &record)?;
        w.audit(HOST_CHAIN, &caller.actor(), "tenant.create", json!({"tenant": record.name}))?;
        w.audit(&record.name, &caller.actor(), "tenant.create", json!({}))?;
        let enrolment = enrolment::issue(w, &caller.actor(), &record.name, ttl)?;
        Ok(CreatedTenant { tenant: record, enrolment })
    })?;
    Ok((StatusCode::CREATED, axum::Json(created)))
}

/// Every tenant (operator).
#[utoipa::path(get, path = routes::TENANTS, tag = "tenants", security(("token" = [])),
    responses((status = 200, body = Vec<TenantRecord>)))]
async fn list_tenants(State(app): State<Arc<App>>) -> Result<axum::Json<Vec<TenantRecord>>> {
    Ok(axum::Json(app.store.read()?.all(TENANTS)?))
}

/// A fresh one-time enrolment code for a tenant's admin, for a tenant whose
/// admin lost access (operator). It replaces the tenant's unused code, if
/// any, and lands on the tenant's chain; the tenant's admin tokens stay as
/// they are.
#[utoipa::path(post, path = routes::TENANT_ENROLMENTS, tag = "tenants", security(("token" = [])),
    params(("tenant" = String, Path)), request_body = NewEnrolment,
    responses((status = 201, body = EnrolmentCode), (status = 404, body = super::ErrorBody)))]
async fn issue_enrolment(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    PathArgs(tenant): PathArgs<String>,
    JsonBody(new): JsonBody<NewEnrolment>,
) -> Result<(StatusCode, axum::Json<EnrolmentCode>)> {
    let ttl = new.ttl_secs.unwrap_or(enrolment::DEFAULT_TTL_SECS);
    let code = app.store.write(|w| enrolment::issue(w, &caller.actor(), &tenant, ttl))?;
    Ok((StatusCode::CREATED, axum::Json(code)))
}

/// Redeem a one-time enrolment code for the tenant's admin token (no
/// token needed). Unknown, used, replaced and expired codes are refused
/// alike (403).
#[utoipa::path(post, path = routes::ENROL, tag = "tokens", request_body = Enrol,
    responses((status = 201, body = IssuedToken), (status = 403, body = super::ErrorBody),
              (status = 409, body = super::ErrorBody)))]
async fn enrol(
    State(app): State<Arc<App>>,
    JsonBody(request): JsonBody<Enrol>,
) -> Result<(StatusCode, axum::Json<IssuedToken>)> {
    check_name("token holder", &request.name)?;
    let expires_ms = expiry(request.ttl_secs)?;
    let redeemed = app.store.write(|w| enrolment::redeem(w, &request.code, &request.name, expires_ms));
    let (record, token) = redeemed.inspect_err(|e| {
        if matches!(e, Error::Forbidden(_)) {
            app.metrics.refusal("enrolment");
        }
    })?;
    Ok((StatusCode::CREATED, axum::Json(IssuedToken { token, info: record.into() })))
}

/// A token's expiry from its requested lifetime.
fn expiry(ttl_secs: Option<u64>) -> Result<Option<u64>> {
    match ttl_secs {
        Some(0) => Err(Error::BadRequest("ttl_secs must be at least 1".into())),
        Some(secs) => Ok(Some(now_ms().saturating_add(secs.saturating_mul(1000)))),
        None => Ok(None),
    }
}

impl From<TokenRecord> for TokenInfo {
    fn from(r: TokenRecord) -> Self {
        Self {
            id: r.id,
            role: r.role,
            name: r.name,
            tenant: r.tenant,
            created_ms: r.created_ms,
            expires_ms: r.expires_ms,
            revoked_ms: r.revoked_ms,
        }
    }
}

/// Issue a token. The operator issues operator, analyst and vendor tokens,
/// never a tenant admin's (a tenant enrols its admin); a tenant admin issues
/// further tenant-admin tokens of its own tenant.
#[utoipa::path(post, path = routes::TOKENS, tag = "tokens", security(("token" = [])), request_body = NewToken,
    responses((status = 201, body = IssuedToken), (status = 400, body = super::ErrorBody),
              (status = 403, body = super::ErrorBody), (status = 409, body = super::ErrorBody)))]
async fn issue_token(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    JsonBody(new): JsonBody<NewToken>,
) -> Result<(StatusCode, axum::Json<IssuedToken>)> {
    check_name("token holder", &new.name)?;
    if let Some(tenant) = &new.tenant {
        check_name("tenant", tenant)?;
    }
    let tenant = match (caller.role, new.role, &new.tenant) {
        (Role::TenantAdmin, Role::TenantAdmin, None) => caller.tenant.clone(),
        (Role::TenantAdmin, Role::TenantAdmin, Some(tenant)) => {
            tenant_admin_of(&app, &caller, tenant)?;
            Some(tenant.clone())
        }
        (Role::TenantAdmin, role, _) => {
            return Err(Error::Forbidden(format!(
                "a tenant admin issues tenant-admin tokens of its own tenant, not {role} tokens"
            )));
        }
        (_, Role::TenantAdmin, _) => {
            return Err(Error::Forbidden(
                "the operator does not issue tenant-admin tokens: a tenant's admin enrols with the one-time \
                 code from creating the tenant, or from POST /v1/tenants/{tenant}/enrolments"
                    .into(),
            ));
        }
        (_, _, None) => None,
        (_, role, Some(_)) => {
            return Err(Error::BadRequest(format!("a {role} token is not bound to a tenant")));
        }
    };
    let expires_ms = expiry(new.ttl_secs)?;
    let (record, token) = app.store.write(|w| {
        if let Some(tenant) = &tenant {
            tenants::get(w, tenant)?;
        }
        auth::check_holder_free(w, &new.name, now_ms())?;
        let spec = TokenSpec { role: new.role, name: new.name.clone(), tenant: tenant.clone(), expires_ms };
        let (record, token) = auth::issue(w, spec)?;
        let detail =
            json!({"token": record.id, "role": record.role, "name": record.name, "expires_ms": expires_ms});
        w.audit(HOST_CHAIN, &caller.actor(), "token.issue", detail.clone())?;
        if let Some(tenant) = &record.tenant {
            w.audit(tenant, &caller.actor(), "token.issue", detail)?;
        }
        Ok::<_, Error>((record, token))
    })?;
    Ok((StatusCode::CREATED, axum::Json(IssuedToken { token, info: record.into() })))
}

/// Tokens, without secrets: every one for the operator, its tenant's for a
/// tenant admin.
#[utoipa::path(get, path = routes::TOKENS, tag = "tokens", security(("token" = [])),
    responses((status = 200, body = Vec<TokenInfo>)))]
async fn list_tokens(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
) -> Result<axum::Json<Vec<TokenInfo>>> {
    let read = app.store.read()?;
    let tokens = match (caller.role, &caller.tenant) {
        (Role::Operator, _) => read.all(TOKENS)?,
        (_, Some(tenant)) => read.listed(TOKENS, TOKENS_OF_TENANT, tenant)?,
        (_, None) => Vec::new(),
    };
    Ok(axum::Json(tokens.into_iter().map(TokenInfo::from).collect()))
}

/// Revoke a token (the operator any; a tenant admin its tenant's). It stops
/// working at once.
#[utoipa::path(delete, path = routes::TOKEN, tag = "tokens", security(("token" = [])),
    params(("id" = String, Path, description = "The token id")),
    responses((status = 200, body = TokenInfo), (status = 404, body = super::ErrorBody), (status = 409, body = super::ErrorBody)))]
async fn revoke_token(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    PathArgs(id): PathArgs<String>,
) -> Result<axum::Json<TokenInfo>> {
    let visible =
        |t: &TokenRecord| caller.role == Role::Operator || (t.tenant.is_some() && t.tenant == caller.tenant);
    let not_itself = |t: &TokenRecord| match t.id == caller.token_id {
        true => Err(Error::Conflict("a token cannot revoke itself; use another token".into())),
        false => Ok(()),
    };
    let record = app.store.write(|w| revoke(w, &caller.actor(), &id, visible, not_itself))?;
    Ok(axum::Json(record.into()))
}

/// The tenant's policy layer (tenant admin).
#[utoipa::path(get, path = routes::TENANT_POLICY, tag = "tenants", security(("token" = [])),
    params(("tenant" = String, Path)), responses((status = 200, body = Object)))]
async fn get_policy(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    PathArgs(tenant): PathArgs<String>,
) -> Result<axum::Json<PolicyLayer>> {
    tenant_admin_of(&app, &caller, &tenant)?;
    let record: TenantRecord = app
        .store
        .read()?
        .get(TENANTS, &tenant)?
        .ok_or_else(|| Error::NotFound(format!("tenant `{tenant}`")))?;
    Ok(axum::Json(record.policy))
}

/// Set the tenant's policy layer (tenant admin). It may only tighten the
/// operator's floor; it applies to every later run on the tenant's data.
#[utoipa::path(put, path = routes::TENANT_POLICY, tag = "tenants", security(("token" = [])),
    params(("tenant" = String, Path)), request_body = Object,
    responses((status = 200, body = Object), (status = 422, body = super::ErrorBody)))]
async fn set_policy(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    PathArgs(tenant): PathArgs<String>,
    JsonBody(policy): JsonBody<PolicyLayer>,
) -> Result<axum::Json<PolicyLayer>> {
    tenant_admin_of(&app, &caller, &tenant)?;
    tenants::check_policy(&app.config.floor, &policy)?;
    app.store.write(|w| {
        let mut record = tenants::get(w, &tenant)?;
        record.policy = policy.clone();
        w.put(TENANTS, &tenant, &record)?;
        w.audit(&tenant, &caller.actor(), "policy.set", json!({"policy": policy}))?;
        Ok::<_, Error>(())
    })?;
    Ok(axum::Json(policy))
}

/// The tenant's privacy budget: what differentially private runs charged
/// in its window and what remains. The tenant admin, and operator staff
/// under a live support grant, see every charge; an analyst with a live
/// approval on the tenant sees the totals and its own jobs' charges, and
/// any other analyst a 404, as for a tenant that does not exist.
#[utoipa::path(get, path = routes::TENANT_BUDGET, tag = "tenants", security(("token" = [])),
    params(("tenant" = String, Path)), responses((status = 200, body = Budget), (status = 404, body = super::ErrorBody)))]
async fn get_budget(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    PathArgs(tenant): PathArgs<String>,
) -> Result<axum::Json<Budget>> {
    let unknown = || Error::NotFound(format!("tenant `{tenant}`"));
    if caller.role != Role::Analyst {
        support_access(&app, &caller, &tenant, "privacy budget", None)?;
    }
    let read = app.store.read()?;
    if caller.role == Role::Analyst {
        let now = now_ms();
        let approvals: Vec<Approval> = read.listed(APPROVALS, APPROVALS_OF_ANALYST, &caller.name)?;
        let live = |a: &Approval| a.tenant == tenant && a.live(now);
        if !approvals.iter().any(live) {
            // Told the tenant does not exist; on its chain all the same.
            super::audit_refusal(&app, &caller, &tenant, "privacy budget", None);
            return Err(unknown());
        }
    }
    let record: TenantRecord = read.get(TENANTS, &tenant)?.ok_or_else(unknown)?;
    let terms = Terms::of(&app.config.floor, &record.policy)?;
    let mut budget = Standing::of(&read, &tenant, terms, now_ms())?.view(&tenant);
    if caller.role == Role::Analyst {
        // Its own jobs' charges: a benchmark run's name its vendor, who
        // may have held the same name.
        budget.charges.retain(|c| c.by == caller.name && crate::ids::is_id(crate::ids::JOB, &c.run));
    }
    Ok(axum::Json(budget))
}

/// The tenant's audit log, whole, with its head: verify it with
/// `kanon audit verify` (tenant admin).
#[utoipa::path(get, path = routes::TENANT_AUDIT, tag = "audit", security(("token" = [])),
    params(("tenant" = String, Path)), responses((status = 200, body = AuditExport)))]
async fn tenant_audit(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    PathArgs(tenant): PathArgs<String>,
) -> Result<axum::Json<AuditExport>> {
    tenant_admin_of(&app, &caller, &tenant)?;
    write_folded_refusals(&app, Some(&tenant));
    let (entries, head) = app.store.read()?.audit(&tenant)?;
    Ok(axum::Json(AuditExport { chain: tenant, head, entries }))
}

/// Let operator staff read this tenant's job metadata and plugin output
/// logs, never its data, for a limited time (tenant admin).
#[utoipa::path(post, path = routes::TENANT_GRANTS, tag = "support", security(("token" = [])),
    params(("tenant" = String, Path)), request_body = NewGrant,
    responses((status = 201, body = SupportGrant), (status = 400, body = super::ErrorBody)))]
async fn create_grant(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    PathArgs(tenant): PathArgs<String>,
    JsonBody(new): JsonBody<NewGrant>,
) -> Result<(StatusCode, axum::Json<SupportGrant>)> {
    tenant_admin_of(&app, &caller, &tenant)?;
    if !(1..=MAX_GRANT_SECS).contains(&new.ttl_secs) {
        return Err(Error::BadRequest(format!("ttl_secs must be 1 to {MAX_GRANT_SECS}")));
    }
    if new.reason.len() > 500 {
        return Err(Error::BadRequest("reason: at most 500 bytes".into()));
    }
    let grant = app.store.write(|w| {
        tenants::get(w, &tenant)?;
        let now = now_ms();
        let grant = SupportGrant {
            id: crate::new_id("grant"),
            tenant: tenant.clone(),
            granted_by: caller.actor(),
            reason: new.reason.clone(),
            created_ms: now,
            expires_ms: now + new.ttl_secs * 1000,
            revoked_ms: None,
        };
        w.put(GRANTS, &grant.id, &grant)?;
        w.audit(
            &tenant,
            &caller.actor(),
            "support.grant",
            json!({"grant": grant.id, "expires_ms": grant.expires_ms, "reason": grant.reason}),
        )?;
        Ok::<_, Error>(grant)
    })?;
    Ok((StatusCode::CREATED, axum::Json(grant)))
}

/// The tenant's support grants, live and past (tenant admin).
#[utoipa::path(get, path = routes::TENANT_GRANTS, tag = "support", security(("token" = [])),
    params(("tenant" = String, Path)), responses((status = 200, body = Vec<SupportGrant>)))]
async fn list_grants(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    PathArgs(tenant): PathArgs<String>,
) -> Result<axum::Json<Vec<SupportGrant>>> {
    tenant_admin_of(&app, &caller, &tenant)?;
    Ok(axum::Json(app.store.read()?.listed(GRANTS, GRANTS_OF_TENANT, &tenant)?))
}

/// End a support grant now (tenant admin).
#[utoipa::path(delete, path = routes::TENANT_GRANT, tag = "support", security(("token" = [])),
    params(("tenant" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = SupportGrant), (status = 404, body = super::ErrorBody)))]
async fn revoke_grant(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    PathArgs((tenant, id)): PathArgs<(String, String)>,
) -> Result<axum::Json<SupportGrant>> {
    tenant_admin_of(&app, &caller, &tenant)?;
    let grant = app
        .store
        .write(|w| revoke::<SupportGrant>(w, &caller.actor(), &id, |g| g.tenant == tenant, |_| Ok(())))?;
    Ok(axum::Json(grant))
}

/// Operator staff reading `tenant`'s job metadata or logs (`what`, of
/// `item`): only under a live grant, and every use is audited in the
/// tenant's chain (refusals too, folded into counts like every refusal).
pub(crate) fn support_access(
    app: &App,
    caller: &Caller,
    tenant: &str,
    what: &str,
    item: Option<&str>,
) -> Result<()> {
    if caller.role != Role::Operator {
        return tenant_admin_of(app, caller, tenant);
    }
    let now = now_ms();
    let read = match item {
        Some(item) => format!("{what} {item}"),
        None => what.to_owned(),
    };
    let used = app.store.write(|w| {
        tenants::get(w, tenant)?;
        let grants = w.listed(GRANTS, GRANTS_OF_TENANT, tenant)?;
        match grants.iter().find(|g| g.live(now)) {
            Some(grant) => {
                w.audit(tenant, &caller.actor(), "support.use", json!({"grant": grant.id, "read": read}))?;
                Ok::<_, Error>(true)
            }
            None => Ok(false),
        }
    })?;
    if used {
        return Ok(());
    }
    let extra = json!({"read": read, "reason": "no live support grant"});
    let message = format!("tenant `{tenant}` has granted no live support access");
    Err(Refusal::new(tenant, format!("support: {what}"), message).with(extra).audited(app, caller))
}
