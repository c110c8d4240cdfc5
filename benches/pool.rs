//! `tiermap::pool::MapPool` against other pools (not criterion): prints markdown tables.
//!
//! 1. **Round trip.** `get` + return of a `HashMap<u64, u64>` that is used for one insert (so
//!    that every pool has to clear it), per thread count; ns per round trip (wall time divided
//!    by all round trips of all threads). Pools: `MapPool` (default builder), `Mutex<Vec<_>>`,
//!    `lockfree_object_pool::LinearObjectPool` (reset closure clears), `object_pool::Pool`
//!    (cleared by the caller before the guard drops, as its docs leave to the user).
//! 2. **Go's pool scenario** (the `fmt` buffer problem, `sync.Pool` keeps what you put back):
//!    small requests (16 entries each) before and after one huge request (1e6 entries), one
//!    thread. Reported: median ns per small request before and after (1,001 requests each,
//!    each timed), and the capacity the pool retains after the huge request. `MapPool` runs with its default
//!    ceiling and with the ceiling turned off (`capacity_ceiling(None)`, Go-like).
//!
//! Environment: `BENCH_THREADS` (default `1,2,4`), `POOL_ROUNDS` (round trips per thread,
//! default 2,000,000), `POOL_SCENARIO=0` skips part 2, `POOL_ONLY=<pool>` runs only `POOL_ROUNDS`
//! round trips of one pool on one thread (for callgrind; see `only`).
//! Run: `cargo bench --bench pool` (about a minute).

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Barrier, Mutex};
use std::time::Instant;

use tiermap::pool::MapPool;

type Map = HashMap<u64, u64>;

/// What the benchmarks need from a pool of maps.
trait Pool: Sync {
    const NAME: &'static str;
    /// Borrows a map, lets `f` use it, gives it back (cleared: by the pool or by the caller).
    fn with<R>(&self, f: impl FnOnce(&mut Map) -> R) -> R;
    /// Capacity of the maps the pool holds idle now, if it can tell (summed).
    fn retained_capacity(&self) -> Option<usize>;
}

/// tiermap's pool; `TierPool<false>` is the same pool built without a capacity ceiling (Go's
/// behaviour, for the scenario).
struct TierPool<const CEILING: bool>(MapPool<Map>);
type TierPoolNoCeiling = TierPool<false>;

impl<const CEILING: bool> Pool for TierPool<CEILING> {
    const NAME: &'static str = if CEILING {
        "tiermap MapPool"
    } else {
        "tiermap MapPool, no ceiling"
    };
    #[inline]
    fn with<R>(&self, f: impl FnOnce(&mut Map) -> R) -> R {
        let mut g = self.0.get();
        f(&mut g)
    }
    fn retained_capacity(&self) -> Option<usize> {
        Some(idle_capacity(&self.0))
    }
}

/// Sum of the idle maps' capacities: take every idle map out, look, put them back.
fn idle_capacity(p: &MapPool<Map>) -> usize {
    let idle = p.stats().idle;
    let guards: Vec<_> = (0..idle).map(|_| p.get()).collect();
    guards.iter().map(|g| g.capacity()).sum()
}

struct MutexVec(Mutex<Vec<Map>>);

impl Pool for MutexVec {
    const NAME: &'static str = "Mutex<Vec<_>>";
    #[inline]
    fn with<R>(&self, f: impl FnOnce(&mut Map) -> R) -> R {
        let mut m = self.0.lock().unwrap().pop().unwrap_or_default();
        let r = f(&mut m);
        m.clear();
        self.0.lock().unwrap().push(m);
        r
    }
    fn retained_capacity(&self) -> Option<usize> {
        Some(self.0.lock().unwrap().iter().map(|m| m.capacity()).sum())
    }
}

struct LockFree(lockfree_object_pool::LinearObjectPool<Map>);

impl Pool for LockFree {
    const NAME: &'static str = "lockfree-object-pool (linear)";
    #[inline]
    fn with<R>(&self, f: impl FnOnce(&mut Map) -> R) -> R {
        let mut g = self.0.pull();
        f(&mut g)
    }
    fn retained_capacity(&self) -> Option<usize> {
        None
    }
}

struct ObjectPool(object_pool::Pool<Map>);

impl Pool for ObjectPool {
    const NAME: &'static str = "object-pool";
    #[inline]
    fn with<R>(&self, f: impl FnOnce(&mut Map) -> R) -> R {
        let mut g = self.0.pull(Map::new);
        let r = f(&mut g);
        g.clear();
        r
    }
    fn retained_capacity(&self) -> Option<usize> {
        let mut out = Vec::new();
        while let Some(g) = self.0.try_pull() {
            out.push(g);
        }
        Some(out.iter().map(|g| g.capacity()).sum())
    }
}

fn new_tier() -> TierPool<true> {
    TierPool(MapPool::new())
}
fn new_tier_no_ceiling() -> TierPoolNoCeiling {
    TierPool(MapPool::builder().capacity_ceiling(None).build())
}
fn new_mutex() -> MutexVec {
    MutexVec(Mutex::new(Vec::new()))
}
fn new_lockfree() -> LockFree {
    LockFree(lockfree_object_pool::LinearObjectPool::new(
        Map::new,
        |m: &mut Map| m.clear(),
    ))
}
fn new_object_pool() -> ObjectPool {
    ObjectPool(object_pool::Pool::new(0, Map::new))
}

