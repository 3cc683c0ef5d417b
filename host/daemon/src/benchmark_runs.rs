//! Benchmark runs: queued by the vendor or the schedule, started and
//! cancelled through the one work lifecycle ([`crate::work`]), one at a
//! time (one isolated instance per opted-in tenant, merged by the gate
//! under the benchmark rules and the subtraction rule), and finished in one
//! transaction that stores the version in the meta data vault, the
//! benchmark's history, each tenant's own position (sealed) and owner log
//! (sealed), and the audit entries on the host's and every participant's
//! chain.

use std::collections::BTreeMap;
use std::time::Duration;

use kanon_gate::{
    CellHistory, Gate, Isolation, Policy, PolicyLayer, Privacy, ReleaseHistory, Scope, TableHistory,
    TableSpec,
};
use kanon_runtime::{BenchmarkReport, BenchmarkRequest, CancelToken, TenantInput};
use serde_json::json;

use crate::audit::HOST_CHAIN;
use crate::benchmarks::{self, Benchmark, OptIn};
use crate::budget::{self, ChargeState, Standing, Terms};
use crate::config::JobLimits;
use crate::error::{Error, Result};
use crate::jobs::{JobLog, JobState, now_to_the_second, seen_failure, whole_seconds};
use crate::registry::PluginRecord;
use crate::sealed::{self, Sealed};
use crate::store::{
    BENCHMARK_REPLAYS, BENCHMARK_RUNS, BENCHMARKS, Committed, META_VAULT, OPT_INS, OWNER_LOGS, PLUGINS,
    POSITIONS, RELEASE_HISTORY, Read, RecordRead, TENANTS, Table, Write,
};
use crate::tenants::TenantRecord;
use crate::work::{self, SlotGroup, Work};
use crate::{App, ControlStore, now_ms};

/// What every benchmark run asks of the gate beyond its participants'
/// policies: one instance per entity, so no plugin can make one person's
/// contribution depend on another's rows, in any tenant.
fn benchmark_layer() -> PolicyLayer {
    PolicyLayer { isolation: Some(Isolation::Entity), ..PolicyLayer::default() }
}

// The records are the API's: the client reads these same types, and the
// control store keeps them as their JSON.
pub use kanon_client::types::{
    BenchmarkBudget, BenchmarkRun, BenchmarkStats, BenchmarkVersion, PositionView, VersionSummary,
};

/// The meta data vault's key of a version: zero-padded, so keys sort by
/// version.
pub(crate) fn version_key(benchmark: &str, version: u64) -> String {
    format!("{benchmark}/{version:012}")
}

fn position_key(benchmark: &str, version: u64, tenant: &str) -> String {
    format!("{}/{tenant}", version_key(benchmark, version))
}

fn position_label(benchmark: &str, version: u64) -> String {
    format!("benchmark-position:{}", version_key(benchmark, version))
}

fn log_key(run: &str, tenant: &str) -> String {
    format!("{run}/{tenant}")
}

fn log_label(run: &str) -> String {
    format!("owner-log:{run}")
}

/// Queue a run of `benchmark`, unless it is retired or one is queued or
/// running already.
pub(crate) fn queue(
    write: &mut Write<'_>,
    actor: &str,
    benchmark: &str,
    trigger: &str,
) -> Result<BenchmarkRun> {
    if benchmarks::get(write, benchmark)?.retired_ms.is_some() {
        return Err(Error::Conflict(format!("benchmark `{benchmark}` is retired")));
    }
    let unfinished: Vec<BenchmarkRun> = work::unfinished(write)?;
    if let Some(pending) = unfinished.iter().find(|r| r.benchmark == benchmark) {
        return Err(Error::Conflict(format!(
            "run {} of `{benchmark}` is {}",
            pending.id,
            pending.state.name()
        )));
    }
    let run = BenchmarkRun {
        id: crate::new_id("brun"),
        seq: work::next_seq(write)?,
        benchmark: benchmark.to_owned(),
        trigger: trigger.to_owned(),
        state: JobState::Queued,
        submitted_ms: now_to_the_second(),
        started_ms: None,
        finished_ms: None,
        failure: None,
        participants: None,
        version: None,
        replay_of: None,
        rho_charged_nanos: 0,
        stats: None,
        cancel_requested: false,
    };
    work::enqueue(write, &run)?;
    write.audit(HOST_CHAIN, actor, "benchmark.run.queue", json!({"benchmark": benchmark, "run": run.id}))?;
    Ok(run)
}

