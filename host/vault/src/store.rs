//! The vault: one data directory holding every tenant's datasets as sealed,
//! compressed column segments in chunk files, and their metadata in redb.
//!
//! ```text
//! <dir>/kanon.redb                                  tenants, versions, key check
//! <dir>/chunks/<tenant uid>/<write uid>/<chunk>.kc   sealed column segments
//! ```
//!
//! A dataset version exists exactly when its record is committed in redb.
//! An ingest writes and syncs its chunk files first, under a fresh write
//! directory, then commits the record; a crash before the commit leaves an
//! unreferenced directory, which the next open deletes. Chunk files are never
//! rewritten, so readers and backups need no locks against ingests.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::IngestError;
use crate::chunk::{self, SegmentError};
use crate::ingest::ChunkReader;
use crate::ingest::truncate;
use crate::redb_file::{self, Handle, Reopening, StorageFailure};
use crate::schema::Schema;
use crate::sealing::{ChunkAddress, DataKey, KeyEncryptionKey, SealError};
use crate::table::{Column, Table};

pub(crate) const TENANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("tenants");
pub(crate) const VERSIONS: TableDefinition<(&str, &str, u64), &[u8]> = TableDefinition::new("versions");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const KEY_CHECK: &str = "key-check";
/// When storage was last probed (`Vault::probe_storage`).
const PROBE: &str = "storage-probe";
pub(crate) const DATABASE_FILE: &str = "kanon.redb";
pub(crate) const CHUNKS_DIR: &str = "chunks";

/// Why a vault operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(
        "`{0}` is not a valid name: 1 to 64 letters, digits, `.`, `_` or `-`, starting with a letter or digit"
    )]
    BadName(String),
    #[error("no tenant `{0}`")]
    UnknownTenant(String),
    #[error("tenant `{tenant}` has no dataset `{dataset}`")]
    UnknownDataset { tenant: String, dataset: String },
    #[error("dataset `{dataset}` has no version {version}")]
    UnknownVersion { dataset: String, version: u64 },
    #[error("cannot append to `{dataset}`: {detail}")]
    SchemaMismatch { dataset: String, detail: String },
    #[error("dataset `{0}` changed while this ingest ran; nothing was stored, try again")]
    Conflict(String),
    #[error("the key-encryption key does not open this data directory (wrong key file?)")]
    WrongKey,
    #[error("the data directory {0} is in use by another kanon process")]
    InUse(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("metadata store: {0}")]
    Metadata(Box<redb::Error>),
    #[error("{path} is damaged ({detail}): restore the data directory from a backup")]
    DamagedMetadata { path: PathBuf, detail: String },
    /// An I/O failure spoilt `kanon.redb` and it is being opened again.
    #[error("the metadata store failed ({0}) and is being opened again; try again")]
    StorageFailed(String),
    #[error("metadata record is unreadable: {0}")]
    Record(postcard::Error),
    #[error("{dataset} v{version}, chunk {chunk}: {detail}")]
    Corrupt { dataset: String, version: u64, chunk: u64, detail: String },
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("backup {path}: {detail}")]
    Backup { path: PathBuf, detail: String },
    #[error("{0} exists and is not empty")]
    NotEmpty(PathBuf),
    #[error("export: {0}")]
    Export(String),
    #[error("dataset `{dataset}` has no column `{column}`")]
    UnknownColumn { dataset: String, column: String },
    #[error("columns of `{dataset}`: {detail}")]
    BadColumnMapping { dataset: String, detail: String },
}

pub(crate) fn db_err(e: impl Into<redb::Error>) -> VaultError {
    VaultError::Metadata(Box::new(e.into()))
}

impl VaultError {
    /// The disk (or quota) is full: the operation may work once space
    /// returns.
    pub fn is_storage_full(&self) -> bool {
        match self {
            VaultError::Io { source, .. } => redb_file::is_full(source.kind()),
            VaultError::Metadata(e) => matches!(&**e, redb::Error::Io(e) if redb_file::is_full(e.kind())),
            _ => false,
        }
    }

    /// Storage failed underneath (full, or an I/O error, or still being
    /// reopened after one), rather than the request being wrong.
    pub fn is_storage_failure(&self) -> bool {
        match self {
            VaultError::Io { .. } | VaultError::StorageFailed(_) => true,
            VaultError::Metadata(e) => {
                matches!(&**e, redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::DatabaseClosed)
            }
            _ => false,
        }
    }
}

/// Whether redb's error says its file is damaged (rather than, say, not
/// readable by this user).
fn is_damage(error: &redb::Error) -> bool {
    use std::io::ErrorKind;
    match error {
        redb::Error::Corrupted(_)
        | redb::Error::TableTypeMismatch { .. }
        | redb::Error::TypeDefinitionChanged { .. }
        | redb::Error::TableIsMultimap(_) => true,
        redb::Error::Io(e) => matches!(e.kind(), ErrorKind::UnexpectedEof | ErrorKind::InvalidData),
        _ => false,
    }
}

/// Whether `chunks` holds a tenant's directory.
fn holds_tenant_chunks(chunks: &Path) -> Result<bool, VaultError> {
    for entry in std::fs::read_dir(chunks).map_err(io(chunks))? {
        let entry = entry.map_err(io(chunks))?;
        if entry.file_name().to_str().is_some_and(is_uid) {
            return Ok(true);
        }
    }
    Ok(false)
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VaultError + '_ {
    move |source| VaultError::Io { path: path.to_owned(), source }
}

pub(crate) fn decode<T: for<'a> Deserialize<'a>>(bytes: &[u8]) -> Result<T, VaultError> {
    postcard::from_bytes(bytes).map_err(VaultError::Record)
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("records serialize")
}

/// A tenant: its data key, wrapped by the key-encryption key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TenantRecord {
    /// Names the tenant's directory under `chunks/`.
    pub(crate) uid: String,
    pub(crate) wrapped_key: Vec<u8>,
}

/// A dataset version, as committed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct VersionRecord {
    pub(crate) version: u64,
    pub(crate) schema: Schema,
    pub(crate) rows: u64,
    pub(crate) source: String,
    pub(crate) created_unix_ms: u64,
    pub(crate) chunks: Vec<ChunkRecord>,
}

/// One chunk of a version: where its column segments are, and what they
/// decode to (blake3 of their plain encodings).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ChunkRecord {
    /// The write directory holding the file; an appended version shares its
    /// base's chunks.
    pub(crate) dir: String,
    /// The version that wrote it and its index there: its sealing address.
    pub(crate) origin_version: u64,
    pub(crate) index: u64,
    pub(crate) rows: u32,
    /// Per column: offset and length of its sealed segment in the file.
    pub(crate) segments: Vec<(u64, u32)>,
    pub(crate) plain_hash: [u8; 32],
}

impl ChunkRecord {
    pub(crate) fn file_name(&self) -> String {
        format!("{:08}.kc", self.index)
    }

    fn stored_bytes(&self) -> u64 {
        self.segments.iter().map(|&(_, len)| u64::from(len)).sum()
    }
}

