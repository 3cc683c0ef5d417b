//! Why a vault operation failed, and how redb's and the file system's
//! errors become [`VaultError`]s.

use std::path::{Path, PathBuf};

use crate::IngestError;
use crate::redb_file;
use crate::sealing::SealError;

/// Why a vault operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(
        "`{0}` is not a valid name: 1 to 64 letters, digits, `.`, `_` or `-`, starting with a letter or digit"
    )]
    BadName(String),
    #[error("no tenant `{0}`")]
    UnknownTenant(String),
    #[error("tenant `{tenant}` has no dataset `{dataset}`")]
    UnknownDataset { tenant: String, dataset: String },
    #[error("dataset `{dataset}` has no version {version}")]
    UnknownVersion { dataset: String, version: u64 },
    #[error("cannot append to `{dataset}`: {detail}")]
    SchemaMismatch { dataset: String, detail: String },
    #[error("dataset `{0}` changed while this ingest ran; nothing was stored, try again")]
    Conflict(String),
    #[error("the key-encryption key does not open this data directory (wrong key file?)")]
    WrongKey,
    #[error("the data directory {0} is in use by another kanon process")]
    InUse(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("metadata store: {0}")]
    Metadata(Box<redb::Error>),
    #[error("{path} is damaged ({detail}): restore the data directory from a backup")]
    DamagedMetadata { path: PathBuf, detail: String },
    /// An I/O failure spoilt `kanon.redb` and it is being opened again.
    #[error("the metadata store failed ({0}) and is being opened again; try again")]
    StorageFailed(String),
    #[error("metadata record is unreadable: {0}")]
    Record(postcard::Error),
    #[error("{dataset} v{version}, chunk {chunk}: {detail}")]
    Corrupt { dataset: String, version: u64, chunk: u64, detail: String },
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("backup {path}: {detail}")]
    Backup { path: PathBuf, detail: String },
    #[error("{0} exists and is not empty")]
    NotEmpty(PathBuf),
    #[error("export: {0}")]
    Export(String),
    #[error("dataset `{dataset}` has no column `{column}`")]
    UnknownColumn { dataset: String, column: String },
    #[error("columns of `{dataset}`: {detail}")]
    BadColumnMapping { dataset: String, detail: String },
}

pub(super) fn db_err(e: impl Into<redb::Error>) -> VaultError {
    VaultError::Metadata(Box::new(e.into()))
}

impl VaultError {
    /// The disk (or quota) is full: the operation may work once space
    /// returns.
    pub fn is_storage_full(&self) -> bool {
        match self {
            VaultError::Io { source, .. } => redb_file::is_full(source.kind()),
            VaultError::Metadata(e) => matches!(&**e, redb::Error::Io(e) if redb_file::is_full(e.kind())),
            _ => false,
        }
    }

    /// Storage failed underneath (full, or an I/O error, or still being
    /// reopened after one), rather than the request being wrong.
    pub fn is_storage_failure(&self) -> bool {
        match self {
            VaultError::Io { .. } | VaultError::StorageFailed(_) => true,
            VaultError::Metadata(e) => {
                matches!(&**e, redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::DatabaseClosed)
            }
            _ => false,
        }
    }
}

/// Whether redb's error says its file is damaged (rather than, say, not
/// readable by this user).
pub(super) fn is_damage(error: &redb::Error) -> bool {
    use std::io::ErrorKind;
    match error {
        redb::Error::Corrupted(_)
        | redb::Error::TableTypeMismatch { .. }
        | redb::Error::TypeDefinitionChanged { .. }
        | redb::Error::TableIsMultimap(_) => true,
        redb::Error::Io(e) => matches!(e.kind(), ErrorKind::UnexpectedEof | ErrorKind::InvalidData),
        _ => false,
    }
}

pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VaultError + '_ {
    move |source| VaultError::Io { path: path.to_owned(), source }
}
