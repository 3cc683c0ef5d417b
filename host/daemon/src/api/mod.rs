//! The HTTP API: JSON over HTTP, versioned under `/v1`.
//!
//! Every request passes two layers before its handler:
//! - `observe`: a request id (also sent back as `x-request-id`) in a tracing
//!   span around everything the request logs, the concurrency cap, metrics;
//! - `authorize`: the route's entry in [`ACCESS`]. A route with no entry
//!   refuses everyone, a public one needs no token, any other needs a live
//!   token of one of the listed roles.
//!
//! Handlers then check what is the caller's own: a tenant admin's tenant, an
//! analyst's jobs, an operator's support grant.

mod approvals;
mod backups;
mod benchmarks;
mod datasets;
mod extract;
mod jobs;
mod plugins;
mod system;
mod tenants;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use kanon_client::routes;
pub use kanon_client::{ErrorBody, ErrorDetail};
use tokio::sync::Semaphore;
use tracing::Instrument;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

use crate::auth::{self, Caller, Role};
use crate::config::RequestLimits;
use crate::error::Error;
use crate::store::TOKENS;
use crate::{App, ids};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token needed: health, the API document, and redeeming an
    /// enrolment code.
    Public,
    /// A live token of one of these roles.
    Roles(&'static [Role]),
}

use Role::{Analyst, Operator, TenantAdmin, Vendor};

