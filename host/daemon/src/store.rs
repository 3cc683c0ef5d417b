//! The daemon's own state: tokens, tenants, plugins, approvals, jobs,
//! results, support grants and the audit chains, in one redb file
//! (`control.redb`) beside the vault's.
//!
//! Every change goes through [`ControlStore::write`], which hands out one
//! write transaction: a state change and the audit entries it causes commit
//! together or not at all. Changes commit in groups (one fsync for many),
//! and `read` shows only durable changes; see `GroupCommit`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Weak};

use kanon_vault::redb_file::{self, Handle, Reopening, StorageFailure};
use redb::{Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;

use std::collections::{BTreeMap, BTreeSet};

use kanon_client::SupportGrant;
use kanon_gate::{Release, ReleaseHistory};

use crate::approvals::Approval;
use crate::audit::{AuditEntry, AuditHead, ChainVerifier, NextEntry};
use crate::auth::TokenRecord;
use crate::benchmark_runs::{BenchmarkRun, BenchmarkVersion};
use crate::benchmarks::{Benchmark, OptIn};
use crate::budget::Charge;
use crate::enrolment::EnrolmentRecord;
use crate::jobs::{Job, JobState};
use crate::pending::Intent;
use crate::registry::PluginRecord;
use crate::sealed::Sealed;
use crate::tenants::TenantRecord;

/// The control database's file name inside the data directory.
pub const CONTROL_FILE: &str = "control.redb";

/// The last storage probe's time: a small commit to learn whether storage
/// works again.
const STORAGE_PROBE: Setting<u64> = Setting::new("storage-probe");

/// A table's raw form: keys are names or ids, values JSON.
type RawTable = TableDefinition<'static, &'static str, &'static [u8]>;

/// A table of records of one type, keyed by name or id. The handle fixes
/// the type, so no caller reads a record as another. Its listings find
/// records by a field with a range, not a scan: each `put` and `remove`
/// keeps them in `LISTINGS`, in the same transaction as the record.
pub(crate) struct Table<R: 'static> {
    name: &'static str,
    listings: &'static [Listing<R>],
}

impl<R> Clone for Table<R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R> Copy for Table<R> {}

impl<R> Table<R> {
    pub(crate) const fn new(name: &'static str) -> Self {
        Self { name, listings: &[] }
    }

    /// A table whose records are also found through `listings`.
    pub(crate) const fn listed(name: &'static str, listings: &'static [Listing<R>]) -> Self {
        Self { name, listings }
    }

    const fn raw(self) -> RawTable {
        TableDefinition::new(self.name)
    }
}

/// Records of a table found by one of their fields: `of` is the value a
/// record is listed under (`None`: not listed). A listing's name is unique
/// across tables; it is part of every entry's key in `LISTINGS`.
pub(crate) struct Listing<R: 'static> {
    name: &'static str,
    of: fn(&R) -> Option<&str>,
}

impl<R> Clone for Listing<R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R> Copy for Listing<R> {}

impl<R> Listing<R> {
    pub(crate) const fn new(name: &'static str, of: fn(&R) -> Option<&str>) -> Self {
        Self { name, of }
    }
}

/// One typed entry of `meta`: a flag, a counter, the token key. `of` makes
/// one of a family (`benchmark-member:` and a tenant).
pub(crate) struct Setting<T> {
    key: std::borrow::Cow<'static, str>,
    value: std::marker::PhantomData<fn() -> T>,
}

impl<T> Setting<T> {
    pub(crate) const fn new(key: &'static str) -> Self {
        Self { key: std::borrow::Cow::Borrowed(key), value: std::marker::PhantomData }
    }

    /// The member `name` of this family.
    pub(crate) fn of(&self, name: &str) -> Self {
        Self { key: format!("{}{name}", self.key).into(), value: std::marker::PhantomData }
    }
}

const META: RawTable = TableDefinition::new("meta");
pub(crate) const TOKENS_OF_TENANT: Listing<TokenRecord> =
    Listing::new("tokens.tenant", |t| t.tenant.as_deref());
pub(crate) const TOKENS_OF_HOLDER: Listing<TokenRecord> = Listing::new("tokens.holder", |t| Some(&t.name));
pub(crate) const TOKENS: Table<TokenRecord> = Table::listed("tokens", &[TOKENS_OF_TENANT, TOKENS_OF_HOLDER]);
pub(crate) const TENANTS: Table<TenantRecord> = Table::new("tenants");
pub(crate) const PLUGINS: Table<PluginRecord> = Table::new("plugins");
pub(crate) const APPROVALS_OF_TENANT: Listing<Approval> =
    Listing::new("approvals.tenant", |a| Some(&a.tenant));
pub(crate) const APPROVALS_OF_ANALYST: Listing<Approval> =
    Listing::new("approvals.analyst", |a| Some(&a.analyst));
pub(crate) const APPROVALS_OF_PLUGIN: Listing<Approval> =
    Listing::new("approvals.plugin", |a| Some(&a.plugin));
pub(crate) const APPROVALS: Table<Approval> =
    Table::listed("approvals", &[APPROVALS_OF_TENANT, APPROVALS_OF_ANALYST, APPROVALS_OF_PLUGIN]);
pub(crate) const JOBS_OF_TENANT: Listing<Job> = Listing::new("jobs.tenant", |j| Some(&j.tenant));
pub(crate) const JOBS_OF_ANALYST: Listing<Job> = Listing::new("jobs.analyst", |j| Some(&j.analyst));
/// A tenant's jobs waiting to start: what its queue limit counts.
pub(crate) const QUEUED_JOBS_OF_TENANT: Listing<Job> =
    Listing::new("jobs.queued.tenant", |j| (j.state == JobState::Queued).then_some(j.tenant.as_str()));
pub(crate) const JOBS: Table<Job> =
    Table::listed("jobs", &[JOBS_OF_TENANT, JOBS_OF_ANALYST, QUEUED_JOBS_OF_TENANT]);
/// A job's release, by job id.
pub(crate) const RESULTS: Table<Release> = Table::new("results");
/// A job's or a benchmark run's owner log, sealed under the tenant's key.
pub(crate) const OWNER_LOGS: Table<Sealed> = Table::new("owner_logs");
pub(crate) const GRANTS_OF_TENANT: Listing<SupportGrant> = Listing::new("grants.tenant", |g| Some(&g.tenant));
pub(crate) const GRANTS: Table<SupportGrant> = Table::listed("grants", &[GRANTS_OF_TENANT]);
/// Published benchmarks, by name.
pub(crate) const BENCHMARKS_OF_PLUGIN: Listing<Benchmark> =
    Listing::new("benchmarks.plugin", |b| Some(&b.plugin));
pub(crate) const BENCHMARKS: Table<Benchmark> = Table::listed("benchmarks", &[BENCHMARKS_OF_PLUGIN]);
/// `benchmark/tenant` to the tenant's opt-in.
pub(crate) const OPT_INS: Table<OptIn> = Table::new("opt_ins");
/// Benchmark runs, by id.
pub(crate) const RUNS_OF_BENCHMARK: Listing<BenchmarkRun> =
    Listing::new("benchmark_runs.benchmark", |r| Some(&r.benchmark));
pub(crate) const BENCHMARK_RUNS: Table<BenchmarkRun> = Table::listed("benchmark_runs", &[RUNS_OF_BENCHMARK]);
/// The meta data vault: `benchmark/version` (zero-padded) to the released
/// tables, the vendor's. Names no tenant, holds no tenant's own value.
pub(crate) const META_VAULT: Table<BenchmarkVersion> = Table::new("meta_vault");
/// Per benchmark, the tenant sets each cell was released with: the
/// subtraction rule's memory. Host-internal, never served.
pub(crate) const RELEASE_HISTORY: Table<ReleaseHistory> = Table::new("release_history");
/// `benchmark/version/tenant` to the tenant's own position, sealed under
/// its data key.
pub(crate) const POSITIONS: Table<Sealed> = Table::new("positions");
/// A job request's key (`jobs::request_key`) to the job whose release answers
/// it.
pub(crate) const REPLAYS: Table<String> = Table::new("replays");
/// One-time enrolment codes of tenant admins, by id: only a keyed hash of
/// each secret.
pub(crate) const ENROLMENTS_OF_TENANT: Listing<EnrolmentRecord> =
    Listing::new("enrolments.tenant", |e| Some(&e.tenant));
pub(crate) const ENROLMENTS: Table<EnrolmentRecord> = Table::listed("enrolments", &[ENROLMENTS_OF_TENANT]);
/// Dataset changes begun and not yet audited (`pending`), by id.
pub(crate) const PENDING: Table<Intent> = Table::new("pending_changes");
/// Work that started and has not finished: id to id.
pub(crate) const RUNNING: Table<String> = Table::new("running");
/// A differentially private benchmark request's key
/// (`benchmark_runs::request_key`) to the version that answers it.
pub(crate) const BENCHMARK_REPLAYS: Table<u64> = Table::new("benchmark_replays");
/// The privacy-budget ledger ([`crate::budget`]): `tenant/run` to the run's
/// charge, listed by run (a benchmark run charges every participant).
/// Never deleted: the window is applied as charges are read.
pub(crate) const CHARGES_OF_RUN: Listing<Charge> = Listing::new("charges.run", |c| Some(&c.run));
pub(crate) const PRIVACY_CHARGES: Table<Charge> = Table::listed("privacy_charges", &[CHARGES_OF_RUN]);
const AUDIT_HEADS: Table<AuditHead> = Table::new("audit_heads");

/// Queued work (jobs, benchmark runs) in submission order: sequence number
/// to id.
const QUEUE: TableDefinition<u64, &str> = TableDefinition::new("queue");
/// (chain, sequence number) to entry; a chain is a tenant, or `_host`.
const AUDIT: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("audit");
/// (listing, value, record key): the listings of the tables above.
const LISTINGS: TableDefinition<(&str, &str, &str), ()> = TableDefinition::new("listings");

