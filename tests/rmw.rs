//! Atomic read-modify-write: `update`, `update_or_insert(_with)` and `compute`, on `SyncMap` and
//! `Pinned`.
//!
//! * the contract, one call at a time (absent keys, what each closure sees, how often it runs,
//!   retries caused by a re-entrant write);
//! * keys that live only in the dirty tier, in the read tier after a promotion, and whose read
//!   entry is expunged (the key then lives in a fresh dirty entry);
//! * a differential test against a `Mutex<HashMap>` model, mixing the new operations with the
//!   old ones;
//! * concurrent counters: threads increment a few keys while others remove and re-insert them
//!   and force migrations and promotions; no increment may be lost;
//! * panic injection: a panicking closure (or `Hash`/`Eq`) leaves the map unchanged and usable,
//!   and every key and value is dropped exactly once.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier, Mutex, Once};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use tiermap::{Computed, Op, SyncMap};

// ---- the contract, one call at a time --------------------------------------------------------

#[test]
fn update_of_an_absent_key_calls_nothing_and_inserts_nothing() {
    let map: SyncMap<u32, u32> = SyncMap::new();
    let mut calls = 0;
    assert!(map
        .update(&1, |n| {
            calls += 1;
            n + 1
        })
        .is_none());
    assert_eq!(calls, 0);
    assert!(map.is_empty());
    // A removed key is absent too.
    map.insert(1, 1);
    map.remove(&1);
    assert!(map.pin().update(&1, |n| n + 1).is_none());
    assert!(map.get(&1).is_none());
    assert_eq!(map.len(), 0);
}

#[test]
fn update_returns_the_new_value_and_the_closure_sees_the_old_one() {
    let map: SyncMap<&str, String> = SyncMap::new();
    map.insert("k", "a".into());
    let mut seen = Vec::new();
    let r = map.update("k", |s| {
        seen.push(s.clone());
        format!("{s}b")
    });
    assert_eq!(r.as_deref().map(String::as_str), Some("ab"));
    assert_eq!(seen, ["a"]);
    // A `Ref` to the replaced value stays valid across the update.
    let old = map.get("k").unwrap();
    let m = map.pin();
    assert_eq!(
        m.update("k", |s| format!("{s}c")).map(String::as_str),
        Some("abc")
    );
    assert_eq!(*old, "ab");
    assert_eq!(map.get_cloned("k").as_deref(), Some("abc"));
}

#[test]
fn update_or_insert_inserts_the_default_then_updates() {
    let map: SyncMap<u32, u64> = SyncMap::new();
    let (mut f_calls, mut make_calls) = (0, 0);
    for i in 1..=5u64 {
        let r = map.update_or_insert_with(
            7,
            |n| {
                f_calls += 1;
                n + 1
            },
            || {
                make_calls += 1;
                1
            },
        );
        assert_eq!(*r, i);
    }
    assert_eq!((f_calls, make_calls), (4, 1));
    // A removed key is absent: the default again.
    map.remove(&7);
    assert_eq!(*map.update_or_insert(7, |n| n + 1, 10), 10);
    assert_eq!(map.pin().update_or_insert(7, |n| n + 1, 10), &11);
    assert_eq!(map.len(), 1);
}

#[test]
fn compute_applies_each_op_and_reports_it() {
    let map: SyncMap<u32, u32> = SyncMap::new();
    let c = |op: Op<u32>| move |_: Option<&u32>| op;
    assert_eq!(map.compute(1, c(Op::Keep)).map(|v| *v), Computed::Absent);
    assert_eq!(map.compute(1, c(Op::Remove)).map(|v| *v), Computed::Absent);
    assert!(map.is_empty());
    assert_eq!(
        map.compute(1, c(Op::Insert(5))).map(|v| *v),
        Computed::Inserted(5)
    );
    assert_eq!(
        map.compute(1, c(Op::Keep)).map(|v| *v),
        Computed::Unchanged(5)
    );
    assert_eq!(
        map.compute(1, c(Op::Insert(6))).map(|v| *v),
        Computed::Updated { old: 5, new: 6 }
    );
    assert_eq!(
        map.compute(1, c(Op::Remove)).map(|v| *v),
        Computed::Removed(6)
    );
    assert!(map.is_empty());
    assert_eq!(map.stats().len, 0);
    // The closure sees the current value, or `None`.
    let mut seen = Vec::new();
    let m = map.pin();
    m.compute(2, |v| {
        seen.push(v.copied());
        Op::Insert(20)
    });
    m.compute(2, |v| {
        seen.push(v.copied());
        Op::Keep
    });
    assert_eq!(seen, [None, Some(20)]);
    // `Updated`'s two `Ref`s hold their own guards: either may be dropped first.
    let Computed::Updated { old, new } = map.compute(2, |v| Op::Insert(v.unwrap() + 1)) else {
        panic!("not updated")
    };
    drop(old);
    map.insert(2, 0);
    map.reclaim();
    assert_eq!(*new, 21);
}

/// A closure that writes the same key (re-entrantly) makes the CAS fail: the closure runs again
/// on the value that write left, and nothing is lost.
#[test]
fn a_write_during_the_closure_makes_it_run_again() {
    let map: SyncMap<u32, u32> = SyncMap::new();
    map.insert(1, 1);
    let mut seen = Vec::new();
    let r = map.update(&1, |n| {
        seen.push(*n);
        if seen.len() == 1 {
            map.insert(1, 100);
        }
        n + 1
    });
    assert_eq!(r.as_deref(), Some(&101));
    assert_eq!(seen, [1, 100]);

    // The key is removed during the closure: `update` finds it absent.
    let mut calls = 0;
    let r = map.update(&1, |n| {
        calls += 1;
        map.remove(&1);
        n + 1
    });
    assert!(r.is_none());
    assert_eq!(calls, 1);
    assert!(map.get(&1).is_none());

    // `compute` of an absent key whose closure inserts it: the locked pass finds it present,
    // and the closure runs again on its value.
    let mut seen = Vec::new();
    let r = map.compute(1, |v| {
        seen.push(v.copied());
        if seen.len() == 1 {
            map.insert(1, 7);
        }
        Op::Insert(v.map_or(0, |n| n * 2))
    });
    assert_eq!(r.map(|v| *v), Computed::Updated { old: 7, new: 14 });
    assert_eq!(seen, [None, Some(7)]);

    // `compute` removing a value that changes under it: it judges the new value.
    let mut seen = Vec::new();
    let r = map.compute(1, |v| {
        seen.push(v.copied());
        if seen.len() == 1 {
            map.insert(1, 8);
        }
        Op::Remove
    });
    assert_eq!(r.map(|v| *v), Computed::Removed(8));
    assert_eq!(seen, [Some(14), Some(8)]);
    assert_eq!(map.len(), 0);
}

