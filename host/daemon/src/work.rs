//! Queued work: jobs, benchmark runs and whatever comes next share one
//! lifecycle. A piece of work is a record in its kind's table. It waits in
//! `QUEUE` (oldest first), the one [`Scheduler`] starts it within the
//! limits, it runs on a blocking thread with a [`CancelToken`], and it
//! finishes in one transaction. `RUNNING` lists what started and has not
//! finished, so [`recover`] at start finds it without a scan. A kind brings
//! its own checks, execution and finish through [`Work`]; the queue, the
//! slots, cancel, recovery and the failure paths are here, once.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kanon_runtime::CancelToken;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::{Notify, watch};

use crate::benchmark_runs::BenchmarkRun;
use crate::config::JobLimits;
use crate::error::{Error, Result};
use crate::jobs::{Job, JobState};
use crate::store::{RUNNING, Read, RecordRead, Setting, Table, Write};
use crate::{App, ControlStore, StoreError, now_ms};

/// The counter every queued record's `seq` comes from: its place in
/// `QUEUE`. Named when jobs were the only work; databases continue it.
const QUEUE_SEQUENCE: Setting<u64> = Setting::new("job-seq");

/// Set once [`recover`] has put work from before the one queue into it.
const QUEUE_MIGRATED: Setting<bool> = Setting::new("work-queue-v2");

/// Where a slot is counted besides the global limit, and how many that
/// group may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SlotGroup {
    pub name: String,
    pub limit: usize,
}

/// How a started piece of work ended, as the lifecycle records it when its
/// kind could not: the daemon stopped, or its finish failed.
const INTERRUPTED: &str = "interrupted";
const HOST_ERROR: &str = "host-error";

/// A kind of queued work: the record, and what is particular to the kind.
pub(crate) trait Work: Serialize + DeserializeOwned + Clone + Send + 'static {
    /// Its records' table, keyed by id.
    const TABLE: Table<Self>;
    /// Its ids' prefix (`ids::JOB`, ...), which tells the kind of a queued
    /// id ([`is_of`]).
    const PREFIX: &'static str;
    /// What it is called in errors and logs.
    const WHAT: &'static str;
    /// Its audit actions' prefix (`<AUDIT>.cancel`, `<AUDIT>.finish`) and
    /// the detail's key for its id.
    const AUDIT: &'static str;
    const ID_KEY: &'static str;
    /// What a run came to, between `execute` and `finish`.
    type Outcome: Send;

    // The record's own fields, the same in every kind: `record_fields!`.
    fn id(&self) -> &str;
    fn seq(&self) -> u64;
    fn state(&self) -> JobState;
    /// Set the state; stamps the start or the end.
    fn set_state(&mut self, state: JobState);
    fn set_failure(&mut self, failure: &str);
    fn cancel_requested(&self) -> bool;
    fn request_cancel(&mut self);
    /// The chain its lifecycle entries (cancel, interrupted) go to.
    fn chain(&self) -> &str;
    /// The group it takes a slot in, besides the global limit.
    fn slot_group(&self, limits: &JobLimits) -> SlotGroup;
    /// In the start transaction, before the record is marked running: check
    /// what the kind checks and write its start entries. `Err(failure)`:
    /// it does not run, and fails with that reason (audited here).
    fn on_start(&mut self, write: &mut Write<'_>) -> Result<std::result::Result<(), String>>;
    /// Run it. Blocking, and interrupted by `cancel`.
    fn execute(&self, app: &App, cancel: CancelToken) -> Self::Outcome;
    /// Record the end in one transaction: the record's final state, what
    /// it released and its entries. It is removed from `RUNNING` in the
    /// same transaction through [`finished`].
    fn finish(&self, app: &App, outcome: Self::Outcome, elapsed: Duration) -> Result<()>;
}

