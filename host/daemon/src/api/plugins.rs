//! The plugin registry's routes: upload, list, show, delete.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use kanon_client::routes;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::PathArgs;
use crate::audit::HOST_CHAIN;
use crate::auth::{Caller, Role};
use crate::error::{Error, Result};
use crate::jobs::Job;
use crate::registry::PluginRecord;
use crate::store::{APPROVALS, APPROVALS_OF_PLUGIN, BENCHMARKS, BENCHMARKS_OF_PLUGIN, PLUGINS, Read};
use crate::{App, ids};

pub(super) fn routes(max_plugin_bytes: usize) -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(upload_plugin, list_plugins))
        .routes(routes!(show_plugin, delete_plugin))
        .layer(DefaultBodyLimit::max(max_plugin_bytes))
}

/// Upload a component (analyst, vendor). It is validated and compiled before
/// anything is stored; the same bytes twice give the same record (200).
#[utoipa::path(post, path = routes::PLUGINS, tag = "plugins", security(("token" = [])),
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
    let me = uploader(&caller);
    if let Some(existing) = app.store.read()?.get::<PluginRecord>(PLUGINS, &hash)?
        && existing.uploaded_by(&me)
    {
        return Ok((StatusCode::OK, axum::Json(existing.seen_by(&me))));
    }
    let worker = app.clone();
    let plugin = tokio::task::spawn_blocking(move || worker.plugins.add(&worker.runtime, &bytes))
        .await
        .map_err(|e| Error::Internal(format!("the upload task failed: {e}")))??;
    let (status, record) = app.store.write(|w| {
        if let Some(mut existing) = w.get::<PluginRecord>(PLUGINS, &plugin.hash)? {
            if !existing.uploaded_by(&me) {
                // The same bytes from someone else: theirs to see too.
                existing.also_uploaded_by.push(me.clone());
                w.put(PLUGINS, &existing.hash, &existing)?;
                w.audit(
                    HOST_CHAIN,
                    &caller.actor(),
                    "plugin.upload",
                    json!({"plugin": existing.hash, "name": existing.manifest.name,
                           "version": existing.manifest.version, "size": existing.size, "again": true}),
                )?;
            }
            return Ok::<_, Error>((StatusCode::OK, existing));
        }
        let record = PluginRecord {
            hash: plugin.hash.clone(),
            size: plugin.size,
            manifest: plugin.manifest.clone(),
            uploader: me.clone(),
            uploaded_ms: crate::now_ms(),
            also_uploaded_by: Vec::new(),
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
    Ok((status, axum::Json(record.seen_by(&me))))
}

/// How a plugin record names its uploader.
fn uploader(caller: &Caller) -> String {
    format!("{} {}", caller.role, caller.name)
}

/// `record` as `caller` may see it, if at all: a tenant admin sees every
/// plugin (to approve it); an analyst those it uploaded or that an approval
/// names it for; a vendor those it uploaded. Neither sees another
/// uploader's name.
fn visible(read: &Read, caller: &Caller, record: PluginRecord) -> Result<Option<PluginRecord>> {
    let me = uploader(caller);
    let seen = match caller.role {
        Role::TenantAdmin => return Ok(Some(record)),
        Role::Operator => false,
        Role::Vendor => record.uploaded_by(&me),
        Role::Analyst => {
            record.uploaded_by(&me)
                || read
                    .listed(APPROVALS, APPROVALS_OF_PLUGIN, &record.hash)?
                    .iter()
                    .any(|a| a.analyst == caller.name)
        }
    };
    Ok(seen.then(|| record.seen_by(&me)))
}

/// The plugins the caller may see: every one for a tenant admin; an
/// analyst's own and those approved for it; a vendor's own.
#[utoipa::path(get, path = routes::PLUGINS, tag = "plugins", security(("token" = [])),
    responses((status = 200, body = Vec<PluginRecord>)))]
async fn list_plugins(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
) -> Result<axum::Json<Vec<PluginRecord>>> {
    let read = app.store.read()?;
    let all: Vec<PluginRecord> = read.all(PLUGINS)?;
    let mut seen = Vec::new();
    for record in all {
        seen.extend(visible(&read, &caller, record)?);
    }
    Ok(axum::Json(seen))
}

/// One plugin: manifest, hash, size, uploader. One the caller may not see
/// answers as if it did not exist.
#[utoipa::path(get, path = routes::PLUGIN, tag = "plugins", security(("token" = [])),
    params(("hash" = String, Path)), responses((status = 200, body = PluginRecord), (status = 404, body = super::ErrorBody)))]
async fn show_plugin(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    PathArgs(hash): PathArgs<String>,
) -> Result<axum::Json<PluginRecord>> {
    let hash = ids::check_hash(&hash)?;
    let read = app.store.read()?;
    let record = match read.get(PLUGINS, hash)? {
        Some(record) => visible(&read, &caller, record)?,
        None => None,
    };
    Ok(axum::Json(record.ok_or_else(|| Error::NotFound(format!("plugin `{hash}`")))?))
}

/// Delete a plugin (its uploader, or the operator). Refused while a live
/// approval or an unfinished job uses it.
#[utoipa::path(delete, path = routes::PLUGIN, tag = "plugins", security(("token" = [])),
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
        let me = uploader(&caller);
        let record: PluginRecord = w
            .get(PLUGINS, &hash)?
            .filter(|r: &PluginRecord| caller.role == Role::Operator || r.uploaded_by(&me))
            .ok_or_else(|| Error::NotFound(format!("plugin `{hash}`")))?;
        if caller.role != Role::Operator && record.uploader != me {
            return Err(Error::Forbidden(
                "only the plugin's first uploader or an operator may delete it".into(),
            ));
        }
        if let Some(a) = w.listed(APPROVALS, APPROVALS_OF_PLUGIN, &hash)?.into_iter().find(|a| a.live(now)) {
            return Err(Error::Conflict(format!(
                "approval {} of tenant `{}` uses this plugin",
                a.id, a.tenant
            )));
        }
        let unfinished: Vec<Job> = crate::work::unfinished(w)?;
        if let Some(j) = unfinished.into_iter().find(|j| j.plugin == hash) {
            return Err(Error::Conflict(format!("job {} uses this plugin", j.id)));
        }
        let benchmarks = w.listed(BENCHMARKS, BENCHMARKS_OF_PLUGIN, &hash)?;
        if let Some(b) = benchmarks.iter().find(|b| b.retired_ms.is_none()) {
            return Err(Error::Conflict(format!("benchmark `{}` uses this plugin", b.name)));
        }
        w.remove(PLUGINS, &hash)?;
        w.audit(HOST_CHAIN, &caller.actor(), "plugin.delete", json!({"plugin": hash}))?;
        Ok(record)
    })?;
    app.plugins.remove(&hash)?;
    Ok(axum::Json(if caller.role == Role::Operator { record } else { record.seen_by(&uploader(&caller)) }))
}
