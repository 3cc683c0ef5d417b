//! Roles and tokens.
//!
//! A token is `kanon_<id>_<secret>`: a 48-bit id anyone may see (logs, the
//! audit log, revocation) and a 256-bit random secret. Only a keyed blake3
//! hash of the secret is stored, and it is compared in constant time
//! (`blake3::Hash`'s equality), so the control database holds nothing that
//! authenticates.

use serde::{Deserialize, Serialize};

use crate::store::{Setting, TOKENS, TOKENS_OF_HOLDER, Write};
use crate::{StoreError, now_ms};

// Roles are part of the API: the client shares them.
pub use kanon_client::Role;

/// A stored token: everything but its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub role: Role,
    /// Who holds it: the name approvals and jobs refer to.
    pub name: String,
    /// The tenant a tenant admin's token is bound to.
    pub tenant: Option<String>,
    /// Keyed blake3 of the secret, hex.
    pub secret_hash: String,
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
    pub revoked_ms: Option<u64>,
}

/// The caller of a request, once its token checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub token_id: String,
    pub role: Role,
    pub name: String,
    pub tenant: Option<String>,
}

impl Caller {
    /// How the audit log names the caller.
    pub fn actor(&self) -> String {
        format!("{} {} ({})", self.role, self.name, self.token_id)
    }
}

/// Why a presented token was refused. All of these answer 401 alike, so a
/// caller cannot tell a revoked token from a forged one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefused {
    #[error("malformed token")]
    Malformed,
    #[error("unknown token")]
    Unknown,
    #[error("wrong secret")]
    WrongSecret,
    #[error("expired token")]
    Expired,
    #[error("revoked token")]
    Revoked,
}

const TOKEN_KEY: Setting<[u8; 32]> = Setting::new("token-hash-key");
const PREFIX: &str = "kanon_";
const ID_HEX: usize = 12;
const SECRET_HEX: usize = 64;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The key token secrets are hashed under, created with the database.
pub(crate) fn token_key(write: &mut Write<'_>) -> Result<[u8; 32], StoreError> {
    if let Some(key) = write.setting(&TOKEN_KEY)? {
        return Ok(key);
    }
    let key: [u8; 32] = rand::random();
    write.set(&TOKEN_KEY, &key)?;
    Ok(key)
}

fn secret_hash(key: &[u8; 32], id: &str, secret: &str) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new_keyed(key);
    hasher.update(id.as_bytes());
    hasher.update(b"\0");
    hasher.update(secret.as_bytes());
    hasher.finalize()
}

/// What to issue.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    pub role: Role,
    pub name: String,
    pub tenant: Option<String>,
    pub expires_ms: Option<u64>,
}

impl TokenRecord {
    /// Neither revoked nor expired at `now_ms`.
    pub fn live(&self, now_ms: u64) -> bool {
        self.revoked_ms.is_none() && self.expires_ms.is_none_or(|at| now_ms < at)
    }
}

/// Refuse a holder name that a live token already carries: approvals, jobs
/// and the audit log name holders, so a name is one holder's at a time.
pub(crate) fn check_holder_free(write: &Write<'_>, name: &str, now_ms: u64) -> Result<(), crate::Error> {
    let holders = write.listed(TOKENS, TOKENS_OF_HOLDER, name)?;
    if holders.iter().any(|t| t.live(now_ms)) {
        return Err(crate::Error::Conflict(format!(
            "the holder name `{name}` is taken by a live token: pick another, or revoke that token first"
        )));
    }
    Ok(())
}

/// Store a new token; the returned string is the only copy of its secret.
pub(crate) fn issue(write: &mut Write<'_>, spec: TokenSpec) -> Result<(TokenRecord, String), StoreError> {
    let id = hex(&rand::random::<[u8; ID_HEX / 2]>());
    let secret = hex(&rand::random::<[u8; SECRET_HEX / 2]>());
    let record = store(write, &id, &secret, spec)?;
    Ok((record, format!("{PREFIX}{id}_{secret}")))
}

/// Store a token's record: its id and the keyed hash of its secret.
fn store(write: &mut Write<'_>, id: &str, secret: &str, spec: TokenSpec) -> Result<TokenRecord, StoreError> {
    let key = token_key(write)?;
    let record = TokenRecord {
        secret_hash: secret_hash(&key, id, secret).to_hex().to_string(),
        id: id.to_owned(),
        role: spec.role,
        name: spec.name,
        tenant: spec.tenant,
        created_ms: now_ms(),
        expires_ms: spec.expires_ms,
        revoked_ms: None,
    };
    write.put(TOKENS, id, &record)?;
    Ok(record)
}

/// The token's id, if `token` has a token's shape: for logs of refusals.
pub fn token_id(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == ID_HEX && secret.len() == SECRET_HEX && is_lower_hex(id) && is_lower_hex(secret))
        .then_some(id)
}