/// The accessors of [`Work`] for a record with the lifecycle's fields:
/// `id`, `seq`, `state`, `started_ms`, `finished_ms`, `failure` and
/// `cancel_requested`, all as a `Job` has them.
macro_rules! record_fields {
    () => {
        fn id(&self) -> &str {
            &self.id
        }

        fn seq(&self) -> u64 {
            self.seq
        }

        fn state(&self) -> crate::jobs::JobState {
            self.state
        }

        fn set_state(&mut self, state: crate::jobs::JobState) {
            use crate::jobs::JobState;
            self.state = state;
            match state {
                JobState::Queued => {}
                JobState::Running => self.started_ms = Some(crate::jobs::now_to_the_second()),
                _ => self.finished_ms = Some(crate::jobs::now_to_the_second()),
            }
        }

        fn set_failure(&mut self, failure: &str) {
            self.failure = Some(failure.to_owned());
        }

        fn cancel_requested(&self) -> bool {
            self.cancel_requested
        }

        fn request_cancel(&mut self) {
            self.cancel_requested = true;
        }
    };
}
pub(crate) use record_fields;

/// Whether `id` is an id of kind `W`.
fn is_of<W: Work>(id: &str) -> bool {
    crate::ids::is_id(W::PREFIX, id)
}

/// Queue `record`: stored in its table and waiting in `QUEUE`.
pub(crate) fn enqueue<W: Work>(write: &mut Write<'_>, record: &W) -> Result<(), StoreError> {
    write.put(W::TABLE, record.id(), record)?;
    write.enqueue(record.seq(), record.id())
}

/// The `seq` of a new record: its place in the queue.
pub(crate) fn next_seq(write: &mut Write<'_>) -> Result<u64, StoreError> {
    write.next_sequence(&QUEUE_SEQUENCE)
}

/// Mark `record` finished in `write`: no longer running. Every kind's
/// `finish` calls it in its transaction.
pub(crate) fn finished<W: Work>(write: &mut Write<'_>, record: &W) -> Result<(), StoreError> {
    write.remove(RUNNING, record.id()).map(drop)
}

/// Queued and running work of kind `W`, oldest queued first, then running.
pub(crate) fn unfinished<W: Work>(read: &impl RecordRead) -> Result<Vec<W>, StoreError> {
    let mut out = Vec::new();
    let running: Vec<String> = read.all(RUNNING)?;
    for id in read.queue()?.into_iter().chain(running) {
        if is_of::<W>(&id)
            && let Some(record) = read.get::<W>(W::TABLE, &id)?
        {
            out.push(record);
        }
    }
    Ok(out)
}

/// Cancel `id`: a queued one at once; a running one is marked here, and
/// the caller interrupts its run ([`Scheduler::cancel`]), whose result is
/// then discarded.
pub(crate) fn cancel<W: Work>(write: &mut Write<'_>, actor: &str, id: &str) -> Result<W> {
    let mut record: W =
        write.get(W::TABLE, id)?.ok_or_else(|| Error::NotFound(format!("{} `{id}`", W::WHAT)))?;
    match record.state() {
        JobState::Queued => {
            write.dequeue(record.seq())?;
            record.set_state(JobState::Cancelled);
        }
        // Asked already: answered as it stands, so repeating a cancel
        // cannot flood the chain.
        JobState::Running if record.cancel_requested() => return Ok(record),
        JobState::Running => record.request_cancel(),
        state => {
            return Err(Error::Conflict(format!(
                "{} `{id}` has already finished ({})",
                W::WHAT,
                state.name()
            )));
        }
    }
    write.put(W::TABLE, id, &record)?;
    let chain = record.chain().to_owned();
    write.audit(
        &chain,
        actor,
        &format!("{}.cancel", W::AUDIT),
        json!({W::ID_KEY: id, "state": record.state()}),
    )?;
    Ok(record)
}

