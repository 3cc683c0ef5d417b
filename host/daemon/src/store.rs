//! The daemon's own state: tokens, tenants, plugins, approvals, jobs,
//! results, support grants and the audit chains, in one redb file
//! (`control.redb`) beside the vault's.
//!
//! Every change goes through [`ControlStore::write`], which hands out one
//! write transaction: a state change and the audit entries it causes commit
//! together or not at all.

use std::path::Path;

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;

use std::collections::BTreeMap;

use crate::audit::{AuditEntry, AuditHead, ChainVerifier};

/// The control database's file name inside the data directory.
pub const CONTROL_FILE: &str = "control.redb";

pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
pub(crate) const TENANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("tenants");
pub(crate) const PLUGINS: TableDefinition<&str, &[u8]> = TableDefinition::new("plugins");
pub(crate) const APPROVALS: TableDefinition<&str, &[u8]> = TableDefinition::new("approvals");
pub(crate) const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
pub(crate) const RESULTS: TableDefinition<&str, &[u8]> = TableDefinition::new("results");
pub(crate) const OWNER_LOGS: TableDefinition<&str, &[u8]> = TableDefinition::new("owner_logs");
pub(crate) const GRANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("grants");
/// Published benchmarks, by name.
pub(crate) const BENCHMARKS: TableDefinition<&str, &[u8]> = TableDefinition::new("benchmarks");
/// `benchmark/tenant` to the tenant's opt-in.
pub(crate) const OPT_INS: TableDefinition<&str, &[u8]> = TableDefinition::new("opt_ins");
/// Benchmark runs, by id.
pub(crate) const BENCHMARK_RUNS: TableDefinition<&str, &[u8]> = TableDefinition::new("benchmark_runs");
/// The meta data vault: `benchmark/version` (zero-padded) to the released
/// tables, the vendor's. Names no tenant, holds no tenant's own value.
pub(crate) const META_VAULT: TableDefinition<&str, &[u8]> = TableDefinition::new("meta_vault");
/// Per benchmark, the tenant sets each cell was released with: the
/// subtraction rule's memory. Host-internal, never served.
pub(crate) const RELEASE_HISTORY: TableDefinition<&str, &[u8]> = TableDefinition::new("release_history");
/// `benchmark/version/tenant` to the tenant's own position, sealed under
/// its data key.
pub(crate) const POSITIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("positions");
/// A job request's key (`jobs::request_key`) to the job whose release answers
/// it.
pub(crate) const REPLAYS: TableDefinition<&str, &[u8]> = TableDefinition::new("replays");
/// One-time enrolment codes of tenant admins, by id: only a keyed hash of
/// each secret.
pub(crate) const ENROLMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("enrolments");
/// Queued jobs in submission order: sequence number to job id.
pub(crate) const QUEUE: TableDefinition<u64, &str> = TableDefinition::new("queue");
/// (chain, sequence number) to entry; a chain is a tenant, or `_host`.
pub(crate) const AUDIT: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("audit");
pub(crate) const AUDIT_HEADS: TableDefinition<&str, &[u8]> = TableDefinition::new("audit_heads");

/// Every keyed table, to create them all at open.
const RECORD_TABLES: [TableDefinition<&str, &[u8]>; 18] = [
    META,
    TOKENS,
    TENANTS,
    PLUGINS,
    APPROVALS,
    JOBS,
    RESULTS,
    OWNER_LOGS,
    GRANTS,
    AUDIT_HEADS,
    BENCHMARKS,
    OPT_INS,
    BENCHMARK_RUNS,
    META_VAULT,
    RELEASE_HISTORY,
    POSITIONS,
    REPLAYS,
    ENROLMENTS,
];

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
}

pub(crate) fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Database(e.to_string())
}

/// Chains found not to verify, with why: appends to them are refused.
type BrokenChains = std::sync::Arc<std::sync::Mutex<BTreeMap<String, String>>>;

fn lock(broken: &BrokenChains) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
    broken.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The open control database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ControlStore {
    db: std::sync::Arc<Database>,
    broken: BrokenChains,
}

