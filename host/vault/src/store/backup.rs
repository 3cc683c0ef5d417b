//! Backup and restore: a consistent snapshot of the data directory, still
//! encrypted, taken while the vault is in use.
//!
//! A backup is a directory: `manifest` (postcard: the key check, tenants with
//! their wrapped keys, sealed version records, every chunk file with its
//! length and blake3, and the caller's own files likewise), `manifest.mac` (a
//! keyed hash of the manifest under the key-encryption key), the chunk files
//! under `chunks/`, and the caller's files (the daemon's `control.redb` and
//! plugins) at their own paths. It reads one redb snapshot and copies only
//! committed, immutable files, holding off deletions meanwhile; ingests go
//! on. No vault change commits between the caller's snapshot and the
//! vault's ([`Vault::backup_with`]). Restore checks the MAC, every file's
//! hash and the key, writes into a fresh directory and renames it into place.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::error::{VaultError, db_err, io};
use super::records::{
    CHUNKS_DIR, DATABASE_FILE, KEY_CHECK, META, TENANTS, TenantRecord, VERSIONS, decode, encode, open_record,
    random_uid,
};
use super::{Vault, sync_dir};
use crate::sealing::KeyEncryptionKey;

/// 1: the vault only; 2: with the caller's files (`extra`).
const FORMAT: u32 = 2;
const MANIFEST: &str = "manifest";
const MANIFEST_MAC: &str = "manifest.mac";

/// (tenant, dataset, version) and the sealed record.
type SealedVersion = ((String, String, u64), Vec<u8>);

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    created_unix_ms: u64,
    key_check: Vec<u8>,
    tenants: Vec<(String, TenantRecord)>,
    versions: Vec<SealedVersion>,
    files: Vec<BackupFile>,
    /// The caller's files, relative to the backup's (and the data
    /// directory's) root.
    extra: Vec<BackupFile>,
}

/// A format-1 manifest: a backup made before backups carried the daemon's
/// files. It still restores.
#[derive(Debug, Deserialize)]
struct ManifestV1 {
    format: u32,
    created_unix_ms: u64,
    key_check: Vec<u8>,
    tenants: Vec<(String, TenantRecord)>,
    versions: Vec<SealedVersion>,
    files: Vec<BackupFile>,
}

impl Manifest {
    fn decode(bytes: &[u8]) -> Result<Self, VaultError> {
        let (format, _) = postcard::take_from_bytes::<u32>(bytes).map_err(VaultError::Record)?;
        if format == 1 {
            let v1: ManifestV1 = decode(bytes)?;
            return Ok(Manifest {
                format: v1.format,
                created_unix_ms: v1.created_unix_ms,
                key_check: v1.key_check,
                tenants: v1.tenants,
                versions: v1.versions,
                files: v1.files,
                extra: Vec::new(),
            });
        }
        decode(bytes)
    }
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
    /// Chunk files.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// The caller's files (the daemon's `control.redb` and plugins).
    pub extra_files: usize,
    pub extra_bytes: u64,
}

impl Manifest {
    fn summary(&self) -> BackupSummary {
        BackupSummary {
            tenants: self.tenants.len(),
            versions: self.versions.len(),
            files: self.files.len(),
            bytes: self.files.iter().map(|f| f.len).sum(),
            extra_files: self.extra.len(),
            extra_bytes: self.extra.iter().map(|f| f.len).sum(),
        }
    }
}

/// A relative path that stays inside a directory and is not the vault's
/// own: the caller's files cannot overwrite `kanon.redb`, a chunk or the
/// manifest.
fn extra_path(path: &str) -> Option<&Path> {
    let relative = Path::new(path);
    let inside =
        !path.is_empty() && relative.components().all(|c| matches!(c, std::path::Component::Normal(_)));
    let first = relative.components().next().and_then(|c| c.as_os_str().to_str());
    let reserved = matches!(first, Some(DATABASE_FILE | CHUNKS_DIR | MANIFEST | MANIFEST_MAC));
    (inside && !reserved).then_some(relative)
}

