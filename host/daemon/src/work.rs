//! Queued work: jobs, benchmark runs and whatever comes next share one
//! lifecycle. A piece of work is a record in its kind's table. It waits in
//! `QUEUE` (oldest first), the one [`Scheduler`] starts it within the
//! limits, it runs on a blocking thread with a [`CancelToken`], and it
//! finishes in one transaction. `RUNNING` lists what started and has not
//! finished, so [`recover`] at start finds it without a scan. A kind brings
//! its own checks, execution and finish through [`Work`]; the queue, the
//! slots, cancel, recovery, the failure paths and waiting for an end
//! ([`wait_for_end`]) are here, once. [`KINDS`] is the one place that names
//! the kinds.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kanon_runtime::CancelToken;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{Notify, watch};

use crate::benchmark_runs::BenchmarkRun;
use crate::config::JobLimits;
use crate::error::{Error, Result};
use crate::jobs::{Job, JobState};
use crate::store::{Committed, RUNNING, Read, RecordRead, Setting, Table, Write};
use crate::{App, ControlStore, StoreError, now_ms};

/// The counter every queued record's `seq` comes from: its place in
/// `QUEUE`. Named when jobs were the only work; databases continue it.
const QUEUE_SEQUENCE: Setting<u64> = Setting::new("job-seq");

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
/// How work whose record cannot be read is ended.
const UNREADABLE: &str = "unreadable";

