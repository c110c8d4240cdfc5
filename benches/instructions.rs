//! Instruction counts per operation, one thread, for tiermap beside its peers (not criterion).
//!
//! Each run does exactly one (map, workload) pair. The map is built and prefilled, and every
//! key/operation sequence generated, *outside* the measured function; the measured loop is one
//! `#[inline(never)]` function per workload, `measure_<workload>`, generic over the map, so that
//! `valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*measure_*'` counts that
//! loop and everything it calls (including deferred frees, epoch collections, table growth) and
//! nothing else. `scripts/callgrind.sh` runs the matrix and prints instructions per operation.
//!
//! Workloads (`N` prefilled keys, `M` operations; keys from splitmix64 with a fixed seed, the
//! same for every map; every map is created with `with_capacity(N)`):
//! * `read_hit`: `M` loads of prefilled keys, drawn uniformly at random.
//! * `read_miss`: `M` loads of keys that are not in the map.
//! * `insert_new`: `M` `load_or_store` of fresh keys (the map grows past its capacity hint).
//! * `overwrite`: `M` swaps of prefilled keys, drawn at random.
//! * `remove_insert`: `M` pairs (counted as one operation each): `load_and_delete` of a
//!   prefilled key, then `store` of the same key; keys drawn at random.
//! * `read_heavy`, `exchange`, `rapid_grow`: conc-map-bench's bustle mixes as
//!   `benches/bustle_mixes.rs` defines them (read/insert/remove/update 98/1/1/0, prefill 75%;
//!   10/40/40/10, prefill 75%; 5/80/5/10, prefill 0), capacity `N` (a power of two), `M`
//!   operations (bustle's `operations(M / N)`), bustle seed of `bustle_mixes` rep 0. The
//!   operation sequence is bustle's own: bustle 0.5 runs once, single-threaded, against a
//!   recording collection (backed by a `HashSet`, so its assertions hold), and the recorded
//!   prefill and mix are replayed on the map under test. bustle operations map to the adapter
//!   calls `bustle_mixes` uses: get → `load`, insert → `swap(k, 0)`, remove →
//!   `load_and_delete`, update → `update(k, 1)`.
//!
//! The five single-operation workloads start from the prefilled map read twice over (key by
//! key, outside the measured function, for every map): Go's steady state of keys stored once
//! and read many times, in which tiermap's keys are in the read tier.
//!
//! `scc-index` (`READ_ONLY`) runs `read_hit`, `read_miss` and `read_heavy` only (as in the
//! other benches); for any other workload it prints `skip`.
//!
//! Environment: `INSTR_MAP` (short id: `tiermap`, `papaya`, `dashmap`, `scc`, `scc-index`,
//! `rwlock`, `mutex`), `INSTR_WORKLOAD` (a name above), `INSTR_N` (default 65536), `INSTR_M`
//! (default 65536). Output: `map=.. workload=.. n=.. ops=M hits=..`; `ops` is the divisor.
//!
//! Without `INSTR_MAP` (e.g. `cargo bench` over all benches) it prints the usage and runs every
//! pair once natively at N = M = 1024 as a smoke test.
//!
//! Hashers: every map is built as its adapter's `with_capacity` builds it, but with
//! `ahash::RandomState::with_seeds` (fixed keys) instead of `RandomState::new()`: with random
//! keys the probe lengths, and so the counts, vary by up to ~0.4% between runs (tiermap
//! `insert_new`); with fixed keys a run repeats exactly. `INSTR_HASH=random` uses the adapters'
//! `with_capacity` unchanged. tiermap's background reclaimer (a thread with a 10 ms tick) also
//! makes its counts timing-dependent; `scripts/callgrind.sh` runs it off
//! (`TIERMAP_BACKGROUND_RECLAIM=0`) except in its `tiermap+bg` column.

#[macro_use]
mod common;

use std::collections::HashSet;
use std::hint::black_box;
use std::sync::{Arc, Mutex};

