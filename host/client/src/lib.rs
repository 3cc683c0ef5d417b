//! kanon's HTTP contract, client side: the route paths ([`routes`], which
//! the daemon registers its handlers and access table under), the request
//! and response types ([`types`], which the daemon serves), and [`Client`],
//! a blocking client with one method per route, used by the CLI, the demo,
//! the load bench and the tests. Plain HTTP; for a daemon beyond loopback,
//! put TLS in front.
//!
//! The records the daemon keeps (jobs, plugins, approvals, benchmarks, audit
//! chains) are among the types: the daemon stores and serves these same
//! types, and every route's method here is typed by them. A manifest is
//! `kanon_gate`'s, so this crate stays free of the daemon's, the sandbox's
//! and the vault's dependencies.

pub mod error;
pub mod routes;
pub mod types;

use std::time::Duration;

pub use error::ClientError;
use kanon_gate::{PolicyLayer, Release};
use serde::Serialize;
use serde::de::DeserializeOwned;
pub use types::*;

/// What a call gives.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Largest response body read.
const MAX_RESPONSE_BYTES: u64 = 1 << 30;

/// A connection to one daemon with one token.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// A response as it came: status and body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| ClientError::Decode(e.to_string()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Client {
    /// `base` is like `http://127.0.0.1:7878`.
    pub fn new(base: &str, token: Option<String>) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // A connection per call: the daemon refuses some requests before
            // reading their bodies and then closes the connection, which a
            // pooled connection would only find out on its next call.
            .max_idle_connections(0)
            .timeout_connect(Some(Duration::from_secs(10)))
            .build()
            .into();
        Self { base: base.trim_end_matches('/').to_owned(), token, agent }
    }

    /// The same daemon, another token.
    pub fn with_token(&self, token: Option<String>) -> Self {
        Self { token, ..self.clone() }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The token it sends, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    // ------------------------------------------------------------ system

    /// `GET /health` (no token). A degraded daemon answers 503, an
    /// [`ClientError::Api`].
    pub fn health(&self) -> Result<Health> {
        self.get(routes::HEALTH)
    }

    /// `GET /v1/status` (operator).
    pub fn status(&self) -> Result<DaemonStatus> {
        self.get(routes::STATUS)
    }

    /// `GET /v1/whoami`.
    pub fn whoami(&self) -> Result<WhoAmI> {
        self.get(routes::WHOAMI)
    }

    /// `GET /openapi.json` (no token).
    pub fn openapi(&self) -> Result<serde_json::Value> {
        self.get(routes::OPENAPI)
    }

    /// `GET /metrics` (operator): OpenMetrics text.
    pub fn metrics(&self) -> Result<String> {
        self.get_text(routes::METRICS)
    }

    /// `GET /v1/audit` (operator): the host's chain.
    pub fn host_audit(&self) -> Result<AuditExport> {
        self.get(routes::HOST_AUDIT)
    }

    // ------------------------------------------------------------ tenants, enrolment, tokens

    /// `POST /v1/tenants` (operator).
    pub fn create_tenant(&self, new: &NewTenant) -> Result<CreatedTenant> {
        self.send("POST", routes::TENANTS, new)
    }

    /// `GET /v1/tenants` (operator).
    pub fn list_tenants(&self) -> Result<Vec<TenantRecord>> {
        self.get(routes::TENANTS)
    }

    /// `POST /v1/tenants/{tenant}/enrolments` (operator).
    pub fn issue_enrolment(&self, tenant: &str, new: &NewEnrolment) -> Result<EnrolmentCode> {
        self.send("POST", &routes::fill(routes::TENANT_ENROLMENTS, &[tenant]), new)
    }

    /// `POST /v1/enrol` (no token): redeem a one-time code.
    pub fn redeem_enrolment(&self, request: &Enrol) -> Result<IssuedToken> {
        self.with_token(None).send("POST", routes::ENROL, request)
    }

    /// Redeem a one-time enrolment code for a tenant admin's token held by
    /// `name` (no token needed): the token, and this daemon with it.
    pub fn enrol(&self, code: &str, name: &str, ttl_secs: Option<u64>) -> Result<(Client, String)> {
        let issued =
            self.redeem_enrolment(&Enrol { code: code.to_owned(), name: name.to_owned(), ttl_secs })?;
        Ok((self.with_token(Some(issued.token.clone())), issued.token))
    }

    /// `POST /v1/tokens` (operator; a tenant admin its tenant's admins).
    pub fn issue_token(&self, new: &NewToken) -> Result<IssuedToken> {
        self.send("POST", routes::TOKENS, new)
    }

    /// `GET /v1/tokens`.
    pub fn list_tokens(&self) -> Result<Vec<TokenInfo>> {
        self.get(routes::TOKENS)
    }

    /// `DELETE /v1/tokens/{id}`.
    pub fn revoke_token(&self, id: &str) -> Result<TokenInfo> {
        self.delete(&routes::fill(routes::TOKEN, &[id]))
    }

    /// `GET /v1/tenants/{tenant}/policy` (tenant admin).
    pub fn tenant_policy(&self, tenant: &str) -> Result<PolicyLayer> {
        self.get(&routes::fill(routes::TENANT_POLICY, &[tenant]))
    }

    /// `PUT /v1/tenants/{tenant}/policy` (tenant admin): the stored layer.
    pub fn set_tenant_policy(&self, tenant: &str, policy: &PolicyLayer) -> Result<PolicyLayer> {
        self.send("PUT", &routes::fill(routes::TENANT_POLICY, &[tenant]), policy)
    }

    /// `GET /v1/tenants/{tenant}/budget` (tenant admin, operator, or an
    /// analyst with a live approval on the tenant): its privacy budget.
    pub fn tenant_budget(&self, tenant: &str) -> Result<Budget> {
        self.get(&routes::fill(routes::TENANT_BUDGET, &[tenant]))
    }

    /// `GET /v1/benchmarks/{benchmark}/budget` (its vendor, operator): what
    /// a run charges and how many its participants' budgets allow.
    pub fn benchmark_budget(&self, benchmark: &str) -> Result<BenchmarkBudget> {
        self.get(&routes::fill(routes::BENCHMARK_BUDGET, &[benchmark]))
    }

    /// `GET /v1/tenants/{tenant}/audit` (tenant admin): the tenant's chain.
    pub fn tenant_audit(&self, tenant: &str) -> Result<AuditExport> {
        self.get(&routes::fill(routes::TENANT_AUDIT, &[tenant]))
    }

    /// `POST /v1/tenants/{tenant}/grants` (tenant admin).
    pub fn create_grant(&self, tenant: &str, new: &NewGrant) -> Result<SupportGrant> {
        self.send("POST", &routes::fill(routes::TENANT_GRANTS, &[tenant]), new)
    }

    /// `GET /v1/tenants/{tenant}/grants` (tenant admin).
    pub fn list_grants(&self, tenant: &str) -> Result<Vec<SupportGrant>> {
        self.get(&routes::fill(routes::TENANT_GRANTS, &[tenant]))
    }

    /// `DELETE /v1/tenants/{tenant}/grants/{id}` (tenant admin).
    pub fn revoke_grant(&self, tenant: &str, id: &str) -> Result<SupportGrant> {
        self.delete(&routes::fill(routes::TENANT_GRANT, &[tenant, id]))
    }

    // ------------------------------------------------------------ backups

    /// `POST /v1/backups` (operator).
    pub fn create_backup(&self, new: &NewBackup) -> Result<BackupInfo> {
        self.send("POST", routes::BACKUPS, new)
    }

    // ------------------------------------------------------------ datasets

    /// `PUT /v1/tenants/{tenant}/datasets/{dataset}` (tenant admin): the
    /// file streamed from `reader`; the stored version.
    pub fn ingest(
        &self,
        tenant: &str,
        dataset: &str,
        args: &UploadArgs,
        reader: impl std::io::Read + Send + Sync + 'static,
    ) -> Result<DatasetVersionInfo> {
        let path = format!("{}?{}", routes::fill(routes::TENANT_DATASET, &[tenant, dataset]), args.query());
        self.upload("PUT", &path, "application/octet-stream", reader)
    }

    /// `GET /v1/tenants/{tenant}/datasets` (tenant admin): each dataset's
    /// latest version.
    pub fn list_datasets(&self, tenant: &str) -> Result<Vec<DatasetVersionInfo>> {
        self.get(&routes::fill(routes::TENANT_DATASETS, &[tenant]))
    }

    /// `DELETE /v1/tenants/{tenant}/datasets/{dataset}` (tenant admin): the
    /// latest version, now deleted with the others.
    pub fn delete_dataset(&self, tenant: &str, dataset: &str) -> Result<DatasetVersionInfo> {
        self.delete(&routes::fill(routes::TENANT_DATASET, &[tenant, dataset]))
    }

    // ------------------------------------------------------------ plugins

    /// `POST /v1/plugins` (analyst, vendor).
    pub fn upload_plugin(&self, component: &[u8]) -> Result<PluginRecord> {
        self.call("POST", routes::PLUGINS, Some(("application/wasm", component)))
    }

    /// `GET /v1/plugins`.
    pub fn list_plugins(&self) -> Result<Vec<PluginRecord>> {
        self.get(routes::PLUGINS)
    }

    /// `GET /v1/plugins/{hash}`.
    pub fn plugin(&self, hash: &str) -> Result<PluginRecord> {
        self.get(&routes::fill(routes::PLUGIN, &[hash]))
    }

    /// `DELETE /v1/plugins/{hash}`.
    pub fn delete_plugin(&self, hash: &str) -> Result<PluginRecord> {
        self.delete(&routes::fill(routes::PLUGIN, &[hash]))
    }

    // ------------------------------------------------------------ approvals

    /// `POST /v1/tenants/{tenant}/approvals` (tenant admin).
    pub fn grant_approval(&self, tenant: &str, new: &NewApproval) -> Result<Approval> {
        self.send("POST", &routes::fill(routes::TENANT_APPROVALS, &[tenant]), new)
    }

    /// `GET /v1/tenants/{tenant}/approvals` (tenant admin).
    pub fn tenant_approvals(&self, tenant: &str) -> Result<Vec<Approval>> {
        self.get(&routes::fill(routes::TENANT_APPROVALS, &[tenant]))
    }

    /// `DELETE /v1/tenants/{tenant}/approvals/{id}` (tenant admin).
    pub fn revoke_approval(&self, tenant: &str, id: &str) -> Result<Approval> {
        self.delete(&routes::fill(routes::TENANT_APPROVAL, &[tenant, id]))
    }

    /// `GET /v1/approvals` (analyst): those naming the caller.
    pub fn my_approvals(&self) -> Result<Vec<Approval>> {
        self.get(routes::APPROVALS)
    }

    // ------------------------------------------------------------ jobs

    /// `POST /v1/jobs` (analyst): the job, queued.
    pub fn submit_job(&self, request: &SubmitRequest) -> Result<Job> {
        self.send("POST", routes::JOBS, request)
    }

    /// `GET /v1/jobs`.
    pub fn list_jobs(&self) -> Result<Vec<Job>> {
        self.get(routes::JOBS)
    }

    /// `GET /v1/jobs/{id}`.
    pub fn job(&self, id: &str) -> Result<Job> {
        self.get(&routes::fill(routes::JOB, &[id]))
    }

    /// `GET /v1/jobs/{id}?wait=…`: the job as soon as it has ended, or as
    /// it stands once `wait` (whole seconds, at most [`MAX_WAIT_SECS`]) is
    /// over; a long poll, for following a job without polling.
    pub fn wait_job(&self, id: &str, wait: Duration) -> Result<Job> {
        self.get(&format!("{}?{}", routes::fill(routes::JOB, &[id]), WaitArgs::of(wait).query()))
    }

    /// `POST /v1/jobs/{id}/cancel` (no body).
    pub fn cancel_job(&self, id: &str) -> Result<Job> {
        self.call("POST", &routes::fill(routes::JOB_CANCEL, &[id]), None)
    }

    /// `GET /v1/jobs/{id}/results` (its analyst): the released tables.
    pub fn job_results(&self, id: &str) -> Result<Release> {
        self.get(&routes::fill(routes::JOB_RESULTS, &[id]))
    }

    /// `GET /v1/jobs/{id}/results?format=…`: the released tables as text
    /// (`csv` or `json`).
    pub fn job_results_as(&self, id: &str, format: &str) -> Result<String> {
        let path =
            format!("{}?format={}", routes::fill(routes::JOB_RESULTS, &[id]), routes::encode_query(format));
        self.get_text(&path)
    }

    /// `GET /v1/jobs/{id}/log` (tenant admin, or support under a grant).
    pub fn job_log(&self, id: &str) -> Result<JobLog> {
        self.get(&routes::fill(routes::JOB_LOG, &[id]))
    }

    /// `GET /v1/tenants/{tenant}/jobs` (tenant admin, support).
    pub fn tenant_jobs(&self, tenant: &str) -> Result<Vec<Job>> {
        self.get(&routes::fill(routes::TENANT_JOBS, &[tenant]))
    }

    // ------------------------------------------------------------ benchmarks

    /// `POST /v1/benchmarks` (vendor).
    pub fn publish_benchmark(&self, new: &NewBenchmark) -> Result<Benchmark> {
        self.send("POST", routes::BENCHMARKS, new)
    }

    /// `GET /v1/benchmarks`.
    pub fn list_benchmarks(&self) -> Result<Vec<BenchmarkView>> {
        self.get(routes::BENCHMARKS)
    }

    /// `GET /v1/benchmarks/{benchmark}`.
    pub fn benchmark(&self, name: &str) -> Result<BenchmarkView> {
        self.get(&routes::fill(routes::BENCHMARK, &[name]))
    }

    /// `DELETE /v1/benchmarks/{benchmark}` (vendor): retire it.
    pub fn retire_benchmark(&self, name: &str) -> Result<Benchmark> {
        self.delete(&routes::fill(routes::BENCHMARK, &[name]))
    }

    /// `POST /v1/benchmarks/{benchmark}/runs` (vendor, no body): queue a run.
    pub fn run_benchmark(&self, name: &str) -> Result<BenchmarkRun> {
        self.call("POST", &routes::fill(routes::BENCHMARK_RUNS, &[name]), None)
    }

    /// `GET /v1/benchmarks/{benchmark}/runs`.
    pub fn benchmark_runs(&self, name: &str) -> Result<Vec<BenchmarkRun>> {
        self.get(&routes::fill(routes::BENCHMARK_RUNS, &[name]))
    }

    /// `GET /v1/benchmarks/{benchmark}/runs/{run}`.
    pub fn benchmark_run(&self, name: &str, run: &str) -> Result<BenchmarkRun> {
        self.get(&routes::fill(routes::BENCHMARK_RUN, &[name, run]))
    }

    /// `GET /v1/benchmarks/{benchmark}/runs/{run}?wait=…`: the run as soon
    /// as it has ended, or as it stands once `wait` (at most
    /// [`MAX_WAIT_SECS`]) is over, as [`Client::wait_job`].
    pub fn wait_benchmark_run(&self, name: &str, run: &str, wait: Duration) -> Result<BenchmarkRun> {
        let path = routes::fill(routes::BENCHMARK_RUN, &[name, run]);
        self.get(&format!("{path}?{}", WaitArgs::of(wait).query()))
    }

    /// `POST /v1/benchmarks/{benchmark}/runs/{run}/cancel` (no body).
    pub fn cancel_benchmark_run(&self, name: &str, run: &str) -> Result<BenchmarkRun> {
        self.call("POST", &routes::fill(routes::BENCHMARK_RUN_CANCEL, &[name, run]), None)
    }

    /// `GET /v1/benchmarks/{benchmark}/versions`.
    pub fn benchmark_versions(&self, name: &str) -> Result<Vec<VersionSummary>> {
        self.get(&routes::fill(routes::BENCHMARK_VERSIONS, &[name]))
    }

    /// `GET /v1/benchmarks/{benchmark}/versions/{version}` (`latest` or a
    /// number).
    pub fn benchmark_version(&self, name: &str, version: &str) -> Result<BenchmarkVersion> {
        self.get(&routes::fill(routes::BENCHMARK_VERSION, &[name, version]))
    }

    /// The same version as `csv` or `parquet` bytes.
    pub fn benchmark_version_as(&self, name: &str, version: &str, format: &str) -> Result<Vec<u8>> {
        let path = format!(
            "{}?format={}",
            routes::fill(routes::BENCHMARK_VERSION, &[name, version]),
            routes::encode_query(format)
        );
        self.get_bytes(&path)
    }

    /// `GET /v1/tenants/{tenant}/benchmarks` (tenant admin).
    pub fn tenant_benchmarks(&self, tenant: &str) -> Result<Vec<BenchmarkView>> {
        self.get(&routes::fill(routes::TENANT_BENCHMARKS, &[tenant]))
    }

    /// `PUT /v1/tenants/{tenant}/benchmarks/{benchmark}` (tenant admin): opt in.
    pub fn opt_in(&self, tenant: &str, name: &str, request: &OptInRequest) -> Result<OptIn> {
        self.send("PUT", &routes::fill(routes::TENANT_BENCHMARK, &[tenant, name]), request)
    }

    /// `DELETE /v1/tenants/{tenant}/benchmarks/{benchmark}` (tenant admin): leave.
    pub fn opt_out(&self, tenant: &str, name: &str) -> Result<OptIn> {
        self.delete(&routes::fill(routes::TENANT_BENCHMARK, &[tenant, name]))
    }

    /// `GET /v1/tenants/{tenant}/benchmarks/{benchmark}/versions/{version}`
    /// (tenant admin): its own position.
    pub fn own_position(&self, tenant: &str, name: &str, version: &str) -> Result<PositionView> {
        self.get(&routes::fill(routes::TENANT_BENCHMARK_POSITION, &[tenant, name, version]))
    }

    /// `GET /v1/tenants/{tenant}/benchmark-runs/{run}/log` (tenant admin,
    /// support): the plugin's output log of its instance.
    pub fn benchmark_run_log(&self, tenant: &str, run: &str) -> Result<JobLog> {
        self.get(&routes::fill(routes::TENANT_BENCHMARK_RUN_LOG, &[tenant, run]))
    }

    // ------------------------------------------------------------ any route, as is

    /// Send a request as given and return whatever came back: for probing
    /// the API beyond what the typed methods send (tests, the load bench).
    pub fn raw(&self, method: &str, path: &str, body: Option<(&str, &[u8])>) -> Result<Reply> {
        let mut request = ureq::http::Request::builder().method(method).uri(self.url(path));
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some((content_type, _)) = body {
            request = request.header("content-type", content_type);
        }
        let request = request
            .body(body.map(|(_, b)| b.to_vec()).unwrap_or_default())
            .map_err(|e| ClientError::Encode(e.to_string()))?;
        self.finish(self.agent.run(request))
    }

    /// A call whose success is a JSON body; an error status becomes
    /// [`ClientError::Api`].
    pub fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> Result<T> {
        let reply = self.raw(method, path, body)?;
        check(reply)?.json()
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call("GET", path, None)
    }

    pub fn get_text(&self, path: &str) -> Result<String> {
        Ok(check(self.raw("GET", path, None)?)?.text())
    }

    /// A body as bytes (a Parquet file).
    pub fn get_bytes(&self, path: &str) -> Result<Vec<u8>> {
        Ok(check(self.raw("GET", path, None)?)?.body)
    }

    pub fn send<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &B,
    ) -> Result<T> {
        let json = serde_json::to_vec(body).map_err(|e| ClientError::Encode(e.to_string()))?;
        self.call(method, path, Some(("application/json", &json)))
    }

    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call("DELETE", path, None)
    }

    /// Upload a file's bytes, streamed from `reader`.
    pub fn upload<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        reader: impl std::io::Read + Send + Sync + 'static,
    ) -> Result<T> {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(self.url(path))
            .header("content-type", content_type);
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(ureq::SendBody::from_owned_reader(reader))
            .map_err(|e| ClientError::Encode(e.to_string()))?;
        let reply = self.finish(self.agent.run(request))?;
        check(reply)?.json()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn transport(&self, e: ureq::Error) -> ClientError {
        ClientError::Transport { base: self.base.clone(), detail: e.to_string() }
    }

    fn finish(
        &self,
        response: std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Reply> {
        let mut response = response.map_err(|e| self.transport(e))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_vec()
            .map_err(|e| self.transport(e))?;
        Ok(Reply { status, body })
    }
}

/// An error status becomes [`ClientError::Api`] with the daemon's message.
fn check(reply: Reply) -> Result<Reply> {
    if reply.status < 400 {
        return Ok(reply);
    }
    match serde_json::from_slice::<ErrorBody>(&reply.body) {
        Ok(body) => {
            Err(ClientError::Api { status: reply.status, code: body.error.code, message: body.error.message })
        }
        Err(_) => Err(ClientError::Api { status: reply.status, code: "http".into(), message: reply.text() }),
    }
}