impl ControlStore {
    /// Open (creating if needed) the control database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(CONTROL_FILE);
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse(path.display().to_string()),
            other => db_err(other),
        })?;
        let txn = db.begin_write().map_err(db_err)?;
        for table in RECORD_TABLES {
            txn.open_table(table).map_err(db_err)?;
        }
        txn.open_table(QUEUE).map_err(db_err)?;
        txn.open_table(AUDIT).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        Ok(Self { db: std::sync::Arc::new(db), broken: BrokenChains::default() })
    }

    /// Check every audit chain whole, as the daemon starts. A chain that
    /// does not verify is refused every later append (and with it every
    /// change it would record). Returns those chains, with why.
    pub fn verify_chains(&self) -> Result<BTreeMap<String, String>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let mut heads = BTreeMap::new();
        let mut broken = BTreeMap::new();
        for entry in txn.open_table(AUDIT_HEADS).map_err(db_err)?.iter().map_err(db_err)? {
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
        lock(&self.broken).extend(broken.clone());
        Ok(broken)
    }

    /// The chains appends are refused to, with why.
    pub fn broken_chains(&self) -> BTreeMap<String, String> {
        lock(&self.broken).clone()
    }

    /// Whether an entry could be appended to `chain` now: for a change that
    /// must not be made unless its entry can be (an ingest commits in the
    /// vault before its entry is written).
    pub fn appendable(&self, chain: &str) -> Result<(), StoreError> {
        if let Some(reason) = lock(&self.broken).get(chain) {
            return Err(StoreError::ChainBroken { chain: chain.to_owned(), reason: reason.clone() });
        }
        let read = self.read()?;
        let head: AuditHead = read.get(AUDIT_HEADS, chain)?.unwrap_or_default();
        let table = read.txn.open_table(AUDIT).map_err(db_err)?;
        check_head(&table, chain, &head)?.map_err(|reason| self.refuse(chain, reason))
    }

    fn refuse(&self, chain: &str, reason: String) -> StoreError {
        tracing::error!(chain, %reason, "an audit chain does not verify; appends to it are refused");
        lock(&self.broken).insert(chain.to_owned(), reason.clone());
        StoreError::ChainBroken { chain: chain.to_owned(), reason }
    }

    /// Run `change` in one write transaction and commit it if it returns
    /// `Ok`. An `Err` leaves nothing behind.
    pub fn write<T, E: From<StoreError>>(
        &self,
        change: impl FnOnce(&mut Write<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let mut write = Write { txn: &txn, store: self };
        let value = change(&mut write)?;
        txn.commit().map_err(db_err)?;
        Ok(value)
    }

    /// A consistent snapshot to read from.
    pub fn read(&self) -> Result<Read, StoreError> {
        Ok(Read { txn: self.db.begin_read().map_err(db_err)? })
    }
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt { key: key.to_owned(), detail: e.to_string() })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
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
    let mut out = Vec::new();
    for entry in table.iter().map_err(db_err)? {
        out.push(entry.map_err(db_err)?.1.value().to_owned());
    }
    Ok(out)
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
    /// The record under `key`, if any.
    pub fn get<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        get_from(&self.txn.open_table(table).map_err(db_err)?, key)
    }

    /// Every record of `table`, in key order.
    pub fn all<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>, StoreError> {
        all_from(&self.txn.open_table(table).map_err(db_err)?)
    }

    /// Every record of `table` whose key starts with `prefix`, in key order.
    pub fn prefixed<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        prefix: &str,
    ) -> Result<Vec<T>, StoreError> {
        prefixed_from(&self.txn.open_table(table).map_err(db_err)?, prefix)
    }

    /// Job ids waiting to run, oldest first.
    pub fn queue(&self) -> Result<Vec<String>, StoreError> {
        queue_from(&self.txn.open_table(QUEUE).map_err(db_err)?)
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

/// Reading one record, the same in a read and in a write transaction.
pub(crate) trait RecordRead {
    fn get<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, StoreError>;
}

impl RecordRead for Read {
    fn get<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        Read::get(self, table, key)
    }
}

impl RecordRead for Write<'_> {
    fn get<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        Write::get(self, table, key)
    }
}

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
    /// The record under `key`, as this transaction sees it.
    pub fn get<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        get_from(&self.txn.open_table(table).map_err(db_err)?, key)
    }

    /// Every record of `table`, in key order.
    pub fn all<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>, StoreError> {
        all_from(&self.txn.open_table(table).map_err(db_err)?)
    }

    /// Every record of `table` whose key starts with `prefix`, in key order.
    pub fn prefixed<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        prefix: &str,
    ) -> Result<Vec<T>, StoreError> {
        prefixed_from(&self.txn.open_table(table).map_err(db_err)?, prefix)
    }

    pub fn put<T: Serialize>(
        &mut self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(table).map_err(db_err)?;
        table.insert(key, encode(value).as_slice()).map_err(db_err)?;
        Ok(())
    }

    pub fn remove(&mut self, table: TableDefinition<&str, &[u8]>, key: &str) -> Result<bool, StoreError> {
        let mut table = self.txn.open_table(table).map_err(db_err)?;
        Ok(table.remove(key).map_err(db_err)?.is_some())
    }

    /// The next value of a named counter, from 1.
    pub fn next_sequence(&mut self, name: &str) -> Result<u64, StoreError> {
        let next = self.get::<u64>(META, name)?.unwrap_or(0) + 1;
        self.put(META, name, &next)?;
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

    pub fn dequeue(&mut self, seq: u64) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(QUEUE).map_err(db_err)?;
        table.remove(seq).map_err(db_err)?;
        Ok(())
    }

    /// Whether appends to `chain` are refused: it did not verify.
    pub fn chain_broken(&self, chain: &str) -> bool {
        lock(&self.store.broken).contains_key(chain)
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
        if let Some(reason) = lock(&self.store.broken).get(chain) {
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
        let store = ControlStore::open(dir.path()).unwrap();
        for i in 0..4 {
            store.write(|w| w.audit("acme", "daemon", "job.finish", json!({"job": i}))).unwrap();
        }
        (dir, store)
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

    #[test]
    fn a_failed_change_leaves_nothing_behind() {
        let (_dir, store) = store_with_chain();
        let failed: Result<(), StoreError> = store.write(|w| {
            w.audit("acme", "daemon", "half.done", json!({}))?;
            w.put(TENANTS, "ghost", &1u8)?;
            Err(StoreError::Database("stop".into()))
        });
        assert!(failed.is_err());
        assert_eq!(check(&store), Ok(4));
        assert_eq!(store.read().unwrap().get::<u8>(TENANTS, "ghost").unwrap(), None);
    }

    #[test]
    fn a_second_process_is_refused() {
        let (dir, _store) = store_with_chain();
        assert!(matches!(ControlStore::open(dir.path()), Err(StoreError::InUse(_))));
    }
}