use common::BenchMap;

// --------------------------------------------------------------------------------------------
// Keys

/// splitmix64's output function: a bijection on `u64`, so distinct inputs give distinct keys.
#[inline]
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Key number `i` (all distinct).
fn key(i: u64) -> u64 {
    mix64(i.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(0x5eed))
}

/// splitmix64 generator, for the random draws.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }
    /// Uniform-enough index below `n` (n << 2^64).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// `M` prefilled keys drawn at random.
fn random_present(n: usize, m: usize, seed: u64) -> Vec<u64> {
    let mut r = SplitMix(seed);
    (0..m).map(|_| key(r.below(n) as u64)).collect()
}

// --------------------------------------------------------------------------------------------
// Construction with fixed hasher keys

/// `ahash` keys for every map (`INSTR_HASH=random` uses the adapters' `with_capacity`, i.e.
/// `RandomState::new()`, instead).
const HASH_SEEDS: [u64; 4] = [
    0x243f_6a88_85a3_08d3,
    0x1319_8a2e_0370_7344,
    0xa409_3822_299f_31d0,
    0x082e_fa98_ec4e_6c89,
];

/// The adapter's `with_capacity`, with `Hasher::with_seeds(HASH_SEEDS)` instead of
/// `Hasher::new()`, so that every run hashes alike and the counts repeat exactly.
trait FixedNew: BenchMap {
    fn with_capacity_fixed(cap: usize) -> Self;
}

fn fixed_hasher() -> common::Hasher {
    let [a, b, c, d] = HASH_SEEDS;
    common::Hasher::with_seeds(a, b, c, d)
}

impl FixedNew for common::Tier {
    fn with_capacity_fixed(cap: usize) -> Self {
        // `TIERMAP_BENCH_SHARDS` as in `common` (the map's own choice when unset).
        match common::tiermap_bench_shards() {
            Some(n) => tiermap::SyncMap::with_capacity_shards_and_hasher(cap, n, fixed_hasher()),
            None => tiermap::SyncMap::with_capacity_and_hasher(cap, fixed_hasher()),
        }
    }
}

impl FixedNew for common::Papaya {
    fn with_capacity_fixed(cap: usize) -> Self {
        papaya::HashMap::with_capacity_and_hasher(cap, fixed_hasher())
    }
}

impl FixedNew for common::Dash {
    fn with_capacity_fixed(cap: usize) -> Self {
        dashmap::DashMap::with_capacity_and_hasher(cap, fixed_hasher())
    }
}

impl FixedNew for common::Scc {
    fn with_capacity_fixed(cap: usize) -> Self {
        scc::HashMap::with_capacity_and_hasher(cap, fixed_hasher())
    }
}

impl FixedNew for common::SccIndex {
    fn with_capacity_fixed(cap: usize) -> Self {
        scc::HashIndex::with_capacity_and_hasher(cap, fixed_hasher())
    }
}

impl FixedNew for common::RwMap {
    fn with_capacity_fixed(cap: usize) -> Self {
        common::RwMap(
            std::collections::HashMap::with_capacity_and_hasher(cap, fixed_hasher()).into(),
        )
    }
}

impl FixedNew for common::MutexMap {
    fn with_capacity_fixed(cap: usize) -> Self {
        common::MutexMap(
            std::collections::HashMap::with_capacity_and_hasher(cap, fixed_hasher()).into(),
        )
    }
}

fn new_map<M: FixedNew>(cap: usize) -> M {
    match std::env::var("INSTR_HASH").as_deref() {
        Ok("random") => M::with_capacity(cap),
        _ => M::with_capacity_fixed(cap),
    }
}

// --------------------------------------------------------------------------------------------
// Measured loops (one per workload; never inlined, so callgrind's toggle sees each one)

