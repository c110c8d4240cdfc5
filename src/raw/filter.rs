//! The key filter of a table: a Bloom filter of the hashes of every entry the table holds, so
//! that a lookup of a key the table does not hold usually ends without reading the slot array.
//! A leaf module: it sees hashes and home slots, never entries.
//!
//! **Layout.** One word per 16 slots of the table (4 bits per slot: 5.3 bits per entry at load
//! 3/4, 8 at load 1/2), allocated zeroed with the table. A key sets two bits of one word (a
//! *blocked* Bloom filter: one cache line per lookup, whatever the bit count): the word of its
//! home slot (slot / 16, so the lookup needs no second product: the home slot is computed for
//! the probe anyway), the two bits from the top twelve bits of the hash's top 32 multiplied by
//! an odd constant (`hashbits::filter_bits`: bits an entry keeps, so that a migration can set
//! them; the product spreads structured keys, which the top bits taken directly do not). Not
//! from the top bits as they are: they pick the home slot, so the keys of one word share them
//! (tried: 99.9 % false positives); not from the lowest bits, which a weak hasher leaves zero
//! for keys that are multiples of a power of two (tried: 61 % for multiples of 2^40). Until
//! 2026-12 they were bits 20..26 and 26..32, which an entry no longer keeps. False positives at load 1/2
//! and 3/4: about 5 % and 10 % (`tests::absent_hashes_are_mostly_rejected`). 8 bits per slot
//! gave 1.7 % and 3.3 %, and no measurable speed over 4, for 1.2 more bytes per entry
//! (BENCHMARKS.md, "Engine v2, the seventh stop").
//!
//! **Why.** A probe for an absent key reads the slot array from the key's home slot to the
//! next empty slot: in a table larger than the cache, a cache miss, for nothing. The filter is
//! a sixteenth of the slot array, so it stays in cache where the slots do not. bustle's
//! ReadHeavy, whose reads are mostly of absent keys, and Go's LoadMostlyMisses gain from it;
//! a read hit pays 14 instructions (the same section). So a table under [`MIN_SLOTS`] slots,
//! whose slot array stays in cache anyway, gets an inactive filter (no words; it admits every
//! hash and records nothing).
//!
//! **Concurrency.** Only the dirty lock's holder inserts (through `Table::insert_unique`), and
//! it sets the key's bits before the release store that publishes the slot. A lookup loads the
//! word `Relaxed`: a lookup that must find the key is one that the insert happens-before
//! (through `read`'s or `dirty_view`'s release store, the lock, or any other synchronization),
//! and write-read coherence then shows it the bits, or a later value of the word, which only
//! ever gains bits while the table is in use. A lookup concurrent with the insert may miss the
//! key, and is then ordered before it; one that found the key read its bits first, so every
//! later lookup of that thread, and of any thread it synchronizes with, sees them too. (So the
//! bits need not come before the slot's store, only before the lock holder's next release:
//! every lock-free lookup reads the filter before the slot. The loom mutation
//! `filter_after_publish` moves them after the slot's store, and is harmless;
//! `loom-tests/README.md`.) Bits are cleared only with `&mut` access (`clear`, when a table is
//! emptied for reuse).

use std::ptr;
use std::sync::atomic::Ordering::Relaxed;

use crate::facade::AtomicUsize;

use super::hashbits::filter_bits;
use super::zeroed::zeroed_slice;

/// Slots per filter word (4 bits per slot).
const SLOTS_PER_WORD: usize = usize::BITS as usize / 4;

/// Tables of fewer slots get no filter: their slot array (under 64 KiB) stays in cache, where
/// a probe for an absent key costs a few loads that hit, and the filter's test would cost
/// every read hit its 14 instructions for nothing. Loom and Miri builds filter every table, so
/// that the models' small tables exercise it.
#[cfg(not(any(tiermap_loom, miri)))]
pub(crate) const MIN_SLOTS: usize = 8192;
#[cfg(any(tiermap_loom, miri))]
pub(crate) const MIN_SLOTS: usize = 1;

/// A Bloom filter of hashes, sized for a table. See the module docs.
pub(crate) struct KeyFilter {
    // A raw pointer to the first of `len` words (a leaked `Box<[_]>`), as `Table::slots`, for
    // the same reason (Miri's retags of a whole boxed slice on every indexing).
    words: *mut AtomicUsize,
    len: usize,
}

impl KeyFilter {
    /// A filter for a table of `slots` slots; an *inactive* one (no words, every hash may be
    /// present, nothing is recorded) below [`MIN_SLOTS`].
    pub(crate) fn new(slots: usize) -> Self {
        let len = if slots < MIN_SLOTS {
            0
        } else {
            slots.div_ceil(SLOTS_PER_WORD)
        };
        KeyFilter {
            words: Box::into_raw(zeroed_slice::<AtomicUsize>(len)).cast(),
            len,
        }
    }

