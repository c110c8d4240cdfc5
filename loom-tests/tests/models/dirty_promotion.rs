//! Model 12: operations on a key held only by the dirty tier while the other thread's operations
//! promote that tier (issue 13, publication bugs). A lock-free lookup of such a key loads the
//! read tier, sees `amended`, loads `dirty_view`, re-checks `read` and probes the dirty tier;
//! a promotion swaps `read` and then clears `dirty_view`, and a migration started after it
//! publishes a new dirty tier through `set_dirty`. The key is present throughout, so every
//! lookup must find it, whatever the promotion does in between.
//!
//! Setups: keys 1 and 2 inserted into an empty map (dirty tier {1, 2}, the empty read tier
//! `amended`, migration done), either with one miss counted by a `get(&2)` (`setup`: the next
//! miss, misses >= dirty len = 2, promotes inside the race) or with none (`setup_no_misses`:
//! the promotion is an iteration's, and the reader's one lookup is its last access to the
//! tiers, so that loom's DPOR runs the whole writer between the reader's loads).
//!
//! What loom cannot see here: `set_dirty` storing `dirty_view` `Relaxed` (mutation
//! `relaxed_dirty_view`) survives every model. A reader that reaches a new dirty tier through
//! the first key's `amended` flag is published by that flag's release store; the remaining
//! race (a lookup holding an old, still `amended` read tier loads the *next* migration's view
//! and re-loads a stale `read`) needs no fence between the promotion's swap and that store,
//! and under loom there always is one (every operation pins a fresh epoch participant, and a
//! promotion's critical section ends with `guard.flush()`); see `README.md`. Weakening both
//! stores (`relaxed_dirty_publish`) is caught by `publication::new_dirty_tier` and
//! `publication::promoted_tier` (model 14).
#![cfg(tiermap_loom)]

use loom::sync::atomic::{AtomicBool, Ordering::Relaxed};
use loom::sync::Arc;
use loom::thread;
use tiermap_loom_tests::*;

use crate::drop_map;

/// Keys 1 and 2 in the dirty tier only, one miss counted.
fn setup(t: &std::sync::Arc<Tracker>, map: &Map) {
    fill_dirty(t, map, &[(1, 10), (2, 20)]);
    assert_eq!(get(map, 2), Some(20));
    let s = map.stats();
    assert!(
        s.misses == 1 && s.read_capacity == 0 && s.promotions == 0,
        "setup: {s}"
    );
}

/// The promoting thread: a `get` of dirty-only key 2 (the second miss: promotes, unless the
/// other thread's miss did), then a new key, which starts a new migration (a new dirty tier
/// published by `set_dirty`).
fn promote_then_migrate(map: &Map, t: &std::sync::Arc<Tracker>) {
    assert_eq!(get(map, 2), Some(20), "dirty key 2 lost");
    assert!(map.insert(t.key(3), t.val(30)).is_none());
}

/// `get` of dirty-only key 1 vs a miss-driven promotion and the migration after it.
#[test]
fn dirty_get_vs_miss_promotion() {
    check("dirty_get_vs_miss_promotion", 1, || {
        let t = Tracker::new();
        let map = Arc::new(new_map());
        setup(&t, &map);

        let other = {
            let map = map.clone();
            let t = t.clone();
            thread::spawn(move || promote_then_migrate(&map, &t))
        };
        assert_eq!(get(&map, 1), Some(10), "dirty key 1 looked absent");
        other.join().unwrap();

        assert!(map.stats().promotions >= 1, "{}", map.stats());
        assert_eq!(snapshot(&map), [(1, 10), (2, 20), (3, 30)]);
        drop_map(map);
        t.assert_all_dropped_once();
    });
}

/// `remove` of dirty-only key 1 vs a miss-driven promotion and the migration after it (which
/// expunges the deleted entry if it runs after the removal).
#[test]
fn dirty_remove_vs_miss_promotion() {
    check("dirty_remove_vs_miss_promotion", 1, || {
        let t = Tracker::new();
        let map = Arc::new(new_map());
        setup(&t, &map);

        let other = {
            let map = map.clone();
            let t = t.clone();
            thread::spawn(move || promote_then_migrate(&map, &t))
        };
        let removed = map.remove(&1).map(|r| r.get());
        assert_eq!(removed, Some(10), "dirty key 1 looked absent to remove");
        assert_eq!(get(&map, 1), None, "removed key 1 still present");
        other.join().unwrap();

        assert_eq!(snapshot(&map), [(2, 20), (3, 30)]);
        drop_map(map);
        t.assert_all_dropped_once();
    });
}

/// `compare_exchange(1, 10 -> 11)` on dirty-only key 1 vs an iteration that promotes (and sees
/// key 1 with its old or its new value, once).
#[test]
fn dirty_compare_exchange_vs_iteration_promotion() {
    check("dirty_compare_exchange_vs_iteration_promotion", 2, || {
        let t = Tracker::new();
        let map = Arc::new(new_map());
        setup(&t, &map);

        let other = {
            let map = map.clone();
            thread::spawn(move || snapshot(&map))
        };
        match map.compare_exchange(&1, &t.val(10), t.val(11)) {
            Ok(old) => assert_eq!(old.get(), 10),
            Err(e) => panic!(
                "compare_exchange on present key 1 failed: current {:?}",
                e.current.map(|r| r.get())
            ),
        }
        let seen = other.join().unwrap();
        assert!(
            seen == [(1, 10), (2, 20)] || seen == [(1, 11), (2, 20)],
            "iteration saw {seen:?}"
        );

        assert!(map.stats().promotions >= 1, "{}", map.stats());
        assert_eq!(snapshot(&map), [(1, 11), (2, 20)]);
        drop_map(map);
        t.assert_all_dropped_once();
    });
}

