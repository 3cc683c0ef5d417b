//! A tenant's datasets: upload (a new version), list, delete. The upload is
//! streamed to a temporary file in the data directory, then read by the
//! vault's own readers; nothing is stored unless the whole file is good.

// utoipa's expansion of `params(SomeStruct)` trips this lint.
#![allow(unused_qualifications)]

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use http_body_util::BodyExt;
use kanon_client::types::{
    DatasetClassification, DatasetColumnType, DatasetField, DatasetSchema, DatasetVersionInfo,
};
use kanon_client::{UploadArgs, routes};
use kanon_vault::{Classification, ColumnType, IngestOptions, InputFormat, VersionInfo, WriteMode};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{PathArgs, QueryArgs};
use super::tenant_admin_of;
use crate::App;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::pending::{self, Change};
use crate::store::{APPROVALS, APPROVALS_OF_TENANT};
use crate::tenants::check_name;

pub(super) fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(list_datasets))
        .routes(routes!(upload_dataset, delete_dataset))
        // Uploads count their own bytes against `max_upload_bytes`.
        .layer(DefaultBodyLimit::disable())
}

/// The vault's description of a version as the API serves it.
fn described(info: VersionInfo) -> DatasetVersionInfo {
    let fields = info
        .schema
        .fields
        .into_iter()
        .map(|field| DatasetField {
            name: field.name,
            column_type: match field.column_type {
                ColumnType::Int => DatasetColumnType::Int,
                ColumnType::Float => DatasetColumnType::Float,
                ColumnType::Bool => DatasetColumnType::Bool,
                ColumnType::Text => DatasetColumnType::Text,
                ColumnType::Timestamp => DatasetColumnType::Timestamp,
            },
            classification: match field.classification {
                Classification::Entity => DatasetClassification::Entity,
                Classification::Identifier => DatasetClassification::Identifier,
                Classification::Attribute => DatasetClassification::Attribute,
            },
        })
        .collect();
    DatasetVersionInfo {
        tenant: info.tenant,
        dataset: info.dataset,
        version: info.version,
        rows: info.rows,
        schema: DatasetSchema { fields, reference: info.schema.reference },
        chunks: info.chunks,
        stored_bytes: info.stored_bytes,
        source: info.source,
        created_unix_ms: info.created_unix_ms,
        content_hash: info.content_hash,
    }
}

fn parse_format(name: &str) -> Result<InputFormat> {
    match name {
        "csv" => Ok(InputFormat::Csv),
        "jsonl" | "ndjson" => Ok(InputFormat::JsonLines),
        "parquet" => Ok(InputFormat::Parquet),
        "arrow" | "feather" | "ipc" => Ok(InputFormat::ArrowIpc),
        other => {
            Err(Error::BadRequest(format!("unknown format `{other}`: use csv, jsonl, parquet or arrow")))
        }
    }
}

fn parse_type(name: &str) -> Result<ColumnType> {
    match name {
        "int" => Ok(ColumnType::Int),
        "float" => Ok(ColumnType::Float),
        "bool" => Ok(ColumnType::Bool),
        "text" => Ok(ColumnType::Text),
        "timestamp" => Ok(ColumnType::Timestamp),
        other => {
            Err(Error::BadRequest(format!("unknown type `{other}`: use int, float, bool, text or timestamp")))
        }
    }
}

fn list(value: &Option<String>) -> Vec<String> {
    value
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Upload a file as a new version of a dataset (tenant admin). The body is
/// the file itself.
#[utoipa::path(put, path = routes::TENANT_DATASET, tag = "datasets", security(("token" = [])),
    params(("tenant" = String, Path), ("dataset" = String, Path), UploadArgs),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = DatasetVersionInfo, description = "the stored version"),
        (status = 413, body = super::ErrorBody), (status = 422, body = super::ErrorBody)))]
