//! Benchmarks: the vendor publishes, runs and reads its versions from the
//! meta data vault; a tenant admin reads the manifest, opts in or out, and
//! reads its own position and its instance's log.

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

use super::extract::{JsonBody, PathArgs, QueryArgs};
use super::tenant_admin_of;
use super::tenants::support_access;
use crate::App;
use crate::auth::{Caller, Role};
use kanon_client::types::BenchmarkView;

use crate::benchmark_runs::{self, BenchmarkBudget, BenchmarkRun, PositionView, VersionSummary};
use crate::benchmarks::{self, Benchmark, NewBenchmark, OptIn, OptInRequest};
use crate::error::{Error, Result};
use crate::jobs::JobLog;
use crate::registry::PluginRecord;
use crate::store::{BENCHMARK_RUNS, BENCHMARKS, PLUGINS, RUNS_OF_BENCHMARK};

pub(super) fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(publish_benchmark, list_benchmarks))
        .routes(routes!(show_benchmark, retire_benchmark))
        .routes(routes!(benchmark_budget))
        .routes(routes!(queue_run, list_runs))
        .routes(routes!(show_run))
        .routes(routes!(cancel_run))
        .routes(routes!(list_versions))
        .routes(routes!(show_version))
        .routes(routes!(tenant_benchmarks))
        .routes(routes!(opt_in, opt_out))
        .routes(routes!(own_position))
        .routes(routes!(run_log))
}

/// The benchmark if `caller` may see it: its vendor, an operator, any
/// tenant admin (to opt in). Another vendor's answers as if it did not exist.
fn visible(app: &App, caller: &Caller, name: &str) -> Result<Benchmark> {
    let benchmark: Option<Benchmark> = app.store.read()?.get(BENCHMARKS, name)?;
    benchmark
        .filter(|b| caller.role != Role::Vendor || b.vendor == caller.name)
        .ok_or_else(|| Error::NotFound(format!("benchmark `{name}`")))
}

fn view(app: &App, caller: &Caller, benchmark: Benchmark) -> Result<BenchmarkView> {
    let read = app.store.read()?;
    let plugin: PluginRecord = read
        .get(PLUGINS, &benchmark.plugin)?
        .ok_or_else(|| Error::Internal(format!("the plugin of `{}` is gone", benchmark.name)))?;
    let opt_ins = benchmarks::opt_ins(&read, &benchmark.name)?;
    let participants = opt_ins.iter().filter(|o| o.active()).count();
    let opt_in = match (&caller.role, &caller.tenant) {
        (Role::TenantAdmin, Some(tenant)) => opt_ins.into_iter().find(|o| &o.tenant == tenant),
        _ => None,
    };
    Ok(BenchmarkView { benchmark, manifest: plugin.manifest, participants, opt_in })
}

/// Publish a benchmark over a registered plugin (vendor).
#[utoipa::path(post, path = routes::BENCHMARKS, tag = "benchmarks", security(("token" = [])),
    request_body = NewBenchmark,
    responses((status = 201, body = Benchmark), (status = 404, body = super::ErrorBody),
              (status = 409, body = super::ErrorBody), (status = 422, body = super::ErrorBody)))]
async fn publish_benchmark(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    JsonBody(new): JsonBody<NewBenchmark>,
) -> Result<(StatusCode, axum::Json<Benchmark>)> {
    let benchmark = app.store.write(|w| benchmarks::publish(w, &caller.actor(), &caller.name, new))?;
    Ok((StatusCode::CREATED, axum::Json(benchmark)))
}

/// Benchmarks: a vendor's own; every one for tenant admins and operators.
#[utoipa::path(get, path = routes::BENCHMARKS, tag = "benchmarks", security(("token" = [])),
    responses((status = 200, body = Vec<BenchmarkView>)))]
async fn list_benchmarks(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
) -> Result<axum::Json<Vec<BenchmarkView>>> {
    let all: Vec<Benchmark> = app.store.read()?.all(BENCHMARKS)?;
    let views = all
        .into_iter()
        .filter(|b| caller.role != Role::Vendor || b.vendor == caller.name)
        .map(|b| view(&app, &caller, b))
        .collect::<Result<_>>()?;
    Ok(axum::Json(views))
}

