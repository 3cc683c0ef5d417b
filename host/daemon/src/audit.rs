//! The audit log: one append-only, blake3 hash-chained log per tenant (and
//! one for the host itself, `_host`). Each entry's hash covers the previous
//! entry's hash, so editing, removing or reordering any entry breaks every
//! hash after it; the head (count and last hash) catches a cut-off tail.
//!
//! [`verify`] is pure: the daemon runs it over its own table, and
//! `kanon audit verify` runs it over an export on the tenant's machine, so
//! the tenant need not trust the daemon's word.

/// The chain of events that concern no single tenant (plugin uploads,
/// operator tokens). Not a valid tenant name, so it cannot collide.
pub const HOST_CHAIN: &str = "_host";

/// Longest string an entry keeps whole, in bytes: a longer one (a detail's
/// value or key, or the actor) keeps this many bytes and says how long it
/// was.
pub const MAX_DETAIL_STRING: usize = 512;

/// Largest detail an entry keeps whole, serialized, in bytes. Past it, the
/// largest top-level fields are replaced by their size and blake3 digest
/// (`{"cut": {"bytes": …, "blake3": …}}`) until the detail fits.
pub const MAX_DETAIL_BYTES: usize = 16 * 1024;

/// The `prev` of a chain's first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

// The records are the API's: the client reads these same types (and
// computes an entry's hash), and the control store keeps them as their JSON.
pub use kanon_client::types::{AuditEntry, AuditExport, AuditHead};

/// How the daemon makes an entry: [`AuditEntry`] is the API's type, so this
/// is a trait (`AuditEntry::next` where it is in scope).
pub(crate) trait NextEntry {
    /// The entry after `head` in `chain`.
    fn next(head: &AuditHead, chain: &str, actor: &str, action: &str, detail: serde_json::Value) -> Self;
}

impl NextEntry for AuditEntry {
    fn next(head: &AuditHead, chain: &str, actor: &str, action: &str, detail: serde_json::Value) -> Self {
        let prev = if head.count == 0 { GENESIS.to_owned() } else { head.hash.clone() };
        let mut entry = AuditEntry {
            seq: head.count + 1,
            at_ms: crate::now_ms(),
            chain: chain.to_owned(),
            actor: cut_string(actor),
            action: cut_string(action),
            detail: capped(detail),
            prev,
            hash: String::new(),
        };
        entry.hash = entry.computed_hash();
        entry
    }
}

/// `text` as an entry keeps it: whole up to [`MAX_DETAIL_STRING`] bytes,
/// else that many (at a character boundary) and its length.
fn cut_string(text: &str) -> String {
    if text.len() <= MAX_DETAIL_STRING {
        return text.to_owned();
    }
    let mut end = MAX_DETAIL_STRING;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[{} bytes]", &text[..end], text.len())
}

/// Every string of `value` (keys too) cut by [`cut_string`].
fn cut_strings(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) if s.len() > MAX_DETAIL_STRING => Value::String(cut_string(&s)),
        Value::Array(items) => Value::Array(items.into_iter().map(cut_strings).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (cut_string(&k), cut_strings(v))).collect())
        }
        other => other,
    }
}

fn json_len(value: &serde_json::Value) -> usize {
    serde_json::to_vec(value).map_or(0, |bytes| bytes.len())
}

/// What stands for a value too large to keep: its size and digest.
fn cut_marker(original: &serde_json::Value) -> serde_json::Value {
    let bytes = serde_json::to_vec(original).unwrap_or_default();
    serde_json::json!({"cut": {"bytes": bytes.len(), "blake3": blake3::hash(&bytes).to_hex().as_str()}})
}

