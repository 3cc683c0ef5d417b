//! Health, metrics, the API document, the caller's identity and the host's
//! own audit chain.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::{StatusCode, header};
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
        .routes(routes!(openapi))
        .routes(routes!(metrics))
        .routes(routes!(whoami))
        .routes(routes!(host_audit))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or `degraded` when storage failed (the status is then 503).
    pub status: String,
    pub version: String,
    pub running_jobs: usize,
    /// `ok`, or `degraded`: a write to the data directory failed (a full
    /// disk answers 507) and none has gone through since.
    pub storage: String,
    /// The last storage failure, while degraded.
    pub storage_error: Option<String>,
    /// When it happened, in milliseconds since the Unix epoch.
    pub storage_failed_ms: Option<u64>,
}

/// Liveness and storage: 200 while the daemon serves and can write; 503
/// (with `storage: degraded`) after a storage failure that no write has
/// followed. While degraded, every call tries a small write, so the status
/// clears once space returns.
#[utoipa::path(get, path = "/health", tag = "system",
    responses((status = 200, body = Health), (status = 503, body = Health, description = "storage failed")))]
async fn health(State(app): State<Arc<App>>) -> (StatusCode, axum::Json<Health>) {
    let mut trouble = storage_trouble(&app);
    if trouble.is_some() {
        let worker = app.clone();
        trouble = tokio::task::spawn_blocking(move || {
            // Failures are kept as the trouble shown below.
            let _ = worker.store.probe();
            let _ = worker.vault.probe_storage();
            if storage_trouble(&worker).is_none() {
                crate::pending::reconcile_logged(&worker);
            }
            storage_trouble(&worker)
        })
        .await
        .unwrap_or(trouble);
    }
    let status = if trouble.is_some() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    let state = if trouble.is_some() { "degraded" } else { "ok" };
    let health = Health {
        status: state.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        running_jobs: app.scheduler.running(),
        storage: state.into(),
        storage_failed_ms: trouble.as_ref().map(|(_, f)| f.at_ms),
        storage_error: trouble.map(|(file, f)| format!("{file}: {f}")),
    };
    (status, axum::Json(health))
}

/// The data directory's storage failure, if any, and which file it hit.
fn storage_trouble(app: &App) -> Option<(&'static str, kanon_vault::redb_file::StorageFailure)> {
    let control = app.store.trouble().map(|f| (crate::CONTROL_FILE, f));
    control.or_else(|| app.vault.storage_trouble().map(|f| ("vault", f)))
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
    let (entries, head) = app.store.read()?.audit(HOST_CHAIN)?;
    Ok(axum::Json(AuditExport { chain: HOST_CHAIN.into(), head, entries }))
}
