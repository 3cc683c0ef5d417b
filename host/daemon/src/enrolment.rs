//! Enrolment: how a tenant gets its first admin without the operator ever
//! holding an admin token.
//!
//! Creating a tenant (or asking again for a tenant whose admin lost access)
//! gives the operator a one-time code, `kanon_enrol_<id>_<secret>`, to hand
//! to the tenant. The future admin redeems it (`POST /v1/enrol`, no token)
//! for its tenant-admin token. Only a keyed blake3 hash of the secret is
//! stored; a code works once, until it expires, and a newer code for the
//! same tenant replaces any unused one. The operator cannot issue
//! tenant-admin tokens at all; a tenant admin issues further ones for its
//! own tenant. Every code issued and redeemed, and every token issued or
//! revoked on a tenant, lands on the tenant's chain.
//!
//! A new code leaves the tenant's admin tokens as they are: the operator
//! cannot take a tenant's access away by enrolling, and an admin who still
//! has access sees the code on its chain and can revoke whatever token it
//! gave.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit::HOST_CHAIN;
use crate::auth::{self, Role, TokenRecord, TokenSpec};
use crate::error::{Error, Result};
use crate::ids::{self, ENROLMENT};
use crate::store::{ENROLMENTS, ENROLMENTS_OF_TENANT, Write};
use crate::{now_ms, tenants};

// A code as issued is the API's.
pub use kanon_client::EnrolmentCode;

const CODE_PREFIX: &str = "kanon_enrol_";
const SECRET_HEX: usize = 64;

/// How long a code lasts unless asked otherwise: a week.
pub const DEFAULT_TTL_SECS: u64 = 7 * 24 * 3600;
/// The longest a code may last.
pub const MAX_TTL_SECS: u64 = 30 * 24 * 3600;

/// A stored enrolment: never its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrolmentRecord {
    pub id: String,
    pub tenant: String,
    /// Keyed blake3 of the secret, hex.
    pub secret_hash: String,
    /// Who asked for it (the audit actor).
    pub issued_by: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    /// When it was redeemed, and for which token.
    pub used_ms: Option<u64>,
    pub token: Option<String>,
    /// When a newer code for the tenant replaced it unused.
    pub replaced_ms: Option<u64>,
}

