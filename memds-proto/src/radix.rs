//! A radix index over sorted 64-bit starts: floor lookups in one or two probes when the values
//! are spread like hashes.
//!
//! For the `2^bits` buckets of the top `bits` bits (`2^bits` about the number of starts), it
//! records the floor of each bucket's first value. A value's floor then lies between its
//! bucket's entry and the next bucket's, usually one or two starts apart; a binary search of
//! that span finishes the job. Skewed values only widen the spans: the answer stays exact.

/// The index; it does not own the starts it was built over.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RadixIndex {
    bits: u32,
    first: Box<[u32]>,
}

impl RadixIndex {
    /// Builds the index over `starts`, which must be sorted ascending (fewer than 2^32), with
    /// about one start per bucket.
    pub fn new(starts: &[u64]) -> Self {
        Self::with_density(starts, 1)
    }

    /// Like [`RadixIndex::new`] with about `per_bucket` starts per bucket (a power of two): a
    /// smaller index that stays in cache, for a slightly longer search inside a bucket.
    pub fn with_density(starts: &[u64], per_bucket: usize) -> Self {
        let n = starts.len();
        let buckets_wanted = n.div_ceil(per_bucket.max(1));
        let bits = (usize::BITS - buckets_wanted.max(1).saturating_sub(1).leading_zeros()).min(24);
        let buckets = 1usize << bits;
        let mut first = Vec::with_capacity(buckets + 1);
        let mut b = 0usize;
        for k in 0..buckets {
            let first_value = if bits == 0 {
                0
            } else {
                (k as u64) << (64 - bits)
            };
            while b + 1 < n && starts[b + 1] <= first_value {
                b += 1;
            }
            first.push(u32::try_from(b).expect("fewer than 2^32 starts"));
        }
        first.push(u32::try_from(n.saturating_sub(1)).expect("fewer than 2^32 starts"));
        Self {
            bits,
            first: first.into_boxed_slice(),
        }
    }

    /// The index of the greatest start at most `value`, if any; `starts` must be the slice the
    /// index was built over.
    #[inline]
    pub fn floor(&self, starts: &[u64], value: u64) -> Option<usize> {
        self.floor_by(starts.len(), value, |i| starts[i])
    }

    /// Like [`RadixIndex::floor`] over `len` starts read through `start_at`, for starts stored
    /// inside larger records.
    #[inline]
    pub fn floor_by(
        &self,
        len: usize,
        value: u64,
        start_at: impl Fn(usize) -> u64,
    ) -> Option<usize> {
        if len == 0 {
            return None;
        }
        let k = if self.bits == 0 {
            0
        } else {
            (value >> (64 - self.bits)) as usize
        };
        let (mut lo, mut hi) = (self.first[k] as usize, self.first[k + 1] as usize + 1);
        // Invariant: the answer is below `hi`, and everything below `lo` is at most `value`.
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if start_at(mid) <= value {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        // Starts before `first[k]` are at most the bucket's first value, so `lo` only stays at
        // `first[k]` when that is 0 and every start is above `value`.
        lo.checked_sub(1)
    }

    /// Heap bytes of the index.
    pub fn heap_bytes(&self) -> usize {
        self.first.len() * std::mem::size_of::<u32>()
    }

    /// Feeds the index into a hasher (for checksums).
    pub fn hash_into(&self, h: &mut xxhash_rust::xxh3::Xxh3) {
        h.update(&self.bits.to_le_bytes());
        for f in self.first.iter() {
            h.update(&f.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn floor_equals_a_plain_binary_search(
            mut starts in proptest::collection::vec(any::<u64>(), 0..500),
            probes in proptest::collection::vec(any::<u64>(), 50),
            clustered in any::<bool>(),
        ) {
            if clustered {
                // Skewed values: all in a narrow band.
                for s in &mut starts {
                    *s = (1 << 40) + (*s >> 44);
                }
            }
            starts.sort_unstable();
            starts.dedup();
            let index = RadixIndex::new(&starts);
            let sparse = RadixIndex::with_density(&starts, 4);
            let mut all = probes;
            all.extend([0, u64::MAX]);
            all.extend(starts.iter().flat_map(|&s| [s, s.wrapping_sub(1), s.saturating_add(1)]));
            for v in all {
                let want = starts.partition_point(|&s| s <= v).checked_sub(1);
                prop_assert_eq!(index.floor(&starts, v), want, "value {}", v);
                prop_assert_eq!(sparse.floor(&starts, v), want, "value {} (sparse)", v);
            }
        }
    }
}
