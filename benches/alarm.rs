//! What the retention alarm (and the metrics publisher) cost: the write path and a read hit,
//! with the hook empty and with it set.
//!
//! * `write/*`: one new-key insert and one remove per iteration on a map kept at 10 000 live
//!   keys (every insert takes the slow path; so do removes of keys not yet promoted), the
//!   steady state a session table sees. The alarm checks every 64 slow operations and after
//!   every promotion.
//! * `read_hit/*`: `get` of a present key in the read tier; must be unchanged, since a read hit
//!   never looks at the hook.
//! * `pool_round_trip/*`: `MapPool::get` and the guard's drop (the return path, where the pool
//!   checks), for a `Vec<u64>` pool; `off` versus an alarm that never trips.
//!
//! Variants: `off` (no hook), `alarm` (a policy on all three conditions that never trips),
//! `alarm_tripped` (a policy that trips at once: checks then also skip the callback, so this
//! is the cheapest "on"), and with `--features metrics`, `alarm+metrics` (both sinks, metrics to
//! the no-op recorder).
//!
//! `cargo bench --bench alarm` (about 40 s); `BENCH_TIME_MS` (default 2000), `BENCH_WARMUP_MS`
//! (default 500), `BENCH_SAMPLES` (default 20). Criterion's filter works as usual:
//! `cargo bench --bench alarm -- write/`.
//!
//! On a shared machine, criterion's variants run minutes apart and see different loads; the
//! ratios are better read from the paired mode, `BENCH_PAIRED=1 cargo bench --bench alarm`,
//! which skips criterion and interleaves short batches of every variant (in a rotating order)
//! for `BENCH_ROUNDS` rounds (default 41), then prints, per variant, the median over rounds of
//! its time divided by the `off` time of the same round.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use tiermap::pool::MapPool;
use tiermap::{PoolRetentionPolicy, RetentionPolicy, SyncMap};

const LIVE: u64 = 10_000;