/// ns per round trip with `threads` threads, `rounds` each.
fn round_trip<P: Pool>(pool: &P, threads: usize, rounds: u64) -> f64 {
    let barrier = Barrier::new(threads);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    // Warm the pool and this thread's caches.
                    for i in 0..1000u64 {
                        pool.with(|m| m.insert(i, i));
                    }
                    barrier.wait();
                    let start = Instant::now();
                    for i in 0..rounds {
                        pool.with(|m| black_box(m.insert(i ^ t as u64, i)));
                    }
                    (start, Instant::now())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let start = spans.iter().map(|s| s.0).min().unwrap();
    let end = spans.iter().map(|s| s.1).max().unwrap();
    (end - start).as_nanos() as f64 / (rounds * threads as u64) as f64
}

fn small_request(m: &mut Map, seed: u64) {
    for k in 0..16 {
        m.insert(seed * 16 + k, k);
    }
    black_box(m.len());
}

/// Median ns of each of `n` small requests (the median shrugs off scheduler preemptions on a
/// shared machine).
fn small_requests<P: Pool>(pool: &P, n: u64) -> f64 {
    let mut v: Vec<u64> = (0..n)
        .map(|i| {
            let t = Instant::now();
            pool.with(|m| small_request(m, i));
            t.elapsed().as_nanos() as u64
        })
        .collect();
    v.sort_unstable();
    v[v.len() / 2] as f64
}

/// Go's scenario: (median ns per small request before, after the huge one, retained capacity
/// after).
fn go_scenario<P: Pool>(pool: &P) -> (f64, f64, Option<usize>) {
    const SMALL: u64 = 1001;
    small_requests(pool, SMALL);
    let before = small_requests(pool, SMALL);
    // One huge request.
    pool.with(|m| {
        for k in 0..1_000_000u64 {
            m.insert(k, k);
        }
    });
    let after = small_requests(pool, SMALL);
    (before, after, pool.retained_capacity())
}

fn thread_counts() -> Vec<usize> {
    match std::env::var("BENCH_THREADS") {
        Ok(s) if !s.trim().is_empty() => {
            s.split(',').filter_map(|t| t.trim().parse().ok()).collect()
        }
        _ => vec![1, 2, 4],
    }
}

macro_rules! each_pool {
    ($f:ident) => {{
        $f(TierPool::<true>::NAME, &new_tier);
        $f(TierPoolNoCeiling::NAME, &new_tier_no_ceiling);
        $f(MutexVec::NAME, &new_mutex);
        $f(LockFree::NAME, &new_lockfree);
        $f(ObjectPool::NAME, &new_object_pool);
    }};
}

/// `POOL_ONLY=<pool>`: runs `rounds` round trips of one pool on the main thread and nothing
/// else, for instruction counts under callgrind. Run it twice with different `POOL_ROUNDS` and
/// divide the difference of the totals by the difference of the rounds: startup and warm-up
/// cancel out (see `docs/DESIGN.md`, MapPool, and BENCHMARKS.md section 5).
fn only<P: Pool>(pool: &P, rounds: u64) {
    for i in 0..1000u64 {
        pool.with(|m| m.insert(i, i));
    }
    for i in 0..rounds {
        pool.with(|m| black_box(m.insert(i, i)));
    }
}

fn main() {
    let threads = thread_counts();
    let rounds: u64 = std::env::var("POOL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000);
    if let Ok(name) = std::env::var("POOL_ONLY") {
        match name.as_str() {
            "tiermap" => only(&new_tier(), rounds),
            "tiermap-no-ceiling" => only(&new_tier_no_ceiling(), rounds),
            "mutex" => only(&new_mutex(), rounds),
            "lockfree" => only(&new_lockfree(), rounds),
            "object-pool" => only(&new_object_pool(), rounds),
            other => panic!(
                "POOL_ONLY={other}: one of tiermap, tiermap-no-ceiling, mutex, lockfree, object-pool"
            ),
        }
        return;
    }

    println!("### Pool round trip: get, one insert, return (ns per round trip; lower is better)");
    println!();
    let mut head = String::from("| pool |");
    let mut rule = String::from("|---|");
    for t in &threads {
        head += &format!(" {t} thr |");
        rule += "---:|";
    }
    println!("{head}");
    println!("{rule}");
    fn row<P: Pool>(name: &str, make: &dyn Fn() -> P, threads: &[usize], rounds: u64) {
        let mut r = format!("| {name} |");
        for &t in threads {
            // Median of 3 runs on fresh pools.
            let mut v: Vec<f64> = (0..3).map(|_| round_trip(&make(), t, rounds)).collect();
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            r += &format!(" {:.1} |", v[1]);
        }
        println!("{r}");
    }
    row(TierPool::<true>::NAME, &new_tier, &threads, rounds);
    row(
        TierPoolNoCeiling::NAME,
        &new_tier_no_ceiling,
        &threads,
        rounds,
    );
    row(MutexVec::NAME, &new_mutex, &threads, rounds);
    row(LockFree::NAME, &new_lockfree, &threads, rounds);
    row(ObjectPool::NAME, &new_object_pool, &threads, rounds);

    if std::env::var("POOL_SCENARIO").is_ok_and(|v| v == "0") {
        return;
    }
    println!();
    println!("### Go's pool scenario: 16-entry requests before and after one 1e6-entry request (one thread)");
    println!();
    println!("| pool | median ns / small request before | after | idle capacity retained after |");
    println!("|---|---:|---:|---:|");
    fn scen<P: Pool>(name: &str, make: &dyn Fn() -> P) {
        let p = make();
        let (b, a, cap) = go_scenario(&p);
        let cap = cap.map_or("not observable".to_string(), |c| c.to_string());
        println!("| {name} | {b:.0} | {a:.0} | {cap} |");
    }
    each_pool!(scen);
}