/// A constant distinct per workload, so that LLVM does not merge measure functions with
/// identical bodies (read_hit/read_miss, the three mixes) under one symbol; once per run.
#[inline(always)]
fn tag(workload: &'static str) {
    black_box(workload);
}

#[inline(never)]
fn measure_read_hit<M: BenchMap>(map: &M, keys: &[u64]) -> u64 {
    tag("read_hit");
    let mut hits = 0;
    for &k in keys {
        hits += map.load(k).is_some() as u64;
    }
    hits
}

#[inline(never)]
fn measure_read_miss<M: BenchMap>(map: &M, keys: &[u64]) -> u64 {
    tag("read_miss");
    let mut hits = 0;
    for &k in keys {
        hits += map.load(k).is_some() as u64;
    }
    hits
}

#[inline(never)]
fn measure_insert_new<M: BenchMap>(map: &M, keys: &[u64]) -> u64 {
    tag("insert_new");
    let mut inserted = 0;
    for &k in keys {
        inserted += !map.load_or_store(k, k).1 as u64;
    }
    inserted
}

#[inline(never)]
fn measure_overwrite<M: BenchMap>(map: &M, keys: &[u64]) -> u64 {
    tag("overwrite");
    let mut hits = 0;
    for &k in keys {
        hits += map.swap(k, k ^ 1).is_some() as u64;
    }
    hits
}

#[inline(never)]
fn measure_remove_insert<M: BenchMap>(map: &M, keys: &[u64]) -> u64 {
    tag("remove_insert");
    let mut hits = 0;
    for &k in keys {
        hits += map.load_and_delete(k).is_some() as u64;
        map.store(k, k);
    }
    hits
}

#[inline(never)]
fn measure_read_heavy<M: BenchMap>(map: &M, ops: &[Op]) -> u64 {
    tag("read_heavy");
    replay(map, ops)
}

#[inline(never)]
fn measure_exchange<M: BenchMap>(map: &M, ops: &[Op]) -> u64 {
    tag("exchange");
    replay(map, ops)
}

#[inline(never)]
fn measure_rapid_grow<M: BenchMap>(map: &M, ops: &[Op]) -> u64 {
    tag("rapid_grow");
    replay(map, ops)
}

/// Runs a recorded bustle sequence; returns how many operations returned `true` in bustle's
/// sense (found / inserted new / removed / updated).
#[inline(always)]
fn replay<M: BenchMap>(map: &M, ops: &[Op]) -> u64 {
    let mut t = 0;
    for op in ops {
        t += match op.kind {
            Kind::Read => map.load(op.key).is_some(),
            Kind::Insert => map.swap(op.key, 0).is_none(),
            Kind::Remove => map.load_and_delete(op.key).is_some(),
            Kind::Update => map.update(op.key, 1),
        } as u64;
    }
    t
}

// --------------------------------------------------------------------------------------------
// bustle: record its operation sequence once

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Read,
    Insert,
    Remove,
    Update,
}

#[derive(Clone, Copy, Debug)]
struct Op {
    kind: Kind,
    key: u64,
    /// What the reference set returned.
    result: bool,
}

/// A `HashSet` that records every operation bustle makes, per handle.
struct Recorder(Arc<Mutex<HashSet<u64>>>);
struct RecHandle(Arc<Mutex<HashSet<u64>>>, Vec<Op>);

/// The sequences of the handles dropped so far, in drop order (prefill, then mix).
static RECORDED: Mutex<Vec<Vec<Op>>> = Mutex::new(Vec::new());

impl Drop for RecHandle {
    fn drop(&mut self) {
        RECORDED.lock().unwrap().push(std::mem::take(&mut self.1));
    }
}

impl RecHandle {
    fn rec(&mut self, kind: Kind, key: u64) -> bool {
        let mut s = self.0.lock().unwrap();
        let result = match kind {
            Kind::Read | Kind::Update => s.contains(&key),
            Kind::Insert => s.insert(key),
            Kind::Remove => s.remove(&key),
        };
        self.1.push(Op { kind, key, result });
        result
    }
}

