//! The `rayon` feature: parallel iteration (`Pinned::par_iter`, `SyncMap::par_for_each`) and
//! parallel collection (`FromParallelIterator`, `ParallelExtend`), each run in rayon pools of
//! 2 and 4 threads.
#![cfg(feature = "rayon")]

use std::collections::{BTreeMap, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use tiermap::SyncMap;

/// Keys put in the read tier, then in the dirty tier, by `two_tier_map`.
const READ_KEYS: u64 = if cfg!(miri) { 300 } else { 20_000 };
const DIRTY_KEYS: u64 = if cfg!(miri) { 100 } else { 5_000 };

/// Runs `f` inside rayon pools of 2 and 4 threads.
fn in_pools(f: impl Fn(usize) + Sync) {
    for threads in [2, 4] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| f(threads));
    }
}

/// A map whose keys `0..READ_KEYS` are in the read tier and `READ_KEYS..+DIRTY_KEYS` only in
/// the dirty tier, with every third read-tier key removed (a deleted entry that iteration must
/// skip). Returns the map and the keys present.
fn two_tier_map<V: Send + Sync + 'static>(value: impl Fn(u64) -> V) -> (SyncMap<u64, V>, Vec<u64>) {
    // One shard, never split (an explicit shard count): the promotions counted below are the
    // one tier pair's (a map built empty is split into several shards as it grows, and each
    // shard promotes on its own; `split_map_par_iter_sees_every_key_once` covers that).
    let map = SyncMap::with_capacity_shards_and_hasher(0, 1, std::hash::RandomState::new());
    for k in 0..READ_KEYS {
        map.insert(k, value(k));
    }
    // Iteration promotes: the read tier now holds every key, and there is no dirty tier.
    assert_eq!(map.pin().iter().count() as u64, READ_KEYS);
    for k in READ_KEYS..READ_KEYS + DIRTY_KEYS {
        map.insert(k, value(k));
    }
    for k in (0..READ_KEYS).step_by(3) {
        assert!(map.remove(&k).is_some());
    }
    let stats = map.stats();
    assert!(
        stats.read_capacity > 0 && stats.dirty_capacity > 0,
        "{stats}"
    );
    let present = (0..READ_KEYS + DIRTY_KEYS)
        .filter(|k| *k >= READ_KEYS || k % 3 != 0)
        .collect();
    (map, present)
}

/// Counts per key, failing on a key seen twice.
fn exactly_once(keys: impl IntoIterator<Item = u64>, expected: &[u64], what: &str) {
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for k in keys {
        *seen.entry(k).or_default() += 1;
    }
    for (k, n) in &seen {
        assert_eq!(*n, 1, "{what}: key {k} seen {n} times");
    }
    let mut keys: Vec<u64> = seen.into_keys().collect();
    keys.sort_unstable();
    assert_eq!(keys.len(), expected.len(), "{what}: wrong number of keys");
    assert_eq!(keys, expected, "{what}: wrong keys");
}

#[test]
fn par_iter_sees_every_key_once_across_both_tiers() {
    in_pools(|threads| {
        // Inline values (no drop glue) and boxed ones (`String`) take different paths.
        let (map, present) = two_tier_map(|k| k * 10);
        let promotions = map.stats().promotions;
        let m = map.pin();
        let seen: Vec<(u64, u64)> = m.par_iter().map(|(k, v)| (*k, *v)).collect();
        // The dirty-only keys were reached because starting the iteration promoted.
        assert_eq!(map.stats().promotions, promotions + 1, "{threads} threads");
        for (k, v) in &seen {
            assert_eq!(*v, k * 10);
        }
        exactly_once(seen.iter().map(|(k, _)| *k), &present, "par_iter");
        // Again on the promoted tier, through `IntoParallelIterator for &Pinned`.
        let keys: Vec<u64> = (&m).into_par_iter().map(|(k, _)| *k).collect();
        exactly_once(keys, &present, "into_par_iter");
        drop(m);

        let (map, present) = two_tier_map(|k| k.to_string());
        let keys = Mutex::new(Vec::new());
        map.par_for_each(|k, v| {
            assert_eq!(*v, k.to_string());
            keys.lock().unwrap().push(*k);
        });
        exactly_once(keys.into_inner().unwrap(), &present, "par_for_each");
        // A consumer that stops early stops the walk (and is still correct about what it saw).
        let m = map.pin();
        let hit = m.par_iter().find_any(|(k, _)| **k == READ_KEYS + 1);
        let hit = hit.map(|(k, v)| (*k, v.clone()));
        assert_eq!(hit, Some((READ_KEYS + 1, (READ_KEYS + 1).to_string())));
        assert!(m.par_iter().all(|(k, v)| *v == k.to_string()));
    });
}

#[test]
fn par_iter_on_empty_and_tiny_maps() {
    in_pools(|_| {
        let map: SyncMap<u64, u64> = SyncMap::new();
        assert_eq!(map.pin().par_iter().count(), 0);
        map.insert(1, 1);
        // Only in the dirty tier: the iteration promotes it.
        assert_eq!(map.pin().par_iter().count(), 1);
        map.clear();
        assert_eq!(map.pin().par_iter().count(), 0);
    });
}

