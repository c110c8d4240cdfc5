//! Sampling of the promotion clock: which lookups that missed the read tier are counted, and
//! with what weight (see `Shard::lookup_amended`, and DESIGN.md "Promotion, misses and
//! compaction"). A leaf module: it knows nothing of tiers or tables.
//!
//! Outside loom builds both samplers use a per-thread counter (one in `n` of the calling
//! thread's calls is chosen, whatever the keys and the hasher: the mixed hash's bits cannot be
//! used, they are constant for a whole family of keys under an identity or Fx-style hasher).
//! In loom builds a thread-local counter would carry over from one explored execution to the
//! next and make them differ, so the choice is deterministic there.

/// A lookup of a key that no tier holds counts toward promotion one time in this many.
pub(super) const ABSENT_MISS_SAMPLE: u32 = 16;
/// A lookup that missed the read tier and found its key in the dirty tier counts toward
/// promotion one time in this many, with this weight.
#[cfg(not(tiermap_loom))]
pub(super) const FOUND_MISS_SAMPLE: u32 = 8;

/// Whether this call is the calling thread's `n`-th, `2n`-th, ... call with this `counter`.
#[cfg(not(tiermap_loom))]
#[inline]
fn one_in(counter: &'static std::thread::LocalKey<std::cell::Cell<u32>>, n: u32) -> bool {
    counter.with(|c| {
        let v = c.get().wrapping_add(1);
        c.set(v);
        v % n == 0
    })
}

/// Whether this absent-key miss counts toward promotion: one in `ABSENT_MISS_SAMPLE` of the
/// calling thread's absent-key misses (loom: chosen by the hash's top bits; the models use few
/// keys, of the std hasher).
#[inline]
pub(super) fn sample_absent_miss(hash: u64) -> bool {
    #[cfg(not(tiermap_loom))]
    {
        thread_local! {
            static ABSENT_MISSES: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
        }
        let _ = hash;
        one_in(&ABSENT_MISSES, ABSENT_MISS_SAMPLE)
    }
    #[cfg(tiermap_loom)]
    {
        (hash >> 60) % u64::from(ABSENT_MISS_SAMPLE) == 0
    }
}

/// What this dirty-tier hit adds to the promotion clock: `FOUND_MISS_SAMPLE` one time in
/// `FOUND_MISS_SAMPLE` of the calling thread's dirty-tier hits, else 0. The clock's expected
/// value is the same as counting each hit once (Go's rule), but the shared counter, a locked
/// read-modify-write that every reading core would otherwise take in turn, is written an
/// eighth as often. Loom: every hit counts once, so that the models promote after exactly
/// Go's number of misses.
#[inline]
pub(super) fn sample_found_miss() -> usize {
    #[cfg(not(tiermap_loom))]
    {
        thread_local! {
            static FOUND_MISSES: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
        }
        if one_in(&FOUND_MISSES, FOUND_MISS_SAMPLE) {
            FOUND_MISS_SAMPLE as usize
        } else {
            0
        }
    }
    #[cfg(tiermap_loom)]
    {
        1
    }
}