/// Every keyed table, to create them all at open and copy them in a backup.
const RECORD_TABLES: [RawTable; 22] = [
    META,
    TOKENS.raw(),
    TENANTS.raw(),
    PLUGINS.raw(),
    APPROVALS.raw(),
    JOBS.raw(),
    RESULTS.raw(),
    OWNER_LOGS.raw(),
    GRANTS.raw(),
    AUDIT_HEADS.raw(),
    BENCHMARKS.raw(),
    OPT_INS.raw(),
    BENCHMARK_RUNS.raw(),
    META_VAULT.raw(),
    RELEASE_HISTORY.raw(),
    POSITIONS.raw(),
    REPLAYS.raw(),
    ENROLMENTS.raw(),
    PENDING.raw(),
    RUNNING.raw(),
    PRIVACY_CHARGES.raw(),
    BENCHMARK_REPLAYS.raw(),
];

/// The listings `LISTINGS` should hold, derived from every listed table's
/// records: what each open checks it against.
fn expected_listings(txn: &WriteTransaction) -> Result<BTreeSet<ListingKey>, StoreError> {
    let mut out = BTreeSet::new();
    listings_of(txn, TOKENS, &mut out)?;
    listings_of(txn, APPROVALS, &mut out)?;
    listings_of(txn, JOBS, &mut out)?;
    listings_of(txn, GRANTS, &mut out)?;
    listings_of(txn, BENCHMARKS, &mut out)?;
    listings_of(txn, BENCHMARK_RUNS, &mut out)?;
    listings_of(txn, ENROLMENTS, &mut out)?;
    listings_of(txn, PRIVACY_CHARGES, &mut out)?;
    Ok(out)
}

/// The control database failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the control database is in use by another process: {0}")]
    InUse(String),
    #[error("control database: {0}")]
    Database(String),
    #[error("control database record `{key}` is unreadable: {detail}")]
    Corrupt { key: String, detail: String },
    /// The chain does not verify: nothing more is appended to it, so no
    /// change that it would record is made.
    #[error(
        "the audit log of `{chain}` does not verify ({reason}); the daemon refuses every change it would \
         record there until the operator restores control.redb from a backup"
    )]
    ChainBroken { chain: String, reason: String },
    /// Cut short, altered, emptied or gone while the daemon's other files
    /// remain: nothing is started over it.
    #[error("{path} is damaged ({detail}): restore the data directory from a backup")]
    Damaged { path: String, detail: String },
    /// No space left on its disk (or in its quota): the change was not made.
    #[error("no space left to write the control database ({0}); nothing was changed")]
    Full(String),
    /// An I/O failure; the database is opened again at its next use.
    #[error("the control database failed ({0}); nothing was changed, try again")]
    Failed(String),
}

/// A redb error by what it means: no space, a failed file (opened again at
/// the next use), damage (named by the file's name until the caller knows
/// its path), or anything else.
pub(crate) fn db_err(e: impl Into<redb::Error>) -> StoreError {
    use std::io::ErrorKind;
    let e: redb::Error = e.into();
    match &e {
        redb::Error::Io(io) if redb_file::is_full(io.kind()) => StoreError::Full(io.to_string()),
        redb::Error::Io(io) if matches!(io.kind(), ErrorKind::UnexpectedEof | ErrorKind::InvalidData) => {
            StoreError::Damaged { path: CONTROL_FILE.into(), detail: e.to_string() }
        }
        redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::DatabaseClosed => {
            StoreError::Failed(e.to_string())
        }
        redb::Error::Corrupted(_)
        | redb::Error::TableTypeMismatch { .. }
        | redb::Error::TypeDefinitionChanged { .. }
        | redb::Error::TableIsMultimap(_) => {
            StoreError::Damaged { path: CONTROL_FILE.into(), detail: e.to_string() }
        }
        _ => StoreError::Database(e.to_string()),
    }
}

/// Chains found not to verify, with why: appends to them are refused.
type BrokenChains = std::sync::Mutex<BTreeMap<String, String>>;

fn lock(broken: &BrokenChains) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
    broken.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The open control database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ControlStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    db: Reopening,
    broken: BrokenChains,
    group: GroupCommit,
    /// Held shared while a snapshot begins, alone while a transaction
    /// commits. redb 3.1 pins a snapshot's transaction id and reads its
    /// root in two steps; a commit between them leaves the snapshot on the
    /// newer root while only the older id is pinned, and a later
    /// non-durable commit reuses pages that root still points to: a change
    /// `write` had returned was missing from a `read` begun after it, in
    /// about one of 40 runs of `a_written_change_is_seen_by_every_later_read`.
    /// Fixed upstream in redb 4 (cberner/redb#1471); only this store
    /// commits without durability, so the vault's files are not exposed.
    snapshots: std::sync::RwLock<()>,
}

/// Group commit: many changes, one fsync. Each change commits without an
/// fsync, having taken a ticket inside its transaction, and its writer
/// waits until a durable commit on the same handle covers the ticket.
/// Whoever finds none under way makes one: an empty write transaction at
/// redb's default durability, which makes every commit before it durable.
/// redb runs one write transaction at a time, so once the durable one has
/// begun, every ticket issued is of a transaction that has ended: it
/// covers exactly the tickets issued by then.
#[derive(Default)]
struct GroupCommit {
    /// Tickets handed out.
    issued: AtomicU64,
    synced: std::sync::Mutex<Synced>,
    /// A durable commit ended.
    done: Condvar,
    /// Tests only: run first in every durable commit (to hold it, fail it
    /// or panic in it).
    #[cfg(test)]
    hook: std::sync::Mutex<Option<SyncHook>>,
}

#[cfg(test)]
type SyncHook = Arc<dyn Fn() -> Result<(), StoreError> + Send + Sync>;

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").field("issued", &self.issued).finish_non_exhaustive()
    }
}

impl GroupCommit {
    fn lock(&self) -> std::sync::MutexGuard<'_, Synced> {
        self.synced.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How far durable commits got, on one handle.
#[derive(Debug, Default)]
struct Synced {
    /// The handle the figures are of. A `Weak` keeps its allocation, so no
    /// handle opened later has its address.
    handle: Weak<Handle>,
    /// Tickets up to this one are durable.
    durable: u64,
    /// Why a durable commit on the handle failed: no later ticket on it
    /// will be durable.
    failed: Option<StoreError>,
    /// A durable commit is under way.
    syncing: bool,
}

impl Synced {
    fn of(&self, db: &Arc<Handle>) -> bool {
        std::ptr::eq(self.handle.as_ptr(), Arc::as_ptr(db))
    }

    /// Whether every ticket up to `ticket` is durable on `db`.
    fn covers(&self, db: &Arc<Handle>, ticket: u64) -> bool {
        self.of(db) && self.durable >= ticket
    }
}

/// Ends a durable commit, also one that panicked: `syncing` goes back to
/// false and the waiters wake, so none waits on a commit that is gone.
struct Syncing<'a> {
    group: &'a GroupCommit,
    db: &'a Arc<Handle>,
    /// The tickets it made durable, or why it failed; `None` until it
    /// returns: dropped so, it panicked.
    made: Option<Result<u64, StoreError>>,
}

impl Drop for Syncing<'_> {
    fn drop(&mut self) {
        let made =
            self.made.take().unwrap_or_else(|| Err(StoreError::Failed("a durable commit panicked".into())));
        let mut synced = self.group.lock();
        synced.syncing = false;
        if !synced.of(self.db) {
            *synced = Synced { handle: Arc::downgrade(self.db), ..Synced::default() };
        }
        match made {
            Ok(through) => synced.durable = synced.durable.max(through),
            Err(e) => {
                // The changes waiting are told it failed, so they must
                // never become durable, as the next durable commit on this
                // handle (or its close) would make them: the handle is
                // given up, and the file opened again from its last
                // durable commit.
                self.db.fail(&e.to_string());
                synced.failed = Some(e);
            }
        }
        self.group.done.notify_all();
    }
}

/// The error of a durable commit, for each change it was to cover.
fn covered_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Full(detail) => StoreError::Full(detail.clone()),
        StoreError::Damaged { path, detail } => {
            StoreError::Damaged { path: path.clone(), detail: detail.clone() }
        }
        StoreError::Failed(detail) => StoreError::Failed(detail.clone()),
        other => StoreError::Failed(other.to_string()),
    }
}