/// What a dataset version is, without its contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionInfo {
    pub tenant: String,
    pub dataset: String,
    pub version: u64,
    pub rows: u64,
    pub schema: Schema,
    pub chunks: usize,
    /// Sealed bytes on disk, shared chunks included.
    pub stored_bytes: u64,
    pub source: String,
    pub created_unix_ms: u64,
    /// blake3 over the chunks' content hashes: equal contents, equal hash.
    pub content_hash: String,
}

/// How an ingest relates to the dataset's latest version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// The new version holds only the new rows.
    Replace,
    /// The new version is the latest one's rows followed by the new rows;
    /// the schema must match exactly.
    Append,
}

/// A data directory, open. Cheap to clone; safe to share between threads.
#[derive(Debug, Clone)]
pub struct Vault {
    pub(crate) inner: Arc<VaultInner>,
}

pub(crate) struct VaultInner {
    pub(crate) dir: PathBuf,
    /// `kanon.redb`, opened again after an I/O failure.
    pub(crate) db: Reopening,
    pub(crate) kek: RwLock<KeyEncryptionKey>,
    /// Shared by backups, exclusive for deleting files: a backup only ever
    /// copies files that stay.
    pub(crate) deletions: RwLock<()>,
    /// Shared by every commit of a change, exclusive while a backup takes
    /// its snapshots: no change commits between the caller's and the vault's.
    pub(crate) commits: RwLock<()>,
    _temporary: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for VaultInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// `name` if it is a valid tenant or dataset name: also safe as a path part.
fn check_name(name: &str) -> Result<&str, VaultError> {
    let mut chars = name.chars();
    let ok = name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok { Ok(name) } else { Err(VaultError::BadName(truncate(name))) }
}

pub(crate) fn random_uid() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_uid(name: &str) -> bool {
    name.len() == 32 && name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Make `path`'s directory entries durable.
pub(crate) fn sync_dir(path: &Path) -> Result<(), VaultError> {
    File::open(path).and_then(|d| d.sync_all()).map_err(io(path))
}

impl Vault {
    /// Open (creating if needed) the data directory `dir` under `kek`. A
    /// directory made under another key is refused. Leftovers of writes that
    /// never committed are deleted.
    pub fn open(dir: &Path, kek: KeyEncryptionKey) -> Result<Self, VaultError> {
        Self::open_inner(dir, kek, None)
    }

    /// A vault in a fresh temporary directory, deleted when the last handle
    /// goes: for a local run over files.
    pub fn temporary() -> Result<Self, VaultError> {
        let temp =
            tempfile::Builder::new().prefix("kanon-vault-").tempdir().map_err(io(Path::new("temp")))?;
        let dir = temp.path().to_owned();
        Self::open_inner(&dir, KeyEncryptionKey::generate(), Some(temp))
    }

    /// Open the metadata store and collect garbage. A damaged `kanon.redb`
    /// is a [`VaultError::DamagedMetadata`]: redb panics on some damage (a
    /// truncated file, a length field gone wrong), so the whole open runs
    /// under `catch_unwind`, and it opens one table of the write
    /// transaction at a time (a redb table dropped while another one's
    /// opening panics aborts the process). Opening reads every tenant and
    /// version record, so damage in them shows here, not later.
    fn open_inner(
        dir: &Path,
        kek: KeyEncryptionKey,
        temporary: Option<tempfile::TempDir>,
    ) -> Result<Self, VaultError> {
        let chunks = dir.join(CHUNKS_DIR);
        std::fs::create_dir_all(&chunks).map_err(io(dir))?;
        let path = dir.join(DATABASE_FILE);
        // redb makes a fresh store of a missing or empty file, and the
        // garbage collection would then delete every chunk it does not name.
        let lost = std::fs::metadata(&path).map_or(true, |m| m.len() == 0);
        if lost && holds_tenant_chunks(&chunks)? {
            return Err(VaultError::DamagedMetadata {
                path,
                detail: "missing or empty, while chunks/ holds tenant data".into(),
            });
        }
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let db = Self::open_database(dir, &path, &kek)?;
            let vault = Self {
                inner: Arc::new(VaultInner {
                    dir: dir.to_owned(),
                    db: Reopening::new(db, dir.to_owned()),
                    kek: RwLock::new(kek),
                    deletions: RwLock::new(()),
                    commits: RwLock::new(()),
                    _temporary: temporary,
                }),
            };
            let removed = vault.collect_garbage()?;
            Ok::<_, VaultError>((vault, removed))
        }));
        let damaged = |detail: String| VaultError::DamagedMetadata { path: path.clone(), detail };
        let (vault, removed) = match opened {
            Ok(Ok(opened)) => opened,
            Err(panic) => {
                let what = crate::ingest::panic_message(&*panic);
                return Err(damaged(format!("redb failed reading it: {}", truncate(what))));
            }
            Ok(Err(VaultError::Metadata(e))) if is_damage(&e) => return Err(damaged(e.to_string())),
            // The key check passed, so a record that does not open or
            // decode was altered.
            Ok(Err(e @ (VaultError::Record(_) | VaultError::Seal(_)))) => return Err(damaged(e.to_string())),
            Ok(Err(e)) => return Err(e),
        };
        if removed > 0 {
            tracing::info!(removed, "deleted the chunks of writes that never committed");
        }
        Ok(vault)
    }

    /// Open `path`, check the key against it (storing its check if new)
    /// and make sure the tables exist.
    fn open_database(dir: &Path, path: &Path, kek: &KeyEncryptionKey) -> Result<Handle, VaultError> {
        let db = redb_file::open(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => VaultError::InUse(dir.to_owned()),
            other => db_err(other),
        })?;
        let txn = db.begin_write().map_err(db_err)?;
        {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let check = meta.get(KEY_CHECK).map_err(db_err)?.map(|v| v.value().to_vec());
            match check {
                Some(check) if !kek.matches_check(&check) => return Err(VaultError::WrongKey),
                Some(_) => {}
                None => {
                    meta.insert(KEY_CHECK, kek.check_value().as_slice()).map_err(db_err)?;
                }
            }
        }
        // One at a time: see `open_inner`.
        drop(txn.open_table(TENANTS).map_err(db_err)?);
        drop(txn.open_table(VERSIONS).map_err(db_err)?);
        txn.commit().map_err(db_err)?;
        Ok(db)
    }

    /// The open `kanon.redb`; after an I/O failure spoilt it (a full disk),
    /// opened again first. redb repairs the file as it opens it.
    pub(crate) fn db(&self) -> Result<Arc<Handle>, VaultError> {
        let path = self.inner.dir.join(DATABASE_FILE);
        self.inner.db.get(|| {
            let opened = std::panic::catch_unwind(|| redb_file::open(&path));
            match opened {
                Ok(Ok(handle)) => Ok(handle),
                // The failed handle is still in use on another thread.
                Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => Err(VaultError::StorageFailed(
                    self.inner.db.trouble().map_or_else(|| "reopening".into(), |f| f.detail),
                )),
                Ok(Err(e)) => {
                    let e = redb::Error::from(e);
                    if is_damage(&e) {
                        Err(VaultError::DamagedMetadata { path: path.clone(), detail: e.to_string() })
                    } else {
                        Err(db_err(e))
                    }
                }
                Err(panic) => Err(VaultError::DamagedMetadata {
                    path: path.clone(),
                    detail: format!(
                        "redb failed reading it: {}",
                        truncate(crate::ingest::panic_message(&*panic))
                    ),
                }),
            }
        })
    }

    /// The last storage failure of the data directory that no commit has
    /// followed yet: `kanon.redb`'s, or a chunk file's.
    pub fn storage_trouble(&self) -> Option<StorageFailure> {
        self.inner.db.trouble()
    }

    /// Record a failure of a file in the data directory outside the vault
    /// (an upload being received): it shows as trouble until a commit.
    pub fn note_storage_failure(&self, error: &std::io::Error) {
        self.inner.db.note(StorageFailure::of(error));
    }

    /// Try a commit, to learn whether storage works again: opens
    /// `kanon.redb` again if a failure spoilt it. Clears the trouble when
    /// it goes through (after a full disk, once the disk has room again:
    /// [`redb_file::has_room`]).
    pub fn probe_storage(&self) -> Result<(), VaultError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(META)
            .map_err(db_err)?
            .insert(PROBE, now_unix_ms().to_le_bytes().as_slice())
            .map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        self.inner.db.committed();
        Ok(())
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    fn chunks_dir(&self) -> PathBuf {
        self.inner.dir.join(CHUNKS_DIR)
    }

    /// Delete write directories no committed version references, and tenant
    /// directories of tenants that no longer exist. Returns how many.
    fn collect_garbage(&self) -> Result<usize, VaultError> {
        let _deleting = self.inner.deletions.write().expect("lock");
        let txn = self.db()?.begin_read().map_err(db_err)?;
        let tenants = txn.open_table(TENANTS).map_err(db_err)?;
        let mut tenant_keys = std::collections::HashMap::new();
        for entry in tenants.iter().map_err(db_err)? {
            let (name, record) = entry.map_err(db_err)?;
            let record: TenantRecord = decode(record.value())?;
            let key = self.data_key(name.value(), &record)?;
            tenant_keys.insert(name.value().to_owned(), (record.uid, key));
        }
        let mut live: HashSet<(String, String)> = HashSet::new();
        for entry in txn.open_table(VERSIONS).map_err(db_err)?.iter().map_err(db_err)? {
            let (k, sealed) = entry.map_err(db_err)?;
            let Some((uid, key)) = tenant_keys.get(k.value().0) else { continue };
            let record = open_record(key, k.value(), sealed.value())?;
            live.extend(record.chunks.into_iter().map(|c| (uid.clone(), c.dir)));
        }
        let live_tenants: HashSet<&String> = tenant_keys.values().map(|(uid, _)| uid).collect();
        let mut removed = 0;
        let root = self.chunks_dir();
        for tenant_dir in std::fs::read_dir(&root).map_err(io(&root))? {
            let tenant_dir = tenant_dir.map_err(io(&root))?.path();
            let Some(tenant_uid) = tenant_dir.file_name().and_then(|n| n.to_str()).filter(|n| is_uid(n))
            else {
                continue;
            };
            if !live_tenants.contains(&tenant_uid.to_owned()) {
                std::fs::remove_dir_all(&tenant_dir).map_err(io(&tenant_dir))?;
                removed += 1;
                continue;
            }
            for write_dir in std::fs::read_dir(&tenant_dir).map_err(io(&tenant_dir))? {
                let write_dir = write_dir.map_err(io(&tenant_dir))?.path();
                let Some(name) = write_dir.file_name().and_then(|n| n.to_str()).filter(|n| is_uid(n)) else {
                    continue;
                };
                if !live.contains(&(tenant_uid.to_owned(), name.to_owned())) {
                    std::fs::remove_dir_all(&write_dir).map_err(io(&write_dir))?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    fn tenant_record(&self, tenant: &str) -> Result<Option<TenantRecord>, VaultError> {
        let txn = self.db()?.begin_read().map_err(db_err)?;
        let table = txn.open_table(TENANTS).map_err(db_err)?;
        table.get(tenant).map_err(db_err)?.map(|v| decode(v.value())).transpose()
    }

    fn data_key(&self, tenant: &str, record: &TenantRecord) -> Result<DataKey, VaultError> {
        Ok(self.inner.kek.read().expect("lock").unwrap_key(&record.wrapped_key, tenant)?)
    }

    /// The secret `tenant`'s run pseudonyms derive from (with the run id).
    pub fn pseudonym_secret(&self, tenant: &str) -> Result<[u8; 32], VaultError> {
        let record =
            self.tenant_record(tenant)?.ok_or_else(|| VaultError::UnknownTenant(truncate(tenant)))?;
        Ok(self.data_key(tenant, &record)?.pseudonym_secret())
    }

    /// Seal `bytes` under `tenant`'s data key, bound to `label`: for what a
    /// host keeps of the tenant's that may carry its data, such as a
    /// plugin's output. Erasing the tenant makes it unreadable. A label is
    /// never a dataset name (it holds a `:`), so it cannot pass for a
    /// version record.
    pub fn seal_for_tenant(&self, tenant: &str, label: &str, bytes: &[u8]) -> Result<Vec<u8>, VaultError> {
        let (_, key) = self.tenant(tenant)?;
        Ok(key.seal_record(tenant, &format!("note:{label}"), 0, bytes))
    }

    /// Open what [`Self::seal_for_tenant`] sealed for the same tenant and label.
    pub fn open_for_tenant(&self, tenant: &str, label: &str, sealed: &[u8]) -> Result<Vec<u8>, VaultError> {
        let (_, key) = self.tenant(tenant)?;
        Ok(key.open_record(tenant, &format!("note:{label}"), 0, sealed)?)
    }

    /// Every version of `dataset`, oldest first, read from one snapshot.
    fn version_records(
        txn: &redb::ReadTransaction,
        key: &DataKey,
        tenant: &str,
        dataset: &str,
    ) -> Result<Vec<VersionRecord>, VaultError> {
        let table = txn.open_table(VERSIONS).map_err(db_err)?;
        let range = table.range((tenant, dataset, 0)..=(tenant, dataset, u64::MAX)).map_err(db_err)?;
        range
            .map(|entry| {
                let (k, sealed) = entry.map_err(db_err)?;
                open_record(key, k.value(), sealed.value())
            })
            .collect()
    }

    fn latest(
        &self,
        key: &DataKey,
        tenant: &str,
        dataset: &str,
    ) -> Result<Option<VersionRecord>, VaultError> {
        let txn = self.db()?.begin_read().map_err(db_err)?;
        Ok(Self::version_records(&txn, key, tenant, dataset)?.pop())
    }

    /// The tenant's record and data key.
    fn tenant(&self, tenant: &str) -> Result<(TenantRecord, DataKey), VaultError> {
        let record =
            self.tenant_record(tenant)?.ok_or_else(|| VaultError::UnknownTenant(truncate(tenant)))?;
        let key = self.data_key(tenant, &record)?;
        Ok((record, key))
    }

    /// Store what `reader` yields as a new version of `tenant`'s `dataset`.
    /// Either the whole version is committed or nothing is left behind.
    pub fn ingest(
        &self,
        tenant: &str,
        dataset: &str,
        mode: WriteMode,
        reader: Box<dyn ChunkReader>,
        source: &str,
    ) -> Result<VersionInfo, VaultError> {
        let ingested = self.ingest_files(tenant, dataset, mode, reader, source);
        // A chunk file the disk refused is trouble too, until a commit.
        if let Err(VaultError::Io { source, .. }) = &ingested
            && redb_file::is_full(source.kind())
        {
            self.inner.db.note(StorageFailure::of(source));
        }
        ingested
    }

    fn ingest_files(
        &self,
        tenant: &str,
        dataset: &str,
        mode: WriteMode,
        mut reader: Box<dyn ChunkReader>,
        source: &str,
    ) -> Result<VersionInfo, VaultError> {
        check_name(tenant)?;
        check_name(dataset)?;
        let existing_tenant = self.tenant_record(tenant)?;
        let (key, tenant_record, new_tenant) = match existing_tenant {
            Some(record) => (self.data_key(tenant, &record)?, record, false),
            None => {
                let (key, wrapped_key) = self.inner.kek.read().expect("lock").new_data_key(tenant);
                (key, TenantRecord { uid: random_uid(), wrapped_key }, true)
            }
        };
        let latest = self.latest(&key, tenant, dataset)?;
        let mut chunks = match (mode, &latest) {
            (WriteMode::Replace, _) => Vec::new(),
            (WriteMode::Append, None) => {
                return Err(VaultError::UnknownDataset {
                    tenant: truncate(tenant),
                    dataset: truncate(dataset),
                });
            }
            (WriteMode::Append, Some(base)) => {
                if let Some(detail) = schema_difference(&base.schema, reader.schema()) {
                    return Err(VaultError::SchemaMismatch { dataset: dataset.into(), detail });
                }
                base.chunks.clone()
            }
        };
        let version = latest.as_ref().map_or(1, |v| v.version + 1);
        let write_uid = random_uid();
        let tenant_dir = self.chunks_dir().join(&tenant_record.uid);
        let write_dir = tenant_dir.join(&write_uid);
        std::fs::create_dir_all(&write_dir).map_err(io(&write_dir))?;
        // Until the commit, the write directory is garbage.
        let mut cleanup = RemoveOnDrop(Some(write_dir.clone()));

        let schema = reader.schema().clone();
        let mut rows = chunks.iter().map(|c| u64::from(c.rows)).sum::<u64>();
        let writer =
            ChunkWriter { key: &key, tenant, dataset, version, dir: &write_dir, write_uid: &write_uid };
        // Parse on one thread while the other encodes, seals and writes.
        std::thread::scope(|scope| -> Result<(), VaultError> {
            let (sender, receiver) = std::sync::mpsc::sync_channel::<Result<Table, IngestError>>(1);
            let parse = move || {
                loop {
                    let next = reader.next_chunk().transpose();
                    let stop = !matches!(next, Some(Ok(_)));
                    if let Some(item) = next
                        && sender.send(item).is_err()
                    {
                        return;
                    }
                    if stop {
                        return;
                    }
                }
            };
            let parser = std::thread::Builder::new().spawn_scoped(scope, parse).map_err(|e| {
                VaultError::Ingest(IngestError::whole(
                    source,
                    format!("cannot start a thread to read it: {e}"),
                ))
            })?;
            let mut write = || -> Result<(), VaultError> {
                for table in &receiver {
                    let table = table?;
                    rows += table.rows as u64;
                    let index = chunks.len() as u64;
                    chunks.push(writer.write(index, &table)?);
                }
                Ok(())
            };
            let written = write();
            // A parser waiting to send learns that nobody is receiving.
            drop(receiver);
            // Joined on every path: a reader bug must fail this ingest, not
            // the host, and say what it was even when writing failed too.
            match parser.join() {
                Ok(()) => written,
                Err(panic) => {
                    let mut detail = format!(
                        "the input reader failed unexpectedly ({})",
                        crate::ingest::panic_message(&*panic)
                    );
                    if let Err(e) = written {
                        detail.push_str(&format!("; writing had failed too: {e}"));
                    }
                    Err(VaultError::Ingest(IngestError::whole(source, detail)))
                }
            }
        })?;
        if chunks.is_empty() {
            return Err(VaultError::Ingest(IngestError::whole(source, "no rows".into())));
        }
        sync_dir(&write_dir)?;
        sync_dir(&tenant_dir)?;
        sync_dir(&self.chunks_dir())?;

        let record = VersionRecord {
            version,
            schema,
            rows,
            source: source.to_owned(),
            created_unix_ms: now_unix_ms(),
            chunks,
        };
        let db = self.db()?;
        let txn = db.begin_write().map_err(db_err)?;
        {
            let mut tenants = txn.open_table(TENANTS).map_err(db_err)?;
            let now_exists = tenants.get(tenant).map_err(db_err)?.is_some();
            if new_tenant {
                if now_exists {
                    return Err(VaultError::Conflict(dataset.into()));
                }
                tenants.insert(tenant, encode(&tenant_record).as_slice()).map_err(db_err)?;
            } else if !now_exists {
                return Err(VaultError::UnknownTenant(truncate(tenant)));
            }
            let mut versions = txn.open_table(VERSIONS).map_err(db_err)?;
            let newest = versions
                .range((tenant, dataset, 0)..=(tenant, dataset, u64::MAX))
                .map_err(db_err)?
                .next_back()
                .transpose()
                .map_err(db_err)?
                .map(|(k, _)| k.value().2);
            if newest != latest.as_ref().map(|v| v.version) {
                return Err(VaultError::Conflict(dataset.into()));
            }
            let sealed = key.seal_record(tenant, dataset, version, &encode(&record));
            versions.insert((tenant, dataset, version), sealed.as_slice()).map_err(db_err)?;
        }
        {
            let _commit = self.inner.commits.read().expect("lock");
            txn.commit().map_err(db_err)?;
        }
        self.inner.db.committed();
        cleanup.0 = None;
        Ok(info(tenant, dataset, &record))
    }

    /// `tenant`'s datasets, each at its latest version.
    pub fn datasets(&self, tenant: &str) -> Result<Vec<VersionInfo>, VaultError> {
        let (_, key) = self.tenant(tenant)?;
        let txn = self.db()?.begin_read().map_err(db_err)?;
        let table = txn.open_table(VERSIONS).map_err(db_err)?;
        let mut latest: Vec<VersionInfo> = Vec::new();
        for entry in table.range((tenant, "", 0)..).map_err(db_err)? {
            let (key_value, record) = entry.map_err(db_err)?;
            let (t, dataset, _) = key_value.value();
            if t != tenant {
                break;
            }
            let info = info(tenant, dataset, &open_record(&key, key_value.value(), record.value())?);
            match latest.last_mut() {
                Some(last) if last.dataset == dataset => *last = info,
                _ => latest.push(info),
            }
        }
        Ok(latest)
    }

    /// Every version of `tenant`'s `dataset`, oldest first.
    pub fn versions(&self, tenant: &str, dataset: &str) -> Result<Vec<VersionInfo>, VaultError> {
        let (_, key) = self.tenant(tenant)?;
        let txn = self.db()?.begin_read().map_err(db_err)?;
        let records = Self::version_records(&txn, &key, tenant, dataset)?;
        if records.is_empty() {
            return Err(VaultError::UnknownDataset { tenant: truncate(tenant), dataset: truncate(dataset) });
        }
        Ok(records.iter().map(|r| info(tenant, dataset, r)).collect())
    }

    /// The tenants, by name.
    pub fn tenants(&self) -> Result<Vec<String>, VaultError> {
        let txn = self.db()?.begin_read().map_err(db_err)?;
        let table = txn.open_table(TENANTS).map_err(db_err)?;
        table.iter().map_err(db_err)?.map(|e| Ok(e.map_err(db_err)?.0.value().to_owned())).collect()
    }

    /// A fixed version of `tenant`'s `dataset` (the latest if `None`) to read.
    pub fn dataset(
        &self,
        tenant: &str,
        dataset: &str,
        version: Option<u64>,
    ) -> Result<DatasetVersion, VaultError> {
        let (record, key) = self.tenant(tenant)?;
        let txn = self.db()?.begin_read().map_err(db_err)?;
        let mut records = Self::version_records(&txn, &key, tenant, dataset)?;
        let unknown = || VaultError::UnknownDataset { tenant: truncate(tenant), dataset: truncate(dataset) };
        let found = match version {
            None => records.pop().ok_or_else(unknown)?,
            Some(v) => {
                if records.is_empty() {
                    return Err(unknown());
                }
                let i = records.iter().position(|r| r.version == v);
                let i =
                    i.ok_or_else(|| VaultError::UnknownVersion { dataset: dataset.into(), version: v })?;
                records.swap_remove(i)
            }
        };
        Ok(DatasetVersion {
            inner: Arc::new(VersionHandle {
                _vault: self.inner.clone(),
                tenant_dir: self.chunks_dir().join(&record.uid),
                tenant: tenant.to_owned(),
                dataset: dataset.to_owned(),
                key,
                record: found,
            }),
            view: None,
        })
    }

    /// Delete every version of `tenant`'s `dataset` and its files.
    pub fn delete_dataset(&self, tenant: &str, dataset: &str) -> Result<VersionInfo, VaultError> {
        let _deleting = self.inner.deletions.write().expect("lock");
        let (record, key) = self.tenant(tenant)?;
        let db = self.db()?;
        let txn = db.begin_write().map_err(db_err)?;
        let records: Vec<VersionRecord> = {
            let mut versions = txn.open_table(VERSIONS).map_err(db_err)?;
            let removed = versions
                .extract_from_if((tenant, dataset, 0)..=(tenant, dataset, u64::MAX), |_, _| true)
                .map_err(db_err)?;
            removed
                .map(|e| {
                    let (k, sealed) = e.map_err(db_err)?;
                    open_record(&key, k.value(), sealed.value())
                })
                .collect::<Result<_, _>>()?
        };
        let Some(latest) = records.last().cloned() else {
            return Err(VaultError::UnknownDataset { tenant: truncate(tenant), dataset: truncate(dataset) });
        };
        {
            let _commit = self.inner.commits.read().expect("lock");
            txn.commit().map_err(db_err)?;
        }
        self.inner.db.committed();
        let dirs: HashSet<&String> = records.iter().flat_map(|r| r.chunks.iter().map(|c| &c.dir)).collect();
        for dir in dirs {
            let path = self.chunks_dir().join(&record.uid).join(dir);
            remove_dir_if_present(&path)?;
        }
        Ok(info(tenant, dataset, &latest))
    }

    /// Erase `tenant`: its wrapped data key and every record go in one
    /// commit (crypto-shredding: no chunk of it opens again), then its files.
    /// Returns how many dataset versions were erased.
    pub fn erase_tenant(&self, tenant: &str) -> Result<usize, VaultError> {
        let _deleting = self.inner.deletions.write().expect("lock");
        let db = self.db()?;
        let txn = db.begin_write().map_err(db_err)?;
        let (record, erased) = {
            let mut tenants = txn.open_table(TENANTS).map_err(db_err)?;
            let record: TenantRecord = match tenants.remove(tenant).map_err(db_err)? {
                Some(v) => decode(v.value())?,
                None => return Err(VaultError::UnknownTenant(truncate(tenant))),
            };
            let mut versions = txn.open_table(VERSIONS).map_err(db_err)?;
            let erased = versions
                .extract_from_if((tenant, "", 0)..=(tenant, "\u{10ffff}", u64::MAX), |_, _| true)
                .map_err(db_err)?
                .count();
            (record, erased)
        };
        {
            let _commit = self.inner.commits.read().expect("lock");
            txn.commit().map_err(db_err)?;
        }
        self.inner.db.committed();
        remove_dir_if_present(&self.chunks_dir().join(&record.uid))?;
        Ok(erased)
    }

    /// Rotate the key-encryption key: every data key is re-wrapped under
    /// `next` in one commit; no data is rewritten. From now on the vault
    /// opens only with `next`.
    pub fn rotate_key(&self, next: KeyEncryptionKey) -> Result<usize, VaultError> {
        let mut kek = self.inner.kek.write().expect("lock");
        let db = self.db()?;
        let txn = db.begin_write().map_err(db_err)?;
        let mut count = 0;
        {
            let mut tenants = txn.open_table(TENANTS).map_err(db_err)?;
            let mut rewrapped = Vec::new();
            for entry in tenants.iter().map_err(db_err)? {
                let (name, value) = entry.map_err(db_err)?;
                let mut record: TenantRecord = decode(value.value())?;
                record.wrapped_key = kek.rewrap(&next, &record.wrapped_key, name.value())?;
                rewrapped.push((name.value().to_owned(), record));
            }
            for (name, record) in rewrapped {
                tenants.insert(name.as_str(), encode(&record).as_slice()).map_err(db_err)?;
                count += 1;
            }
            let mut meta = txn.open_table(META).map_err(db_err)?;
            meta.insert(KEY_CHECK, next.check_value().as_slice()).map_err(db_err)?;
        }
        {
            let _commit = self.inner.commits.read().expect("lock");
            txn.commit().map_err(db_err)?;
        }
        self.inner.db.committed();
        *kek = next;
        Ok(count)
    }
}

/// A version record, opened with the tenant's key for its place `at`.
pub(crate) fn open_record(
    key: &DataKey,
    at: (&str, &str, u64),
    sealed: &[u8],
) -> Result<VersionRecord, VaultError> {
    let (tenant, dataset, version) = at;
    decode(&key.open_record(tenant, dataset, version, sealed)?)
}

fn remove_dir_if_present(path: &Path) -> Result<(), VaultError> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(path)(e)),
        _ => Ok(()),
    }
}