/// `update_or_insert_with` makes its default once, even when the key appears (the default is
/// kept) and disappears again (the kept default is inserted).
#[test]
fn update_or_insert_makes_the_default_once_across_races() {
    let map: SyncMap<u32, u32> = SyncMap::new();
    let (mut makes, mut fs) = (0, 0);
    let r = map.update_or_insert_with(
        1,
        |n| {
            fs += 1;
            if fs == 1 {
                // The key disappears before our update lands: the kept default goes in.
                map.remove(&1);
            }
            n + 1
        },
        || {
            makes += 1;
            // The key appears before our insert: we update that value instead.
            map.insert(1, 50);
            5
        },
    );
    assert_eq!(*r, 5);
    assert_eq!((makes, fs), (1, 1));
    assert_eq!(map.get_cloned(&1), Some(5));
    assert_eq!(map.len(), 1);
}

// ---- dirty tier, promotion, expunged entries -------------------------------------------------

#[test]
fn rmw_on_a_key_only_in_the_dirty_tier_and_across_a_promotion() {
    // 32 keys in the dirty tier, with room to spare: it is promoted neither for being full nor
    // by the few lookups below that miss the read tier (Go's promotion clock counts up to the
    // dirty tier's length).
    let map: SyncMap<u32, u32> = SyncMap::with_capacity(64);
    for k in 0..32 {
        map.insert(k, k);
    }
    let dirty_only = |map: &SyncMap<u32, u32>| {
        let s = map.stats();
        assert!(
            s.read_capacity == 0 && s.dirty_capacity > 0 && s.promotions == 0,
            "keys only in the dirty tier: {s}"
        );
    };
    dirty_only(&map);
    assert_eq!(map.update(&1, |n| n + 1).as_deref(), Some(&2));
    dirty_only(&map);
    assert_eq!(*map.update_or_insert(1, |n| n + 1, 0), 3);
    assert_eq!(
        map.compute(1, |v| Op::Insert(v.unwrap() + 1)).map(|v| *v),
        Computed::Updated { old: 3, new: 4 }
    );
    assert_eq!(map.pin().update(&2, |n| n * 10), Some(&20));
    assert_eq!(
        map.compute(3, |_| Op::Remove).map(|v| *v),
        Computed::Removed(3)
    );
    // A deleted dirty entry is revived in place; a new key gets a new dirty entry.
    assert_eq!(*map.update_or_insert(3, |n| n + 1, 30), 30);
    assert_eq!(*map.update_or_insert(100, |n| n + 1, 10), 10);
    assert_eq!(
        map.compute(101, |_| Op::Insert(11)).map(|v| *v),
        Computed::Inserted(11)
    );
    dirty_only(&map);

    // Iteration promotes: now the keys are in the read tier.
    assert_eq!(map.pin().iter().count(), 34);
    let s = map.stats();
    assert!(s.promotions == 1 && s.dirty_capacity == 0, "{s}");
    assert_eq!(map.update(&1, |n| n + 1).as_deref(), Some(&5));
    assert_eq!(*map.update_or_insert(100, |n| n + 1, 0), 11);
    assert_eq!(
        map.compute(101, |_| Op::Remove).map(|v| *v),
        Computed::Removed(11)
    );
    // A key removed from the read tier is revived in place, without the lock.
    assert_eq!(
        map.compute(101, |_| Op::Insert(12)).map(|v| *v),
        Computed::Inserted(12)
    );
    assert_eq!(
        map.stats().dirty_capacity,
        0,
        "no lock taken: {}",
        map.stats()
    );
    let mut all: Vec<(u32, u32)> = map.pin().iter().map(|(k, v)| (*k, *v)).collect();
    all.sort();
    assert_eq!(all[..4], [(0, 0), (1, 5), (2, 20), (3, 30)]);
    assert_eq!(all[32..], [(100, 11), (101, 12)]);
    assert_eq!(map.len(), 34);
}

/// Key 5 is deleted in the read tier, then a migration runs to its end without promoting: the
/// read entry is expunged and the dirty tier lacks the key. The operations must treat it as
/// absent and insert a fresh entry into the dirty tier, which later lookups find there.
#[test]
fn rmw_on_a_key_whose_read_entry_is_expunged() {
    for op in 0..3 {
        let map: SyncMap<u32, u32> = (0..200).map(|i| (i, i)).collect();
        assert_eq!(map.pin().iter().count(), 200); // promote
        assert_eq!(map.stats().dirty_capacity, 0);
        map.remove(&5);
        let promotions = map.stats().promotions;
        // Fresh keys start a migration and drive it, a budget per insert, to its end.
        let mut fresh = 1000;
        loop {
            map.insert(fresh, fresh);
            fresh += 1;
            let s = map.stats();
            assert_eq!(s.promotions, promotions, "promoted early: {s}");
            if s.dirty_capacity > 0 && !s.migrating {
                break;
            }
            assert!(fresh < 1500, "migration never ends: {s}");
        }
        assert!(map.update(&5, |n| n + 1).is_none());
        match op {
            0 => assert_eq!(*map.update_or_insert(5, |n| n + 1, 50), 50),
            1 => assert_eq!(
                map.compute(5, |v| Op::Insert(v.map_or(50, |n| n + 1)))
                    .map(|v| *v),
                Computed::Inserted(50)
            ),
            _ => {
                map.insert(5, 50);
            }
        }
        // Found in the dirty tier, without the lock.
        assert_eq!(map.update(&5, |n| n + 1).as_deref(), Some(&51));
        assert_eq!(
            map.compute(5, |v| Op::Insert(v.unwrap() + 1)).map(|v| *v),
            Computed::Updated { old: 51, new: 52 }
        );
        assert_eq!(map.stats().promotions, promotions);
        // And after the promotion, in the read tier.
        assert_eq!(map.pin().iter().count(), 200 + (fresh - 1000) as usize);
        assert!(map.stats().promotions > promotions);
        assert_eq!(*map.update_or_insert(5, |n| n + 1, 0), 53);
        assert_eq!(map.len(), 200 + (fresh - 1000) as usize);
        assert_eq!(map.stats().len, map.len());
    }
}