/// Queue a run of every scheduled benchmark that is due at `now`. Returns
/// how many were queued; one still pending covers its turn.
pub(crate) fn queue_due(store: &ControlStore, now: u64) -> Result<usize> {
    let due: Vec<Benchmark> = store
        .read()?
        .all::<Benchmark>(BENCHMARKS)?
        .into_iter()
        .filter(|b| b.retired_ms.is_none())
        .filter(|b| b.every_hours.is_some_and(|h| now >= b.scheduled_ms + u64::from(h) * 3_600_000))
        .collect();
    let mut queued = 0;
    for benchmark in due {
        queued += store.write(|w| {
            let mut current = benchmarks::get(w, &benchmark.name)?;
            current.scheduled_ms = now;
            w.put(BENCHMARKS, &current.name, &current)?;
            match queue(w, "daemon", &current.name, "schedule") {
                Ok(_) => Ok::<_, Error>(1),
                Err(Error::Conflict(_)) => Ok(0),
                Err(e) => Err(e),
            }
        })?;
    }
    Ok(queued)
}

/// One participant, ready to run.
pub(crate) struct Participant {
    opt_in: OptIn,
    versions: BTreeMap<String, u64>,
    /// The content hash of each dataset version read: what a request is
    /// (a version number comes again after a dataset is deleted).
    contents: BTreeMap<String, String>,
    /// Its own policy layer, as the run read it.
    layer: PolicyLayer,
    rows: u64,
}

/// What a run came to, before it is recorded.
pub(crate) enum Outcome {
    Ran {
        report: Box<BenchmarkReport>,
        participants: Vec<Participant>,
        version: u64,
        /// A differentially private run's request key, which its version
        /// will answer.
        request: Option<String>,
    },
    /// The same differentially private request was answered by `of`:
    /// nothing was read or charged.
    Replayed {
        of: VersionSummary,
        participants: Vec<Participant>,
    },
    NotRun {
        code: &'static str,
        detail: String,
        participants: Vec<Participant>,
    },
}

impl Work for BenchmarkRun {
    const TABLE: Table<Self> = BENCHMARK_RUNS;
    const PREFIX: &'static str = crate::ids::BENCHMARK_RUN;
    const WHAT: &'static str = "benchmark run";
    const AUDIT: &'static str = "benchmark.run";
    const ID_KEY: &'static str = "run";
    type Outcome = (Outcome, Vec<(String, String)>);

    crate::work::record_fields!();

    fn chain(&self) -> &str {
        HOST_CHAIN
    }

    fn chain_of_unreadable(
        _: &impl RecordRead,
        _: &serde_json::Value,
    ) -> Result<Option<String>, crate::StoreError> {
        Ok(Some(HOST_CHAIN.to_owned()))
    }

    /// A run reads many tenants: it counts against no tenant's limit, and
    /// one runs at a time.
    fn slot_group(&self, _: &JobLimits) -> SlotGroup {
        SlotGroup { name: "benchmark-runs".into(), limit: 1 }
    }

    /// Before any data is read, every tenant whose data the run may read
    /// finds it on its chain, even if the daemon dies mid-run.
    fn on_start(&mut self, w: &mut Write<'_>) -> Result<Result<(), String>> {
        let detail = json!({"benchmark": self.benchmark, "run": self.id});
        w.audit(HOST_CHAIN, "daemon", "benchmark.run.start", detail.clone())?;
        let opted: Vec<OptIn> = w.prefixed(OPT_INS, &format!("{}/", self.benchmark))?;
        for opt_in in opted.iter().filter(|o| o.active()) {
            w.audit(&opt_in.tenant, "daemon", "benchmark.run.start", detail.clone())?;
        }
        Ok(Ok(()))
    }

    fn execute(&self, app: &App, cancel: CancelToken) -> Self::Outcome {
        execute(app, self, cancel)
    }

    fn finish(&self, app: &App, (outcome, skipped): Self::Outcome, elapsed: Duration) -> Result<Committed> {
        finish(app, self, outcome, skipped, elapsed)
    }