/// Deletes a directory when dropped, unless disarmed (set to `None`).
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

/// How `next` differs from `base`, if it does.
fn schema_difference(base: &Schema, next: &Schema) -> Option<String> {
    if base == next {
        return None;
    }
    let describe = |s: &Schema| {
        s.fields
            .iter()
            .map(|f| format!("{} {:?} {}", truncate(&f.name), f.classification, f.column_type))
            .collect::<Vec<_>>()
    };
    let (a, b) = (describe(base), describe(next));
    let i = a.iter().zip(&b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
    Some(format!(
        "the schema differs at column {}: the dataset has `{}`, the input has `{}`",
        i + 1,
        a.get(i).map_or("nothing", String::as_str),
        b.get(i).map_or("nothing", String::as_str)
    ))
}

pub(crate) fn info(tenant: &str, dataset: &str, record: &VersionRecord) -> VersionInfo {
    VersionInfo {
        tenant: tenant.to_owned(),
        dataset: dataset.to_owned(),
        version: record.version,
        rows: record.rows,
        schema: record.schema.clone(),
        chunks: record.chunks.len(),
        stored_bytes: record.chunks.iter().map(ChunkRecord::stored_bytes).sum(),
        source: record.source.clone(),
        created_unix_ms: record.created_unix_ms,
        content_hash: content_hash(&record.chunks),
    }
}

fn content_hash(chunks: &[ChunkRecord]) -> String {
    let mut hasher = blake3::Hasher::new_derive_key("kanon 2026-11 dataset content");
    for chunk in chunks {
        hasher.update(&chunk.plain_hash);
    }
    hasher.finalize().to_hex().to_string()
}

/// Encodes, seals and writes the chunks of one version.
struct ChunkWriter<'a> {
    key: &'a DataKey,
    tenant: &'a str,
    dataset: &'a str,
    version: u64,
    dir: &'a Path,
    write_uid: &'a str,
}

