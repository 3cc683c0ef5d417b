//! Support access: a tenant admin lets operator staff read its job metadata
//! and plugin output logs (never dataset contents) for a limited time. Every
//! use is written to the tenant's audit log.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A tenant's grant to operator staff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SupportGrant {
    pub id: String,
    pub tenant: String,
    /// Who granted it (the audit actor).
    pub granted_by: String,
    /// Why, in the tenant's words (a ticket number, say).
    pub reason: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub revoked_ms: Option<u64>,
}

impl SupportGrant {
    pub fn live(&self, now_ms: u64) -> bool {
        self.revoked_ms.is_none() && now_ms < self.expires_ms
    }
}

/// Longest grant a tenant may give: support access is meant to be short.
pub const MAX_GRANT_SECS: u64 = 30 * 24 * 3600;