// ---- differential ----------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum DOp {
    Get(u8),
    Insert(u8, u16),
    GetOrInsert(u8, u16),
    Remove(u8),
    RemoveIf(u8, u16),
    CompareExchange(u8, u16, u16),
    Update(u8, u16),
    PinnedUpdate(u8, u16),
    UpdateOrInsert(u8, u16, u16),
    UpdateOrInsertWith(u8, u16, u16),
    PinnedUpdateOrInsert(u8, u16, u16),
    /// `compute` with a decision rule (`rule % 4`) and a value.
    Compute(u8, u8, u16),
    PinnedCompute(u8, u8, u16),
    Len,
    Iterate,
    Retain(u8),
    Clear,
    ShrinkToFit,
}

fn dop() -> impl Strategy<Value = DOp> {
    let k = 0u8..48;
    let v = 0u16..8;
    prop_oneof![
        4 => k.clone().prop_map(DOp::Get),
        5 => (k.clone(), v.clone()).prop_map(|(k, v)| DOp::Insert(k, v)),
        1 => (k.clone(), v.clone()).prop_map(|(k, v)| DOp::GetOrInsert(k, v)),
        4 => k.clone().prop_map(DOp::Remove),
        1 => (k.clone(), v.clone()).prop_map(|(k, v)| DOp::RemoveIf(k, v)),
        1 => (k.clone(), v.clone(), v.clone()).prop_map(|(k, a, b)| DOp::CompareExchange(k, a, b)),
        4 => (k.clone(), v.clone()).prop_map(|(k, d)| DOp::Update(k, d)),
        1 => (k.clone(), v.clone()).prop_map(|(k, d)| DOp::PinnedUpdate(k, d)),
        4 => (k.clone(), v.clone(), v.clone()).prop_map(|(k, d, x)| DOp::UpdateOrInsert(k, d, x)),
        2 => (k.clone(), v.clone(), v.clone())
            .prop_map(|(k, d, x)| DOp::UpdateOrInsertWith(k, d, x)),
        1 => (k.clone(), v.clone(), v.clone())
            .prop_map(|(k, d, x)| DOp::PinnedUpdateOrInsert(k, d, x)),
        5 => (k.clone(), any::<u8>(), v.clone()).prop_map(|(k, r, x)| DOp::Compute(k, r, x)),
        1 => (k.clone(), any::<u8>(), v.clone()).prop_map(|(k, r, x)| DOp::PinnedCompute(k, r, x)),
        1 => Just(DOp::Len),
        1 => Just(DOp::Iterate),
        1 => (1u8..5).prop_map(DOp::Retain),
        1 => Just(DOp::Clear),
        1 => Just(DOp::ShrinkToFit),
    ]
}

/// The decision a `compute` closure makes under `rule`, given the current value.
fn decide(rule: u8, cur: Option<u16>, x: u16) -> Op<u16> {
    match (rule % 4, cur) {
        (0, _) => Op::Keep,
        (1, c) => Op::Insert(c.map_or(x, |c| c.wrapping_add(x))),
        (2, _) => Op::Remove,
        // Remove even values, bump odd ones, insert when absent.
        (_, Some(c)) if c % 2 == 0 => Op::Remove,
        (_, Some(c)) => Op::Insert(c.wrapping_add(x)),
        (_, None) => Op::Insert(x),
    }
}

/// The model's `compute`: applies the decision and says what `Computed` must report.
fn model_compute(m: &mut HashMap<u8, u16>, k: u8, rule: u8, x: u16) -> Computed<u16> {
    let cur = m.get(&k).copied();
    match (decide(rule, cur, x), cur) {
        (Op::Keep, Some(c)) => Computed::Unchanged(c),
        (Op::Keep | Op::Remove, None) => Computed::Absent,
        (Op::Remove, Some(c)) => {
            m.remove(&k);
            Computed::Removed(c)
        }
        (Op::Insert(n), Some(c)) => {
            m.insert(k, n);
            Computed::Updated { old: c, new: n }
        }
        (Op::Insert(n), None) => {
            m.insert(k, n);
            Computed::Inserted(n)
        }
    }
}

/// Four distinct hashes in all: long probe runs, `Eq` on every step.
#[derive(Default, Clone)]
struct Weak;
struct WeakHasher(u64);
impl BuildHasher for Weak {
    type Hasher = WeakHasher;
    fn build_hasher(&self) -> WeakHasher {
        WeakHasher(0)
    }
}
impl Hasher for WeakHasher {
    fn finish(&self) -> u64 {
        self.0 % 4
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.wrapping_mul(31).wrapping_add(*b as u64);
        }
    }
}