thread_local! {
    static WRITING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// This thread runs a write's change (and holds redb's write lock) while
/// one lives.
struct Writing;

impl Writing {
    fn enter() -> Self {
        WRITING.set(true);
        Writing
    }

    fn here() -> bool {
        WRITING.get()
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        WRITING.set(false);
    }
}

/// Run `f`, on a worker of tokio's multi-threaded runtime under
/// `block_in_place`: the worker's other tasks (`/health` among them) move
/// to another thread while this one waits on the disk.
fn off_worker<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle as Tokio, RuntimeFlavor};
    if Tokio::try_current().is_ok_and(|t| t.runtime_flavor() == RuntimeFlavor::MultiThread) {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

impl ControlStore {
    /// Open (creating if needed) the control database in `dir`. Opening
    /// reads every record, so damage shows here, not in some later request:
    /// a damaged file (redb panics on some damage; the open catches that),
    /// or an empty or missing one where a daemon has run before (`plugins/`
    /// is there), is [`StoreError::Damaged`], and nothing is created over it.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(CONTROL_FILE);
        let lost = std::fs::metadata(&path).map_or(true, |m| m.len() == 0);
        if lost && dir.join(crate::registry::PLUGINS_DIR).is_dir() {
            return Err(StoreError::Damaged {
                path: path.display().to_string(),
                detail: "missing or empty, while plugins/ shows that the daemon has run here".into(),
            });
        }
        let handle = open_checked(&path)?;
        let room_at = path.canonicalize().unwrap_or_else(|_| dir.to_owned());
        let store = Self {
            inner: Arc::new(Inner {
                path,
                db: Reopening::new(handle, room_at),
                broken: BrokenChains::default(),
                group: GroupCommit::default(),
                snapshots: std::sync::RwLock::new(()),
            }),
        };
        // Opening ended with a durable commit.
        store.inner.group.lock().handle = Arc::downgrade(&store.db()?);
        Ok(store)
    }

    /// A snapshot of `db`, begun while no transaction commits.
    fn begin_read(&self, db: &Handle) -> Result<ReadTransaction, StoreError> {
        let _no_commit = self.inner.snapshots.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        db.begin_read().map_err(db_err)
    }

    /// Commit `txn` while no snapshot begins.
    fn commit_alone(&self, txn: WriteTransaction) -> Result<(), StoreError> {
        let _alone = self.inner.snapshots.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        txn.commit().map_err(db_err)
    }

    /// The database, opened again first if an I/O failure spoilt it.
    fn db(&self) -> Result<Arc<Handle>, StoreError> {
        self.inner.db.get(|| match open_checked(&self.inner.path) {
            // The spoilt handle is still in use on another thread.
            Err(StoreError::InUse(_)) => Err(self.failed()),
            other => other,
        })
    }

    /// The error for a store that failed and is not open again yet.
    fn failed(&self) -> StoreError {
        match self.inner.db.trouble() {
            Some(failure) if failure.is_full() => StoreError::Full(failure.detail),
            Some(failure) => StoreError::Failed(failure.detail),
            None => StoreError::Failed("reopening".into()),
        }
    }

    /// A write transaction on a working database. A failure found as it
    /// begins (another thread's commit failed just now) is worth one more
    /// try: the database is then opened again.
    fn begin_write(&self) -> Result<(Arc<Handle>, WriteTransaction), StoreError> {
        let db = self.db()?;
        match db.begin_write() {
            Ok(txn) => Ok((db, txn)),
            Err(redb::TransactionError::Storage(redb::StorageError::PreviousIo)) => {
                drop(db);
                let db = self.db()?;
                let txn = db.begin_write().map_err(db_err)?;
                Ok((db, txn))
            }
            Err(e) => Err(db_err(e)),
        }
    }

    /// Check every audit chain whole, as the daemon starts. A chain that
    /// does not verify is refused every later append (and with it every
    /// change it would record). Returns those chains, with why.
    pub fn verify_chains(&self) -> Result<BTreeMap<String, String>, StoreError> {
        let txn = self.begin_read(&*self.db()?)?;
        let mut heads = BTreeMap::new();
        let mut broken = BTreeMap::new();
        for entry in txn.open_table(AUDIT_HEADS.raw()).map_err(db_err)?.iter().map_err(db_err)? {
            let (key, value) = entry.map_err(db_err)?;
            let chain = key.value().to_owned();
            match decode::<AuditHead>(&chain, value.value()) {
                Ok(head) => {
                    heads.insert(chain, head);
                }
                Err(e) => {
                    broken.insert(chain, e.to_string());
                }
            }
        }
        let mut current: Option<(String, Result<ChainVerifier, String>)> = None;
        let mut finish =
            |chain: String, verifier: Result<ChainVerifier, String>, broken: &mut BTreeMap<_, _>| {
                let head = heads.remove(&chain).unwrap_or_default();
                if let Err(reason) = verifier.and_then(|v| v.finish(&head).map_err(|e| e.to_string())) {
                    broken.entry(chain).or_insert(reason);
                }
            };
        for entry in txn.open_table(AUDIT).map_err(db_err)?.iter().map_err(db_err)? {
            let (key, value) = entry.map_err(db_err)?;
            let (chain, seq) = key.value();
            if current.as_ref().is_none_or(|(c, _)| c != chain) {
                if let Some((c, v)) = current.take() {
                    finish(c, v, &mut broken);
                }
                current = Some((chain.to_owned(), Ok(ChainVerifier::new(chain))));
            }
            let Some((_, Ok(verifier))) = current.as_mut() else { continue };
            let pushed = decode::<AuditEntry>(&format!("audit {chain} #{seq}"), value.value())
                .map_err(|e| e.to_string())
                .and_then(|entry| verifier.push(&entry).map_err(|e| e.to_string()));
            if let (Err(reason), Some((_, v))) = (pushed, current.as_mut()) {
                *v = Err(reason);
            }
        }
        if let Some((c, v)) = current.take() {
            finish(c, v, &mut broken);
        }
        // Heads of chains with no entries at all.
        for (chain, head) in std::mem::take(&mut heads) {
            if let Err(e) = ChainVerifier::new(&chain).finish(&head) {
                broken.entry(chain).or_insert(e.to_string());
            }
        }
        lock(&self.inner.broken).extend(broken.clone());
        Ok(broken)
    }

    /// The chains appends are refused to, with why.
    pub fn broken_chains(&self) -> BTreeMap<String, String> {
        lock(&self.inner.broken).clone()
    }

    /// Whether an entry could be appended to `chain` now: for a change that
    /// must not be made unless its entry can be (an ingest commits in the
    /// vault before its entry is written).
    pub fn appendable(&self, chain: &str) -> Result<(), StoreError> {
        if let Some(reason) = lock(&self.inner.broken).get(chain) {
            return Err(StoreError::ChainBroken { chain: chain.to_owned(), reason: reason.clone() });
        }
        let read = self.read()?;
        let head: AuditHead = read.get(AUDIT_HEADS, chain)?.unwrap_or_default();
        let table = read.txn.open_table(AUDIT).map_err(db_err)?;
        check_head(&table, chain, &head)?.map_err(|reason| self.refuse(chain, reason))
    }

    fn refuse(&self, chain: &str, reason: String) -> StoreError {
        tracing::error!(chain, %reason, "an audit chain does not verify; appends to it are refused");
        lock(&self.inner.broken).insert(chain.to_owned(), reason.clone());
        StoreError::ChainBroken { chain: chain.to_owned(), reason }
    }

    /// Run `change` in one write transaction and commit it if it returns
    /// `Ok`; return once the commit is durable (group commit: one fsync for
    /// all the changes waiting). An `Err` leaves nothing behind, and so
    /// does a failed durable commit. Waits under `block_in_place` on a
    /// tokio worker.
    pub fn write<T, E: From<StoreError>>(
        &self,
        change: impl FnOnce(&mut Write<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        off_worker(|| {
            let (value, commit) = self.commit(change)?;
            commit.durable()?;
            Ok(value)
        })
    }

    /// Run `change` in one write transaction and commit it if it returns
    /// `Ok`, without waiting until the commit is durable: for a change whose
    /// effect is seen only through a later change or a read, as a run's
    /// start (its result leaves only with its finish) and its finish (its
    /// release is read only through [`ControlStore::read`], which waits).
    /// The change becomes durable with the next durable commit, never
    /// after a later change; [`Committed::durable`] waits for that. If the
    /// durable commit fails, the change is gone with every change after
    /// it, and the lifecycle's reaping finds what that left running.
    pub(crate) fn commit<T, E: From<StoreError>>(
        &self,
        change: impl FnOnce(&mut Write<'_>) -> Result<T, E>,
    ) -> Result<(T, Committed), E> {
        let (db, mut txn) = self.begin_write()?;
        txn.set_durability(Durability::None).map_err(|e| StoreError::Database(e.to_string()))?;
        let mut write = Write { txn: &txn, store: self };
        let value = {
            let _writing = Writing::enter();
            change(&mut write)?
        };
        // Taken while this transaction holds redb's write lock: a durable
        // commit reading `issued` once it holds the lock comes after this.
        let ticket = self.inner.group.issued.fetch_add(1, Ordering::SeqCst) + 1;
        self.commit_alone(txn)?;
        Ok((value, Committed { store: self.clone(), db, ticket }))
    }

    /// A consistent snapshot to read from, holding durable changes only: a
    /// change is seen once a crash can no longer take it back. Waits (under
    /// `block_in_place` on a tokio worker) for the durable commit of what
    /// it holds, if that is under way or yet to be made; fails if that
    /// commit fails.
    pub fn read(&self) -> Result<Read, StoreError> {
        let db = self.db()?;
        let txn = self.begin_read(&db)?;
        // Every commit this snapshot holds took its ticket before it
        // committed, so before this.
        let through = self.inner.group.issued.load(Ordering::SeqCst);
        if !self.inner.group.lock().covers(&db, through) {
            // The durable commit it would wait for needs the write lock
            // this thread holds: an error, not a hang.
            if Writing::here() {
                return Err(StoreError::Database(
                    "a read that waits for durability was asked for inside a write; use the write's own reads"
                        .into(),
                ));
            }
            off_worker(|| self.durable_through(&db, through))?;
        }
        Ok(Read { txn })
    }

    /// A snapshot that may hold changes not yet durable, without waiting:
    /// for a read whose result only leads to a change (the scheduler's
    /// dispatch and reaping, a run's own inputs, reconciling) or to letting
    /// a caller in (a token check), never for an answer, a release or a
    /// backup. Safe because the change it leads to is
    /// durable only together with every commit before it, the ones this
    /// snapshot saw among them.
    pub(crate) fn read_for_change(&self) -> Result<Read, StoreError> {
        Ok(Read { txn: self.begin_read(&*self.db()?)? })
    }

    /// Wait until a durable commit on `db` covers `ticket`, making one if
    /// none is under way.
    fn durable_through(&self, db: &Arc<Handle>, ticket: u64) -> Result<(), StoreError> {
        let group = &self.inner.group;
        let mut synced = group.lock();
        loop {
            if synced.covers(db, ticket) {
                return Ok(());
            }
            if let Some(e) = synced.failed.as_ref().filter(|_| synced.of(db)) {
                return Err(covered_error(e));
            }
            if synced.syncing {
                synced = group.done.wait(synced).unwrap_or_else(std::sync::PoisonError::into_inner);
                continue;
            }
            synced.syncing = true;
            drop(synced);
            let mut syncing = Syncing { group, db, made: None };
            syncing.made = Some(self.durable_commit(db));
            drop(syncing);
            synced = group.lock();
        }
    }

    /// An empty write transaction at redb's default durability: it makes
    /// every commit before it on `db` durable. Returns the last ticket
    /// issued as it began, so the last it made durable.
    fn durable_commit(&self, db: &Handle) -> Result<u64, StoreError> {
        #[cfg(test)]
        {
            let hook =
                self.inner.group.hook.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            if let Some(hook) = hook {
                hook()?;
            }
        }
        let txn = db.begin_write().map_err(db_err)?;
        let through = self.inner.group.issued.load(Ordering::SeqCst);
        self.commit_alone(txn)?;
        Ok(through)
    }

    /// The last storage failure that no commit has followed yet.
    pub fn trouble(&self) -> Option<StorageFailure> {
        self.inner.db.trouble()
    }

    /// Try a small commit, to learn whether storage works again (opening
    /// the database again if a failure spoilt it). It clears the trouble
    /// as any commit does (after a full disk, once the disk has room
    /// again: [`redb_file::has_room`]).
    pub fn probe(&self) -> Result<(), StoreError> {
        self.write(|w| w.set(&STORAGE_PROBE, &crate::now_ms()))
    }
}

/// A change committed by [`ControlStore::commit`], durable or not yet.
#[must_use = "a commit not waited for may not be durable yet"]
#[derive(Debug)]
pub(crate) struct Committed {
    store: ControlStore,
    db: Arc<Handle>,
    ticket: u64,
}

impl Committed {
    /// Wait until the change is durable (making the durable commit if none
    /// is under way); fails if that commit fails, and the change is then
    /// gone. Waits under `block_in_place` on a tokio worker.
    pub(crate) fn durable(self) -> Result<(), StoreError> {
        off_worker(|| self.store.durable_through(&self.db, self.ticket))?;
        self.store.inner.db.committed();
        Ok(())
    }
}

/// Open `path` and read all of it. Runs under `catch_unwind` (redb panics
/// on some damage: a truncated file, a length field gone wrong), and opens
/// one table of the write transaction at a time (a redb table dropped while
/// another one's opening panics aborts the process).
fn open_checked(path: &Path) -> Result<Handle, StoreError> {
    let shown = path.display().to_string();
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let handle = redb_file::open(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse(shown.clone()),
            other => db_err(other),
        })?;
        let txn = handle.begin_write().map_err(db_err)?;
        for table in RECORD_TABLES {
            drop(txn.open_table(table).map_err(db_err)?);
        }
        drop(txn.open_table(QUEUE).map_err(db_err)?);
        drop(txn.open_table(AUDIT).map_err(db_err)?);
        relist_all(&txn)?;
        txn.commit().map_err(db_err)?;
        read_all(&handle.begin_read().map_err(db_err)?)?;
        Ok(handle)
    }));
    let damaged = |detail: String| StoreError::Damaged { path: shown.clone(), detail };
    match opened {
        Ok(Ok(handle)) => Ok(handle),
        Ok(Err(StoreError::Damaged { detail, .. })) => Err(damaged(detail)),
        Ok(Err(StoreError::Corrupt { key, detail })) => Err(damaged(format!("record `{key}`: {detail}"))),
        Ok(Err(e)) => Err(e),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            let what: String = what.chars().take(200).collect();
            Err(damaged(format!("redb failed reading it: {what}")))
        }
    }
}