/// A benchmark, its manifest (the datasets and columns a tenant maps its
/// own to, the tables it releases) and its number of participants.
#[utoipa::path(get, path = routes::BENCHMARK, tag = "benchmarks", security(("token" = [])),
    params(("benchmark" = String, Path)),
    responses((status = 200, body = BenchmarkView), (status = 404, body = super::ErrorBody)))]
async fn show_benchmark(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    PathArgs(name): PathArgs<String>,
) -> Result<axum::Json<BenchmarkView>> {
    let benchmark = visible(&app, &caller, &name)?;
    Ok(axum::Json(view(&app, &caller, benchmark)?))
}

/// What a run of the benchmark charges each tenant it reads under
/// differential privacy, and how many runs the tightest budget of the
/// tenants opted in now allows (its vendor, operator). No tenant's own
/// budget is shown; the smallest one shows through `runs_possible`.
#[utoipa::path(get, path = routes::BENCHMARK_BUDGET, tag = "benchmarks", security(("token" = [])),
    params(("benchmark" = String, Path)),
    responses((status = 200, body = BenchmarkBudget), (status = 404, body = super::ErrorBody)))]
async fn benchmark_budget(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    PathArgs(name): PathArgs<String>,
) -> Result<axum::Json<BenchmarkBudget>> {
    let benchmark = visible(&app, &caller, &name)?;
    Ok(axum::Json(benchmark_runs::budget(&app, &benchmark)?))
}

/// Retire a benchmark (its vendor): no more runs or opt-ins, its schedule
/// stops, its queued runs are cancelled; its versions stay readable, and
/// its plugin may be deleted.
#[utoipa::path(delete, path = routes::BENCHMARK, tag = "benchmarks", security(("token" = [])),
    params(("benchmark" = String, Path)),
    responses((status = 200, body = Benchmark), (status = 404, body = super::ErrorBody), (status = 409, body = super::ErrorBody)))]
async fn retire_benchmark(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    PathArgs(name): PathArgs<String>,
) -> Result<axum::Json<Benchmark>> {
    visible(&app, &caller, &name)?;
    let (benchmark, cancelled) = app.store.write(|w| benchmarks::retire(w, &caller.actor(), &name))?;
    for run in &cancelled {
        app.scheduler.cancel(run);
    }
    Ok(axum::Json(benchmark))
}

/// Queue a run over every tenant opted in when it starts (its vendor).
#[utoipa::path(post, path = routes::BENCHMARK_RUNS, tag = "benchmarks", security(("token" = [])),
    params(("benchmark" = String, Path)),
    responses((status = 202, body = BenchmarkRun), (status = 404, body = super::ErrorBody),
              (status = 409, body = super::ErrorBody)))]
async fn queue_run(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    PathArgs(name): PathArgs<String>,
) -> Result<(StatusCode, axum::Json<BenchmarkRun>)> {
    visible(&app, &caller, &name)?;
    let actor = caller.actor();
    let run = app.store.write(|w| benchmark_runs::queue(w, &actor, &name, &actor))?;
    app.scheduler.wake();
    Ok((StatusCode::ACCEPTED, axum::Json(run)))
}

/// A benchmark's runs, oldest first (its vendor, operators).
#[utoipa::path(get, path = routes::BENCHMARK_RUNS, tag = "benchmarks", security(("token" = [])),
    params(("benchmark" = String, Path)),
    responses((status = 200, body = Vec<BenchmarkRun>), (status = 404, body = super::ErrorBody)))]
async fn list_runs(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    PathArgs(name): PathArgs<String>,
) -> Result<axum::Json<Vec<BenchmarkRun>>> {
    visible(&app, &caller, &name)?;
    let mut runs = app.store.read()?.listed(BENCHMARK_RUNS, RUNS_OF_BENCHMARK, &name)?;
    runs.sort_by_key(|r| r.seq);
    Ok(axum::Json(runs))
}

/// One run (its vendor, operators). With `wait`, the answer comes as soon
/// as the run has ended, or once the wait (at most 60 s) is over, with its
/// state then.
#[utoipa::path(get, path = routes::BENCHMARK_RUN, tag = "benchmarks", security(("token" = [])),
    params(("benchmark" = String, Path), ("run" = String, Path), WaitArgs),
    responses((status = 200, body = BenchmarkRun), (status = 400, body = super::ErrorBody),
              (status = 404, body = super::ErrorBody)))]