#[test]
fn par_iter_spreads_over_the_pool() {
    // The first item's closure waits until another worker has produced an item: that happens
    // only if the iterator split its slots and another worker stole a piece.
    in_pools(|threads| {
        let (map, present) = two_tier_map(|k| k);
        let seen_by = Mutex::new(Vec::new());
        let first = AtomicBool::new(true);
        let others = AtomicUsize::new(0);
        let me = AtomicUsize::new(usize::MAX);
        let deadline = Instant::now() + Duration::from_secs(20);
        let count = AtomicUsize::new(0);
        map.par_for_each(|_, _| {
            count.fetch_add(1, Ordering::Relaxed);
            let idx = rayon::current_thread_index().expect("runs in the pool");
            seen_by.lock().unwrap().push(idx);
            if first.swap(false, Ordering::AcqRel) {
                me.store(idx, Ordering::Release);
                while others.load(Ordering::Acquire) == 0 && Instant::now() < deadline {
                    thread::yield_now();
                }
            } else if me.load(Ordering::Acquire) != idx {
                others.fetch_add(1, Ordering::Release);
            }
        });
        assert_eq!(count.into_inner(), present.len());
        let mut idx = seen_by.into_inner().unwrap();
        idx.sort_unstable();
        idx.dedup();
        assert!(idx.len() >= 2, "{threads} threads, only {idx:?} worked");
    });
}

/// Values of the concurrent test: the key and a version, checked on every read.
fn versioned(key: u64, version: u64) -> String {
    format!("{key}:{version}")
}

fn check_versioned(key: u64, value: &str, max_version: u64) {
    let (k, v) = value.split_once(':').expect("a value of the map");
    assert_eq!(
        k.parse::<u64>().unwrap(),
        key,
        "value of another key: {value}"
    );
    assert!(
        v.parse::<u64>().unwrap() < max_version,
        "a value never written: {value}"
    );
}

#[test]
fn par_iter_with_a_concurrent_writer() {
    const STABLE: u64 = if cfg!(miri) { 100 } else { 5_000 };
    const VOLATILE: u64 = if cfg!(miri) { 100 } else { 5_000 };
    const VERSIONS: u64 = 8;
    const ROUNDS: u64 = if cfg!(miri) { 3 } else { 40 };
    in_pools(|threads| {
        let map: Arc<SyncMap<u64, String>> = Arc::new(SyncMap::new());
        for k in 0..STABLE {
            map.insert(k, versioned(k, 0));
        }
        let done = Arc::new(AtomicBool::new(false));
        // Replaces the stable keys' values (they stay present), inserts and removes volatile
        // keys, and churns fresh keys so that migrations, promotions and compactions retire
        // tiers and values while the iterations read them.
        let writer = {
            let map = map.clone();
            let done = done.clone();
            thread::spawn(move || {
                let mut fresh = STABLE + VOLATILE;
                for round in 0..ROUNDS {
                    for i in 0..VOLATILE {
                        let v = (round + i) % VERSIONS;
                        map.insert(i % STABLE, versioned(i % STABLE, v));
                        let k = STABLE + i;
                        if (round + i) % 2 == 0 {
                            map.insert(k, versioned(k, v));
                        } else {
                            map.remove(&k);
                        }
                        if i % 4 == 0 {
                            map.insert(fresh, versioned(fresh, v));
                            map.remove(&(fresh - 8));
                            fresh += 1;
                        }
                    }
                }
                done.store(true, Ordering::Release);
            })
        };
        let mut iterations = 0;
        loop {
            let finished = done.load(Ordering::Acquire);
            let m = map.pin();
            let seen: Vec<u64> = m
                .par_iter()
                .map(|(k, v)| {
                    check_versioned(*k, v, VERSIONS);
                    *k
                })
                .collect();
            let mut sorted = seen.clone();
            sorted.sort_unstable();
            let len = sorted.len();
            sorted.dedup();
            assert_eq!(sorted.len(), len, "{threads} threads: a key seen twice");
            // The stable keys are present throughout: each is seen.
            let stable = sorted.iter().take_while(|k| **k < STABLE).count() as u64;
            assert_eq!(stable, STABLE, "{threads} threads: a stable key missed");
            iterations += 1;
            if finished {
                break;
            }
        }
        writer.join().unwrap();
        assert!(iterations >= 1);
    });
}

