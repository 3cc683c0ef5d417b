//! Audit chains as the daemon keeps and exports them. How a chain is
//! verified is the daemon's (`kanon_daemon::audit::verify`); what each
//! entry's hash covers is here, with the entry.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The tenant whose chain this is, or `_host`.
    pub chain: String,
    /// Who: a token id and role, or `daemon` for the daemon's own acts.
    pub actor: String,
    /// What, as a dotted verb: `dataset.ingest`, `job.finish`, ...
    pub action: String,
    /// The event's particulars. Never dataset contents.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    /// The previous entry's hash (hex).
    pub prev: String,
    /// blake3 of this entry's fields and `prev` (hex).
    pub hash: String,
}

/// Where a chain ends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditHead {
    /// Entries in the chain.
    pub count: u64,
    /// The last entry's hash (empty for an empty chain).
    pub hash: String,
}

/// A chain as exported: what `kanon audit verify` checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditExport {
    pub chain: String,
    pub head: AuditHead,
    pub entries: Vec<AuditEntry>,
}

/// The fields an entry's hash covers, in a fixed order.
#[derive(Serialize)]
struct Hashed<'a> {
    seq: u64,
    at_ms: u64,
    chain: &'a str,
    actor: &'a str,
    action: &'a str,
    detail: &'a serde_json::Value,
    prev: &'a str,
}

impl AuditEntry {
    /// The hash this entry's fields give.
    pub fn computed_hash(&self) -> String {
        let hashed = Hashed {
            seq: self.seq,
            at_ms: self.at_ms,
            chain: &self.chain,
            actor: &self.actor,
            action: &self.action,
            detail: &self.detail,
            prev: &self.prev,
        };
        let mut hasher = blake3::Hasher::new_derive_key("kanon 2026-11 audit entry");
        hasher.update(&serde_json::to_vec(&hashed).expect("audit entries serialize"));
        hasher.finalize().to_hex().to_string()
    }
}
