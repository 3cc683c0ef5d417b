//! Tenants and their data keys: each tenant's key, wrapped by the
//! key-encryption key, and what is sealed under it besides datasets.

use redb::{ReadableDatabase, ReadableTable};

use super::Vault;
use super::error::{VaultError, db_err};
use super::records::{TENANTS, TenantRecord, decode};
use crate::quote::truncate;
use crate::sealing::DataKey;

impl Vault {
    /// The tenants, by name.
    pub fn tenants(&self) -> Result<Vec<String>, VaultError> {
        let txn = self.db()?.begin_read().map_err(db_err)?;
        let table = txn.open_table(TENANTS).map_err(db_err)?;
        table.iter().map_err(db_err)?.map(|e| Ok(e.map_err(db_err)?.0.value().to_owned())).collect()
    }

    pub(super) fn tenant_record(&self, tenant: &str) -> Result<Option<TenantRecord>, VaultError> {
        let txn = self.db()?.begin_read().map_err(db_err)?;
        let table = txn.open_table(TENANTS).map_err(db_err)?;
        table.get(tenant).map_err(db_err)?.map(|v| decode(v.value())).transpose()
    }

    pub(super) fn data_key(&self, tenant: &str, record: &TenantRecord) -> Result<DataKey, VaultError> {
        Ok(self.inner.kek.read().expect("lock").unwrap_key(&record.wrapped_key, tenant)?)
    }

    /// The tenant's record and data key.
    pub(super) fn tenant(&self, tenant: &str) -> Result<(TenantRecord, DataKey), VaultError> {
        let record =
            self.tenant_record(tenant)?.ok_or_else(|| VaultError::UnknownTenant(truncate(tenant)))?;
        let key = self.data_key(tenant, &record)?;
        Ok((record, key))
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
}

#[cfg(test)]
mod tests {
    use crate::{Vault, VaultError, WriteMode};

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
}
