//! What the vault keeps at rest: `kanon.redb`'s tables and the records in
//! them, the chunk directory, and how records are encoded.

use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use super::error::VaultError;
use crate::schema::Schema;
use crate::sealing::DataKey;

pub(super) const TENANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("tenants");
pub(super) const VERSIONS: TableDefinition<(&str, &str, u64), &[u8]> = TableDefinition::new("versions");
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(super) const KEY_CHECK: &str = "key-check";
/// When storage was last probed (`Vault::probe_storage`).
pub(super) const PROBE: &str = "storage-probe";
pub(super) const DATABASE_FILE: &str = "kanon.redb";
pub(super) const CHUNKS_DIR: &str = "chunks";

pub(super) fn decode<T: for<'a> Deserialize<'a>>(bytes: &[u8]) -> Result<T, VaultError> {
    postcard::from_bytes(bytes).map_err(VaultError::Record)
}

pub(super) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("records serialize")
}

/// A tenant: its data key, wrapped by the key-encryption key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct TenantRecord {
    /// Names the tenant's directory under `chunks/`.
    pub(super) uid: String,
    pub(super) wrapped_key: Vec<u8>,
}

/// A dataset version, as committed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct VersionRecord {
    pub(super) version: u64,
    pub(super) schema: Schema,
    pub(super) rows: u64,
    pub(super) source: String,
    pub(super) created_unix_ms: u64,
    pub(super) chunks: Vec<ChunkRecord>,
}

/// One chunk of a version: where its column segments are, and what they
/// decode to (blake3 of their plain encodings).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ChunkRecord {
    /// The write directory holding the file; an appended version shares its
    /// base's chunks.
    pub(super) dir: String,
    /// The version that wrote it and its index there: its sealing address.
    pub(super) origin_version: u64,
    pub(super) index: u64,
    pub(super) rows: u32,
    /// Per column: offset and length of its sealed segment in the file.
    pub(super) segments: Vec<(u64, u32)>,
    pub(super) plain_hash: [u8; 32],
}

impl ChunkRecord {
    pub(super) fn file_name(&self) -> String {
        format!("{:08}.kc", self.index)
    }

    pub(super) fn stored_bytes(&self) -> u64 {
        self.segments.iter().map(|&(_, len)| u64::from(len)).sum()
    }
}

/// A version record, opened with the tenant's key for its place `at`.
pub(super) fn open_record(
    key: &DataKey,
    at: (&str, &str, u64),
    sealed: &[u8],
) -> Result<VersionRecord, VaultError> {
    let (tenant, dataset, version) = at;
    decode(&key.open_record(tenant, dataset, version, sealed)?)
}

pub(super) fn random_uid() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn is_uid(name: &str) -> bool {
    name.len() == 32 && name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