fn differential<S: BuildHasher>(map: SyncMap<u8, u16, S>, ops: &[DOp]) {
    let model: Mutex<HashMap<u8, u16>> = Mutex::new(HashMap::new());
    for (i, op) in ops.iter().enumerate() {
        let mut m = model.lock().unwrap();
        let what = format!("op {i}: {op:?}");
        match *op {
            DOp::Get(k) => assert_eq!(map.get_cloned(&k), m.get(&k).copied(), "{what}"),
            DOp::Insert(k, v) => assert_eq!(map.insert(k, v).map(|r| *r), m.insert(k, v), "{what}"),
            DOp::GetOrInsert(k, v) => {
                let expect = *m.entry(k).or_insert(v);
                assert_eq!(*map.get_or_insert(k, v).into_inner(), expect, "{what}");
            }
            DOp::Remove(k) => assert_eq!(map.remove(&k).map(|r| *r), m.remove(&k), "{what}"),
            DOp::RemoveIf(k, v) => {
                let expect = (m.get(&k) == Some(&v)).then(|| m.remove(&k).unwrap());
                assert_eq!(map.remove_if(&k, |x| *x == v).map(|r| *r), expect, "{what}");
            }
            DOp::CompareExchange(k, a, b) => {
                let ok = m.get(&k) == Some(&a);
                if ok {
                    m.insert(k, b);
                }
                assert_eq!(map.compare_exchange(&k, &a, b).is_ok(), ok, "{what}");
            }
            DOp::Update(k, d) | DOp::PinnedUpdate(k, d) => {
                let expect = m.get_mut(&k).map(|v| {
                    *v = v.wrapping_add(d);
                    *v
                });
                let mut seen = Vec::new();
                let f = |v: &u16| {
                    seen.push(*v);
                    v.wrapping_add(d)
                };
                let got = if matches!(op, DOp::Update(..)) {
                    map.update(&k, f).map(|r| *r)
                } else {
                    map.pin().update(&k, f).copied()
                };
                assert_eq!(got, expect, "{what}");
                let before: Vec<u16> = expect.map(|e| e.wrapping_sub(d)).into_iter().collect();
                assert_eq!(
                    seen, before,
                    "{what}: the closure runs once, on the old value"
                );
            }
            DOp::UpdateOrInsert(k, d, x)
            | DOp::UpdateOrInsertWith(k, d, x)
            | DOp::PinnedUpdateOrInsert(k, d, x) => {
                let present = m.contains_key(&k);
                let expect = *m
                    .entry(k)
                    .and_modify(|v| *v = v.wrapping_add(d))
                    .or_insert(x);
                let (mut fs, mut makes) = (0, 0);
                let f = |v: &u16| {
                    fs += 1;
                    v.wrapping_add(d)
                };
                let got = match op {
                    DOp::UpdateOrInsert(..) => *map.update_or_insert(k, f, x),
                    DOp::PinnedUpdateOrInsert(..) => *map.pin().update_or_insert(k, f, x),
                    _ => *map.update_or_insert_with(k, f, || {
                        makes += 1;
                        x
                    }),
                };
                assert_eq!(got, expect, "{what}");
                assert_eq!(fs, usize::from(present), "{what}: f calls");
                if matches!(op, DOp::UpdateOrInsertWith(..)) {
                    assert_eq!(makes, usize::from(!present), "{what}: make calls");
                }
            }
            DOp::Compute(k, rule, x) | DOp::PinnedCompute(k, rule, x) => {
                let cur = m.get(&k).copied();
                let expect = model_compute(&mut m, k, rule, x);
                let mut seen = Vec::new();
                let f = |v: Option<&u16>| {
                    seen.push(v.copied());
                    decide(rule, v.copied(), x)
                };
                let got = if matches!(op, DOp::Compute(..)) {
                    map.compute(k, f).map(|r| *r)
                } else {
                    map.pin().compute(k, f).map(|r| *r)
                };
                assert_eq!(got, expect, "{what}");
                assert_eq!(
                    seen,
                    [cur],
                    "{what}: the closure runs once, on the current value"
                );
            }
            DOp::Len => assert_eq!(map.len(), m.len(), "{what}"),
            DOp::Iterate => {
                let mut got: Vec<(u8, u16)> = map.pin().iter().map(|(k, v)| (*k, *v)).collect();
                got.sort();
                let mut want: Vec<(u8, u16)> = m.iter().map(|(k, v)| (*k, *v)).collect();
                want.sort();
                assert_eq!(got, want, "{what}");
            }
            DOp::Retain(d) => {
                m.retain(|k, _| k % d == 0);
                map.retain(|k, _| k % d == 0);
            }
            DOp::Clear => {
                m.clear();
                map.clear();
            }
            DOp::ShrinkToFit => map.shrink_to_fit(),
        }
        let s = map.stats();
        assert_eq!(s.len, m.len(), "stats after {what}: {s}");
    }
    let mut got: Vec<(u8, u16)> = map.into_iter().collect();
    got.sort();
    let mut want: Vec<(u8, u16)> = model.into_inner().unwrap().into_iter().collect();
    want.sort();
    assert_eq!(got, want);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 4 } else { 256 },
        ..ProptestConfig::default()
    })]

    #[test]
    fn rmw_matches_hashmap(ops in proptest::collection::vec(dop(), 1..400)) {
        differential(SyncMap::new(), &ops);
    }

    #[test]
    fn rmw_matches_hashmap_with_colliding_hasher(ops in proptest::collection::vec(dop(), 1..400)) {
        differential(SyncMap::with_hasher(Weak), &ops);
    }
}

// ---- concurrent counters ---------------------------------------------------------------------

/// Counter keys.
const COUNTERS: u64 = 4;

fn scale(n: u64) -> u64 {
    if cfg!(miri) {
        n / 500
    } else {
        n
    }
}