async fn upload_dataset(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    PathArgs((tenant, dataset)): PathArgs<(String, String)>,
    QueryArgs(args): QueryArgs<UploadArgs>,
    body: Body,
) -> Result<(StatusCode, axum::Json<DatasetVersionInfo>)> {
    tenant_admin_of(&app, &caller, &tenant)?;
    check_name("dataset", &dataset)?;
    app.store
        .read()?
        .get(crate::store::TENANTS, &tenant)?
        .ok_or_else(|| Error::NotFound(format!("tenant `{tenant}`")))?;
    // The vault commits before the entry is written: not unless it can be.
    app.store.appendable(&tenant)?;
    let format = parse_format(&args.format)?;
    let mode = match args.mode.as_deref() {
        None | Some("replace") => WriteMode::Replace,
        Some("append") => WriteMode::Append,
        Some(other) => {
            return Err(Error::BadRequest(format!("unknown mode `{other}`: use replace or append")));
        }
    };
    let types = list(&args.types)
        .iter()
        .map(|spec| {
            let (column, name) = spec
                .split_once(':')
                .ok_or_else(|| Error::BadRequest(format!("types takes COLUMN:TYPE, got `{spec}`")))?;
            Ok((column.to_owned(), parse_type(name)?))
        })
        .collect::<Result<Vec<_>>>()?;
    let reference = args.reference.unwrap_or(false);
    let options = IngestOptions {
        entity: args.entity.clone().unwrap_or_default(),
        identifiers: list(&args.identifiers),
        types,
        reference,
        ..IngestOptions::default()
    };

    let (file, bytes) = receive(&app, body).await?;
    let source = format!("upload of {dataset}");
    let (worker, actor, format_name) = (app.clone(), caller.actor(), args.format.clone());
    let (tenant2, dataset2) = (tenant.clone(), dataset.clone());
    let info = tokio::task::spawn_blocking(move || {
        let reader: Box<dyn kanon_vault::ChunkReader> = match format {
            InputFormat::Parquet => {
                let handle = file.reopen().map_err(|e| Error::Internal(e.to_string()))?;
                Box::new(
                    kanon_vault::ArrowReader::parquet(&source, handle, &options)
                        .map_err(kanon_vault::VaultError::from)?,
                )
            }
            _ => {
                let handle = file.reopen().map_err(|e| Error::Internal(e.to_string()))?;
                let input = std::io::BufReader::with_capacity(1 << 20, handle);
                kanon_vault::open_stream(format, &source, input, &options)
                    .map_err(kanon_vault::VaultError::from)?
            }
        };
        // The intent first, the audit entry after the vault's commit: the
        // two are in different files (`pending`). All of it happens here,
        // not after the await: a request that times out still leaves its
        // committed version audited.
        let change = Change::Ingest { dataset: dataset2.clone(), bytes, format: format_name, reference };
        let intent = pending::begin(&worker, &tenant2, &actor, change)?;
        let stored =
            worker.vault.ingest(&tenant2, &dataset2, mode, reader, &pending::source(&dataset2, &intent));
        drop(file);
        let info = match stored {
            Ok(info) => info,
            Err(e) => {
                pending::abandon(&worker, &intent);
                return Err(e.into());
            }
        };
        pending::complete(&worker, &intent, "dataset.ingest", pending::ingest_entry(&intent, &info))?;
        Ok::<_, Error>(info)
    })
    .await
    .map_err(|e| Error::Internal(format!("the ingest task failed: {e}")))??;
    Ok((StatusCode::CREATED, axum::Json(described(info))))
}

/// Stream the body into a temporary file in the data directory, counting
/// bytes against the upload limit.
pub(super) async fn receive(app: &App, body: Body) -> Result<(tempfile::NamedTempFile, u64)> {
    let limit = app.config.limits.max_upload_bytes;
    let dir = app.config.data_dir.join(super::UPLOADS_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| Error::Internal(format!("{}: {e}", dir.display())))?;
    let temp = tempfile::NamedTempFile::new_in(&dir).map_err(|e| upload_failed(app, &e))?;
    let mut file = tokio::fs::File::from_std(temp.reopen().map_err(|e| upload_failed(app, &e))?);
    let mut body = body;
    let mut received: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Error::BadRequest(format!("the upload broke off: {e}")))?;
        let Ok(chunk) = frame.into_data() else { continue };
        received += chunk.len() as u64;
        if received > limit {
            return Err(Error::TooLarge(format!("uploads are limited to {limit} bytes")));
        }
        file.write_all(&chunk).await.map_err(|e| upload_failed(app, &e))?;
    }
    file.flush().await.map_err(|e| upload_failed(app, &e))?;
    Ok((temp, received))
}