impl EnrolmentRecord {
    fn live(&self, now_ms: u64) -> bool {
        self.used_ms.is_none() && self.replaced_ms.is_none() && now_ms < self.expires_ms
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn secret_hash(key: &[u8; 32], id: &str, secret: &str) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new_keyed(key);
    hasher.update(b"kanon enrolment\0");
    hasher.update(id.as_bytes());
    hasher.update(b"\0");
    hasher.update(secret.as_bytes());
    hasher.finalize()
}

/// The id and secret of a code of the right shape.
fn parse(code: &str) -> Option<(String, &str)> {
    let (hex_id, secret) = code.strip_prefix(CODE_PREFIX)?.split_once('_')?;
    let id = format!("{ENROLMENT}_{hex_id}");
    let hex_secret =
        secret.len() == SECRET_HEX && secret.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    (ids::is_id(ENROLMENT, &id) && hex_secret).then_some((id, secret))
}

/// Issue a code for `tenant` (which must exist), replacing any unused one,
/// and write it to the tenant's chain and the host's.
pub(crate) fn issue(
    write: &mut Write<'_>,
    actor: &str,
    tenant: &str,
    ttl_secs: u64,
) -> Result<EnrolmentCode> {
    if !(1..=MAX_TTL_SECS).contains(&ttl_secs) {
        return Err(Error::BadRequest(format!("the enrolment's ttl_secs must be 1 to {MAX_TTL_SECS}")));
    }
    tenants::get(write, tenant)?;
    let now = now_ms();
    let mut replaced = Vec::new();
    for mut earlier in write.listed(ENROLMENTS, ENROLMENTS_OF_TENANT, tenant)? {
        if earlier.live(now) {
            earlier.replaced_ms = Some(now);
            write.put(ENROLMENTS, &earlier.id, &earlier)?;
            replaced.push(earlier.id);
        }
    }
    let id = crate::new_id(ENROLMENT);
    let secret = hex(&rand::random::<[u8; SECRET_HEX / 2]>());
    let key = auth::token_key(write)?;
    let record = EnrolmentRecord {
        secret_hash: secret_hash(&key, &id, &secret).to_hex().to_string(),
        id: id.clone(),
        tenant: tenant.to_owned(),
        issued_by: actor.to_owned(),
        created_ms: now,
        expires_ms: now.saturating_add(ttl_secs.saturating_mul(1000)),
        used_ms: None,
        token: None,
        replaced_ms: None,
    };
    write.put(ENROLMENTS, &id, &record)?;
    let detail = json!({"enrolment": id, "expires_ms": record.expires_ms, "replaced": replaced});
    write.audit(tenant, actor, "enrolment.issue", detail.clone())?;
    write.audit(HOST_CHAIN, actor, "enrolment.issue", json!({"tenant": tenant, "enrolment": id}))?;
    let hex_id = &id[ENROLMENT.len() + 1..];
    Ok(EnrolmentCode {
        code: format!("{CODE_PREFIX}{hex_id}_{secret}"),
        id,
        tenant: tenant.to_owned(),
        expires_ms: record.expires_ms,
    })
}

/// What every refused code answers: unknown, wrong, used, replaced and
/// expired codes alike.
fn refused() -> Error {
    Error::Forbidden("this enrolment code is not valid: it is unknown, used, replaced or expired".into())
}

/// Redeem `code` for a tenant-admin token held by `name`. The code is used
/// up only if the token is issued.
pub(crate) fn redeem(
    write: &mut Write<'_>,
    code: &str,
    name: &str,
    expires_ms: Option<u64>,
) -> Result<(TokenRecord, String)> {
    let (id, secret) = parse(code).ok_or_else(refused)?;
    let mut record: EnrolmentRecord = write.get(ENROLMENTS, &id)?.ok_or_else(refused)?;
    let key = auth::token_key(write)?;
    let stored = blake3::Hash::from_hex(&record.secret_hash).map_err(|_| refused())?;
    // blake3::Hash compares in constant time.
    if secret_hash(&key, &id, secret) != stored {
        return Err(refused());
    }
    let now = now_ms();
    if !record.live(now) {
        return Err(refused());
    }
    tenants::get(write, &record.tenant)?;
    auth::check_holder_free(write, name, now)?;
    let spec = TokenSpec {
        role: Role::TenantAdmin,
        name: name.to_owned(),
        tenant: Some(record.tenant.clone()),
        expires_ms,
    };
    let (token, secret) = auth::issue(write, spec)?;
    record.used_ms = Some(now);
    record.token = Some(token.id.clone());
    write.put(ENROLMENTS, &id, &record)?;
    let actor = format!("{} {} ({})", token.role, token.name, token.id);
    let detail = json!({"token": token.id, "role": token.role, "name": token.name, "expires_ms": expires_ms,
                        "enrolment": id});
    write.audit(&record.tenant, &actor, "enrolment.redeem", json!({"enrolment": id, "token": token.id}))?;
    write.audit(&record.tenant, &actor, "token.issue", detail.clone())?;
    write.audit(HOST_CHAIN, &actor, "token.issue", detail)?;
    Ok((token, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_is_live_once_until_it_expires_or_is_replaced() {
        let record = EnrolmentRecord {
            id: "enr_0".into(),
            tenant: "acme".into(),
            secret_hash: String::new(),
            issued_by: "operator".into(),
            created_ms: 0,
            expires_ms: 1000,
            used_ms: None,
            token: None,
            replaced_ms: None,
        };
        assert!(record.live(999));
        assert!(!record.live(1000), "expired");
        assert!(!EnrolmentRecord { used_ms: Some(5), ..record.clone() }.live(10), "used");
        assert!(!EnrolmentRecord { replaced_ms: Some(5), ..record }.live(10), "replaced");
    }

    #[test]
    fn a_code_parses_only_in_its_shape() {
        let secret = "a".repeat(64);
        let id = "0123456789abcdef01234567";
        assert_eq!(
            parse(&format!("kanon_enrol_{id}_{secret}")),
            Some((format!("enr_{id}"), secret.as_str()))
        );
        for bad in [
            String::new(),
            format!("kanon_enrol_{id}_{}", "a".repeat(63)),
            format!("kanon_enrol_{id}_{}", "A".repeat(64)),
            format!("kanon_enrol_{}_{secret}", &id[1..]),
            format!("kanon_{id}_{secret}"),
            format!("kanon_enrol_{id}_{secret}_"),
        ] {
            assert_eq!(parse(&bad), None, "{bad}");
        }
    }
}
