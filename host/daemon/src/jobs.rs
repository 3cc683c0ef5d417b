//! Jobs: submitted by an analyst under an approval, queued in the control
//! database, started by the scheduler within the global and per-tenant
//! limits, run by the runtime against the vault through the gate, and
//! finished in one transaction that stores the release, the owner log and
//! the audit entries together, so no result is ever half-written.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kanon_gate::{Policy, PolicyLayer, Release};
use kanon_runtime::{CancelToken, FailureClass, OwnerLog, RunReport, RunRequest, RunStats};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{Notify, watch};
use utoipa::ToSchema;

use crate::approvals::{self, Approval, JobAsk};
use crate::config::JobLimits;
use crate::error::{Error, Result};
use crate::sealed::{self, Sealed};
use crate::store::{APPROVALS, JOBS, OWNER_LOGS, REPLAYS, RESULTS, RecordRead, TENANTS, Write};
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

/// Figures of a finished run as its analyst sees them: nothing the plugin
/// could set from one person's value. The run time is in whole seconds; the
/// exact figures are in the owner log ([`RunFigures`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobStats {
    #[serde(default)]
    pub run_secs: u64,
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
    /// Why a job failed, as its submitter may know it: `failed` when the
    /// plugin's run failed (its class is in the owner log), or a reason
    /// that no plugin influences (`not-approved`, `data-unavailable`,
    /// `bad-request`, `policy`, `interrupted`).
    pub failure: Option<String>,
    /// The dataset versions the run read.
    pub versions: BTreeMap<String, u64>,
    pub stats: Option<JobStats>,
    /// The earlier job whose stored release answered this identical request:
    /// the same plugin, params, dataset versions and policy get the same
    /// release, never a second run.
    #[serde(default)]
    pub replay_of: Option<String>,
}

/// What the tenant admin (and support staff under a grant) may read of a
/// run: the plugin's output and error text, the exact failure class and the
/// run's figures, any of which a plugin can make carry data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobLog {
    pub job: String,
    pub stdout: String,
    pub stderr: String,
    pub error: Option<String>,
    pub refusals: Vec<String>,
    /// The failure class (`trap`, `timeout`, `memory`, `limit`,
    /// `contract-violation`, `plugin-error`, `host-error`, `cancelled`).
    #[serde(default)]
    pub failure: Option<String>,
    #[serde(default)]
    pub figures: Option<RunFigures>,
}

/// A run's exact figures, for the data owner.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunFigures {
    pub run_ms: u64,
    pub instantiation_us: u64,
    pub contributions: u64,
    pub dropped_contributions: u64,
    pub entities: usize,
    pub bytes_to_host: u64,
    pub peak_memory_bytes: usize,
    pub peak_host_bytes: usize,
}

impl RunFigures {
    pub(crate) fn of(stats: &RunStats) -> Self {
        Self {
            run_ms: stats.duration.as_millis() as u64,
            instantiation_us: stats.instantiation.as_micros() as u64,
            contributions: stats.contributions,
            dropped_contributions: stats.dropped_contributions,
            entities: stats.entities_issued,
            bytes_to_host: stats.bytes_to_host,
            peak_memory_bytes: stats.peak_memory_bytes,
            peak_host_bytes: stats.peak_host_bytes,
        }
    }
}

impl JobLog {
    pub(crate) fn from_owner_log(job: &str, log: OwnerLog, stats: &RunStats) -> Self {
        Self {
            job: job.to_owned(),
            stdout: log.stdout,
            stderr: log.stderr,
            error: log.error,
            refusals: log.refusals,
            failure: log.failure.map(|class| class.code().to_owned()),
            figures: Some(RunFigures::of(stats)),
        }
    }
}

/// What an analyst or vendor learns of a failed run: that it failed, and
/// whether the daemon's stop interrupted it. The class (about three bits a
/// run a plugin could choose) is the data owner's.
pub(crate) fn seen_failure(class: FailureClass) -> &'static str {
    match class {
        // Nobody asked for it: the daemon's shutdown ended it.
        FailureClass::Cancelled => "interrupted",
        _ => "failed",
    }
}

/// Now, to the whole second: the stamps an analyst or vendor sees, so a run's
/// start and end carry no finer timing than its rounded run time.
pub(crate) fn now_to_the_second() -> u64 {
    now_ms() / 1000 * 1000
}

/// A run time in whole seconds, rounded.
pub(crate) fn whole_seconds(elapsed: Duration) -> u64 {
    (elapsed.as_millis() as u64 + 500) / 1000
}

