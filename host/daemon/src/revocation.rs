//! One way to revoke what a tenant or the operator handed out: an
//! approval, a token, a support grant. Each is found by id among those the
//! caller may see, refused if already revoked, stamped and written back
//! with its audit entries in one transaction.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::approvals::Approval;
use crate::audit::HOST_CHAIN;
use crate::auth::TokenRecord;
use crate::error::{Error, Result};
use crate::grants::SupportGrant;
use crate::now_ms;
use crate::store::{APPROVALS, GRANTS, TOKENS, Table, Write};

/// A record that can be revoked once, after which it grants nothing.
pub(crate) trait Revocable: Serialize + DeserializeOwned + 'static {
    const TABLE: Table<Self>;
    /// What it is called in errors (`approval`, `token`, `grant`).
    const WHAT: &'static str;
    /// Its audit action.
    const ACTION: &'static str;
    fn revoked_ms(&mut self) -> &mut Option<u64>;
    /// The chains its revocation is written to, and the entry's detail.
    fn audit(&self, id: &str) -> (Vec<&str>, Value);
}

/// Revoke the `R` under `id`, if `visible` to the caller (else it is not
/// found: an id of another tenant's says nothing) and `allowed` lets it.
pub(crate) fn revoke<R: Revocable>(
    w: &mut Write<'_>,
    actor: &str,
    id: &str,
    visible: impl FnOnce(&R) -> bool,
    allowed: impl FnOnce(&R) -> Result<()>,
) -> Result<R> {
    let mut record =
        w.get(R::TABLE, id)?.filter(visible).ok_or_else(|| Error::NotFound(format!("{} `{id}`", R::WHAT)))?;
    if record.revoked_ms().is_some() {
        return Err(Error::Conflict(format!("{} `{id}` is already revoked", R::WHAT)));
    }
    allowed(&record)?;
    *record.revoked_ms() = Some(now_ms());
    w.put(R::TABLE, id, &record)?;
    let (chains, detail) = record.audit(id);
    for chain in chains {
        w.audit(chain, actor, R::ACTION, detail.clone())?;
    }
    Ok(record)
}

impl Revocable for Approval {
    const TABLE: Table<Self> = APPROVALS;
    const WHAT: &'static str = "approval";
    const ACTION: &'static str = "approval.revoke";

    fn revoked_ms(&mut self) -> &mut Option<u64> {
        &mut self.revoked_ms
    }

    fn audit(&self, id: &str) -> (Vec<&str>, Value) {
        (vec![&self.tenant], json!({"approval": id}))
    }
}

impl Revocable for TokenRecord {
    const TABLE: Table<Self> = TOKENS;
    const WHAT: &'static str = "token";
    const ACTION: &'static str = "token.revoke";

    fn revoked_ms(&mut self) -> &mut Option<u64> {
        &mut self.revoked_ms
    }

    /// The host's chain, and its tenant's if it has one.
    fn audit(&self, id: &str) -> (Vec<&str>, Value) {
        let chains = std::iter::once(HOST_CHAIN).chain(self.tenant.as_deref()).collect();
        (chains, json!({"token": id, "role": self.role, "name": self.name}))
    }
}

impl Revocable for SupportGrant {
    const TABLE: Table<Self> = GRANTS;
    const WHAT: &'static str = "grant";
    const ACTION: &'static str = "support.revoke";

    fn revoked_ms(&mut self) -> &mut Option<u64> {
        &mut self.revoked_ms
    }

    fn audit(&self, id: &str) -> (Vec<&str>, Value) {
        (vec![&self.tenant], json!({"grant": id}))
    }
}
