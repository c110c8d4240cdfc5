//! Model 4: `get_or_insert_with` from two threads on one absent key.
#![cfg(tiermap_loom)]

use std::cell::Cell;

use loom::sync::Arc;
use loom::thread;
use tiermap::GetOrInsert;
use tiermap_loom_tests::*;

use crate::drop_map;

/// One caller: returns (inserted?, value seen, id of the value its closure made, if it ran).
fn call(map: &Map, t: &std::sync::Arc<Tracker>, n: u64) -> (bool, u64, Option<usize>) {
    let made = Cell::new(None);
    let runs = Cell::new(0);
    let r = map.get_or_insert_with(t.key(1), || {
        runs.set(runs.get() + 1);
        let v = t.val(n);
        made.set(Some(v.id()));
        v
    });
    assert!(runs.get() <= 1, "closure ran {} times", runs.get());
    let (inserted, seen) = match &r {
        GetOrInsert::Inserted(v) => (true, v.get()),
        GetOrInsert::Loaded(v) => (false, v.get()),
    };
    if inserted {
        assert_eq!(seen, n, "inserted someone else's value");
    }
    if let (false, Some(id)) = (inserted, made.get()) {
        // The losing value is dropped before the call returns, exactly once.
        assert_eq!(t.drops_of(id), 1, "loser's value {n} not dropped");
    }
    (inserted, seen, made.get())
}

fn race(setup: fn(&std::sync::Arc<Tracker>, &Map)) {
    let t = Tracker::new();
    let map = Arc::new(new_map());
    setup(&t, &map);

    let other = {
        let map = map.clone();
        let t = t.clone();
        thread::spawn(move || call(&map, &t, 200))
    };
    let a = call(&map, &t, 100);
    let b = other.join().unwrap();

    assert!(a.0 ^ b.0, "exactly one caller inserts: {a:?} {b:?}");
    assert_eq!(a.1, b.1, "both callers see the winning value");
    let winner = if a.0 { 100 } else { 200 };
    assert_eq!(a.1, winner);
    assert_eq!(get(&map, 1), Some(winner));
    drop_map(map);
    t.assert_all_dropped_once();
}

/// The key is in no tier: both callers take the lock, compute outside it, and retry.
#[test]
fn get_or_insert_with_absent_key() {
    check("get_or_insert_with_absent_key", 2, || race(|_, _| {}));
}

/// The key's read-tier entry is deleted: both callers race to revive it without the lock.
#[test]
fn get_or_insert_with_deleted_key() {
    check("get_or_insert_with_deleted_key", 2, || {
        race(|t, map| {
            fill_read(t, map, &[(1, 10)]);
            assert_eq!(map.remove(&1).map(|r| r.get()), Some(10));
        })
    });
}