/// Submit a job in `write`: checks the approval and the tenant's queue.
/// `Ok(Err(reason))`: no live approval covers it; the caller audits the
/// refusal. A tenant that does not exist is refused alike, so the answer
/// does not tell an analyst which tenants exist.
pub(crate) fn submit(
    write: &mut Write<'_>,
    limits: &JobLimits,
    actor: &str,
    analyst: &str,
    ask: SubmitRequest,
) -> Result<Result<Job, String>> {
    let tenant: Option<TenantRecord> = write.get(TENANTS, &ask.tenant)?;
    let params = ask.params.clone().unwrap_or_else(|| json!({}));
    let job_ask = JobAsk {
        tenant: &ask.tenant,
        plugin: &ask.plugin,
        analyst,
        datasets: &ask.datasets,
        params: &params,
    };
    if let Some(reason) = approvals::refusal(write, &ask.approval, &job_ask)? {
        return Ok(Err(reason));
    }
    // A covering approval names a tenant that exists.
    let tenant = tenant.ok_or_else(|| Error::Internal(format!("approval {} has no tenant", ask.approval)))?;
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
        return Err(Error::TooMany(format!(
            "tenant `{}` already has {queued} jobs waiting; try again later",
            tenant.name
        )));
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
        submitted_ms: now_to_the_second(),
        started_ms: None,
        finished_ms: None,
        failure: None,
        versions: BTreeMap::new(),
        stats: None,
        replay_of: None,
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
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
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

impl SubmitRequest {
    /// The shapes of its ids and names, checked before anything is looked
    /// up or audited.
    pub(crate) fn check(&self) -> Result<()> {
        crate::tenants::check_name("tenant", &self.tenant)?;
        crate::ids::check_hash(&self.plugin)?;
        crate::ids::check_id("approval", crate::ids::APPROVAL, &self.approval)?;
        crate::ids::check_count("datasets", self.datasets.len(), crate::ids::MAX_DATASETS)?;
        for (name, dataset) in &self.datasets {
            crate::ids::check_manifest_name("dataset", name)?;
            crate::tenants::check_name("dataset", dataset)?;
        }
        Ok(())
    }
}

/// Cancel a job: a queued one at once; a running one is marked here, and
/// the caller interrupts its run ([`Scheduler::cancel`]), whose result is
/// then discarded.
pub(crate) fn cancel(write: &mut Write<'_>, actor: &str, id: &str) -> Result<Job> {
    let mut job: Job = write.get(JOBS, id)?.ok_or_else(|| Error::NotFound(format!("job `{id}`")))?;
    match job.state {
        JobState::Queued => {
            write.dequeue(job.seq)?;
            job.state = JobState::Cancelled;
            job.finished_ms = Some(now_to_the_second());
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
        // A job of a chain that does not verify stays as it is: its entry
        // could not be written.
        let running: Vec<Job> = w
            .all::<Job>(JOBS)?
            .into_iter()
            .filter(|j| j.state == JobState::Running && !w.chain_broken(&j.tenant))
            .collect();
        for mut job in running.iter().cloned() {
            job.state = JobState::Failed;
            job.failure = Some("interrupted".into());
            job.finished_ms = Some(now_to_the_second());
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
    /// Jobs and benchmark runs being started or run, so one is never started
    /// twice, each with what interrupts it.
    runs: HashMap<String, CancelToken>,
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
                // Audit entries a storage failure held up, once it works again.
                crate::pending::reconcile_logged(&app);
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

    /// Interrupt the run of job or benchmark run `id`, if it is running.
    pub fn cancel(&self, id: &str) {
        if let Some(cancel) = self.running.lock().expect("lock").runs.get(id) {
            cancel.cancel();
        }
    }

    /// Interrupt every run: the end of a shutdown's grace.
    pub fn cancel_all(&self) {
        for cancel in self.running.lock().expect("lock").runs.values() {
            cancel.cancel();
        }
    }

    /// Stop starting runs, and wait until none runs or `grace` passes.
    /// Whether all finished.
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

    /// Take a slot for `job` if the limits allow; what interrupts its run.
    fn claim(&self, job: &Job) -> Option<CancelToken> {
        let mut running = self.running.lock().expect("lock");
        let tenant = running.per_tenant.get(&job.tenant).copied().unwrap_or(0);
        if tenant >= self.limits.per_tenant {
            return None;
        }
        let cancel = running.claim(&job.id, self.limits.concurrent)?;
        *running.per_tenant.entry(job.tenant.clone()).or_default() += 1;
        Some(cancel)
    }

    /// Take a slot for benchmark run `id`, if the global limit allows. A
    /// benchmark run reads many tenants; it counts against no tenant's limit.
    pub fn claim_slot(&self, id: &str) -> Option<CancelToken> {
        if self.stopping.load(Ordering::SeqCst) {
            return None;
        }
        self.running.lock().expect("lock").claim(id, self.limits.concurrent)
    }

    pub fn release_slot(&self, id: &str) {
        self.running.lock().expect("lock").release(id);
    }

    fn release(&self, job: &Job) {
        let mut running = self.running.lock().expect("lock");
        running.release(&job.id);
        if let Some(n) = running.per_tenant.get_mut(&job.tenant) {
            *n -= 1;
            if *n == 0 {
                running.per_tenant.remove(&job.tenant);
            }
        }
    }
}

impl Running {
    fn claim(&mut self, id: &str, limit: usize) -> Option<CancelToken> {
        if self.total >= limit || self.runs.contains_key(id) {
            return None;
        }
        self.total += 1;
        let cancel = CancelToken::new();
        self.runs.insert(id.to_owned(), cancel.clone());
        Some(cancel)
    }

    fn release(&mut self, id: &str) {
        if self.runs.remove(id).is_some() {
            self.total -= 1;
        }
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
        let Some(cancel) = app.scheduler.claim(&job) else { continue };
        match start(app, &job.id) {
            Ok(Some(job)) => {
                let app = app.clone();
                tokio::task::spawn_blocking(move || run(&app, job, cancel));
            }
            Ok(None) => {
                app.scheduler.release(&job);
                app.metrics.job_finished("refused", None);
            }
            Err(e) => {
                // This job stays queued; the ones behind it may start.
                app.scheduler.release(&job);
                tracing::error!(job = %job.id, error = %e, "cannot start a job");
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
            job.finished_ms = Some(now_to_the_second());
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
        job.started_ms = Some(now_to_the_second());
        w.put(JOBS, id, &job)?;
        w.audit(&job.tenant, "daemon", "job.start", json!({"job": id}))?;
        Ok(Some(job))
    })
}

/// Run a started job to its end. Blocking: on a blocking thread.
fn run(app: &Arc<App>, job: Job, cancel: CancelToken) {
    let started = Instant::now();
    let outcome = execute(app, &job, cancel);
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
    Ran {
        report: Box<RunReport>,
        versions: BTreeMap<String, u64>,
        request: String,
    },
    /// An identical request was answered before: its release, not a run.
    Replayed {
        of: String,
        release: Box<Release>,
        versions: BTreeMap<String, u64>,
    },
    /// The run could not be set up; the detail is for the tenant only.
    NotRun {
        code: &'static str,
        detail: String,
    },
}

fn execute(app: &App, job: &Job, cancel: CancelToken) -> Outcome {
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
    let read = match app.store.read() {
        Ok(read) => read,
        Err(e) => return not_run("host-error", e.to_string()),
    };
    let tenant_policy = match read.get::<TenantRecord>(TENANTS, &job.tenant) {
        Ok(Some(tenant)) => tenant.policy,
        Ok(None) => return not_run("data-unavailable", format!("tenant {} is gone", job.tenant)),
        Err(e) => return not_run("host-error", e.to_string()),
    };
    // The approval was checked at start; what it asks of the gate holds too.
    let approval_policy = match read.get::<Approval>(APPROVALS, &job.approval) {
        Ok(approval) => approval.map(|a| a.policy).unwrap_or_default(),
        Err(e) => return not_run("host-error", e.to_string()),
    };
    let policy = match Policy::floor(&app.config.floor)
        .and_then(|floor| Policy::for_run(&floor, [&tenant_policy, &approval_policy], &job.policy))
    {
        Ok(policy) => policy,
        Err(e) => return not_run("policy", e.to_string()),
    };
    let request = request_key(job, &versions, &policy);
    match replayed(&read, &request) {
        Ok(Some((of, release))) => return Outcome::Replayed { of, release: Box::new(release), versions },
        Ok(None) => {}
        Err(e) => return not_run("host-error", e.to_string()),
    }
    drop(read);
    let secret = match app.vault.pseudonym_secret(&job.tenant) {
        Ok(secret) => secret,
        Err(e) => return not_run("host-error", e.to_string()),
    };
    let run = RunRequest {
        run_id: job.id.clone(),
        datasets,
        params: job.params.to_string(),
        policy,
        tenant_secret: secret,
        cancel,
    };
    match app.runtime.run(&plugin, run) {
        Ok(report) => Outcome::Ran { report: Box::new(report), versions, request },
        Err(e) => not_run("bad-request", e.to_string()),
    }
}

/// What makes two jobs the same request: the tenant, the plugin, the params,
/// the dataset versions read and the policy the release answers to. The hash
/// keys the stored releases.
fn request_key(job: &Job, versions: &BTreeMap<String, u64>, policy: &Policy) -> String {
    let mut hasher = blake3::Hasher::new_derive_key("kanon job request v1");
    let datasets: Vec<(&String, &String, u64)> = job
        .datasets
        .iter()
        .map(|(name, dataset)| (name, dataset, versions.get(name).copied().unwrap_or(0)))
        .collect();
    // JSON of maps with sorted keys: one text per request.
    let parts = json!({
        "tenant": job.tenant,
        "plugin": job.plugin,
        "params": job.params,
        "datasets": datasets,
        "policy": policy,
    });
    hasher.update(parts.to_string().as_bytes());
    hasher.finalize().to_hex().to_string()
}

/// The job whose release answers `request`, with that release, if any.
fn replayed(read: &impl RecordRead, request: &str) -> Result<Option<(String, Release)>> {
    let Some(of) = read.get::<String>(REPLAYS, request)? else { return Ok(None) };
    Ok(read.get::<Release>(RESULTS, &of)?.map(|release| (of, release)))
}

/// Record the end of a run: job, release, owner log and audit entries in
/// one transaction.
fn finish(app: &App, job: &Job, outcome: Outcome, elapsed: Duration) -> Result<()> {
    let (state, failure, release, log, versions, refusals, request) = match outcome {
        Outcome::Ran { report, versions, request } => {
            let refusals = report.owner_log.refusals.len();
            let log = JobLog::from_owner_log(&job.id, report.owner_log.clone(), &report.stats);
            match &report.outcome {
                Ok(release) => {
                    let release = (release.clone(), report.record(), None);
                    (JobState::Succeeded, None, Some(release), log, versions, refusals, Some(request))
                }
                Err(failure) => {
                    let seen = seen_failure(failure.class).to_owned();
                    (JobState::Failed, Some(seen), None, log, versions, refusals, None)
                }
            }
        }
        Outcome::Replayed { of, release, versions } => {
            let log = JobLog { job: job.id.clone(), ..JobLog::default() };
            (JobState::Succeeded, None, Some((*release, None, Some(of))), log, versions, 0, None)
        }
        Outcome::NotRun { code, detail } => {
            let log = JobLog { job: job.id.clone(), error: Some(detail), ..JobLog::default() };
            (JobState::Failed, Some(code.to_owned()), None, log, BTreeMap::new(), 0, None)
        }
    };
    let sealed = seal_log(app, &job.tenant, &log);
    let recorded = app.store.write(|w| {
        let mut current: Job = w.get(JOBS, &job.id)?.unwrap_or_else(|| job.clone());
        current.finished_ms = Some(now_to_the_second());
        current.versions = versions;
        w.put(OWNER_LOGS, &job.id, &sealed)?;
        if current.cancel_requested {
            current.state = JobState::Cancelled;
            w.put(JOBS, &job.id, &current)?;
            w.audit(&job.tenant, "daemon", "job.finish", json!({"job": job.id, "outcome": "cancelled"}))?;
            return Ok::<_, Error>((JobState::Cancelled, None));
        }
        let mut release = release.clone();
        // Two identical requests that ran side by side: the first to finish
        // answers both, so one request never has two releases.
        if let (Some(request), Some((_, _, replay_of))) = (&request, &mut release) {
            match replayed(w, request)? {
                Some((of, earlier)) => {
                    release = Some((earlier, None, Some(of)));
                }
                None => {
                    *replay_of = None;
                    w.put(REPLAYS, request, &job.id)?;
                }
            }
        }
        current.state = state;
        current.failure = failure.clone();
        current.stats = release.as_ref().map(|(release, _, _)| JobStats {
            run_secs: whole_seconds(elapsed),
            cells: release.tables.iter().map(|t| t.cells.len()).sum(),
            suppressed_cells: release.tables.iter().map(|t| t.suppressed_cells).sum(),
        });
        current.replay_of = release.as_ref().and_then(|(_, _, of)| of.clone());
        w.put(JOBS, &job.id, &current)?;
        w.audit(
            &job.tenant,
            "daemon",
            "job.finish",
            json!({"job": job.id, "outcome": state, "failure": failure, "versions": current.versions,
                   "replay_of": current.replay_of}),
        )?;
        if let Some((release, record, _)) = &release {
            w.put(RESULTS, &job.id, release)?;
            // A replay repeats a release already on the chain: its
            // `job.finish` names the job it came from.
            if let Some(record) = record {
                w.audit(&job.tenant, "daemon", "release", json!({"job": job.id, "record": record}))?;
            }
        }
        Ok((state, current.stats.as_ref().map(|s| s.suppressed_cells)))
    })?;
    app.metrics.job_finished(recorded.0.name(), Some((elapsed, recorded.1, refusals)));
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