    /// Heap bytes of the filter.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.len * size_of::<AtomicUsize>()
    }

    /// The word of a key of hash `hash` whose home slot is `home`, and the mask of its two
    /// bits.
    ///
    /// # Safety
    ///
    /// `home` is below the slot count the filter was made for.
    #[inline]
    unsafe fn bits(&self, home: usize, hash: u64) -> (&AtomicUsize, usize) {
        let w = home / SLOTS_PER_WORD;
        debug_assert!(w < self.len, "home slot {home} outside the filter");
        let b = usize::BITS - 1;
        let (b0, b1) = filter_bits(hash);
        let mask = (1usize << (b0 & b)) | (1usize << (b1 & b));
        // SAFETY: `home < slots` (the caller's requirement), so `w < slots.div_ceil(
        // SLOTS_PER_WORD) = len`, and `words` points to `len` initialized words that live as
        // long as the filter (freed in `Drop`).
        (unsafe { &*self.words.add(w) }, mask)
    }

    /// Records `hash`. Only the dirty lock's holder calls this (`Table::insert_unique`),
    /// before it publishes the slot; see the module docs for why `Relaxed` suffices.
    ///
    /// # Safety
    ///
    /// `home` is below the slot count the filter was made for.
    #[inline]
    pub(crate) unsafe fn insert(&self, home: usize, hash: u64) {
        if self.len == 0 {
            return;
        }
        // SAFETY: the caller's requirement, and the filter is active.
        let (word, mask) = unsafe { self.bits(home, hash) };
        // A load and a store, not a read-modify-write: the lock holder is the only writer, so
        // no bit can be lost, and the plain store skips a locked instruction.
        word.store(word.load(Relaxed) | mask, Relaxed);
    }

    /// Adds the bits `src` recorded for home slots `from..to` (a migration that copies slots to
    /// the same index: `Table::clone_from`). Only the dirty lock's holder calls this, before it
    /// publishes the copied slots; `Relaxed` as in [`KeyFilter::insert`]. `src` is the filter of
    /// a table of the same capacity (so the same words), and `to` at most that capacity.
    pub(crate) fn or_from(&self, src: &KeyFilter, from: usize, to: usize) {
        debug_assert_eq!(self.len, src.len, "filters of tables of one capacity");
        if self.len == 0 || from >= to {
            return;
        }
        let last = ((to - 1) / SLOTS_PER_WORD).min(self.len - 1);
        for w in from / SLOTS_PER_WORD..=last {
            // SAFETY: `w < len` for both filters (`last` is clamped, and both have `len`
            // words), which point to `len` initialized words alive as long as the filters.
            let (dst, bits) = unsafe { (&*self.words.add(w), (*src.words.add(w)).load(Relaxed)) };
            if bits != 0 {
                // A load and a store: the lock holder is the only writer (as in `insert`).
                dst.store(dst.load(Relaxed) | bits, Relaxed);
            }
        }
    }

    /// Clears the bits of `hash`: the loom mutation `filter_skips_copies` only.
    #[cfg(tiermap_mutation = "filter_skips_copies")]
    pub(crate) fn forget(&self, home: usize, hash: u64) {
        if self.len > 0 {
            // SAFETY: there is a word.
            let (word, mask) = unsafe { self.bits(home, hash) };
            word.store(word.load(Relaxed) & !mask, Relaxed);
        }
    }

    /// Whether `hash` may have been recorded (`false`: surely not, for every insert that
    /// happens-before this call). `Relaxed`: see the module docs.
    ///
    /// # Safety
    ///
    /// `home` is below the slot count the filter was made for (the caller's table computed it
    /// from its capacity), so that the read path tests nothing more than whether the filter is
    /// active.
    #[inline]
    pub(crate) unsafe fn may_contain(&self, home: usize, hash: u64) -> bool {
        if self.len == 0 {
            return true;
        }
        // SAFETY: the caller's requirement, and the filter is active.
        let (word, mask) = unsafe { self.bits(home, hash) };
        word.load(Relaxed) & mask == mask
    }

    /// The address of the word of home slot `home`, for a prefetch hint
    /// (`Table::prefetch_home`); `None` for an empty filter.
    #[inline]
    pub(crate) fn word_of(&self, home: usize) -> Option<*const AtomicUsize> {
        let w = home / SLOTS_PER_WORD;
        (w < self.len).then(|| self.words.wrapping_add(w).cast_const())
    }

    /// Forgets every hash (the table was emptied for reuse; `&mut`: no reader is left).
    pub(crate) fn clear(&mut self) {
        for i in 0..self.len {
            // SAFETY: `i < len`; see `bits`.
            unsafe { &*self.words.add(i) }.store(0, Relaxed);
        }
    }
}

impl Drop for KeyFilter {
    fn drop(&mut self) {
        // SAFETY: `words` came from `Box::into_raw` of a boxed slice of `len` words in `new`
        // and is freed once, here.
        drop(unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(self.words, self.len)) });
    }
}

// SAFETY: the filter owns its words as a `Box<[AtomicUsize]>` would, and that box is `Send`
// and `Sync`.
unsafe impl Send for KeyFilter {}
// SAFETY: as above.
unsafe impl Sync for KeyFilter {}

#[cfg(all(test, not(tiermap_loom)))]
mod tests {
    use super::*;
    use crate::raw::hashbits::mix;