impl ChunkWriter<'_> {
    fn write(&self, index: u64, table: &Table) -> Result<ChunkRecord, VaultError> {
        let mut record = ChunkRecord {
            dir: self.write_uid.to_owned(),
            origin_version: self.version,
            index,
            rows: table.rows as u32,
            segments: Vec::with_capacity(table.columns.len()),
            plain_hash: [0; 32],
        };
        let path = self.dir.join(record.file_name());
        let mut file = std::io::BufWriter::with_capacity(1 << 20, File::create(&path).map_err(io(&path))?);
        let mut hasher = blake3::Hasher::new();
        let mut offset = 0u64;
        for (column_index, column) in table.columns.iter().enumerate() {
            let plain = chunk::encode_plain(column, table.rows);
            hasher.update(&plain);
            let address = ChunkAddress {
                tenant: self.tenant,
                dataset: self.dataset,
                version: self.version,
                chunk: index,
                column: column_index as u32,
            };
            let sealed = self.key.seal(&address, &chunk::compress(&plain));
            file.write_all(&sealed).map_err(io(&path))?;
            record.segments.push((offset, sealed.len() as u32));
            offset += sealed.len() as u64;
        }
        let file = file.into_inner().map_err(|e| io(&path)(e.into_error()))?;
        file.sync_all().map_err(io(&path))?;
        record.plain_hash = *hasher.finalize().as_bytes();
        Ok(record)
    }
}

