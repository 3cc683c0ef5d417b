//! Jobs: submitted by an analyst under an approval, queued, started and
//! cancelled through the one work lifecycle ([`crate::work`]) within the
//! global and per-tenant limits, run by the runtime against the vault
//! through the gate, and finished in one transaction that stores the
//! release, the owner log and the audit entries together, so no result is
//! ever half-written.

use std::collections::BTreeMap;
use std::time::Duration;

use kanon_gate::{Gate, Policy, PolicyLayer, Release, Scope};
use kanon_runtime::{CancelToken, FailureClass, OwnerLog, RunReport, RunRequest, RunStats};
use serde_json::json;

use crate::approvals::{self, Approval, JobAsk};
use crate::budget::{self, ChargeState, Standing, Terms};
use crate::config::JobLimits;
use crate::error::{Error, Result};
use crate::sealed::{self, Sealed};
use crate::store::{
    APPROVALS, Committed, JOBS, OWNER_LOGS, QUEUED_JOBS_OF_TENANT, REPLAYS, RESULTS, RecordRead, TENANTS,
    Table, Write,
};
use crate::tenants::TenantRecord;
use crate::work::{self, SlotGroup, Work};
use crate::{App, now_ms};

// The records are the API's: the client reads these same types, and the
// control store keeps them as their JSON.
pub use kanon_client::types::{Job, JobLog, JobState, JobStats, RunFigures, SubmitRequest};