    /// Its privacy charges, if it had any, stay spent: the run may have
    /// read data before the daemon stopped under it.
    fn on_abandon(&mut self, write: &mut Write<'_>) -> Result<(), crate::StoreError> {
        self.rho_charged_nanos = budget::settle(write, &self.id, ChargeState::Spent)?;
        Ok(())
    }
}

/// Run the benchmark over every tenant opted in now. A tenant whose mapped
/// data cannot be read, whose own `t` asks for more tenants than take part,
/// or whose privacy budget cannot cover a differentially private run is
/// left out (and told, on its chain); the others run.
fn execute(app: &App, run: &BenchmarkRun, cancel: CancelToken) -> (Outcome, Vec<(String, String)>) {
    let mut skipped = Vec::new();
    let not_run = |code, detail: String, participants| Outcome::NotRun { code, detail, participants };
    let read = match app.store.read_for_change() {
        Ok(read) => read,
        Err(e) => return (not_run("host-error", e.to_string(), Vec::new()), skipped),
    };
    let benchmark: Benchmark = match read.get(BENCHMARKS, &run.benchmark) {
        Ok(Some(benchmark)) => benchmark,
        Ok(None) => return (not_run("host-error", "the benchmark is gone".into(), Vec::new()), skipped),
        Err(e) => return (not_run("host-error", e.to_string(), Vec::new()), skipped),
    };
    let plugin = match app.plugins.get(&app.runtime, &benchmark.plugin) {
        Ok(plugin) => plugin,
        Err(e) => return (not_run("host-error", e.to_string(), Vec::new()), skipped),
    };
    let opt_ins = match benchmarks::opt_ins(&read, &benchmark.name) {
        Ok(all) => all.into_iter().filter(OptIn::active).collect::<Vec<_>>(),
        Err(e) => return (not_run("host-error", e.to_string(), Vec::new()), skipped),
    };
    let mut taking_part = TakingPart::default();
    for opt_in in opt_ins {
        let tenant = opt_in.tenant.clone();
        let ready = read
            .get::<TenantRecord>(TENANTS, &tenant)
            .map_err(Error::from)
            .and_then(|t| t.ok_or_else(|| Error::NotFound(format!("tenant `{tenant}`"))))
            .and_then(|record| {
                let datasets = benchmarks::mapped_datasets(app, &tenant, &plugin.manifest, &opt_in.datasets)?;
                let secret = app.vault.pseudonym_secret(&tenant)?;
                Ok((record, datasets, secret))
            });
        match ready {
            Ok((record, datasets, secret)) => {
                let rows = datasets.values().map(|d| d.rows()).sum::<u64>();
                let versions = datasets.iter().map(|(name, d)| (name.clone(), d.version())).collect();
                let contents =
                    datasets.iter().map(|(name, d)| (name.clone(), d.info().content_hash)).collect();
                let member = opt_in.member;
                taking_part.inputs.push(TenantInput { tenant: tenant.clone(), datasets, secret, member });
                let layer = record.policy;
                taking_part.participants.push(Participant { opt_in, versions, contents, layer, rows });
            }
            Err(e) => skipped.push((tenant, e.to_string())),
        }
    }
    let history = match history_with_siblings(&read, &benchmark, &plugin.manifest.outputs) {
        Ok(history) => history,
        Err(e) => return (not_run("host-error", e.to_string(), taking_part.participants), skipped),
    };
    drop(read);
    // Who takes part decides the policy, and under differential privacy
    // the policy decides whose budget can pay: until both settle, each
    // round leaves at least one tenant out.
    let (policy, request) = loop {
        taking_part.leave_out_for_min_tenants(&mut skipped);
        let layers: Vec<PolicyLayer> = taking_part.participants.iter().map(|p| p.layer.clone()).collect();
        let policy = match run_policy(&app.config.floor, &layers) {
            Ok(policy) => policy,
            Err(e) => return (not_run("policy", e.to_string(), taking_part.participants), skipped),
        };
        let count = taking_part.participants.len();
        if count < policy.min_tenants as usize {
            let detail = format!("{count} tenants take part; the policy needs {}", policy.min_tenants);
            return (not_run("too-few-tenants", detail, taking_part.participants), skipped);
        }
        let Some(cost) = policy.dp_rho_nanos() else { break (policy, None) };
        // A release the gate cannot make is refused before anyone is charged.
        if let Err(e) = Gate::new(plugin.manifest.outputs.clone(), policy.clone(), Scope::Benchmark) {
            return (not_run("policy", e.to_string(), taking_part.participants), skipped);
        }
        // Cancelled before its charge: nobody pays for a run that never ran.
        if cancel.is_cancelled() {
            return (
                not_run("interrupted", "cancelled before it started".into(), taking_part.participants),
                skipped,
            );
        }
        let request = request_key(&benchmark, &policy, &taking_part.participants);
        match reserve(app, run, &benchmark, &taking_part.participants, &request, cost) {
            Ok(Reserved::Charged) => break (policy, Some(request)),
            Ok(Reserved::Replay(of)) => {
                return (Outcome::Replayed { of, participants: taking_part.participants }, skipped);
            }
            Ok(Reserved::Short(mut short)) => {
                // Leaving out a tenant that asks for DP may make this a
                // threshold run, which charges nobody: those go first.
                let asks = |i: usize| taking_part.participants[i].layer.privacy == Some(Privacy::Dp);
                if short.iter().any(|&(i, _)| asks(i)) {
                    short.retain(|&(i, _)| asks(i));
                }
                for (i, shortfall) in short.into_iter().rev() {
                    let tenant = taking_part.leave_out(i);
                    skipped.push((tenant, shortfall.to_string()));
                }
            }
            Err(e) => return (not_run("host-error", e.to_string(), taking_part.participants), skipped),
        }
    };
    let TakingPart { participants, inputs } = taking_part;
    let version = benchmark.versions + 1;
    let request_to_run = BenchmarkRequest {
        run_id: run.id.clone(),
        tenants: inputs,
        params: benchmark.params.to_string(),
        policy,
        history,
        version,
        cancel,
    };
    match app.runtime.run_benchmark(&plugin, request_to_run) {
        Ok(report) => (Outcome::Ran { report: Box::new(report), participants, version, request }, skipped),
        Err(e) => (not_run("bad-request", e.to_string(), participants), skipped),
    }
}

