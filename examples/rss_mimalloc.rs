//! Resident memory after a map lets go of 1M entries, with mimalloc as the global allocator
//! (the crate's `malloc_trim` then has nothing to do: mimalloc returns freed pages itself).
//!
//! `cargo run --release --example rss_mimalloc`; `MIMALLOC_PURGE_DELAY` (ms, default 10) is
//! mimalloc's own delay before it returns freed pages. Prints, for `clear_and_release`, `drop`
//! and remove-all with no further call, RSS at start, at the peak, right after, and 200 ms
//! later, beside a std `HashMap` measured the same way. Linux only.

use std::time::Duration;

use tiermap::SyncMap;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const N: u64 = 1_000_000;

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn report(name: &str, base: f64, peak: f64, f: impl FnOnce()) {
    f();
    let now = rss_mib();
    std::thread::sleep(Duration::from_millis(200));
    let later = rss_mib();
    let back = |after: f64| 100.0 * (peak - after) / (peak - base).max(1e-9);
    println!(
        "| {name} | {base:.1} MiB | {peak:.1} MiB | {now:.1} MiB ({:.0}%) | {later:.1} MiB ({:.0}%) |",
        back(now),
        back(later)
    );
}

fn filled() -> SyncMap<u64, u64> {
    let map = SyncMap::new();
    for i in 0..N {
        map.insert(i, i);
    }
    for i in 0..N {
        assert_eq!(map.get_cloned(&i), Some(i));
    }
    map
}

/// Each phase runs in its own process (`rss_mimalloc PHASE`), so that memory mimalloc keeps
/// from one phase does not serve the next one's peak. Without an argument, runs them all.
fn main() {
    let phase = std::env::args().nth(1);
    let Some(phase) = phase else {
        println!("| mimalloc | start | peak | right after | 200 ms later |");
        println!("|---|---:|---:|---:|---:|");
        let me = std::env::current_exe().expect("own path");
        for p in ["hashmap", "clear_and_release", "drop", "remove_all"] {
            let out = std::process::Command::new(&me)
                .arg(p)
                .output()
                .expect("phase runs");
            print!("{}", String::from_utf8_lossy(&out.stdout));
        }
        return;
    };
    let base = rss_mib();
    match phase.as_str() {
        "hashmap" => {
            let mut m = std::collections::HashMap::new();
            for i in 0..N {
                m.insert(i, i);
            }
            let peak = rss_mib();
            report("std HashMap: drop", base, peak, move || drop(m));
        }
        "clear_and_release" => {
            let map = filled();
            let peak = rss_mib();
            report("SyncMap: clear_and_release()", base, peak, || {
                map.clear_and_release();
            });
        }
        "drop" => {
            let map = filled();
            let peak = rss_mib();
            report("SyncMap: drop(map)", base, peak, move || drop(map));
        }
        "remove_all" => {
            let map = filled();
            let peak = rss_mib();
            report("SyncMap: remove all, no further call", base, peak, || {
                for i in 0..N {
                    map.remove(&i);
                }
            });
        }
        other => panic!("unknown phase {other}"),
    }
}