/// A detail as an entry keeps it, whatever a caller put in it: strings cut
/// to [`MAX_DETAIL_STRING`], and the whole at most about
/// [`MAX_DETAIL_BYTES`]. The one place every entry's detail is bounded.
pub(crate) fn capped(detail: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    let fits = |value: &Value| json_len(value) <= MAX_DETAIL_BYTES;
    let Value::Object(original) = detail else {
        let cut = cut_strings(detail.clone());
        return if fits(&cut) { cut } else { cut_marker(&detail) };
    };
    let mut kept: serde_json::Map<String, Value> =
        original.iter().map(|(k, v)| (cut_string(k), cut_strings(v.clone()))).collect();
    let mut total = json_len(&Value::Object(kept.clone()));
    if total > MAX_DETAIL_BYTES {
        // The largest fields go first, each for its size and digest.
        let mut sizes: Vec<(String, String, usize)> =
            original.keys().map(|k| (k.clone(), cut_string(k), json_len(&kept[&cut_string(k)]))).collect();
        sizes.sort_by_key(|field| std::cmp::Reverse(field.2));
        for (key, cut_key, size) in sizes {
            if total <= MAX_DETAIL_BYTES {
                break;
            }
            let marker = cut_marker(&original[&key]);
            let marker_len = json_len(&marker);
            if marker_len >= size {
                // The rest are smaller still: only a digest of the whole helps.
                break;
            }
            total = total - size + marker_len;
            kept.insert(cut_key, marker);
        }
    }
    let kept = Value::Object(kept);
    if fits(&kept) { kept } else { cut_marker(&Value::Object(original)) }
}

/// How long identical refusals fold into one entry.
pub const REFUSAL_WINDOW_MS: u64 = 60_000;

/// Most (chain, actor, what) folding at once; past it, refusals are written
/// one by one.
const MAX_FOLDING: usize = 10_000;

/// Refusals folded into counts, so that repeating a refused request cannot
/// grow a chain by an entry each time. The first refusal of an actor to
/// `what` on a chain is written at once (`count` 1); identical ones within
/// [`REFUSAL_WINDOW_MS`] of it are only counted; the next one after the
/// window is written with `count` = itself and those folded before it, and
/// starts a new window. [`Refusals::take_folded`] hands out what is counted
/// and not yet written, for a reader of the chain or the daemon's stop.
/// Every entry carries the particulars of the last refusal it stands for,
/// and the counts of a chain's `access.refused` entries add up to its
/// refusals (those of the current window once a reader takes them; a crash
/// loses at most one window's count).
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    folding: std::sync::Mutex<std::collections::HashMap<RefusalKey, Folding>>,
}

/// (chain, actor, what)
type RefusalKey = (String, String, String);

#[derive(Debug)]
struct Folding {
    since_ms: u64,
    folded: u64,
    /// The last folded refusal's particulars.
    detail: serde_json::Value,
}

/// A folded count to write: the refusals of `actor` on `chain` since its
/// last entry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FoldedRefusals {
    pub chain: String,
    pub actor: String,
    pub detail: serde_json::Value,
}

fn with_count(mut detail: serde_json::Value, count: u64) -> serde_json::Value {
    if let serde_json::Value::Object(map) = &mut detail {
        map.insert("count".into(), count.into());
    }
    detail
}

impl Refusals {
    /// A refusal of `actor` to `what` on `chain` at `now_ms`, with its
    /// particulars: the detail to write now (with its `count`), or `None`
    /// when it is folded into a later entry.
    pub(crate) fn note(
        &self,
        chain: &str,
        actor: &str,
        what: &str,
        detail: serde_json::Value,
        now_ms: u64,
    ) -> Option<serde_json::Value> {
        let mut folding = self.folding.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (chain.to_owned(), actor.to_owned(), what.to_owned());
        if let Some(entry) = folding.get_mut(&key) {
            if now_ms < entry.since_ms.saturating_add(REFUSAL_WINDOW_MS) {
                entry.folded += 1;
                entry.detail = detail;
                return None;
            }
            let count = entry.folded + 1;
            *entry = Folding { since_ms: now_ms, folded: 0, detail: serde_json::Value::Null };
            return Some(with_count(detail, count));
        }
        if folding.len() >= MAX_FOLDING {
            folding.retain(|_, f| f.folded > 0 || now_ms < f.since_ms.saturating_add(REFUSAL_WINDOW_MS));
        }
        if folding.len() < MAX_FOLDING {
            folding.insert(key, Folding { since_ms: now_ms, folded: 0, detail: serde_json::Value::Null });
        }
        Some(with_count(detail, 1))
    }