/// Check a presented token against its record.
pub(crate) fn check(
    key: &[u8; 32],
    token: &str,
    record: Option<TokenRecord>,
    now_ms: u64,
) -> Result<Caller, TokenRefused> {
    let id = token_id(token).ok_or(TokenRefused::Malformed)?;
    let secret = &token[PREFIX.len() + ID_HEX + 1..];
    let record = record.ok_or(TokenRefused::Unknown)?;
    let stored = blake3::Hash::from_hex(&record.secret_hash).map_err(|_| TokenRefused::Unknown)?;
    // blake3::Hash compares in constant time.
    if secret_hash(key, id, secret) != stored {
        return Err(TokenRefused::WrongSecret);
    }
    if record.revoked_ms.is_some() {
        return Err(TokenRefused::Revoked);
    }
    if record.expires_ms.is_some_and(|at| now_ms >= at) {
        return Err(TokenRefused::Expired);
    }
    Ok(Caller { token_id: record.id, role: record.role, name: record.name, tenant: record.tenant })
}

const INITIALIZED: Setting<bool> = Setting::new("initialized");

/// On the first start, create the operator token: print it (returned to the
/// caller) or, when the operator names a file, read it from there if the
/// file exists, else write it there (mode 0600). The file is written before
/// the token commits, and removed again if the commit fails, so a token is
/// never stored that nobody holds.
pub(crate) fn ensure_operator_token(
    store: &crate::ControlStore,
    file: Option<&std::path::Path>,
) -> Result<crate::FirstStart, crate::StartError> {
    let none = crate::FirstStart { operator_token: None };
    if store.read()?.setting(&INITIALIZED)?.unwrap_or(false) {
        return Ok(none);
    }
    let (token, written) = match file {
        Some(path) if path.exists() => {
            let text = std::fs::read_to_string(path).map_err(crate::io_err(path))?;
            let token = text.trim().to_owned();
            if token_id(&token).is_none() {
                return Err(crate::StartError::Io {
                    path: path.display().to_string(),
                    detail: "not a kanon token (kanon_<12 hex>_<64 hex>)".into(),
                });
            }
            (token, None)
        }
        Some(path) => {
            let token = new_token();
            write_private(path, token.as_bytes())?;
            (token, Some(path))
        }
        None => (new_token(), None),
    };
    let committed = store.write(|w| {
        if w.setting(&INITIALIZED)?.unwrap_or(false) {
            return Ok::<_, StoreError>(false);
        }
        w.set(&INITIALIZED, &true)?;
        let spec = TokenSpec { role: Role::Operator, name: "operator".into(), tenant: None, expires_ms: None };
        let record = register(w, &token, spec)?;
        w.audit(
            crate::audit::HOST_CHAIN,
            "daemon",
            "token.issue",
            serde_json::json!({"token": record.id, "role": record.role, "name": record.name, "first_start": true}),
        )?;
        Ok(true)
    });
    match committed {
        Ok(true) if file.is_none() => Ok(crate::FirstStart { operator_token: Some(token) }),
        Ok(_) => Ok(none),
        Err(e) => {
            if let Some(path) = written {
                let _ = std::fs::remove_file(path);
            }
            Err(e.into())
        }
    }
}

/// A fresh token: a random id and secret.
fn new_token() -> String {
    let id = hex(&rand::random::<[u8; ID_HEX / 2]>());
    let secret = hex(&rand::random::<[u8; SECRET_HEX / 2]>());
    format!("{PREFIX}{id}_{secret}")
}

/// Store a token the operator made: its id and secret are its own.
fn register(write: &mut Write<'_>, token: &str, spec: TokenSpec) -> Result<TokenRecord, StoreError> {
    let id = token_id(token).expect("checked by the caller");
    store(write, id, &token[PREFIX.len() + ID_HEX + 1..], spec)
}

/// Create `path` readable by its owner only.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<(), crate::StartError> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(crate::io_err(path))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(crate::io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &[u8; 32], id: &str, secret: &str) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            role: Role::Analyst,
            name: "ana".into(),
            tenant: None,
            secret_hash: secret_hash(key, id, secret).to_hex().to_string(),
            created_ms: 0,
            expires_ms: Some(1000),
            revoked_ms: None,
        }
    }

    #[test]
    fn tokens_check_by_secret_expiry_and_revocation() {
        let key = [7u8; 32];
        let id = "0123456789ab";
        let secret = "f".repeat(64);
        let token = format!("kanon_{id}_{secret}");
        assert_eq!(token_id(&token), Some(id));
        let caller = check(&key, &token, Some(record(&key, id, &secret)), 999).unwrap();
        assert_eq!((caller.role, caller.name.as_str()), (Role::Analyst, "ana"));
        assert_eq!(check(&key, &token, Some(record(&key, id, &secret)), 1000), Err(TokenRefused::Expired));
        let mut revoked = record(&key, id, &secret);
        revoked.revoked_ms = Some(5);
        assert_eq!(check(&key, &token, Some(revoked), 10), Err(TokenRefused::Revoked));
        let forged = format!("kanon_{id}_{}", "e".repeat(64));
        assert_eq!(check(&key, &forged, Some(record(&key, id, &secret)), 10), Err(TokenRefused::WrongSecret));
        // The same secret under another daemon's key does not pass.
        assert_eq!(
            check(&[8u8; 32], &token, Some(record(&key, id, &secret)), 10),
            Err(TokenRefused::WrongSecret)
        );
        assert_eq!(check(&key, &token, None, 10), Err(TokenRefused::Unknown));
        for bad in
            ["", "kanon_", "Bearer x", &token[..token.len() - 1], &format!("{token}0"), &token.to_uppercase()]
        {
            assert_eq!(
                check(&key, bad, Some(record(&key, id, &secret)), 10),
                Err(TokenRefused::Malformed),
                "{bad}"
            );
        }
    }
}
