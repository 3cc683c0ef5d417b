//! The entity pseudonyms the host issued to a run: the only entities the
//! gate will count.

use std::hash::{BuildHasherDefault, Hasher};

/// Pseudonyms are keyed-hash outputs, already uniform, and only the host
/// inserts them: hashing them again would buy nothing.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// Entity pseudonyms issued to one run, each with a dense index the gate
/// uses to keep per-entity state in flat arrays.
#[derive(Debug, Default, Clone)]
pub struct IssuedEntities {
    index: hashbrown::HashMap<u64, u32, BuildHasherDefault<PassThrough>>,
}

impl IssuedEntities {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Record that `pseudonym` was handed to the plugin; returns its index.
    pub fn issue(&mut self, pseudonym: u64) -> u32 {
        let next = self.index.len() as u32;
        *self.index.entry(pseudonym).or_insert(next)
    }

    /// The index of an issued pseudonym, or `None` if it was never issued.
    #[inline]
    pub fn lookup(&self, pseudonym: u64) -> Option<u32> {
        self.index.get(&pseudonym).copied()
    }

    /// How many distinct entities were issued.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether none was issued.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_is_idempotent_and_lookup_knows_only_issued() {
        let mut issued = IssuedEntities::new();
        assert_eq!(issued.issue(0xdead), 0);
        assert_eq!(issued.issue(0xbeef), 1);
        assert_eq!(issued.issue(0xdead), 0);
        assert_eq!(issued.lookup(0xbeef), Some(1));
        assert_eq!(issued.lookup(0xf00d), None);
        assert_eq!(issued.len(), 2);
    }
}