/// `THREADS` threads run `inc(map, key)` `per_thread` times over the counter keys, each call
/// that reports an applied increment counted; meanwhile one thread removes and re-inserts the
/// counter keys (adding the values it takes out to `taken`) and one churns other keys, iterates
/// (promotes) and compacts, so the counters move between the dirty tier, the read tier, deleted
/// and expunged entries. At the end, what the counters hold plus what was taken out must equal
/// the increments applied.
fn no_lost_increment(name: &str, inc: fn(&SyncMap<u64, u64>, u64) -> bool) {
    const THREADS: u64 = 3;
    let per_thread = scale(100_000);
    let map: SyncMap<u64, u64> = (0..COUNTERS).map(|k| (k, 0)).collect();
    let applied = AtomicU64::new(0);
    let taken = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let promotions_before = map.stats().promotions;
    // Everyone starts together, so that the increments overlap.
    let start = Barrier::new(THREADS as usize + 2);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (map, applied, start) = (&map, &applied, &start);
                s.spawn(move || {
                    start.wait();
                    let mut mine = 0;
                    for i in 0..per_thread {
                        if inc(map, (i + t) % COUNTERS) {
                            mine += 1;
                        }
                    }
                    applied.fetch_add(mine, SeqCst);
                })
            })
            .collect();
        // Removes and re-inserts the counters, by every means, accounting for what it takes.
        s.spawn(|| {
            start.wait();
            let mut round = 0u64;
            while !stop.load(SeqCst) || round < 64 {
                let k = round % COUNTERS;
                let got = match round % 5 {
                    0 => map.remove(&k).map(|v| *v),
                    1 => map.insert(k, 0).map(|v| *v),
                    2 => match map.compute(k, |_| Op::Remove) {
                        Computed::Removed(v) => Some(*v),
                        _ => None,
                    },
                    3 => map.remove_if(&k, |v| v % 2 == 0).map(|v| *v),
                    _ => {
                        // Leave the key absent for a moment, then let `update` find it again.
                        let v = map.remove(&k).map(|v| *v);
                        std::thread::yield_now();
                        map.get_or_insert(k, 0);
                        v
                    }
                };
                taken.fetch_add(got.unwrap_or(0), SeqCst);
                round += 1;
                if round % 8 == 0 {
                    std::thread::yield_now();
                }
            }
        });
        // Other keys come and go; iteration promotes, `shrink_to_fit` compacts.
        s.spawn(|| {
            start.wait();
            let mut round = 0u64;
            while !stop.load(SeqCst) || round < 16 {
                let base = 1_000 + (round % 64) * 16;
                for k in base..base + 16 {
                    map.insert(k, k);
                }
                if round % 2 == 0 {
                    for k in base..base + 16 {
                        map.remove(&k);
                    }
                }
                match round % 8 {
                    0 => {
                        map.pin().iter().count();
                    }
                    3 => map.shrink_to_fit(),
                    5 => map.for_each(|_, _| {}),
                    _ => {}
                }
                round += 1;
            }
        });
        for w in workers {
            w.join().unwrap();
        }
        stop.store(true, SeqCst);
    });
    let held: u64 = (0..COUNTERS).filter_map(|k| map.get_cloned(&k)).sum();
    let (applied, taken) = (applied.load(SeqCst), taken.load(SeqCst));
    assert!(applied > 0, "{name}: no increment applied");
    assert_eq!(
        held + taken,
        applied,
        "{name}: counters hold {held}, {taken} taken out, {applied} increments applied ({} lost)",
        applied as i64 - (held + taken) as i64
    );
    assert!(
        map.stats().promotions > promotions_before,
        "{name}: no promotion happened: {}",
        map.stats()
    );
}

#[test]
fn update_or_insert_counter_loses_no_increment() {
    no_lost_increment("update_or_insert", |map, k| {
        map.update_or_insert(k, |n| n + 1, 1);
        true
    });
    no_lost_increment("pinned update_or_insert_with", |map, k| {
        map.pin().update_or_insert_with(k, |n| n + 1, || 1);
        true
    });
}

#[test]
fn update_counter_loses_no_increment() {
    no_lost_increment("update", |map, k| map.update(&k, |n| n + 1).is_some());
}

#[test]
fn compute_counter_loses_no_increment() {
    no_lost_increment("compute", |map, k| {
        map.compute(k, |n| Op::Insert(n.map_or(1, |n| n + 1)));
        true
    });
    // Increments only present keys; keeps absent ones absent.
    no_lost_increment("compute of present keys", |map, k| {
        map.compute(k, |n| match n {
            Some(n) => Op::Insert(n + 1),
            None => Op::Keep,
        })
        .is_changed()
    });
}

/// Without removers: every call lands, so the totals are exact per key.
#[test]
fn update_or_insert_counts_exactly_under_contention() {
    let map: SyncMap<u64, u64> = SyncMap::new();
    let n = scale(20_000);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let map = &map;
            s.spawn(move || {
                for i in 0..n {
                    map.update_or_insert((i + t) % 2, |x| x + 1, 1);
                    if i % 1024 == 0 {
                        // Fresh keys keep a dirty tier around; iteration promotes it.
                        map.insert(10_000 + t * n + i, 0);
                        map.pin().iter().count();
                    }
                }
            });
        }
    });
    assert_eq!(
        map.get_cloned(&0).unwrap() + map.get_cloned(&1).unwrap(),
        4 * n
    );
    assert_eq!(map.get_cloned(&0), Some(2 * n));
}

// ---- panic injection -------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Hash,
    Eq,
    Closure,
}

thread_local! {
    /// `Some((kind, n))`: the n-th next call of user code of `kind` on this thread panics.
    static ARMED: Cell<Option<(Kind, usize)>> = const { Cell::new(None) };
    static FIRED: Cell<bool> = const { Cell::new(false) };
}

const INJECTED: &str = "injected panic";

fn user_code(kind: Kind) {
    ARMED.with(|a| {
        if let Some((k, n)) = a.get() {
            if k == kind {
                if n == 0 {
                    a.set(None);
                    FIRED.with(|f| f.set(true));
                    panic!("{INJECTED} in {kind:?}");
                }
                a.set(Some((k, n - 1)));
            }
        }
    });
}

fn message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("")
}

fn quiet_injected_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !message(info.payload()).starts_with(INJECTED) {
                default(info);
            }
        }));
    });
}

#[derive(Debug, Default)]
struct Tracker {
    created: AtomicUsize,
    dropped: AtomicUsize,
}