/// The tenants a run reads, and their inputs, in step.
#[derive(Default)]
struct TakingPart {
    participants: Vec<Participant>,
    inputs: Vec<TenantInput>,
}

impl TakingPart {
    /// Leave participant `i` out; its tenant.
    fn leave_out(&mut self, i: usize) -> String {
        self.inputs.remove(i);
        self.participants.remove(i).opt_in.tenant
    }

    /// Leave out every tenant whose own `t` asks for more tenants than take
    /// part, rather than failing the run for everyone.
    fn leave_out_for_min_tenants(&mut self, skipped: &mut Vec<(String, String)>) {
        loop {
            let count = self.participants.len() as u32;
            let Some((i, wants)) = self
                .participants
                .iter()
                .enumerate()
                .find_map(|(i, p)| p.layer.min_tenants.filter(|&t| t > count).map(|t| (i, t)))
            else {
                return;
            };
            let tenant = self.leave_out(i);
            skipped.push((tenant, format!("its policy needs {wants} tenants; {count} take part")));
        }
    }
}

/// The policy a benchmark run answers to: the operator's floor, tightened
/// by every participant's layer and the benchmark's own.
fn run_policy(floor: &PolicyLayer, layers: &[PolicyLayer]) -> Result<Policy, kanon_gate::PolicyError> {
    Policy::for_run(&Policy::floor(floor)?, layers, &benchmark_layer())
}

/// What makes two differentially private runs the same request: the
/// benchmark, its plugin and params, the policy (not the budget's terms),
/// and every participant with its mapping and the content of the data
/// versions read. The hash keys the version that answers it.
fn request_key(benchmark: &Benchmark, policy: &Policy, participants: &[Participant]) -> String {
    let mut hasher = blake3::Hasher::new_derive_key("kanon benchmark request v1");
    let mut tenants: Vec<_> =
        participants.iter().map(|p| (p.opt_in.member, &p.opt_in.datasets, &p.contents)).collect();
    tenants.sort_by_key(|(member, _, _)| *member);
    // JSON of maps with sorted keys: one text per request.
    let parts = json!({
        "benchmark": benchmark.name,
        "plugin": benchmark.plugin,
        "params": benchmark.params,
        "policy": policy.without_budget_terms(),
        "tenants": tenants,
    });
    hasher.update(parts.to_string().as_bytes());
    hasher.finalize().to_hex().to_string()
}

