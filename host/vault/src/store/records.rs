//! What the vault keeps at rest: `kanon.redb`'s tables and the records in
//! them, the chunk directory, and how records are encoded.

use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use super::error::VaultError;
use crate::schema::Schema;
use crate::sealing::DataKey;

pub(crate) const TENANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("tenants");
pub(crate) const VERSIONS: TableDefinition<(&str, &str, u64), &[u8]> = TableDefinition::new("versions");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const KEY_CHECK: &str = "key-check";
/// When storage was last probed (`Vault::probe_storage`).
pub(super) const PROBE: &str = "storage-probe";
pub(crate) const DATABASE_FILE: &str = "kanon.redb";
pub(crate) const CHUNKS_DIR: &str = "chunks";

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

    pub(super) fn stored_bytes(&self) -> u64 {
        self.segments.iter().map(|&(_, len)| u64::from(len)).sum()
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

pub(crate) fn random_uid() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn is_uid(name: &str) -> bool {
    name.len() == 32 && name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
