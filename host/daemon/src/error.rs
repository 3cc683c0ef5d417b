//! What a request can run into, by kind; `api` maps each kind to its status.

use crate::StoreError;

/// A refused or failed operation. The message is safe to show the caller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or names something impossible (400).
    #[error("{0}")]
    BadRequest(String),
    /// The caller's role or tenant does not allow this (403).
    #[error("{0}")]
    Forbidden(String),
    /// Nothing by that name, or nothing the caller may see (404).
    #[error("{0} not found")]
    NotFound(String),
    /// The state forbids it now: in use, already revoked (409).
    #[error("{0}")]
    Conflict(String),
    /// The body is larger than allowed (413).
    #[error("{0}")]
    TooLarge(String),
    /// Well-formed but refused on its merits: a bad component, a bad file (422).
    #[error("{0}")]
    Unprocessable(String),
    /// A quota is full (429).
    #[error("{0}")]
    TooMany(String),
    /// The daemon is stopping, or its storage failed and is recovering (503).
    #[error("{0}")]
    Unavailable(String),
    /// No space is left on the data directory's disk (507).
    #[error("{0}")]
    InsufficientStorage(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Anything else on the host's side (500); details go to the log only.
    #[error("{0}")]
    Internal(String),
}

impl From<kanon_vault::VaultError> for Error {
    fn from(e: kanon_vault::VaultError) -> Self {
        use kanon_vault::VaultError as V;
        match e {
            V::UnknownTenant(_) | V::UnknownDataset { .. } | V::UnknownVersion { .. } => {
                Error::NotFound(e.to_string())
            }
            V::BadName(_) => Error::BadRequest(e.to_string()),
            V::Ingest(_) | V::SchemaMismatch { .. } => Error::Unprocessable(e.to_string()),
            V::Conflict(_) | V::NotEmpty(_) => Error::Conflict(e.to_string()),
            _ if e.is_storage_full() => Error::InsufficientStorage(format!(
                "no space left in the data directory ({e}); nothing was stored"
            )),
            _ if e.is_storage_failure() => {
                Error::Unavailable(format!("the data directory failed ({e}); try again"))
            }
            other => Error::Internal(other.to_string()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
