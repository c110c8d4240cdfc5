//! Quick measurements of `MapPool` (no criterion; a few seconds in all):
//!
//! 1. the get + return round trip, uncontended and with two threads, against a
//!    plain `Mutex<Vec<HashMap>>` pool;
//! 2. Go's scenario: the average time of a small request before and after one
//!    huge request, for `MapPool`, for `MapPool` with its ceiling turned off,
//!    and for the plain pool (which, like Go's `sync.Pool`, keeps anything);
//! 3. the two ways to bring an oversized `HashMap` back under the ceiling.
//!
//! Run with `cargo run --release --example pool_scenario`. Figures are the best
//! of a few runs, to discount noise from other work on the machine.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use tiermap::pool::{MapPool, Recycle};

type Map = HashMap<u64, u64>;

/// The obvious pool: one mutex, no ceiling, no limit on what it keeps
/// (beyond `max_idle`), clears maps on return like Go code calling `clear(m)`.
struct NaivePool {
    slots: Mutex<Vec<Map>>,
    max_idle: usize,
}

impl NaivePool {
    fn new(max_idle: usize) -> Self {
        NaivePool {
            slots: Mutex::new(Vec::new()),
            max_idle,
        }
    }

    fn get(&self) -> Map {
        let popped = self
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        popped.unwrap_or_default()
    }

    fn put(&self, mut map: Map) {
        map.clear();
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if slots.len() < self.max_idle {
            slots.push(map);
        }
    }

    fn retained_bytes(&self) -> usize {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.iter().map(Recycle::heap_bytes).sum()
    }
}

/// A pool under test, as the scenario sees it.
trait Pool: Sync {
    fn request(&self, keys: u64, salt: u64);
    fn retained_bytes(&self) -> usize;
}

impl Pool for MapPool<Map> {
    fn request(&self, keys: u64, salt: u64) {
        let mut map = self.get();
        for k in 0..keys {
            map.insert(k ^ salt, k);
        }
        black_box(&*map);
    }

    fn retained_bytes(&self) -> usize {
        self.stats().retained_bytes
    }
}

impl Pool for NaivePool {
    fn request(&self, keys: u64, salt: u64) {
        let mut map = self.get();
        for k in 0..keys {
            map.insert(k ^ salt, k);
        }
        black_box(&map);
        self.put(map);
    }

    fn retained_bytes(&self) -> usize {
        NaivePool::retained_bytes(self)
    }
}

/// Nanoseconds per call over `iters` calls to `f`.
fn per_call_ns(iters: u64, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed().as_nanos() as f64 / iters as f64
}

/// Average nanoseconds of a small request (10 keys), running up to `max`
/// requests or for at most `budget`.
fn small_request_ns(pool: &dyn Pool, max: u64, budget: Duration) -> f64 {
    let start = Instant::now();
    let mut done = 0;
    while done < max && (done < 100 || start.elapsed() < budget) {
        pool.request(10, done);
        done += 1;
    }
    start.elapsed().as_nanos() as f64 / done as f64
}

/// Nanoseconds per round trip with two threads sharing the pool.
fn contended_ns(iters: u64, round_trip: impl Fn() + Sync) -> f64 {
    let start = Instant::now();
    thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..iters {
                    round_trip();
                }
            });
        }
    });
    start.elapsed().as_nanos() as f64 / (2 * iters) as f64
}

fn main() {
    const ROUND_TRIPS: u64 = 1_000_000;
    const HUGE_KEYS: u64 = 1_000_000;

    println!("== get + return round trip (HashMap<u64, u64>, empty) ==");
    let pool: MapPool<Map> = MapPool::new();
    let naive = NaivePool::new(64);
    let mut pooled_ns = f64::INFINITY;
    let mut naive_ns = f64::INFINITY;
    // Interleave the two, so that both see the same machine load.
    for _ in 0..5 {
        pooled_ns = pooled_ns.min(per_call_ns(ROUND_TRIPS, || {
            black_box(&*pool.get());
        }));
        naive_ns = naive_ns.min(per_call_ns(ROUND_TRIPS, || {
            let map = naive.get();
            black_box(&map);
            naive.put(map);
        }));
    }
    println!("MapPool:           {pooled_ns:6.1} ns");
    println!("Mutex<Vec<_>> pool: {naive_ns:6.1} ns");
    println!("ratio MapPool / Mutex<Vec<_>>: {:.2}", pooled_ns / naive_ns);

    let mut pool_2t = f64::INFINITY;
    let mut naive_2t = f64::INFINITY;
    for _ in 0..3 {
        pool_2t = pool_2t.min(contended_ns(ROUND_TRIPS / 2, || {
            black_box(&*pool.get());
        }));
        naive_2t = naive_2t.min(contended_ns(ROUND_TRIPS / 2, || {
            let map = naive.get();
            black_box(&map);
            naive.put(map);
        }));
    }
    println!(
        "two threads: MapPool {pool_2t:.1} ns, Mutex<Vec<_>> pool {naive_2t:.1} ns, ratio {:.2}",
        pool_2t / naive_2t
    );

    println!();
    println!("== Go scenario: small requests (10 keys) before and after one huge request ({HUGE_KEYS} keys) ==");
    let pools: Vec<(&str, Arc<dyn Pool>)> = vec![
        (
            "MapPool, ceiling 1024",
            Arc::new(MapPool::<Map>::builder().capacity_ceiling(1024).build()),
        ),
        (
            "MapPool, no ceiling",
            Arc::new(MapPool::<Map>::builder().capacity_ceiling(None).build()),
        ),
        ("Mutex<Vec<_>> pool (Go)", Arc::new(NaivePool::new(64))),
    ];
    for (name, pool) in &pools {
        let pool = &**pool;
        small_request_ns(pool, 2_000, Duration::from_millis(50)); // warm up
        let before = (0..3)
            .map(|_| small_request_ns(pool, 20_000, Duration::from_millis(50)))
            .fold(f64::INFINITY, f64::min);
        pool.request(HUGE_KEYS, 0);
        let after = (0..3)
            .map(|_| small_request_ns(pool, 20_000, Duration::from_millis(100)))
            .fold(f64::INFINITY, f64::min);
        println!(
            "{name:24} before {before:9.0} ns, after {after:9.0} ns, ratio {:7.2}, retained {} KiB",
            after / before,
            pool.retained_bytes() / 1024
        );
    }

    println!();
    println!("== bringing a HashMap of {HUGE_KEYS} entries back to 1024 slots ==");
    let mut clear_shrink = f64::INFINITY;
    let mut replace = f64::INFINITY;
    for _ in 0..3 {
        for strategy in 0..2 {
            let mut map: Map = (0..HUGE_KEYS).map(|k| (k, k)).collect();
            let start = Instant::now();
            if strategy == 0 {
                map.clear();
                map.shrink_to(1024);
            } else {
                map = HashMap::with_capacity(1024);
            }
            let ns = start.elapsed().as_nanos() as f64;
            black_box(&map);
            if strategy == 0 {
                clear_shrink = clear_shrink.min(ns);
            } else {
                replace = replace.min(ns);
            }
        }
    }
    println!("clear + shrink_to:        {:8.1} us", clear_shrink / 1e3);
    println!("replace (what Recycle does): {:5.1} us", replace / 1e3);
    println!("ratio: {:.1}", clear_shrink / replace);
}
