//! Jobs: submitted by an analyst under an approval, queued in the control
//! database, started by the scheduler within the global and per-tenant
//! limits, run by the runtime against the vault through the gate, and
//! finished in one transaction that stores the release, the owner log and
//! the audit entries together, so no result is ever half-written.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kanon_gate::{Policy, PolicyLayer, Release};
use kanon_runtime::{OwnerLog, RunReport, RunRequest};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{Notify, watch};
use utoipa::ToSchema;

use crate::approvals::{self, JobAsk};
use crate::config::JobLimits;
use crate::error::{Error, Result};
use crate::sealed::{self, Sealed};
use crate::store::{JOBS, OWNER_LOGS, RESULTS, TENANTS, Write};
use crate::tenants::TenantRecord;
use crate::{App, ControlStore, StoreError, now_ms};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    }

    pub fn name(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

/// Figures of a finished run; nothing in them depends on single values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobStats {
    pub run_ms: u64,
    pub contributions: u64,
    pub cells: usize,
    pub suppressed_cells: usize,
}

/// A job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub id: String,
    /// Submission order.
    pub seq: u64,
    pub tenant: String,
    /// The analyst (token name) who submitted it.
    pub analyst: String,
    pub plugin: String,
    pub approval: String,
    /// The manifest's dataset names to the tenant's datasets.
    pub datasets: BTreeMap<String, String>,
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    /// What the analyst asked of the gate; it can only tighten.
    #[schema(value_type = Object)]
    pub policy: PolicyLayer,
    pub state: JobState,
    /// Set when a cancel arrived while the job ran: its result is discarded.
    pub cancel_requested: bool,
    pub submitted_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// The failure class of a failed job (`trap`, `timeout`, ...,
    /// `not-approved`, `interrupted`): all its submitter learns.
    pub failure: Option<String>,
    /// The dataset versions the run read.
    pub versions: BTreeMap<String, u64>,
    pub stats: Option<JobStats>,
}

/// What the tenant admin (and support staff under a grant) may read of a
/// run: the plugin's output and error text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobLog {
    pub job: String,
    pub stdout: String,
    pub stderr: String,
    pub error: Option<String>,
    pub refusals: Vec<String>,
}

impl JobLog {
    pub(crate) fn from_owner_log(job: &str, log: OwnerLog) -> Self {
        Self {
            job: job.to_owned(),
            stdout: log.stdout,
            stderr: log.stderr,
            error: log.error,
            refusals: log.refusals,
        }
    }
}

/// Submit a job in `write`: checks the approval and the tenant's queue.
/// `Ok(Err(..))` is a refusal whose audit entry must still commit.
pub(crate) fn submit(
    write: &mut Write<'_>,
    limits: &JobLimits,
    actor: &str,
    analyst: &str,
    ask: SubmitRequest,
) -> Result<Result<Job>> {
    let tenant: TenantRecord = write
        .get(TENANTS, &ask.tenant)?
        .ok_or_else(|| Error::NotFound(format!("tenant `{}`", ask.tenant)))?;
    let params = ask.params.clone().unwrap_or_else(|| json!({}));
    let job_ask = JobAsk {
        tenant: &tenant.name,
        plugin: &ask.plugin,
        analyst,
        datasets: &ask.datasets,
        params: &params,
    };
    if let Some(reason) = approvals::refusal(write, &ask.approval, &job_ask)? {
        write.audit(
            &tenant.name,
            actor,
            "access.refused",
            json!({"what": "job.submit", "plugin": ask.plugin, "approval": ask.approval, "reason": reason}),
        )?;
        return Ok(Err(Error::Forbidden(format!("no live approval covers this job: {reason}"))));
    }
    let plugin: Option<crate::registry::PluginRecord> = write.get(crate::store::PLUGINS, &ask.plugin)?;
    let plugin = plugin.ok_or_else(|| Error::NotFound(format!("plugin `{}`", ask.plugin)))?;
    plugin.manifest.check_params(&params.to_string()).map_err(|e| Error::BadRequest(e.to_string()))?;
    let mut queued = 0;
    for id in write.queue()? {
        if write.get::<Job>(JOBS, &id)?.is_some_and(|j| j.tenant == tenant.name) {
            queued += 1;
        }
    }
    if queued >= limits.queued_per_tenant {
        return Ok(Err(Error::TooMany(format!(
            "tenant `{}` already has {queued} jobs waiting; try again later",
            tenant.name
        ))));
    }
    let seq = write.next_sequence("job-seq")?;
    let job = Job {
        id: crate::new_id("job"),
        seq,
        tenant: tenant.name.clone(),
        analyst: analyst.to_owned(),
        plugin: ask.plugin,
        approval: ask.approval,
        datasets: ask.datasets,
        params,
        policy: ask.policy.unwrap_or_default(),
        state: JobState::Queued,
        cancel_requested: false,
        submitted_ms: now_ms(),
        started_ms: None,
        finished_ms: None,
        failure: None,
        versions: BTreeMap::new(),
        stats: None,
    };
    write.put(JOBS, &job.id, &job)?;
    write.enqueue(seq, &job.id)?;
    write.audit(
        &job.tenant,
        actor,
        "job.submit",
        json!({"job": job.id, "plugin": job.plugin, "approval": job.approval, "datasets": job.datasets}),
    )?;
    Ok(Ok(job))
}

