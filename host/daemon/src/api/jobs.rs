//! Jobs: submit, list, show, cancel; results for the submitter; the plugin's
//! output log for the tenant (and support staff under a grant).

// utoipa's expansion of `params(SomeStruct)` trips this lint.
#![allow(unused_qualifications)]

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use kanon_client::{ResultArgs, WaitArgs, routes};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use serde_json::json;

use super::Refusal;
use super::extract::{JsonBody, PathArgs, QueryArgs};
use super::tenants::support_access;
use crate::App;
use crate::auth::{Caller, Role};
use crate::error::{Error, Result};
use crate::jobs::{self, Job, JobLog, JobState, Refused, SubmitRequest};
use crate::store::{JOBS, JOBS_OF_ANALYST, JOBS_OF_TENANT};

pub(super) fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(submit_job, list_jobs))
        .routes(routes!(show_job))
        .routes(routes!(cancel_job))
        .routes(routes!(job_results))
        .routes(routes!(job_log))
        .routes(routes!(tenant_jobs))
}

/// Submit a job under an approval (analyst). It waits in the tenant's
/// queue; follow it with `GET /v1/jobs/{id}?wait=60`.
#[utoipa::path(post, path = routes::JOBS, tag = "jobs", security(("token" = [])), request_body = SubmitRequest,
    responses((status = 202, body = Job), (status = 403, body = super::ErrorBody), (status = 409, body = super::ErrorBody),
              (status = 429, body = super::ErrorBody)))]
async fn submit_job(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    JsonBody(ask): JsonBody<SubmitRequest>,
) -> Result<(StatusCode, axum::Json<Job>)> {
    crate::jobs::check_submit(&ask)?;
    let limits = app.config.jobs.clone();
    let (tenant, plugin, approval) = (ask.tenant.clone(), ask.plugin.clone(), ask.approval.clone());
    let job = match app
        .store
        .write(|w| jobs::submit(w, &app.config.floor, &limits, &caller.actor(), &caller.name, ask))?
    {
        Ok(job) => job,
        Err(Refused::NotApproved(reason)) => {
            let extra = json!({"plugin": plugin, "approval": approval, "reason": reason});
            let message = format!("no live approval covers this job: {reason}");
            return Err(Refusal::new(&tenant, "job.submit", message).with(extra).audited(&app, &caller));
        }
        // Audited in the submit's own transaction (`privacy.refused`).
        Err(Refused::Budget(why)) => return Err(Error::Conflict(why)),
    };
    app.scheduler.wake();
    Ok((StatusCode::ACCEPTED, axum::Json(job)))
}

/// Whether `caller` may see `job`: its analyst, its tenant's admin, or
/// support staff under the tenant's grant.
fn may_see(app: &App, caller: &Caller, job: &Job, what: &str) -> Result<()> {
    let allowed = match caller.role {
        Role::Analyst => job.analyst == caller.name,
        Role::TenantAdmin => caller.tenant.as_deref() == Some(job.tenant.as_str()),
        Role::Operator => return support_access(app, caller, &job.tenant, what, Some(&job.id)),
        Role::Vendor => false,
    };
    // Someone else's job answers as if it did not exist.
    if allowed { Ok(()) } else { Err(Error::NotFound(format!("job `{}`", job.id))) }
}

fn load(app: &App, id: &str) -> Result<Job> {
    app.store.read()?.get(JOBS, id)?.ok_or_else(|| Error::NotFound(format!("job `{id}`")))
}

/// The caller's jobs: an analyst's own, a tenant admin's tenant's.
#[utoipa::path(get, path = routes::JOBS, tag = "jobs", security(("token" = [])), responses((status = 200, body = Vec<Job>)))]
async fn list_jobs(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
) -> Result<axum::Json<Vec<Job>>> {
    let read = app.store.read()?;
    let mut mine = match (caller.role, &caller.tenant) {
        (Role::Analyst, _) => read.listed(JOBS, JOBS_OF_ANALYST, &caller.name)?,
        (Role::TenantAdmin, Some(tenant)) => read.listed(JOBS, JOBS_OF_TENANT, tenant)?,
        _ => Vec::new(),
    };
    mine.sort_by_key(|j| j.seq);
    Ok(axum::Json(mine))
}

