//! Datasets as the daemon's routes describe them. The vault's own
//! description (`kanon_vault::VersionInfo`) is converted into these by the
//! daemon, so this crate needs neither the vault nor its dependencies.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A dataset version, without its contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DatasetVersionInfo {
    pub tenant: String,
    pub dataset: String,
    pub version: u64,
    pub rows: u64,
    pub schema: DatasetSchema,
    pub chunks: usize,
    /// Sealed bytes on disk, shared chunks included.
    pub stored_bytes: u64,
    pub source: String,
    pub created_unix_ms: u64,
    /// blake3 over the chunks' content hashes: equal contents, equal hash.
    pub content_hash: String,
}

/// A dataset's columns, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct DatasetSchema {
    pub fields: Vec<DatasetField>,
    /// Reference data: no personal data, no entity or identifier column.
    #[serde(default)]
    pub reference: bool,
}

/// One column of a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DatasetField {
    pub name: String,
    pub column_type: DatasetColumnType,
    pub classification: DatasetClassification,
}

/// The type of a stored column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DatasetColumnType {
    Int,
    Float,
    Bool,
    Text,
    /// Microseconds since the Unix epoch, UTC.
    Timestamp,
}

/// How the data owner classified a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DatasetClassification {
    /// The privacy unit: exactly one per dataset.
    Entity,
    /// Another personal or customer identifier.
    Identifier,
    /// An ordinary value.
    Attribute,
}