/// A run's exact figures, from the runtime's.
pub(crate) fn run_figures(stats: &RunStats) -> RunFigures {
    RunFigures {
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

/// The owner log of run `job` (a job or a benchmark run), from the runtime's.
pub(crate) fn log_of_run(job: &str, log: OwnerLog, stats: &RunStats) -> JobLog {
    JobLog {
        job: job.to_owned(),
        stdout: log.stdout,
        stderr: log.stderr,
        error: log.error,
        refusals: log.refusals,
        failure: log.failure.map(|class| class.code().to_owned()),
        figures: Some(run_figures(stats)),
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

/// Submit a job in `write`: checks the approval, the tenant's queue and,
/// for a differentially private job, the tenant's privacy budget (a 409
/// saying what is left; the run charges it, and checks again, before it
/// reads anything). `Ok(Err(Refused::NotApproved(reason)))`: no live
/// approval covers it, and the caller audits the refusal; a tenant that
/// does not exist is refused alike, so the answer does not tell an
/// analyst which tenants exist. `Ok(Err(Refused::Budget(why)))`: the
/// budget cannot cover it, audited here (`privacy.refused`).
pub(crate) fn submit(
    write: &mut Write<'_>,
    floor: &PolicyLayer,
    limits: &JobLimits,
    actor: &str,
    analyst: &str,
    ask: SubmitRequest,
) -> Result<Result<Job, Refused>> {
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
        return Ok(Err(Refused::NotApproved(reason)));
    }
    // A covering approval names a tenant that exists.
    let tenant = tenant.ok_or_else(|| Error::Internal(format!("approval {} has no tenant", ask.approval)))?;
    let plugin = write.get(crate::store::PLUGINS, &ask.plugin)?;
    let plugin = plugin.ok_or_else(|| Error::NotFound(format!("plugin `{}`", ask.plugin)))?;
    plugin.manifest.check_params(&params.to_string()).map_err(|e| Error::BadRequest(e.to_string()))?;
    let layer = ask.policy.clone().unwrap_or_default();
    budget::refuse_budget_terms(&layer)?;
    let approval_policy = write.get(APPROVALS, &ask.approval)?.map(|a| a.policy).unwrap_or_default();
    let policy = run_policy(floor, &tenant.policy, &approval_policy, &layer)
        .map_err(|e| Error::Unprocessable(format!("the policy is refused: {e}")))?;
    if let Some(cost) = policy.dp_rho_nanos() {
        let now = now_ms();
        let standing = Standing::of(&*write, &tenant.name, Terms::of(floor, &tenant.policy)?, now)?;
        if let Some(shortfall) = standing.shortfall(&tenant.name, cost, now) {
            let why = shortfall.to_string();
            let detail =
                json!({"plugin": ask.plugin, "approval": ask.approval, "rho_nanos": cost, "reason": why});
            write.audit(&tenant.name, actor, "privacy.refused", detail)?;
            return Ok(Err(Refused::Budget(why)));
        }
    }
    let queued = write.count_listed(JOBS, QUEUED_JOBS_OF_TENANT, &tenant.name)?;
    if queued >= limits.queued_per_tenant {
        return Err(Error::TooMany(format!(
            "tenant `{}` already has {queued} jobs waiting; try again later",
            tenant.name
        )));
    }
    let seq = work::next_seq(write)?;
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
        rho_charged_nanos: 0,
    };
    work::enqueue(write, &job)?;
    write.audit(
        &job.tenant,
        actor,
        "job.submit",
        json!({"job": job.id, "plugin": job.plugin, "approval": job.approval, "datasets": job.datasets}),
    )?;
    Ok(Ok(job))
}

/// Why a job was not submitted.
#[derive(Debug)]
pub(crate) enum Refused {
    /// No live approval covers it.
    NotApproved(String),
    /// Its tenant's privacy budget cannot cover it now.
    Budget(String),
}

/// The shapes of a submitted job's ids and names, checked before anything
/// is looked up or audited.
pub(crate) fn check_submit(ask: &SubmitRequest) -> Result<()> {
    crate::tenants::check_name("tenant", &ask.tenant)?;
    crate::ids::check_hash(&ask.plugin)?;
    crate::ids::check_id("approval", crate::ids::APPROVAL, &ask.approval)?;
    crate::ids::check_count("datasets", ask.datasets.len(), crate::ids::MAX_DATASETS)?;
    for (name, dataset) in &ask.datasets {
        crate::ids::check_manifest_name("dataset", name)?;
        crate::tenants::check_name("dataset", dataset)?;
    }
    Ok(())
}

impl Work for Job {
    const TABLE: Table<Self> = JOBS;
    const PREFIX: &'static str = crate::ids::JOB;
    const WHAT: &'static str = "job";
    const AUDIT: &'static str = "job";
    const ID_KEY: &'static str = "job";
    type Outcome = Outcome;

    crate::work::record_fields!();

    fn chain(&self) -> &str {
        &self.tenant
    }

    /// Its tenant's, if it names one that exists.
    fn chain_of_unreadable(
        read: &impl RecordRead,
        raw: &serde_json::Value,
    ) -> Result<Option<String>, crate::StoreError> {
        let Some(tenant) = raw["tenant"].as_str() else { return Ok(None) };
        let exists = read.get_as::<serde::de::IgnoredAny, _>(TENANTS, tenant)?.is_some();
        Ok(exists.then(|| tenant.to_owned()))
    }

    /// A job counts against its tenant's limit.
    fn slot_group(&self, limits: &JobLimits) -> SlotGroup {
        SlotGroup { name: format!("tenant:{}", self.tenant), limit: limits.per_tenant }
    }

    /// The approval is checked once more: it may have been revoked or run
    /// out since the submit.
    fn on_start(&mut self, w: &mut Write<'_>) -> Result<Result<(), String>> {
        let ask = JobAsk {
            tenant: &self.tenant,
            plugin: &self.plugin,
            analyst: &self.analyst,
            datasets: &self.datasets,
            params: &self.params,
        };
        if let Some(reason) = approvals::refusal(w, &self.approval, &ask)? {
            w.audit(
                &self.tenant,
                "daemon",
                "access.refused",
                json!({"what": "job.start", "job": self.id, "reason": reason}),
            )?;
            return Ok(Err("not-approved".into()));
        }
        w.audit(&self.tenant, "daemon", "job.start", json!({"job": self.id}))?;
        Ok(Ok(()))
    }

    fn execute(&self, app: &App, cancel: CancelToken) -> Outcome {
        execute(app, self, cancel)
    }

    fn finish(&self, app: &App, outcome: Outcome, elapsed: Duration) -> Result<Committed> {
        finish(app, self, outcome, elapsed)
    }

    /// Its privacy charge, if it had one, stays spent: the run may have
    /// read data before the daemon stopped under it.
    fn on_abandon(&mut self, write: &mut Write<'_>) -> Result<(), crate::StoreError> {
        self.rho_charged_nanos = budget::settle(write, &self.id, ChargeState::Spent)?;
        Ok(())
    }
}

/// What a run came to, before it is recorded.
pub(crate) enum Outcome {
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
    let mut contents = BTreeMap::new();
    for (name, dataset) in &job.datasets {
        match app.vault.dataset(&job.tenant, dataset, None) {
            Ok(version) => {
                versions.insert(name.clone(), version.version());
                contents.insert(name.clone(), version.info().content_hash);
                datasets.insert(name.clone(), version);
            }
            Err(e) => return not_run("data-unavailable", e.to_string()),
        }
    }
    let read = match app.store.read_for_change() {
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
    let policy = match run_policy(&app.config.floor, &tenant_policy, &approval_policy, &job.policy) {
        Ok(policy) => policy,
        Err(e) => return not_run("policy", e.to_string()),
    };
    let request = request_key(job, &contents, &policy);
    match replayed(&read, &request) {
        Ok(Some((of, release))) => return Outcome::Replayed { of, release: Box::new(release), versions },
        Ok(None) => {}
        Err(e) => return not_run("host-error", e.to_string()),
    }
    drop(read);
    if let Some(cost) = policy.dp_rho_nanos() {
        // A release the gate cannot make is refused before it is charged.
        if let Err(e) = Gate::new(plugin.manifest.outputs.clone(), policy.clone(), Scope::Tenant) {
            return not_run("policy", e.to_string());
        }
        // Cancelled before its charge: nobody pays for a run that never ran.
        if cancel.is_cancelled() {
            return not_run("interrupted", "cancelled before it started".into());
        }
        match reserve(app, job, &request, cost) {
            Ok(Reserved::Charged) => {}
            Ok(Reserved::Replay(of, release)) => {
                return Outcome::Replayed { of, release: Box::new(release), versions };
            }
            Ok(Reserved::Short(shortfall)) => return not_run("privacy-budget", shortfall),
            Err(e) => return not_run("host-error", e.to_string()),
        }
    }
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

/// The policy a job runs under: the operator's floor, tightened by its
/// tenant's, its approval's and its own layers. Checked at submit and
/// applied at the run.
fn run_policy(
    floor: &PolicyLayer,
    tenant: &PolicyLayer,
    approval: &PolicyLayer,
    job: &PolicyLayer,
) -> Result<Policy, kanon_gate::PolicyError> {
    Policy::for_run(&Policy::floor(floor)?, [tenant, approval], job)
}

/// What came of reserving a differentially private job's charge.
enum Reserved {
    /// Charged, durably: the run may read data.
    Charged,
    /// An identical request finished meanwhile: its release, no charge.
    Replay(String, Release),
    /// The tenant's budget has too little left; nothing was charged.
    Short(String),
}

/// Charge `job`'s tenant `cost` for it, unless an identical request was
/// answered in the meantime. Returns once the charge is durable, so no
/// crash after it can forget a run that read data.
fn reserve(app: &App, job: &Job, request: &str, cost: u64) -> Result<Reserved> {
    app.store.write(|w| {
        if let Some((of, release)) = replayed(w, request)? {
            return Ok(Reserved::Replay(of, release));
        }
        let tenant = crate::tenants::get(w, &job.tenant)?;
        let terms = Terms::of(&app.config.floor, &tenant.policy)?;
        Ok(match budget::reserve(w, terms, &job.tenant, &job.id, &job.analyst, cost, now_ms())? {
            Ok(_) => Reserved::Charged,
            Err(shortfall) => Reserved::Short(shortfall.to_string()),
        })
    })
}

/// What makes two jobs the same request: the tenant, the plugin, the params,
/// the content of the dataset versions read (a number comes again after a
/// dataset is deleted and uploaded anew; its content hash does not unless
/// the data is the same) and the policy the release answers to (not the
/// budget's terms, which change no release). The hash keys the stored
/// releases.
fn request_key(job: &Job, contents: &BTreeMap<String, String>, policy: &Policy) -> String {
    let mut hasher = blake3::Hasher::new_derive_key("kanon job request v2");
    let datasets: Vec<(&String, &String, Option<&String>)> =
        job.datasets.iter().map(|(name, dataset)| (name, dataset, contents.get(name))).collect();
    // JSON of maps with sorted keys: one text per request.
    let parts = json!({
        "tenant": job.tenant,
        "plugin": job.plugin,
        "params": job.params,
        "datasets": datasets,
        "policy": policy.without_budget_terms(),
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
fn finish(app: &App, job: &Job, outcome: Outcome, elapsed: Duration) -> Result<Committed> {
    let (state, failure, release, log, versions, refusals, request) = match outcome {
        Outcome::Ran { report, versions, request } => {
            let refusals = report.owner_log.refusals.len();
            let log = log_of_run(&job.id, report.owner_log.clone(), &report.stats);
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
    let (recorded, committed) = app.store.commit(|w| {
        let mut current: Job = w.get(JOBS, &job.id)?.unwrap_or_else(|| job.clone());
        work::finished(w, job)?;
        current.finished_ms = Some(now_to_the_second());
        current.versions = versions;
        w.put(OWNER_LOGS, &job.id, &sealed)?;
        if current.cancel_requested {
            current.rho_charged_nanos = budget::settle(w, &job.id, ChargeState::Spent)?;
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
        // Its charge, if it ran under DP: released with its own release,
        // spent otherwise (it read data and released nothing of its own).
        let released = matches!(&release, Some((_, Some(_), _)));
        let settled = if released { ChargeState::Released } else { ChargeState::Spent };
        current.rho_charged_nanos = budget::settle(w, &job.id, settled)?;
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
    Ok(committed)
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
    open_log(app, tenant, &log_label(id), id, &stored)
}

/// Open the sealed log of run `id` (a job or a benchmark run).
pub(crate) fn open_log(app: &App, tenant: &str, label: &str, id: &str, stored: &Sealed) -> Result<JobLog> {
    Ok(sealed::open(app, tenant, label, stored)?.unwrap_or_else(|| JobLog {
        job: id.to_owned(),
        error: Some("(the log could not be kept)".into()),
        ..JobLog::default()
    }))
}

#[cfg(test)]
pub(crate) mod tests {
    use kanon_gate::{DpPolicy, Isolation, Privacy};

    use super::*;

    /// A job of `acme`'s analyst `ana` on `trips`, in `state`.
    pub(crate) fn job(id: &str, seq: u64, state: JobState) -> Job {
        Job {
            id: id.into(),
            seq,
            tenant: "acme".into(),
            analyst: "ana".into(),
            plugin: "0".repeat(64),
            approval: format!("apr_{}", "0".repeat(24)),
            datasets: [("trips".to_owned(), "trips".to_owned())].into(),
            params: json!({}),
            policy: PolicyLayer::default(),
            state,
            cancel_requested: false,
            submitted_ms: 0,
            started_ms: None,
            finished_ms: None,
            failure: None,
            versions: BTreeMap::new(),
            stats: None,
            replay_of: None,
            rho_charged_nanos: 0,
        }
    }

    #[test]
    fn a_request_is_the_same_whatever_the_budget_terms_and_another_under_another_rho_or_data() {
        let job = job("job_000000000000000000000001", 1, JobState::Queued);
        let contents = [("trips".to_owned(), "c0ffee".to_owned())].into();
        let dp = Policy { privacy: Privacy::Dp, isolation: Isolation::Entity, ..Policy::default() };
        let key =
            |dp: DpPolicy, policy: &Policy| request_key(&job, &contents, &Policy { dp, ..policy.clone() });
        let base = key(DpPolicy::default(), &dp);
        let smaller_budget = DpPolicy { budget_rho: 0.1, window_days: 90, ..DpPolicy::default() };
        assert_eq!(key(smaller_budget, &dp), base);
        assert_ne!(key(DpPolicy { rho: 0.01, ..DpPolicy::default() }, &dp), base);
        // DP's fields leave a threshold policy's key alone.
        let threshold = key(smaller_budget, &Policy::default());
        assert_eq!(threshold, key(DpPolicy::default(), &Policy::default()));
        assert_eq!(threshold, "c7995e42210242b43d56fa934845de5e7f1ead1cff69f68cf9d515815d974d70");
        // Other data under the same dataset name is another request.
        let other = [("trips".to_owned(), "decaf".to_owned())].into();
        assert_ne!(request_key(&job, &other, &Policy::default()), threshold);
    }
}