/// One job's state and figures. With `wait`, the answer comes as soon as
/// the job has ended, or once the wait (at most 60 s) is over, with its
/// state then: a long poll instead of polling.
#[utoipa::path(get, path = routes::JOB, tag = "jobs", security(("token" = [])),
    params(("id" = String, Path), WaitArgs),
    responses((status = 200, body = Job), (status = 400, body = super::ErrorBody), (status = 404, body = super::ErrorBody)))]
async fn show_job(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    PathArgs(id): PathArgs<String>,
    QueryArgs(args): QueryArgs<WaitArgs>,
) -> Result<axum::Json<Job>> {
    let job = load(&app, &id)?;
    may_see(&app, &caller, &job, "job")?;
    match args.duration() {
        // Who may see it does not change while it runs: checked once.
        Some(wait) => {
            Ok(axum::Json(crate::work::wait_for_end::<Job>(&app, &caller.actor(), &id, wait).await?))
        }
        None => Ok(axum::Json(job)),
    }
}

/// Cancel a job (its analyst or its tenant's admin).
#[utoipa::path(post, path = routes::JOB_CANCEL, tag = "jobs", security(("token" = [])), params(("id" = String, Path)),
    responses((status = 200, body = Job), (status = 404, body = super::ErrorBody), (status = 409, body = super::ErrorBody)))]
async fn cancel_job(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    PathArgs(id): PathArgs<String>,
) -> Result<axum::Json<Job>> {
    let job = load(&app, &id)?;
    may_see(&app, &caller, &job, "job cancel")?;
    let job: Job = app.store.write(|w| crate::work::cancel(w, &caller.actor(), &id))?;
    app.scheduler.cancel(&id);
    Ok(axum::Json(job))
}

/// The released tables of a succeeded job (its analyst), as JSON, or as
/// CSV (one row per cell, a `table` column first; suppressed cells empty).
#[utoipa::path(get, path = routes::JOB_RESULTS, tag = "jobs", security(("token" = [])),
    params(("id" = String, Path), ResultArgs),
    responses((status = 200, body = Object), (status = 404, body = super::ErrorBody), (status = 409, body = super::ErrorBody)))]
async fn job_results(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    PathArgs(id): PathArgs<String>,
    QueryArgs(args): QueryArgs<ResultArgs>,
) -> Result<Response> {
    let job = load(&app, &id)?;
    may_see(&app, &caller, &job, "job results")?;
    if job.state != JobState::Succeeded {
        return Err(Error::Conflict(match &job.failure {
            Some(code) => format!("job `{id}` failed ({code}); nothing was released"),
            None => format!("job `{id}` is {}; it has no results", job.state.name()),
        }));
    }
    let release = jobs::result(&app, &id)?;
    match args.format.as_deref() {
        None | Some("json") => Ok(axum::Json(release).into_response()),
        Some("csv") => Ok((
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            crate::export::release_csv(&release, false)?,
        )
            .into_response()),
        Some(other) => Err(Error::BadRequest(format!("unknown format `{other}`: use json or csv"))),
    }
}

/// What the plugin printed and its error text: the tenant's (its admin, or
/// support staff under a grant), never the analyst's.
#[utoipa::path(get, path = routes::JOB_LOG, tag = "jobs", security(("token" = [])), params(("id" = String, Path)),
    responses((status = 200, body = JobLog), (status = 404, body = super::ErrorBody)))]
async fn job_log(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    PathArgs(id): PathArgs<String>,
) -> Result<axum::Json<JobLog>> {
    let job = load(&app, &id)?;
    may_see(&app, &caller, &job, "job log")?;
    Ok(axum::Json(jobs::owner_log(&app, &job.tenant, &id)?))
}

/// A tenant's jobs (its admin, or support staff under a grant).
#[utoipa::path(get, path = routes::TENANT_JOBS, tag = "jobs", security(("token" = [])),
    params(("tenant" = String, Path)), responses((status = 200, body = Vec<Job>)))]
async fn tenant_jobs(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    PathArgs(tenant): PathArgs<String>,
) -> Result<axum::Json<Vec<Job>>> {
    support_access(&app, &caller, &tenant, "job list", None)?;
    let mut jobs = app.store.read()?.listed(JOBS, JOBS_OF_TENANT, &tenant)?;
    jobs.sort_by_key(|j| j.seq);
    Ok(axum::Json(jobs))
}