impl bustle::Collection for Recorder {
    type Handle = RecHandle;
    fn with_capacity(capacity: usize) -> Self {
        Recorder(Arc::new(Mutex::new(HashSet::with_capacity(capacity))))
    }
    fn pin(&self) -> RecHandle {
        RecHandle(self.0.clone(), Vec::new())
    }
}

impl bustle::CollectionHandle for RecHandle {
    type Key = u64;
    fn get(&mut self, key: &u64) -> bool {
        self.rec(Kind::Read, *key)
    }
    fn insert(&mut self, key: &u64) -> bool {
        self.rec(Kind::Insert, *key)
    }
    fn remove(&mut self, key: &u64) -> bool {
        self.rec(Kind::Remove, *key)
    }
    fn update(&mut self, key: &u64) -> bool {
        self.rec(Kind::Update, *key)
    }
}

/// `bustle_mixes.rs`'s mixes: (read, insert, remove, update), prefill fraction.
fn mix_def(workload: &str) -> Option<(bustle::Mix, f64)> {
    let (read, insert, remove, update, prefill) = match workload {
        "read_heavy" => (98, 1, 1, 0, 0.75),
        "exchange" => (10, 40, 40, 10, 0.75),
        "rapid_grow" => (5, 80, 5, 10, 0.0),
        _ => return None,
    };
    let mix = bustle::Mix {
        read,
        insert,
        remove,
        update,
        upsert: 0,
    };
    Some((mix, prefill))
}

/// bustle's (prefill, mix) sequences for a mix at capacity `n` (a power of two), `m` operations.
fn record_bustle(mix: bustle::Mix, prefill: f64, n: usize, m: usize) -> (Vec<Op>, Vec<Op>) {
    assert!(
        n.is_power_of_two(),
        "INSTR_N must be a power of two for the bustle mixes"
    );
    let log2 = n.trailing_zeros() as u8;
    // bustle_mixes' seed for repetition 0.
    let mut seed = [0u8; 32];
    seed[1] = log2;
    RECORDED.lock().unwrap().clear();
    let meas = bustle::Workload::new(1, mix)
        .initial_capacity_log2(log2)
        .prefill_fraction(prefill)
        .operations(m as f64 / n as f64)
        .seed(seed)
        .run_silently::<Recorder>();
    let mut rec = std::mem::take(&mut *RECORDED.lock().unwrap());
    assert_eq!(rec.len(), 2, "expected a prefill and a mix handle");
    let ops = rec.pop().unwrap();
    let pre = rec.pop().unwrap();
    assert_eq!(ops.len() as u64, meas.total_ops);
    (pre, ops)
}

// --------------------------------------------------------------------------------------------
// One (map, workload) pair

const WORKLOADS: [&str; 8] = [
    "read_hit",
    "read_miss",
    "insert_new",
    "overwrite",
    "remove_insert",
    "read_heavy",
    "exchange",
    "rapid_grow",
];

fn read_workload(w: &str) -> bool {
    matches!(w, "read_hit" | "read_miss" | "read_heavy")
}

