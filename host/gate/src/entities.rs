//! The entity pseudonyms the host issued to a run: the only entities the
//! gate will count.

/// Entity pseudonyms issued to one run, each with a dense index the gate
/// uses to keep per-entity state in flat arrays.
///
/// An open-addressing table with linear probing, key and index side by
/// side: one cache line per lookup, which is what the gate's hot loop waits
/// on. Pseudonyms are keyed-hash outputs, already uniform, and only the host
/// inserts them, so their low bits serve as the hash.
#[derive(Debug, Clone)]
pub struct IssuedEntities {
    /// (pseudonym, index + 1); index 0 marks an empty bucket.
    buckets: Vec<(u64, u32)>,
    len: usize,
}

impl Default for IssuedEntities {
    fn default() -> Self {
        Self { buckets: vec![(0, 0); 16], len: 0 }
    }
}

impl IssuedEntities {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    #[inline]
    fn mask(&self) -> usize {
        self.buckets.len() - 1
    }

    /// Record that `pseudonym` was handed to the plugin; returns its index.
    pub fn issue(&mut self, pseudonym: u64) -> u32 {
        if let Some(index) = self.lookup(pseudonym) {
            return index;
        }
        // Keep the load at most one half, so probes stay short.
        if (self.len + 1) * 2 > self.buckets.len() {
            let grown = vec![(0, 0); self.buckets.len() * 2];
            let old = std::mem::replace(&mut self.buckets, grown);
            for (key, slot) in old.into_iter().filter(|b| b.1 != 0) {
                self.place(key, slot);
            }
        }
        let index = self.len as u32;
        self.place(pseudonym, index + 1);
        self.len += 1;
        index
    }

    fn place(&mut self, key: u64, slot: u32) {
        let mask = self.mask();
        let mut i = key as usize & mask;
        while self.buckets[i].1 != 0 {
            i = (i + 1) & mask;
        }
        self.buckets[i] = (key, slot);
    }

    /// The index of an issued pseudonym, or `None` if it was never issued.
    #[inline]
    pub fn lookup(&self, pseudonym: u64) -> Option<u32> {
        let mask = self.mask();
        let mut i = pseudonym as usize & mask;
        loop {
            let (key, slot) = self.buckets[i];
            if slot == 0 {
                return None;
            }
            if key == pseudonym {
                return Some(slot - 1);
            }
            i = (i + 1) & mask;
        }
    }

    /// Hint that `pseudonym` will be looked up soon.
    #[inline]
    pub(crate) fn prefetch(&self, pseudonym: u64) {
        crate::prefetch::prefetch(&self.buckets[pseudonym as usize & self.mask()]);
    }

    /// How many distinct entities were issued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none was issued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Heap bytes the table holds: what a run charges to its host memory.
    pub fn heap_bytes(&self) -> usize {
        self.buckets.capacity() * size_of::<(u64, u32)>()
    }

    /// Every issued pseudonym with its index, in no particular order. Costs
    /// one pass over the table: about four times [`len`](Self::len) at most,
    /// sixteen buckets for a set of one (unless it was larger before a
    /// [`clear`](Self::clear)).
    pub fn iter(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.buckets.iter().filter(|b| b.1 != 0).map(|&(pseudonym, slot)| (pseudonym, slot - 1))
    }

    /// Forget every pseudonym, keeping the table's allocation, so that one
    /// set serves entity after entity: the next issued pseudonym gets index
    /// 0 again.
    pub fn clear(&mut self) {
        self.buckets.fill((0, 0));
        self.len = 0;
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

    #[test]
    fn survives_growth_and_colliding_low_bits() {
        let mut issued = IssuedEntities::new();
        // Same low bits, different keys; and pseudonym 0 is a valid key.
        let keys: Vec<u64> = (0..1000u64).map(|i| i << 32).collect();
        for (i, &k) in keys.iter().enumerate() {
            assert_eq!(issued.issue(k), i as u32);
        }
        for (i, &k) in keys.iter().enumerate() {
            assert_eq!(issued.lookup(k), Some(i as u32));
        }
        assert_eq!(issued.lookup(1), None);
        assert_eq!(issued.len(), 1000);
    }

    #[test]
    fn iter_lists_every_pseudonym_with_its_index_and_clear_keeps_the_table() {
        let mut issued = IssuedEntities::new();
        let keys: Vec<u64> = (0..100u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).collect();
        keys.iter().for_each(|&k| {
            issued.issue(k);
        });
        let mut listed: Vec<(u64, u32)> = issued.iter().collect();
        listed.sort_by_key(|&(_, i)| i);
        let expected: Vec<(u64, u32)> = keys.iter().enumerate().map(|(i, &k)| (k, i as u32)).collect();
        assert_eq!(listed, expected);

        let bytes = issued.heap_bytes();
        issued.clear();
        assert!(issued.is_empty() && issued.iter().next().is_none());
        assert_eq!(issued.lookup(keys[0]), None);
        assert_eq!(issued.heap_bytes(), bytes, "the allocation stays");
        assert_eq!(issued.issue(keys[5]), 0, "indices start again");
        assert_eq!(issued.iter().collect::<Vec<_>>(), vec![(keys[5], 0)]);
    }
}