/// A kind of queued work: the record, and what is particular to the kind.
pub(crate) trait Work: Serialize + DeserializeOwned + Clone + Send + 'static {
    /// Its records' table, keyed by id.
    const TABLE: Table<Self>;
    /// Its ids' prefix (`ids::JOB`, ...), which tells the kind of a queued
    /// id ([`kind_of`]).
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
    fn set_seq(&mut self, seq: u64);
    fn state(&self) -> JobState;
    /// Set the state; stamps the start or the end.
    fn set_state(&mut self, state: JobState);
    fn set_failure(&mut self, failure: &str);
    fn cancel_requested(&self) -> bool;
    fn request_cancel(&mut self);
    /// The chain its lifecycle entries (cancel, interrupted) go to.
    fn chain(&self) -> &str;
    /// The chain of a record that cannot be read as this kind, from what of
    /// it is JSON, if that names one that exists.
    fn chain_of_unreadable(
        read: &impl RecordRead,
        raw: &serde_json::Value,
    ) -> Result<Option<String>, StoreError>;
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
    /// same transaction through [`finished`]. Committed with
    /// [`ControlStore::commit`]: the lifecycle gives the slot back before
    /// it waits for the commit to be durable.
    fn finish(&self, app: &App, outcome: Self::Outcome, elapsed: Duration) -> Result<Committed>;
    /// When the lifecycle ends running work itself, as failed (the daemon
    /// stopped under it, or its finish could not be recorded): what the
    /// kind records beside that end, in the same transaction, before the
    /// record is stored.
    fn on_abandon(&mut self, _write: &mut Write<'_>) -> Result<(), StoreError> {
        Ok(())
    }
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

        fn set_seq(&mut self, seq: u64) {
            self.seq = seq;
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

/// What the lifecycle does by kind, for an id whose kind only its prefix
/// tells: each entry is the generic function for that kind.
struct Kind {
    prefix: &'static str,
    /// Start queued work found at a place, within the limits ([`launch`]).
    launch: fn(&ControlStore, &Scheduler, &Read, u64, &str) -> Result<Launch, StoreError>,
    /// End running work as failed with a reason ([`end_running`]).
    end_running: fn(&mut Write<'_>, &str, &str) -> Result<bool, StoreError>,
    /// Whether running work that no run holds can be ended ([`endable`]).
    endable: fn(&ControlStore, &Read, &str) -> Result<bool, StoreError>,
    /// Queue what says queued and list what says running ([`reconcile`]).
    reconcile: fn(&mut Write<'_>, &Listed) -> Result<(), StoreError>,
}

impl Kind {
    const fn of<W: Work>() -> Self {
        Self {
            prefix: W::PREFIX,
            launch: launch::<W>,
            end_running: end_running::<W>,
            endable: endable::<W>,
            reconcile: reconcile::<W>,
        }
    }
}

/// Every kind of work: the one place that names them. A new kind is a
/// `Work` implementation and a line here.
static KINDS: [Kind; 2] = [Kind::of::<Job>(), Kind::of::<BenchmarkRun>()];

/// The kind of `id`, by its prefix.
fn kind_of(id: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|kind| crate::ids::is_id(kind.prefix, id))
}

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
            // The record decides: cancelled whatever its place holds. A
            // place of its elsewhere is dropped when dispatch reaches it
            // (`start` finds the record no longer queued).
            if !write.dequeue(record.seq(), id)? {
                tracing::warn!(%id, place = record.seq(), "queued {} was not at its place", W::WHAT);
            }
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
/// (`interrupted`); queued work stays queued and runs. Returns how many
/// were interrupted. It first brings `QUEUE` and `RUNNING` in line with
/// the records ([`reconcile`]), on every start, so no flag says whether
/// that was done: an older daemon run in between (one from before the one
/// queue, which queues benchmark runs outside it) leaves nothing behind.
pub(crate) fn recover(store: &ControlStore) -> Result<usize, StoreError> {
    store.write(|w| {
        let listed = Listed {
            queued: w.queue()?.into_iter().collect(),
            running: w.all::<String>(RUNNING)?.into_iter().collect(),
        };
        for kind in &KINDS {
            (kind.reconcile)(w, &listed)?;
        }
        let mut interrupted = 0;
        let running: Vec<String> = w.all(RUNNING)?;
        for id in running {
            let ended = match kind_of(&id) {
                Some(kind) => (kind.end_running)(w, &id, INTERRUPTED)?,
                None => {
                    tracing::error!(%id, "work of no known kind was running; it is forgotten");
                    w.remove(RUNNING, &id)?;
                    false
                }
            };
            interrupted += usize::from(ended);
        }
        Ok(interrupted)
    })
}

/// What [`reconcile`] reads of every record: its id and state, if they
/// are in shape (the rest is skipped unread, so a large table costs little
/// memory).
#[derive(Deserialize)]
#[serde(untagged)]
enum Lifecycle {
    Known { id: String, state: JobState },
    Other(IgnoredAny),
}

/// The ids in `QUEUE` and in `RUNNING`.
struct Listed {
    queued: HashSet<String>,
    running: HashSet<String>,
}

/// Records of kind `W` that say `queued` but are not in `QUEUE` go into it
/// (with a fresh place from the shared counter), and those that say
/// `running` go into `RUNNING`: what a daemon from before the one queue
/// left, which kept benchmark runs outside it and listed nothing as
/// running. Running it again changes nothing.
fn reconcile<W: Work>(w: &mut Write<'_>, listed: &Listed) -> Result<(), StoreError> {
    for record in w.all_as::<Lifecycle, _>(W::TABLE)? {
        let Lifecycle::Known { id, state } = record else { continue };
        match state {
            JobState::Queued if !listed.queued.contains(&id) => match w.get::<W>(W::TABLE, &id) {
                Ok(Some(mut record)) => {
                    record.set_seq(next_seq(w)?);
                    enqueue(w, &record)?;
                    tracing::info!(%id, place = record.seq(), "queued {} put in the queue", W::WHAT);
                }
                Ok(None) => {}
                Err(StoreError::Corrupt { detail, .. }) => drop(end_unreadable::<W>(w, &id, &detail)?),
                Err(e) => return Err(e),
            },
            JobState::Running if !listed.running.contains(&id) => w.put(RUNNING, &id, &id)?,
            _ => {}
        }
    }
    Ok(())
}

/// End running work `id` as failed with `failure`, audited on its chain.
/// Whether it was running. Work whose chain does not verify stays as it is:
/// its entry could not be written. A record that cannot be read is ended
/// as `unreadable` ([`end_unreadable`]).
fn end_running<W: Work>(w: &mut Write<'_>, id: &str, failure: &str) -> Result<bool, StoreError> {
    let mut record = match w.get::<W>(W::TABLE, id) {
        Ok(Some(record)) => record,
        Ok(None) => {
            w.remove(RUNNING, id)?;
            return Ok(false);
        }
        Err(StoreError::Corrupt { detail, .. }) => {
            w.remove(RUNNING, id)?;
            return end_unreadable::<W>(w, id, &detail);
        }
        Err(e) => return Err(e),
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
    record.on_abandon(w)?;
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

/// End work `id` whose record cannot be read as `W` (`why`): what of it is
/// a JSON object is marked failed (`unreadable`), so nothing queues or
/// starts it again, and the end is audited on its chain where that is
/// known and verifies. The caller has taken it out of `QUEUE` or
/// `RUNNING`. Whether the record was marked.
fn end_unreadable<W: Work>(w: &mut Write<'_>, id: &str, why: &str) -> Result<bool, StoreError> {
    tracing::error!(%id, %why, "the record of {} cannot be read; it is ended as failed (`{UNREADABLE}`)", W::WHAT);
    let Some(serde_json::Value::Object(mut raw)) = w.get_as::<serde_json::Value, _>(W::TABLE, id)? else {
        return Ok(false);
    };
    raw.insert("state".into(), json!(JobState::Failed));
    raw.insert("failure".into(), json!(UNREADABLE));
    raw.insert("finished_ms".into(), json!(crate::jobs::now_to_the_second()));
    let raw = serde_json::Value::Object(raw);
    w.put_unreadable(W::TABLE, id, &raw)?;
    if let Some(chain) = W::chain_of_unreadable(&*w, &raw)?
        && !w.chain_broken(&chain)
    {
        w.audit(
            &chain,
            "daemon",
            &format!("{}.finish", W::AUDIT),
            json!({W::ID_KEY: id, "outcome": JobState::Failed, "failure": UNREADABLE}),
        )?;
    }
    Ok(true)
}

/// Whether running work `id`, which no run of this process holds, can be
/// ended now: not if it runs on a chain that does not verify (its end
/// could not be written until the operator restores one).
fn endable<W: Work>(store: &ControlStore, read: &Read, id: &str) -> Result<bool, StoreError> {
    match read.get::<W>(W::TABLE, id) {
        Ok(Some(record)) if record.state() == JobState::Running => {
            Ok(!store.broken_chains().contains_key(record.chain()))
        }
        Ok(_) | Err(StoreError::Corrupt { .. }) => Ok(true),
        Err(e) => Err(e),
    }
}

/// Work `RUNNING` lists that no run of this process holds: its run is
/// over, but neither its finish nor the `host-error` fallback could be
/// recorded (a storage failure, say). Ended as failed (`host-error`) now,
/// on the scheduler's tick, rather than at the next start. The ids ended.
fn reap(store: &ControlStore, scheduler: &Scheduler) -> Result<Vec<String>, StoreError> {
    let read = store.read_for_change()?;
    let listed: Vec<String> = read.all(RUNNING)?;
    // A run is claimed before its start commits to `RUNNING`, and released
    // only after its end was tried: listed and unclaimed, its run is over.
    let orphans: Vec<String> = listed.into_iter().filter(|id| !scheduler.holds(id)).collect();
    let mut endable_orphans = Vec::new();
    for id in orphans {
        // Of no known kind: recover forgets it at the next start.
        if let Some(kind) = kind_of(&id)
            && (kind.endable)(store, &read, &id)?
        {
            endable_orphans.push((kind, id));
        }
    }
    drop(read);
    if endable_orphans.is_empty() {
        return Ok(Vec::new());
    }
    let ended = store.write(|w| {
        let mut ended = Vec::new();
        for (kind, id) in endable_orphans {
            // Looked at again in the transaction: ending work that is not
            // running, or not listed, writes nothing but its removal.
            if (kind.end_running)(w, &id, HOST_ERROR)? {
                ended.push(id);
            }
        }
        Ok::<_, StoreError>(ended)
    })?;
    for id in &ended {
        tracing::warn!(%id, "work whose end could not be recorded is ended as failed ({HOST_ERROR})");
        scheduler.ended(id);
    }
    Ok(ended)
}

/// Work `id` once it has ended, or as it stands once `wait` is over or the
/// daemon stops: what `GET …?wait=` answers. Woken by the lifecycle's
/// [`Scheduler::ended`]; a waiter holds nothing but its receivers.
///
/// A wait holds one of the daemon's request slots while it lasts, so waits
/// are budgeted ([`WaitBudget`]): one beyond the budget answers at once, as
/// a wait of zero would, and the client asks again after a pause.
pub(crate) async fn wait_for_end<W: Work>(app: &App, who: &str, id: &str, wait: Duration) -> Result<W> {
    let budget = WaitBudget::of(app.config.limits.max_concurrent_requests);
    let _slot = app.scheduler.wait_slot(who, budget);
    let wait = if _slot.is_some() { wait } else { Duration::ZERO };
    let deadline = tokio::time::Instant::now() + wait;
    let end = app.scheduler.watch_end(id);
    let mut stopping = app.scheduler.stopping.subscribe();
    loop {
        // Enabled before the record is read: an end in between is not missed.
        let ended = end.notify.notified();
        tokio::pin!(ended);
        ended.as_mut().enable();
        let record: W = app
            .store
            .read()?
            .get(W::TABLE, id)?
            .ok_or_else(|| Error::NotFound(format!("{} `{id}`", W::WHAT)))?;
        if record.state().is_final()
            || *stopping.borrow_and_update()
            || tokio::time::Instant::now() >= deadline
        {
            return Ok(record);
        }
        tokio::select! {
            () = ended => {}
            () = tokio::time::sleep_until(deadline) => {}
            _ = stopping.changed() => {}
        }
    }
}

/// Waiting for the end of one piece of work: its entry in
/// [`Scheduler::watched`], shared by everyone waiting for it and removed
/// with the last of them.
struct EndWatch<'a> {
    scheduler: &'a Scheduler,
    id: String,
    notify: Arc<Notify>,
}

impl Drop for EndWatch<'_> {
    fn drop(&mut self) {
        let mut watched = self.scheduler.watched.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Clones are made and dropped under this lock only: two are the
        // map's and this one's.
        if Arc::strong_count(&self.notify) == 2 {
            watched.remove(&self.id);
        }
    }
}

/// Starts queued work within the limits, tracks what runs, and tells
/// waiters when work ends.
#[derive(Debug)]
pub(crate) struct Scheduler {
    limits: JobLimits,
    wake: Notify,
    running: Mutex<Running>,
    /// Set once a shutdown began: no run starts, and waiters answer.
    stopping: watch::Sender<bool>,
    /// Work someone waits for the end of ([`wait_for_end`]), by id: an end
    /// wakes its own waiters only. As large as the waits under way, which
    /// the wait budget bounds.
    watched: Mutex<HashMap<String, Arc<Notify>>>,
    /// Waits under way: in all, and by caller.
    waits: Mutex<(usize, HashMap<String, usize>)>,
}

/// How many waits may be under way: at most half the request slots in
/// all, so the other half stays free for everything else, and a quarter of
/// those for one caller, so no token takes them all.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WaitBudget {
    pub all: usize,
    pub per_caller: usize,
}

impl WaitBudget {
    pub(crate) fn of(max_concurrent_requests: usize) -> Self {
        let all = max_concurrent_requests / 2;
        Self { all, per_caller: all.div_ceil(4) }
    }
}

/// A wait under way, counted until it is dropped.
pub(crate) struct WaitSlot<'a> {
    scheduler: &'a Scheduler,
    who: String,
}

