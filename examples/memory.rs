//! Memory harness: how many heap bytes each map holds, counted by a `#[global_allocator]` that
//! tracks live bytes (not criterion).
//!
//! For every map (`u64 -> u64`, `ahash`, created empty):
//! * bytes per entry at 1e6 entries (requested bytes, and as glibc malloc lays them out: a
//!   small allocation costs its size plus an 8-byte header rounded to 16, at least 32 bytes),
//!   and the peak while filling;
//! * held bytes after removing every key, after `clear`, after the map's own shrink call
//!   (`shrink_to_fit` where it exists), and for tiermap after `clear_and_release`; each both as
//!   measured right after the call and after the map's deferred frees were flushed
//!   (`SyncMap::reclaim`, papaya's `Guard::flush`, scc's `Guard::accelerate`);
//! * held bytes along a sliding-window churn (insert `i`, remove `i - W`), sampled every `N`
//!   steps, without any forced reclamation.
//!
//! Everything runs on one thread, so the counter sees only the map under test (plus the epoch
//! collectors' own bookkeeping, which is part of what a map costs).
//!
//! ```text
//! cargo run --release --example memory            # tables on stdout
//! MEM_CSV=docs/charts cargo run --release --example memory   # also writes CSVs
//! ```
//! Environment: `MEM_N` (default 1000000), `MEM_WINDOW` (100000), `MEM_STEPS` (2000000),
//! `MEM_SAMPLE` (20000), `BENCH_MAPS` (see benches/common). Takes about a minute.

#[path = "../benches/common/mod.rs"]
#[macro_use]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

use common::BenchMap;

/// Counts live heap bytes and their peak.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);
/// Live bytes as glibc malloc lays them out: each small request takes a chunk of the request
/// plus an 8-byte header, rounded up to 16, at least 32 bytes (so a 16-byte entry costs 32).
static CHUNKS: AtomicIsize = AtomicIsize::new(0);

fn chunk(size: usize) -> isize {
    ((size + 8).div_ceil(16) * 16).max(32) as isize
}

