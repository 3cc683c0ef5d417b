//! Backup and restore: a consistent snapshot of the data directory, still
//! encrypted, taken while the vault is in use.
//!
//! A backup is a directory: `manifest` (postcard: the key check, tenants with
//! their wrapped keys, sealed version records, and every chunk file with its
//! length and blake3), `manifest.mac` (a keyed hash of the manifest under the
//! key-encryption key), and the chunk files under `chunks/`. It reads one
//! redb snapshot and copies only committed, immutable files, holding off
//! deletions meanwhile; ingests go on. Restore checks the MAC, every file's
//! hash and the key, writes into a fresh directory and renames it into place.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use crate::sealing::KeyEncryptionKey;
use crate::store::{
    self, CHUNKS_DIR, DATABASE_FILE, KEY_CHECK, META, TENANTS, TenantRecord, VERSIONS, Vault, VaultError,
    db_err, decode, encode, io, open_record,
};

const FORMAT: u32 = 1;
const MANIFEST: &str = "manifest";
const MANIFEST_MAC: &str = "manifest.mac";

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    created_unix_ms: u64,
    key_check: Vec<u8>,
    tenants: Vec<(String, TenantRecord)>,
    /// (tenant, dataset, version) and the sealed record.
    versions: Vec<((String, String, u64), Vec<u8>)>,
    files: Vec<BackupFile>,
}

#[derive(Debug, Serialize, Deserialize)]
struct BackupFile {
    /// Relative to `chunks/`, `/`-separated.
    path: String,
    len: u64,
    hash: [u8; 32],
}

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupSummary {
    pub tenants: usize,
    pub versions: usize,
    pub files: usize,
    pub bytes: u64,
}

impl Manifest {
    fn summary(&self) -> BackupSummary {
        BackupSummary {
            tenants: self.tenants.len(),
            versions: self.versions.len(),
            files: self.files.len(),
            bytes: self.files.iter().map(|f| f.len).sum(),
        }
    }
}

/// `path` must not exist, or be an empty directory.
fn require_empty(path: &Path) -> Result<(), VaultError> {
    match std::fs::read_dir(path).map(|mut entries| entries.next().is_some()) {
        Ok(true) => Err(VaultError::NotEmpty(path.to_owned())),
        Ok(false) => std::fs::remove_dir(path).map_err(io(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(path)(e)),
    }
}

/// A sibling of `path` to build into, renamed onto `path` when complete.
fn staging(path: &Path) -> Result<PathBuf, VaultError> {
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| VaultError::Backup {
        path: path.to_owned(),
        detail: "needs a directory name".into(),
    })?;
    let staging = path.with_file_name(format!(".{name}.partial-{}", store::random_uid()));
    std::fs::create_dir_all(staging.join(CHUNKS_DIR)).map_err(io(&staging))?;
    Ok(staging)
}

/// Copy `from` to `to`, returning its length and blake3.
fn copy_hashed(from: &Path, to: &Path) -> Result<(u64, [u8; 32]), VaultError> {
    let mut input = File::open(from).map_err(io(from))?;
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let mut output = File::create(to).map_err(io(to))?;
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = input.read(&mut buffer).map_err(io(from))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        output.write_all(&buffer[..n]).map_err(io(to))?;
        len += n as u64;
    }
    output.sync_all().map_err(io(to))?;
    Ok((len, *hasher.finalize().as_bytes()))
}