/// The version that answers `request`, if one does.
fn replayed(read: &impl RecordRead, benchmark: &str, request: &str) -> Result<Option<VersionSummary>> {
    let Some(version) = read.get(BENCHMARK_REPLAYS, request)? else { return Ok(None) };
    let stored: Option<BenchmarkVersion> = read.get(META_VAULT, &version_key(benchmark, version))?;
    Ok(stored.map(|v| v.summary()))
}

/// What came of reserving a differentially private run's charges.
enum Reserved {
    /// Every participant charged, durably: the run may read data.
    Charged,
    /// The same request was answered before: its version, no charge.
    Replay(VersionSummary),
    /// These participants' budgets have too little left; nobody was
    /// charged.
    Short(Vec<(usize, budget::Shortfall)>),
}

/// Charge every participant `cost` for `run`, all or none, unless the same
/// request was answered before. Returns once the charges are durable, so no
/// crash after it can forget a run that read data.
fn reserve(
    app: &App,
    run: &BenchmarkRun,
    benchmark: &Benchmark,
    participants: &[Participant],
    request: &str,
    cost: u64,
) -> Result<Reserved> {
    app.store.write(|w| {
        if let Some(of) = replayed(w, &benchmark.name, request)? {
            return Ok(Reserved::Replay(of));
        }
        // The budget's terms as they are now, not as the run read them.
        let mut terms = Vec::with_capacity(participants.len());
        for p in participants {
            let record = crate::tenants::get(w, &p.opt_in.tenant)?;
            terms.push((p.opt_in.tenant.as_str(), Terms::of(&app.config.floor, &record.policy)?));
        }
        Ok(match budget::reserve_all(w, &terms, &run.id, &benchmark.vendor, cost, now_ms())? {
            Ok(()) => Reserved::Charged,
            Err(short) => Reserved::Short(short),
        })
    })
}

/// What a run of `benchmark` would charge each tenant opted in now, and how
/// many such runs the tightest of their budgets allows.
pub(crate) fn budget(app: &App, benchmark: &Benchmark) -> Result<BenchmarkBudget> {
    let read = app.store.read()?;
    let mut layers = Vec::new();
    let mut terms = Vec::new();
    for opt_in in benchmarks::opt_ins(&read, &benchmark.name)?.into_iter().filter(OptIn::active) {
        let Some(record) = read.get::<TenantRecord>(TENANTS, &opt_in.tenant)? else { continue };
        terms.push((opt_in.tenant, Terms::of(&app.config.floor, &record.policy)?));
        layers.push(record.policy);
    }
    // The error would quote a tenant's policy to the vendor.
    let policy = run_policy(&app.config.floor, &layers)
        .map_err(|_| Error::Unprocessable("the policies of the tenants opted in do not combine".into()))?;
    let cost = policy.dp_rho_nanos();
    let runs_possible = match cost {
        // Fewer than t tenants: no run would go ahead, and one tenant's
        // budget would show through the smallest.
        Some(_) if terms.len() < policy.min_tenants as usize => None,
        None => None,
        Some(cost) => {
            let now = now_ms();
            let mut fewest = u64::MAX;
            for (tenant, terms) in terms {
                fewest = fewest.min(Standing::of(&read, &tenant, terms, now)?.remaining_nanos / cost);
            }
            Some(if fewest == u64::MAX { 0 } else { fewest })
        }
    };
    Ok(BenchmarkBudget { benchmark: benchmark.name.clone(), rho_nanos: cost, runs_possible })
}

