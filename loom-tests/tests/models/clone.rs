//! Model 21 (two tests): a migration that clones (`Table::clone_from`: the read table's slots
//! copied to the same index of an equally large dirty table, without reading the entries)
//! racing the operations of another thread.
//!
//! The map holds keys 1..=7 in its read tier (a table of 16 slots in loom builds, with room for
//! them and the next keys), so the next new key starts a migration that clones (asserted from
//! `MapStats::clones`: if a change of the sizing stops these models from cloning, they fail
//! instead of passing without testing the clone). Meanwhile the other thread removes a key and
//! reads, or inserts a new key of its own (which takes a slot of the dirty table that the clone
//! may then find taken). After both, an iteration promotes the cloned table, and every key must
//! be in it exactly once with its value. Mutation: `clone_drops_entry` (the clone skips every
//! other entry it copies to the same index: keys are missing once the table is promoted).
#![cfg(tiermap_loom)]

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use loom::sync::Arc;
use loom::thread;
use tiermap_loom_tests::*;

use crate::drop_map;

/// Executions of `clone_vs_remove_and_reads` in which the migration cloned.
static CLONED: AtomicUsize = AtomicUsize::new(0);

/// Keys in the read tier before the race.
const OLD: std::ops::RangeInclusive<u32> = 1..=7;
/// New keys, inserted during the race.
const NEW_A: u32 = 100;
const NEW_B: u32 = 101;

/// A map whose read tier holds `OLD` (value = key) and whose next new key starts a clone.
fn map_about_to_clone(t: &std::sync::Arc<Tracker>) -> Arc<Map> {
    let map = new_map();
    for k in OLD {
        assert!(map.insert(t.key(k), t.val(u64::from(k))).is_none());
    }
    // The iteration promotes the dirty tier, which holds every key.
    assert_eq!(snapshot(&map).len(), OLD.count());
    let s = map.stats();
    assert!(s.dirty_capacity == 0 && s.clones == 0, "setup: {s}");
    Arc::new(map)
}

/// A thread that inserts `NEW_A` (whose migration may be the clone), then runs `then`.
fn insert_new_a(
    map: &Arc<Map>,
    t: &std::sync::Arc<Tracker>,
    then: impl FnOnce(&Map) + Send + 'static,
) -> thread::JoinHandle<()> {
    let (map, t) = (map.clone(), t.clone());
    thread::spawn(move || {
        assert!(map.insert(t.key(NEW_A), t.val(100)).is_none());
        then(&map);
    })
}

/// After the race: the iteration (which promotes the cloned table) sees exactly `want`, and
/// `len` agrees.
fn assert_contents(map: &Map, want: &[(u32, u64)]) {
    assert_eq!(
        snapshot(map),
        want,
        "contents after the cloned table was promoted"
    );
    assert_eq!(map.len(), want.len());
}

#[test]
fn clone_vs_remove_and_reads() {
    check("clone_vs_remove_and_reads", 1, || {
        let t = Tracker::new();
        let map = map_about_to_clone(&t);
        let inserter = insert_new_a(&map, &t, |_| ());
        assert_eq!(map.remove(&3).map(|v| v.get()), Some(3));
        assert_eq!(get(&map, 5), Some(5), "key lost during the clone");
        assert_eq!(get(&map, 3), None, "removed key still there");
        inserter.join().unwrap();
        // A removal before the migration starts leaves a deleted entry, and a map of 7 keys
        // clones only with none: then the migration rehashes. Both orders are explored.
        let s = map.stats();
        assert!(s.clones <= 1, "{s}");
        if s.clones == 1 {
            CLONED.fetch_add(1, Relaxed);
        }
        let want: Vec<(u32, u64)> = OLD
            .filter(|&k| k != 3)
            .map(|k| (k, u64::from(k)))
            .chain([(NEW_A, 100)])
            .collect();
        assert_contents(&map, &want);
        drop_map(map);
        t.assert_all_dropped_once();
    });
    assert!(
        CLONED.load(Relaxed) > 0,
        "no execution cloned: the model does not test the clone"
    );
}

#[test]
fn clone_vs_new_key() {
    check("clone_vs_new_key", 1, || {
        let t = Tracker::new();
        let map = map_about_to_clone(&t);
        let inserter = insert_new_a(&map, &t, |map| {
            assert_eq!(get(map, 2), Some(2), "key lost during the clone");
        });
        assert!(map.insert(t.key(NEW_B), t.val(101)).is_none());
        assert_eq!(get(&map, NEW_B), Some(101), "inserted key lost");
        inserter.join().unwrap();
        assert!(
            map.stats().clones >= 1,
            "no migration cloned: {}",
            map.stats()
        );
        let want: Vec<(u32, u64)> = OLD
            .map(|k| (k, u64::from(k)))
            .chain([(NEW_A, 100), (NEW_B, 101)])
            .collect();
        assert_contents(&map, &want);
        drop_map(map);
        t.assert_all_dropped_once();
    });
}
