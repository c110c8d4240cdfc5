//! Model 14: one model per publication path of the engine, each with a reader whose critical
//! section **starts before** the writer's store (issue 13).
//!
//! Three things hide a missing `Release` from loom, and each model removes all three:
//!
//! 1. **The reader's pin.** Under loom each pin registers a fresh epoch participant (a CAS on
//!    the collector's list) and runs crossbeam-epoch's `SeqCst` fence. A reader that pins
//!    *after* the writer registered acquires everything the writer did before that. Here the
//!    reader pins before the writer thread exists and does its lookup under that one pin.
//! 2. **The writer's pin.** A fence followed by a relaxed store publishes like a release store
//!    (loom models fence-release synchronization), so the writer's own pin fence publishes
//!    whatever it created *before* pinning: `map.insert(t.key(1), t.val(11))` builds its
//!    value before `insert` pins. Here the writer pins first (`map.pin()`) and builds its keys
//!    and values under that pin, so the only release after their creation is the map's own.
//! 3. **Loom's DPOR.** Loom remembers one last access per atomic, so the writer's own load of a
//!    cell right before its CAS hides the reader's earlier load of it, and loom never tries
//!    the writer's store before the reader's load (with the reader pinned first: 1 to 5
//!    executions, the reader always saw the old state). A relaxed flag (`done`), stored by the
//!    writer at its end and loaded by the reader just before its lookup, gives DPOR a race it
//!    does see, so it also runs the whole writer before the lookup. The flag orders nothing.
//!
//! What the reader then touches is checked by loom: the entry and the tier carry a
//! `raw::witness::Witness` (a loom `UnsafeCell` created with them and read on every lock-free path
//! that reaches them), and each value is a `Val` whose cell is read by `Val::get`. Reading any
//! of them through a pointer that was not published with release is a "Causality violation".
//!
//! | model | path | writer's store | mutation that weakens it |
//! |---|---|---|---|
//! | `replaced_value` | value publication by `insert` (replace) | `Entry::try_store` CAS | `relaxed_value_store` |
//! | `revived_value` | value publication by revive (`get_or_insert` of a deleted key) | `Entry::try_revive` CAS | `relaxed_revive` |
//! | `swapped_value` | value publication by `compare_exchange` | `Entry::replace_exact` CAS | `relaxed_cas_publish` |
//! | `promoted_tier` | tier publication by promotion | `read` swap in `promote` | `relaxed_promote_publish` |
//! | `cleared_tier` | tier publication by `clear` | `read` swap in `clear` | `relaxed_clear_publish` |
//! | `new_dirty_tier` | `dirty_view` publication (a new migration) | `dirty_view` and `amended` stores | `relaxed_dirty_publish` |
//! | `fresh_slot` | slot/entry publication in a dirty table probed lock-free | `Slot::entry` store in `insert_unique` | `relaxed_slot_publish` |
#![cfg(tiermap_loom)]

use loom::sync::atomic::{AtomicBool, Ordering::Relaxed};
use loom::sync::Arc;
use loom::thread;
use tiermap_loom_tests::*;

use crate::drop_map;

type Tracked = std::sync::Arc<Tracker>;
type Pinned<'m> = tiermap::Pinned<'m, Key, Val, std::hash::BuildHasherDefault<IdHasher>>;

