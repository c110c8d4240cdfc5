//! Resident memory (the process's RSS, not the allocator's books) comes back to the operating
//! system after a map lets go of its entries: after `clear_and_release`, after `drop`, and,
//! with no further call on the map, after removing every key (the background reclaimer frees
//! the retired tables and `malloc_trim`s).
//!
//! Its own test binary without the test harness (`harness = false` in Cargo.toml): `main` runs
//! the phases one after the other **on the process's main thread**, as the program of issue 12
//! does, so that no other test allocates while RSS is measured. Linux only
//! (`/proc/self/status`).
//!
//! A last phase (D) repeats C on a worker thread and only prints its figure: glibc gives the top
//! of a worker thread's arena back only from `free`, and only once it exceeds the trim threshold,
//! which glibc raises up to 64 MiB after a large mmapped block (here the std `HashMap`'s table)
//! is freed; `malloc_trim` trims the main arena's top only. There up to about a quarter of the
//! map's peak can stay resident (measured 73.7% returned). `docs/DESIGN.md`, "Giving memory back
//! to the operating system", has the details; entries allocated in large mapped blocks (the
//! engine issue) are the fix.

use std::time::{Duration, Instant};

use tiermap::SyncMap;

/// Entries per fill.
const N: u64 = 1_000_000;
/// Share of a fill's RSS growth that must come back.
const RETURNED: f64 = 0.90;
/// How long the background reclaimer may take to give the memory of removed keys back.
const DEADLINE: Duration = Duration::from_secs(1);
/// How long a map left idle after its fill may keep its dirty tier (the idle watch's second
/// of quiet, and its steps; `raw::idle`).
const IDLE_DEADLINE: Duration = Duration::from_secs(5);
/// RSS poll interval while waiting for the background reclaimer.
const POLL: Duration = Duration::from_millis(10);

/// VmRSS of this process, in bytes.
#[cfg(target_os = "linux")]
fn rss() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line in /proc/self/status");
    let kib: i64 = line
        .split_whitespace()
        .nth(1)
        .expect("VmRSS value")
        .parse()
        .expect("VmRSS is a number of kB");
    kib * 1024
}

/// Not available: the test returns before measuring anything.
#[cfg(not(target_os = "linux"))]
fn rss() -> i64 {
    unreachable!("RSS is read from /proc/self/status (Linux only)")
}

fn mib(bytes: i64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// One measured fill-and-release.
struct Row {
    name: &'static str,
    baseline: i64,
    peak: i64,
    after: i64,
    took: Option<Duration>,
}

impl Row {
    fn growth(&self) -> i64 {
        self.peak - self.baseline
    }
    /// Share of the growth that came back.
    fn returned(&self) -> f64 {
        (self.peak - self.after) as f64 / self.growth().max(1) as f64
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<44} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "phase", "baseline", "peak", "after", "growth", "returned", "took"
    );
    for r in rows {
        println!(
            "{:<44} {:>7.1}MiB {:>7.1}MiB {:>7.1}MiB {:>7.1}MiB {:>8.1}% {:>9}",
            r.name,
            mib(r.baseline),
            mib(r.peak),
            mib(r.after),
            mib(r.growth()),
            100.0 * r.returned(),
            r.took.map_or_else(|| "-".into(), |d| format!("{d:.1?}")),
        )
    }
}

/// The baseline of a phase: RSS with the allocator's free pages given back first (so that a
/// phase does not reuse free pages an earlier one left resident, which would hide its growth).
fn baseline() -> i64 {
    tiermap::memory::return_to_os();
    rss()
}

/// A `SyncMap` of `N` entries, every key read once (so that the dirty tier is promoted and the
/// read tier holds them all).
fn filled() -> SyncMap<u64, u64> {
    let map = SyncMap::new();
    for i in 0..N {
        map.insert(i, i);
    }
    let mut sum = 0u64;
    for i in 0..N {
        sum = sum.wrapping_add(map.get_cloned(&i).expect("present"));
    }
    assert_eq!(sum, (0..N).sum::<u64>());
    assert_eq!(map.len(), N as usize);
    map
}