/// The access table: every route, by method and path template. Deny by
/// default: `authorize` refuses a route missing here, and the tests fail
/// when the API document and this table disagree.
pub const ACCESS: &[(&str, &str, Access)] = &[
    ("GET", routes::HEALTH, Access::Public),
    ("GET", routes::OPENAPI, Access::Public),
    ("GET", routes::METRICS, Access::Roles(&[Operator])),
    ("GET", routes::STATUS, Access::Roles(&[Operator])),
    ("GET", routes::WHOAMI, Access::Roles(&[Operator, TenantAdmin, Analyst, Vendor])),
    ("POST", routes::TENANTS, Access::Roles(&[Operator])),
    ("GET", routes::TENANTS, Access::Roles(&[Operator])),
    ("POST", routes::TENANT_ENROLMENTS, Access::Roles(&[Operator])),
    // Unauthenticated: the one-time code is the credential.
    ("POST", routes::ENROL, Access::Public),
    ("POST", routes::TOKENS, Access::Roles(&[Operator, TenantAdmin])),
    ("GET", routes::TOKENS, Access::Roles(&[Operator, TenantAdmin])),
    ("DELETE", routes::TOKEN, Access::Roles(&[Operator, TenantAdmin])),
    ("GET", routes::HOST_AUDIT, Access::Roles(&[Operator])),
    ("POST", routes::BACKUPS, Access::Roles(&[Operator])),
    ("GET", routes::TENANT_POLICY, Access::Roles(&[TenantAdmin])),
    ("PUT", routes::TENANT_POLICY, Access::Roles(&[TenantAdmin])),
    ("GET", routes::TENANT_BUDGET, Access::Roles(&[TenantAdmin, Operator, Analyst])),
    ("GET", routes::TENANT_DATASETS, Access::Roles(&[TenantAdmin])),
    ("PUT", routes::TENANT_DATASET, Access::Roles(&[TenantAdmin])),
    ("DELETE", routes::TENANT_DATASET, Access::Roles(&[TenantAdmin])),
    ("GET", routes::TENANT_APPROVALS, Access::Roles(&[TenantAdmin])),
    ("POST", routes::TENANT_APPROVALS, Access::Roles(&[TenantAdmin])),
    ("DELETE", routes::TENANT_APPROVAL, Access::Roles(&[TenantAdmin])),
    ("GET", routes::TENANT_JOBS, Access::Roles(&[TenantAdmin, Operator])),
    ("GET", routes::TENANT_AUDIT, Access::Roles(&[TenantAdmin])),
    ("GET", routes::TENANT_GRANTS, Access::Roles(&[TenantAdmin])),
    ("POST", routes::TENANT_GRANTS, Access::Roles(&[TenantAdmin])),
    ("DELETE", routes::TENANT_GRANT, Access::Roles(&[TenantAdmin])),
    ("GET", routes::PLUGINS, Access::Roles(&[TenantAdmin, Analyst, Vendor])),
    ("POST", routes::PLUGINS, Access::Roles(&[Analyst, Vendor])),
    ("GET", routes::PLUGIN, Access::Roles(&[TenantAdmin, Analyst, Vendor])),
    ("DELETE", routes::PLUGIN, Access::Roles(&[Operator, Analyst, Vendor])),
    ("GET", routes::APPROVALS, Access::Roles(&[Analyst])),
    ("GET", routes::JOBS, Access::Roles(&[Analyst, TenantAdmin])),
    ("POST", routes::JOBS, Access::Roles(&[Analyst])),
    ("GET", routes::JOB, Access::Roles(&[Analyst, TenantAdmin, Operator])),
    ("POST", routes::JOB_CANCEL, Access::Roles(&[Analyst, TenantAdmin])),
    ("GET", routes::JOB_RESULTS, Access::Roles(&[Analyst])),
    ("GET", routes::JOB_LOG, Access::Roles(&[TenantAdmin, Operator])),
    ("POST", routes::BENCHMARKS, Access::Roles(&[Vendor])),
    ("GET", routes::BENCHMARKS, Access::Roles(&[Vendor, TenantAdmin, Operator])),
    ("GET", routes::BENCHMARK, Access::Roles(&[Vendor, TenantAdmin, Operator])),
    ("DELETE", routes::BENCHMARK, Access::Roles(&[Vendor])),
    ("GET", routes::BENCHMARK_BUDGET, Access::Roles(&[Vendor, Operator])),
    ("POST", routes::BENCHMARK_RUNS, Access::Roles(&[Vendor])),
    ("GET", routes::BENCHMARK_RUNS, Access::Roles(&[Vendor, Operator])),
    ("GET", routes::BENCHMARK_RUN, Access::Roles(&[Vendor, Operator])),
    ("POST", routes::BENCHMARK_RUN_CANCEL, Access::Roles(&[Vendor, Operator])),
    ("GET", routes::BENCHMARK_VERSIONS, Access::Roles(&[Vendor, Operator])),
    ("GET", routes::BENCHMARK_VERSION, Access::Roles(&[Vendor, Operator])),
    ("GET", routes::TENANT_BENCHMARKS, Access::Roles(&[TenantAdmin])),
    ("PUT", routes::TENANT_BENCHMARK, Access::Roles(&[TenantAdmin])),
    ("DELETE", routes::TENANT_BENCHMARK, Access::Roles(&[TenantAdmin])),
    ("GET", routes::TENANT_BENCHMARK_POSITION, Access::Roles(&[TenantAdmin])),
    ("GET", routes::TENANT_BENCHMARK_RUN_LOG, Access::Roles(&[TenantAdmin, Operator])),
];

/// The access entry of a route.
pub fn access(method: &str, path: &str) -> Option<Access> {
    ACCESS.iter().find(|(m, p, _)| *m == method && *p == path).map(|(_, _, access)| *access)
}

#[derive(OpenApi)]
#[openapi(
    info(title = "kanon", description = "kanon's host daemon: tenants, datasets, plugins, approvals, jobs, results, audit, benchmarks."),
    modifiers(&BearerToken),
    components(schemas(ErrorBody))
)]
struct ApiDoc;

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("kanon token").build(),
            ),
        );
    }
}

/// The routes and their API document, built together.
pub(crate) fn routes(limits: &RequestLimits) -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(system::routes())
        .merge(tenants::routes())
        .merge(datasets::routes())
        .merge(plugins::routes(limits.max_plugin_bytes))
        .merge(approvals::routes())
        .merge(jobs::routes())
        .merge(benchmarks::routes())
        .merge(backups::routes())
}