/// A fixed version of one tenant's dataset, open for reading. It holds the
/// tenant's data key; clear values leave it only through [`crate::Scan`]
/// (as pseudonyms) and the tenant's own export.
#[derive(Debug, Clone)]
pub struct DatasetVersion {
    inner: Arc<VersionHandle>,
    /// The schema under other column names: see [`Self::with_column_names`].
    view: Option<Arc<Schema>>,
}

struct VersionHandle {
    /// Keeps a temporary vault's directory alive while this is read.
    _vault: Arc<VaultInner>,
    tenant_dir: PathBuf,
    tenant: String,
    dataset: String,
    key: DataKey,
    record: VersionRecord,
}

impl std::fmt::Debug for VersionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatasetVersion")
            .field("tenant", &self.tenant)
            .field("dataset", &self.dataset)
            .field("version", &self.record.version)
            .finish_non_exhaustive()
    }
}

impl DatasetVersion {
    /// The dataset's name.
    pub fn name(&self) -> &str {
        &self.inner.dataset
    }

    /// The version number.
    pub fn version(&self) -> u64 {
        self.inner.record.version
    }

    pub fn schema(&self) -> &Schema {
        self.view.as_deref().unwrap_or(&self.inner.record.schema)
    }

    /// This version as a reader expecting other column names sees it:
    /// `names` maps each name the reader uses to the stored column it reads.
    /// Every other column keeps its type and place but has no name, so it
    /// cannot be asked for; the entity column is still found by its
    /// classification. For a benchmark, whose plugin names the columns a
    /// tenant maps its own to.
    pub fn with_column_names(&self, names: &BTreeMap<String, String>) -> Result<DatasetVersion, VaultError> {
        let stored = &self.inner.record.schema;
        let mut fields = stored.fields.clone();
        fields.iter_mut().for_each(|f| f.name.clear());
        for (shown, column) in names {
            let index = stored.index_of(column).ok_or_else(|| VaultError::UnknownColumn {
                dataset: self.inner.dataset.clone(),
                column: truncate(column),
            })?;
            // An empty name would find the unnamed columns.
            let detail = if shown.is_empty() {
                format!("column `{}` is mapped to an empty name", truncate(column))
            } else if !fields[index].name.is_empty() {
                format!("column `{}` is mapped twice", truncate(column))
            } else {
                String::new()
            };
            if !detail.is_empty() {
                return Err(VaultError::BadColumnMapping { dataset: self.inner.dataset.clone(), detail });
            }
            fields[index].name = shown.clone();
        }
        Ok(DatasetVersion {
            inner: self.inner.clone(),
            view: Some(Arc::new(Schema { fields, reference: self.schema().reference })),
        })
    }

