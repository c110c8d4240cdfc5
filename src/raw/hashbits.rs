//! Which bits of a key's mixed hash each part of the engine uses. A leaf module: it sees
//! hashes, never entries or tables.
//!
//! Everything a *migration* needs to place an entry in another table (its shard, its home
//! slot, its slot tag, its key-filter bits) comes from the top 32 bits of the mixed hash
//! ([`KEPT`]), so that an entry need not keep the low half. Only lookups and `insert_fresh`,
//! which hash the caller's key, use the low half (the dirty tier's fresh-key filter, see
//! `Tier::fresh_bit`).
//!
//! | bits of the mixed hash | used for |
//! |---|---|
//! | 32 .. 32 + log2(shards) | the shard ([`shard_index`]) |
//! | 32 .. 48 | the slot tag ([`tag16`]) |
//! | 32 .. 64, multiplied | the two key-filter bits ([`filter_bits`]) |
//! | 32 .. 64 (top first) | the home slot ([`home`]) |
//! | 0 .. | the fresh-key filter |
//!
//! The home slot is `hi × capacity / 2^32` (`hi`: the top 32 bits), so it is decided by the
//! top bits and the shard index, tag and filter bits by the low bits of `hi`: keys that share
//! a probe neighbourhood (their top bits) still differ in their tags and filter bits. A table
//! has at most 2^32 slots ([`MAX_SLOTS`]).
//!
//! The mixed hash is a product by an odd constant ([`mix`]), whose high bits depend on every
//! bit of the user's hash; its low bits do not (a weak hasher's multiples of a power of two
//! leave them zero), which is why nothing that matters to a table's spread comes from there.

/// The bits of the mixed hash that an entry keeps: the top 32.
pub(crate) const KEPT: u64 = 0xFFFF_FFFF_0000_0000;

/// The most slots a table may have: its home slot is computed from 32 bits of hash.
pub(crate) const MAX_SLOTS: usize = if usize::BITS > 32 {
    (1u64 << 32) as usize
} else {
    usize::MAX
};

/// Spreads a user hash so that weak hashers (identity hashes of small integers) still fill the
/// table evenly: everything a table uses comes from the high bits of the product.
#[inline]
pub(crate) fn mix(hash: u64) -> u64 {
    let h = hash ^ (hash >> 32);
    h.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The top 32 bits of the mixed hash.
#[inline]
fn hi(hash: u64) -> u64 {
    hash >> 32
}

/// The home slot of `hash` in a table of `slots` slots (`slots <= MAX_SLOTS`).
#[inline]
pub(crate) fn home(hash: u64, slots: usize) -> usize {
    debug_assert!(slots <= MAX_SLOTS);
    ((hi(hash) * slots as u64) >> 32) as usize
}

/// The slot tag of `hash`: bits 32..48.
#[inline]
pub(crate) fn tag16(hash: u64) -> u16 {
    hi(hash) as u16
}

/// The two bit positions (0..64) the key filter sets for `hash`: the top twelve bits of the
/// top 32 multiplied by an odd constant. Not those bits themselves: the keys of one filter
/// word share a short range of the top 32 bits (their home slots are neighbours), and a
/// structured key set (consecutive integers under an identity hasher: a Weyl sequence in those
/// bits) puts its members of one range on a lattice whose low bits repeat: bits 36..48 taken
/// directly let 20 % of absent consecutive keys through at load 1/2, where random keys pass
/// 5 %; the product spreads the lattice (`filter::tests::structured_keys_are_rejected_too`).
#[inline]
pub(crate) fn filter_bits(hash: u64) -> (u32, u32) {
    let m = (hi(hash) as u32).wrapping_mul(0x9E37_79B9);
    (m >> 26, (m >> 20) & 63)
}

/// The index of `hash`'s shard in an array of `mask + 1` shards (a power of two).
#[inline]
pub(crate) fn shard_index(hash: u64, mask: usize) -> usize {
    hi(hash) as usize & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_a_migration_uses_is_in_the_kept_bits() {
        for k in 0..10_000u64 {
            let h = mix(k.wrapping_mul(0x1234_5678_9ABC_DEF1) ^ (k << 40));
            let kept = h & KEPT;
            assert_eq!(home(h, 1 << 20), home(kept, 1 << 20));
            assert_eq!(home(h, 12_288), home(kept, 12_288));
            assert_eq!(tag16(h), tag16(kept));
            assert_eq!(filter_bits(h), filter_bits(kept));
            assert_eq!(shard_index(h, 63), shard_index(kept, 63));
        }
    }

    #[test]
    fn home_spreads_over_the_whole_table() {
        let slots = 3 * 4096;
        assert_eq!(home(0, slots), 0);
        assert_eq!(home(u64::MAX, slots), slots - 1);
        assert_eq!(home(u64::MAX, MAX_SLOTS), MAX_SLOTS - 1);
        let mut seen = vec![false; slots];
        for k in 0..(slots as u64 * 8) {
            seen[home(mix(k), slots)] = true;
        }
        let hit = seen.iter().filter(|&&s| s).count();
        assert!(hit > slots * 99 / 100, "{hit} of {slots} slots are a home");
    }
}
