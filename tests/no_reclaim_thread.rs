//! With the background reclaimer turned off (`tiermap::memory::set_background_reclaim(false)`
//! before any map retires anything): no thread is ever started, `reclaim()` and `drop` still
//! free everything, and the removed values a map keeps alive are bounded without it.
//!
//! Its own test binary with one test: the setting is process-wide, and the live-value counter
//! is global.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicIsize, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Mutex;

use tiermap::SyncMap;

/// Live `Tracked` values.
static ALIVE: AtomicIsize = AtomicIsize::new(0);
/// Second drops, or drops of memory that no longer holds a live value.
static BAD_DROPS: AtomicUsize = AtomicUsize::new(0);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static DROPPED: Mutex<BTreeSet<u64>> = Mutex::new(BTreeSet::new());

const LIVE: u64 = 0x11FE_11FE_11FE_11FE;
const DEAD: u64 = 0xDEAD_DEAD_DEAD_DEAD;

/// A value that counts its live instances; a unique id per instance detects double drops.
struct Tracked {
    val: u64,
    id: u64,
    state: u64,
}

impl Tracked {
    fn new(val: u64) -> Self {
        ALIVE.fetch_add(1, SeqCst);
        Tracked {
            val,
            id: NEXT_ID.fetch_add(1, SeqCst),
            state: LIVE,
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.state != LIVE {
            BAD_DROPS.fetch_add(1, SeqCst);
            return;
        }
        self.state = DEAD;
        if !DROPPED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(self.id)
        {
            BAD_DROPS.fetch_add(1, SeqCst);
        }
        ALIVE.fetch_sub(1, SeqCst);
    }
}

fn alive() -> isize {
    ALIVE.load(SeqCst)
}

/// Threads of this process named `tiermap-reclaim` (Linux: `/proc/self/task/*/comm`; `None`
/// elsewhere).
fn reclaim_threads() -> Option<usize> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    Some(
        tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.trim_end() == "tiermap-reclaim")
            .count(),
    )
}

/// The most removed values a map may keep alive after a burst of lock-free removes (or
/// replacements) with no further call, without the background reclaimer.
///
/// Derived from `src/raw/batch.rs`, `src/raw/grave.rs` and `src/raw/mod.rs`:
/// * the open batch holds at most `BATCH - 1 = 63` values (it is sealed only when full, since no
///   thread seals partial batches);
/// * with the reclaimer off, the remover that fills a batch seals it and defers it at once
///   (`retire_value`: `!background::running()`), and the deferral flushes, which runs a
///   collection (one epoch advance, then the expired bags): a sealed batch's grace period is
///   over by the next seal, so at any step at most the last one or two sealed batches (128
///   values) are still waiting for it;
/// * ready batches are freed by the map's next step (`finish` -> `service` -> `drain`, at
///   least `BUDGET` = 64 units, doubled per further ready item): after a remove-all burst the
///   last step comes with the last compaction, and a compaction starts once deleted entries
///   exceed `live / 2 + 64` (`needs_compaction`), so at most 64 values are removed after it;
/// * one more batch (64) of slack for a step whose budget a small table corpse took.
///
/// 63 + 128 + 64 + 64 = 319. The module docs (`tiermap::memory`) promise the same shape for
/// every write pattern: "free it a bounded step per later write of the map".
const BOUND: isize = 63 + 2 * 64 + 64 + 64;

/// A burst of `n` operations on a map (see the scenarios below).
type Burst = fn(&SyncMap<u64, Tracked>, u64);