/// A job as submitted.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    pub tenant: String,
    pub plugin: String,
    pub approval: String,
    /// The manifest's dataset names to the tenant's datasets.
    pub datasets: BTreeMap<String, String>,
    /// The parameters; must equal the approval's. Default `{}`.
    #[schema(value_type = Option<Object>)]
    pub params: Option<serde_json::Value>,
    /// A stricter policy than the tenant's, if the analyst wants one.
    #[schema(value_type = Option<Object>)]
    pub policy: Option<PolicyLayer>,
}

/// Cancel a job: a queued one at once, a running one when its run returns
/// (its result is then discarded).
pub(crate) fn cancel(write: &mut Write<'_>, actor: &str, id: &str) -> Result<Job> {
    let mut job: Job = write.get(JOBS, id)?.ok_or_else(|| Error::NotFound(format!("job `{id}`")))?;
    match job.state {
        JobState::Queued => {
            write.dequeue(job.seq)?;
            job.state = JobState::Cancelled;
            job.finished_ms = Some(now_ms());
        }
        JobState::Running => job.cancel_requested = true,
        _ => return Err(Error::Conflict(format!("job `{id}` has already finished ({})", job.state.name()))),
    }
    write.put(JOBS, id, &job)?;
    write.audit(&job.tenant, actor, "job.cancel", json!({"job": id, "state": job.state}))?;
    Ok(job)
}

/// At start: jobs a stopped daemon left running are marked failed
/// (`interrupted`); queued jobs stay queued and run. Returns how many.
pub(crate) fn recover(store: &ControlStore) -> Result<usize, StoreError> {
    store.write(|w| {
        let running: Vec<Job> =
            w.all::<Job>(JOBS)?.into_iter().filter(|j| j.state == JobState::Running).collect();
        for mut job in running.iter().cloned() {
            job.state = JobState::Failed;
            job.failure = Some("interrupted".into());
            job.finished_ms = Some(now_ms());
            w.put(JOBS, &job.id, &job)?;
            w.audit(
                &job.tenant,
                "daemon",
                "job.finish",
                json!({"job": job.id, "outcome": "failed", "failure": "interrupted"}),
            )?;
        }
        Ok(running.len())
    })
}

/// Starts queued jobs within the limits and tracks the running ones.
#[derive(Debug)]
pub(crate) struct Scheduler {
    limits: JobLimits,
    wake: Notify,
    running: Mutex<Running>,
    stopping: AtomicBool,
}