    /// A fixed sequence of well-spread 64-bit values (splitmix64).
    fn spread(n: usize, seed: u64) -> impl Iterator<Item = u64> {
        let mut x = seed;
        (0..n).map(move |_| {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        })
    }

    /// The home slot a table of `slots` slots gives `hash` (as `Table::home`).
    fn home(slots: usize, hash: u64) -> usize {
        super::super::hashbits::home(hash, slots)
    }

    /// Fills a filter for `slots` slots with `keys` mixed hashes, checks that each is found,
    /// and returns the share of `probes` other hashes it lets through.
    fn false_positives(slots: usize, keys: &[u64], probes: &[u64]) -> f64 {
        let f = KeyFilter::new(slots);
        let at = |k: u64| (home(slots, mix(k)), mix(k));
        // SAFETY (here and below): `home` is below `slots`.
        for &k in keys {
            let (i, h) = at(k);
            unsafe { f.insert(i, h) };
        }
        for &k in keys {
            let (i, h) = at(k);
            assert!(
                unsafe { f.may_contain(i, h) },
                "a recorded hash is rejected"
            );
        }
        let passed = probes
            .iter()
            .filter(|&&k| {
                let (i, h) = at(k);
                unsafe { f.may_contain(i, h) }
            })
            .count();
        passed as f64 / probes.len() as f64
    }

    #[test]
    fn absent_hashes_are_mostly_rejected() {
        let slots = 1 << 16;
        let probes: Vec<u64> = spread(100_000, 2).collect();
        // A Bloom filter of 4 bits per slot and two bits per key would pass 4.9 % and 9.7 %;
        // one 64-bit word per key adds a little.
        for (load, bound) in [(0.5, 0.065), (0.75, 0.12)] {
            let keys: Vec<u64> = spread((slots as f64 * load) as usize, 1).collect();
            let fp = false_positives(slots, &keys, &probes);
            println!("load {load}: {:.2} % false positives", fp * 100.0);
            assert!(fp < bound, "load {load}: {fp} of absent hashes pass");
        }
    }

    /// Keys a weak (identity) hasher gives structured hashes for: multiples of a large power
    /// of two, and small consecutive integers. The filter takes its bits from the middle of
    /// the mixed hash, so these spread too.
    #[test]
    fn structured_keys_are_rejected_too() {
        let slots = 1 << 15;
        let n = slots / 2;
        // At load 1/2, where random keys pass 5 % of the time (bound 6.5 % in
        // `absent_hashes_are_mostly_rejected`), these pass 1.9 % and 4.3 %: no worse than
        // random keys. (Until 2026-12 the bits came from the low half of the mixed hash, where
        // these sequences spread more evenly than random keys, 1.5 % and 2 %, and the bound was
        // 4 %; taking bits 36..48 without the product lets 20 % of the consecutive ones pass.)
        for (name, stride, bound) in [
            ("consecutive", 1u64, 0.065),
            ("multiples of 2^40", 1 << 40, 0.065),
        ] {
            let keys: Vec<u64> = (0..n as u64).map(|i| i * stride).collect();
            let probes: Vec<u64> = (n as u64..n as u64 + 50_000).map(|i| i * stride).collect();
            let fp = false_positives(slots, &keys, &probes);
            println!("{name}: {:.2} % false positives", fp * 100.0);
            assert!(fp < bound, "{name}: {fp} of absent hashes pass");
        }
    }

    #[test]
    fn clear_forgets_and_sizes_follow_the_table() {
        let slots = MIN_SLOTS.max(64);
        let mut f = KeyFilter::new(slots);
        let hashes: Vec<u64> = spread(32, 3).map(mix).collect();
        // SAFETY (here and below): a filter for `slots` slots has words.
        for &h in &hashes {
            unsafe { f.insert(home(slots, h), h) };
        }
        assert!(hashes
            .iter()
            .all(|&h| unsafe { f.may_contain(home(slots, h), h) }));
        f.clear();
        assert!(hashes
            .iter()
            .all(|&h| !unsafe { f.may_contain(home(slots, h), h) }));
        assert_eq!(KeyFilter::new(0).heap_bytes(), 0);
        assert_eq!(
            KeyFilter::new(MIN_SLOTS).heap_bytes(),
            MIN_SLOTS.div_ceil(SLOTS_PER_WORD) * size_of::<usize>()
        );
    }

    /// Below `MIN_SLOTS` a filter holds nothing and rejects nothing: a table that small is
    /// probed without it.
    #[test]
    fn small_tables_have_an_inactive_filter() {
        let slots = MIN_SLOTS - 1;
        let f = KeyFilter::new(slots);
        assert_eq!(f.heap_bytes(), 0);
        assert!(f.word_of(0).is_none());
        for h in spread(1000, 4).map(mix) {
            let i = home(slots.max(1), h);
            // SAFETY: `i` is below `slots.max(1)`; an inactive filter reads no word.
            unsafe { f.insert(i, h) };
            assert!(unsafe { f.may_contain(i, h) });
        }
    }
}