/// The promoting thread of the models below: an iteration (promotes: the read tier is
/// `amended`), then a new key, which starts a new migration (a new dirty tier published by
/// `set_dirty`, and filled at once by the tiny migration).
fn iterate_then_migrate(map: &Map, t: &std::sync::Arc<Tracker>) {
    assert_eq!(snapshot(map), [(1, 10), (2, 20)]);
    assert!(map.insert(t.key(3), t.val(30)).is_none());
}

/// Keys 1 and 2 in the dirty tier only, no miss counted: one `get` of key 1 stays below the
/// promotion threshold, so only the other thread promotes.
fn setup_no_misses(t: &std::sync::Arc<Tracker>, map: &Map) {
    fill_dirty(t, map, &[(1, 10), (2, 20)]);
    let s = map.stats();
    assert!(
        s.misses == 0 && s.read_capacity == 0 && s.promotions == 0,
        "setup: {s}"
    );
}

/// One `get` of dirty-only key 1, and nothing else on that thread that touches the tiers, vs
/// an iteration that promotes and an insert that publishes a new dirty tier. The lookup's
/// probe is the reader's last access to `read`/`dirty_view`, so loom's DPOR places the
/// writer's whole run between the reader's load of `read` and its load of `dirty_view`: if
/// the new dirty tier's pointer carried no release (or `promote` cleared it before swapping
/// `read`), the reader could pair the old read tier with the new dirty tier (or with none)
/// and miss key 1.
#[test]
fn dirty_get_vs_iteration_promotion_and_migration() {
    check("dirty_get_vs_iteration_promotion_and_migration", 2, || {
        let t = Tracker::new();
        let map = Arc::new(new_map());
        setup_no_misses(&t, &map);

        let other = {
            let map = map.clone();
            let t = t.clone();
            thread::spawn(move || iterate_then_migrate(&map, &t))
        };
        let v1 = get(&map, 1);
        other.join().unwrap();
        assert_eq!(v1, Some(10), "dirty key 1 looked absent");

        assert_eq!(map.stats().promotions, 1, "{}", map.stats());
        assert_eq!(snapshot(&map), [(1, 10), (2, 20), (3, 30)]);
        drop_map(map);
        t.assert_all_dropped_once();
    });
}

/// The reader pins *before* the writer exists, then looks up dirty-only key 1 through that
/// pin, while the writer promotes (iteration) and starts a new migration. The pinned reader's
/// only lookup must find key 1, and the tiers it reads must stay alive while it is pinned.
///
/// A relaxed flag that the writer sets at its end and the reader loads just before its lookup
/// gives loom's DPOR a race it sees (see `publication.rs`): without it, with the reader pinned
/// first, loom never ran the writer before the lookup (59 executions, all of them with the
/// lookup first); with it, the writer's whole run is also explored before the lookup.
#[test]
fn pinned_before_promotion_reads_dirty_key() {
    check("pinned_before_promotion_reads_dirty_key", 2, || {
        let t = Tracker::new();
        let map = Arc::new(new_map());
        setup_no_misses(&t, &map);
        {
            let p = map.pin();
            let done = Arc::new(AtomicBool::new(false));
            let other = {
                let map = map.clone();
                let t = t.clone();
                let done = done.clone();
                thread::spawn(move || {
                    iterate_then_migrate(&map, &t);
                    // Relaxed: orders nothing; a race for DPOR (see above).
                    done.store(true, Relaxed);
                })
            };
            let _ = done.load(Relaxed);
            let v1 = p.get(&1);
            assert_eq!(
                v1.map(|v| v.get()),
                Some(10),
                "dirty key 1 looked absent to a pinned reader"
            );
            other.join().unwrap();
            // Still readable after the writer promoted and retired the old tiers.
            assert_eq!(v1.map(|v| v.get()), Some(10));
        }

        assert_eq!(snapshot(&map), [(1, 10), (2, 20), (3, 30)]);
        drop_map(map);
        t.assert_all_dropped_once();
    });
}

/// Two new keys inserted one after the other (both land in the same dirty tier: the first
/// starts the migration and sets `amended`, the second finds `amended` already set) vs a
/// lock-free `get` of the second. A reader that saw the first key's `amended` store relies on
/// the second slot's own release store (`Table::insert_unique`) to see the second entry and its
/// value complete.
#[test]
fn second_fresh_key_read_from_dirty_tier() {
    check("second_fresh_key_read_from_dirty_tier", 1, || {
        let t = Tracker::new();
        let map = Arc::new(new_map());
        fill_read(&t, &map, &[(1, 10)]);

        let other = {
            let map = map.clone();
            let t = t.clone();
            thread::spawn(move || {
                assert!(map.insert(t.key(2), t.val(20)).is_none());
                assert!(map.insert(t.key(3), t.val(30)).is_none());
            })
        };
        let v3 = get(&map, 3);
        let v2 = get(&map, 2);
        assert!(v3.is_none() || v3 == Some(30), "key 3: {v3:?}");
        assert!(v2.is_none() || v2 == Some(20), "key 2: {v2:?}");
        assert!(
            !(v3.is_some() && v2.is_none()),
            "key 3 seen before key 2, then key 2 absent"
        );
        other.join().unwrap();

        assert_eq!(snapshot(&map), [(1, 10), (2, 20), (3, 30)]);
        drop_map(map);
        t.assert_all_dropped_once();
    });
}
