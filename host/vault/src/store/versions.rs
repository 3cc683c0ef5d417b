//! Versions: listing a tenant's datasets and their versions, pinning one
//! version to read ([`DatasetVersion`]), and a version under other column
//! names (a renamed view).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use redb::ReadableDatabase;
use serde::Serialize;

use super::error::{VaultError, db_err};
use super::records::{ChunkRecord, VERSIONS, VersionRecord, open_record};
use super::{Vault, VaultInner};
use crate::quote::truncate;
use crate::schema::Schema;
use crate::sealing::DataKey;

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

impl Vault {
    /// Every version of `dataset`, oldest first, read from one snapshot.
    pub(super) fn version_records(
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

    pub(super) fn latest(
        &self,
        key: &DataKey,
        tenant: &str,
        dataset: &str,
    ) -> Result<Option<VersionRecord>, VaultError> {
        let txn = self.db()?.begin_read().map_err(db_err)?;
        Ok(Self::version_records(&txn, key, tenant, dataset)?.pop())
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
}

pub(super) fn info(tenant: &str, dataset: &str, record: &VersionRecord) -> VersionInfo {
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

/// A fixed version of one tenant's dataset, open for reading. It holds the
/// tenant's data key; clear values leave it only through [`crate::Scan`]
/// (as pseudonyms) and the tenant's own export.
#[derive(Debug, Clone)]
pub struct DatasetVersion {
    pub(super) inner: Arc<VersionHandle>,
    /// The schema under other column names: see [`Self::with_column_names`].
    view: Option<Arc<Schema>>,
}

pub(super) struct VersionHandle {
    /// Keeps a temporary vault's directory alive while this is read.
    _vault: Arc<VaultInner>,
    pub(super) tenant_dir: PathBuf,
    pub(super) tenant: String,
    pub(super) dataset: String,
    pub(super) key: DataKey,
    pub(super) record: VersionRecord,
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WriteMode;

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
}
