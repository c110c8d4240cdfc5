//! The background reclaimer's life cycle: started by the first map that retires something,
//! parked (no timed wake-ups) once no map has work, and gone after
//! `set_background_reclaim(false)`.
//!
//! Its own test binary with one test: the thread and its setting are process-wide.

use std::sync::atomic::{AtomicIsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use tiermap::memory::{background_reclaim_status, set_background_reclaim, ReclaimStatus};
use tiermap::SyncMap;

/// Live `Counted` values.
static ALIVE: AtomicIsize = AtomicIsize::new(0);

struct Counted(#[allow(dead_code)] u64);

impl Counted {
    fn new(v: u64) -> Self {
        ALIVE.fetch_add(1, SeqCst);
        Counted(v)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
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

/// Polls `cond` every millisecond until it holds or `limit` has passed since `from`; how long
/// after `from` it held.
fn within(from: Instant, limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    loop {
        if cond() {
            return Some(from.elapsed());
        }
        if from.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

const LIMIT: Duration = Duration::from_secs(1);

/// The reclaimer thread's life cycle:
/// * no thread before any map retires anything; the first removal of a counted value starts
///   exactly one (`starts == 1`, `running`, a `tiermap-reclaim` thread in `/proc`);
/// * it frees the removed values within 1 s with no further call on the map, then parks
///   (`parked && running`) within 1 s of that;
/// * parked, it does not wake: over 100 ms `parked` stays true and `starts` stays 1 (the map
///   is still alive, with live values and nothing to free);
/// * after `set_background_reclaim(false)` it exits within 1 s (`!running`, no
///   `tiermap-reclaim` thread), and later work does not start it again;
/// * turned back on, the next retirement starts a new thread (`starts == 2`) that frees it.
#[test]
fn reclaimer_starts_parks_and_exits() {
    // The environment may have turned it off; this test is about the thread.
    set_background_reclaim(true);
    let s0 = background_reclaim_status();
    println!("before any map: {s0:?}, threads {:?}", reclaim_threads());
    assert_eq!(
        s0.starts, 0,
        "a thread started before any map retired anything"
    );
    assert!(!s0.running);

    let map: SyncMap<u64, Counted> = SyncMap::new();
    for i in 0..1_000 {
        map.insert(i, Counted::new(i));
    }
    for i in 0..1_000 {
        assert!(map.get(&i).is_some());
    }
    for i in 0..500 {
        assert!(map.remove(&i).is_some());
    }
    let removed = Instant::now();
    let s1 = background_reclaim_status();
    println!("after 500 removes: {s1:?}");
    assert_eq!(
        s1.starts, 1,
        "one thread started by the first retirement: {s1:?}"
    );
    assert!(s1.running, "{s1:?}");
    if cfg!(target_os = "linux") {
        // The new thread names itself once it runs: poll.
        let mut threads = None;
        let named = within(removed, LIMIT, || {
            threads = reclaim_threads();
            threads == Some(1)
        });
        println!("one tiermap-reclaim thread in /proc after {named:?}");
        assert!(
            named.is_some(),
            "tiermap-reclaim threads in /proc: {threads:?}, want 1"
        );
    }

    // The removed values are freed without any call on the map, then the thread parks.
    let freed = within(removed, LIMIT, || alive() == 500);
    println!(
        "removed values freed after {freed:?} (alive {}), {:?}",
        alive(),
        background_reclaim_status()
    );
    assert!(
        freed.is_some(),
        "{} removed values still alive {LIMIT:?} after the removes; {:?}; {}",
        alive() - 500,
        background_reclaim_status(),
        map.stats()
    );
    let freed_at = Instant::now();
    let mut last = s1;
    let parked = within(freed_at, LIMIT, || {
        last = background_reclaim_status();
        last.parked && last.running
    });
    println!("parked {parked:?} after the values were freed: {last:?}");
    assert!(
        parked.is_some(),
        "the thread did not park within {LIMIT:?}: {last:?}"
    );

    // Parked, it stays parked: no timed wake-ups while no map has work.
    let quiet = Instant::now();
    let mut samples: Vec<ReclaimStatus> = Vec::new();
    while quiet.elapsed() < Duration::from_millis(100) {
        samples.push(background_reclaim_status());
        std::thread::sleep(Duration::from_millis(2));
    }
    let woke = samples.iter().filter(|s| !s.parked || !s.running).count();
    println!(
        "{} samples over 100 ms: {woke} not parked; last {:?}",
        samples.len(),
        samples.last()
    );
    assert_eq!(woke, 0, "the parked thread woke with no work: {samples:?}");
    assert!(samples.iter().all(|s| s.starts == 1), "{samples:?}");
    assert_eq!(alive(), 500);

    // Turned off: the thread exits, and work does not start it again.
    assert!(set_background_reclaim(false), "it was on");
    let off = Instant::now();
    let mut last = background_reclaim_status();
    let exited = within(off, LIMIT, || {
        last = background_reclaim_status();
        !last.running
    });
    println!("exited {exited:?} after set_background_reclaim(false): {last:?}");
    assert!(
        exited.is_some(),
        "the thread still runs {LIMIT:?} after being turned off: {last:?}"
    );
    assert_eq!(last.starts, 1);
    assert!(!last.parked, "{last:?}");
    if cfg!(target_os = "linux") {
        let gone = within(off, LIMIT, || reclaim_threads() == Some(0));
        assert!(
            gone.is_some(),
            "a tiermap-reclaim thread is still in /proc/self/task"
        );
    }
    for i in 500..1_000 {
        assert!(map.remove(&i).is_some());
    }
    map.clear();
    drop(map);
    assert_eq!(alive(), 0, "drop(map) freed every value");
    let s2 = background_reclaim_status();
    println!("after more work with the thread off: {s2:?}");
    assert_eq!(s2.starts, 1, "a thread started while turned off: {s2:?}");
    assert!(!s2.running, "{s2:?}");

    // Back on: the next retirement starts a new thread, which frees it.
    assert!(!set_background_reclaim(true), "it was off");
    let map: SyncMap<u64, Counted> = SyncMap::new();
    map.insert(1, Counted::new(1));
    map.insert(2, Counted::new(2));
    assert!(map.remove(&1).is_some());
    let removed = Instant::now();
    let s3 = background_reclaim_status();
    println!("turned back on, after one remove: {s3:?}");
    assert_eq!(s3.starts, 2, "a new thread for the new work: {s3:?}");
    assert!(s3.running, "{s3:?}");
    let freed = within(removed, LIMIT, || alive() == 1);
    println!("freed after {freed:?}; {:?}", background_reclaim_status());
    assert!(
        freed.is_some(),
        "the removed value is still alive {LIMIT:?} later; {:?}; {}",
        background_reclaim_status(),
        map.stats()
    );
    drop(map);
    assert_eq!(alive(), 0);
}