/// The length and blake3 of the file at `path`.
fn hash_file(path: &Path) -> Result<(u64, [u8; 32]), VaultError> {
    let mut input = File::open(path).map_err(io(path))?;
    let mut hasher = blake3::Hasher::new();
    let len = std::io::copy(&mut input, &mut hasher).map_err(io(path))?;
    Ok((len, *hasher.finalize().as_bytes()))
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
    let staging = path.with_file_name(format!(".{name}.partial-{}", random_uid()));
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
        self.backup_with(dest, || Ok(()), |(), _| Ok(Vec::new()))
    }

    /// [`Self::backup`], with the caller's own files in the same manifest.
    /// `snapshot` runs while no vault change can commit, just before the
    /// vault's own snapshot is taken: a snapshot of the caller's state taken
    /// there sees exactly the vault changes the backup holds. `write_extra`
    /// then writes the caller's files into the backup's directory (given)
    /// and returns their paths relative to it; they are hashed, MACed with
    /// the rest, and restored to the same paths in the data directory.
    pub fn backup_with<S>(
        &self,
        dest: &Path,
        snapshot: impl FnOnce() -> Result<S, VaultError>,
        write_extra: impl FnOnce(S, &Path) -> Result<Vec<String>, VaultError>,
    ) -> Result<BackupSummary, VaultError> {
        require_empty(dest)?;
        // Files that stay: no erase or delete may run until the copy is done.
        let _no_deletions = self.inner.deletions.read().expect("lock");
        let (caller, txn) = {
            let _no_commits = self.inner.commits.write().expect("lock");
            let caller = snapshot()?;
            (caller, self.db()?.begin_read().map_err(db_err)?)
        };
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
            let mut extra = Vec::new();
            for path in write_extra(caller, &staging)? {
                let bad = || VaultError::Backup {
                    path: staging.join(&path),
                    detail: "not a file to back up".into(),
                };
                let relative = extra_path(&path).ok_or_else(bad)?;
                let (len, hash) = hash_file(&staging.join(relative))?;
                extra.push(BackupFile { path, len, hash });
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
                extra,
            };
            let bytes = encode(&manifest);
            let mac = self.inner.kek.read().expect("lock").authenticate(&bytes);
            write_synced(&staging.join(MANIFEST), &bytes)?;
            write_synced(&staging.join(MANIFEST_MAC), &mac)?;
            sync_dir(&staging)?;
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
        let manifest = Manifest::decode(&bytes)
            .map_err(|_| bad("the manifest is unreadable (damaged or altered)".into()))?;
        if !kek.matches_check(&manifest.key_check) {
            return Err(VaultError::WrongKey);
        }
        if mac.as_slice() != kek.authenticate(&bytes) {
            return Err(bad("the manifest was altered (its MAC does not match)".into()));
        }
        if !(1..=FORMAT).contains(&manifest.format) {
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
            for file in &manifest.extra {
                let relative = extra_path(&file.path).ok_or_else(|| {
                    bad(format!("file path `{}` is not the caller's to restore", file.path))
                })?;
                let (len, hash) = copy_hashed(&backup.join(relative), &staging.join(relative))?;
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
            sync_dir(&staging)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CsvReader, IngestOptions, WriteMode};

    fn vault_with_data(dir: &Path, kek: &KeyEncryptionKey) -> Vault {
        let vault = Vault::open(dir, kek.clone()).unwrap();
        let options = IngestOptions::entity("id");
        let reader = CsvReader::new("t.csv", std::io::Cursor::new("id,x\na,1\nb,2\n".to_owned()), &options);
        vault.ingest("acme", "trips", WriteMode::Replace, Box::new(reader.unwrap()), "t.csv").unwrap();
        vault
    }

    #[test]
    fn the_callers_files_travel_in_the_manifest_and_old_backups_still_restore() {
        let dir = tempfile::tempdir().unwrap();
        let kek = KeyEncryptionKey::generate();
        let vault = vault_with_data(&dir.path().join("data"), &kek);
        let backup = dir.path().join("backup");
        let summary = vault
            .backup_with(
                &backup,
                || Ok("taken"),
                |snapshot, staging| {
                    assert_eq!(snapshot, "taken");
                    std::fs::write(staging.join("control.redb"), b"the daemon's state").unwrap();
                    std::fs::create_dir_all(staging.join("plugins")).unwrap();
                    std::fs::write(staging.join("plugins/p.wasm"), b"a plugin").unwrap();
                    Ok(vec!["control.redb".into(), "plugins/p.wasm".into()])
                },
            )
            .unwrap();
        assert_eq!((summary.versions, summary.extra_files, summary.extra_bytes), (1, 2, 26));

        let restored_dir = dir.path().join("restored");
        let (restored, again) = Vault::restore(&backup, &restored_dir, kek.clone()).unwrap();
        assert_eq!(again, summary);
        assert_eq!(std::fs::read(restored_dir.join("control.redb")).unwrap(), b"the daemon's state");
        assert_eq!(std::fs::read(restored_dir.join("plugins/p.wasm")).unwrap(), b"a plugin");
        assert_eq!(restored.versions("acme", "trips").unwrap().len(), 1);
        drop(restored);

        // An extra file altered in the backup is refused, and nothing is left.
        std::fs::write(backup.join("plugins/p.wasm"), b"a plugin!").unwrap();
        let elsewhere = dir.path().join("elsewhere");
        let err = Vault::restore(&backup, &elsewhere, kek.clone()).unwrap_err().to_string();
        assert!(err.contains("plugins/p.wasm differs from the manifest"), "{err}");
        assert!(!elsewhere.exists());

        // The caller cannot name the vault's own files, or leave the backup.
        for path in ["kanon.redb", "chunks/x", "manifest", "../x", "/etc/x", ""] {
            let refused =
                vault.backup_with(&dir.path().join("refused"), || Ok(()), |(), _| Ok(vec![path.into()]));
            assert!(matches!(refused, Err(VaultError::Backup { .. })), "{path}: {refused:?}");
            assert!(!dir.path().join("refused").exists());
        }

        // A backup made before backups carried the caller's files.
        #[derive(Serialize)]
        struct V1<'a> {
            format: u32,
            created_unix_ms: u64,
            key_check: &'a [u8],
            tenants: &'a [(String, TenantRecord)],
            versions: &'a [SealedVersion],
            files: &'a [BackupFile],
        }
        let old = dir.path().join("old");
        vault.backup(&old).unwrap();
        let current = Manifest::decode(&std::fs::read(old.join(MANIFEST)).unwrap()).unwrap();
        let bytes = encode(&V1 {
            format: 1,
            created_unix_ms: current.created_unix_ms,
            key_check: &current.key_check,
            tenants: &current.tenants,
            versions: &current.versions,
            files: &current.files,
        });
        std::fs::write(old.join(MANIFEST), &bytes).unwrap();
        std::fs::write(old.join(MANIFEST_MAC), kek.authenticate(&bytes)).unwrap();
        let (restored, summary) = Vault::restore(&old, &dir.path().join("from-old"), kek).unwrap();
        assert_eq!((summary.versions, summary.extra_files), (1, 0));
        assert_eq!(restored.versions("acme", "trips").unwrap().len(), 1);
    }
}