/// Read every record of every table, checking that each is JSON.
fn read_all(txn: &ReadTransaction) -> Result<u64, StoreError> {
    fn check(key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
            .map(|_| ())
            .map_err(|e| StoreError::Corrupt { key: key.to_owned(), detail: e.to_string() })
    }
    let mut records = 0;
    for table in RECORD_TABLES {
        for entry in txn.open_table(table).map_err(db_err)?.iter().map_err(db_err)? {
            let (key, value) = entry.map_err(db_err)?;
            check(key.value(), value.value())?;
            records += 1;
        }
    }
    for entry in txn.open_table(QUEUE).map_err(db_err)?.iter().map_err(db_err)? {
        entry.map_err(db_err)?;
        records += 1;
    }
    for entry in txn.open_table(AUDIT).map_err(db_err)?.iter().map_err(db_err)? {
        let (key, value) = entry.map_err(db_err)?;
        let (chain, seq) = key.value();
        check(&format!("audit {chain} #{seq}"), value.value())?;
        records += 1;
    }
    Ok(records)
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt { key: key.to_owned(), detail: e.to_string() })
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("daemon records serialize")
}

fn get_from<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let value = table.get(key).map_err(db_err)?;
    value.map(|v| decode(key, v.value())).transpose()
}

fn all_from<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for entry in table.iter().map_err(db_err)? {
        let (key, value) = entry.map_err(db_err)?;
        out.push(decode(key.value(), value.value())?);
    }
    Ok(out)
}

/// Every record whose key starts with `prefix`, in key order.
fn prefixed_from<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    prefix: &str,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for entry in table.range(prefix..).map_err(db_err)? {
        let (key, value) = entry.map_err(db_err)?;
        if !key.value().starts_with(prefix) {
            break;
        }
        out.push(decode(key.value(), value.value())?);
    }
    Ok(out)
}

fn queue_from(table: &impl ReadableTable<u64, &'static str>) -> Result<Vec<String>, StoreError> {
    Ok(places_from(table)?.into_iter().map(|(_, id)| id).collect())
}

fn places_from(table: &impl ReadableTable<u64, &'static str>) -> Result<Vec<(u64, String)>, StoreError> {
    let mut out = Vec::new();
    for entry in table.iter().map_err(db_err)? {
        let (place, id) = entry.map_err(db_err)?;
        out.push((place.value(), id.value().to_owned()));
    }
    Ok(out)
}

/// The keys `listing` (one of `table`'s) lists under `value`.
fn keys_listed<R>(
    listings: &impl ReadableTable<(&'static str, &'static str, &'static str), ()>,
    table: Table<R>,
    listing: &Listing<R>,
    value: &str,
) -> Result<Vec<String>, StoreError> {
    if !table.listings.iter().any(|l| l.name == listing.name) {
        return Err(StoreError::Database(format!("`{}` is not a listing of `{}`", listing.name, table.name)));
    }
    let mut keys = Vec::new();
    for entry in listings.range((listing.name, value, "")..).map_err(db_err)? {
        let (key, _) = entry.map_err(db_err)?;
        let (name, listed_under, key) = key.value();
        if name != listing.name || listed_under != value {
            break;
        }
        keys.push(key.to_owned());
    }
    Ok(keys)
}

/// A `LISTINGS` key, owned.
type ListingKey = (String, String, String);

/// Add the listings of every record of `table` to `out`. A record that
/// does not read as the table's type (one the work lifecycle ended as
/// `unreadable`, say) is left out of them rather than keeping the daemon
/// from starting: it could not be served from a listing either.
fn listings_of<R: DeserializeOwned>(
    txn: &WriteTransaction,
    table: Table<R>,
    out: &mut BTreeSet<ListingKey>,
) -> Result<(), StoreError> {
    for entry in txn.open_table(table.raw()).map_err(db_err)?.iter().map_err(db_err)? {
        let (key, value) = entry.map_err(db_err)?;
        let record: R = match decode(key.value(), value.value()) {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!(table = table.name, error = %e, "a record is left out of its table's listings");
                continue;
            }
        };
        for listing in table.listings {
            if let Some(under) = (listing.of)(&record) {
                out.insert((listing.name.to_owned(), under.to_owned(), key.value().to_owned()));
            }
        }
    }
    Ok(())
}

/// Make `LISTINGS` what the records say, at open: listings are derived
/// data, so a file written by a daemon that kept none (or kept them
/// otherwise) is listed afresh rather than trusted. Writes only if they
/// differ.
fn relist_all(txn: &WriteTransaction) -> Result<(), StoreError> {
    let expected = expected_listings(txn)?;
    let mut listings = txn.open_table(LISTINGS).map_err(db_err)?;
    let mut stored = BTreeSet::new();
    for entry in listings.iter().map_err(db_err)? {
        let (key, _) = entry.map_err(db_err)?;
        let (name, under, key) = key.value();
        stored.insert((name.to_owned(), under.to_owned(), key.to_owned()));
    }
    if stored == expected {
        return Ok(());
    }
    tracing::info!(
        stored = stored.len(),
        expected = expected.len(),
        "listing the control store's records afresh"
    );
    for (name, under, key) in stored.difference(&expected) {
        listings.remove((name.as_str(), under.as_str(), key.as_str())).map_err(db_err)?;
    }
    for (name, under, key) in expected.difference(&stored) {
        listings.insert((name.as_str(), under.as_str(), key.as_str()), ()).map_err(db_err)?;
    }
    Ok(())
}

/// Write everything `read` sees into a new database at `path`: the
/// control database as of that snapshot, for a backup. A table this list
/// does not know (a new one, added without adding it here) fails the copy
/// rather than being left out.
pub(crate) fn copy_snapshot(read: &Read, path: &Path) -> Result<u64, StoreError> {
    use redb::TableHandle;
    let known: Vec<&str> =
        RECORD_TABLES.iter().map(|t| t.name()).chain([QUEUE.name(), AUDIT.name(), LISTINGS.name()]).collect();
    for table in read.txn.list_tables().map_err(db_err)? {
        if !known.contains(&table.name()) {
            return Err(StoreError::Database(format!(
                "table `{}` is not among those a backup copies",
                table.name()
            )));
        }
    }
    let db = redb::Database::create(path).map_err(db_err)?;
    let txn = db.begin_write().map_err(db_err)?;
    let mut records = 0;
    for definition in RECORD_TABLES {
        let mut copy = txn.open_table(definition).map_err(db_err)?;
        for entry in read.txn.open_table(definition).map_err(db_err)?.iter().map_err(db_err)? {
            let (key, value) = entry.map_err(db_err)?;
            copy.insert(key.value(), value.value()).map_err(db_err)?;
            records += 1;
        }
    }
    {
        let mut copy = txn.open_table(QUEUE).map_err(db_err)?;
        for entry in read.txn.open_table(QUEUE).map_err(db_err)?.iter().map_err(db_err)? {
            let (key, value) = entry.map_err(db_err)?;
            copy.insert(key.value(), value.value()).map_err(db_err)?;
            records += 1;
        }
        let mut copy = txn.open_table(AUDIT).map_err(db_err)?;
        for entry in read.txn.open_table(AUDIT).map_err(db_err)?.iter().map_err(db_err)? {
            let (key, value) = entry.map_err(db_err)?;
            copy.insert(key.value(), value.value()).map_err(db_err)?;
            records += 1;
        }
        let mut copy = txn.open_table(LISTINGS).map_err(db_err)?;
        for entry in read.txn.open_table(LISTINGS).map_err(db_err)?.iter().map_err(db_err)? {
            copy.insert(entry.map_err(db_err)?.0.value(), ()).map_err(db_err)?;
        }
    }
    txn.commit().map_err(db_err)?;
    Ok(records)
}

/// A read snapshot.
pub struct Read {
    txn: ReadTransaction,
}

impl std::fmt::Debug for Read {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Read")
    }
}