/// At start: work a stopped daemon left running is marked failed
/// (`interrupted`); queued work stays queued and runs. Returns how many.
pub(crate) fn recover(store: &ControlStore) -> Result<usize, StoreError> {
    store.write(|w| {
        migrate(w)?;
        let mut interrupted = 0;
        let running: Vec<String> = w.all(RUNNING)?;
        for id in running {
            let ended = if is_of::<Job>(&id) {
                end_running::<Job>(w, &id, INTERRUPTED)?
            } else if is_of::<BenchmarkRun>(&id) {
                end_running::<BenchmarkRun>(w, &id, INTERRUPTED)?
            } else {
                w.remove(RUNNING, &id)?;
                false
            };
            interrupted += usize::from(ended);
        }
        Ok(interrupted)
    })
}

/// Before the one queue, benchmark runs waited outside `QUEUE` and nothing
/// listed running work: put queued runs in the queue (with a place from
/// the shared counter) and running work in `RUNNING`. Once.
fn migrate(w: &mut Write<'_>) -> Result<(), StoreError> {
    if w.setting(&QUEUE_MIGRATED)?.is_some() {
        return Ok(());
    }
    for mut run in w.all::<BenchmarkRun>(BenchmarkRun::TABLE)? {
        match run.state {
            JobState::Queued => {
                run.seq = next_seq(w)?;
                enqueue(w, &run)?;
            }
            JobState::Running => w.put(RUNNING, &run.id, &run.id)?,
            _ => {}
        }
    }
    for job in w.all::<Job>(Job::TABLE)? {
        if job.state == JobState::Running {
            w.put(RUNNING, &job.id, &job.id)?;
        }
    }
    w.set(&QUEUE_MIGRATED, &true)
}

/// End running work `id` as failed with `failure`, audited on its chain.
/// Whether it was running. Work whose chain does not verify stays as it is:
/// its entry could not be written.
fn end_running<W: Work>(w: &mut Write<'_>, id: &str, failure: &str) -> Result<bool, StoreError> {
    let Some(mut record) = w.get::<W>(W::TABLE, id)? else {
        w.remove(RUNNING, id)?;
        return Ok(false);
    };
    if record.state() != JobState::Running {
        w.remove(RUNNING, id)?;
        return Ok(false);
    }
    if w.chain_broken(record.chain()) {
        return Ok(false);
    }
    record.set_state(JobState::Failed);
    record.set_failure(failure);
    w.put(W::TABLE, id, &record)?;
    finished(w, &record)?;
    let chain = record.chain().to_owned();
    w.audit(
        &chain,
        "daemon",
        &format!("{}.finish", W::AUDIT),
        json!({W::ID_KEY: id, "outcome": JobState::Failed, "failure": failure}),
    )?;
    Ok(true)
}

/// Starts queued work within the limits and tracks what runs.
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
    per_group: HashMap<String, usize>,
    /// Work being started or run, so none is started twice, each with what
    /// interrupts it and its group.
    runs: HashMap<String, (CancelToken, String)>,
}

impl Scheduler {
    pub fn new(limits: JobLimits) -> Self {
        Self { limits, wake: Notify::new(), running: Mutex::default(), stopping: AtomicBool::new(false) }
    }