/// The benchmark's history, with the tenant sets its vendor's other
/// benchmarks released the same tables with. Same means the same
/// dimensions, domains, measures and statistics, whatever the table is
/// called and whichever plugin emits it: publishing a rebuilt plugin, other
/// params or a new name does not start the subtraction rule afresh.
fn history_with_siblings(read: &Read, benchmark: &Benchmark, ours: &[TableSpec]) -> Result<ReleaseHistory> {
    let mut history: ReleaseHistory = read.get(RELEASE_HISTORY, &benchmark.name)?.unwrap_or_default();
    let all: Vec<Benchmark> = read.all(BENCHMARKS)?;
    for sibling in all.iter().filter(|b| b.name != benchmark.name && b.vendor == benchmark.vendor) {
        let Some(theirs) = read.get::<ReleaseHistory>(RELEASE_HISTORY, &sibling.name)? else { continue };
        let Some(plugin) = read.get::<PluginRecord>(PLUGINS, &sibling.plugin)? else { continue };
        for table in theirs.tables {
            let Some(spec) = plugin.manifest.outputs.iter().find(|s| s.name == table.name) else { continue };
            let Some(mine) = ours.iter().find(|o| same_table(o, spec)) else { continue };
            let at = match history.tables.iter().position(|t| t.name == mine.name) {
                Some(at) => at,
                None => {
                    let cells = vec![CellHistory::default(); table.cells.len()];
                    history.tables.push(TableHistory { name: mine.name.clone(), cells });
                    history.tables.len() - 1
                }
            };
            let mine = &mut history.tables[at];
            if mine.cells.len() != table.cells.len() {
                continue;
            }
            for (mine, theirs) in mine.cells.iter_mut().zip(table.cells) {
                for set in theirs.released_sets {
                    if !mine.released_sets.contains(&set) {
                        mine.released_sets.push(set);
                    }
                }
            }
        }
    }
    Ok(history)
}

/// Whether two tables release the same cells, whatever their names.
fn same_table(a: &TableSpec, b: &TableSpec) -> bool {
    let unnamed = |s: &TableSpec| TableSpec { name: String::new(), description: String::new(), ..s.clone() };
    unnamed(a) == unnamed(b)
}