/// Runs one publication race: `setup` on the main thread, then a spawned writer runs `write`
/// while the main thread pins the map and, under that one pin, reads key `k` and passes what
/// it saw to `seen` (which asserts the allowed outcomes), then reads it again after joining the writer (a value it holds must stay
/// readable while it is pinned). Ends with `expect` as the map's content and every key and
/// value dropped once after the map is dropped.
fn race(
    name: &'static str,
    bound: usize,
    setup: fn(&Tracked, &Map),
    write: fn(&Tracked, &Pinned<'_>),
    k: u32,
    seen: fn(Option<u64>),
    expect: &'static [(u32, u64)],
) {
    check(name, bound, move || {
        let t = Tracker::new();
        let map = Arc::new(new_map());
        setup(&t, &map);
        {
            // Pinned before the writer exists: everything the writer stores comes after this
            // pin, and the reader's later lookup sees it only through the map's publication.
            let p = map.pin();
            let done = Arc::new(AtomicBool::new(false));
            let writer = {
                let map = map.clone();
                let t = t.clone();
                let done = done.clone();
                thread::spawn(move || {
                    // The writer pins first and creates its keys and values under that pin:
                    // its pin's `SeqCst` fence would otherwise act as a release for them.
                    write(&t, &map.pin());
                    // Relaxed: synchronizes nothing; it only gives loom's DPOR a race to
                    // reorder (see the module docs).
                    done.store(true, Relaxed);
                })
            };
            let _ = done.load(Relaxed);
            let v = p.get(&k);
            let n = v.map(|v| v.get());
            seen(n);
            writer.join().unwrap();
            assert_eq!(v.map(|v| v.get()), n, "a value read under a pin changed");
        }
        assert_eq!(snapshot(&map), expect);
        drop_map(map);
        t.assert_all_dropped_once();
    });
}

fn one_read_key(t: &Tracked, map: &Map) {
    fill_read(t, map, &[(1, 10)]);
}

/// Key 1 in the read tier, removed (its entry is deleted, not expunged: no migration ran).
fn one_deleted_key(t: &Tracked, map: &Map) {
    fill_read(t, map, &[(1, 10)]);
    assert_eq!(map.remove(&1).map(|v| v.get()), Some(10));
    let s = map.stats();
    assert!(s.dirty_capacity == 0 && s.len == 0, "setup: {s}");
}

/// Key 1 in the read tier, key 2 in the dirty tier only (the read tier is `amended`).
fn read_and_dirty_key(t: &Tracked, map: &Map) {
    fill_read(t, map, &[(1, 10)]);
    assert!(map.insert(t.key(2), t.val(20)).is_none());
    let s = map.stats();
    assert!(s.dirty_capacity > 0 && s.promotions == 1, "setup: {s}");
}

/// `insert` replacing a live value publishes the new value with the entry's CAS.
#[test]
fn replaced_value() {
    race(
        "publication::replaced_value",
        2,
        one_read_key,
        |t, p| assert_eq!(p.insert(t.key(1), t.val(11)).map(|v| v.get()), Some(10)),
        1,
        |n| assert!(matches!(n, Some(10 | 11)), "key 1: {n:?}"),
        &[(1, 11)],
    );
}

/// `get_or_insert` of a deleted read-tier key revives the entry with a CAS from null.
#[test]
fn revived_value() {
    race(
        "publication::revived_value",
        2,
        one_deleted_key,
        |t, p| assert!(p.get_or_insert(t.key(1), t.val(11)).is_inserted()),
        1,
        |n| assert!(matches!(n, None | Some(11)), "key 1: {n:?}"),
        &[(1, 11)],
    );
}

/// `compare_exchange` publishes its new value with `Entry::replace_exact`.
#[test]
fn swapped_value() {
    race(
        "publication::swapped_value",
        2,
        one_read_key,
        |t, p| {
            let r = p.compare_exchange(&1, &t.val(10), t.val(11));
            assert_eq!(r.ok().map(|v| v.get()), Some(10));
        },
        1,
        |n| assert!(matches!(n, Some(10 | 11)), "key 1: {n:?}"),
        &[(1, 11)],
    );
}

/// The writer creates a dirty tier (a new key) and promotes it (an iteration): the reader may
/// reach the new key through the promoted read tier, a tier the writer's thread created.
#[test]
fn promoted_tier() {
    race(
        "publication::promoted_tier",
        2,
        one_read_key,
        |t, p| {
            assert!(p.insert(t.key(2), t.val(20)).is_none());
            assert_eq!(p.iter().count(), 2);
            assert!(p.map().stats().promotions >= 2, "{}", p.map().stats());
        },
        2,
        |n| assert!(matches!(n, None | Some(20)), "key 2: {n:?}"),
        &[(1, 10), (2, 20)],
    );
}

/// `clear` publishes a fresh, empty read tier the writer's thread created.
#[test]
fn cleared_tier() {
    race(
        "publication::cleared_tier",
        2,
        one_read_key,
        |_, p| p.map().clear(),
        1,
        |n| assert!(matches!(n, None | Some(10)), "key 1: {n:?}"),
        &[],
    );
}

/// The first new key after a promotion starts a migration: a new dirty tier, published by
/// `set_dirty`'s `dirty_view` store and then by the read tier's `amended` flag.
#[test]
fn new_dirty_tier() {
    race(
        "publication::new_dirty_tier",
        2,
        one_read_key,
        |t, p| assert!(p.insert(t.key(2), t.val(20)).is_none()),
        2,
        |n| assert!(matches!(n, None | Some(20)), "key 2: {n:?}"),
        &[(1, 10), (2, 20)],
    );
}

/// A second new key in an existing dirty tier (`amended` already set): only the slot's own
/// release store publishes the entry (its key) and its inline or first value.
#[test]
fn fresh_slot() {
    race(
        "publication::fresh_slot",
        2,
        read_and_dirty_key,
        |t, p| assert!(p.insert(t.key(3), t.val(30)).is_none()),
        3,
        |n| assert!(matches!(n, None | Some(30)), "key 3: {n:?}"),
        &[(1, 10), (2, 20), (3, 30)],
    );
}
