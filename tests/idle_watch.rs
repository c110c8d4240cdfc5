//! The background reclaimer's idle watch (`raw::idle`) on a real map, with the thread running:
//! a map left alone after its writes has its dirty tier promoted within a few seconds, and its
//! values are neither lost nor dropped early or twice. (A map dropped while the watch works on
//! it: the white-box test `raw::tests::a_map_dropped_while_its_watch_works_is_detached_first`,
//! which also runs under Miri.)
//!
//! Its own test binary: the reclaimer thread is process-wide, and this test waits for it.

use std::sync::atomic::{AtomicIsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use tiermap::SyncMap;

/// Live `Counted` values.
static ALIVE_QUIET: AtomicIsize = AtomicIsize::new(0);

struct Counted(u64, &'static AtomicIsize);

impl Counted {
    fn new(v: u64, alive: &'static AtomicIsize) -> Self {
        alive.fetch_add(1, SeqCst);
        Counted(v, alive)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.1.fetch_sub(1, SeqCst);
    }
}

/// A one-shard map (so that one shard holds everything: its read table is large) of at least
/// `n` keys, left in the middle of a migration.
fn migrating(n: u64, alive: &'static AtomicIsize) -> SyncMap<u64, Counted> {
    let map = SyncMap::with_capacity_shards_and_hasher(0, 1, std::hash::RandomState::new());
    let mut k = 0;
    while k < n || !map.stats().migrating {
        map.insert(k, Counted::new(k, alive));
        k += 1;
        assert!(k < 20 * n, "no migration in progress after {k} inserts");
    }
    map
}

/// Left alone, the map is promoted (no dirty tier) within 5 s, and every key still reads its
/// own value; then the map's drop drops every value once.
#[test]
fn a_quiet_map_is_promoted_and_keeps_every_value() {
    tiermap::memory::set_background_reclaim(true);
    let map = migrating(200_000, &ALIVE_QUIET);
    let len = map.len() as u64;
    let before = map.stats();
    let quiet = Instant::now();
    while map.stats().dirty_capacity > 0 {
        assert!(
            quiet.elapsed() < Duration::from_secs(5),
            "still not promoted after 5 s of quiet: {}",
            map.stats()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let after = map.stats();
    println!(
        "promoted after {:.2?}: {before} -> {after}",
        quiet.elapsed()
    );
    assert!(after.promotions > before.promotions, "{after}");
    assert!(after.held_bytes < before.held_bytes, "{before} -> {after}");
    for k in 0..len {
        assert_eq!(map.get(&k).map(|v| v.0), Some(k), "key {k}");
    }
    assert_eq!(ALIVE_QUIET.load(SeqCst), len as isize);
    drop(map);
    assert_eq!(ALIVE_QUIET.load(SeqCst), 0, "values left after the drop");
}