/// Record the end of a run in one transaction.
fn finish(
    app: &App,
    run: &BenchmarkRun,
    outcome: Outcome,
    skipped: Vec<(String, String)>,
    elapsed: Duration,
) -> Result<Committed> {
    // A log of a run no instance ran, for each participant.
    let plain_logs = |participants: &[Participant], error: Option<String>| -> Vec<Sealed> {
        let log = JobLog { job: run.id.clone(), error, ..JobLog::default() };
        participants.iter().map(|p| sealed::seal(app, &p.opt_in.tenant, &log_label(&run.id), &log)).collect()
    };
    // Seal what is each tenant's before the transaction: sealing reads the
    // vault.
    let (participants, logs, positions) = match &outcome {
        Outcome::Ran { report, participants, version, .. } => {
            let logs: Vec<Sealed> = report
                .tenants
                .iter()
                .map(|(tenant, log, stats)| {
                    let log = crate::jobs::log_of_run(&run.id, log.clone(), stats);
                    sealed::seal(app, tenant, &log_label(&run.id), &log)
                })
                .collect();
            let positions = match &report.outcome {
                Ok(_) => report
                    .tenants
                    .iter()
                    .zip(&report.positions)
                    .map(|((tenant, _, _), position)| {
                        sealed::seal(app, tenant, &position_label(&run.benchmark, *version), position)
                    })
                    .collect(),
                Err(_) => Vec::new(),
            };
            (participants, logs, positions)
        }
        Outcome::Replayed { participants, .. } => (participants, plain_logs(participants, None), Vec::new()),
        Outcome::NotRun { participants, detail, .. } => {
            (participants, plain_logs(participants, Some(detail.clone())), Vec::new())
        }
    };
    let rows: u64 = participants.iter().map(|p| p.rows).sum();
    let run_ms = elapsed.as_millis() as u64;
    let (recorded, committed) = app.store.commit(|w| {
        let mut current: BenchmarkRun = w.get(BENCHMARK_RUNS, &run.id)?.unwrap_or_else(|| run.clone());
        work::finished(w, run)?;
        current.finished_ms = Some(now_to_the_second());
        current.participants = Some(participants.len());
        for (tenant, reason) in &skipped {
            w.audit(tenant, "daemon", "benchmark.skipped", json!({"benchmark": run.benchmark, "run": run.id, "reason": reason}))?;
        }
        for (participant, log) in participants.iter().zip(&logs) {
            w.put(OWNER_LOGS, &log_key(&run.id, &participant.opt_in.tenant), log)?;
        }
        let released = match &outcome {
            // Asked to stop: whatever it made is dropped.
            _ if current.cancel_requested => {
                current.state = JobState::Cancelled;
                None
            }
            Outcome::Replayed { of, .. } => {
                current.state = JobState::Succeeded;
                current.version = Some(of.version);
                current.replay_of = Some(of.run.clone());
                current.stats = Some(stats_of(of, elapsed));
                None
            }
            Outcome::Ran { report, version, request, .. } => match &report.outcome {
                Ok(release) => {
                    let mut benchmark = benchmarks::get(w, &run.benchmark)?;
                    if benchmark.versions + 1 != *version {
                        return Err(Error::Conflict(format!("benchmark `{}` got a version meanwhile", run.benchmark)));
                    }
                    benchmark.versions = *version;
                    w.put(BENCHMARKS, &benchmark.name, &benchmark)?;
                    let stored = BenchmarkVersion {
                        benchmark: run.benchmark.clone(),
                        version: *version,
                        run: run.id.clone(),
                        released_ms: now_to_the_second(),
                        plugin: report.plugin_hash.clone(),
                        params_hash: report.params_hash.clone(),
                        participants: participants.len(),
                        release: release.clone(),
                    };
                    w.put(META_VAULT, &version_key(&run.benchmark, *version), &stored)?;
                    w.put(RELEASE_HISTORY, &run.benchmark, &report.history)?;
                    if let Some(request) = request {
                        w.put(BENCHMARK_REPLAYS, request, version)?;
                    }
                    for (participant, position) in participants.iter().zip(&positions) {
                        let key = position_key(&run.benchmark, *version, &participant.opt_in.tenant);
                        w.put(POSITIONS, &key, position)?;
                    }
                    let summary = stored.summary();
                    current.state = JobState::Succeeded;
                    current.version = Some(*version);
                    current.stats = Some(stats_of(&summary, elapsed));
                    let peak_memory = report.tenants.iter().map(|(_, _, stats)| stats.peak_memory_bytes).max();
                    w.audit(
                        HOST_CHAIN,
                        "daemon",
                        "benchmark.release",
                        json!({"benchmark": run.benchmark, "run": run.id, "version": version,
                               "participants": participants.len(), "record": report.record(),
                               "held_cells": summary.held_cells, "rows": rows, "run_ms": run_ms,
                               "peak_instance_memory_bytes": peak_memory}),
                    )?;
                    Some(*version)
                }
                Err(failure) => {
                    current.state = JobState::Failed;
                    current.failure = Some(seen_failure(failure.class).to_owned());
                    None
                }
            },
            Outcome::NotRun { code, .. } => {
                current.state = JobState::Failed;
                current.failure = Some((*code).to_owned());
                None
            }
        };
        // Its charges, if it ran under DP: released with its own version,
        // spent otherwise (it read data and released nothing of its own).
        let settled = if released.is_some() { ChargeState::Released } else { ChargeState::Spent };
        current.rho_charged_nanos = budget::settle(w, &run.id, settled)?;
        for participant in participants {
            w.audit(
                &participant.opt_in.tenant,
                "daemon",
                "benchmark.run",
                json!({"benchmark": run.benchmark, "run": run.id, "datasets": participant.opt_in.datasets,
                       "versions": participant.versions, "outcome": current.state,
                       "version": released.or(current.version), "replay_of": current.replay_of}),
            )?;
        }
        w.put(BENCHMARK_RUNS, &run.id, &current)?;
        w.audit(
            HOST_CHAIN,
            "daemon",
            "benchmark.run.finish",
            json!({"benchmark": run.benchmark, "run": run.id, "outcome": current.state, "failure": current.failure}),
        )?;
        Ok(current.state)
    })?;
    app.metrics.job_finished(recorded.name(), Some((elapsed, None, 0)));
    Ok(committed)
}

/// What the vendor sees of a run that released, or replayed, the version
/// `summary` sums up.
fn stats_of(summary: &VersionSummary, elapsed: Duration) -> BenchmarkStats {
    BenchmarkStats {
        run_secs: whole_seconds(elapsed),
        cells: summary.cells,
        suppressed_cells: summary.suppressed_cells,
        held_cells: summary.held_cells,
    }
}

