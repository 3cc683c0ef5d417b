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

mod backup;
mod error;
mod maintenance;
mod read;
mod records;
mod tenants;
mod versions;
mod write;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use redb::ReadableTable;

pub use self::backup::BackupSummary;
pub use self::error::VaultError;
use self::error::{db_err, io, is_damage};
use self::maintenance::holds_tenant_chunks;
use self::records::{CHUNKS_DIR, DATABASE_FILE, KEY_CHECK, META, PROBE, TENANTS, VERSIONS};
pub use self::versions::{DatasetVersion, VersionInfo};
pub use self::write::WriteMode;
use crate::quote::{panic_message, truncate};
use crate::redb_file::{self, Handle, Reopening, StorageFailure};
use crate::sealing::KeyEncryptionKey;

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

/// Now, for the records' creation times.
fn now_unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Make `path`'s directory entries durable.
fn sync_dir(path: &Path) -> Result<(), VaultError> {
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
                let what = panic_message(&*panic);
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
                    detail: format!("redb failed reading it: {}", truncate(panic_message(&*panic))),
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

    pub(super) fn chunks_dir(&self) -> PathBuf {
        self.inner.dir.join(CHUNKS_DIR)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

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
}

#[cfg(test)]
mod damage_tests {
    use super::*;
    use crate::readers::ChunkReader;

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