/// The API document as served, with each operation's roles added as
/// `x-kanon-roles`.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let (_, mut openapi) = routes(&RequestLimits::default()).split_for_parts();
    for (path, item) in openapi.paths.paths.iter_mut() {
        for (method, operation) in operations(item) {
            let roles = match access(method, path) {
                Some(Access::Public) => vec!["public".to_owned()],
                Some(Access::Roles(roles)) => roles.iter().map(|r| r.name().to_owned()).collect(),
                None => vec![],
            };
            let extensions = operation.extensions.get_or_insert_with(Default::default);
            extensions.merge(
                utoipa::openapi::extensions::ExtensionsBuilder::new().add("x-kanon-roles", roles).build(),
            );
        }
    }
    openapi
}

/// An item's operations by method name.
pub fn operations(
    item: &mut utoipa::openapi::PathItem,
) -> Vec<(&'static str, &mut utoipa::openapi::path::Operation)> {
    [
        ("GET", &mut item.get),
        ("PUT", &mut item.put),
        ("POST", &mut item.post),
        ("DELETE", &mut item.delete),
        ("PATCH", &mut item.patch),
        ("HEAD", &mut item.head),
        ("OPTIONS", &mut item.options),
        ("TRACE", &mut item.trace),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.as_mut().map(|op| (m, op)))
    .collect()
}

/// The daemon's router with its layers.
pub(crate) fn router(app: Arc<App>) -> Router {
    let limits = &app.config.limits;
    let (router, _) = routes(limits).split_for_parts();
    let concurrency = Arc::new(Semaphore::new(limits.max_concurrent_requests));
    router
        .route_layer(middleware::from_fn_with_state(app.clone(), authorize))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(middleware::from_fn_with_state((app.clone(), concurrency), observe))
        .with_state(app)
}

/// Where uploads are received, inside the data directory; emptied at start.
pub(crate) const UPLOADS_DIR: &str = "uploads";

/// Routes that take a file, or write a backup: the upload timeout.
const UPLOADS: [(&str, &str); 3] =
    [("PUT", "/v1/tenants/{tenant}/datasets/{dataset}"), ("POST", "/v1/plugins"), ("POST", "/v1/backups")];

/// Routes that may wait for work to end (`?wait=`): the request timeout
/// plus the longest wait.
const WAITS: [(&str, &str); 2] = [("GET", routes::JOB), ("GET", routes::BENCHMARK_RUN)];

static REQUEST_IDS: AtomicU64 = AtomicU64::new(0);

/// Request id, span, concurrency cap, metrics.
async fn observe(
    State((app, concurrency)): State<(Arc<App>, Arc<Semaphore>)>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let id = format!("req-{:x}-{}", std::process::id(), REQUEST_IDS.fetch_add(1, Ordering::Relaxed));
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_owned();
    let method = request.method().as_str().to_owned();
    let span = tracing::info_span!("request", id = %id, method = %method, route = %route);
    let mut response = async {
        let Ok(_permit) = concurrency.try_acquire() else {
            app.metrics.refusal("overloaded");
            return Error::Unavailable("the daemon is at its request limit; try again".into())
                .into_response();
        };
        let timeout = if UPLOADS.contains(&(method.as_str(), route.as_str())) {
            app.config.limits.upload_timeout()
        } else if WAITS.contains(&(method.as_str(), route.as_str())) {
            app.config.limits.request_timeout() + Duration::from_secs(kanon_client::MAX_WAIT_SECS)
        } else {
            app.config.limits.request_timeout()
        };
        let Ok(response) = tokio::time::timeout(timeout, next.run(request)).await else {
            return error_response(StatusCode::REQUEST_TIMEOUT, "timeout", "the request took too long");
        };
        tracing::debug!(
            status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "done"
        );
        response
    }
    .instrument(span)
    .await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    app.metrics.request(&route, &method, response.status().as_u16(), started.elapsed());
    response
}

