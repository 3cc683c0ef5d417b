//! What a call can fail with.

/// A failed call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon answered with an error.
    #[error("{message} (HTTP {status}, {code})")]
    Api { status: u16, code: String, message: String },
    /// No answer: the daemon is not there, or the connection broke.
    #[error("cannot reach the daemon at {base}: {detail}")]
    Transport { base: String, detail: String },
    /// An answer that is not what the API promises.
    #[error("unexpected answer from the daemon: {0}")]
    Decode(String),
    /// A request that could not be encoded.
    #[error("cannot encode the request: {0}")]
    Encode(String),
}

impl ClientError {
    /// The HTTP status, if the daemon answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}
