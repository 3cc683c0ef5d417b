//! The write path: an ingest parses on one thread while another encodes,
//! seals and writes its chunk files, then syncs them and commits the
//! version's record. Either the whole version is committed or nothing is
//! left behind.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use redb::ReadableTable;

use super::error::{VaultError, db_err, io};
use super::records::{ChunkRecord, TENANTS, TenantRecord, VERSIONS, VersionRecord, encode, random_uid};
use super::versions::{VersionInfo, info};
use super::{Vault, now_unix_ms, sync_dir};
use crate::IngestError;
use crate::chunk;
use crate::quote::{panic_message, truncate};
use crate::readers::ChunkReader;
use crate::redb_file::{self, StorageFailure};
use crate::schema::Schema;
use crate::sealing::{ChunkAddress, DataKey};
use crate::table::Table;

/// How an ingest relates to the dataset's latest version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// The new version holds only the new rows.
    Replace,
    /// The new version is the latest one's rows followed by the new rows;
    /// the schema must match exactly.
    Append,
}

impl Vault {
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
                    let mut detail =
                        format!("the input reader failed unexpectedly ({})", panic_message(&*panic));
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
}

/// `name` if it is a valid tenant or dataset name: also safe as a path part.
fn check_name(name: &str) -> Result<&str, VaultError> {
    let mut chars = name.chars();
    let ok = name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok { Ok(name) } else { Err(VaultError::BadName(truncate(name))) }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Classification, ColumnType, Field};
    use crate::store::records::CHUNKS_DIR;
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
