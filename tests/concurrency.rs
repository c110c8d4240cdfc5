//! Concurrency tests on 2-4 threads, with invariants checked at the end.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use tiermap::SyncMap;

const N: u64 = if cfg!(miri) { 200 } else { 20_000 };

/// Values carry a checksum so that a torn or mixed-up value is detected.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Checked {
    key: u64,
    seq: u64,
    sum: u64,
}

impl Checked {
    fn new(key: u64, seq: u64) -> Self {
        Checked {
            key,
            seq,
            sum: key.wrapping_mul(31) ^ seq.rotate_left(17),
        }
    }
    fn check(&self, key: u64) {
        assert_eq!(self.key, key, "value stored under another key");
        assert_eq!(
            self.sum,
            self.key.wrapping_mul(31) ^ self.seq.rotate_left(17),
            "torn"
        );
    }
}

#[test]
fn no_lost_update_on_disjoint_keys() {
    let map = Arc::new(SyncMap::new());
    let threads = 4;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads as u64)
        .map(|t| {
            let map = map.clone();
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                for i in 0..N {
                    let k = i * threads as u64 + t;
                    map.insert(k, Checked::new(k, 0));
                    if i % 3 == 0 {
                        map.remove(&k);
                    } else if i % 3 == 1 {
                        map.insert(k, Checked::new(k, 1));
                    }
                    if i % 7 == 0 {
                        if let Some(v) = map.get(&(i * threads as u64 + (t + 1) % threads as u64)) {
                            v.check(i * threads as u64 + (t + 1) % threads as u64);
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let mut expected = 0;
    for t in 0..threads as u64 {
        for i in 0..N {
            let k = i * threads as u64 + t;
            let got = map.get_cloned(&k);
            match i % 3 {
                0 => assert!(got.is_none(), "key {k} should be removed"),
                1 => {
                    expected += 1;
                    assert_eq!(got, Some(Checked::new(k, 1)), "key {k}")
                }
                _ => {
                    expected += 1;
                    assert_eq!(got, Some(Checked::new(k, 0)), "key {k}")
                }
            }
        }
    }
    assert_eq!(map.len(), expected);
    assert_eq!(map.stats().len, expected);
}

#[test]
fn iteration_yields_no_duplicates_under_churn() {
    let map = Arc::new(SyncMap::new());
    for k in 0..1000u64 {
        map.insert(k, Checked::new(k, 0));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2u64)
        .map(|t| {
            let map = map.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let k = (seq * 7 + t) % 3000;
                    match seq % 4 {
                        0 => {
                            map.remove(&k);
                        }
                        1 => {
                            map.get_or_insert(k, Checked::new(k, seq));
                        }
                        _ => {
                            map.insert(k, Checked::new(k, seq));
                        }
                    }
                }
            })
        })
        .collect();
    let rounds = if cfg!(miri) { 2 } else { 200 };
    for _ in 0..rounds {
        let m = map.pin();
        let mut seen = HashSet::new();
        for (k, v) in m.iter() {
            v.check(*k);
            assert!(seen.insert(*k), "key {k} yielded twice");
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let n = map.pin().iter().count();
    assert_eq!(n, map.len());
}

#[test]
fn get_or_insert_with_one_winner_per_key() {
    let map = Arc::new(SyncMap::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let threads = 4;
    let barrier = Arc::new(Barrier::new(threads));
    let keys = if cfg!(miri) { 20 } else { 2000 };
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (map, calls, barrier) = (map.clone(), calls.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                let mut won = Vec::new();
                for k in 0..keys {
                    let r = map.get_or_insert_with(k, || {
                        calls.fetch_add(1, Ordering::Relaxed);
                        t
                    });
                    if r.is_inserted() {
                        assert_eq!(*r.into_inner(), t);
                        won.push(k);
                    }
                }
                won
            })
        })
        .collect();
    let mut winners = HashSet::new();
    for h in handles {
        for k in h.join().unwrap() {
            assert!(winners.insert(k), "two threads inserted key {k}");
        }
    }
    assert_eq!(winners.len(), keys);
    assert!(calls.load(Ordering::Relaxed) >= keys);
    assert!(calls.load(Ordering::Relaxed) <= keys * threads);
    assert_eq!(map.len(), keys);
}

#[test]
fn compare_exchange_counter_has_no_lost_increment() {
    let map = Arc::new(SyncMap::new());
    map.insert("c", 0u64);
    let threads = 3;
    let per = if cfg!(miri) { 50 } else { 5000 };
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let map = map.clone();
            thread::spawn(move || {
                for _ in 0..per {
                    loop {
                        let cur = map.get_cloned("c").unwrap();
                        if map.compare_exchange("c", &cur, cur + 1).is_ok() {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(map.get_cloned("c"), Some(threads * per));
}

#[test]
fn clear_and_release_while_readers_hold_refs() {
    let map = Arc::new(SyncMap::new());
    for k in 0..1000u64 {
        map.insert(k, Checked::new(k, 0));
    }
    let barrier = Arc::new(Barrier::new(2));
    let reader = {
        let (map, barrier) = (map.clone(), barrier.clone());
        thread::spawn(move || {
            let r = map.get(&5).unwrap();
            barrier.wait(); // hold the ref while the other thread clears
            barrier.wait();
            r.check(5); // still valid
        })
    };
    barrier.wait();
    let released = map.clear_and_release();
    // The reader's guard was pinned before the call: the old tables must wait for it.
    assert!(released.pending_bytes > 0, "{released}");
    barrier.wait();
    reader.join().unwrap();
    assert!(map.is_empty());
    // Once the reader's guard is gone, everything can be reclaimed.
    let start = std::time::Instant::now();
    while map.reclaim() != 0 && start.elapsed().as_secs() < 10 {
        thread::yield_now();
    }
    assert_eq!(map.stats().retired_bytes, 0);
}