/// Runs `workload` on a fresh `M`; returns (operations, the measured function's result).
fn run<M: FixedNew>(workload: &str, n: usize, m: usize) -> (usize, u64) {
    let map = new_map::<M>(n);
    if let Some((mix, prefill)) = mix_def(workload) {
        let (pre, ops) = record_bustle(mix, prefill, n, m);
        for op in &pre {
            assert_eq!(op.kind, Kind::Insert);
            assert!(map.swap(op.key, 0).is_none());
        }
        let expect = ops.iter().filter(|o| o.result).count() as u64;
        let got = match workload {
            "read_heavy" => measure_read_heavy(&map, &ops),
            "exchange" => measure_exchange(&map, &ops),
            _ => measure_rapid_grow(&map, &ops),
        };
        assert_eq!(
            got,
            expect,
            "{} {workload}: results differ from bustle's",
            M::NAME
        );
        black_box(&map);
        return (ops.len(), got);
    }
    for i in 0..n as u64 {
        map.store(key(i), i);
    }
    // Warm-up, the same for every map: read each prefilled key twice, as a service reads what
    // it stored. For tiermap this is Go's steady state (the misses promote the dirty tier, so
    // the keys are in the read tier and a hit is the lock-free read-tier probe); without it,
    // the measured loop itself would pay for the first pass through the dirty tier.
    for _ in 0..2 {
        for i in 0..n as u64 {
            black_box(map.load(key(i)));
        }
    }
    let (got, expect) = match workload {
        "read_hit" => {
            let keys = random_present(n, m, 1);
            (measure_read_hit(&map, &keys), m as u64)
        }
        "read_miss" => {
            let keys: Vec<u64> = (0..m as u64).map(|i| key(n as u64 + i)).collect();
            (measure_read_miss(&map, &keys), 0)
        }
        "insert_new" => {
            let keys: Vec<u64> = (0..m as u64).map(|i| key(n as u64 + i)).collect();
            (measure_insert_new(&map, &keys), m as u64)
        }
        "overwrite" => {
            let keys = random_present(n, m, 2);
            (measure_overwrite(&map, &keys), m as u64)
        }
        "remove_insert" => {
            let keys = random_present(n, m, 3);
            (measure_remove_insert(&map, &keys), m as u64)
        }
        other => panic!("unknown workload {other:?}; one of {WORKLOADS:?}"),
    };
    assert_eq!(got, expect, "{} {workload}: wrong result count", M::NAME);
    black_box(&map);
    (m, got)
}

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(s) if !s.trim().is_empty() => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={s:?} is not a number")),
        _ => default,
    }
}

type Runner = fn(&str, usize, usize) -> (usize, u64);

fn main() {
    // Arguments (`--bench` from cargo) are ignored.
    let mut maps: Vec<(String, bool, Runner)> = Vec::new();
    for_each_map!(M => {
        maps.push((common::short_id(M::NAME), M::READ_ONLY, run::<M> as Runner));
    });
    let Ok(want) = std::env::var("INSTR_MAP") else {
        let ids: Vec<&str> = maps.iter().map(|m| m.0.as_str()).collect();
        println!(
            "usage: INSTR_MAP=<{}> INSTR_WORKLOAD=<{}> [INSTR_N=65536] [INSTR_M=65536]",
            ids.join("|"),
            WORKLOADS.join("|")
        );
        println!("(see scripts/callgrind.sh); smoke test of every pair at N = M = 1024:");
        for (id, ro, run) in &maps {
            for w in WORKLOADS {
                if !*ro || read_workload(w) {
                    run(w, 1024, 1024);
                }
            }
            println!("  {id}: ok");
        }
        return;
    };
    let workload = std::env::var("INSTR_WORKLOAD").expect("INSTR_WORKLOAD is not set");
    assert!(
        WORKLOADS.contains(&workload.as_str()),
        "unknown INSTR_WORKLOAD {workload:?}; one of {WORKLOADS:?}"
    );
    let n = env_usize("INSTR_N", 1 << 16);
    let m = env_usize("INSTR_M", 1 << 16);
    let Some((id, ro, run)) = maps.iter().find(|x| x.0.eq_ignore_ascii_case(want.trim())) else {
        let ids: Vec<&str> = maps.iter().map(|m| m.0.as_str()).collect();
        panic!("unknown INSTR_MAP {want:?}; one of {ids:?} (BENCH_MAPS may filter them)");
    };
    if *ro && !read_workload(&workload) {
        println!("map={id} workload={workload} skip");
        return;
    }
    let (ops, result) = run(&workload, n, m);
    println!("map={id} workload={workload} n={n} ops={ops} hits={result}");
}