/// Check the caller against the route's [`ACCESS`] entry, and the shape of
/// every path parameter: a malformed id or name is refused before any
/// handler looks it up or any refusal is audited under it.
async fn authorize(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let path = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let roles = match access(request.method().as_str(), &path) {
        Some(Access::Public) => return next.run(request).await,
        Some(Access::Roles(roles)) => roles,
        None => {
            tracing::error!(%path, "a route without an access entry was called; refused");
            app.metrics.refusal("no-access-entry");
            return Error::Forbidden("this route is not open to anyone".into()).into_response();
        }
    };
    let caller = match caller(&app, &request) {
        Ok(Ok(caller)) => caller,
        // Storage failed: not the caller's fault, and not a 401.
        Err(e) => return Error::Store(e).into_response(),
        Ok(Err(refused)) => {
            app.metrics.refusal("token");
            tracing::info!(reason = %refused, "token refused");
            return unauthorized();
        }
    };
    let (mut parts, body) = request.into_parts();
    // Percent-decoded, as the handlers see them.
    let params = RawPathParams::from_request_parts(&mut parts, &()).await;
    let checked = match &params {
        Ok(params) => params.iter().try_for_each(|(name, value)| ids::check_path_param(&path, name, value)),
        Err(rejection) => Err(Error::BadRequest(rejection.body_text())),
    };
    let mut request = Request::from_parts(parts, body);
    if !roles.contains(&caller.role) {
        app.metrics.refusal("role");
        // Only a well-formed name can be a tenant's, to write the refusal to.
        let tenant = params.iter().flatten().find(|(name, _)| *name == "tenant").map(|(_, value)| value);
        let refusal = format!("this route is not open to {} tokens", caller.role);
        return match tenant.filter(|t| crate::tenants::check_name("tenant", t).is_ok()) {
            Some(tenant) => {
                let what = format!("{} {path} as {}", request.method(), caller.role);
                Refusal::new(tenant, what, refusal).audited(&app, &caller)
            }
            None => Error::Forbidden(refusal),
        }
        .into_response();
    }
    if let Err(refused) = checked {
        app.metrics.refusal("path");
        return refused.into_response();
    }
    tracing::debug!(token = %caller.token_id, role = %caller.role, "authorized");
    request.extensions_mut().insert(caller);
    next.run(request).await
}

fn caller(app: &App, request: &Request) -> Result<Result<Caller, auth::TokenRefused>, crate::StoreError> {
    let Some(header) = request.headers().get(axum::http::header::AUTHORIZATION) else {
        return Ok(Err(auth::TokenRefused::Malformed));
    };
    let Some(token) = header.to_str().ok().and_then(|h| h.strip_prefix("Bearer ")) else {
        return Ok(Err(auth::TokenRefused::Malformed));
    };
    let Some(id) = auth::token_id(token) else { return Ok(Err(auth::TokenRefused::Malformed)) };
    // A read snapshot: checking a token never takes the write lock. Nor
    // does it wait for durability: a token reaches its holder only once its
    // issue is durable, and a revocation seen early only refuses sooner.
    let record = match app.store.read_for_change().and_then(|r| r.get(TOKENS, id)) {
        Ok(record) => record,
        Err(e @ (crate::StoreError::Full(_) | crate::StoreError::Failed(_))) => return Err(e),
        Err(_) => return Ok(Err(auth::TokenRefused::Unknown)),
    };
    Ok(auth::check(&app.token_key, token, record, crate::now_ms()))
}

fn unauthorized() -> Response {
    let mut response = error_response(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "a valid token is required: `Authorization: Bearer kanon_…`",
    );
    response.headers_mut().insert(axum::http::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = ErrorBody { error: ErrorDetail { code: code.to_owned(), message: message.to_owned() } };
    (status, axum::Json(body)).into_response()
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            Error::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request"),
            Error::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
            Error::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Error::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too-large"),
            Error::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable"),
            Error::TooMany(_) => (StatusCode::TOO_MANY_REQUESTS, "too-many"),
            Error::Unavailable(_)
            | Error::Store(crate::StoreError::ChainBroken { .. } | crate::StoreError::Failed(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            Error::InsufficientStorage(_) | Error::Store(crate::StoreError::Full(_)) => {
                (StatusCode::INSUFFICIENT_STORAGE, "insufficient-storage")
            }
            Error::Store(_) | Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self, "request failed on the host's side");
            return error_response(status, code, "the daemon failed to serve this request; see its log");
        }
        error_response(status, code, &self.to_string())
    }
}