impl Vault {
    /// Write a consistent, still encrypted snapshot to `dest` (absent or an
    /// empty directory) while the vault stays in use.
    pub fn backup(&self, dest: &Path) -> Result<BackupSummary, VaultError> {
        require_empty(dest)?;
        // Files that stay: no erase or delete may run until the copy is done.
        let _no_deletions = self.inner.deletions.read().expect("lock");
        let txn = self.db()?.begin_read().map_err(db_err)?;
        let key_check = txn
            .open_table(META)
            .map_err(db_err)?
            .get(KEY_CHECK)
            .map_err(db_err)?
            .map(|v| v.value().to_vec())
            .unwrap_or_default();
        let mut tenants = Vec::new();
        let mut keys = std::collections::HashMap::new();
        for entry in txn.open_table(TENANTS).map_err(db_err)?.iter().map_err(db_err)? {
            let (name, value) = entry.map_err(db_err)?;
            let record: TenantRecord = decode(value.value())?;
            let key = self.inner.kek.read().expect("lock").unwrap_key(&record.wrapped_key, name.value())?;
            keys.insert(name.value().to_owned(), (record.uid.clone(), key));
            tenants.push((name.value().to_owned(), record));
        }
        let mut versions = Vec::new();
        let mut paths = BTreeSet::new();
        for entry in txn.open_table(VERSIONS).map_err(db_err)?.iter().map_err(db_err)? {
            let (k, sealed) = entry.map_err(db_err)?;
            let (tenant, dataset, version) = k.value();
            let (uid, key) = &keys[tenant];
            for chunk in open_record(key, k.value(), sealed.value())?.chunks {
                paths.insert(format!("{uid}/{}/{}", chunk.dir, chunk.file_name()));
            }
            versions.push(((tenant.to_owned(), dataset.to_owned(), version), sealed.value().to_vec()));
        }
        drop(txn);

        let staging = staging(dest)?;
        let result = (|| {
            let source = self.inner.dir.join(CHUNKS_DIR);
            let mut files = Vec::with_capacity(paths.len());
            for path in paths {
                let (len, hash) = copy_hashed(&source.join(&path), &staging.join(CHUNKS_DIR).join(&path))?;
                files.push(BackupFile { path, len, hash });
            }
            let manifest = Manifest {
                format: FORMAT,
                created_unix_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                key_check,
                tenants,
                versions,
                files,
            };
            let bytes = encode(&manifest);
            let mac = self.inner.kek.read().expect("lock").authenticate(&bytes);
            write_synced(&staging.join(MANIFEST), &bytes)?;
            write_synced(&staging.join(MANIFEST_MAC), &mac)?;
            store::sync_dir(&staging)?;
            std::fs::rename(&staging, dest).map_err(io(dest))?;
            Ok(manifest.summary())
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        result
    }

    /// Restore the backup at `backup` into `dir` (absent or an empty
    /// directory) and open it under `kek`, the key the backup was made with.
    pub fn restore(
        backup: &Path,
        dir: &Path,
        kek: KeyEncryptionKey,
    ) -> Result<(Vault, BackupSummary), VaultError> {
        let bad = |detail: String| VaultError::Backup { path: backup.to_owned(), detail };
        let bytes = std::fs::read(backup.join(MANIFEST)).map_err(io(&backup.join(MANIFEST)))?;
        let mac = std::fs::read(backup.join(MANIFEST_MAC)).map_err(io(&backup.join(MANIFEST_MAC)))?;
        let manifest: Manifest =
            decode(&bytes).map_err(|_| bad("the manifest is unreadable (damaged or altered)".into()))?;
        if !kek.matches_check(&manifest.key_check) {
            return Err(VaultError::WrongKey);
        }
        if mac.as_slice() != kek.authenticate(&bytes) {
            return Err(bad("the manifest was altered (its MAC does not match)".into()));
        }
        if manifest.format != FORMAT {
            return Err(bad(format!("unknown backup format {}", manifest.format)));
        }
        require_empty(dir)?;
        let staging = staging(dir)?;
        let result = (|| {
            for file in &manifest.files {
                let relative = Path::new(&file.path);
                if relative.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
                    return Err(bad(format!("file path `{}` leaves the backup", file.path)));
                }
                let (len, hash) = copy_hashed(
                    &backup.join(CHUNKS_DIR).join(relative),
                    &staging.join(CHUNKS_DIR).join(relative),
                )?;
                if (len, hash) != (file.len, file.hash) {
                    return Err(bad(format!("{} differs from the manifest (damaged or altered)", file.path)));
                }
            }
            let db = redb::Database::create(staging.join(DATABASE_FILE)).map_err(db_err)?;
            let txn = db.begin_write().map_err(db_err)?;
            {
                txn.open_table(META)
                    .map_err(db_err)?
                    .insert(KEY_CHECK, manifest.key_check.as_slice())
                    .map_err(db_err)?;
                let mut tenants = txn.open_table(TENANTS).map_err(db_err)?;
                for (name, record) in &manifest.tenants {
                    tenants.insert(name.as_str(), encode(record).as_slice()).map_err(db_err)?;
                }
                let mut versions = txn.open_table(VERSIONS).map_err(db_err)?;
                for ((tenant, dataset, version), sealed) in &manifest.versions {
                    versions
                        .insert((tenant.as_str(), dataset.as_str(), *version), sealed.as_slice())
                        .map_err(db_err)?;
                }
            }
            txn.commit().map_err(db_err)?;
            drop(db);
            store::sync_dir(&staging)?;
            std::fs::rename(&staging, dir).map_err(io(dir))?;
            Ok(())
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
        Ok((Vault::open(dir, kek)?, manifest.summary()))
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), VaultError> {
    let mut file = File::create(path).map_err(io(path))?;
    file.write_all(bytes).and_then(|_| file.sync_all()).map_err(io(path))
}