/// Checks, in phases run one after the other, that a 1M-entry `SyncMap<u64, u64>` gives at
/// least 90% of its RSS growth back to the operating system:
/// * A: right after `clear_and_release()` returns;
/// * B: right after the map is dropped;
/// * C: after removing every key, with no further call on the map, within 1 s (the background
///   reclaimer's work), and the map then has no retired bytes left;
///
/// and E: a fill left idle, with no call at all, has every shard's dirty tier promoted within
/// 5 s (the idle watch), and at least 90% of the bytes the map stopped holding leave the RSS.
///
/// `std::collections::HashMap` and `dashmap::DashMap` fills are dropped first, for comparison
/// (printed only, no assertion). Run with `--nocapture` for the table.
fn main() {
    if !cfg!(target_os = "linux") {
        println!("rss: skipped: RSS is read from /proc/self/status, which only Linux has");
        return;
    }
    run();
    println!("rss: passed");
}

fn run() {
    let started = Instant::now();
    let mut rows = Vec::new();

    // For comparison: std's HashMap and DashMap, filled and dropped. They also leave the
    // allocator as a real process would: freeing their tables (glibc mmaps blocks over 128 KiB)
    // raises glibc's dynamic mmap threshold and, with it, the trim threshold (to up to 64 MiB),
    // so the phases below cannot count on `free` shrinking a heap by itself.
    {
        let base = baseline();
        let mut m = std::collections::HashMap::new();
        for i in 0..N {
            m.insert(i, i);
        }
        let peak = rss();
        drop(m);
        rows.push(Row {
            name: "std HashMap: drop (comparison)",
            baseline: base,
            peak,
            after: rss(),
            took: None,
        });
    }
    {
        let base = baseline();
        let m = dashmap::DashMap::new();
        for i in 0..N {
            m.insert(i, i);
        }
        let peak = rss();
        drop(m);
        rows.push(Row {
            name: "DashMap: drop (comparison)",
            baseline: base,
            peak,
            after: rss(),
            took: None,
        });
    }

    // Phase A: clear_and_release.
    let base = baseline();
    let map = filled();
    let peak = rss();
    let released = map.clear_and_release();
    let after = rss();
    let stats = map.stats();
    rows.push(Row {
        name: "A SyncMap: clear_and_release()",
        baseline: base,
        peak,
        after,
        took: None,
    });
    println!("A: {released}; {stats}");
    assert_eq!(released.pending_bytes, 0, "A: {released}");
    drop(map);

    // Phase B: drop.
    let base = baseline();
    let map = filled();
    let peak = rss();
    drop(map);
    let after = rss();
    rows.push(Row {
        name: "B SyncMap: drop(map)",
        baseline: base,
        peak,
        after,
        took: None,
    });

    // Phase C: remove every key, then no call on the map at all.
    let base = baseline();
    let map = filled();
    let peak = rss();
    let removes_began = Instant::now();
    for i in 0..N {
        assert!(map.remove(&i).is_some());
    }
    let removed = Instant::now();
    let removes_took = removed - removes_began;
    let target = peak - (RETURNED * (peak - base) as f64) as i64;
    let mut took = None;
    let mut after = rss();
    let mut samples = 0;
    loop {
        samples += 1;
        if after <= target {
            took = Some(removed.elapsed());
            break;
        }
        if removed.elapsed() >= DEADLINE {
            break;
        }
        std::thread::sleep(POLL);
        after = rss();
    }
    // The end of the phase: the whole second after the last remove, still without calls.
    if let Some(left) = DEADLINE.checked_sub(removed.elapsed()) {
        std::thread::sleep(left);
    }
    let after_deadline = rss();
    let stats = map.stats();
    rows.push(Row {
        name: "C SyncMap: remove all, no calls (≤ 1 s)",
        baseline: base,
        peak,
        after,
        took,
    });
    println!(
        "C: {N} removes took {removes_took:.1?}; RSS {:.1} MiB after {samples} polls, {:.1} MiB \
         1 s after the last remove; {stats}",
        mib(after),
        mib(after_deadline)
    );
    let reclaimer = tiermap::memory::background_reclaim_status();
    println!("reclaimer: {reclaimer:?}");
    drop(map);

    // Phase E: a fill left idle, no calls at all. The background reclaimer's idle watch
    // promotes each shard's dirty tier once its lock has been left alone for a second, and the
    // read tables it retires go back to the operating system.
    let base = baseline();
    let map = filled();
    let full = map.stats();
    let peak = rss();
    let filled_at = Instant::now();
    let mut idle = full;
    while filled_at.elapsed() < IDLE_DEADLINE {
        std::thread::sleep(POLL);
        idle = map.stats();
        if idle.dirty_capacity == 0 && idle.retired_bytes == 0 {
            break;
        }
    }
    let promoted = filled_at.elapsed();
    // The trim follows the free at the reclaimer's next tick: wait for RSS to fall by what the
    // map stopped holding (at most another second).
    let idle_freed = full.held_bytes as i64 - idle.held_bytes as i64;
    let target = peak - (RETURNED * idle_freed as f64) as i64;
    let mut after = rss();
    while after > target && filled_at.elapsed() < promoted + DEADLINE {
        std::thread::sleep(POLL);
        after = rss();
    }
    rows.push(Row {
        name: "E SyncMap: fill, then idle (not a release)",
        baseline: base,
        peak,
        after,
        took: Some(promoted),
    });
    println!(
        "E: held {:.1} -> {:.1} MiB after {promoted:.2?} ({:.1} -> {:.1} B/entry); RSS growth \
         {:.1} -> {:.1} MiB; full {full}; idle {idle}",
        mib(full.held_bytes as i64),
        mib(idle.held_bytes as i64),
        full.held_bytes as f64 / N as f64,
        idle.held_bytes as f64 / N as f64,
        mib(peak - base),
        mib(after - base),
    );
    assert_eq!(
        idle.dirty_capacity, 0,
        "E: a shard still has its dirty tier {IDLE_DEADLINE:?} after the fill: {idle}"
    );
    // What the promotions retired (the older read tables) comes back to the operating system,
    // not only to the allocator's free lists.
    assert!(
        idle_freed > 0 && (peak - after) as f64 >= RETURNED * idle_freed as f64,
        "E: the idle promotions freed {:.1} MiB, RSS fell {:.1} MiB (want >= {:.0}% of it)",
        mib(idle_freed),
        mib(peak - after),
        100.0 * RETURNED
    );
    drop(map);

    // Phase D (printed, not asserted; see the module docs): C on a worker thread.
    let (base, peak, after) = std::thread::spawn(|| {
        let base = baseline();
        let map = filled();
        let peak = rss();
        for i in 0..N {
            assert!(map.remove(&i).is_some());
        }
        std::thread::sleep(DEADLINE);
        let after = rss();
        (base, peak, after)
    })
    .join()
    .expect("phase D");
    rows.push(Row {
        name: "D (not asserted) C on a worker thread",
        baseline: base,
        peak,
        after,
        took: None,
    });

    print_table(&rows);
    println!("total {:.2?}", started.elapsed());

    for r in rows.iter().filter(|r| r.name.starts_with(['A', 'B', 'C'])) {
        assert!(
            r.growth() > 0,
            "{}: the fill did not grow RSS ({} -> {})",
            r.name,
            r.baseline,
            r.peak
        );
        assert!(
            r.returned() >= RETURNED,
            "{}: RSS gave back {:.1}% of the {:.1} MiB growth (baseline {:.1} MiB, peak {:.1} \
             MiB, after {:.1} MiB), want >= {:.0}%",
            r.name,
            100.0 * r.returned(),
            mib(r.growth()),
            mib(r.baseline),
            mib(r.peak),
            mib(r.after),
            100.0 * RETURNED
        );
    }
    assert_eq!(
        stats.retired_bytes, 0,
        "C: retired bytes left 1 s after the last remove: {stats}"
    );
}
