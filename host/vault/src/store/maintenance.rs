//! Maintenance: collecting what no committed record names (at every open),
//! deleting a dataset, erasing a tenant (crypto-shredding) and rotating
//! the key-encryption key. Backups are in `backup`.

use std::collections::HashSet;
use std::path::Path;

use redb::{ReadableDatabase, ReadableTable};

use super::Vault;
use super::error::{VaultError, db_err, io};
use super::records::{
    KEY_CHECK, META, TENANTS, TenantRecord, VERSIONS, VersionRecord, decode, encode, is_uid, open_record,
};
use super::versions::{VersionInfo, info};
use crate::quote::truncate;
use crate::sealing::KeyEncryptionKey;

impl Vault {
    /// Delete write directories no committed version references, and tenant
    /// directories of tenants that no longer exist. Returns how many.
    pub(super) fn collect_garbage(&self) -> Result<usize, VaultError> {
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

/// Whether `chunks` holds a tenant's directory.
pub(super) fn holds_tenant_chunks(chunks: &Path) -> Result<bool, VaultError> {
    for entry in std::fs::read_dir(chunks).map_err(io(chunks))? {
        let entry = entry.map_err(io(chunks))?;
        if entry.file_name().to_str().is_some_and(is_uid) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn remove_dir_if_present(path: &Path) -> Result<(), VaultError> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(path)(e)),
        _ => Ok(()),
    }
}