    /// The counted refusals not yet written, of `chain` or of every chain,
    /// taken: the caller writes them. Their windows go on.
    pub(crate) fn take_folded(&self, chain: Option<&str>) -> Vec<FoldedRefusals> {
        let mut folding = self.folding.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut taken = Vec::new();
        for ((on, actor, _), entry) in folding.iter_mut() {
            if entry.folded == 0 || chain.is_some_and(|c| c != on) {
                continue;
            }
            let detail = std::mem::take(&mut entry.detail);
            taken.push(FoldedRefusals {
                chain: on.clone(),
                actor: actor.clone(),
                detail: with_count(detail, entry.folded),
            });
            entry.folded = 0;
        }
        taken
    }
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

/// Checks a chain entry by entry, as they are read, without holding it
/// whole: what [`verify`] does.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    chain: String,
    prev: String,
    count: u64,
}

impl ChainVerifier {
    pub fn new(chain: &str) -> Self {
        Self { chain: chain.to_owned(), prev: GENESIS.to_owned(), count: 0 }
    }

    /// The next entry: it must follow the ones before.
    pub fn push(&mut self, entry: &AuditEntry) -> Result<(), ChainBreak> {
        let expected = self.count + 1;
        if entry.seq != expected {
            return Err(ChainBreak::Sequence { position: expected as usize, expected, found: entry.seq });
        }
        if entry.chain != self.chain {
            return Err(ChainBreak::WrongChain {
                seq: entry.seq,
                expected: self.chain.clone(),
                found: entry.chain.clone(),
            });
        }
        if entry.computed_hash() != entry.hash {
            return Err(ChainBreak::Altered { seq: entry.seq });
        }
        if entry.prev != self.prev {
            return Err(ChainBreak::Link { seq: entry.seq });
        }
        self.prev.clone_from(&entry.hash);
        self.count = expected;
        Ok(())
    }

    /// The end of the chain: it must be `head`. `Ok` gives the entry count.
    pub fn finish(self, head: &AuditHead) -> Result<u64, ChainBreak> {
        if self.count != head.count {
            return Err(ChainBreak::Count { expected: head.count, found: self.count });
        }
        if self.count > 0 && head.hash != self.prev {
            return Err(ChainBreak::Head);
        }
        Ok(self.count)
    }
}