impl Tracker {
    fn live(&self) -> isize {
        let dropped = self.dropped.load(SeqCst) as isize;
        self.created.load(SeqCst) as isize - dropped
    }
}

/// A key whose `Hash` and `Eq` are user code that may panic.
#[derive(Debug)]
struct PKey {
    k: u16,
    tracker: Arc<Tracker>,
}

impl Hash for PKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        user_code(Kind::Hash);
        (self.k % 4).hash(state);
    }
}

impl PartialEq for PKey {
    fn eq(&self, other: &Self) -> bool {
        user_code(Kind::Eq);
        self.k == other.k
    }
}

impl Eq for PKey {}

impl Drop for PKey {
    fn drop(&mut self) {
        self.tracker.dropped.fetch_add(1, SeqCst);
    }
}

#[derive(Debug)]
struct PVal {
    n: u32,
    tracker: Arc<Tracker>,
}

impl Drop for PVal {
    fn drop(&mut self) {
        self.tracker.dropped.fetch_add(1, SeqCst);
    }
}

type PMap = SyncMap<PKey, PVal>;
type Model = BTreeMap<u16, u32>;

const EXISTING: u16 = 5;
/// Deleted in the `Promoted` and `Migrating` shapes (a deleted entry in the read tier).
const DELETED: u16 = 151;
const MISSING: u16 = 1000;
/// What a re-entrant write in a closure stores.
const INTRUDER: u32 = 999;

#[derive(Clone, Copy, Debug)]
enum Shape {
    /// A few keys, all in the dirty tier.
    Dirty,
    /// A promoted read tier with deleted entries, no dirty tier.
    Promoted,
    /// A migration into a new dirty tier in progress.
    Migrating,
}

struct Fixture {
    map: PMap,
    model: Model,
    tracker: Arc<Tracker>,
}

impl Fixture {
    fn new(shape: Shape) -> Self {
        let tracker = Arc::new(Tracker::default());
        let mut fx = Fixture {
            map: PMap::new(),
            model: Model::new(),
            tracker,
        };
        let keys = match shape {
            Shape::Dirty => 8,
            Shape::Promoted | Shape::Migrating => {
                if cfg!(miri) {
                    16
                } else {
                    200
                }
            }
        };
        for k in 0..keys {
            fx.map.insert(fx.key(k), fx.val(u32::from(k) * 10));
            fx.model.insert(k, u32::from(k) * 10);
        }
        if let Shape::Promoted | Shape::Migrating = shape {
            assert_eq!(fx.map.pin().iter().count(), usize::from(keys));
            for k in (1..keys).step_by(3) {
                assert!(fx.map.remove(&fx.key(k)).is_some());
                fx.model.remove(&k);
            }
        }
        if let Shape::Migrating = shape {
            fx.map.insert(fx.key(MISSING + 1), fx.val(1));
            fx.model.insert(MISSING + 1, 1);
        }
        fx.check("fixture");
        fx
    }

    fn key(&self, k: u16) -> PKey {
        self.tracker.created.fetch_add(1, SeqCst);
        PKey {
            k,
            tracker: self.tracker.clone(),
        }
    }

    fn val(&self, n: u32) -> PVal {
        val(n, &self.tracker)
    }

    fn check(&self, what: &str) {
        let len = self.model.len();
        assert_eq!(self.map.len(), len, "{what}: len");
        let s = self.map.stats();
        assert_eq!(s.len, len, "{what}: stats {s}");
        let pinned = self.map.pin();
        let mut seen = Model::new();
        for (k, v) in pinned.iter() {
            assert!(seen.insert(k.k, v.n).is_none(), "{what}: {} twice", k.k);
        }
        assert_eq!(seen, self.model, "{what}: iteration");
        for (k, n) in &self.model {
            let got = pinned.get(&self.key(*k)).map(|v| v.n);
            assert_eq!(got, Some(*n), "{what}: get({k})");
        }
    }

    /// The map still works, including the new operations.
    fn use_it(&mut self, what: &str) {
        let k = MISSING + 50;
        let r = self
            .map
            .update_or_insert(self.key(k), |v| self.val(v.n + 1), self.val(1));
        assert_eq!(r.n, 1, "{what}: reuse");
        drop(r);
        let r = self.map.update(&self.key(k), |v| self.val(v.n + 1));
        assert_eq!(r.map(|v| v.n), Some(2), "{what}: reuse");
        let r = self.map.compute(self.key(k), |_| Op::Remove);
        assert!(
            matches!(r, Computed::Removed(v) if v.n == 2),
            "{what}: reuse"
        );
        self.check(what);
    }

    fn finish(self, what: &str) {
        let Fixture { map, tracker, .. } = self;
        map.clear_and_release();
        drop(map);
        let start = Instant::now();
        while tracker.live() > 0 && start.elapsed() < Duration::from_secs(30) {
            crossbeam_epoch::pin().flush();
            std::thread::yield_now();
        }
        assert_eq!(
            tracker.live(),
            0,
            "{what}: created {}, dropped {}",
            tracker.created.load(SeqCst),
            tracker.dropped.load(SeqCst)
        );
    }
}

fn val(n: u32, tracker: &Arc<Tracker>) -> PVal {
    tracker.created.fetch_add(1, SeqCst);
    PVal {
        n,
        tracker: tracker.clone(),
    }
}

/// What an attempt did before it completed or panicked.
#[derive(Default)]
struct Log {
    /// The closure's re-entrant write happened.
    intruded: Cell<bool>,
    /// Closure calls.
    calls: Cell<usize>,
}

struct Case {
    name: &'static str,
    kinds: &'static [Kind],
    run: fn(&mut Fixture, &Log),
    /// The model's change: `completed` or not, with what the log recorded.
    effect: fn(&mut Model, &Log, bool),
}