// SAFETY: forwards every call to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            CHUNKS.fetch_add(chunk(layout.size()), Relaxed);
            let now = LIVE.fetch_add(layout.size() as isize, Relaxed) + layout.size() as isize;
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            CHUNKS.fetch_add(chunk(layout.size()), Relaxed);
            let now = LIVE.fetch_add(layout.size() as isize, Relaxed) + layout.size() as isize;
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
        CHUNKS.fetch_sub(chunk(layout.size()), Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            CHUNKS.fetch_add(chunk(new_size) - chunk(layout.size()), Relaxed);
            let now = LIVE.fetch_add(new_size as isize - layout.size() as isize, Relaxed)
                + new_size as isize
                - layout.size() as isize;
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> isize {
    LIVE.load(Relaxed)
}

fn chunks() -> isize {
    CHUNKS.load(Relaxed)
}

fn reset_peak() {
    PEAK.store(live(), Relaxed);
}

fn peak() -> isize {
    PEAK.load(Relaxed)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn mib(b: isize) -> String {
    // A map can free a few bytes of earlier bookkeeping (epoch bags) inside its own window.
    let b = b.max(0) as f64;
    if b.abs() >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / 1048576.0)
    } else if b.abs() >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

/// One map's results. Byte counts are relative to the heap before the map was created.
#[derive(Default, Clone)]
struct Summary {
    name: &'static str,
    /// Held after the fill, before / after flushing deferred frees.
    full: (isize, isize),
    /// Held after the fill and flush, in glibc chunk bytes (see `CHUNKS`).
    full_chunks: isize,
    fill_peak: isize,
    removed_all: (isize, isize),
    cleared: (isize, isize),
    shrink: Option<(&'static str, isize, isize)>,
    dropped: (isize, isize),
    churn: Vec<(u64, isize)>,
    churn_peak: isize,
}

/// Runs `op`, then returns (held right after, held after `reclaim`).
fn both<M: BenchMap>(base: isize, m: &M, op: impl FnOnce(&M)) -> (isize, isize) {
    op(m);
    let a = live() - base;
    m.reclaim();
    (a, live() - base)
}

fn fill<M: BenchMap>(m: &M, n: u64) {
    for i in 0..n {
        m.store(i, i);
    }
}

fn measure<M: BenchMap>(n: u64, window: u64, steps: u64, sample: u64) -> Summary {
    let mut s = Summary {
        name: M::NAME,
        ..Summary::default()
    };

    // Fill; remove every key. (A first flush so that earlier maps' garbage is not freed inside
    // this map's measurement.)
    M::with_capacity(0).reclaim();
    let base = live();
    let base_chunks = chunks();
    reset_peak();
    let m = M::with_capacity(0);
    s.full = both(base, &m, |m| fill(m, n));
    s.full_chunks = chunks() - base_chunks;
    s.fill_peak = peak() - base;
    s.removed_all = both(base, &m, |m| {
        for i in 0..n {
            m.delete(i);
        }
    });
    // Refill; clear.
    fill(&m, n);
    m.reclaim();
    s.cleared = both(base, &m, |m| m.clear());
    // Refill; remove every key; the map's own shrink call.
    fill(&m, n);
    for i in 0..n {
        m.delete(i);
    }
    m.reclaim();
    let mut shrink_name = None;
    let sh = both(base, &m, |m| shrink_name = m.shrink());
    s.shrink = shrink_name.map(|name| (name, sh.0, sh.1));
    drop(m);
    let after_drop = live() - base;
    // Flush once more with a fresh map's collector hooks (epoch garbage is global).
    M::with_capacity(0).reclaim();
    s.dropped = (after_drop, live() - base);

    // Sliding-window churn on a fresh map.
    let base = live();
    reset_peak();
    let m = M::with_capacity(0);
    for i in 0..steps {
        m.store(i, i);
        if i >= window {
            m.delete(i - window);
        }
        if (i + 1) % sample == 0 {
            s.churn.push((i + 1, live() - base));
        }
    }
    s.churn_peak = peak() - base;
    drop(m);
    s
}

/// tiermap only: its own accounting after a fill, then `clear_and_release` (and what `reclaim`
/// adds after it).
fn tiermap_clear_and_release(n: u64) -> (isize, isize, usize, usize, String) {
    common::Tier::with_capacity(0).reclaim();
    let base = live();
    let m = common::Tier::with_capacity(0);
    fill(&m, n);
    m.reclaim();
    let stats = format!("{} (allocator: {})", m.stats(), mib(live() - base));
    let released = m.clear_and_release();
    let a = live() - base;
    let pending_after = m.reclaim();
    (
        a,
        live() - base,
        released.pending_bytes,
        pending_after,
        stats,
    )
}

type Measure = fn(u64, u64, u64, u64) -> Summary;

fn main() {
    let n = env_u64("MEM_N", 1_000_000);
    let window = env_u64("MEM_WINDOW", 100_000);
    let steps = env_u64("MEM_STEPS", 2_000_000);
    let sample = env_u64("MEM_SAMPLE", 20_000);

    let mut runs: Vec<Measure> = Vec::new();
    for_each_map!(M => {
        runs.push(measure::<M> as Measure);
    });
    let results: Vec<Summary> = runs
        .iter()
        .map(|f| {
            let r = f(n, window, steps, sample);
            eprintln!("measured {}", r.name);
            r
        })
        .collect();

    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Held heap bytes, u64 -> u64, n = {n} (counting allocator; \"→\" = after flushing deferred frees)\n"
    );
    let _ = writeln!(
        out,
        "| map | bytes/entry | with malloc headers | held at n | peak while filling | after remove-all | after clear | shrink call after remove-all | after drop |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &results {
        let pair = |p: (isize, isize)| {
            if p.0 == p.1 {
                mib(p.1)
            } else {
                format!("{} → {}", mib(p.0), mib(p.1))
            }
        };
        let shrink = match r.shrink {
            Some((name, a, b)) => format!("`{name}`: {}", pair((a, b))),
            None => "—".to_string(),
        };
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.full.1 as f64 / n as f64,
            r.full_chunks as f64 / n as f64,
            pair(r.full),
            mib(r.fill_peak),
            pair(r.removed_all),
            pair(r.cleared),
            shrink,
            pair(r.dropped),
        );
    }

    if common::map_selected("tiermap") {
        let (a, b, pending, pending_after, stats) = tiermap_clear_and_release(n);
        let _ = writeln!(
            out,
            "\ntiermap's own stats after filling {n} keys: `{stats}`"
        );
        let _ = writeln!(
            out,
            "\ntiermap `clear_and_release` after filling {n} keys: held {} when it returns \
             (`Released::pending_bytes` = {pending}); after `reclaim`: {} (pending {pending_after}).",
            mib(a),
            mib(b)
        );
    }

    let _ = writeln!(
        out,
        "\n### Held heap bytes along a sliding-window churn (window {window}, {steps} steps, sampled every {sample}; no forced reclamation)\n"
    );
    let _ = writeln!(
        out,
        "| map | min | median | max sample | peak (allocator) | last |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    for r in &results {
        let mut v: Vec<isize> = r.churn.iter().map(|c| c.1).collect();
        let last = *v.last().unwrap_or(&0);
        v.sort_unstable();
        if v.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            r.name,
            mib(v[0]),
            mib(v[v.len() / 2]),
            mib(*v.last().unwrap()),
            mib(r.churn_peak),
            mib(last),
        );
    }
    print!("{out}");

    if let Ok(dir) = std::env::var("MEM_CSV") {
        std::fs::create_dir_all(&dir).unwrap();
        let mut churn = String::from("map,step,held_bytes\n");
        let mut summary = String::from(
            "map,n,full_chunks,full,full_reclaimed,fill_peak,removed_all,removed_all_reclaimed,cleared,cleared_reclaimed,shrink,shrink_reclaimed,dropped,dropped_reclaimed\n",
        );
        for r in &results {
            for (step, b) in &r.churn {
                let _ = writeln!(churn, "{},{step},{b}", r.name);
            }
            let (sa, sb) = r.shrink.map_or((-1, -1), |s| (s.1, s.2));
            let _ = writeln!(
                summary,
                "{},{n},{},{},{},{},{},{},{},{},{sa},{sb},{},{}",
                r.name,
                r.full_chunks,
                r.full.0,
                r.full.1,
                r.fill_peak,
                r.removed_all.0,
                r.removed_all.1,
                r.cleared.0,
                r.cleared.1,
                r.dropped.0,
                r.dropped.1
            );
        }
        std::fs::write(format!("{dir}/memory_churn.csv"), churn).unwrap();
        std::fs::write(format!("{dir}/memory_summary.csv"), summary).unwrap();
        let _ = std::fs::write(format!("{dir}/memory.md"), &out);
    }
}