impl Read {
    /// Job ids waiting to run, oldest first.
    pub fn queue(&self) -> Result<Vec<String>, StoreError> {
        queue_from(&self.txn.open_table(QUEUE).map_err(db_err)?)
    }

    /// The queue's places (sequence number, id), oldest first.
    pub fn queue_places(&self) -> Result<Vec<(u64, String)>, StoreError> {
        places_from(&self.txn.open_table(QUEUE).map_err(db_err)?)
    }

    /// A chain's entries, oldest first, and its head.
    pub fn audit(&self, chain: &str) -> Result<(Vec<AuditEntry>, AuditHead), StoreError> {
        let table = self.txn.open_table(AUDIT).map_err(db_err)?;
        let mut entries = Vec::new();
        for entry in table.range((chain, 0)..=(chain, u64::MAX)).map_err(db_err)? {
            let (key, value) = entry.map_err(db_err)?;
            entries.push(decode(&format!("audit {chain} #{}", key.value().1), value.value())?);
        }
        let head = self.get(AUDIT_HEADS, chain)?.unwrap_or_default();
        Ok((entries, head))
    }
}

/// Reading records, the same in a read and in a write transaction, for
/// code that runs in either.
pub(crate) trait RecordRead {
    fn get<R: DeserializeOwned>(&self, table: Table<R>, key: &str) -> Result<Option<R>, StoreError>;
    fn get_as<V: DeserializeOwned, R>(&self, table: Table<R>, key: &str) -> Result<Option<V>, StoreError>;
    fn all<R: DeserializeOwned>(&self, table: Table<R>) -> Result<Vec<R>, StoreError>;
    fn prefixed<R: DeserializeOwned>(&self, table: Table<R>, prefix: &str) -> Result<Vec<R>, StoreError>;
    fn queue(&self) -> Result<Vec<String>, StoreError>;
}

/// The record reads of [`Read`] and [`Write`]: both hold a `txn` whose
/// `open_table` gives a readable table.
macro_rules! record_reads {
    ($($snapshot:ty),*) => {$(
        impl $snapshot {
            /// The record under `key`, as this transaction sees it.
            pub(crate) fn get<R: DeserializeOwned>(&self, table: Table<R>, key: &str) -> Result<Option<R>, StoreError> {
                get_from(&self.txn.open_table(table.raw()).map_err(db_err)?, key)
            }

            /// Every record of `table`, in key order: for a table read whole
            /// (a schedule, a listing for the operator), or a small one.
            pub(crate) fn all<R: DeserializeOwned>(&self, table: Table<R>) -> Result<Vec<R>, StoreError> {
                all_from(&self.txn.open_table(table.raw()).map_err(db_err)?)
            }

            /// The record under `key` read as `V`: a narrower reading of the
            /// table's record (some of its fields, or its JSON), for one that
            /// may no longer read as the table's type.
            pub(crate) fn get_as<V: DeserializeOwned, R>(&self, table: Table<R>, key: &str) -> Result<Option<V>, StoreError> {
                get_from(&self.txn.open_table(table.raw()).map_err(db_err)?, key)
            }

            /// Every record of `table` whose key starts with `prefix`, in key order.
            pub(crate) fn prefixed<R: DeserializeOwned>(&self, table: Table<R>, prefix: &str) -> Result<Vec<R>, StoreError> {
                prefixed_from(&self.txn.open_table(table.raw()).map_err(db_err)?, prefix)
            }

            /// The records of `table` that `listing` lists under `value`, in
            /// key order: a range of `LISTINGS`, then one lookup each.
            pub(crate) fn listed<R: DeserializeOwned>(
                &self,
                table: Table<R>,
                listing: Listing<R>,
                value: &str,
            ) -> Result<Vec<R>, StoreError> {
                let listings = self.txn.open_table(LISTINGS).map_err(db_err)?;
                let keys = keys_listed(&listings, table, &listing, value)?;
                drop(listings);
                let records = self.txn.open_table(table.raw()).map_err(db_err)?;
                let mut out = Vec::with_capacity(keys.len());
                for key in keys {
                    let record = get_from(&records, &key)?.ok_or_else(|| StoreError::Corrupt {
                        key: key.clone(),
                        detail: format!("listed in `{}` but not in `{}`", listing.name, table.name),
                    })?;
                    out.push(record);
                }
                Ok(out)
            }

            /// A setting, if it was ever set.
            pub(crate) fn setting<T: DeserializeOwned>(&self, setting: &Setting<T>) -> Result<Option<T>, StoreError> {
                let raw = self.txn.open_table(META).map_err(db_err)?;
                let value = raw.get(&*setting.key).map_err(db_err)?;
                value.map(|v| decode(&setting.key, v.value())).transpose()
            }
        }

        impl RecordRead for $snapshot {
            fn get<R: DeserializeOwned>(&self, table: Table<R>, key: &str) -> Result<Option<R>, StoreError> {
                <$snapshot>::get(self, table, key)
            }

            fn get_as<V: DeserializeOwned, R>(&self, table: Table<R>, key: &str) -> Result<Option<V>, StoreError> {
                <$snapshot>::get_as(self, table, key)
            }

            fn all<R: DeserializeOwned>(&self, table: Table<R>) -> Result<Vec<R>, StoreError> {
                <$snapshot>::all(self, table)
            }

            fn prefixed<R: DeserializeOwned>(&self, table: Table<R>, prefix: &str) -> Result<Vec<R>, StoreError> {
                <$snapshot>::prefixed(self, table, prefix)
            }

            fn queue(&self) -> Result<Vec<String>, StoreError> {
                <$snapshot>::queue(self)
            }
        }
    )*};
}

record_reads!(Read, Write<'_>);

/// Whether the end of `chain` in `table` is its `head`: the entry the head
/// names is there and whole, and nothing follows it. `Ok(Err(why))` if not.
fn check_head(
    table: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    chain: &str,
    head: &AuditHead,
) -> Result<Result<(), String>, StoreError> {
    if head.count > 0 {
        let Some(last) = table.get((chain, head.count)).map_err(db_err)? else {
            return Ok(Err(format!("entry {}, the last one, is missing", head.count)));
        };
        let Ok(last) = serde_json::from_slice::<AuditEntry>(last.value()) else {
            return Ok(Err(format!("entry {} is unreadable", head.count)));
        };
        if last.seq != head.count || last.chain != chain || last.hash != head.hash {
            return Ok(Err("the last entry is not the head the daemon recorded".into()));
        }
        if last.computed_hash() != last.hash {
            return Ok(Err(format!("entry {} was altered", head.count)));
        }
    }
    if table.get((chain, head.count + 1)).map_err(db_err)?.is_some() {
        return Ok(Err(format!("an entry follows the head (entry {})", head.count)));
    }
    Ok(Ok(()))
}

/// A write transaction in progress.
pub struct Write<'a> {
    txn: &'a WriteTransaction,
    store: &'a ControlStore,
}

impl std::fmt::Debug for Write<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Write")
    }
}