/// Runs `case` with a panic injected at each call of each kind of user code in turn, on each
/// shape of map; checks the map against the model after every attempt, uses it, and at the end
/// checks that every key and value was dropped exactly once.
fn inject(case: &Case) {
    quiet_injected_panics();
    // Under Miri: one shape, and call indices 0, 1, 2, 4, 8, ... (as tests/panic_injection.rs).
    let shapes: &[Shape] = if cfg!(miri) {
        &[Shape::Migrating]
    } else {
        &[Shape::Dirty, Shape::Promoted, Shape::Migrating]
    };
    let next = |n: usize| if cfg!(miri) && n >= 2 { 2 * n } else { n + 1 };
    for &shape in shapes {
        for &kind in case.kinds {
            let mut fx = Fixture::new(shape);
            let mut fired_any = false;
            let mut n = 0;
            loop {
                let what = format!("{} on {shape:?}, {kind:?} #{n}", case.name);
                let log = Log::default();
                ARMED.with(|a| a.set(Some((kind, n))));
                FIRED.with(|f| f.set(false));
                let r = catch_unwind(AssertUnwindSafe(|| (case.run)(&mut fx, &log)));
                ARMED.with(|a| a.set(None));
                let fired = FIRED.with(|f| f.get());
                if let Err(e) = &r {
                    assert!(fired, "{what}: {}", message(e.as_ref()));
                }
                assert_eq!(r.is_err(), fired, "{what}: completed after the panic");
                (case.effect)(&mut fx.model, &log, !fired);
                fx.check(&what);
                fx.use_it(&what);
                if !fired {
                    break;
                }
                fired_any = true;
                assert!(n < 10_000, "{what}: no end to user calls");
                n = next(n);
            }
            let must = kind != Kind::Eq || !matches!(shape, Shape::Dirty);
            assert!(
                fired_any || !must || cfg!(miri),
                "{} on {shape:?}: no {kind:?} call",
                case.name
            );
            fx.finish(case.name);
        }
    }
}

const ALL: &[Kind] = &[Kind::Hash, Kind::Eq, Kind::Closure];

/// `update(k, +1)`, whose closure, at its first call, overwrites the key re-entrantly if
/// `intrude` (so that a second call is due, and can panic too).
fn update_case(fx: &mut Fixture, log: &Log, k: u16, intrude: bool) {
    let (map, tracker) = (&fx.map, fx.tracker.clone());
    let before = fx.model.get(&k).copied();
    let r = map.update(&fx.key(k), |v| {
        log.calls.set(log.calls.get() + 1);
        if intrude && log.calls.get() == 1 {
            map.insert(fx.key(k), val(INTRUDER, &tracker));
            log.intruded.set(true);
        }
        user_code(Kind::Closure);
        val(v.n + 1, &tracker)
    });
    let expect = before.map(|b| if intrude { INTRUDER + 1 } else { b + 1 });
    assert_eq!(r.map(|v| v.n), expect);
    assert_eq!(
        log.calls.get(),
        usize::from(before.is_some()) * (1 + usize::from(intrude))
    );
}

fn update_effect(m: &mut Model, k: u16, log: &Log, done: bool) {
    if log.intruded.get() {
        m.insert(k, INTRUDER);
    }
    if done {
        if let Some(v) = m.get_mut(&k) {
            *v += 1;
        }
    }
}

#[test]
fn panicking_update_changes_nothing() {
    inject(&Case {
        name: "update existing",
        kinds: ALL,
        run: |fx, log| update_case(fx, log, EXISTING, false),
        effect: |m, log, done| update_effect(m, EXISTING, log, done),
    });
    inject(&Case {
        name: "update existing, overwritten by the closure",
        kinds: &[Kind::Closure],
        run: |fx, log| update_case(fx, log, EXISTING, true),
        effect: |m, log, done| update_effect(m, EXISTING, log, done),
    });
    inject(&Case {
        name: "update deleted",
        kinds: &[Kind::Hash, Kind::Eq],
        run: |fx, log| update_case(fx, log, DELETED, false),
        effect: |m, log, done| update_effect(m, DELETED, log, done),
    });
    // Through a pinned handle.
    inject(&Case {
        name: "pinned update",
        kinds: ALL,
        run: |fx, _| {
            let tracker = fx.tracker.clone();
            let pinned = fx.map.pin();
            let r = pinned.update(&fx.key(EXISTING), |v| {
                user_code(Kind::Closure);
                val(v.n + 1, &tracker)
            });
            assert_eq!(r.map(|v| v.n), fx.model.get(&EXISTING).map(|n| n + 1));
        },
        effect: |m, log, done| update_effect(m, EXISTING, log, done),
    });
}

/// `update_or_insert_with(k, +1, make 7)`; with `intrude`, `make` (for an absent key) inserts
/// the key re-entrantly and `f` (for a present one) removes it at its first call, so the
/// operation needs a second round, where the kept default or `f` run again.
fn upsert_case(fx: &mut Fixture, log: &Log, k: u16, intrude: bool) {
    let (map, tracker) = (&fx.map, fx.tracker.clone());
    let before = fx.model.get(&k).copied();
    let mut makes = 0;
    let r = map.update_or_insert_with(
        fx.key(k),
        |v| {
            log.calls.set(log.calls.get() + 1);
            user_code(Kind::Closure);
            if intrude && before.is_some() && log.calls.get() == 1 {
                map.remove(&fx.key(k));
                log.intruded.set(true);
            }
            val(v.n + 1, &tracker)
        },
        || {
            makes += 1;
            user_code(Kind::Closure);
            if intrude && before.is_none() {
                map.insert(fx.key(k), val(INTRUDER, &tracker));
                log.intruded.set(true);
            }
            val(7, &tracker)
        },
    );
    let expect = match (before, intrude) {
        (Some(b), false) => b + 1,
        (None, false) => 7,
        // Removed by `f`: the default goes in. Inserted by `make`: `f` updates it.
        (Some(_), true) => 7,
        (None, true) => INTRUDER + 1,
    };
    assert_eq!(r.n, expect);
    assert!(makes <= 1, "make ran {makes} times");
}