/// Check a whole chain against its head. `Ok` gives the entry count.
pub fn verify(chain: &str, entries: &[AuditEntry], head: &AuditHead) -> Result<u64, ChainBreak> {
    let mut verifier = ChainVerifier::new(chain);
    for entry in entries {
        verifier.push(entry)?;
    }
    verifier.finish(head)
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
    fn a_long_string_in_a_detail_is_cut_and_the_entry_still_verifies() {
        let long = "x".repeat(1_000_000);
        let entry = AuditEntry::next(
            &AuditHead::default(),
            "acme",
            &long,
            "access.refused",
            json!({"what": "job.submit", "approval": long, "nested": [{"k": long}], long.clone(): 1}),
        );
        let size = serde_json::to_vec(&entry).unwrap().len();
        assert!(size < 6 * MAX_DETAIL_STRING, "four long strings, each cut: {size} bytes");
        assert_eq!(entry.detail["what"], "job.submit", "short fields are kept whole");
        let approval = entry.detail["approval"].as_str().unwrap();
        assert!(approval.starts_with(&"x".repeat(MAX_DETAIL_STRING)), "{approval}");
        assert!(approval.ends_with("…[1000000 bytes]"), "{approval}");
        assert!(entry.actor.len() < MAX_DETAIL_STRING + 32);
        let head = AuditHead { count: 1, hash: entry.hash.clone() };
        assert_eq!(verify("acme", &[entry], &head), Ok(1));
    }

    #[test]
    fn a_large_detail_keeps_its_small_fields_and_a_digest_of_the_large_ones() {
        let many: Vec<String> = (0..100_000).map(|i| format!("column_{i}")).collect();
        let detail = json!({"approval": "apr_1", "columns": many, "analyst": "ana"});
        let entry = AuditEntry::next(&AuditHead::default(), "acme", "a", "approval.grant", detail);
        assert!(serde_json::to_vec(&entry.detail).unwrap().len() <= MAX_DETAIL_BYTES);
        assert_eq!(entry.detail["approval"], "apr_1");
        assert_eq!(entry.detail["analyst"], "ana");
        let cut = &entry.detail["columns"]["cut"];
        let whole = serde_json::to_vec(&json!(many)).unwrap();
        assert_eq!(cut["bytes"], whole.len());
        assert_eq!(cut["blake3"], blake3::hash(&whole).to_hex().as_str());
        // A detail of many small fields is kept as one digest.
        let wide: serde_json::Map<String, serde_json::Value> =
            (0..10_000).map(|i| (format!("k{i}"), json!(i))).collect();
        let entry = AuditEntry::next(&AuditHead::default(), "acme", "a", "x", json!(wide));
        assert!(serde_json::to_vec(&entry.detail).unwrap().len() <= MAX_DETAIL_BYTES);
        // Small details are untouched.
        let small = json!({"job": "job_1", "datasets": {"trips": "trips"}, "n": 3});
        assert_eq!(AuditEntry::next(&AuditHead::default(), "acme", "a", "x", small.clone()).detail, small);
    }

    #[test]
    fn identical_refusals_fold_into_counts_per_window() {
        let refusals = Refusals::default();
        let note = |actor: &str, what: &str, n: u64, at: u64| {
            refusals.note("acme", actor, what, json!({"what": what, "n": n}), at)
        };
        let t0 = 1_000_000;
        assert_eq!(note("ven", "GET x", 0, t0), Some(json!({"what": "GET x", "n": 0, "count": 1})));
        for n in 1..2000 {
            assert_eq!(note("ven", "GET x", n, t0 + n), None, "folded");
        }
        // Another actor, or another route, is its own.
        assert_eq!(note("ana", "GET x", 0, t0 + 5), Some(json!({"what": "GET x", "n": 0, "count": 1})));
        assert_eq!(note("ven", "GET y", 0, t0 + 5), Some(json!({"what": "GET y", "n": 0, "count": 1})));
        // A reader takes the count so far, with the last particulars.
        let taken = refusals.take_folded(Some("acme"));
        assert_eq!(taken.len(), 1, "{taken:?}");
        assert_eq!(taken[0].actor, "ven");
        assert_eq!(taken[0].detail, json!({"what": "GET x", "n": 1999, "count": 1999}));
        assert!(refusals.take_folded(None).is_empty(), "taken once");
        // Still in the window: folded again; after it, written with the count.
        assert_eq!(note("ven", "GET x", 2000, t0 + 10), None);
        assert_eq!(
            note("ven", "GET x", 2001, t0 + REFUSAL_WINDOW_MS),
            Some(json!({"what": "GET x", "n": 2001, "count": 2}))
        );
        assert_eq!(note("ven", "GET x", 2002, t0 + REFUSAL_WINDOW_MS + 1), None);
        assert!(refusals.take_folded(Some("other")).is_empty());
        assert_eq!(refusals.take_folded(None)[0].detail["count"], 1);
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
