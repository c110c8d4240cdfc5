//! Memory tests with a counting global allocator (its own test binary, one test, so that no
//! other test allocates concurrently).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use tiermap::SyncMap;

struct Counting;
static CURRENT: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        CURRENT.fetch_add(l.size(), Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        CURRENT.fetch_add(l.size(), Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        CURRENT.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        CURRENT.fetch_add(new, Ordering::Relaxed);
        CURRENT.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: forwarded with the caller's arguments.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes currently allocated. Signed differences: the epoch's own bags, allocated before a
/// scenario, may be freed during it.
fn heap() -> isize {
    CURRENT.load(Ordering::Relaxed) as isize
}

/// Lets the epoch collector free whatever earlier scenarios retired, so that it is not counted
/// against (or credited to) the next one.
fn settle() {
    let m: SyncMap<u8, u8> = SyncMap::new();
    for _ in 0..8 {
        m.reclaim();
    }
}

const N: u64 = if cfg!(miri) { 2_000 } else { 100_000 };

/// A map holding keys `0..N` (value = key).
fn filled() -> SyncMap<u64, u64> {
    let map = SyncMap::new();
    for i in 0..N {
        map.insert(i, i);
    }
    map
}

/// Fills a map with `filled` (keys `0..N`), removes the oldest 90 % of them and checks that the memory they
/// held comes back (at most a quarter of the full map's stays); drops the map and returns its
/// statistics from before the drop.
fn drop_oldest(what: &str, filled: fn() -> SyncMap<u64, u64>) -> tiermap::MapStats {
    let base = heap();
    let map = filled();
    map.reclaim();
    let full = heap() - base;
    for i in 0..N * 9 / 10 {
        map.remove(&i);
    }
    map.reclaim();
    let after = heap() - base;
    let s = map.stats();
    println!(
        "{what} shards={} full={full} after dropping the oldest 90 %={after} {s}",
        map.shard_count()
    );
    assert_eq!(map.len(), (N - N * 9 / 10) as usize);
    assert!(
        after <= full / 4,
        "{what} held {after} of {full} bytes after removing the oldest 90 % of the keys: {s}"
    );
    drop(map);
    s
}

/// `filled`, but with one shard that is never split: for the bounds whose argument is about
/// one shard's compactions.
fn filled_one_shard() -> SyncMap<u64, u64> {
    let map = SyncMap::with_capacity_shards_and_hasher(0, 1, std::hash::RandomState::new());
    for i in 0..N {
        map.insert(i, i);
    }
    map
}
/// Slack allowed over an empty map: epoch bookkeeping (a bag or two of 64 deferred
/// functions) and the at most ~64 deleted entries plus small tables the purge may keep.
const SMALL: isize = 32 * 1024;

/// Heap of a freshly created empty map, measured the same way as the scenarios.
fn empty_map_bytes() -> isize {
    let before = heap();
    let map: SyncMap<u64, u64> = SyncMap::new();
    map.insert(0, 0);
    map.remove(&0);
    map.reclaim();
    let bytes = heap() - before;
    drop(map);
    bytes
}

#[test]
fn memory_scenarios() {
    // Warm up: register this thread with the epoch collector, create its first bag.
    {
        let m: SyncMap<u64, u64> = SyncMap::new();
        m.insert(1, 1);
        m.clear_and_release();
    }
    settle();
    let empty = empty_map_bytes();
    settle();

    // (a) insert N, remove all, with no insert afterwards.
    let base = heap();
    let map = filled();
    let _ = map.pin().iter().count(); // the read-tier case: Go never frees these
    let full = heap() - base;
    for i in 0..N {
        map.remove(&i);
    }
    let before_reclaim = heap() - base;
    let s = map.stats();
    map.reclaim();
    let after = heap() - base;
    println!(
        "(a) full={full} after-remove-all={before_reclaim} after-reclaim={after} empty={empty} \
         stats: {s}"
    );
    assert!(s.deleted <= 64, "deleted entries purged: {s}");
    assert!(
        after <= empty + SMALL,
        "(a) held {after} bytes after removing all, an empty map holds {empty}"
    );
    drop(map);
    settle();

    // (b) clear_and_release after N inserts.
    let base = heap();
    let map = filled();
    let full = heap() - base;
    let released = map.clear_and_release();
    let after = heap() - base;
    println!("(b) full={full} after-clear_and_release={after} {released}");
    assert_eq!(released.pending_bytes, 0);
    assert!(
        after <= empty + SMALL,
        "(b) held {after} bytes after clear_and_release, an empty map holds {empty}"
    );
    drop(map);
    settle();

    // (c) sliding-window churn: insert i, remove i - W. The bound (docs/DESIGN.md, "Memory
    // bound"): held bytes <= 192 bytes per live entry + 128 KiB, at every step, counting the
    // garbage not yet collected.
    const W: u64 = 1_000;
    let steps: u64 = if cfg!(miri) { 5_000 } else { 1_000_000 };
    let bound = 192 * W as isize + 128 * 1024;
    let base = heap();
    let map: SyncMap<u64, u64> = SyncMap::new();
    let mut peak = 0;
    for i in 0..steps {
        map.insert(i, i);
        if i >= W {
            map.remove(&(i - W));
        }
        let held = heap() - base;
        peak = peak.max(held);
        assert!(
            held <= bound,
            "(c) step {i}: held {held} > bound {bound}: {}",
            map.stats()
        );
    }
    println!(
        "(c) churn W={W} steps={steps}: peak={peak} bound={bound} {}",
        map.stats()
    );
    assert_eq!(map.len(), W as usize);
    drop(map);
    settle();

    // (d) a cache that drops its oldest 90 %: the entry blocks that held them go back (entries
    // are handed out in address order while a map grows), not only their table slots. One
    // shard: the bound on what is left below follows one shard's compactions (a map split into
    // several shards holds the deleted entries of each, up to its own compaction, and each may
    // be in the middle of one; (d2) checks that map's memory comes back too).
    let s = drop_oldest("(d)", filled_one_shard);
    // What is left of the blocks: the block shared with the removed keys and the newest
    // block's unused end, at most 64 KiB each.
    assert!(s.spare_bytes <= 128 << 10, "(d) {s}");
    settle();
    // (d2) the same with a map built empty, which is split into several shards as it grows.
    drop_oldest("(d2)", filled);
    settle();

    // (e) slots freed by a compaction are reused by the next inserts: remove every other key
    // (no block empties), then insert as many new keys.
    let map = filled();
    for i in (0..N).step_by(2) {
        map.remove(&i);
    }
    map.reclaim();
    let s = map.stats();
    let spare = s.spare_bytes;
    // Each removed key whose entry the compaction freed (all but the `deleted` still held)
    // left a slot of at least 24 bytes (key, hash, value pointer).
    let freed = N as usize / 2 - s.deleted;
    assert!(spare >= freed * 24, "(e) freed slots are spare: {s}");
    for i in 0..N / 2 {
        map.insert(N + i, i);
    }
    let s = map.stats();
    println!("(e) spare after removing every other key={spare}, after as many inserts: {s}");
    assert!(
        s.spare_bytes <= spare / 4,
        "(e) the freed slots were not reused: spare {spare} -> {s}"
    );
    drop(map);
    settle();

    // (f) `drop` gives everything back, from a map in every state at once: a promoted read tier
    // with deleted entries and replaced values, a dirty tier with new keys, a migration under
    // way and retired tables. Entries without drop glue (`u64 -> u64`) are given back block by block, without
    // a walk; entries with it (`u64 -> String`) are walked and dropped.
    fn busy<V: Send + Sync + 'static>(val: impl Fn(u64) -> V) -> SyncMap<u64, V> {
        let map = SyncMap::new();
        for i in 0..N {
            map.insert(i, val(i));
        }
        let _ = map.pin().iter().count(); // promoted
        for i in (1..N).step_by(5) {
            // A replaced value lives outside its entry (even a `u64`: the entry's own slot
            // held the first one), and the entry owns it.
            map.insert(i, val(i + 1));
        }
        for i in (0..N).step_by(3) {
            map.remove(&i);
        }
        for i in N..N + 100 {
            map.insert(i, val(i)); // the first one starts a migration
        }
        assert!(map.stats().migrating, "(f) {}", map.stats());
        map
    }
    /// Drops `map`, built since the heap held `base` bytes, and checks that it gave back all
    /// but `SMALL` of them.
    fn dropped_whole<V>(what: &str, base: isize, map: SyncMap<u64, V>) {
        let s = map.stats();
        drop(map);
        settle();
        let after = heap() - base;
        println!("{what}: {after} bytes after drop of {s}");
        assert!(after <= SMALL, "{what}: {after} bytes after drop");
    }
    let base = heap();
    dropped_whole("(f) u64 -> u64", base, busy(|i| i));
    let base = heap();
    dropped_whole("(f) u64 -> String", base, busy(|i| i.to_string()));

    // (g) the same for a map that was split (built empty, grown past the split), whose shards
    // share their entry blocks: without a value cell anywhere its blocks go back whole; with
    // cells (replaced values) its shards free their entries, cells included. (The unit test
    // `a_split_map_is_dropped_with_or_without_value_cells` checks the mixed case under Miri.)
    for replace in [false, true] {
        let base = heap();
        let map: SyncMap<u64, u64> = SyncMap::new();
        let mut k = 0;
        while map.shard_count() == 1 {
            map.insert(k, k);
            let _ = map.get(&(k / 2)); // the promotion clock, whose promotion splits
            k += 1;
        }
        for i in k..N {
            map.insert(i, i);
        }
        if replace {
            for i in (0..N).step_by(5) {
                map.insert(i, i + 1);
            }
        }
        dropped_whole(
            &format!("(g) split map, replaced values {replace}"),
            base,
            map,
        );
    }
}
