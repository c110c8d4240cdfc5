//! What a map keeps alive: heap bytes after `clear` or removing every key with no further call
//! on the map (the background reclaimer's work), drop counting of values (none leaked, none
//! dropped twice, single- and multi-threaded), the removed values still alive 100 ms after a
//! burst of removes, and operations that must not allocate.
//!
//! Its own test binary with a counting global allocator. The byte counter and the live-value
//! counter are process-wide, so every test takes [`LOCK`] and runs alone; the allocation count
//! used for "allocates nothing" is per thread (the background reclaimer allocates on its own
//! thread, e.g. the list of maps it ticks over).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicIsize, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tiermap::SyncMap;

// ---------------------------------------------------------------------------------------------
// Counting allocator.

struct Counting;

/// Bytes currently allocated, by every thread.
static CURRENT: AtomicUsize = AtomicUsize::new(0);
/// Allocations ever made, by every thread.
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Allocations ever made by this thread (const-initialized, no destructor: safe to use from
    /// the allocator, it never allocates itself).
    static THREAD_ALLOCS: Cell<usize> = const { Cell::new(0) };
}

fn count_alloc(size: usize) {
    CURRENT.fetch_add(size, Ordering::Relaxed);
    ALLOCS.fetch_add(1, Ordering::Relaxed);
    let _ = THREAD_ALLOCS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: forwards to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count_alloc(l.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        count_alloc(l.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        CURRENT.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        count_alloc(new);
        CURRENT.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: forwarded with the caller's arguments.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes currently allocated (signed, for differences).
fn heap() -> isize {
    CURRENT.load(Ordering::Relaxed) as isize
}

/// Allocations made so far by the calling thread.
fn thread_allocs() -> usize {
    THREAD_ALLOCS.with(Cell::get)
}

/// Every test takes it: the counters are process-wide.
static LOCK: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    // A failed test poisons the lock; the others still run.
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------------------------
// A value that counts its live instances and detects double drops.

/// Live `Tracked` values.
static ALIVE: AtomicIsize = AtomicIsize::new(0);
/// Drops of a value whose id was dropped before, or whose memory no longer holds a live value.
static BAD_DROPS: AtomicUsize = AtomicUsize::new(0);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
/// Ids of the values dropped so far.
static DROPPED: Mutex<BTreeSet<u64>> = Mutex::new(BTreeSet::new());

const LIVE: u64 = 0x11FE_11FE_11FE_11FE;
const DEAD: u64 = 0xDEAD_DEAD_DEAD_DEAD;

/// A counted value: `val` is its payload (compared by `PartialEq`), `id` is unique per instance
/// (clones get new ids), `state` is `LIVE` until dropped.
#[derive(Debug)]
struct Tracked {
    val: u64,
    id: u64,
    state: u64,
    /// Its `Drop` takes `SLOW_DROP` (to widen races with the thread that drops it).
    slow: bool,
}

/// How long the `Drop` of a slow `Tracked` value takes.
const SLOW_DROP: Duration = Duration::from_micros(100);

impl Tracked {
    fn new(val: u64) -> Self {
        ALIVE.fetch_add(1, Ordering::SeqCst);
        Tracked {
            val,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            state: LIVE,
            slow: false,
        }
    }

    fn slow(val: u64) -> Self {
        let mut v = Tracked::new(val);
        v.slow = true;
        v
    }
}

impl Clone for Tracked {
    fn clone(&self) -> Self {
        assert_eq!(self.state, LIVE, "cloning a dropped value (id {})", self.id);
        Tracked::new(self.val)
    }
}

impl PartialEq for Tracked {
    fn eq(&self, other: &Self) -> bool {
        self.val == other.val
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.state != LIVE {
            // Freed memory or a second drop: count it, never panic (this may run on the
            // background reclaimer's thread).
            BAD_DROPS.fetch_add(1, Ordering::SeqCst);
            return;
        }
        self.state = DEAD;
        if self.slow {
            let t = std::time::Instant::now();
            while t.elapsed() < SLOW_DROP {
                std::hint::spin_loop();
            }
        }
        let fresh = DROPPED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(self.id);
        if !fresh {
            BAD_DROPS.fetch_add(1, Ordering::SeqCst);
        }
        ALIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

fn alive() -> isize {
    ALIVE.load(Ordering::SeqCst)
}

fn bad_drops() -> usize {
    BAD_DROPS.load(Ordering::SeqCst)
}

// ---------------------------------------------------------------------------------------------
// Helpers.

const KEYS: u64 = 100_000;
/// How much more than an empty map a map may hold once the background reclaimer is done.
const SLACK: isize = 64 * 1024;
/// Time left to the background reclaimer (it frees within about two 10 ms ticks).
const QUIET: Duration = Duration::from_millis(100);

/// Lets the epoch collector run whatever earlier work deferred (so that it is not counted
/// against, or credited to, the next measurement).
fn settle() {
    let m: SyncMap<u8, u8> = SyncMap::new();
    for _ in 0..8 {
        m.reclaim();
    }
}

/// A map of `KEYS` keys, every key read once (so that the dirty tier is promoted).
fn filled() -> SyncMap<u64, u64> {
    let map = SyncMap::new();
    for i in 0..KEYS {
        map.insert(i, i);
    }
    for i in 0..KEYS {
        assert_eq!(map.get_cloned(&i), Some(i));
    }
    map
}

/// Warms up (this thread's epoch registration, the background reclaimer and its epoch bags,
/// which are process-level and stay), then measures an empty map's heap footprint the way the
/// scenarios measure theirs: created, then left alone for `QUIET`.
fn warm_up_and_measure_empty() -> isize {
    {
        let map = filled();
        map.clear();
        std::thread::sleep(QUIET);
        for i in 0..KEYS {
            map.insert(i, i);
        }
        for i in 0..KEYS {
            map.remove(&i);
        }
        std::thread::sleep(QUIET);
    }
    settle();
    let base = heap();
    let map: SyncMap<u64, u64> = SyncMap::new();
    std::thread::sleep(QUIET);
    let empty = heap() - base;
    drop(map);
    settle();
    empty
}

/// A tiny xorshift generator (deterministic per thread, no allocation).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

// ---------------------------------------------------------------------------------------------
// Tests.

/// (a) After `clear()` of a 100,000-key map (every key read once before), and 100 ms with no
/// call on the map at all, the heap the map holds (relative to before it was created) is within
/// 64 KiB of an empty map's: the background reclaimer freed the old tables and entries.
#[test]
fn clear_then_idle_gives_the_heap_back() {
    let _serial = serial();
    let empty = warm_up_and_measure_empty();

    let base = heap();
    let map = filled();
    let full = heap() - base;
    map.clear();
    std::thread::sleep(QUIET);
    let held = heap() - base;
    let status = tiermap::memory::background_reclaim_status();
    let stats = map.stats();
    println!(
        "(a) clear: full={full} B, held {} ms after clear={held} B, empty map={empty} B, \
         reclaimer {status:?}; {stats}",
        QUIET.as_millis()
    );
    assert!(
        held <= empty + SLACK,
        "(a) {held} bytes held {QUIET:?} after clear() with no call on the map (full: {full}), \
         an empty map holds {empty}; {stats}; reclaimer {status:?}"
    );
    drop(map);
}

/// (b) After removing all 100,000 keys of a map (every key read once before), then only reads
/// (2,048 `get`s of absent keys) and 100 ms with no call, the heap the map holds is within
/// 64 KiB of an empty map's.
#[test]
fn remove_all_then_reads_gives_the_heap_back() {
    let _serial = serial();
    let empty = warm_up_and_measure_empty();

    let base = heap();
    let map = filled();
    let full = heap() - base;
    for i in 0..KEYS {
        assert!(map.remove(&i).is_some());
    }
    let after_removes = heap() - base;
    for i in 0..2_048u64 {
        assert!(map.get(&(KEYS + i)).is_none());
    }
    std::thread::sleep(QUIET);
    let held = heap() - base;
    let status = tiermap::memory::background_reclaim_status();
    let stats = map.stats();
    println!(
        "(b) remove all: full={full} B, right after the removes={after_removes} B, after reads \
         and {} ms={held} B, empty map={empty} B, reclaimer {status:?}; {stats}",
        QUIET.as_millis()
    );
    assert!(
        held <= empty + SLACK,
        "(b) {held} bytes held after removing every key, reads only and {QUIET:?} (full: \
         {full}), an empty map holds {empty}; {stats}; reclaimer {status:?}"
    );
    drop(map);
}

/// (c) Single thread: one long-lived key, then 100,000 rounds of `insert(i, v)`, `remove(&i)`,
/// `get_cloned(&long_lived)`; after `drop(map)` no counted value is alive and none was dropped
/// twice (or dropped from freed memory).
#[test]
fn drop_counting_single_thread() {
    let _serial = serial();
    let alive0 = alive();
    let bad0 = bad_drops();
    let map: SyncMap<u64, Tracked> = SyncMap::new();
    const LONG: u64 = u64::MAX;
    map.insert(LONG, Tracked::new(7));
    for i in 0..KEYS {
        assert!(map.insert(i, Tracked::new(i)).is_none());
        assert_eq!(map.remove(&i).map(|v| v.val), Some(i));
        assert_eq!(map.get_cloned(&LONG).map(|v| v.val), Some(7));
    }
    let before_drop = alive() - alive0;
    drop(map);
    println!(
        "(c) alive before drop: {before_drop}, after: {}",
        alive() - alive0
    );
    assert_eq!(alive(), alive0, "(c) values leaked after drop(map)");
    assert_eq!(bad_drops(), bad0, "(c) values dropped twice");
}

/// (d) Four threads mix `insert`, `remove`, `get_or_insert`, `compare_exchange`, `remove_if`,
/// `retain`, `clear` and reads on 64 shared keys with counted values, 20,000 operations each;
/// after joining and dropping the map no counted value is alive and none was dropped twice.
#[test]
fn drop_counting_multi_thread() {
    let _serial = serial();
    let alive0 = alive();
    let bad0 = bad_drops();
    const THREADS: u64 = 4;
    const OPS: u64 = 20_000;
    const SHARED_KEYS: u64 = 64;
    let map: SyncMap<u64, Tracked> = SyncMap::new();
    let counts = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let map = &map;
                s.spawn(move || {
                    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (t + 1).wrapping_mul(0xA24B_AED4));
                    let mut ops = [0u64; 9];
                    for _ in 0..OPS {
                        let r = rng.next();
                        let k = r % SHARED_KEYS;
                        let v = (r >> 8) % 8;
                        let op = (r >> 16) % 1000;
                        match op {
                            0..=299 => {
                                ops[0] += 1;
                                drop(map.insert(k, Tracked::new(v)));
                            }
                            300..=499 => {
                                ops[1] += 1;
                                drop(map.remove(&k));
                            }
                            500..=649 => {
                                ops[2] += 1;
                                drop(map.get_or_insert(k, Tracked::new(v)));
                            }
                            650..=799 => {
                                ops[3] += 1;
                                if let Some(cur) = map.get_cloned(&k) {
                                    // Ok or Err: the `Ref`s and the rejected value are dropped.
                                    drop(map.compare_exchange(&k, &cur, Tracked::new(v)));
                                }
                            }
                            800..=899 => {
                                ops[4] += 1;
                                drop(map.remove_if(&k, |x| x.val % 2 == 0));
                            }
                            900..=994 => {
                                ops[5] += 1;
                                if let Some(x) = map.get(&k) {
                                    assert_eq!(x.state, LIVE, "a reader saw a dropped value");
                                }
                            }
                            995..=997 => {
                                ops[6] += 1;
                                map.retain(|_, x| x.val < 6);
                            }
                            998 => {
                                ops[7] += 1;
                                map.clear();
                            }
                            _ => {
                                ops[8] += 1;
                                map.for_each(|_, x| assert_eq!(x.state, LIVE));
                            }
                        }
                    }
                    ops
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker panicked"))
            .collect::<Vec<_>>()
    });
    let len = map.len();
    let before_drop = alive() - alive0;
    drop(map);
    println!(
        "(d) ops per thread [insert, remove, get_or_insert, compare_exchange, remove_if, get, \
         retain, clear, for_each]: {counts:?}; len={len}, alive before drop: {before_drop}, \
         after: {}",
        alive() - alive0
    );
    assert_eq!(alive(), alive0, "(d) values leaked after drop(map)");
    assert_eq!(bad_drops(), bad0, "(d) values dropped twice");
}

/// (e) With the background reclaimer running (the default), 100 ms after a burst of 10,000
/// removes of counted values, with no call on the map in between, no removed value is still
/// alive: only the 100 values still in the map are.
#[test]
fn removed_values_do_not_outlive_a_quiet_100ms() {
    let _serial = serial();
    const REMOVED: u64 = 10_000;
    const KEPT: u64 = 100;
    let alive0 = alive();
    let bad0 = bad_drops();
    let map: SyncMap<u64, Tracked> = SyncMap::new();
    for i in 0..REMOVED + KEPT {
        map.insert(i, Tracked::new(i));
    }
    for i in 0..REMOVED + KEPT {
        assert!(map.get(&i).is_some());
    }
    assert_eq!(alive() - alive0, (REMOVED + KEPT) as isize);
    for i in 0..REMOVED {
        assert!(map.remove(&i).is_some());
    }
    let right_after = alive() - alive0 - KEPT as isize;
    std::thread::sleep(QUIET);
    let still = alive() - alive0 - KEPT as isize;
    let status = tiermap::memory::background_reclaim_status();
    let stats = map.stats();
    println!(
        "(e) removed values alive right after the burst: {right_after}, after {} ms: {still}; \
         reclaimer {status:?}; {stats}",
        QUIET.as_millis()
    );
    assert!(
        status.running,
        "(e) the background reclaimer is not running: {status:?}"
    );
    assert_eq!(
        still, 0,
        "(e) {still} removed values still alive {QUIET:?} after the burst; reclaimer \
         {status:?}; {stats}"
    );
    drop(map);
    assert_eq!(alive(), alive0, "(e) values leaked after drop(map)");
    assert_eq!(bad_drops(), bad0, "(e) values dropped twice");
}

/// (f) Operations on an empty map allocate nothing on the calling thread: `clear()` of a new
/// empty map, ten times; and, after one warm-up pin of this thread, `range`, `for_each` and
/// `pin().iter()`.
#[test]
fn empty_map_operations_do_not_allocate() {
    let _serial = serial();
    // Warm-up: this thread's epoch registration (crossbeam allocates it on the first pin).
    {
        let warm: SyncMap<u64, u64> = SyncMap::new();
        drop(warm.pin());
    }
    let map: SyncMap<u64, u64> = SyncMap::new();
    let before = thread_allocs();
    for _ in 0..10 {
        map.clear();
    }
    let clears = thread_allocs() - before;

    let _ = map.pin(); // the warm-up pin on this map
    let before = thread_allocs();
    let mut seen = 0;
    map.range(|_, _| {
        seen += 1;
        true
    });
    map.for_each(|_, _| seen += 1);
    seen += map.pin().iter().count();
    let iterations = thread_allocs() - before;
    println!(
        "(f) allocations: 10 clear() of an empty map: {clears}; range + for_each + pin().iter(): \
         {iterations} (process-wide so far: {})",
        ALLOCS.load(Ordering::Relaxed)
    );
    assert_eq!(seen, 0);
    assert_eq!(clears, 0, "(f) clear() of an empty map allocated");
    assert_eq!(iterations, 0, "(f) iterating an empty map allocated");
    assert!(map.is_empty());
}

/// (g) `drop(map)` returns only once every value the map held or retired is dropped, even when
/// the background reclaimer is dropping a batch of that map's removed values at that moment:
/// 1,024 keys, 64 of them (one batch) with a slow `Drop` (100 µs) removed; as soon as the
/// reclaimer has dropped the first of them, the map is dropped, and right after `drop` returns
/// no counted value may be alive. Ten rounds.
#[test]
fn drop_waits_for_values_the_reclaimer_is_dropping() {
    let _serial = serial();
    const KEYS: u64 = 1_024;
    const SLOW: u64 = 64;
    let alive0 = alive();
    let bad0 = bad_drops();
    let mut raced = 0;
    let mut late = Vec::new();
    for round in 0..10 {
        let map: SyncMap<u64, Tracked> = SyncMap::new();
        for i in 0..KEYS {
            let v = if i < SLOW {
                Tracked::slow(i)
            } else {
                Tracked::new(i)
            };
            map.insert(i, v);
        }
        for i in 0..KEYS {
            assert!(map.get(&i).is_some());
        }
        // No compaction is due (64 deleted of 1,024): only the reclaimer frees these.
        for i in 0..SLOW {
            assert!(map.remove(&i).is_some());
        }
        let start = std::time::Instant::now();
        while alive() - alive0 == KEYS as isize && start.elapsed() < Duration::from_secs(1) {
            std::hint::spin_loop();
        }
        if alive() - alive0 < KEYS as isize {
            raced += 1; // the reclaimer is dropping the batch now
        }
        drop(map);
        let left = alive() - alive0;
        if left != 0 {
            late.push((round, left));
            // Let the other thread finish before the next round.
            let wait = std::time::Instant::now();
            while alive() != alive0 && wait.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    println!(
        "(g) rounds where the reclaimer was dropping the batch when the map was dropped: \
         {raced}/10; values still alive right after drop(map) returned (round, count): {late:?}"
    );
    assert!(
        late.is_empty(),
        "(g) drop(map) returned while values of the map were still alive (round, count): {late:?}"
    );
    assert_eq!(alive(), alive0);
    assert_eq!(bad_drops(), bad0, "(g) values dropped twice");
}
