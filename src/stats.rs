//! Where a map's memory is: [`MapStats`] and [`Released`].

use std::fmt;

/// A snapshot of where a [`SyncMap`](crate::SyncMap)'s memory is.
///
/// Taken by [`SyncMap::stats`](crate::SyncMap::stats). Counts are exact when the map is
/// quiescent and approximate under concurrent writes. Byte counts are *shallow*: they count the
/// map's own allocations (tables, entries, value cells of `size_of::<V>()` bytes), not heap
/// memory owned by the keys and values themselves (a `String`'s buffer, say).
///
/// ```
/// let map = tiermap::SyncMap::new();
/// map.insert(1u64, 10u64);
/// let stats = map.stats();
/// assert_eq!(stats.len, 1);
/// assert!(stats.held_bytes > 0);
/// println!("{stats}");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MapStats {
    /// Keys present.
    pub len: usize,
    /// Entries the map still holds for deleted keys (kept until a migration expunges them; the
    /// map starts a compaction when they exceed half the live entries plus 64).
    pub deleted: usize,
    /// Slots of the read tier's table.
    pub read_capacity: usize,
    /// Slots of the dirty tier's table (0 when there is no dirty tier).
    pub dirty_capacity: usize,
    /// Whether a dirty tier is being filled from the read tier.
    pub migrating: bool,
    /// Lookups since the last promotion that missed the read tier and found their key in the
    /// dirty tier (each thread adds 8 for every eighth one: the same count on average, with an
    /// eighth of the writes to the shared counter), plus one in 16 of those that found it
    /// nowhere (Go's promotion clock, which counts every miss; see `docs/DESIGN.md`).
    pub misses: usize,
    /// Approximate heap bytes held by the map: tables, entries and value cells.
    pub held_bytes: usize,
    /// Bytes of the map's entry blocks that hold no entry (not in `held_bytes`): slots freed
    /// by compactions and clears, which the map's next inserts reuse, and the unused end of
    /// its newest block. A block goes back to the allocator as soon as none of its slots holds
    /// an entry (an emptied map keeps none; a map that dropped its oldest keys gives their
    /// blocks back); a block in which some entry is still alive, or retired and not yet
    /// freed, stays.
    pub spare_bytes: usize,
    /// Bytes retired but not yet freed: superseded and cleared tables (with the entries they
    /// own) and sealed batches of removed or replaced values (64 per batch), because a guard
    /// pinned before they were retired may still be alive, or they are past that and wait for
    /// the background reclaimer's next tick (about 10 ms) or a step of a later slow operation.
    /// [`SyncMap::reclaim`](crate::SyncMap::reclaim) frees them at once. Values removed since
    /// the last batch was sealed (at most 63) are not counted until it is.
    pub retired_bytes: usize,
    /// Times a dirty tier became the read tier.
    pub promotions: u64,
    /// Migrations started (each fills a dirty tier from the read tier, a few slots per
    /// operation).
    pub migrations: u64,
    /// Migrations started to drop deleted entries or shrink the tables.
    pub compactions: u64,
    /// Migrations that copied the read table's slots to the same index of an equally large
    /// table (possible when the read table has room and few deleted entries; they read no
    /// entry), out of [`MapStats::migrations`].
    pub clones: u64,
}

impl MapStats {
    /// Held bytes per live entry (`held_bytes / len`), or `None` for an empty map.
    ///
    /// ```
    /// let map: tiermap::SyncMap<u64, u64> = (0..1000).map(|i| (i, i)).collect();
    /// assert!(map.stats().bytes_per_entry().unwrap() > 16.0);
    /// ```
    pub fn bytes_per_entry(&self) -> Option<f64> {
        (self.len > 0).then(|| self.held_bytes as f64 / self.len as f64)
    }
}

/// Formats a byte count with a binary unit (`1.5 MiB`).
pub(crate) struct Bytes(pub(crate) usize);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut v = self.0 as f64;
        let mut u = 0;
        while v >= 1024.0 && u + 1 < UNITS.len() {
            v /= 1024.0;
            u += 1;
        }
        if u == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{v:.1} {}", UNITS[u])
        }
    }
}

impl fmt::Display for MapStats {
    /// One log line: `len=3 deleted=0 held=1.2 KiB spare=416 B retired=0 B read_cap=8 ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "len={} deleted={} held={} spare={} retired={} read_cap={} dirty_cap={}{} \
             promotions={} migrations={} compactions={} clones={}",
            self.len,
            self.deleted,
            Bytes(self.held_bytes),
            Bytes(self.spare_bytes),
            Bytes(self.retired_bytes),
            self.read_capacity,
            self.dirty_capacity,
            if self.migrating { " (migrating)" } else { "" },
            self.promotions,
            self.migrations,
            self.compactions,
            self.clones,
        )
    }
}

/// What [`SyncMap::clear_and_release`](crate::SyncMap::clear_and_release) gave back.
///
/// ```
/// let map: tiermap::SyncMap<u64, u64> = (0..1000).map(|i| (i, i)).collect();
/// let released = map.clear_and_release();
/// assert!(released.released_bytes > 0);
/// // No guard of this map was alive, so everything was freed before returning.
/// assert_eq!(released.pending_bytes, 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Released {
    /// Bytes given back by the call: what the map held and had retired before it (its
    /// [`MapStats::held_bytes`] plus [`MapStats::retired_bytes`]), less what is still pending
    /// and what the empty map holds.
    pub released_bytes: usize,
    /// Retired bytes of this map not yet freed when the call returned: a guard pinned before the
    /// call (on any thread) is still alive. They are freed by the first collection after that
    /// guard is dropped, or by [`SyncMap::reclaim`](crate::SyncMap::reclaim).
    pub pending_bytes: usize,
}

impl fmt::Display for Released {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "released={} pending={}",
            Bytes(self.released_bytes),
            Bytes(self.pending_bytes)
        )
    }
}