/// With `set_background_reclaim(false)` called first: maps of plain and counted values are
/// filled, read, removed, replaced, cleared and dropped, and no `tiermap-reclaim` thread is
/// ever started (`starts == 0`, `!running`, no such thread in `/proc`); `reclaim()` frees
/// everything (returns 0, `retired_bytes == 0`, only live values stay alive); `drop` drops every
/// counted value exactly once; and after a burst of N removes (or N lock-free replacements) of
/// counted values with no further call, at most `BOUND` (319, derived above) removed values are
/// still alive: for removing every key, removing a quarter of the keys, and replacing values of
/// existing keys.
#[test]
fn without_the_background_thread() {
    let was = tiermap::memory::set_background_reclaim(false);
    println!("background reclaim was {was}, now off");
    let bad0 = BAD_DROPS.load(SeqCst);
    let mut failures: Vec<String> = Vec::new();

    // Exercise plain maps: retirements of every kind (values are inline here: tables only).
    {
        let map: SyncMap<u64, u64> = SyncMap::new();
        for i in 0..20_000 {
            map.insert(i, i);
        }
        for i in 0..20_000 {
            assert_eq!(map.get_cloned(&i), Some(i));
        }
        for i in 0..15_000 {
            map.remove(&i);
        }
        map.clear();
        for i in 0..5_000 {
            map.insert(i, i + 1);
        }
        map.shrink_to_fit();
        drop(map);
    }

    // reclaim() frees everything: removed values and the cleared map.
    {
        const N: u64 = 10_000;
        let a0 = alive();
        let map: SyncMap<u64, Tracked> = SyncMap::new();
        for i in 0..N {
            map.insert(i, Tracked::new(i));
        }
        for i in 0..N {
            assert_eq!(map.get(&i).map(|v| v.val), Some(i));
        }
        for i in 0..N / 2 {
            assert!(map.remove(&i).is_some());
        }
        for i in N / 2..N {
            assert_eq!(map.insert(i, Tracked::new(i + 1)).map(|v| v.val), Some(i));
        }
        let before = alive() - a0;
        let pending = map.reclaim();
        let stats = map.stats();
        println!(
            "reclaim after {} removes and {} replacements: values alive {before} -> {}, \
             reclaim() = {pending}; {stats}",
            N / 2,
            N / 2,
            alive() - a0
        );
        assert_eq!(pending, 0, "reclaim() left bytes pending: {stats}");
        assert_eq!(
            stats.retired_bytes, 0,
            "retired bytes after reclaim(): {stats}"
        );
        assert_eq!(
            alive() - a0,
            (N / 2) as isize,
            "only the live values stay alive"
        );

        map.clear();
        let pending = map.reclaim();
        let stats = map.stats();
        println!(
            "reclaim after clear: {pending}; values alive {}; {stats}",
            alive() - a0
        );
        assert_eq!(
            pending, 0,
            "reclaim() after clear left bytes pending: {stats}"
        );
        assert_eq!(
            stats.retired_bytes, 0,
            "retired bytes after clear + reclaim(): {stats}"
        );
        assert_eq!(alive(), a0, "values alive after clear + reclaim()");
        drop(map);
    }

    // drop() drops every counted value, removed, replaced or live, exactly once.
    {
        const N: u64 = 10_000;
        let a0 = alive();
        let map: SyncMap<u64, Tracked> = SyncMap::new();
        for i in 0..N {
            map.insert(i, Tracked::new(i));
        }
        for i in 0..N {
            if i % 3 == 0 {
                map.remove(&i);
            } else if i % 3 == 1 {
                map.insert(i, Tracked::new(0));
            }
        }
        map.clear();
        for i in 0..N / 10 {
            map.insert(i, Tracked::new(i));
            map.insert(i, Tracked::new(i));
        }
        let before = alive() - a0;
        drop(map);
        println!("drop: values alive {before} -> {}", alive() - a0);
        assert_eq!(alive(), a0, "values leaked by drop(map)");
    }

    // The bound while alive, without the thread: a burst, then no call on the map at all.
    let scenarios: [(&str, u64, u64, Burst); 3] = [
        // Remove every key.
        ("remove all 10,000 keys", 10_000, 10_000, |map, n| {
            for i in 0..n {
                assert!(map.remove(&i).is_some());
            }
        }),
        // Remove a quarter of 40,000 keys (no compaction is due: deleted < live / 2).
        ("remove 10,000 of 40,000 keys", 40_000, 10_000, |map, n| {
            for i in 0..n {
                assert!(map.remove(&i).is_some());
            }
        }),
        // Replace the values of 1,000 existing keys, 10 times each (lock-free writes).
        (
            "replace 10,000 values of 1,000 keys",
            1_000,
            10_000,
            |map, n| {
                for i in 0..n {
                    assert!(map.insert(i % 1_000, Tracked::new(i)).is_some());
                }
            },
        ),
    ];
    for (name, keys, burst, run) in scenarios {
        let base = alive();
        let map: SyncMap<u64, Tracked> = SyncMap::new();
        for i in 0..keys {
            map.insert(i, Tracked::new(i));
        }
        for i in 0..keys {
            assert!(map.get(&i).is_some());
        }
        run(&map, burst);
        // Values that left the map (removed or replaced) and are still alive: every value this
        // map ever held that is alive and not in it.
        let gone_alive = alive() - base - map.len() as isize;
        let stats = map.stats();
        println!(
            "bound without the thread, {name}: {gone_alive} of {burst} removed values still alive \
             (bound {BOUND}); {stats}"
        );
        if gone_alive > BOUND {
            failures.push(format!(
                "{name}: {gone_alive} of {burst} removed values still alive after the burst with \
                 no further call, bound {BOUND}; {stats}"
            ));
        }
        drop(map);
        assert_eq!(alive(), base, "{name}: values leaked by drop(map)");
    }

    let status = tiermap::memory::background_reclaim_status();
    let threads = reclaim_threads();
    println!("reclaimer: {status:?}; tiermap-reclaim threads: {threads:?}");
    assert_eq!(
        status.starts, 0,
        "a reclaimer thread was started: {status:?}"
    );
    assert!(!status.running, "a reclaimer thread is running: {status:?}");
    if let Some(n) = threads {
        assert_eq!(n, 0, "a tiermap-reclaim thread exists");
    }
    assert_eq!(alive(), 0, "values leaked");
    assert_eq!(BAD_DROPS.load(SeqCst), bad0, "values dropped twice");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