    /// Look at the queue again (after a submit or a finish).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Work running now.
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
                if let Err(e) = crate::benchmark_runs::queue_due(&app.store, now_ms()) {
                    tracing::error!(error = %e, "the benchmark schedule could not be read");
                }
                if let Err(e) = dispatch(&app) {
                    tracing::error!(error = %e, "the scheduler could not read the queue");
                }
                tokio::select! {
                    _ = app.scheduler.wake.notified() => {}
                    _ = stopped.wait_for(|stop| *stop) => break,
                    // Schedules come due without a wake-up, and a missed
                    // wake-up costs a second, not a stuck queue.
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            drop(app.scheduler.stop_starting());
        });
    }

    /// Interrupt the run of `id`, if it is running.
    pub fn cancel(&self, id: &str) {
        if let Some((cancel, _)) = self.running.lock().expect("lock").runs.get(id) {
            cancel.cancel();
        }
    }

    /// Interrupt every run: the end of a shutdown's grace.
    pub fn cancel_all(&self) {
        for (cancel, _) in self.running.lock().expect("lock").runs.values() {
            cancel.cancel();
        }
    }

    /// Stop starting work, and wait until none runs or `grace` passes.
    /// Whether all finished.
    pub async fn wait_idle(&self, grace: Duration) -> bool {
        // Under the lock a claim checks it under: no run starts after this.
        drop(self.stop_starting());
        let deadline = Instant::now() + grace;
        while self.running() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Take a slot for `id` in `group` if the limits allow; what interrupts
    /// its run.
    fn claim(&self, id: &str, group: SlotGroup) -> Option<CancelToken> {
        let mut running = self.running.lock().expect("lock");
        if self.stopping.load(Ordering::SeqCst) {
            return None;
        }
        let in_group = running.per_group.get(&group.name).copied().unwrap_or(0);
        if running.total >= self.limits.concurrent || in_group >= group.limit || running.runs.contains_key(id)
        {
            return None;
        }
        running.total += 1;
        *running.per_group.entry(group.name.clone()).or_default() += 1;
        let cancel = CancelToken::new();
        running.runs.insert(id.to_owned(), (cancel.clone(), group.name));
        Some(cancel)
    }

    fn stop_starting(&self) -> std::sync::MutexGuard<'_, Running> {
        let running = self.running.lock().expect("lock");
        self.stopping.store(true, Ordering::SeqCst);
        running
    }

    fn release(&self, id: &str) {
        let mut running = self.running.lock().expect("lock");
        let Some((_, group)) = running.runs.remove(id) else { return };
        running.total -= 1;
        if let Some(n) = running.per_group.get_mut(&group) {
            *n -= 1;
            if *n == 0 {
                running.per_group.remove(&group);
            }
        }
    }
}

/// Start what the limits allow, oldest first.
fn dispatch(app: &Arc<App>) -> Result<()> {
    let read = app.store.read()?;
    for id in read.queue()? {
        if app.scheduler.stopping.load(Ordering::SeqCst)
            || app.scheduler.running() >= app.scheduler.limits.concurrent
        {
            break;
        }
        if is_of::<Job>(&id) {
            launch::<Job>(app, &read, &id)?;
        } else if is_of::<BenchmarkRun>(&id) {
            launch::<BenchmarkRun>(app, &read, &id)?;
        } else {
            tracing::error!(%id, "the queue holds an id of no known kind");
        }
    }
    Ok(())
}

/// Start queued `id` if its slot group has room, and run it on a blocking
/// thread.
fn launch<W: Work>(app: &Arc<App>, read: &Read, id: &str) -> Result<()> {
    let Some(record) = read.get::<W>(W::TABLE, id)? else { return Ok(()) };
    let Some(cancel) = app.scheduler.claim(id, record.slot_group(&app.scheduler.limits)) else {
        return Ok(());
    };
    match start::<W>(app, id) {
        Ok(Some(record)) => {
            let app = app.clone();
            tokio::task::spawn_blocking(move || run(&app, record, cancel));
        }
        Ok(None) => {
            app.scheduler.release(id);
            app.metrics.job_finished("refused", None);
        }
        Err(e) => {
            // It stays queued; the work behind it may start.
            app.scheduler.release(id);
            tracing::error!(%id, error = %e, "cannot start {}", W::WHAT);
        }
    }
    Ok(())
}

/// Mark queued `id` running, after its kind's checks. `None`: it did not
/// start (cancelled meanwhile, or refused by its kind).
fn start<W: Work>(app: &App, id: &str) -> Result<Option<W>> {
    app.store.write(|w| {
        let Some(mut record) = w.get::<W>(W::TABLE, id)? else { return Ok(None) };
        // The queue entry goes whatever the state: a stale one would be
        // looked at again at every dispatch.
        w.dequeue(record.seq())?;
        if record.state() != JobState::Queued {
            return Ok(None);
        }
        if let Err(failure) = record.on_start(w)? {
            // It never ran: an end, no start.
            record.set_state(JobState::Failed);
            record.set_failure(&failure);
            w.put(W::TABLE, id, &record)?;
            return Ok(None);
        }
        record.set_state(JobState::Running);
        w.put(W::TABLE, id, &record)?;
        w.put(RUNNING, id, &id.to_owned())?;
        Ok(Some(record))
    })
}

