//! Online backups of the whole data directory (operator).

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use kanon_client::{BackupInfo, NewBackup, routes};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::JsonBody;
use crate::App;
use crate::audit::HOST_CHAIN;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::tenants::check_name;

pub(super) fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new().routes(routes!(create_backup))
}

/// Back up the whole data directory while the daemon serves (operator):
/// the vault, still encrypted, and the daemon's state (tenants, tokens,
/// approvals, jobs, results, benchmarks, audit chains) and plugins, as one
/// consistent snapshot in one manifest MACed under the key-encryption key.
/// Ingests and jobs go on meanwhile. `kanon restore --from` brings it back.
#[utoipa::path(post, path = routes::BACKUPS, tag = "system", security(("token" = [])), request_body = NewBackup,
    responses((status = 201, body = BackupInfo), (status = 409, body = super::ErrorBody, description = "a backup of that name exists"),
        (status = 507, body = super::ErrorBody)))]
async fn create_backup(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    JsonBody(new): JsonBody<NewBackup>,
) -> Result<(StatusCode, axum::Json<BackupInfo>)> {
    check_name("backup", &new.name)?;
    let root = app.config.backup_dir();
    let dest = root.join(&new.name);
    let worker = app.clone();
    let path = dest.clone();
    let summary = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&root).map_err(|e| Error::Internal(format!("{}: {e}", root.display())))?;
        // No plugin file goes while the copy runs.
        let _files = worker.plugins.hold_files();
        crate::backup::backup(&worker.vault, Some(&worker.store), worker.plugins.dir(), &path)
            .map_err(Error::from)
    })
    .await
    .map_err(|e| Error::Internal(format!("the backup task failed: {e}")))??;
    let info = BackupInfo {
        name: new.name,
        path: dest.display().to_string(),
        tenants: summary.tenants,
        versions: summary.versions,
        chunk_files: summary.files,
        chunk_bytes: summary.bytes,
        daemon_files: summary.extra_files,
        daemon_bytes: summary.extra_bytes,
    };
    app.store.write(|w| {
        w.audit(
            HOST_CHAIN,
            &caller.actor(),
            "backup.create",
            json!({"name": info.name, "tenants": info.tenants, "versions": info.versions,
                   "bytes": info.chunk_bytes + info.daemon_bytes}),
        )
    })?;
    Ok((StatusCode::CREATED, axum::Json(info)))
}