    pub fn rows(&self) -> u64 {
        self.inner.record.rows
    }

    /// What this version is.
    pub fn info(&self) -> VersionInfo {
        info(&self.inner.tenant, &self.inner.dataset, &self.inner.record)
    }

    pub(crate) fn chunk_count(&self) -> usize {
        self.inner.record.chunks.len()
    }

    pub(crate) fn chunk_rows(&self, chunk: usize) -> usize {
        self.inner.record.chunks[chunk].rows as usize
    }

    /// Columns `columns` (schema indexes) of chunk `chunk`, decoded.
    pub(crate) fn read_chunk(&self, chunk: usize, columns: &[usize]) -> Result<Vec<Column>, VaultError> {
        let mut file = None;
        columns
            .iter()
            .map(|&column| {
                let plain = self.read_segment_from(&mut file, chunk, column)?;
                let column_type = self.schema().fields[column].column_type;
                chunk::decode_plain(&plain, column_type, self.chunk_rows(chunk))
                    .map_err(|e| self.corrupt(chunk, e.to_string()))
            })
            .collect()
    }

    /// Column `column`'s segment of chunk `chunk`: read, opened (which
    /// authenticates it) and decompressed, not yet decoded.
    pub(crate) fn read_segment(&self, chunk: usize, column: usize) -> Result<Vec<u8>, VaultError> {
        self.read_segment_from(&mut None, chunk, column)
    }