/// Run started work to its end and record it. Blocking: on a blocking
/// thread. A panic or a finish that cannot be recorded ends it as failed
/// (`host-error`) if that can be written; otherwise the next start marks
/// it interrupted.
fn run<W: Work>(app: &Arc<App>, record: W, cancel: CancelToken) {
    let started = Instant::now();
    let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let outcome = record.execute(app, cancel);
        record.finish(app, outcome, started.elapsed())
    }));
    let failed = match ran {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("it panicked".to_owned()),
    };
    if let Some(reason) = failed {
        tracing::error!(id = %record.id(), %reason, "cannot record {}", W::WHAT);
        let abandoned = app.store.write(|w| end_running::<W>(w, record.id(), HOST_ERROR));
        if let Err(e) = abandoned {
            tracing::error!(id = %record.id(), error = %e, "cannot mark {} failed", W::WHAT);
        }
    }
    app.scheduler.release(record.id());
    app.scheduler.wake();
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kanon_gate::PolicyLayer;

    use super::*;
    use crate::store::JOBS;

    // Ids of the shape the daemon gives (`ids::is_id`).
    const RUN_A: &str = "brun_000000000000000000000001";
    const RUN_B: &str = "brun_000000000000000000000002";
    const RUN_QUEUED: &str = "brun_000000000000000000000003";
    const RUN_RUNNING: &str = "brun_000000000000000000000004";
    const JOB_A: &str = "job_000000000000000000000005";
    const JOB_B: &str = "job_000000000000000000000006";
    const JOB_C: &str = "job_000000000000000000000007";
    const JOB_D: &str = "job_000000000000000000000008";
    const JOB_QUEUED: &str = "job_000000000000000000000009";
    const JOB_RUNNING: &str = "job_00000000000000000000000a";

    fn job(id: &str, seq: u64, state: JobState) -> Job {
        Job {
            id: id.into(),
            seq,
            tenant: "acme".into(),
            analyst: "ana".into(),
            plugin: "0".repeat(64),
            approval: format!("apr_{}", "0".repeat(24)),
            datasets: BTreeMap::new(),
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
        }
    }

    fn run(id: &str, seq: u64, state: JobState) -> BenchmarkRun {
        BenchmarkRun {
            id: id.into(),
            seq,
            benchmark: "co2".into(),
            trigger: "benchco".into(),
            state,
            submitted_ms: 0,
            started_ms: None,
            finished_ms: None,
            failure: None,
            participants: None,
            version: None,
            stats: None,
            cancel_requested: false,
        }
    }

    #[test]
    fn a_slot_is_taken_within_the_global_and_the_group_limit_once_per_id() {
        let limits = JobLimits { concurrent: 2, per_tenant: 1, ..JobLimits::default() };
        let scheduler = Scheduler::new(limits.clone());
        let acme = job(JOB_A, 1, JobState::Queued).slot_group(&limits);
        let runs = run(RUN_A, 2, JobState::Queued).slot_group(&limits);
        assert!(scheduler.claim(JOB_A, acme.clone()).is_some());
        assert!(scheduler.claim(JOB_A, acme.clone()).is_none(), "never twice");
        assert!(scheduler.claim(JOB_B, acme.clone()).is_none(), "the tenant's one slot is taken");
        assert!(scheduler.claim(RUN_A, runs.clone()).is_some());
        assert!(scheduler.claim(RUN_B, runs.clone()).is_none(), "one benchmark run at a time");
        let other = SlotGroup { name: "tenant:other".into(), limit: 1 };
        assert!(scheduler.claim(JOB_C, other.clone()).is_none(), "the global limit is reached");
        scheduler.release(RUN_A);
        assert_eq!(scheduler.running(), 1);
        assert!(scheduler.claim(JOB_C, other).is_some(), "a released slot is free again");
        scheduler.release(JOB_A);
        scheduler.release(JOB_A);
        assert_eq!(scheduler.running(), 1, "a second release of one id frees nothing");
        scheduler.stopping.store(true, Ordering::SeqCst);
        assert!(scheduler.claim(JOB_D, acme).is_none(), "nothing starts while stopping");
    }

    #[test]
    fn a_repeated_cancel_of_running_work_writes_nothing_more() {
        let dir = tempfile::tempdir().unwrap();
        let store = ControlStore::open(dir.path()).unwrap();
        store.write(|w| w.put(JOBS, JOB_A, &job(JOB_A, 1, JobState::Running))).unwrap();
        for _ in 0..5 {
            let job: Job = store.write(|w| cancel(w, "ana", JOB_A)).unwrap();
            assert_eq!((job.state, job.cancel_requested), (JobState::Running, true));
        }
        let (chain, _) = store.read().unwrap().audit("acme").unwrap();
        assert_eq!(chain.iter().filter(|e| e.action == "job.cancel").count(), 1);
    }

    #[test]
    fn recover_queues_older_benchmark_runs_and_ends_running_work_as_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let store = ControlStore::open(dir.path()).unwrap();
        // As an older daemon left it: a queued job at place 1, a queued run
        // outside the queue with its own counter's 1, work running and
        // nothing in `RUNNING`.
        store
            .write(|w| {
                enqueue(w, &job(JOB_QUEUED, 1, JobState::Queued))?;
                w.set(&QUEUE_SEQUENCE, &2u64)?;
                w.put(JOBS, JOB_RUNNING, &job(JOB_RUNNING, 2, JobState::Running))?;
                let waiting = run(RUN_QUEUED, 1, JobState::Queued);
                w.put(BenchmarkRun::TABLE, &waiting.id, &waiting)?;
                let going = run(RUN_RUNNING, 2, JobState::Running);
                w.put(BenchmarkRun::TABLE, &going.id, &going)?;
                Ok::<_, StoreError>(())
            })
            .unwrap();
        assert_eq!(recover(&store).unwrap(), 2);
        let read = store.read().unwrap();
        assert_eq!(read.queue().unwrap(), [JOB_QUEUED, RUN_QUEUED], "oldest first, none lost");
        let queued: BenchmarkRun = read.get(BenchmarkRun::TABLE, RUN_QUEUED).unwrap().unwrap();
        assert_eq!(queued.seq, 3, "a fresh place from the shared counter");
        let ended: Job = read.get(JOBS, JOB_RUNNING).unwrap().unwrap();
        assert_eq!((ended.state, ended.failure.as_deref()), (JobState::Failed, Some(INTERRUPTED)));
        assert!(ended.finished_ms.is_some());
        let ended: BenchmarkRun = read.get(BenchmarkRun::TABLE, RUN_RUNNING).unwrap().unwrap();
        assert_eq!((ended.state, ended.failure.as_deref()), (JobState::Failed, Some(INTERRUPTED)));
        assert!(read.all::<String>(RUNNING).unwrap().is_empty());
        let (chain, _) = read.audit("acme").unwrap();
        assert_eq!(chain.len(), 1);
        assert_eq!(
            (chain[0].action.as_str(), &chain[0].detail["failure"]),
            ("job.finish", &json!(INTERRUPTED))
        );
        drop(read);

        // Once: a second start moves nothing and finds nothing running.
        assert_eq!(recover(&store).unwrap(), 0);
        assert_eq!(store.read().unwrap().queue().unwrap(), [JOB_QUEUED, RUN_QUEUED]);
    }
}
