//! The plugin registry's routes: upload, list, show, delete.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::PathArgs;
use crate::approvals::Approval;
use crate::audit::HOST_CHAIN;
use crate::auth::{Caller, Role};
use crate::error::{Error, Result};
use crate::jobs::Job;
use crate::registry::PluginRecord;
use crate::store::{APPROVALS, JOBS, PLUGINS};
use crate::{App, ids};

pub(super) fn routes(max_plugin_bytes: usize) -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(upload_plugin, list_plugins))
        .routes(routes!(show_plugin, delete_plugin))
        .layer(DefaultBodyLimit::max(max_plugin_bytes))
}

/// Upload a component (analyst, vendor). It is validated and compiled before
/// anything is stored; the same bytes twice give the same record (200).
#[utoipa::path(post, path = "/v1/plugins", tag = "plugins", security(("token" = [])),
    request_body(content = Vec<u8>, content_type = "application/wasm"),
    responses((status = 201, body = PluginRecord), (status = 200, body = PluginRecord, description = "already registered"),
        (status = 413, body = super::ErrorBody), (status = 422, body = super::ErrorBody)))]
async fn upload_plugin(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    bytes: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, axum::Json<PluginRecord>)> {
    let bytes = bytes.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            Error::TooLarge(format!("plugins are limited to {} bytes", app.config.limits.max_plugin_bytes))
        }
        _ => Error::BadRequest(rejection.body_text()),
    })?;
    let hash = blake3::hash(&bytes).to_hex().to_string();
    if let Some(existing) = app.store.read()?.get::<PluginRecord>(PLUGINS, &hash)? {
        return Ok((StatusCode::OK, axum::Json(existing)));
    }
    let worker = app.clone();
    let plugin = tokio::task::spawn_blocking(move || worker.plugins.add(&worker.runtime, &bytes))
        .await
        .map_err(|e| Error::Internal(format!("the upload task failed: {e}")))??;
    let (status, record) = app.store.write(|w| {
        if let Some(existing) = w.get::<PluginRecord>(PLUGINS, &plugin.hash)? {
            return Ok::<_, Error>((StatusCode::OK, existing));
        }
        let record = PluginRecord {
            hash: plugin.hash.clone(),
            size: plugin.size,
            manifest: plugin.manifest.clone(),
            uploader: format!("{} {}", caller.role, caller.name),
            uploaded_ms: crate::now_ms(),
        };
        w.put(PLUGINS, &record.hash, &record)?;
        w.audit(
            HOST_CHAIN,
            &caller.actor(),
            "plugin.upload",
            json!({"plugin": record.hash, "name": record.manifest.name, "version": record.manifest.version, "size": record.size}),
        )?;
        Ok((StatusCode::CREATED, record))
    })?;
    Ok((status, axum::Json(record)))
}

/// Every registered plugin (tenant admin, analyst, vendor).
#[utoipa::path(get, path = "/v1/plugins", tag = "plugins", security(("token" = [])),
    responses((status = 200, body = Vec<PluginRecord>)))]
async fn list_plugins(State(app): State<Arc<App>>) -> Result<axum::Json<Vec<PluginRecord>>> {
    Ok(axum::Json(app.store.read()?.all(PLUGINS)?))
}

/// One plugin: manifest, hash, size, uploader.
#[utoipa::path(get, path = "/v1/plugins/{hash}", tag = "plugins", security(("token" = [])),
    params(("hash" = String, Path)), responses((status = 200, body = PluginRecord), (status = 404, body = super::ErrorBody)))]
async fn show_plugin(
    State(app): State<Arc<App>>,
    PathArgs(hash): PathArgs<String>,
) -> Result<axum::Json<PluginRecord>> {
    let hash = ids::check_hash(&hash)?;
    let record =
        app.store.read()?.get(PLUGINS, hash)?.ok_or_else(|| Error::NotFound(format!("plugin `{hash}`")))?;
    Ok(axum::Json(record))
}

/// Delete a plugin (its uploader, or the operator). Refused while a live
/// approval or an unfinished job uses it.
#[utoipa::path(delete, path = "/v1/plugins/{hash}", tag = "plugins", security(("token" = [])),
    params(("hash" = String, Path)),
    responses((status = 200, body = PluginRecord), (status = 404, body = super::ErrorBody), (status = 409, body = super::ErrorBody)))]
async fn delete_plugin(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    PathArgs(hash): PathArgs<String>,
) -> Result<axum::Json<PluginRecord>> {
    let hash = ids::check_hash(&hash)?.to_owned();
    let now = crate::now_ms();
    let record = app.store.write(|w| {
        let record: PluginRecord =
            w.get(PLUGINS, &hash)?.ok_or_else(|| Error::NotFound(format!("plugin `{hash}`")))?;
        if caller.role != Role::Operator && record.uploader != format!("{} {}", caller.role, caller.name) {
            return Err(Error::Forbidden("only the plugin's uploader or an operator may delete it".into()));
        }
        if let Some(a) = w.all::<Approval>(APPROVALS)?.into_iter().find(|a| a.plugin == hash && a.live(now)) {
            return Err(Error::Conflict(format!(
                "approval {} of tenant `{}` uses this plugin",
                a.id, a.tenant
            )));
        }
        if let Some(j) = w.all::<Job>(JOBS)?.into_iter().find(|j| j.plugin == hash && !j.state.is_final()) {
            return Err(Error::Conflict(format!("job {} uses this plugin", j.id)));
        }
        let benchmarks: Vec<crate::benchmarks::Benchmark> = w.all(crate::store::BENCHMARKS)?;
        if let Some(b) = benchmarks.iter().find(|b| b.plugin == hash && b.retired_ms.is_none()) {
            return Err(Error::Conflict(format!("benchmark `{}` uses this plugin", b.name)));
        }
        w.remove(PLUGINS, &hash)?;
        w.audit(HOST_CHAIN, &caller.actor(), "plugin.delete", json!({"plugin": hash}))?;
        Ok(record)
    })?;
    app.plugins.remove(&hash)?;
    Ok(axum::Json(record))
}
