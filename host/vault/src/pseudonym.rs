//! Keyed pseudonyms: stable within one run so joins work, unlinkable
//! across runs.

/// The key a run's pseudonyms are derived with.
#[derive(Clone)]
pub struct PseudonymKey([u8; 32]);

impl std::fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PseudonymKey(..)")
    }
}

impl PseudonymKey {
    /// The key of run `run_id` over a tenant's data: a different run gets
    /// unrelated pseudonyms for the same values.
    pub fn for_run(tenant_secret: &[u8; 32], run_id: &[u8]) -> Self {
        let mut hasher = blake3::Hasher::new_derive_key("kanon 2026-11 run pseudonym key");
        hasher.update(tenant_secret);
        hasher.update(run_id);
        Self(*hasher.finalize().as_bytes())
    }

    /// The pseudonym of a clear value.
    #[inline]
    pub fn pseudonym(&self, value: &str) -> u64 {
        let hash = blake3::keyed_hash(&self.0, value.as_bytes());
        u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::PseudonymKey;

    #[test]
    fn stable_within_a_run_unlinkable_across_runs() {
        let secret = [7u8; 32];
        let run1 = PseudonymKey::for_run(&secret, b"run-1");
        let run2 = PseudonymKey::for_run(&secret, b"run-2");
        assert_eq!(run1.pseudonym("driver-17"), run1.pseudonym("driver-17"));
        assert_ne!(run1.pseudonym("driver-17"), run1.pseudonym("driver-18"));
        assert_ne!(run1.pseudonym("driver-17"), run2.pseudonym("driver-17"));
        assert_eq!(format!("{run1:?}"), "PseudonymKey(..)");
    }
}