    /// [`Self::read_segment`] from `file`, the chunk's file, opened into it
    /// if it is not open yet: a chunk's columns are read with one open.
    fn read_segment_from(
        &self,
        file: &mut Option<File>,
        chunk: usize,
        column: usize,
    ) -> Result<Vec<u8>, VaultError> {
        let h = &self.inner;
        let c = &h.record.chunks[chunk];
        let corrupt = |detail: String| self.corrupt(chunk, detail);
        let Some(&(offset, len)) =
            c.segments.get(column).filter(|_| c.segments.len() == h.record.schema.fields.len())
        else {
            return Err(corrupt("the record's segments do not match the schema".into()));
        };
        let path = h.tenant_dir.join(&c.dir).join(c.file_name());
        let mut sealed = vec![0; len as usize];
        let file = match file {
            Some(file) => file,
            None => file.insert(File::open(&path).map_err(io(&path))?),
        };
        file.seek(SeekFrom::Start(offset)).and_then(|_| file.read_exact(&mut sealed)).map_err(io(&path))?;
        let address = ChunkAddress {
            tenant: &h.tenant,
            dataset: &h.dataset,
            version: c.origin_version,
            chunk: c.index,
            column: column as u32,
        };
        let stored = h.key.open(&address, &sealed).map_err(|e| corrupt(e.to_string()))?;
        chunk::decompress(&stored).map_err(|e: SegmentError| corrupt(e.to_string()))
    }

    /// The stored size of a segment: what reading it costs.
    pub(crate) fn segment_len(&self, chunk: usize, column: usize) -> u64 {
        self.inner.record.chunks[chunk].segments.get(column).map_or(0, |&(_, len)| len.into())
    }

    pub(crate) fn corrupt(&self, chunk: usize, detail: String) -> VaultError {
        VaultError::Corrupt {
            dataset: self.inner.dataset.clone(),
            version: self.inner.record.version,
            chunk: chunk as u64,
            detail,
        }
    }