async fn show_run(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    PathArgs((name, id)): PathArgs<(String, String)>,
    QueryArgs(args): QueryArgs<WaitArgs>,
) -> Result<axum::Json<BenchmarkRun>> {
    visible(&app, &caller, &name)?;
    let run: Option<BenchmarkRun> = app.store.read()?.get(BENCHMARK_RUNS, &id)?;
    let run = run.filter(|r| r.benchmark == name).ok_or_else(|| Error::NotFound(format!("run `{id}`")))?;
    match args.duration() {
        Some(wait) => {
            Ok(axum::Json(crate::work::wait_for_end::<BenchmarkRun>(&app, &caller.actor(), &id, wait).await?))
        }
        None => Ok(axum::Json(run)),
    }
}

/// Cancel a run (its vendor, operators): a queued one does not start; a
/// running one is interrupted and releases nothing.
#[utoipa::path(post, path = routes::BENCHMARK_RUN_CANCEL, tag = "benchmarks",
    security(("token" = [])), params(("benchmark" = String, Path), ("run" = String, Path)),
    responses((status = 200, body = BenchmarkRun), (status = 404, body = super::ErrorBody),
              (status = 409, body = super::ErrorBody)))]
async fn cancel_run(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    PathArgs((name, id)): PathArgs<(String, String)>,
) -> Result<axum::Json<BenchmarkRun>> {
    visible(&app, &caller, &name)?;
    let actor = caller.actor();
    let run = app.store.write(|w| {
        let run: Option<BenchmarkRun> = w.get(BENCHMARK_RUNS, &id)?;
        if run.is_none_or(|r| r.benchmark != name) {
            return Err(Error::NotFound(format!("run `{id}`")));
        }
        crate::work::cancel::<BenchmarkRun>(w, &actor, &id)
    })?;
    app.scheduler.cancel(&id);
    Ok(axum::Json(run))
}

/// The versions in the meta data vault, oldest first (its vendor,
/// operators).
#[utoipa::path(get, path = routes::BENCHMARK_VERSIONS, tag = "benchmarks", security(("token" = [])),
    params(("benchmark" = String, Path)),
    responses((status = 200, body = Vec<VersionSummary>), (status = 404, body = super::ErrorBody)))]
async fn list_versions(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    PathArgs(name): PathArgs<String>,
) -> Result<axum::Json<Vec<VersionSummary>>> {
    visible(&app, &caller, &name)?;
    Ok(axum::Json(benchmark_runs::versions(&app, &name)?))
}

/// `latest` or a version number.
fn version_number(version: &str) -> Result<Option<u64>> {
    match version {
        "latest" => Ok(None),
        number => number.parse().map(Some).map_err(|_| {
            Error::BadRequest(format!("`{version}` is not a version: use a number or `latest`"))
        }),
    }
}

/// A version's released tables (its vendor, operators): JSON, CSV or
/// Parquet, one row per cell. A held cell carries an earlier version's
/// values and says which (`held_from`).
#[utoipa::path(get, path = routes::BENCHMARK_VERSION, tag = "benchmarks",
    security(("token" = [])), params(("benchmark" = String, Path), ("version" = String, Path), ResultArgs),
    responses((status = 200, body = benchmark_runs::BenchmarkVersion), (status = 404, body = super::ErrorBody)))]
async fn show_version(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    PathArgs((name, version)): PathArgs<(String, String)>,
    QueryArgs(args): QueryArgs<ResultArgs>,
) -> Result<Response> {
    let benchmark = visible(&app, &caller, &name)?;
    let version = version_number(&version)?;
    let format = args.format.as_deref().unwrap_or("json");
    if !matches!(format, "json" | "csv" | "parquet") {
        return Err(Error::BadRequest(format!("unknown format `{format}`: use json, csv or parquet")));
    }
    let stored = benchmark_runs::version(&app, &benchmark, version)?;
    Ok(match format {
        "csv" => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            crate::export::release_csv(&stored.release, true)?,
        )
            .into_response(),
        "parquet" => (
            [(header::CONTENT_TYPE, "application/vnd.apache.parquet")],
            crate::export::release_parquet(&stored.release)?,
        )
            .into_response(),
        _ => axum::Json(stored).into_response(),
    })
}

/// Every benchmark, with this tenant's opt-in if any (tenant admin).
#[utoipa::path(get, path = routes::TENANT_BENCHMARKS, tag = "benchmarks", security(("token" = [])),
    params(("tenant" = String, Path)), responses((status = 200, body = Vec<BenchmarkView>)))]
