//! The audit log: one append-only, blake3 hash-chained log per tenant (and
//! one for the host itself, `_host`). Each entry's hash covers the previous
//! entry's hash, so editing, removing or reordering any entry breaks every
//! hash after it; the head (count and last hash) catches a cut-off tail.
//!
//! [`verify`] is pure: the daemon runs it over its own table, and
//! `kanon audit verify` runs it over an export on the tenant's machine, so
//! the tenant need not trust the daemon's word.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The chain of events that concern no single tenant (plugin uploads,
/// operator tokens). Not a valid tenant name, so it cannot collide.
pub const HOST_CHAIN: &str = "_host";

/// The `prev` of a chain's first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

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
    /// The entry after `head` in `chain`.
    pub(crate) fn next(
        head: &AuditHead,
        chain: &str,
        actor: &str,
        action: &str,
        detail: serde_json::Value,
    ) -> Self {
        let prev = if head.count == 0 { GENESIS.to_owned() } else { head.hash.clone() };
        let mut entry = AuditEntry {
            seq: head.count + 1,
            at_ms: crate::now_ms(),
            chain: chain.to_owned(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            detail,
            prev,
            hash: String::new(),
        };
        entry.hash = entry.computed_hash();
        entry
    }

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

/// A chain as exported: what `kanon audit verify` checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditExport {
    pub chain: String,
    pub head: AuditHead,
    pub entries: Vec<AuditEntry>,
}

/// Why a chain does not verify: the first break found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    #[error(
        "entry {position} carries sequence number {found}, expected {expected}: an entry was removed or moved"
    )]
    Sequence { position: usize, expected: u64, found: u64 },
    #[error("entry {seq} belongs to chain `{found}`, not `{expected}`")]
    WrongChain { seq: u64, expected: String, found: String },
    #[error("entry {seq} does not link to the entry before it: an entry was removed, inserted or reordered")]
    Link { seq: u64 },
    #[error("entry {seq} was altered: its hash does not match its contents")]
    Altered { seq: u64 },
    #[error("the chain holds {found} entries but its head says {expected}: entries were cut off or added")]
    Count { expected: u64, found: u64 },
    #[error("the last entry is not the head the daemon recorded: the tail was replaced")]
    Head,
}

