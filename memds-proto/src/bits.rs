//! Fixed-width bit packing into `u64` words: the one primitive the compact encoding is built on.
//!
//! Values are written least-significant bit first into a word vector; a value of width `w` at
//! bit offset `o` occupies bits `o .. o + w` and may straddle two words. Readers always find one
//! spare word at the end (the writer's [`BitWriter::finish`] adds it), so a read never needs a
//! bounds branch for the straddling half.

/// The number of bits needed to represent `v` (0 for 0).
pub(crate) fn width(v: u64) -> u32 {
    u64::BITS - v.leading_zeros()
}

/// Reads the `w`-bit value at bit offset `off`; `w` is at most 64.
#[inline]
pub(crate) fn get(words: &[u64], off: usize, w: u32) -> u64 {
    if w == 0 {
        return 0;
    }
    let word = off / 64;
    let shift = (off % 64) as u32;
    let mut v = words[word] >> shift;
    if shift + w > 64 {
        v |= words[word + 1] << (64 - shift);
    }
    v & mask(w)
}

/// How many of the `len` bits at bit offset `off` are set.
#[inline]
pub(crate) fn count_ones(words: &[u64], off: usize, len: usize) -> u32 {
    let mut count = 0;
    let mut at = off;
    let end = off + len;
    while at < end {
        let w = ((end - at).min(64 - at % 64)) as u32;
        count += get(words, at, w).count_ones();
        at += w as usize;
    }
    count
}

#[inline]
pub(crate) fn mask(w: u32) -> u64 {
    if w >= 64 { u64::MAX } else { (1u64 << w) - 1 }
}

/// Appends fixed-width values to a word vector.
#[derive(Debug, Default)]
pub(crate) struct BitWriter {
    words: Vec<u64>,
    bits: usize,
}

impl BitWriter {
    /// The current length in bits.
    #[cfg(test)]
    pub(crate) fn bit_len(&self) -> usize {
        self.bits
    }

    /// Appends a whole word at a word boundary.
    pub(crate) fn push_word(&mut self, v: u64) {
        self.align();
        self.words.push(v);
        self.bits += 64;
    }

    /// Appends the low `w` bits of `v`.
    pub(crate) fn push(&mut self, v: u64, w: u32) {
        if w == 0 {
            return;
        }
        debug_assert!(w == 64 || v >> w == 0, "value {v} does not fit in {w} bits");
        let shift = (self.bits % 64) as u32;
        if shift == 0 {
            self.words.push(v);
        } else {
            let last = self.words.len() - 1;
            self.words[last] |= v << shift;
            if shift + w > 64 {
                self.words.push(v >> (64 - shift));
            }
        }
        self.bits += w as usize;
    }

    /// Pads to the next word boundary.
    pub(crate) fn align(&mut self) {
        self.bits = self.words.len() * 64;
    }

    /// The packed words, without a spare word.
    pub(crate) fn into_words(self) -> Vec<u64> {
        self.words
    }

    /// The packed words, with the spare trailing word readers rely on, at exact capacity.
    #[cfg(test)]
    pub(crate) fn finish(mut self) -> Box<[u64]> {
        self.words.push(0);
        self.words.into_boxed_slice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn values_read_back_at_any_width_and_alignment(
            values in proptest::collection::vec((any::<u64>(), 0u32..=64), 0..200)
        ) {
            let mut w = BitWriter::default();
            let mut placed = Vec::new();
            for &(v, width) in &values {
                let v = v & mask(width) & if width == 0 { 0 } else { u64::MAX };
                placed.push((w.bit_len(), v, width));
                w.push(v, width);
            }
            let words = w.finish();
            for (off, v, width) in placed {
                prop_assert_eq!(get(&words, off, width), v);
            }
        }
    }

    #[test]
    fn width_counts_significant_bits() {
        assert_eq!(width(0), 0);
        assert_eq!(width(1), 1);
        assert_eq!(width(255), 8);
        assert_eq!(width(256), 9);
        assert_eq!(width(u64::MAX), 64);
    }
}