/// A version from the meta data vault; `None` for the latest.
pub(crate) fn version(app: &App, benchmark: &Benchmark, version: Option<u64>) -> Result<BenchmarkVersion> {
    let number = version.unwrap_or(benchmark.versions);
    app.store
        .read()?
        .get(META_VAULT, &version_key(&benchmark.name, number))?
        .ok_or_else(|| Error::NotFound(format!("version {number} of benchmark `{}`", benchmark.name)))
}

/// Every version's summary, oldest first.
pub(crate) fn versions(app: &App, benchmark: &str) -> Result<Vec<VersionSummary>> {
    let all: Vec<BenchmarkVersion> = app.store.read()?.prefixed(META_VAULT, &format!("{benchmark}/"))?;
    Ok(all.iter().map(BenchmarkVersion::summary).collect())
}

/// A tenant's own position in a version, opened with its data key.
pub(crate) fn position(
    app: &App,
    benchmark: &Benchmark,
    version: Option<u64>,
    tenant: &str,
) -> Result<PositionView> {
    let number = version.unwrap_or(benchmark.versions);
    let missing = || {
        Error::NotFound(format!(
            "tenant `{tenant}` has no position in version {number} of `{}`",
            benchmark.name
        ))
    };
    let stored: Sealed = app
        .store
        .read()?
        .get(POSITIONS, &position_key(&benchmark.name, number, tenant))?
        .ok_or_else(missing)?;
    let position =
        sealed::open(app, tenant, &position_label(&benchmark.name, number), &stored)?.ok_or_else(missing)?;
    Ok(PositionView {
        benchmark: benchmark.name.clone(),
        version: number,
        tenant: tenant.to_owned(),
        position,
    })
}

/// A tenant's owner log of a run, opened with its data key.
pub(crate) fn owner_log(app: &App, run: &str, tenant: &str) -> Result<JobLog> {
    let stored: Sealed = app
        .store
        .read()?
        .get(OWNER_LOGS, &log_key(run, tenant))?
        .ok_or_else(|| Error::NotFound(format!("tenant `{tenant}` has no log of run `{run}`")))?;
    crate::jobs::open_log(app, tenant, &log_label(run), run, &stored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreError;

    fn benchmark(name: &str, every_hours: Option<u32>, scheduled_ms: u64) -> Benchmark {
        Benchmark {
            name: name.into(),
            vendor: "benchco".into(),
            plugin: "0".repeat(64),
            description: String::new(),
            params: json!({}),
            every_hours,
            published_ms: scheduled_ms,
            scheduled_ms,
            versions: 0,
            retired_ms: None,
        }
    }

    #[test]
    fn the_schedule_queues_a_due_benchmark_once_per_turn() {
        let dir = tempfile::tempdir().unwrap();
        let store = ControlStore::open(dir.path()).unwrap();
        let hour = 3_600_000;
        let mut retired = benchmark("retired", Some(1), 0);
        retired.retired_ms = Some(1);
        let all = [
            benchmark("daily", Some(24), 0),
            benchmark("hourly", Some(1), 0),
            benchmark("asked", None, 0),
            retired,
        ];
        store
            .write(|w| {
                for b in &all {
                    w.put(BENCHMARKS, &b.name, b)?;
                }
                Ok::<_, StoreError>(())
            })
            .unwrap();
        let queued = |store: &ControlStore| -> Vec<(String, String)> {
            let runs: Vec<BenchmarkRun> = store.read().unwrap().all(BENCHMARK_RUNS).unwrap();
            let mut runs: Vec<(String, String)> =
                runs.into_iter().map(|r| (r.benchmark, r.trigger)).collect();
            runs.sort();
            runs
        };
        assert_eq!(queue_due(&store, hour - 1).unwrap(), 0, "nothing is due yet");
        assert_eq!(queue_due(&store, hour).unwrap(), 1);
        assert_eq!(queued(&store), [("hourly".to_owned(), "schedule".to_owned())]);
        // Its run is still queued at the next turn: that covers it.
        assert_eq!(queue_due(&store, 2 * hour).unwrap(), 0);
        assert_eq!(queue_due(&store, 24 * hour).unwrap(), 1, "the daily one");
        assert_eq!(queued(&store).len(), 2, "never the on-demand or the retired one");
    }
}