#[derive(Debug, Default)]
struct Running {
    total: usize,
    per_tenant: HashMap<String, usize>,
    /// Jobs being started or run, so one is never started twice.
    jobs: HashSet<String>,
}

impl Scheduler {
    pub fn new(limits: JobLimits) -> Self {
        Self { limits, wake: Notify::new(), running: Mutex::default(), stopping: AtomicBool::new(false) }
    }

    /// Look at the queue again (after a submit or a finish).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Jobs running now.
    pub fn running(&self) -> usize {
        self.running.lock().expect("lock").total
    }

    /// The scheduling loop, until `stopped` turns true.
    pub fn spawn(app: Arc<App>, mut stopped: watch::Receiver<bool>) {
        tokio::spawn(async move {
            loop {
                // Checked before every dispatch: a wake-up may win the
                // select below over the stop signal.
                if *stopped.borrow() {
                    break;
                }
                if let Err(e) = dispatch(&app) {
                    tracing::error!(error = %e, "the scheduler could not read the queue");
                }
                tokio::select! {
                    _ = app.scheduler.wake.notified() => {}
                    _ = stopped.wait_for(|stop| *stop) => break,
                    // A safety net: a missed wake-up costs a second, not a stuck queue.
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            app.scheduler.stopping.store(true, Ordering::SeqCst);
        });
    }

    /// Wait until no job runs, or `grace` passes. Whether all finished.
    pub async fn wait_idle(&self, grace: Duration) -> bool {
        self.stopping.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + grace;
        while self.running() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Take a slot for `job` if the limits allow.
    fn claim(&self, job: &Job) -> bool {
        let mut running = self.running.lock().expect("lock");
        let tenant = running.per_tenant.get(&job.tenant).copied().unwrap_or(0);
        if running.total >= self.limits.concurrent
            || tenant >= self.limits.per_tenant
            || running.jobs.contains(&job.id)
        {
            return false;
        }
        running.total += 1;
        *running.per_tenant.entry(job.tenant.clone()).or_default() += 1;
        running.jobs.insert(job.id.clone());
        true
    }

    /// Take a slot for a benchmark run, if the global limit allows. A
    /// benchmark run reads many tenants; it counts against no tenant's limit.
    pub fn claim_slot(&self) -> bool {
        let mut running = self.running.lock().expect("lock");
        if running.total >= self.limits.concurrent || self.stopping.load(Ordering::SeqCst) {
            return false;
        }
        running.total += 1;
        true
    }

    pub fn release_slot(&self) {
        self.running.lock().expect("lock").total -= 1;
    }

    fn release(&self, job: &Job) {
        let mut running = self.running.lock().expect("lock");
        running.total -= 1;
        if let Some(n) = running.per_tenant.get_mut(&job.tenant) {
            *n -= 1;
            if *n == 0 {
                running.per_tenant.remove(&job.tenant);
            }
        }
        running.jobs.remove(&job.id);
    }
}

/// Start what the limits allow, oldest first.
fn dispatch(app: &Arc<App>) -> Result<()> {
    if app.scheduler.stopping.load(Ordering::SeqCst) {
        return Ok(());
    }
    let read = app.store.read()?;
    for id in read.queue()? {
        if app.scheduler.running() >= app.scheduler.limits.concurrent {
            break;
        }
        let Some(job) = read.get::<Job>(JOBS, &id)? else { continue };
        if !app.scheduler.claim(&job) {
            continue;
        }
        match start(app, &job.id) {
            Ok(Some(job)) => {
                let app = app.clone();
                tokio::task::spawn_blocking(move || run(&app, job));
            }
            Ok(None) => {
                app.scheduler.release(&job);
                app.metrics.job_finished("refused", None);
            }
            Err(e) => {
                app.scheduler.release(&job);
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Mark a queued job running, after checking its approval once more.
/// `None`: the job did not start (cancelled meanwhile, or no longer approved).
fn start(app: &App, id: &str) -> Result<Option<Job>> {
    app.store.write(|w| {
        let Some(mut job) = w.get::<Job>(JOBS, id)? else { return Ok(None) };
        if job.state != JobState::Queued {
            return Ok(None);
        }
        w.dequeue(job.seq)?;
        let ask = JobAsk {
            tenant: &job.tenant,
            plugin: &job.plugin,
            analyst: &job.analyst,
            datasets: &job.datasets,
            params: &job.params,
        };
        if let Some(reason) = approvals::refusal(w, &job.approval, &ask)? {
            job.state = JobState::Failed;
            job.failure = Some("not-approved".into());
            job.finished_ms = Some(now_ms());
            w.put(JOBS, id, &job)?;
            w.audit(
                &job.tenant,
                "daemon",
                "access.refused",
                json!({"what": "job.start", "job": id, "reason": reason}),
            )?;
            return Ok(None);
        }
        job.state = JobState::Running;
        job.started_ms = Some(now_ms());
        w.put(JOBS, id, &job)?;
        w.audit(&job.tenant, "daemon", "job.start", json!({"job": id}))?;
        Ok(Some(job))
    })
}

/// Run a started job to its end. Blocking: on a blocking thread.
fn run(app: &Arc<App>, job: Job) {
    let started = Instant::now();
    let outcome = execute(app, &job);
    let elapsed = started.elapsed();
    if let Err(e) = finish(app, &job, outcome, elapsed) {
        // The job stays `running` in the database; the next start marks it
        // interrupted.
        tracing::error!(job = %job.id, error = %e, "cannot record a finished job");
    }
    app.scheduler.release(&job);
    app.scheduler.wake();
}

/// What a run came to, before it is recorded.
enum Outcome {
    Ran(Box<RunReport>, BTreeMap<String, u64>),
    /// The run could not be set up; the detail is for the tenant only.
    NotRun {
        code: &'static str,
        detail: String,
    },
}

fn execute(app: &App, job: &Job) -> Outcome {
    let not_run = |code, detail: String| Outcome::NotRun { code, detail };
    let plugin = match app.plugins.get(&app.runtime, &job.plugin) {
        Ok(plugin) => plugin,
        Err(e) => return not_run("host-error", e.to_string()),
    };
    let mut datasets = BTreeMap::new();
    let mut versions = BTreeMap::new();
    for (name, dataset) in &job.datasets {
        match app.vault.dataset(&job.tenant, dataset, None) {
            Ok(version) => {
                versions.insert(name.clone(), version.version());
                datasets.insert(name.clone(), version);
            }
            Err(e) => return not_run("data-unavailable", e.to_string()),
        }
    }
    let tenant_policy = match app.store.read().and_then(|r| r.get::<TenantRecord>(TENANTS, &job.tenant)) {
        Ok(Some(tenant)) => tenant.policy,
        Ok(None) => return not_run("data-unavailable", format!("tenant {} is gone", job.tenant)),
        Err(e) => return not_run("host-error", e.to_string()),
    };
    let policy = match Policy::floor(&app.config.floor)
        .and_then(|floor| Policy::for_run(&floor, [&tenant_policy], &job.policy))
    {
        Ok(policy) => policy,
        Err(e) => return not_run("policy", e.to_string()),
    };
    let secret = match app.vault.pseudonym_secret(&job.tenant) {
        Ok(secret) => secret,
        Err(e) => return not_run("host-error", e.to_string()),
    };
    let request = RunRequest {
        run_id: job.id.clone(),
        datasets,
        params: job.params.to_string(),
        policy,
        tenant_secret: secret,
    };
    match app.runtime.run(&plugin, request) {
        Ok(report) => Outcome::Ran(Box::new(report), versions),
        Err(e) => not_run("bad-request", e.to_string()),
    }
}

/// Record the end of a run: job, release, owner log and audit entries in
/// one transaction.
fn finish(app: &App, job: &Job, outcome: Outcome, elapsed: Duration) -> Result<()> {
    let (state, failure, stats, release, log, versions, refusals) = match outcome {
        Outcome::Ran(report, versions) => {
            let refusals = report.owner_log.refusals.len();
            let log = JobLog::from_owner_log(&job.id, report.owner_log.clone());
            match &report.outcome {
                Ok(release) => {
                    let stats = JobStats {
                        run_ms: elapsed.as_millis() as u64,
                        contributions: report.stats.contributions,
                        cells: release.tables.iter().map(|t| t.cells.len()).sum(),
                        suppressed_cells: release.tables.iter().map(|t| t.suppressed_cells).sum(),
                    };
                    let record = report.record();
                    (
                        JobState::Succeeded,
                        None,
                        Some(stats),
                        Some((release.clone(), record)),
                        log,
                        versions,
                        refusals,
                    )
                }
                Err(failure) => (
                    JobState::Failed,
                    Some(failure.class.code().to_owned()),
                    None,
                    None,
                    log,
                    versions,
                    refusals,
                ),
            }
        }
        Outcome::NotRun { code, detail } => {
            let log = JobLog { job: job.id.clone(), error: Some(detail), ..JobLog::default() };
            (JobState::Failed, Some(code.to_owned()), None, None, log, BTreeMap::new(), 0)
        }
    };
    let sealed = seal_log(app, &job.tenant, &log);
    let recorded = app.store.write(|w| {
        let mut current: Job = w.get(JOBS, &job.id)?.unwrap_or_else(|| job.clone());
        current.finished_ms = Some(now_ms());
        current.versions = versions;
        w.put(OWNER_LOGS, &job.id, &sealed)?;
        if current.cancel_requested {
            current.state = JobState::Cancelled;
            w.put(JOBS, &job.id, &current)?;
            w.audit(&job.tenant, "daemon", "job.finish", json!({"job": job.id, "outcome": "cancelled"}))?;
            return Ok::<_, Error>(JobState::Cancelled);
        }
        current.state = state;
        current.failure = failure.clone();
        current.stats = stats.clone();
        w.put(JOBS, &job.id, &current)?;
        w.audit(
            &job.tenant,
            "daemon",
            "job.finish",
            json!({"job": job.id, "outcome": state, "failure": failure, "versions": current.versions}),
        )?;
        if let Some((release, record)) = &release {
            w.put(RESULTS, &job.id, release)?;
            w.audit(&job.tenant, "daemon", "release", json!({"job": job.id, "record": record}))?;
        }
        Ok(state)
    })?;
    let suppressed = stats.as_ref().map(|s| s.suppressed_cells);
    app.metrics.job_finished(recorded.name(), Some((elapsed, suppressed, refusals)));
    Ok(())
}

/// The release of a succeeded job.
pub(crate) fn result(app: &App, id: &str) -> Result<Release> {
    app.store.read()?.get(RESULTS, id)?.ok_or_else(|| Error::NotFound(format!("results of job `{id}`")))
}

fn log_label(job: &str) -> String {
    format!("owner-log:{job}")
}

fn seal_log(app: &App, tenant: &str, log: &JobLog) -> Sealed {
    sealed::seal(app, tenant, &log_label(&log.job), log)
}

/// The owner log of a finished job, opened with the tenant's data key.
pub(crate) fn owner_log(app: &App, tenant: &str, id: &str) -> Result<JobLog> {
    let stored: Sealed = app
        .store
        .read()?
        .get(OWNER_LOGS, id)?
        .ok_or_else(|| Error::NotFound(format!("log of job `{id}`")))?;
    JobLog::open(app, tenant, &log_label(id), id, &stored)
}

impl JobLog {
    /// Open the sealed log of run `id` (a job or a benchmark run).
    pub(crate) fn open(app: &App, tenant: &str, label: &str, id: &str, stored: &Sealed) -> Result<JobLog> {
        Ok(sealed::open(app, tenant, label, stored)?.unwrap_or_else(|| JobLog {
            job: id.to_owned(),
            error: Some("(the log could not be kept)".into()),
            ..JobLog::default()
        }))
    }
}
