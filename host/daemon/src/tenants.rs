//! Tenants: created by the operator, each with its own policy layer (the
//! gate issue's tenant policy) and its own audit chain.

use kanon_gate::{Policy, PolicyLayer};

use crate::error::{Error, Result};
use crate::store::{TENANTS, Write};

// The record is the API's, served as is.
pub use kanon_client::TenantRecord;

/// `name` if it is a valid tenant, dataset or principal name: ASCII letters,
/// digits, `.`, `_`, `-`, starting with a letter or digit, at most 64
/// characters. Also safe as a path part and as a URL segment.
pub fn check_name<'a>(what: &str, name: &'a str) -> Result<&'a str> {
    let mut chars = name.chars();
    let ok = name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(name)
    } else {
        Err(Error::BadRequest(format!(
            "`{}` is not a valid {what} name: use 1 to 64 ASCII letters, digits, `.`, `_` or `-`, \
             starting with a letter or digit",
            crate::ids::quote(name)
        )))
    }
}

/// The tenant, or 404.
pub(crate) fn get(write: &Write<'_>, name: &str) -> Result<TenantRecord> {
    write.get(TENANTS, name)?.ok_or_else(|| Error::NotFound(format!("tenant `{name}`")))
}

/// Check a tenant's policy layer against the operator's floor.
pub(crate) fn check_policy(floor: &PolicyLayer, layer: &PolicyLayer) -> Result<()> {
    policy_of(floor, layer).map(|_| ())
}

/// A tenant's policy: the operator's floor tightened by its layer (a
/// layer looser than the floor is refused).
pub(crate) fn policy_of(floor: &PolicyLayer, layer: &PolicyLayer) -> Result<Policy> {
    let floor = Policy::floor(floor).map_err(|e| Error::Internal(e.to_string()))?;
    Policy::for_run(&floor, [layer], &PolicyLayer::default())
        .map_err(|e| Error::Unprocessable(format!("the policy is refused: {e}")))
}