impl Drop for WaitSlot<'_> {
    fn drop(&mut self) {
        let mut waits = self.scheduler.waits.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        waits.0 -= 1;
        if let Some(mine) = waits.1.get_mut(&self.who) {
            *mine -= 1;
            if *mine == 0 {
                waits.1.remove(&self.who);
            }
        }
    }
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
        Self {
            limits,
            wake: Notify::new(),
            running: Mutex::default(),
            stopping: watch::Sender::new(false),
            watched: Mutex::default(),
            waits: Mutex::default(),
        }
    }

    /// A wait for `who`, if the budget has room for it.
    pub(crate) fn wait_slot(&self, who: &str, budget: WaitBudget) -> Option<WaitSlot<'_>> {
        let mut waits = self.waits.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mine = waits.1.get(who).copied().unwrap_or(0);
        if waits.0 >= budget.all || mine >= budget.per_caller {
            return None;
        }
        waits.0 += 1;
        *waits.1.entry(who.to_owned()).or_default() += 1;
        Some(WaitSlot { scheduler: self, who: who.to_owned() })
    }

    /// Look at the queue again (after a submit or a finish).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Work running now.
    pub fn running(&self) -> usize {
        self.running.lock().expect("lock").total
    }

    /// Tell waiters that `id` ended (or may have: they read it again).
    fn ended(&self, id: &str) {
        let watched = self.watched.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(notify) = watched.get(id) {
            notify.notify_waiters();
        }
    }

    /// Be told when `id` ends ([`Scheduler::ended`]).
    fn watch_end(&self, id: &str) -> EndWatch<'_> {
        let mut watched = self.watched.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let notify = watched.entry(id.to_owned()).or_default().clone();
        EndWatch { scheduler: self, id: id.to_owned(), notify }
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
                if let Err(e) = reap(&app.store, &app.scheduler) {
                    tracing::error!(error = %e, "work whose end was not recorded could not be ended");
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

    /// After a cancel of `id` committed: interrupt its run if it runs;
    /// otherwise it was queued, and the cancel ended it.
    pub fn cancel(&self, id: &str) {
        let running = self.running.lock().expect("lock");
        match running.runs.get(id) {
            Some((cancel, _)) => cancel.cancel(),
            None => {
                drop(running);
                self.ended(id);
            }
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

    fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Whether a run of `id` is being started or runs.
    fn holds(&self, id: &str) -> bool {
        self.running.lock().expect("lock").runs.contains_key(id)
    }

    /// Take a slot for `id` in `group` if the limits allow; what interrupts
    /// its run.
    fn claim(&self, id: &str, group: SlotGroup) -> Option<CancelToken> {
        let mut running = self.running.lock().expect("lock");
        if self.is_stopping() {
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
        self.stopping.send_replace(true);
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

/// Started work, to run on a blocking thread.
type Started = Box<dyn FnOnce(&Arc<App>) + Send>;

/// What [`launch`] did with a queued piece.
enum Launch {
    Started(Started),
    /// It did not start and will not: cancelled meanwhile, or refused by
    /// its kind.
    Refused,
    /// It left the queue unread: its record is missing or cannot be read.
    Dropped,
    /// It waits: no slot, or its start failed and is tried again.
    Waits,
}

/// Start what the limits allow, oldest first. A piece that cannot be read
/// is ended and the pass goes on; only a storage failure ends the pass.
fn dispatch(app: &Arc<App>) -> Result<(), StoreError> {
    for started in start_queued(&app.store, &app.scheduler)? {
        match started {
            Launch::Started(run) => {
                let app = app.clone();
                tokio::task::spawn_blocking(move || run(&app));
            }
            Launch::Refused => app.metrics.job_finished("refused", None),
            Launch::Dropped => app.metrics.job_finished("failed", None),
            Launch::Waits => {}
        }
    }
    Ok(())
}

/// The dispatch pass without the threads: what each queued piece came to.
fn start_queued(store: &ControlStore, scheduler: &Scheduler) -> Result<Vec<Launch>, StoreError> {
    let read = store.read_for_change()?;
    let mut launched = Vec::new();
    for (place, id) in read.queue_places()? {
        if scheduler.is_stopping() || scheduler.running() >= scheduler.limits.concurrent {
            break;
        }
        let Some(kind) = kind_of(&id) else {
            tracing::error!(%id, place, "the queue holds an id of no known kind; it leaves the queue");
            store.write(|w| w.dequeue(place, &id))?;
            continue;
        };
        launched.push((kind.launch)(store, scheduler, &read, place, &id)?);
    }
    Ok(launched)
}

/// Start `id`, queued at `place`, if its slot group has room.
fn launch<W: Work>(
    store: &ControlStore,
    scheduler: &Scheduler,
    read: &Read,
    place: u64,
    id: &str,
) -> Result<Launch, StoreError> {
    let record = match read.get::<W>(W::TABLE, id) {
        Ok(Some(record)) => record,
        Ok(None) => return drop_queued::<W>(store, scheduler, place, id, "its record is missing"),
        Err(StoreError::Corrupt { detail, .. }) => {
            return drop_queued::<W>(store, scheduler, place, id, &detail);
        }
        Err(e) => return Err(e),
    };
    let Some(cancel) = scheduler.claim(id, record.slot_group(&scheduler.limits)) else {
        return Ok(Launch::Waits);
    };
    match start::<W>(store, place, id) {
        Ok(Some(record)) => Ok(Launch::Started(Box::new(move |app: &Arc<App>| run(app, record, cancel)))),
        Ok(None) => {
            scheduler.release(id);
            scheduler.ended(id);
            Ok(Launch::Refused)
        }
        Err(e) => {
            // It stays queued; the work behind it may start.
            scheduler.release(id);
            tracing::error!(%id, error = %e, "cannot start {}", W::WHAT);
            Ok(Launch::Waits)
        }
    }
}

/// Take `id` out of `place` when its record is missing or cannot be read
/// (`why`): one such piece must not hold up the queue behind it. A record
/// that is there is ended as `unreadable`.
fn drop_queued<W: Work>(
    store: &ControlStore,
    scheduler: &Scheduler,
    place: u64,
    id: &str,
    why: &str,
) -> Result<Launch, StoreError> {
    store.write(|w| {
        if !w.dequeue(place, id)? {
            return Ok(());
        }
        match w.get::<W>(W::TABLE, id) {
            Ok(Some(_)) => {}
            Ok(None) => {
                tracing::error!(%id, place, %why, "queued {} has no record; it leaves the queue", W::WHAT)
            }
            Err(StoreError::Corrupt { .. }) => drop(end_unreadable::<W>(w, id, why)?),
            Err(e) => return Err(e),
        }
        Ok(())
    })?;
    scheduler.ended(id);
    Ok(Launch::Dropped)
}

/// Mark `id`, queued at `place`, running after its kind's checks. `None`:
/// it did not start (cancelled or started meanwhile, or refused by its
/// kind). The run does not wait for the start to be durable: whatever it
/// makes is recorded by its finish, durable only after the start. A crash
/// before then leaves it queued (it runs again) or running (it is ended as
/// interrupted); neither lets a result out.
fn start<W: Work>(store: &ControlStore, place: u64, id: &str) -> Result<Option<W>> {
    let (started, _durable_with_the_finish) = store.commit(|w| {
        // The place goes whatever the state: a stale one would be looked
        // at again at every dispatch. Holding another id, it is not ours.
        if !w.dequeue(place, id)? {
            return Ok(None);
        }
        let Some(mut record) = w.get::<W>(W::TABLE, id)? else { return Ok(None) };
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
        Ok::<_, Error>(Some(record))
    })?;
    Ok(started)
}

/// A claimed slot, given back however its run ends (a panic while its end
/// is recorded included), which also tells waiters and the scheduler.
struct Slot<'a> {
    app: &'a App,
    id: String,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.app.scheduler.release(&self.id);
        self.app.scheduler.ended(&self.id);
        self.app.scheduler.wake();
    }
}

/// Run started work to its end and record it. Blocking: on a blocking
/// thread. A panic or a finish that cannot be recorded ends it as failed
/// (`host-error`) if that can be written; otherwise the scheduler's next
/// tick tries again ([`reap`]).
fn run<W: Work>(app: &Arc<App>, record: W, cancel: CancelToken) {
    let slot = Slot { app, id: record.id().to_owned() };
    let started = Instant::now();
    let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let outcome = record.execute(app, cancel);
        record.finish(app, outcome, started.elapsed())
    }));
    let failed = match ran {
        Ok(Ok(committed)) => {
            // The next run need not wait for this one's fsync. Its waiters
            // read through the barrier, so see the end once it is durable.
            drop(slot);
            if let Err(e) = committed.durable() {
                // Gone with the failed commit: the reopened file has it
                // running (the scheduler's reaping ends it) or queued.
                tracing::error!(id = %record.id(), error = %e, "the end of {} was not made durable", W::WHAT);
            }
            return;
        }
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("it panicked".to_owned()),
    };
    if let Some(reason) = failed {
        tracing::error!(id = %record.id(), %reason, "cannot record {}", W::WHAT);
        let abandoned = app.store.write(|w| end_running::<W>(w, record.id(), HOST_ERROR));
        if let Err(e) = abandoned {
            tracing::error!(id = %record.id(), error = %e, "cannot mark {} failed; tried again shortly", W::WHAT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::tests::job;
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
            replay_of: None,
            rho_charged_nanos: 0,
            stats: None,
            cancel_requested: false,
        }
    }

    #[test]
    fn waits_are_budgeted_in_all_and_by_caller_and_given_back() {
        let scheduler = Scheduler::new(JobLimits::default());
        let budget = WaitBudget::of(16);
        assert_eq!((budget.all, budget.per_caller), (8, 2));
        let mallory: Vec<_> = (0..2).map(|_| scheduler.wait_slot("mallory", budget).unwrap()).collect();
        assert!(scheduler.wait_slot("mallory", budget).is_none(), "one caller holds a quarter at most");
        let others: Vec<_> =
            (0..6).map(|i| scheduler.wait_slot(&format!("analyst-{}", i / 2), budget).unwrap()).collect();
        assert!(scheduler.wait_slot("someone", budget).is_none(), "half the request slots at most");
        drop(mallory);
        assert!(scheduler.wait_slot("someone", budget).is_some());
        drop(others);
        assert_eq!(scheduler.waits.lock().unwrap().0, 0);
        assert!(scheduler.waits.lock().unwrap().1.is_empty(), "nothing kept per caller");
        // The smallest configuration still lets one wait.
        let one = WaitBudget::of(2);
        assert_eq!((one.all, one.per_caller), (1, 1));
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
        scheduler.stopping.send_replace(true);
        assert!(scheduler.claim(JOB_D, acme).is_none(), "nothing starts while stopping");
    }

    #[test]
    fn privacy_charges_left_by_a_crash_stay_spent_and_are_settled_once() {
        use crate::budget::{self, ChargeState, Standing, Terms};
        let dir = tempfile::tempdir().unwrap();
        let terms = Terms { budget_nanos: 100, window_days: 30, dp_required: true };
        {
            let store = ControlStore::open(dir.path()).unwrap();
            store
                .write(|w| {
                    w.put(JOBS, JOB_RUNNING, &job(JOB_RUNNING, 1, JobState::Running))?;
                    w.put(RUNNING, JOB_RUNNING, &JOB_RUNNING.to_owned())?;
                    budget::reserve(w, terms, "acme", JOB_RUNNING, "ana", 40, now_ms())?.unwrap();
                    // A benchmark run charged two tenants.
                    let going = run(RUN_RUNNING, 2, JobState::Running);
                    w.put(BenchmarkRun::TABLE, &going.id, &going)?;
                    w.put(RUNNING, RUN_RUNNING, &RUN_RUNNING.to_owned())?;
                    let both = [("acme", terms), ("beta", terms)];
                    budget::reserve_all(w, &both, RUN_RUNNING, "benchco", 30, now_ms())?.unwrap();
                    Ok::<_, Error>(())
                })
                .unwrap();
            // The daemon stops here, after the durable reservations and
            // before the runs' finish; meanwhile beta's chain is edited.
            let mut entry = store.read().unwrap().audit("beta").unwrap().0[0].clone();
            entry.detail = json!({"run": "forged"});
            store.write(|w| w.raw_audit_insert("beta", 1, &crate::store::encode(&entry))).unwrap();
        }
        let store = ControlStore::open(dir.path()).unwrap();
        assert_eq!(store.verify_chains().unwrap().keys().collect::<Vec<_>>(), ["beta"]);
        assert_eq!(recover(&store).unwrap(), 2, "a broken chain keeps no run from ending");
        let read = store.read().unwrap();
        let job: Job = read.get(JOBS, JOB_RUNNING).unwrap().unwrap();
        assert_eq!(
            (job.state, job.failure.as_deref(), job.rho_charged_nanos),
            (JobState::Failed, Some(INTERRUPTED), 40)
        );
        let ended: BenchmarkRun = read.get(BenchmarkRun::TABLE, RUN_RUNNING).unwrap().unwrap();
        assert_eq!(
            (ended.state, ended.failure.as_deref(), ended.rho_charged_nanos),
            (JobState::Failed, Some(INTERRUPTED), 30)
        );
        // Settled where the chain takes the entry; reserved, which counts
        // the same, where it does not.
        for (tenant, charged, state) in
            [("acme", 70, ChargeState::Spent), ("beta", 30, ChargeState::Reserved)]
        {
            let standing = Standing::of(&read, tenant, terms, now_ms()).unwrap();
            assert_eq!(standing.charged_nanos, charged, "{tenant}: never refunded");
            assert!(standing.charges.iter().all(|c| c.state == state), "{tenant}");
        }
        drop(read);
        assert_eq!(recover(&store).unwrap(), 0);
        let (chain, _) = store.read().unwrap().audit("acme").unwrap();
        let privacy: Vec<&str> =
            chain.iter().map(|e| e.action.as_str()).filter(|a| a.starts_with("privacy.")).collect();
        let settled_once = ["privacy.reserve", "privacy.reserve", "privacy.settle", "privacy.settle"];
        assert_eq!(privacy, settled_once);
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

        // Again: nothing moves, nothing is found running.
        assert_eq!(recover(&store).unwrap(), 0);
        assert_eq!(store.read().unwrap().queue().unwrap(), [JOB_QUEUED, RUN_QUEUED]);
    }

    #[test]
    fn recover_queues_a_run_an_older_daemon_queued_after_a_downgrade() {
        let dir = tempfile::tempdir().unwrap();
        let store = ControlStore::open(dir.path()).unwrap();
        // A database this lifecycle already ran on (the flag of the
        // one-time migration that came before is set), then an older
        // daemon queued a run outside the queue, with a place of its own.
        store
            .write(|w| {
                w.set(&Setting::<bool>::new("work-queue-v2"), &true)?;
                enqueue(w, &job(JOB_QUEUED, 1, JobState::Queued))?;
                w.set(&QUEUE_SEQUENCE, &1u64)?;
                let waiting = run(RUN_QUEUED, 1, JobState::Queued);
                w.put(BenchmarkRun::TABLE, &waiting.id, &waiting)
            })
            .unwrap();
        for _ in 0..3 {
            recover(&store).unwrap();
            let read = store.read().unwrap();
            assert_eq!(read.queue_places().unwrap(), [(1, JOB_QUEUED.into()), (2, RUN_QUEUED.into())]);
            let queued: BenchmarkRun = read.get(BenchmarkRun::TABLE, RUN_QUEUED).unwrap().unwrap();
            assert_eq!(queued.seq, 2, "its place in the queue, once");
        }
    }

    #[test]
    fn a_dequeue_takes_a_place_only_from_its_own_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = ControlStore::open(dir.path()).unwrap();
        // Job A's record names place 1, which holds job B: a cancel of A
        // must not take B out of the queue.
        store
            .write(|w| {
                enqueue(w, &job(JOB_B, 1, JobState::Queued))?;
                w.put(JOBS, JOB_A, &job(JOB_A, 1, JobState::Queued))
            })
            .unwrap();
        store
            .write(|w| {
                assert!(!w.dequeue(1, JOB_A)?, "place 1 is not A's");
                assert!(!w.dequeue(2, JOB_A)?, "an empty place");
                Ok::<_, StoreError>(())
            })
            .unwrap();
        let cancelled: Job = store.write(|w| cancel(w, "ana", JOB_A)).unwrap();
        assert_eq!(cancelled.state, JobState::Cancelled);
        assert_eq!(store.read().unwrap().queue().unwrap(), [JOB_B], "B still waits");
        store.write(|w| w.dequeue(1, JOB_B)).map(|taken| assert!(taken)).unwrap();
        assert!(store.read().unwrap().queue().unwrap().is_empty());
    }

    #[test]
    fn an_unreadable_or_missing_queued_record_leaves_the_queue_and_the_rest_starts() {
        let dir = tempfile::tempdir().unwrap();
        let store = ControlStore::open(dir.path()).unwrap();
        store
            .write(|w| {
                w.put_unreadable(crate::store::TENANTS, "acme", &json!({"name": "acme"}))?;
                // A job record this daemon cannot read (fields missing), a
                // queued id with no record, then a readable run.
                let unreadable = json!({"id": JOB_A, "seq": 1, "tenant": "acme", "state": "queued"});
                w.put_unreadable(JOBS, JOB_A, &unreadable)?;
                w.enqueue(1, JOB_A)?;
                w.enqueue(2, JOB_B)?;
                enqueue(w, &run(RUN_A, 3, JobState::Queued))
            })
            .unwrap();
        let scheduler = Scheduler::new(JobLimits::default());
        let launched = start_queued(&store, &scheduler).unwrap();
        let what: Vec<&str> = launched
            .iter()
            .map(|l| match l {
                Launch::Started(_) => "started",
                Launch::Refused => "refused",
                Launch::Dropped => "dropped",
                Launch::Waits => "waits",
            })
            .collect();
        assert_eq!(what, ["dropped", "dropped", "started"]);
        let read = store.read().unwrap();
        assert!(read.queue().unwrap().is_empty());
        let dropped: serde_json::Value = read.get_as(JOBS, JOB_A).unwrap().unwrap();
        assert_eq!((&dropped["state"], &dropped["failure"]), (&json!("failed"), &json!(UNREADABLE)));
        let (chain, _) = read.audit("acme").unwrap();
        assert_eq!(chain.len(), 1);
        assert_eq!((chain[0].action.as_str(), &chain[0].detail["job"]), ("job.finish", &json!(JOB_A)));
        let started: BenchmarkRun = read.get(BenchmarkRun::TABLE, RUN_A).unwrap().unwrap();
        assert_eq!(started.state, JobState::Running);
        assert!(scheduler.holds(RUN_A));
        drop(read);

        // Ended, it is not queued again at the next start.
        recover(&store).unwrap();
        assert_eq!(store.read().unwrap().queue().unwrap(), Vec::<String>::new());
    }

    #[test]
    fn running_work_no_run_holds_is_ended_on_the_tick() {
        let dir = tempfile::tempdir().unwrap();
        let store = ControlStore::open(dir.path()).unwrap();
        let limits = JobLimits::default();
        let scheduler = Scheduler::new(limits.clone());
        // Job A's run is over, but neither its finish nor the fallback
        // could be recorded: `RUNNING` lists it and no slot holds it. Run B
        // still runs.
        store
            .write(|w| {
                w.put(JOBS, JOB_A, &job(JOB_A, 1, JobState::Running))?;
                w.put(RUNNING, JOB_A, &JOB_A.to_owned())?;
                let going = run(RUN_A, 2, JobState::Running);
                w.put(BenchmarkRun::TABLE, &going.id, &going)?;
                w.put(RUNNING, RUN_A, &RUN_A.to_owned())
            })
            .unwrap();
        let group = run(RUN_A, 2, JobState::Running).slot_group(&limits);
        assert!(scheduler.claim(RUN_A, group).is_some());
        let (end_a, end_b) = (scheduler.watch_end(JOB_A), scheduler.watch_end(RUN_A));
        {
            let (told_a, told_b) = (end_a.notify.notified(), end_b.notify.notified());
            tokio::pin!(told_a, told_b);
            told_a.as_mut().enable();
            told_b.as_mut().enable();
            assert_eq!(reap(&store, &scheduler).unwrap(), [JOB_A]);
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(told_a.as_mut().poll(&mut cx).is_ready(), "its waiters are told");
            assert!(told_b.as_mut().poll(&mut cx).is_pending(), "no other's");
        }
        drop((end_a, end_b));
        assert!(scheduler.watched.lock().unwrap().is_empty(), "the last waiter takes the entry");
        let read = store.read().unwrap();
        let ended: Job = read.get(JOBS, JOB_A).unwrap().unwrap();
        assert_eq!((ended.state, ended.failure.as_deref()), (JobState::Failed, Some(HOST_ERROR)));
        assert_eq!(read.all::<String>(RUNNING).unwrap(), [RUN_A]);
        let (chain, _) = read.audit("acme").unwrap();
        assert_eq!(chain.iter().filter(|e| e.action == "job.finish").count(), 1);
        drop(read);
        assert!(reap(&store, &scheduler).unwrap().is_empty(), "once");
    }

    #[test]
    fn each_kind_is_told_by_its_ids_prefix() {
        assert_eq!(kind_of(JOB_A).map(|k| k.prefix), Some(crate::ids::JOB));
        assert_eq!(kind_of(RUN_A).map(|k| k.prefix), Some(crate::ids::BENCHMARK_RUN));
        assert!(kind_of("apr_000000000000000000000001").is_none());
        let prefixes: HashSet<&str> = KINDS.iter().map(|k| k.prefix).collect();
        assert_eq!(prefixes.len(), KINDS.len(), "each kind once");
    }
}