#[test]
fn collect_and_extend_round_trip() {
    const N: u64 = if cfg!(miri) { 200 } else { 20_000 };
    in_pools(|threads| {
        let mut model: BTreeMap<u64, String> = (0..N).map(|k| (k * 7, k.to_string())).collect();
        let mut map: SyncMap<u64, String> = model.clone().into_par_iter().collect();
        let contents = |map: &SyncMap<u64, String>| -> BTreeMap<u64, String> {
            let m = map.pin();
            let pairs: Vec<(u64, String)> = m.par_iter().map(|(k, v)| (*k, v.clone())).collect();
            assert_eq!(pairs.len(), map.len(), "{threads} threads");
            pairs.into_iter().collect()
        };
        assert_eq!(contents(&map), model);

        // Extend with new keys and with keys already present (each once in the batch).
        let batch: Vec<(u64, String)> = (N / 2..N + N / 2)
            .map(|k| (k * 7, format!("x{k}")))
            .collect();
        model.extend(batch.iter().cloned());
        map.par_extend(batch.into_par_iter());
        assert_eq!(contents(&map), model);
        assert_eq!(map.len(), model.len());

        // A key repeated in the batch keeps one of its values.
        map.par_extend((0..N).into_par_iter().map(|i| (1, format!("dup{}", i % 3))));
        let v = map.get_cloned(&1).unwrap();
        assert!(["dup0", "dup1", "dup2"].contains(&v.as_str()), "{v}");
        model.insert(1, v);
        assert_eq!(contents(&map), model);

        // Map to map, with another hasher.
        let copy: SyncMap<u64, String, ahash::RandomState> =
            map.pin().par_iter().map(|(k, v)| (*k, v.clone())).collect();
        assert_eq!(
            copy.pin()
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect::<BTreeMap<_, _>>(),
            model
        );
    });
}

/// A value that counts the live copies of itself.
struct Tracked {
    key: u64,
    live: Arc<AtomicIsize>,
}

impl Tracked {
    fn new(key: u64, live: &Arc<AtomicIsize>) -> Self {
        live.fetch_add(1, Ordering::Relaxed);
        Tracked {
            key,
            live: live.clone(),
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

#[test]
fn panicking_closures_leave_the_map_usable() {
    const N: u64 = if cfg!(miri) { 200 } else { 10_000 };
    in_pools(|threads| {
        let live = Arc::new(AtomicIsize::new(0));
        let (map, present) = two_tier_map(|k| Tracked::new(k, &live));
        let calls = AtomicUsize::new(0);
        let r = catch_unwind(AssertUnwindSafe(|| {
            map.par_for_each(|k, v| {
                calls.fetch_add(1, Ordering::Relaxed);
                assert_eq!(v.key, *k);
                // Several panicking calls (one under Miri, where unwinding costs minutes).
                if k % 97 == 1 && (!cfg!(miri) || *k == 1) {
                    panic!("boom at {k}");
                }
            })
        }));
        assert!(r.is_err(), "{threads} threads: the panic was not resumed");
        assert!(calls.into_inner() >= 1);

        // Nothing lost, and every operation still works.
        assert_eq!(map.len(), present.len());
        let keys: Vec<u64> = map.pin().par_iter().map(|(k, _)| *k).collect();
        exactly_once(keys, &present, "after the panic");
        map.insert(u64::MAX, Tracked::new(u64::MAX, &live));
        assert!(map.remove(&2).is_some());
        assert_eq!(map.get(&u64::MAX).map(|v| v.key), Some(u64::MAX));

        // A panic while producing the pairs of `par_extend`: what was inserted stays.
        let mut map2: SyncMap<u64, Tracked> = SyncMap::new();
        let r = catch_unwind(AssertUnwindSafe(|| {
            map2.par_extend((0..N).into_par_iter().map(|k| {
                if k == N / 2 {
                    panic!("boom");
                }
                (k, Tracked::new(k, &live))
            }))
        }));
        assert!(r.is_err());
        let inserted = map2.len();
        assert!(inserted < N as usize);
        assert_eq!(map2.pin().par_iter().count(), inserted);
        map2.par_extend((0..N).into_par_iter().map(|k| (k, Tracked::new(k, &live))));
        assert_eq!(map2.len(), N as usize);

        // Every value is dropped once, by the maps (after their grace periods).
        drop(map);
        drop(map2);
        assert_eq!(live.load(Ordering::Relaxed), 0, "{threads} threads");
    });
}

#[test]
fn clear_ends_a_parallel_iteration() {
    in_pools(|threads| {
        let (map, present) = two_tier_map(|k| k);
        let claimed = AtomicBool::new(false);
        let cleared = AtomicBool::new(false);
        let calls = AtomicUsize::new(0);
        let after_clear = AtomicUsize::new(0);
        map.par_for_each(|_, _| {
            calls.fetch_add(1, Ordering::Relaxed);
            if cleared.load(Ordering::Acquire) {
                after_clear.fetch_add(1, Ordering::Relaxed);
            } else if !claimed.swap(true, Ordering::Relaxed) {
                map.clear();
                // Published only once the clear is done: a worker that sees it checks the
                // generation again before its next item, and stops.
                cleared.store(true, Ordering::Release);
            }
        });
        // Each worker may still deliver the one item whose check preceded the clear.
        let after = after_clear.into_inner();
        assert!(
            after <= threads,
            "{threads} threads: {after} items after the clear"
        );
        assert!(calls.into_inner() < present.len());
        assert!(map.is_empty());
    });
}
