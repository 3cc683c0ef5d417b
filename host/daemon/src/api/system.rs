//! Health, metrics, the API document, the caller's identity and the host's
//! own audit chain.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::App;
use crate::audit::{AuditExport, HOST_CHAIN};
use crate::auth::{Caller, Role};
use crate::error::Result;

pub(super) fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(status))
        .routes(routes!(openapi))
        .routes(routes!(metrics))
        .routes(routes!(whoami))
        .routes(routes!(host_audit))
}

/// Anyone may ask whether the daemon is up, and learns nothing more.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

/// Liveness: answers while the daemon serves. The operator's detail is at
/// `GET /v1/status`.
#[utoipa::path(get, path = "/health", tag = "system", responses((status = 200, body = Health)))]
async fn health() -> axum::Json<Health> {
    axum::Json(Health { status: "ok".into() })
}

/// The daemon's state, for the operator.
#[derive(Debug, Serialize, ToSchema)]
pub struct DaemonStatus {
    pub version: String,
    pub running_jobs: usize,
    pub queued_jobs: usize,
    /// Audit chains that do not verify, with why: the daemon refuses every
    /// change it would record in them until control.redb is restored.
    pub broken_chains: BTreeMap<String, String>,
}

/// The daemon's version, its jobs and the audit chains that do not verify
/// (operator).
#[utoipa::path(get, path = "/v1/status", tag = "system", security(("token" = [])),
    responses((status = 200, body = DaemonStatus)))]
async fn status(State(app): State<Arc<App>>) -> Result<axum::Json<DaemonStatus>> {
    Ok(axum::Json(DaemonStatus {
        version: env!("CARGO_PKG_VERSION").into(),
        running_jobs: app.scheduler.running(),
        queued_jobs: app.store.read()?.queue()?.len(),
        broken_chains: app.store.broken_chains(),
    }))
}

/// This API's OpenAPI document, generated from the routes themselves.
#[utoipa::path(get, path = "/openapi.json", tag = "system", responses((status = 200, description = "OpenAPI 3.1 document")))]
async fn openapi() -> impl IntoResponse {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let body =
        DOCUMENT.get_or_init(|| super::openapi_document().to_pretty_json().expect("the document serializes"));
    ([(header::CONTENT_TYPE, "application/json")], body.as_str())
}

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(get, path = "/metrics", tag = "system", security(("token" = [])),
    responses((status = 200, description = "OpenMetrics text")))]
async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        app.metrics.render(),
    )
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WhoAmI {
    pub token: String,
    pub role: Role,
    pub name: String,
    pub tenant: Option<String>,
}

/// The caller's token id, role, name and tenant.
#[utoipa::path(get, path = "/v1/whoami", tag = "system", security(("token" = [])), responses((status = 200, body = WhoAmI)))]
async fn whoami(Extension(caller): Extension<Caller>) -> axum::Json<WhoAmI> {
    axum::Json(WhoAmI { token: caller.token_id, role: caller.role, name: caller.name, tenant: caller.tenant })
}

/// The host's own audit chain: tokens, tenants, plugin uploads.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", security(("token" = [])), responses((status = 200, body = AuditExport)))]
async fn host_audit(State(app): State<Arc<App>>) -> Result<axum::Json<AuditExport>> {
    super::write_folded_refusals(&app, Some(HOST_CHAIN));
    let (entries, head) = app.store.read()?.audit(HOST_CHAIN)?;
    Ok(axum::Json(AuditExport { chain: HOST_CHAIN.into(), head, entries }))
}
