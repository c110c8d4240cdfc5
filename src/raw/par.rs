//! Parallel iteration (feature `rayon`): the read tiers that `snapshot` returned for each shard,
//! cut into slot ranges that rayon's worker threads walk while the thread that took the
//! snapshots stays pinned.
//!
//! The walk is the one `RawIter` does (slot order, empty chunks skipped, each entry's value
//! loaded with `Entry::load`), over `start..end` instead of the whole table. A published
//! table's slots never change (I1), so disjoint ranges see disjoint entries, and I2 (one entry
//! per key per table) makes every key show up at most once across all the ranges.
//!
//! The only new unsafety is that the walkers are not pinned themselves: see the `Send` impl
//! of [`RawParIter`].

use std::marker::PhantomData;

use rayon::iter::plumbing::{Folder, UnindexedProducer};

use super::entry::State;
use super::{RawMap, Shard, Tier};
use crate::facade::Guard;

/// Ranges of at most this many slots are not split further: walking a slot costs a load or
/// two, so a smaller piece would cost rayon more to hand out than to walk.
const MIN_SPLIT_SLOTS: usize = 64;

/// A range of slots of a snapshotted read tier, splittable for rayon (an
/// [`UnindexedProducer`]: how many live entries a range holds is unknown until it is walked).
///
/// `'g` is the borrow of the guard under which the tier was loaded; that guard is pinned, on
/// the thread that owns it, for all of `'g`, which is what protects the reads that worker
/// threads make (see the `Send` impl).
pub(crate) struct RawParIter<'g, K, V> {
    /// Slot ranges of the shards' snapshots, in shard order.
    pieces: Vec<Piece<'g, K, V>>,
    /// Opts out of the auto traits: `Send` and `Sync` are implemented below, with the argument
    /// for reading under another thread's pin.
    _pinned_elsewhere: PhantomData<*const ()>,
}

/// Slots `start..end` of one shard's snapshot.
struct Piece<'g, K, V> {
    /// For the generation check: like `Iter`, stop when a `clear` ends the tier's generation.
    shard: &'g Shard<K, V>,
    tier: &'g Tier<K, V>,
    start: usize,
    end: usize,
}

impl<K, V> Clone for Piece<'_, K, V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K, V> Copy for Piece<'_, K, V> {}

impl<'g, K: Send + 'static, V: Send + 'static> RawParIter<'g, K, V> {
    /// All the slots of tiers that hold every key present now, one per shard
    /// (`Shard::snapshot`: finishes a running migration and promotes if needed, as sequential
    /// iteration does). Taken here, on the pinned thread, shard after shard; a `clear` seen
    /// between two snapshots ends the list (as it ends sequential iteration).
    pub(crate) fn new(raw: &'g RawMap<K, V>, guard: &'g Guard) -> Self {
        let mut shards = raw.shards();
        let mut pieces = Vec::with_capacity(shards.len());
        let mut at = 0;
        while let Some((shard, tier)) = super::sharded::snapshot_at(&mut shards, at, guard) {
            at += 1;
            if pieces
                .first()
                .is_some_and(|p: &Piece<'g, K, V>| p.tier.id != tier.id)
            {
                break;
            }
            pieces.push(Piece {
                shard,
                tier,
                start: 0,
                end: tier.table.capacity(),
            });
        }
        // The snapshots may have promoted: the observer runs now, as after `iter`'s.
        raw.observe_any_due(guard);
        RawParIter {
            pieces,
            _pinned_elsewhere: PhantomData,
        }
    }
}

// SAFETY: a `RawParIter` is moved to rayon's worker threads, which read the tier's slots,
// their entries (keys), and the entries' values (handed out as `&'g K`, `&'g V`) without being
// pinned themselves. Memory safety rests on the guard that `'g` borrows:
//
// * The tier came from `Shard::snapshot` under that guard (`new` takes `&'g Guard`), so it
//   is alive for `'g` (I1: a replaced tier is retired through the epoch), and so is every entry
//   in its slots, which never change after publication (I1) and are freed only with the tier
//   that owns them, also through the epoch (I3).
// * The guard stays pinned for all of `'g`, on its own thread: it is borrowed, so it can be
//   neither dropped nor repinned (`repin` takes `&mut`), and a nested pin of that thread cannot
//   unpin it (crossbeam counts guards per thread). A pinned participant keeps the global epoch
//   from advancing twice, so nothing unlinked after the pin is freed before the guard drops.
//   That holds for any access ordered after the pin and before the unpin, whichever thread
//   makes it: a worker's load of an entry's value happens after the pin (rayon's hand-off of
//   the job synchronizes), so an unlink that replaces the loaded pointer is coherence-ordered
//   after that load, its retirement's SeqCst fence follows the pin's in the single total order,
//   and the retirement is stamped with an epoch no older than the pinned one; it cannot be
//   freed until the guard drops. A value unlinked before the load is not seen (`Entry::load`,
//   Acquire, as in `RawIter`); the tier's pointer was loaded by the guard's own thread.
// * Every access by a worker happens before `'g` ends, hence before the guard drops: the
//   producer, its pieces and the items it yields all carry `'g`, and whatever lets a borrow
//   cross threads and then end joins the other thread first. Rayon's driving functions
//   (`bridge_unindexed`, under `for_each`, `collect`...) return only when every piece is done,
//   and its `join` waits for both halves even when one panics, before the panic reaches the
//   caller's frame (where the guard lives); `std::thread::scope` joins too.
//
// The bounds: workers share `&K` and `&V` (`Sync`) and the map itself (`&Shard`, which is
// `Sync` only for `K, V: Send + Sync`).
unsafe impl<K: Send + Sync, V: Send + Sync> Send for RawParIter<'_, K, V> {}
// SAFETY: a shared `&RawParIter` gives access to nothing but the fields (every method takes
// `self`); reading the tier through it on another thread is covered by the argument above,
// with the same bounds.
unsafe impl<K: Send + Sync, V: Send + Sync> Sync for RawParIter<'_, K, V> {}

impl<'g, K, V> RawParIter<'g, K, V> {
    fn of(pieces: Vec<Piece<'g, K, V>>) -> Self {
        RawParIter {
            pieces,
            _pinned_elsewhere: PhantomData,
        }
    }
}

impl<'g, K: Send + Sync, V: Send + Sync> UnindexedProducer for RawParIter<'g, K, V> {
    type Item = (&'g K, &'g V);