/// A failed write of an upload: a full disk is the caller's 507 and shows
/// in `/health` until the next commit.
fn upload_failed(app: &App, e: &std::io::Error) -> Error {
    if kanon_vault::redb_file::is_full(e.kind()) {
        app.vault.note_storage_failure(e);
        Error::InsufficientStorage(format!("no space left to receive the upload ({e}); nothing was stored"))
    } else {
        Error::Internal(format!("cannot write the upload: {e}"))
    }
}

/// The tenant's datasets, latest versions (tenant admin).
#[utoipa::path(get, path = routes::TENANT_DATASETS, tag = "datasets", security(("token" = [])),
    params(("tenant" = String, Path)), responses((status = 200, body = Vec<DatasetVersionInfo>)))]
async fn list_datasets(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    PathArgs(tenant): PathArgs<String>,
) -> Result<axum::Json<Vec<DatasetVersionInfo>>> {
    tenant_admin_of(&app, &caller, &tenant)?;
    match app.vault.datasets(&tenant) {
        Ok(list) => Ok(axum::Json(list.into_iter().map(described).collect())),
        // A tenant with nothing ingested yet has no vault record.
        Err(kanon_vault::VaultError::UnknownTenant(_)) => Ok(axum::Json(Vec::new())),
        Err(e) => Err(e.into()),
    }
}

/// Delete a dataset, every version (tenant admin). Refused while a live
/// approval names it.
#[utoipa::path(delete, path = routes::TENANT_DATASET, tag = "datasets", security(("token" = [])),
    params(("tenant" = String, Path), ("dataset" = String, Path)),
    responses((status = 200, body = DatasetVersionInfo, description = "the latest version, now deleted"),
        (status = 404, body = super::ErrorBody), (status = 409, body = super::ErrorBody)))]
async fn delete_dataset(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    PathArgs((tenant, dataset)): PathArgs<(String, String)>,
) -> Result<axum::Json<DatasetVersionInfo>> {
    tenant_admin_of(&app, &caller, &tenant)?;
    let now = crate::now_ms();
    let approvals = app.store.read()?.listed(APPROVALS, APPROVALS_OF_TENANT, &tenant)?;
    if let Some(a) =
        approvals.iter().find(|a| a.live(now) && a.datasets.values().any(|d| d.dataset == dataset))
    {
        return Err(Error::Conflict(format!("approval {} uses dataset `{dataset}`; revoke it first", a.id)));
    }
    app.store.appendable(&tenant)?;
    let worker = app.clone();
    let actor = caller.actor();
    let info = tokio::task::spawn_blocking(move || {
        let latest = worker
            .vault
            .versions(&tenant, &dataset)?
            .pop()
            .ok_or_else(|| Error::NotFound(format!("tenant `{tenant}` has no dataset `{dataset}`")))?;
        let change = Change::Delete {
            dataset: dataset.clone(),
            latest: latest.version,
            latest_created_ms: latest.created_unix_ms,
        };
        let intent = pending::begin(&worker, &tenant, &actor, change)?;
        let info = match worker.vault.delete_dataset(&tenant, &dataset) {
            Ok(info) => info,
            Err(e) => {
                pending::abandon(&worker, &intent);
                return Err(e.into());
            }
        };
        let entry = json!({"dataset": dataset, "versions_up_to": info.version, "change": intent.id});
        pending::complete(&worker, &intent, "dataset.erase", entry)?;
        Ok::<_, Error>(info)
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))??;
    Ok(axum::Json(described(info)))
}