fn env_ms(name: &str, default: u64) -> Duration {
    Duration::from_millis(
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

#[derive(Clone, Copy)]
enum Hook {
    Off,
    Alarm,
    AlarmTripped,
    #[cfg(feature = "metrics")]
    AlarmMetrics,
}

impl Hook {
    fn all() -> Vec<Hook> {
        vec![
            Hook::Off,
            Hook::Alarm,
            Hook::AlarmTripped,
            #[cfg(feature = "metrics")]
            Hook::AlarmMetrics,
        ]
    }

    fn name(self) -> &'static str {
        match self {
            Hook::Off => "off",
            Hook::Alarm => "alarm",
            Hook::AlarmTripped => "alarm_tripped",
            #[cfg(feature = "metrics")]
            Hook::AlarmMetrics => "alarm+metrics",
        }
    }

    fn install(self, map: &SyncMap<u64, u64>) {
        let quiet = RetentionPolicy::new()
            .max_bytes_per_entry(64 << 10)
            .max_deleted_ratio(0.99)
            .max_retired_bytes(1 << 40);
        match self {
            Hook::Off => {}
            Hook::Alarm => {
                let alarm = map.set_retention_alarm(quiet, |a| panic!("unexpected {a}"));
                assert_eq!(alarm.fired(), 0);
            }
            Hook::AlarmTripped => {
                let tripped = RetentionPolicy::new()
                    .max_bytes_per_entry(1)
                    .min_held_bytes(0);
                let alarm = map.set_retention_alarm(tripped, |_| {});
                assert_eq!(alarm.fired(), 1);
            }
            #[cfg(feature = "metrics")]
            Hook::AlarmMetrics => {
                map.set_retention_alarm(quiet, |a| panic!("unexpected {a}"));
                map.publish_metrics("bench");
            }
        }
    }
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(env_ms("BENCH_WARMUP_MS", 500))
        .measurement_time(env_ms("BENCH_TIME_MS", 2000))
        .sample_size(
            std::env::var("BENCH_SAMPLES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(20),
        )
}

/// A map at `LIVE` keys for the write path, and its next key.
fn write_map(hook: Hook) -> (SyncMap<u64, u64>, u64) {
    let map: SyncMap<u64, u64> = (0..LIVE).map(|i| (i, i)).collect();
    hook.install(&map);
    (map, LIVE)
}

/// One write-path iteration: a new key in, the oldest key out.
#[inline]
fn write_step(map: &SyncMap<u64, u64>, next: &mut u64) {
    map.insert(*next, *next);
    black_box(map.remove(&(*next - LIVE)));
    *next += 1;
}

/// A map at `LIVE` keys, all in the read tier.
fn read_map(hook: Hook) -> SyncMap<u64, u64> {
    let map: SyncMap<u64, u64> = (0..LIVE).map(|i| (i, i)).collect();
    hook.install(&map);
    // Misses on absent keys move the promotion clock; then every key is in the read tier and
    // absent keys miss without the lock.
    for i in 0..4 * LIVE {
        black_box(map.get(&(LIVE + i)));
    }
    let s = map.stats();
    assert!(
        s.dirty_capacity == 0 && s.read_capacity > 0,
        "not promoted: {s}"
    );
    map
}

fn write_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("write");
    group.throughput(Throughput::Elements(2));
    for hook in Hook::all() {
        let (map, mut next) = write_map(hook);
        group.bench_function(BenchmarkId::new("insert+remove", hook.name()), |b| {
            b.iter(|| write_step(&map, &mut next))
        });
    }
    group.finish();
}

fn read_hit(c: &mut Criterion) {
    let mut group = c.benchmark_group("read_hit");
    group.throughput(Throughput::Elements(1));
    for hook in Hook::all() {
        let map = read_map(hook);
        let m = map.pin();
        let mut k = 0u64;
        group.bench_function(BenchmarkId::new("get", hook.name()), |b| {
            b.iter(|| {
                k = (k + 7919) % LIVE;
                black_box(m.get(&k));
            })
        });
    }
    group.finish();
}

/// A pool for the round trip, with or without an alarm that never trips.
fn pool(alarm: bool) -> MapPool<Vec<u64>> {
    let pool = MapPool::builder().prefill(4).build();
    if alarm {
        let policy = PoolRetentionPolicy::new().max_retained_bytes(1 << 40);
        pool.set_retention_alarm(policy, |a| panic!("unexpected {a}"));
    }
    pool
}

#[inline]
fn round_trip(pool: &MapPool<Vec<u64>>) {
    let mut v = pool.get();
    v.push(1);
    black_box(&v);
}

fn pool_round_trip(c: &mut Criterion) {
    let mut group = c.benchmark_group("pool_round_trip");
    group.throughput(Throughput::Elements(1));
    for (name, alarm) in [("off", false), ("alarm", true)] {
        let pool = pool(alarm);
        group.bench_function(BenchmarkId::new("get+drop", name), |b| {
            b.iter(|| round_trip(&pool))
        });
    }
    group.finish();
}

/// The paired mode: interleaved batches, per-round ratios to `off`, medians.
fn paired() {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(41);
    let hooks = Hook::all();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let report = |what: &str, per_op: &[Vec<f64>]| {
        println!("{what}:");
        for (i, hook) in hooks.iter().enumerate() {
            let ratios: Vec<f64> = (0..rounds).map(|r| per_op[i][r] / per_op[0][r]).collect();
            println!(
                "  {:<14} median {:>8.1} ns/op   ratio to off: median {:.3} (rounds {rounds})",
                hook.name(),
                median(per_op[i].clone()),
                median(ratios),
            );
        }
    };

    // Write path: batches of 20 000 iterations (each an insert and a remove).
    let mut maps: Vec<_> = hooks.iter().map(|&h| write_map(h)).collect();
    for (map, next) in &mut maps {
        for _ in 0..50_000 {
            write_step(map, next); // warm up to the steady state
        }
    }
    let mut per_op = vec![Vec::new(); hooks.len()];
    for r in 0..rounds {
        for j in 0..hooks.len() {
            let i = (r + j) % hooks.len();
            let (map, next) = &mut maps[i];
            let t = Instant::now();
            for _ in 0..20_000 {
                write_step(map, next);
            }
            per_op[i].push(t.elapsed().as_nanos() as f64 / 20_000.0);
        }
    }
    report("write/insert+remove (per iteration)", &per_op);
    drop(maps);

    // Read hits: batches of 1 000 000 gets.
    let maps: Vec<_> = hooks.iter().map(|&h| read_map(h)).collect();
    let pins: Vec<_> = maps.iter().map(|m| m.pin()).collect();
    let mut per_op = vec![Vec::new(); hooks.len()];
    let mut k = 0u64;
    for r in 0..rounds {
        for j in 0..hooks.len() {
            let i = (r + j) % hooks.len();
            let m = &pins[i];
            let t = Instant::now();
            for _ in 0..1_000_000 {
                k = (k + 7919) % LIVE;
                black_box(m.get(&k));
            }
            per_op[i].push(t.elapsed().as_nanos() as f64 / 1_000_000.0);
        }
    }
    report("read_hit/get", &per_op);
    drop(pins);
    drop(maps);

    // Pool round trips: batches of 1 000 000, off and alarm.
    let pools = [pool(false), pool(true)];
    let mut per_op = vec![Vec::new(); 2];
    for r in 0..rounds {
        for j in 0..2 {
            let i = (r + j) % 2;
            let t = Instant::now();
            for _ in 0..1_000_000 {
                round_trip(&pools[i]);
            }
            per_op[i].push(t.elapsed().as_nanos() as f64 / 1_000_000.0);
        }
    }
    println!("pool_round_trip/get+drop:");
    for (i, name) in ["off", "alarm"].iter().enumerate() {
        let ratios: Vec<f64> = (0..rounds).map(|r| per_op[i][r] / per_op[0][r]).collect();
        println!(
            "  {:<14} median {:>8.1} ns/op   ratio to off: median {:.3} (rounds {rounds})",
            name,
            median(per_op[i].clone()),
            median(ratios),
        );
    }
}

fn main() {
    if std::env::var_os("BENCH_PAIRED").is_some() {
        paired();
        return;
    }
    let mut c = config().configure_from_args();
    write_path(&mut c);
    read_hit(&mut c);
    pool_round_trip(&mut c);
    c.final_summary();
}