    /// Several shards: halves the list of shards. One shard: halves its slot range, leaving
    /// out empty chunks: both halves start in a chunk that holds entries, and a range whose
    /// second half is all empty chunks is cut down and halved again.
    fn split(mut self) -> (Self, Option<Self>) {
        if self.pieces.len() > 1 {
            let other = self.pieces.split_off(self.pieces.len() / 2);
            return (self, Some(Self::of(other)));
        }
        let Some(p) = self.pieces.first_mut() else {
            return (self, None);
        };
        let table = &p.tier.table;
        p.start = table.skip_empty(p.start).min(p.end);
        while p.end - p.start > MIN_SPLIT_SLOTS {
            let mid = p.start + (p.end - p.start) / 2;
            let right = table.skip_empty(mid);
            if right < p.end {
                let other = Piece { start: right, ..*p };
                p.end = mid;
                return (self, Some(Self::of(vec![other])));
            }
            p.end = mid;
        }
        (self, None)
    }

    fn fold_with<F>(self, folder: F) -> F
    where
        F: Folder<Self::Item>,
    {
        folder.consume_iter(self.pieces.into_iter().flat_map(|p| Walk {
            shard: p.shard,
            tier: p.tier,
            idx: p.start,
            end: p.end,
        }))
    }
}

/// The sequential walk of one range (what `RawIter` plus `Iter` do, bounded by `end`).
struct Walk<'g, K, V> {
    shard: &'g Shard<K, V>,
    tier: &'g Tier<K, V>,
    idx: usize,
    end: usize,
}

impl<'g, K, V> Iterator for Walk<'g, K, V> {
    type Item = (&'g K, &'g V);

    fn next(&mut self) -> Option<Self::Item> {
        // As `Iter`: a `clear` ends the iteration.
        if !self.shard.generation_is(self.tier.id) {
            return None;
        }
        let table = &self.tier.table;
        loop {
            self.idx = table.skip_empty(self.idx);
            if self.idx >= self.end {
                return None;
            }
            let i = self.idx;
            self.idx += 1;
            if let Some(e) = table.entry_at(i) {
                if let State::Live(p) = e.load() {
                    // SAFETY: `p` was loaded live (Acquire) from an entry of the snapshotted
                    // tier, after the pin of the guard that `'g` borrows and before it ends;
                    // values are retired through the epoch, so it stays valid for `'g` (see the
                    // `Send` impl of `RawParIter` for why this holds on a worker thread).
                    return Some((&e.key, unsafe { &*p }));
                }
            }
        }
    }
}
