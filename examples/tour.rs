//! A tour of tiermap's main job: a map of 1M entries whose memory follows its live entries.
//!
//! Run with `cargo run --release --example tour`. It builds a map of 1,000,000 `u64 -> u64`
//! entries, inserts one new key after the read-only phase (the operation that makes Go copy the
//! whole map), deletes half and then all of the keys, clears and releases, and prints after each
//! step what the map holds according to `stats()`, to a counting allocator and to the
//! operating system (the process's resident memory), beside what Go's `sync.Map` design would
//! hold at that point. No step calls `reclaim()`: between steps the tour only waits 100 ms, and
//! what the map retired comes back on its own (the background reclaimer, `tiermap::memory`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tiermap::SyncMap;

struct Counting;
static CURRENT: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        CURRENT.fetch_add(l.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        CURRENT.fetch_add(l.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        CURRENT.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        CURRENT.fetch_add(n, Ordering::Relaxed);
        CURRENT.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Go's map of `any -> *entry` costs about 57 bytes per key per table (the first new key after a
/// read-only phase at 1M keys allocates 55 MiB to copy the read map), plus 8 bytes for the entry
/// and 8 for the boxed value.
const GO_TABLE_BYTES_PER_KEY: f64 = 55.0 * 1024.0 * 1024.0 / 1e6;
const GO_ENTRY_BYTES: f64 = 16.0;

fn mib(b: f64) -> String {
    format!("{:.1} MiB", b / (1024.0 * 1024.0))
}

/// The process's resident memory (Linux; 0 elsewhere).
fn rss() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib * 1024.0)
}

/// Waits with no call on the map: what it retired is freed by the background reclaimer.
fn idle() {
    std::thread::sleep(Duration::from_millis(100));
}

fn main() {
    const N: u64 = 1_000_000;
    let base = CURRENT.load(Ordering::Relaxed);
    let heap = || CURRENT.load(Ordering::Relaxed).saturating_sub(base) as f64;
    let map: SyncMap<u64, u64> = SyncMap::new();
    println!("process RSS at start: {}", mib(rss()));
    println!();

    println!(
        "| step | live keys | tiermap stats().held_bytes | retired, not yet freed | \
         tiermap heap (allocator) | process RSS | deleted held | Go sync.Map would hold |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let row = |step: &str, go: &str| {
        let s = map.stats();
        println!(
            "| {step} | {} | {} | {} | {} | {} | {} | {go} |",
            s.len,
            mib(s.held_bytes as f64),
            mib(s.retired_bytes as f64),
            mib(heap()),
            mib(rss()),
            s.deleted
        );
    };

    for i in 0..N {
        map.insert(i, i);
    }
    let _ = map.pin().iter().count(); // a Range: promotes, as Go's Range does
    idle();
    let go_read = N as f64 * (GO_TABLE_BYTES_PER_KEY + GO_ENTRY_BYTES);
    row(
        "1. insert 1M keys, then a read-only phase",
        &format!("{} (read map)", mib(go_read)),
    );

    let t = Instant::now();
    map.insert(N, N);
    let first = t.elapsed();
    row(
        &format!(
            "2. first new key after the read-only phase: {:.1} us",
            first.as_secs_f64() * 1e6
        ),
        &format!(
            "{} (copies read into a new dirty map: ~180 ms)",
            mib(go_read + N as f64 * GO_TABLE_BYTES_PER_KEY)
        ),
    );

    for i in 0..N / 2 {
        map.remove(&i);
    }
    idle();
    row(
        "3. remove half the keys",
        &format!(
            "{} (deleted entries stay until promoted away)",
            mib(go_read + N as f64 * GO_TABLE_BYTES_PER_KEY)
        ),
    );

    for i in N / 2..=N {
        map.remove(&i);
    }
    idle();
    row(
        "4. remove the rest (no new key afterwards)",
        &format!(
            "{} (no new key: never freed)",
            mib(go_read + N as f64 * GO_TABLE_BYTES_PER_KEY)
        ),
    );

    for i in 0..N {
        map.insert(i, i);
    }
    map.clear();
    row("5a. refill 1M, then clear() (old tables retired)", "");
    // Polls the allocator's books (not the map: no call on it) until the old tables are freed.
    let cleared = Instant::now();
    let mut back = None;
    while cleared.elapsed() < Duration::from_secs(1) {
        if heap() < 64.0 * 1024.0 {
            back = Some(cleared.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let back = back.map_or("not within 1 s".into(), |t| {
        format!("{:.0} ms", t.as_secs_f64() * 1e3)
    });
    idle();
    row(
        &format!(
            "5b. then 100 ms with no call on the map (the background reclaimer freed the old \
             tables {back} after the clear)"
        ),
        &format!(
            "{} (Clear keeps the dirty map's buckets)",
            mib(N as f64 * GO_TABLE_BYTES_PER_KEY)
        ),
    );

    for i in 0..N {
        map.insert(i, i);
    }
    row("6a. refill 1M", "");
    let released = map.clear_and_release();
    row(
        &format!("6b. clear_and_release(): {released}"),
        "n/a (no equivalent)",
    );
    drop(map);
    println!();
    println!(
        "after drop(map): heap {}, process RSS {}",
        mib(heap()),
        mib(rss())
    );
}