/// Check a whole chain against its head. `Ok` gives the entry count.
pub fn verify(chain: &str, entries: &[AuditEntry], head: &AuditHead) -> Result<u64, ChainBreak> {
    let mut prev = GENESIS;
    for (i, entry) in entries.iter().enumerate() {
        let expected = i as u64 + 1;
        if entry.seq != expected {
            return Err(ChainBreak::Sequence { position: i + 1, expected, found: entry.seq });
        }
        if entry.chain != chain {
            return Err(ChainBreak::WrongChain {
                seq: entry.seq,
                expected: chain.to_owned(),
                found: entry.chain.clone(),
            });
        }
        if entry.computed_hash() != entry.hash {
            return Err(ChainBreak::Altered { seq: entry.seq });
        }
        if entry.prev != prev {
            return Err(ChainBreak::Link { seq: entry.seq });
        }
        prev = &entry.hash;
    }
    let found = entries.len() as u64;
    if found != head.count {
        return Err(ChainBreak::Count { expected: head.count, found });
    }
    if found > 0 && head.hash != prev {
        return Err(ChainBreak::Head);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chain(n: u64) -> (Vec<AuditEntry>, AuditHead) {
        let mut head = AuditHead::default();
        let mut entries = Vec::new();
        for i in 0..n {
            let entry =
                AuditEntry::next(&head, "acme", "tok_1 (tenant-admin)", "dataset.ingest", json!({"i": i}));
            head = AuditHead { count: entry.seq, hash: entry.hash.clone() };
            entries.push(entry);
        }
        (entries, head)
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let (entries, head) = chain(5);
        assert_eq!(verify("acme", &entries, &head), Ok(5));
        assert_eq!(verify("acme", &[], &AuditHead::default()), Ok(0));
    }

    #[test]
    fn an_edited_entry_is_found() {
        let (mut entries, head) = chain(5);
        entries[2].detail = json!({"i": 99});
        assert_eq!(verify("acme", &entries, &head), Err(ChainBreak::Altered { seq: 3 }));
    }

    #[test]
    fn an_edited_entry_with_a_recomputed_hash_breaks_the_next_link() {
        let (mut entries, head) = chain(5);
        entries[2].actor = "someone else".into();
        entries[2].hash = entries[2].computed_hash();
        assert_eq!(verify("acme", &entries, &head), Err(ChainBreak::Link { seq: 4 }));
    }

    #[test]
    fn a_removed_entry_is_found() {
        let (mut entries, head) = chain(5);
        entries.remove(1);
        assert_eq!(
            verify("acme", &entries, &head),
            Err(ChainBreak::Sequence { position: 2, expected: 2, found: 3 })
        );
    }

    #[test]
    fn a_removed_entry_with_renumbered_successors_is_found() {
        let (mut entries, head) = chain(5);
        entries.remove(1);
        for (i, e) in entries.iter_mut().enumerate() {
            e.seq = i as u64 + 1;
            e.hash = e.computed_hash();
        }
        assert_eq!(verify("acme", &entries, &head), Err(ChainBreak::Link { seq: 2 }));
    }

    #[test]
    fn reordered_entries_are_found() {
        let (mut entries, head) = chain(5);
        entries.swap(1, 3);
        assert!(matches!(verify("acme", &entries, &head), Err(ChainBreak::Sequence { position: 2, .. })));
        // Renumbering to hide the swap breaks the hashes instead.
        let (mut entries, head) = chain(5);
        entries.swap(1, 3);
        entries[1].seq = 2;
        entries[3].seq = 4;
        assert!(matches!(verify("acme", &entries, &head), Err(ChainBreak::Altered { seq: 2 })));
    }

    #[test]
    fn a_cut_off_tail_is_found() {
        let (mut entries, head) = chain(5);
        entries.pop();
        assert_eq!(verify("acme", &entries, &head), Err(ChainBreak::Count { expected: 5, found: 4 }));
    }

    #[test]
    fn a_replaced_tail_is_found() {
        let (mut entries, head) = chain(5);
        let last = entries.pop().unwrap();
        let head4 = AuditHead { count: 4, hash: entries[3].hash.clone() };
        let forged = AuditEntry::next(&head4, "acme", "forger", "nothing.happened", json!({}));
        entries.push(forged);
        assert_ne!(last.hash, entries[4].hash);
        assert_eq!(verify("acme", &entries, &head), Err(ChainBreak::Head));
    }

    #[test]
    fn an_entry_moved_from_another_chain_is_found() {
        let (mut entries, head) = chain(2);
        entries[1].chain = "other".into();
        assert!(matches!(verify("acme", &entries, &head), Err(ChainBreak::WrongChain { seq: 2, .. })));
    }

    #[test]
    fn an_export_roundtrips_through_json_and_still_verifies() {
        let mut head = AuditHead::default();
        let mut entries = Vec::new();
        for detail in [json!({"b": 1.5e-7, "a": [1, "x", null]}), json!({"z": {"y": true}, "k": 0.1})] {
            let entry = AuditEntry::next(&head, "acme", "daemon", "job.finish", detail);
            head = AuditHead { count: entry.seq, hash: entry.hash.clone() };
            entries.push(entry);
        }
        let export = AuditExport { chain: "acme".into(), head, entries };
        let text = serde_json::to_string(&export).unwrap();
        let back: AuditExport = serde_json::from_str(&text).unwrap();
        assert_eq!(verify(&back.chain, &back.entries, &back.head), Ok(2));
    }
}