async fn tenant_benchmarks(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    PathArgs(tenant): PathArgs<String>,
) -> Result<axum::Json<Vec<BenchmarkView>>> {
    tenant_admin_of(&app, &caller, &tenant)?;
    let all: Vec<Benchmark> = app.store.read()?.all(BENCHMARKS)?;
    Ok(axum::Json(all.into_iter().map(|b| view(&app, &caller, b)).collect::<Result<_>>()?))
}

/// Opt in, or change the mapping (tenant admin). Every dataset the
/// manifest reads must map to one of the tenant's, with the columns and
/// types it needs; a column left out maps to the one of the same name.
#[utoipa::path(put, path = routes::TENANT_BENCHMARK, tag = "benchmarks",
    security(("token" = [])), params(("tenant" = String, Path), ("benchmark" = String, Path)),
    request_body = OptInRequest,
    responses((status = 200, body = OptIn), (status = 404, body = super::ErrorBody), (status = 422, body = super::ErrorBody)))]
async fn opt_in(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    PathArgs((tenant, name)): PathArgs<(String, String)>,
    JsonBody(request): JsonBody<OptInRequest>,
) -> Result<axum::Json<OptIn>> {
    tenant_admin_of(&app, &caller, &tenant)?;
    benchmarks::check_opt_in(&request)?;
    let benchmark = visible(&app, &caller, &name)?;
    let plugin: PluginRecord = app
        .store
        .read()?
        .get(PLUGINS, &benchmark.plugin)?
        .ok_or_else(|| Error::Internal(format!("the plugin of `{name}` is gone")))?;
    let datasets = request.datasets;
    benchmarks::mapped_datasets(&app, &tenant, &plugin.manifest, &datasets)?;
    let opt_in = app.store.write(|w| benchmarks::opt_in(w, &caller.actor(), &name, &tenant, datasets))?;
    Ok(axum::Json(opt_in))
}

/// Opt out (tenant admin): no run that starts later reads this tenant's
/// data. Released versions stay as they were.
#[utoipa::path(delete, path = routes::TENANT_BENCHMARK, tag = "benchmarks",
    security(("token" = [])), params(("tenant" = String, Path), ("benchmark" = String, Path)),
    responses((status = 200, body = OptIn), (status = 404, body = super::ErrorBody)))]
async fn opt_out(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    PathArgs((tenant, name)): PathArgs<(String, String)>,
) -> Result<axum::Json<OptIn>> {
    tenant_admin_of(&app, &caller, &tenant)?;
    let opt_in = app.store.write(|w| benchmarks::opt_out(w, &caller.actor(), &name, &tenant))?;
    Ok(axum::Json(opt_in))
}

/// This tenant's own position in a version (tenant admin): per cell, the
/// released peer values, its own values under the tenant rules, and its
/// rank band where the cell allows one.
#[utoipa::path(get, path = routes::TENANT_BENCHMARK_POSITION, tag = "benchmarks",
    security(("token" = [])), params(("tenant" = String, Path), ("benchmark" = String, Path), ("version" = String, Path)),
    responses((status = 200, body = PositionView), (status = 404, body = super::ErrorBody)))]
async fn own_position(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    PathArgs((tenant, name, version)): PathArgs<(String, String, String)>,
) -> Result<axum::Json<PositionView>> {
    tenant_admin_of(&app, &caller, &tenant)?;
    let benchmark = visible(&app, &caller, &name)?;
    let version = version_number(&version)?;
    Ok(axum::Json(benchmark_runs::position(&app, &benchmark, version, &tenant)?))
}

/// What the plugin printed in this tenant's instance of a run (its admin,
/// or support staff under a grant).
#[utoipa::path(get, path = routes::TENANT_BENCHMARK_RUN_LOG, tag = "benchmarks",
    security(("token" = [])), params(("tenant" = String, Path), ("run" = String, Path)),
    responses((status = 200, body = JobLog), (status = 404, body = super::ErrorBody)))]
async fn run_log(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    PathArgs((tenant, run)): PathArgs<(String, String)>,
) -> Result<axum::Json<JobLog>> {
    support_access(&app, &caller, &tenant, "benchmark run log", Some(&run))?;
    Ok(axum::Json(benchmark_runs::owner_log(&app, &run, &tenant)?))
}