/// The caller must be the admin of `tenant`. A refusal is written to that
/// tenant's audit log.
pub(crate) fn tenant_admin_of(app: &App, caller: &Caller, tenant: &str) -> Result<(), Error> {
    if caller.role == TenantAdmin && caller.tenant.as_deref() == Some(tenant) {
        return Ok(());
    }
    let message = format!("this token is not a tenant admin of `{tenant}`");
    Err(Refusal::new(tenant, "a route of another tenant", message).audited(app, caller))
}

/// An authenticated caller refused access to a tenant's things: the 403
/// it answers, and the `access.refused` entry on the tenant's chain that
/// goes with it. The one way a handler refuses a known caller on a
/// tenant's behalf, so no such refusal goes unaudited.
pub(crate) struct Refusal<'a> {
    tenant: &'a str,
    /// What was asked for, in the entry (and the key refusals fold by).
    what: String,
    /// Particulars for the entry (an object).
    extra: Option<serde_json::Value>,
    /// The caller's answer.
    message: String,
}

impl<'a> Refusal<'a> {
    pub(crate) fn new(tenant: &'a str, what: impl Into<String>, message: impl Into<String>) -> Self {
        Self { tenant, what: what.into(), extra: None, message: message.into() }
    }

    pub(crate) fn with(mut self, extra: serde_json::Value) -> Self {
        self.extra = Some(extra);
        self
    }

    /// Audit it (see [`audit_refusal`]) and give the answer.
    pub(crate) fn audited(self, app: &App, caller: &Caller) -> Error {
        audit_refusal(app, caller, self.tenant, &self.what, self.extra);
        Error::Forbidden(self.message)
    }
}

/// Write an authenticated caller's refused access to `tenant`'s chain, if
/// there is such a tenant, as `access.refused` with `what` and the
/// particulars in `extra` (an object). Identical refusals (same caller, same
/// `what`) fold into counts ([`crate::audit::Refusals`]), so repeating one
/// cannot grow the chain by an entry each time. Anonymous refusals are only
/// counted in the metrics: anyone could fill a tenant's log with them.
fn audit_refusal(app: &App, caller: &Caller, tenant: &str, what: &str, extra: Option<serde_json::Value>) {
    let exists = app.store.read().and_then(|r| r.get(crate::store::TENANTS, tenant));
    match exists {
        Ok(Some(_)) => {}
        Ok(None) => return,
        Err(e) => {
            tracing::error!(error = %e, "cannot audit a refused access");
            return;
        }
    }
    let mut detail = serde_json::json!({"what": what});
    if let (Some(serde_json::Value::Object(extra)), serde_json::Value::Object(map)) = (extra, &mut detail) {
        map.extend(extra);
    }
    let actor = caller.actor();
    let Some(detail) = app.refusals.note(tenant, &actor, what, detail, crate::now_ms()) else {
        return;
    };
    if let Err(e) = app.store.write(|w| w.audit(tenant, &actor, "access.refused", detail)) {
        tracing::error!(error = %e, "cannot audit a refused access");
    }
}

/// Write the refusals counted and not yet written: of `chain` before its
/// log is read, of every chain when the daemon stops.
pub(crate) fn write_folded_refusals(app: &App, chain: Option<&str>) {
    let folded = app.refusals.take_folded(chain);
    if folded.is_empty() {
        return;
    }
    let written = app.store.write(|w| {
        for refusals in &folded {
            w.audit(&refusals.chain, &refusals.actor, "access.refused", refusals.detail.clone())?;
        }
        Ok::<_, crate::StoreError>(())
    });
    if let Err(e) = written {
        tracing::error!(error = %e, lost = folded.len(), "cannot write counted refusals");
    }
}