impl Write<'_> {
    /// Store `value` under `key`, and its listings with it.
    pub(crate) fn put<R: Serialize + DeserializeOwned>(
        &mut self,
        table: Table<R>,
        key: &str,
        value: &R,
    ) -> Result<(), StoreError> {
        if !table.listings.is_empty() {
            let before = self.get(table, key)?;
            self.relist(table, key, before.as_ref(), Some(value))?;
        }
        let mut raw = self.txn.open_table(table.raw()).map_err(db_err)?;
        raw.insert(key, encode(value).as_slice()).map_err(db_err)?;
        Ok(())
    }

    /// Remove the record under `key`, and its listings; whether there was one.
    pub(crate) fn remove<R: DeserializeOwned>(
        &mut self,
        table: Table<R>,
        key: &str,
    ) -> Result<bool, StoreError> {
        if !table.listings.is_empty() {
            let before = self.get(table, key)?;
            self.relist(table, key, before.as_ref(), None)?;
        }
        let mut raw = self.txn.open_table(table.raw()).map_err(db_err)?;
        Ok(raw.remove(key).map_err(db_err)?.is_some())
    }

    /// How many records of `table` `listing` lists under `value`: a range
    /// of `LISTINGS`, no record read.
    pub(crate) fn count_listed<R>(
        &self,
        table: Table<R>,
        listing: Listing<R>,
        value: &str,
    ) -> Result<usize, StoreError> {
        let listings = self.txn.open_table(LISTINGS).map_err(db_err)?;
        Ok(keys_listed(&listings, table, &listing, value)?.len())
    }

    /// Every record of `table` read as `V` (see `get_as`), in key order.
    pub(crate) fn all_as<V: DeserializeOwned, R>(&self, table: Table<R>) -> Result<Vec<V>, StoreError> {
        all_from(&self.txn.open_table(table.raw()).map_err(db_err)?)
    }

    /// Write back a record that no longer reads as `R` (its JSON, marked
    /// as ended). It leaves its listings, as an open would leave it out
    /// of them: what it was listed under cannot be read from it, so each
    /// of the table's listings is searched for its key (a rare path).
    pub(crate) fn put_unreadable<R>(
        &mut self,
        table: Table<R>,
        key: &str,
        json: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let mut listings = self.txn.open_table(LISTINGS).map_err(db_err)?;
        let mut stale = Vec::new();
        for listing in table.listings {
            for entry in listings.range((listing.name, "", "")..).map_err(db_err)? {
                let (entry, _) = entry.map_err(db_err)?;
                let (name, under, listed) = entry.value();
                if name != listing.name {
                    break;
                }
                if listed == key {
                    stale.push((name.to_owned(), under.to_owned()));
                }
            }
        }
        for (name, under) in &stale {
            listings.remove((name.as_str(), under.as_str(), key)).map_err(db_err)?;
        }
        drop(listings);
        let mut raw = self.txn.open_table(table.raw()).map_err(db_err)?;
        raw.insert(key, encode(json).as_slice()).map_err(db_err)?;
        Ok(())
    }

    /// Move `key`'s listings from what `before` is listed under to what
    /// `after` is.
    fn relist<R>(
        &mut self,
        table: Table<R>,
        key: &str,
        before: Option<&R>,
        after: Option<&R>,
    ) -> Result<(), StoreError> {
        let mut listings = self.txn.open_table(LISTINGS).map_err(db_err)?;
        for listing in table.listings {
            let (was, is) = (before.and_then(listing.of), after.and_then(listing.of));
            if was == is {
                continue;
            }
            if let Some(was) = was {
                listings.remove((listing.name, was, key)).map_err(db_err)?;
            }
            if let Some(is) = is {
                listings.insert((listing.name, is, key), ()).map_err(db_err)?;
            }
        }
        Ok(())
    }

    /// Store a setting.
    pub(crate) fn set<T: Serialize>(&mut self, setting: &Setting<T>, value: &T) -> Result<(), StoreError> {
        let mut raw = self.txn.open_table(META).map_err(db_err)?;
        raw.insert(&*setting.key, encode(value).as_slice()).map_err(db_err)?;
        Ok(())
    }

    /// The next value of a counter, from 1.
    pub(crate) fn next_sequence(&mut self, counter: &Setting<u64>) -> Result<u64, StoreError> {
        let next = self.setting(counter)?.unwrap_or(0) + 1;
        self.set(counter, &next)?;
        Ok(next)
    }

    /// Job ids waiting to run, oldest first.
    pub fn queue(&self) -> Result<Vec<String>, StoreError> {
        queue_from(&self.txn.open_table(QUEUE).map_err(db_err)?)
    }

    pub fn enqueue(&mut self, seq: u64, job: &str) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(QUEUE).map_err(db_err)?;
        table.insert(seq, job).map_err(db_err)?;
        Ok(())
    }

    /// Take `id` out of place `seq`, and say whether it was there. A place
    /// that is empty or holds another id is left as it is: that other work
    /// stays queued.
    pub fn dequeue(&mut self, seq: u64, id: &str) -> Result<bool, StoreError> {
        let mut table = self.txn.open_table(QUEUE).map_err(db_err)?;
        if table.get(seq).map_err(db_err)?.is_none_or(|held| held.value() != id) {
            return Ok(false);
        }
        table.remove(seq).map_err(db_err)?;
        Ok(true)
    }

    /// Whether appends to `chain` are refused: it did not verify.
    pub fn chain_broken(&self, chain: &str) -> bool {
        lock(&self.store.inner.broken).contains_key(chain)
    }

    /// Append an entry to `chain`'s audit log, linked to the one before.
    /// Refused ([`StoreError::ChainBroken`]) if the chain did not verify at
    /// start, or if its stored end is not its head now.
    pub fn audit(
        &mut self,
        chain: &str,
        actor: &str,
        action: &str,
        detail: serde_json::Value,
    ) -> Result<AuditEntry, StoreError> {
        if let Some(reason) = lock(&self.store.inner.broken).get(chain) {
            return Err(StoreError::ChainBroken { chain: chain.to_owned(), reason: reason.clone() });
        }
        let head: AuditHead = self.get(AUDIT_HEADS, chain)?.unwrap_or_default();
        let checked = check_head(&self.txn.open_table(AUDIT).map_err(db_err)?, chain, &head)?;
        checked.map_err(|reason| self.store.refuse(chain, reason))?;
        let entry = AuditEntry::next(&head, chain, actor, action, detail);
        {
            let mut table = self.txn.open_table(AUDIT).map_err(db_err)?;
            table.insert((chain, entry.seq), encode(&entry).as_slice()).map_err(db_err)?;
        }
        self.put(AUDIT_HEADS, chain, &AuditHead { count: entry.seq, hash: entry.hash.clone() })?;
        Ok(entry)
    }

    /// Tests only: write an entry past the chain, as someone holding the
    /// file could.
    #[cfg(test)]
    pub(crate) fn raw_audit_insert(&mut self, chain: &str, seq: u64, bytes: &[u8]) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(AUDIT).map_err(db_err)?;
        table.insert((chain, seq), bytes).map_err(db_err)?;
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn raw_audit_remove(&mut self, chain: &str, seq: u64) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(AUDIT).map_err(db_err)?;
        table.remove((chain, seq)).map_err(db_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{ChainBreak, verify};
    use serde_json::json;

    /// A store whose `acme` chain holds four entries.
    fn store_with_chain() -> (tempfile::TempDir, ControlStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_chain_in(dir.path());
        (dir, store)
    }

    fn store_with_chain_in(dir: &Path) -> ControlStore {
        let store = ControlStore::open(dir).unwrap();
        for i in 0..4 {
            store.write(|w| w.audit("acme", "daemon", "job.finish", json!({"job": i}))).unwrap();
        }
        store
    }

    fn check(store: &ControlStore) -> Result<u64, ChainBreak> {
        let (entries, head) = store.read().unwrap().audit("acme").unwrap();
        verify("acme", &entries, &head)
    }

    #[test]
    fn the_stored_chain_verifies_and_every_tampering_is_found() {
        let (_dir, store) = store_with_chain();
        assert_eq!(check(&store), Ok(4));
        let (entries, _) = store.read().unwrap().audit("acme").unwrap();

        // Edited in place.
        let (_dir, edited) = store_with_chain();
        let mut entry = edited.read().unwrap().audit("acme").unwrap().0[1].clone();
        entry.detail = json!({"job": 99});
        edited.write(|w| w.raw_audit_insert("acme", 2, &encode(&entry))).unwrap();
        assert_eq!(check(&edited), Err(ChainBreak::Altered { seq: 2 }));

        // Removed.
        let (_dir, removed) = store_with_chain();
        removed.write(|w| w.raw_audit_remove("acme", 3)).unwrap();
        assert!(matches!(check(&removed), Err(ChainBreak::Sequence { position: 3, .. })));

        // Reordered: entries 2 and 3 swapped under each other's keys.
        let (_dir, reordered) = store_with_chain();
        let current = reordered.read().unwrap().audit("acme").unwrap().0;
        reordered
            .write(|w| {
                w.raw_audit_insert("acme", 2, &encode(&current[2]))?;
                w.raw_audit_insert("acme", 3, &encode(&current[1]))
            })
            .unwrap();
        assert!(matches!(check(&reordered), Err(ChainBreak::Sequence { position: 2, .. })));

        // The last entry cut off.
        let (_dir, cut) = store_with_chain();
        cut.write(|w| w.raw_audit_remove("acme", 4)).unwrap();
        assert_eq!(check(&cut), Err(ChainBreak::Count { expected: 4, found: 3 }));
        assert_eq!(entries.len(), 4);
    }

    fn refused(result: Result<AuditEntry, StoreError>) -> String {
        match result {
            Err(StoreError::ChainBroken { chain, reason }) => format!("{chain}: {reason}"),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn an_append_to_a_chain_whose_end_is_not_its_head_is_refused() {
        // The last entry edited.
        let (_dir, edited) = store_with_chain();
        let mut entry = edited.read().unwrap().audit("acme").unwrap().0[3].clone();
        entry.detail = json!({"job": 99});
        edited.write(|w| w.raw_audit_insert("acme", 4, &encode(&entry))).unwrap();
        let why = refused(edited.write(|w| w.audit("acme", "daemon", "job.finish", json!({}))));
        assert!(why.contains("acme: entry 4 was altered"), "{why}");
        // From now on, without looking again; other chains are not touched.
        assert!(edited.broken_chains().contains_key("acme"));
        assert!(matches!(edited.appendable("acme"), Err(StoreError::ChainBroken { .. })));
        edited.write(|w| w.audit("other", "daemon", "job.finish", json!({}))).unwrap();
        assert!(edited.appendable("other").is_ok());

        // The last entry cut off, or one added past the head.
        let (_dir, cut) = store_with_chain();
        cut.write(|w| w.raw_audit_remove("acme", 4)).unwrap();
        assert!(matches!(cut.appendable("acme"), Err(StoreError::ChainBroken { .. })));
        let why = refused(cut.write(|w| w.audit("acme", "daemon", "job.finish", json!({}))));
        assert!(why.contains("entry 4, the last one, is missing"), "{why}");
        let (_dir, added) = store_with_chain();
        let (entries, head) = added.read().unwrap().audit("acme").unwrap();
        let forged = AuditEntry::next(&head, "acme", "forger", "nothing.happened", json!({}));
        added.write(|w| w.raw_audit_insert("acme", 5, &encode(&forged))).unwrap();
        let why = refused(added.write(|w| w.audit("acme", "daemon", "job.finish", json!({}))));
        assert!(why.contains("follows the head"), "{why}");
        assert_eq!(
            added.read().unwrap().audit("acme").unwrap().0.len(),
            entries.len() + 1,
            "nothing appended"
        );
    }

    #[test]
    fn at_start_every_chain_is_verified_whole_and_a_broken_one_is_refused() {
        let (dir, store) = store_with_chain();
        store.write(|w| w.audit("other", "daemon", "job.finish", json!({}))).unwrap();
        assert_eq!(store.verify_chains().unwrap(), BTreeMap::new());
        // An entry in the middle edited: the end still matches the head.
        let mut entry = store.read().unwrap().audit("acme").unwrap().0[1].clone();
        entry.detail = json!({"job": 99});
        store.write(|w| w.raw_audit_insert("acme", 2, &encode(&entry))).unwrap();
        store.write(|w| w.audit("acme", "daemon", "job.finish", json!({}))).unwrap();
        drop(store);

        let store = ControlStore::open(dir.path()).unwrap();
        let broken = store.verify_chains().unwrap();
        assert_eq!(broken.keys().collect::<Vec<_>>(), ["acme"]);
        assert!(broken["acme"].contains("entry 2 was altered"), "{broken:?}");
        refused(store.write(|w| w.audit("acme", "daemon", "job.finish", json!({}))));
        store.write(|w| w.audit("other", "daemon", "job.finish", json!({}))).unwrap();
        // A head whose chain is gone.
        store
            .write(|w| {
                for seq in 1..=2 {
                    w.raw_audit_remove("other", seq)?;
                }
                Ok::<_, StoreError>(())
            })
            .unwrap();
        drop(store);
        let store = ControlStore::open(dir.path()).unwrap();
        let broken = store.verify_chains().unwrap();
        assert!(broken["other"].contains("holds 0 entries but its head says 2"), "{broken:?}");
    }

    fn grant(id: &str, tenant: &str) -> SupportGrant {
        SupportGrant {
            id: id.into(),
            tenant: tenant.into(),
            granted_by: "admin".into(),
            reason: "ticket".into(),
            created_ms: 1,
            expires_ms: 2,
            revoked_ms: None,
        }
    }

    fn ids_of(store: &ControlStore, tenant: &str) -> Vec<String> {
        let listed = store.read().unwrap().listed(GRANTS, GRANTS_OF_TENANT, tenant).unwrap();
        listed.into_iter().map(|g| g.id).collect()
    }

    #[test]
    fn a_listing_follows_every_put_and_remove_in_the_same_transaction() {
        let (_dir, store) = store_with_chain();
        store
            .write(|w| {
                for (id, tenant) in [("g1", "acme"), ("g2", "globex"), ("g3", "acme"), ("g4", "acme-2")] {
                    w.put(GRANTS, id, &grant(id, tenant))?;
                }
                Ok::<_, StoreError>(())
            })
            .unwrap();
        assert_eq!(ids_of(&store, "acme"), ["g1", "g3"], "a prefix of another value is not it");
        assert_eq!(ids_of(&store, "acme-2"), ["g4"]);
        // Moved to another tenant, then removed.
        store.write(|w| w.put(GRANTS, "g1", &grant("g1", "globex"))).unwrap();
        assert_eq!(ids_of(&store, "acme"), ["g3"]);
        assert_eq!(ids_of(&store, "globex"), ["g1", "g2"]);
        assert!(store.write(|w| w.remove(GRANTS, "g2")).unwrap());
        assert_eq!(ids_of(&store, "globex"), ["g1"]);
        // A failed change moves no listing.
        let failed: Result<(), StoreError> = store.write(|w| {
            w.put(GRANTS, "g3", &grant("g3", "globex"))?;
            Err(StoreError::Database("stop".into()))
        });
        assert!(failed.is_err());
        assert_eq!(ids_of(&store, "acme"), ["g3"]);
        // A listing of another table is refused, not answered empty.
        let wrong = store.read().unwrap().listed(GRANTS, Listing::new("jobs.tenant", |_| None), "acme");
        assert!(matches!(wrong, Err(StoreError::Database(_))), "{wrong:?}");
    }

    #[test]
    fn listings_lost_or_stale_are_made_whole_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = ControlStore::open(dir.path()).unwrap();
            store
                .write(|w| {
                    w.put(GRANTS, "g1", &grant("g1", "acme"))?;
                    w.put(GRANTS, "g2", &grant("g2", "acme"))
                })
                .unwrap();
            // As a daemon that kept no listings would leave it: one record
            // written behind the listings' back, one listing pointing at
            // nothing, one missing.
            store
                .write(|w| {
                    let mut raw = w.txn.open_table(GRANTS.raw()).map_err(db_err)?;
                    raw.insert("g3", encode(&grant("g3", "acme")).as_slice()).map_err(db_err)?;
                    drop(raw);
                    let mut listings = w.txn.open_table(LISTINGS).map_err(db_err)?;
                    listings.insert(("grants.tenant", "acme", "g9"), ()).map_err(db_err)?;
                    listings.remove(("grants.tenant", "acme", "g1")).map_err(db_err)?;
                    Ok::<_, StoreError>(())
                })
                .unwrap();
        }
        let store = ControlStore::open(dir.path()).unwrap();
        assert_eq!(ids_of(&store, "acme"), ["g1", "g2", "g3"]);
        // A record that no longer reads as a grant is left out, and the
        // store still opens.
        store
            .write(|w| w.put_unreadable(GRANTS, "g2", &serde_json::json!({"id": "g2", "tenant": "acme"})))
            .unwrap();
        assert_eq!(ids_of(&store, "acme"), ["g1", "g3"]);
        drop(store);
        let store = ControlStore::open(dir.path()).unwrap();
        assert_eq!(ids_of(&store, "acme"), ["g1", "g3"]);
    }

    #[test]
    fn a_failed_change_leaves_nothing_behind() {
        let (_dir, store) = store_with_chain();
        let failed: Result<(), StoreError> = store.write(|w| {
            w.audit("acme", "daemon", "half.done", json!({}))?;
            w.put(GRANTS, "ghost", &grant("ghost", "acme"))?;
            Err(StoreError::Database("stop".into()))
        });
        assert!(failed.is_err());
        assert_eq!(check(&store), Ok(4));
        assert_eq!(store.read().unwrap().get(GRANTS, "ghost").unwrap(), None);
        assert!(ids_of(&store, "acme").is_empty());
    }

    /// A `control.redb` cut short at many offsets, or with bytes flipped:
    /// opening it never panics, and a damaged file is named as damaged with
    /// a pointer to the backups. The original opens again afterwards, in
    /// the same process.
    #[test]
    fn a_damaged_control_database_is_an_error_naming_it_never_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = ControlStore::open(dir.path()).unwrap();
            for i in 0..40 {
                store
                    .write(|w| {
                        let id = format!("grant-{i}");
                        w.put(GRANTS, &id, &SupportGrant { reason: "x".repeat(300), ..grant(&id, "acme") })?;
                        w.audit("acme", "daemon", "job.finish", json!({"job": i}))
                    })
                    .unwrap();
            }
        }
        let path = dir.path().join(CONTROL_FILE);
        let original = std::fs::read(&path).unwrap();
        let open = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            std::panic::catch_unwind(|| ControlStore::open(dir.path()).map(|_| ())).map_err(|_| "panicked")
        };
        let damaged = |outcome: Result<Result<(), StoreError>, &str>, what: &str| match outcome {
            Ok(Err(e @ StoreError::Damaged { .. })) => {
                let message = e.to_string();
                assert!(message.contains("control.redb is damaged"), "{what}: {message}");
                assert!(message.ends_with("restore the data directory from a backup"), "{message}");
                assert!(message.len() < 500, "{what}: {message}");
            }
            other => panic!("{what}: {other:?}"),
        };
        let len = original.len();
        let mut cuts: Vec<usize> = (1..len).step_by(len / 40).collect();
        cuts.extend([1, 16, 100, 511, 4096, 4097, len - 1]);
        let cut_count = cuts.len();
        for cut in cuts {
            damaged(open(&original[..cut]), &format!("cut at {cut}"));
        }
        // Some flips hit free pages and change nothing.
        let mut flips = 0;
        let tried = (0..len).step_by(997).count();
        for at in (0..len).step_by(997) {
            let mut bytes = original.clone();
            bytes[at..(at + 64).min(len)].iter_mut().for_each(|b| *b ^= 0x5a);
            match open(&bytes) {
                Ok(Ok(())) => {}
                outcome => {
                    damaged(outcome, &format!("flip at {at}"));
                    flips += 1;
                }
            }
        }
        assert!(flips > 5, "{flips} flips were noticed");
        eprintln!("{len} bytes: {cut_count} cuts refused, {flips} of {tried} flips noticed");
        open(&original).unwrap().unwrap();
        let store = ControlStore::open(dir.path()).unwrap();
        assert_eq!(check(&store), Ok(40));
    }

    #[test]
    fn an_empty_or_missing_control_database_is_refused_where_the_daemon_ran() {
        let dir = tempfile::tempdir().unwrap();
        drop(store_with_chain_in(dir.path()));
        std::fs::create_dir(dir.path().join(crate::registry::PLUGINS_DIR)).unwrap();
        let path = dir.path().join(CONTROL_FILE);
        std::fs::write(&path, b"").unwrap();
        let empty = ControlStore::open(dir.path()).unwrap_err().to_string();
        assert!(empty.contains("control.redb is damaged (missing or empty"), "{empty}");
        std::fs::remove_file(&path).unwrap();
        let missing = ControlStore::open(dir.path()).unwrap_err();
        assert!(matches!(missing, StoreError::Damaged { .. }), "{missing}");
        assert!(!path.exists(), "nothing was created over it");
        // A data directory the daemon never served (the vault's alone) starts one.
        std::fs::remove_dir(dir.path().join(crate::registry::PLUGINS_DIR)).unwrap();
        ControlStore::open(dir.path()).unwrap();
    }

    #[test]
    fn a_second_process_is_refused() {
        let (dir, _store) = store_with_chain();
        assert!(matches!(ControlStore::open(dir.path()), Err(StoreError::InUse(_))));
    }

    use std::sync::mpsc;
    use std::time::Duration;

    /// `meta` read and written as numbers, for the group commit's tests.
    const SCRATCH: Table<u32> = Table::new("meta");

    /// How long a test waits for what should take milliseconds: a hang
    /// fails it.
    const PATIENCE: Duration = Duration::from_secs(30);

    /// Every durable commit runs `hook` first.
    fn hook(store: &ControlStore, hook: impl Fn() -> Result<(), StoreError> + Send + Sync + 'static) {
        *store.inner.group.hook.lock().unwrap() = Some(Arc::new(hook));
    }

    /// A hook that holds the first durable commit until `release` is sent
    /// or dropped, telling `held` when it holds it, and then goes on with
    /// `first`; later ones go on with `then`.
    fn hold_first(
        store: &ControlStore,
        first: impl Fn() -> Result<(), StoreError> + Send + Sync + 'static,
        then: impl Fn() -> Result<(), StoreError> + Send + Sync + 'static,
    ) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (held, held_rx) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let release_rx = std::sync::Mutex::new(release_rx);
        let is_first = std::sync::atomic::AtomicBool::new(true);
        hook(store, move || {
            if is_first.swap(false, Ordering::SeqCst) {
                held.send(()).unwrap();
                let _ = release_rx.lock().unwrap().recv();
                return first();
            }
            then()
        });
        (held_rx, release)
    }

    /// A read inside a write that would wait for a durable commit (which
    /// needs the write lock the caller holds) fails at once instead.
    #[test]
    fn a_read_that_would_wait_inside_a_write_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let store = ControlStore::open(dir.path()).unwrap();
        let (held, release) = hold_first(&store, || Ok(()), || Ok(()));
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || store.write(|w| w.put(SCRATCH, "change", &1)))
        };
        held.recv_timeout(PATIENCE).unwrap();
        let (done, done_rx) = mpsc::channel();
        {
            let store = store.clone();
            std::thread::spawn(move || {
                let inner = store.clone();
                let outcome = store.write(|w| {
                    w.put(SCRATCH, "mine", &1)?;
                    inner.read().map(drop)
                });
                done.send(outcome).unwrap();
            });
        }
        let outcome = done_rx.recv_timeout(PATIENCE).expect("the read inside the write hung");
        assert!(
            matches!(&outcome, Err(StoreError::Database(m)) if m.contains("inside a write")),
            "{outcome:?}"
        );
        drop(release);
        writer.join().unwrap().unwrap();
        assert_eq!(
            store.read().unwrap().get(SCRATCH, "mine").unwrap(),
            None,
            "the refused write left nothing"
        );
    }

    /// `key` in a new store over the same file, as after a crash: only
    /// durable commits are in it.
    fn in_a_copy(dir: &Path, key: &str) -> Option<u32> {
        let copy = tempfile::tempdir().unwrap();
        std::fs::copy(dir.join(CONTROL_FILE), copy.path().join(CONTROL_FILE)).unwrap();
        let store = ControlStore::open(copy.path()).unwrap();
        store.read().unwrap().get(SCRATCH, key).unwrap()
    }

    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + PATIENCE;
        while !done() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn concurrent_changes_are_durable_when_write_returns() {
        let dir = tempfile::tempdir().unwrap();
        let store = ControlStore::open(dir.path()).unwrap();
        let writers: Vec<_> = (0..8)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        store.write(|w| w.put(SCRATCH, &format!("w{t}-{i}"), &i)).unwrap();
                    }
                })
            })
            .collect();
        writers.into_iter().for_each(|w| w.join().unwrap());
        // A copy of the file as it is now holds only what was made durable:
        // redb's header names the last durable commit, never a later one.
        let copy = tempfile::tempdir().unwrap();
        std::fs::copy(dir.path().join(CONTROL_FILE), copy.path().join(CONTROL_FILE)).unwrap();
        let copied = ControlStore::open(copy.path()).unwrap();
        let read = copied.read().unwrap();
        for t in 0..8 {
            for i in 0..25 {
                assert_eq!(read.get(SCRATCH, &format!("w{t}-{i}")).unwrap(), Some(i), "w{t}-{i}");
            }
        }
    }

    /// `commit` returns while a durable commit is under way, its change
    /// seen by `read_for_change` but in no copy of the file; `durable`
    /// waits until it is in one.
    #[test]
    fn a_commit_returns_before_its_fsync_and_durable_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = ControlStore::open(dir.path()).unwrap();
        let (held, release) = hold_first(&store, || Ok(()), || Ok(()));
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || store.write(|w| w.put(SCRATCH, "first", &1)))
        };
        held.recv_timeout(PATIENCE).unwrap();

        let (committed_tx, committed_rx) = mpsc::channel();
        {
            let store = store.clone();
            std::thread::spawn(move || {
                committed_tx.send(store.commit(|w| w.put(SCRATCH, "deferred", &2))).unwrap()
            });
        }
        let ((), committed) =
            committed_rx.recv_timeout(PATIENCE).expect("commit() waited for the durable commit").unwrap();
        let seen = store.read_for_change().unwrap().get(SCRATCH, "deferred").unwrap();
        assert_eq!(seen, Some(2));
        assert_eq!(in_a_copy(dir.path(), "deferred"), None, "durable before any fsync");

        let (done, done_rx) = mpsc::channel();
        std::thread::spawn(move || done.send(committed.durable()).unwrap());
        assert!(
            done_rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "durable() returned while the durable commit was held"
        );
        drop(release);
        done_rx.recv_timeout(PATIENCE).expect("durable() hangs").unwrap();
        writer.join().unwrap().unwrap();
        assert_eq!(in_a_copy(dir.path(), "deferred"), Some(2));
    }

    /// A change `write` has returned is in every snapshot begun after,
    /// while other threads commit with and without waiting.
    #[test]
    fn a_written_change_is_seen_by_every_later_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = ControlStore::open(dir.path()).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let deferred: Vec<_> = (0..2)
            .map(|t| {
                let (store, stop) = (store.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut i = 0u32;
                    while !stop.load(Ordering::SeqCst) {
                        let (_, committed) =
                            store.commit(|w| w.put(SCRATCH, &format!("d{t}-{i}"), &i)).unwrap();
                        if i.is_multiple_of(3) {
                            committed.durable().unwrap();
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..300u32 {
                        let key = format!("w{t}-{i}");
                        store.write(|w| w.put(SCRATCH, &key, &i)).unwrap();
                        assert_eq!(
                            store.read().unwrap().get(SCRATCH, &key).unwrap(),
                            Some(i),
                            "{key} unseen by read()"
                        );
                        assert_eq!(
                            store.read_for_change().unwrap().get(SCRATCH, &key).unwrap(),
                            Some(i),
                            "{key}"
                        );
                    }
                })
            })
            .collect();
        let outcomes: Vec<_> = writers.into_iter().map(|w| w.join()).collect();
        stop.store(true, Ordering::SeqCst);
        deferred.into_iter().for_each(|d| d.join().unwrap());
        assert!(outcomes.iter().all(Result::is_ok), "a written change was not seen");
    }

    #[test]
    fn a_snapshot_holds_no_change_before_it_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = ControlStore::open(dir.path()).unwrap();
        let (held, release) = hold_first(&store, || Ok(()), || Ok(()));
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || store.write(|w| w.put(SCRATCH, "change", &1)))
        };
        held.recv_timeout(PATIENCE).unwrap();
        // Committed, not durable: redb shows it to a plain snapshot, and a
        // crash now would take it back.
        let plain = store.db().unwrap().begin_read().unwrap();
        assert_eq!(get_from::<u32>(&plain.open_table(META).unwrap(), "change").unwrap(), Some(1));
        drop(plain);
        assert_eq!(in_a_copy(dir.path(), "change"), None);

        let (seen, seen_rx) = mpsc::channel();
        {
            let store = store.clone();
            std::thread::spawn(move || {
                let read = store.read().and_then(|r| r.get(SCRATCH, "change"));
                seen.send(read).unwrap();
            });
        }
        assert!(
            seen_rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "read() returned while the change it holds was not durable"
        );
        assert!(!writer.is_finished(), "write() returned before its change was durable");
        drop(release);
        assert_eq!(seen_rx.recv_timeout(PATIENCE).unwrap().unwrap(), Some(1));
        writer.join().unwrap().unwrap();
        assert_eq!(in_a_copy(dir.path(), "change"), Some(1));
    }

    #[test]
    fn a_durable_commit_that_panics_fails_the_changes_waiting_and_hangs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ControlStore::open(dir.path()).unwrap();
        // The first durable commit is held while three more changes commit
        // without one, then panics before it begins.
        let (held, release) =
            hold_first(&store, || panic!("a durable commit panicked (injected)"), || Ok(()));
        let (done, done_rx) = mpsc::channel();
        let write = |key: &'static str| {
            let (store, done) = (store.clone(), done.clone());
            std::thread::spawn(move || {
                let write = || store.write(|w| w.put(SCRATCH, key, &1));
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(write));
                done.send((key, outcome.map_err(|_| "panicked"))).unwrap();
            })
        };
        let mut writers = vec![write("first")];
        held.recv_timeout(PATIENCE).unwrap();
        writers.extend(["a", "b", "c"].map(write));
        wait_until("three more changes committed", || store.inner.group.issued.load(Ordering::SeqCst) == 4);
        drop(release);

        let mut outcomes: BTreeMap<_, _> =
            (0..4).map(|_| done_rx.recv_timeout(PATIENCE).expect("a writer hangs")).collect();
        // The writer that made the durable commit panics; the others fail,
        // not one of them waits on.
        assert!(matches!(outcomes.remove("first"), Some(Err("panicked"))), "{outcomes:?}");
        for (key, outcome) in &outcomes {
            assert!(matches!(outcome, Ok(Err(StoreError::Failed(_)))), "{key}: {outcome:?}");
        }
        writers.into_iter().for_each(|w| w.join().unwrap());

        // A later change goes through, over the file opened again; the
        // failed ones are gone, from the store as from the file.
        let (later, later_rx) = mpsc::channel();
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || later.send(store.write(|w| w.put(SCRATCH, "later", &1))).unwrap())
        };
        later_rx.recv_timeout(PATIENCE).expect("a later write hangs").unwrap();
        writer.join().unwrap();
        assert_eq!(store.trouble(), None);
        let read = store.read().unwrap();
        for key in ["first", "a", "b", "c"] {
            assert_eq!(read.get(SCRATCH, key).unwrap(), None, "{key}");
        }
        assert_eq!(read.get(SCRATCH, "later").unwrap(), Some(1));
        drop((read, store));
        let reopened = ControlStore::open(dir.path()).unwrap();
        let read = reopened.read().unwrap();
        assert_eq!(read.get(SCRATCH, "a").unwrap(), None);
        assert_eq!(read.get(SCRATCH, "later").unwrap(), Some(1));
    }

    #[test]
    fn a_failed_durable_commit_fails_its_changes_and_none_of_them_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = ControlStore::open(dir.path()).unwrap();
        let failed = std::sync::atomic::AtomicBool::new(false);
        hook(&store, move || match failed.swap(true, Ordering::SeqCst) {
            false => Err(StoreError::Failed("fsync failed (injected)".into())),
            true => Ok(()),
        });
        match store.write(|w| w.put(SCRATCH, "lost", &1)) {
            Err(StoreError::Failed(why)) => assert!(why.contains("injected"), "{why}"),
            other => panic!("{other:?}"),
        }
        // Shown as storage trouble until a commit goes through.
        assert!(store.trouble().is_some_and(|t| t.detail.contains("injected")), "{:?}", store.trouble());
        // Nobody sees the change its writer was told failed, now or later.
        assert_eq!(store.read().unwrap().get(SCRATCH, "lost").unwrap(), None);
        store.write(|w| w.put(SCRATCH, "kept", &1)).unwrap();
        assert_eq!(store.trouble(), None);
        assert_eq!(store.read().unwrap().get(SCRATCH, "lost").unwrap(), None);
        drop(store);
        let reopened = ControlStore::open(dir.path()).unwrap();
        let read = reopened.read().unwrap();
        assert_eq!(read.get(SCRATCH, "lost").unwrap(), None);
        assert_eq!(read.get(SCRATCH, "kept").unwrap(), Some(1));
    }
}