    /// Read every chunk and check it against its recorded content hash.
    pub fn verify(&self) -> Result<(), VaultError> {
        let all: Vec<usize> = (0..self.schema().fields.len()).collect();
        for chunk in 0..self.chunk_count() {
            let rows = self.chunk_rows(chunk);
            let mut hasher = blake3::Hasher::new();
            for column in self.read_chunk(chunk, &all)? {
                hasher.update(&chunk::encode_plain(&column, rows));
            }
            if *hasher.finalize().as_bytes() != self.inner.record.chunks[chunk].plain_hash {
                return Err(VaultError::Corrupt {
                    dataset: self.inner.dataset.clone(),
                    version: self.version(),
                    chunk: chunk as u64,
                    detail: "contents differ from the recorded hash".into(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Classification, ColumnType, Field};
    use crate::table::TableBuilder;

    /// Yields one chunk, first doing `before_first` (if any), then panics.
    struct Buggy {
        schema: Schema,
        chunks: usize,
        before_first: Option<Box<dyn FnOnce() + Send>>,
    }

    impl ChunkReader for Buggy {
        fn schema(&self) -> &Schema {
            &self.schema
        }

        fn next_chunk(&mut self) -> Result<Option<Table>, IngestError> {
            self.chunks += 1;
            if self.chunks > 1 {
                panic!("reader bug 42");
            }
            if let Some(before) = self.before_first.take() {
                before();
            }
            let mut builder = TableBuilder::new("", self.schema.clone());
            builder.push_text(0, "e1");
            builder.end_row();
            Ok(Some(builder.finish()))
        }
    }

    fn buggy(before_first: Option<Box<dyn FnOnce() + Send>>) -> Box<dyn ChunkReader> {
        let entity = Field {
            name: "id".into(),
            column_type: ColumnType::Text,
            classification: Classification::Entity,
        };
        Box::new(Buggy { schema: Schema { fields: vec![entity], reference: false }, chunks: 0, before_first })
    }

    #[test]
    fn a_sealed_note_opens_only_for_its_tenant_and_label_and_not_after_erasure() {
        let vault = Vault::temporary().unwrap();
        for tenant in ["acme", "other"] {
            let csv = std::io::Cursor::new(b"id\ne1\n".to_vec());
            let reader = crate::open_stream(
                crate::InputFormat::Csv,
                "t.csv",
                csv,
                &crate::IngestOptions::entity("id"),
            )
            .unwrap();
            vault.ingest(tenant, "d", WriteMode::Replace, reader, "t.csv").unwrap();
        }
        let sealed = vault.seal_for_tenant("acme", "owner-log:job_1", b"stdout: 42").unwrap();
        assert!(!sealed.windows(2).any(|w| w == b"42"), "sealed, not in clear");
        assert_eq!(vault.open_for_tenant("acme", "owner-log:job_1", &sealed).unwrap(), b"stdout: 42");
        assert!(matches!(
            vault.open_for_tenant("acme", "owner-log:job_2", &sealed),
            Err(VaultError::Seal(_))
        ));
        assert!(matches!(
            vault.open_for_tenant("other", "owner-log:job_1", &sealed),
            Err(VaultError::Seal(_))
        ));
        vault.erase_tenant("acme").unwrap();
        assert!(matches!(
            vault.open_for_tenant("acme", "owner-log:job_1", &sealed),
            Err(VaultError::UnknownTenant(_))
        ));
    }

    #[test]
    fn a_renamed_view_reads_mapped_columns_and_hides_the_rest() {
        let vault = Vault::temporary().unwrap();
        let csv = std::io::Cursor::new(b"chauffeur,liters,regio\nd1,2.5,noord\nd2,4.0,zuid\n".to_vec());
        let options = crate::IngestOptions::entity("chauffeur");
        let reader = crate::open_stream(crate::InputFormat::Csv, "ritten.csv", csv, &options).unwrap();
        vault.ingest("acme", "ritten", WriteMode::Replace, reader, "ritten.csv").unwrap();
        let stored = vault.dataset("acme", "ritten", None).unwrap();
        let names: BTreeMap<String, String> =
            [("driver_id", "chauffeur"), ("fuel_litres", "liters")].map(|(a, b)| (a.into(), b.into())).into();
        let view = stored.with_column_names(&names).unwrap();
        let shown: Vec<&str> = view.schema().fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(shown, ["driver_id", "fuel_litres", ""]);
        assert_eq!(view.schema().entity().map(|f| f.name.as_str()), Some("driver_id"));
        assert_eq!(stored.schema().fields[0].name, "chauffeur", "the stored version is unchanged");

        let key = crate::PseudonymKey::for_run(&[7; 32], b"run");
        let mut scan = crate::Scan::new(view.clone(), &["fuel_litres"], 10, key.clone()).unwrap();
        let batch = scan.next_batch().unwrap().unwrap();
        assert!(matches!(&batch.columns[0].values, crate::BatchValues::Float(v) if v == &[2.5, 4.0]));
        for hidden in ["regio", "liters", ""] {
            assert!(
                matches!(
                    crate::Scan::new(view.clone(), &[hidden], 10, key.clone()),
                    Err(crate::ScanError::UnknownColumn { .. })
                ),
                "`{hidden}` is not in the view"
            );
        }
        let bad = |pairs: &[(&str, &str)]| {
            let names: BTreeMap<String, String> = pairs.iter().map(|&(a, b)| (a.into(), b.into())).collect();
            stored.with_column_names(&names).unwrap_err().to_string()
        };
        assert!(bad(&[("a", "nope")]).contains("no column `nope`"));
        assert!(bad(&[("a", "liters"), ("b", "liters")]).contains("mapped twice"));
        assert!(bad(&[("", "liters")]).contains("empty name"));
    }

    /// A name the caller gives (tenant, dataset, a column to map or scan)
    /// comes back in an error cut to a short quote.
    #[test]
    fn errors_quote_a_short_cut_of_the_names_given() {
        let vault = Vault::temporary().unwrap();
        let csv = std::io::Cursor::new(b"id,x\ne1,1\n".to_vec());
        let reader =
            crate::open_stream(crate::InputFormat::Csv, "t.csv", csv, &crate::IngestOptions::entity("id"))
                .unwrap();
        vault.ingest("acme", "d", WriteMode::Replace, reader, "t.csv").unwrap();
        let long = "é".repeat(5000);
        let stored = vault.dataset("acme", "d", None).unwrap();
        let mapping = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|&(a, b)| (a.into(), b.into())).collect()
        };
        let key = crate::PseudonymKey::for_run(&[7; 32], b"run");
        let errors = [
            vault.datasets(&long).unwrap_err().to_string(),
            vault.dataset("acme", &long, None).unwrap_err().to_string(),
            vault.pseudonym_secret(&long).unwrap_err().to_string(),
            stored.with_column_names(&mapping(&[("a", &long)])).unwrap_err().to_string(),
            crate::Scan::new(stored.clone(), &[&long], 10, key).unwrap_err().to_string(),
        ];
        for err in errors {
            assert!(err.len() < 300 && err.contains('…'), "{} bytes: {err}", err.len());
        }
        let append = format!("id,{long}\ne1,1\n");
        let reader = crate::open_stream(
            crate::InputFormat::Csv,
            "t.csv",
            std::io::Cursor::new(append.into_bytes()),
            &crate::IngestOptions::entity("id"),
        )
        .unwrap();
        let err = vault.ingest("acme", "d", WriteMode::Append, reader, "t.csv").unwrap_err().to_string();
        assert!(err.len() < 400 && err.contains('…'), "{} bytes: {err}", err.len());
    }

    /// The parser thread is joined on every path, and its panic is reported
    /// with what it said, also when writing has failed as well.
    #[test]
    fn a_reader_panic_fails_the_ingest_with_its_message() {
        let vault = Vault::temporary().unwrap();
        let err = vault.ingest("t", "d", WriteMode::Replace, buggy(None), "in").unwrap_err().to_string();
        assert_eq!(err, "in: the input reader failed unexpectedly (reader bug 42)");

        // The write directory goes away under the writer: writing fails
        // while the reader panics on its next chunk.
        let chunks = vault.dir().join(CHUNKS_DIR);
        let remove_writes = move || {
            for tenant in std::fs::read_dir(&chunks).unwrap() {
                for write in std::fs::read_dir(tenant.unwrap().path()).unwrap() {
                    std::fs::remove_dir_all(write.unwrap().path()).unwrap();
                }
            }
        };
        let reader = buggy(Some(Box::new(remove_writes)));
        let err = vault.ingest("t", "d", WriteMode::Replace, reader, "in").unwrap_err().to_string();
        assert!(
            err.starts_with(
                "in: the input reader failed unexpectedly (reader bug 42); writing had failed too: "
            ),
            "{err}"
        );
        assert!(vault.datasets("t").is_err(), "nothing was stored");
    }
}

#[cfg(test)]
mod damage_tests {
    use super::*;

    fn csv_reader(text: &str) -> Box<dyn ChunkReader> {
        let csv = std::io::Cursor::new(text.as_bytes().to_vec());
        crate::open_stream(crate::InputFormat::Csv, "t.csv", csv, &crate::IngestOptions::entity("id"))
            .unwrap()
    }

    fn chunk_files(dir: &Path) -> usize {
        fn count(path: &Path) -> usize {
            std::fs::read_dir(path).map_or(1, |entries| entries.map(|e| count(&e.unwrap().path())).sum())
        }
        count(&dir.join(CHUNKS_DIR))
    }

    /// A `kanon.redb` cut short at many offsets, or with bytes flipped, or
    /// gone: opening the vault never panics, and a damaged file is named
    /// as damaged with a pointer to the backups, without deleting any
    /// chunk. The original opens again afterwards, in the same process.
    #[test]
    fn a_damaged_metadata_store_is_an_error_naming_it_never_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let kek = KeyEncryptionKey::generate();
        {
            let vault = Vault::open(dir.path(), kek.clone()).unwrap();
            for dataset in ["a", "b", "c"] {
                let reader = csv_reader("id,x\ne1,1\ne2,2\n");
                vault.ingest("acme", dataset, WriteMode::Replace, reader, "t.csv").unwrap();
            }
        }
        let db = dir.path().join(DATABASE_FILE);
        let original = std::fs::read(&db).unwrap();
        let files = chunk_files(dir.path());
        let open = |bytes: Option<&[u8]>| {
            match bytes {
                Some(bytes) => std::fs::write(&db, bytes).unwrap(),
                None => std::fs::remove_file(&db).unwrap(),
            }
            let opened = std::panic::catch_unwind(|| {
                Vault::open(dir.path(), kek.clone()).and_then(|vault| vault.datasets("acme").map(|_| ()))
            });
            assert_eq!(chunk_files(dir.path()), files, "no chunk was deleted");
            opened.map_err(|_| "panicked")
        };
        let damaged = |outcome: Result<Result<(), VaultError>, &str>, what: &str| match outcome {
            Ok(Err(e @ VaultError::DamagedMetadata { .. })) => {
                let message = e.to_string();
                assert!(message.contains("kanon.redb is damaged"), "{what}: {message}");
                assert!(message.ends_with("restore the data directory from a backup"), "{message}");
                assert!(message.len() < 400, "{what}: {message}");
            }
            other => panic!("{what}: {other:?}"),
        };
        let len = original.len();
        let mut cuts: Vec<usize> = (0..len).step_by(len / 40).collect();
        cuts.extend([1, 16, 100, 511, 4096, 4097, len - 1]);
        for cut in cuts {
            damaged(open(Some(&original[..cut])), &format!("cut at {cut}"));
        }
        damaged(open(None), "removed");
        // Some flips hit free pages and change nothing.
        let mut flips = 0;
        for at in (0..len).step_by(997) {
            let mut bytes = original.clone();
            bytes[at..(at + 64).min(len)].iter_mut().for_each(|b| *b ^= 0x5a);
            match open(Some(&bytes)) {
                Ok(Ok(())) => {}
                outcome => {
                    damaged(outcome, &format!("flip at {at}"));
                    flips += 1;
                }
            }
        }
        assert!(flips > 5, "{flips} flips were noticed");
        open(Some(&original)).unwrap().unwrap();
        let vault = Vault::open(dir.path(), kek).unwrap();
        assert_eq!(vault.datasets("acme").unwrap().len(), 3);
    }
}