fn upsert_effect(m: &mut Model, k: u16, log: &Log, done: bool, intrude: bool) {
    let before = m.get(&k).copied();
    if log.intruded.get() {
        match before {
            Some(_) => {
                m.remove(&k);
            }
            None => {
                m.insert(k, INTRUDER);
            }
        }
    }
    if done {
        let v = match (before, intrude) {
            (Some(b), false) => b + 1,
            (None, false) => 7,
            (Some(_), true) => 7,
            (None, true) => INTRUDER + 1,
        };
        m.insert(k, v);
    }
}

#[test]
fn panicking_update_or_insert_changes_nothing() {
    for (name, k) in [
        ("update_or_insert existing", EXISTING),
        ("update_or_insert deleted", DELETED),
        ("update_or_insert missing", MISSING),
    ] {
        let case = Case {
            name,
            kinds: ALL,
            run: match k {
                EXISTING => |fx, log| upsert_case(fx, log, EXISTING, false),
                DELETED => |fx, log| upsert_case(fx, log, DELETED, false),
                _ => |fx, log| upsert_case(fx, log, MISSING, false),
            },
            effect: match k {
                EXISTING => |m, log, done| upsert_effect(m, EXISTING, log, done, false),
                DELETED => |m, log, done| upsert_effect(m, DELETED, log, done, false),
                _ => |m, log, done| upsert_effect(m, MISSING, log, done, false),
            },
        };
        inject(&case);
    }
    inject(&Case {
        name: "update_or_insert existing, removed by f",
        kinds: &[Kind::Closure],
        run: |fx, log| upsert_case(fx, log, EXISTING, true),
        effect: |m, log, done| upsert_effect(m, EXISTING, log, done, true),
    });
    inject(&Case {
        name: "update_or_insert missing, inserted by make",
        kinds: &[Kind::Closure],
        run: |fx, log| upsert_case(fx, log, MISSING, true),
        effect: |m, log, done| upsert_effect(m, MISSING, log, done, true),
    });
    inject(&Case {
        name: "pinned update_or_insert missing",
        kinds: ALL,
        run: |fx, _| {
            let tracker = fx.tracker.clone();
            let pinned = fx.map.pin();
            let r = pinned.update_or_insert_with(
                fx.key(MISSING),
                |v| {
                    user_code(Kind::Closure);
                    val(v.n + 1, &tracker)
                },
                || {
                    user_code(Kind::Closure);
                    val(7, &tracker)
                },
            );
            assert_eq!(r.n, 7);
        },
        effect: |m, log, done| upsert_effect(m, MISSING, log, done, false),
    });
}

/// `compute(k)` with a rule: 0 bumps or inserts, 1 removes, 2 keeps. With `intrude`, the first
/// call writes the key re-entrantly (overwrites a present key, inserts an absent one), so the
/// closure runs again.
fn compute_case(fx: &mut Fixture, log: &Log, k: u16, rule: u8, intrude: bool) {
    let (map, tracker) = (&fx.map, fx.tracker.clone());
    let before = fx.model.get(&k).copied();
    let r = map.compute(fx.key(k), |v| {
        log.calls.set(log.calls.get() + 1);
        if intrude && log.calls.get() == 1 {
            map.insert(fx.key(k), val(INTRUDER, &tracker));
            log.intruded.set(true);
        }
        user_code(Kind::Closure);
        match rule {
            0 => Op::Insert(val(v.map_or(7, |v| v.n + 1), &tracker)),
            1 => Op::Remove,
            _ => Op::Keep,
        }
    });
    let cur = if intrude { Some(INTRUDER) } else { before };
    let got = r.map(|v| v.n);
    let expect = match (rule, cur) {
        (0, Some(c)) => Computed::Updated { old: c, new: c + 1 },
        (0, None) => Computed::Inserted(7),
        (1, Some(c)) => Computed::Removed(c),
        (_, Some(c)) => Computed::Unchanged(c),
        (_, None) => Computed::Absent,
    };
    assert_eq!(got, expect);
    assert_eq!(log.calls.get(), 1 + usize::from(intrude));
}

fn compute_effect(m: &mut Model, k: u16, rule: u8, log: &Log, done: bool) {
    if log.intruded.get() {
        m.insert(k, INTRUDER);
    }
    if done {
        match (rule, m.get(&k).copied()) {
            (0, c) => {
                m.insert(k, c.map_or(7, |c| c + 1));
            }
            (1, _) => {
                m.remove(&k);
            }
            _ => {}
        }
    }
}

#[test]
fn panicking_compute_changes_nothing() {
    macro_rules! case {
        ($name:expr, $kinds:expr, $k:expr, $rule:expr, $intrude:expr) => {
            inject(&Case {
                name: $name,
                kinds: $kinds,
                run: |fx, log| compute_case(fx, log, $k, $rule, $intrude),
                effect: |m, log, done| compute_effect(m, $k, $rule, log, done),
            })
        };
    }
    case!("compute bump existing", ALL, EXISTING, 0, false);
    case!("compute insert missing", ALL, MISSING, 0, false);
    case!("compute insert deleted", ALL, DELETED, 0, false);
    case!("compute remove existing", ALL, EXISTING, 1, false);
    case!("compute keep existing", ALL, EXISTING, 2, false);
    case!(
        "compute bump existing, overwritten",
        &[Kind::Closure],
        EXISTING,
        0,
        true
    );
    case!(
        "compute insert missing, inserted",
        &[Kind::Closure],
        MISSING,
        0,
        true
    );
    case!(
        "compute remove existing, overwritten",
        &[Kind::Closure],
        EXISTING,
        1,
        true
    );
    inject(&Case {
        name: "pinned compute",
        kinds: ALL,
        run: |fx, _| {
            let tracker = fx.tracker.clone();
            let pinned = fx.map.pin();
            let r = pinned.compute(fx.key(MISSING), |v| {
                user_code(Kind::Closure);
                Op::Insert(val(v.map_or(7, |v| v.n + 1), &tracker))
            });
            assert!(matches!(r, Computed::Inserted(v) if v.n == 7));
        },
        effect: |m, log, done| compute_effect(m, MISSING, 0, log, done),
    });
}
