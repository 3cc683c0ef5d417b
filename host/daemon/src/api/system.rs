//! Health, metrics, the API document, the caller's identity and the host's
//! own audit chain.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use kanon_client::{DaemonStatus, Health, WhoAmI, routes};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::App;
use crate::audit::{AuditExport, HOST_CHAIN};
use crate::auth::Caller;
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

/// Liveness and storage: 200 while the daemon serves and can write; 503
/// (`degraded`) after a storage failure that no write has followed, for
/// alerting. While degraded, every call tries a small write, so the status
/// clears once space returns. What failed is in `GET /v1/status`.
#[utoipa::path(get, path = routes::HEALTH, tag = "system",
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
    match trouble {
        Some(_) => (StatusCode::SERVICE_UNAVAILABLE, axum::Json(Health { status: "degraded".into() })),
        None => (StatusCode::OK, axum::Json(Health { status: "ok".into() })),
    }
}

/// The data directory's storage failure, if any, and which file it hit.
fn storage_trouble(app: &App) -> Option<(&'static str, kanon_vault::redb_file::StorageFailure)> {
    let control = app.store.trouble().map(|f| (crate::CONTROL_FILE, f));
    control.or_else(|| app.vault.storage_trouble().map(|f| ("vault", f)))
}

/// The daemon's version, its jobs, the audit chains that do not verify and
/// the state of its storage (operator).
#[utoipa::path(get, path = routes::STATUS, tag = "system", security(("token" = [])),
    responses((status = 200, body = DaemonStatus)))]
async fn status(State(app): State<Arc<App>>) -> Result<axum::Json<DaemonStatus>> {
    let trouble = storage_trouble(&app);
    Ok(axum::Json(DaemonStatus {
        version: env!("CARGO_PKG_VERSION").into(),
        running_jobs: app.scheduler.running(),
        // Read while storage is in trouble too: this is where the operator looks.
        queued_jobs: app.store.read().and_then(|r| r.queue()).map(|q| q.len()).ok(),
        broken_chains: app.store.broken_chains(),
        storage: if trouble.is_some() { "degraded" } else { "ok" }.into(),
        storage_failed_ms: trouble.as_ref().map(|(_, f)| f.at_ms),
        storage_error: trouble.map(|(file, f)| format!("{file}: {f}")),
    }))
}

/// This API's OpenAPI document, generated from the routes themselves.
#[utoipa::path(get, path = routes::OPENAPI, tag = "system", responses((status = 200, description = "OpenAPI 3.1 document")))]
async fn openapi() -> impl IntoResponse {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let body =
        DOCUMENT.get_or_init(|| super::openapi_document().to_pretty_json().expect("the document serializes"));
    ([(header::CONTENT_TYPE, "application/json")], body.as_str())
}

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(get, path = routes::METRICS, tag = "system", security(("token" = [])),
    responses((status = 200, description = "OpenMetrics text")))]
async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        app.metrics.render(),
    )
}

/// The caller's token id, role, name and tenant.
#[utoipa::path(get, path = routes::WHOAMI, tag = "system", security(("token" = [])), responses((status = 200, body = WhoAmI)))]
async fn whoami(Extension(caller): Extension<Caller>) -> axum::Json<WhoAmI> {
    axum::Json(WhoAmI { token: caller.token_id, role: caller.role, name: caller.name, tenant: caller.tenant })
}

/// The host's own audit chain: tokens, tenants, plugin uploads.
#[utoipa::path(get, path = routes::HOST_AUDIT, tag = "audit", security(("token" = [])), responses((status = 200, body = AuditExport)))]
async fn host_audit(State(app): State<Arc<App>>) -> Result<axum::Json<AuditExport>> {
    super::write_folded_refusals(&app, Some(HOST_CHAIN));
    let (entries, head) = app.store.read()?.audit(HOST_CHAIN)?;
    Ok(axum::Json(AuditExport { chain: HOST_CHAIN.into(), head, entries }))
}
