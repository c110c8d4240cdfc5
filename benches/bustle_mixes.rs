//! conc-map-bench's three bustle mixes (ReadHeavy, Exchange, RapidGrow) for every map, printed
//! as Mops/s tables (not criterion).
//!
//! Mixes and prefill are conc-map-bench's: ReadHeavy 98/1/1/0 (read/insert/remove/update),
//! prefill 75%; Exchange 10/40/40/10, prefill 75%; RapidGrow 5/80/5/10, prefill 0. One run does
//! `capacity` operations in total (conc-map-bench's `--operations 1`). Every map is created with
//! `with_capacity(capacity)` and `ahash::RandomState`; each bustle handle pins per operation.
//!
//! **Timing.** bustle's own figure (`Measurement::throughput`) is not used: its main thread
//! reads the clock after the start barrier, and when the benchmark threads take every core (2
//! threads here) it may not run until a worker finishes, so a short run is timed from near its
//! end (seen on this machine: papaya "at" 4,000 Mops/s). Each handle instead records when it
//! made its first operation and when it was dropped (after bustle's end barrier); a run lasts
//! from the earliest first operation of the mix threads' handles to the latest drop.
//!
//! Because a run at 2^16 takes a few milliseconds, each (map, threads) point is the median of
//! `BUSTLE_REPS` runs (default 15 at 2^16, 3 at 2^22), interleaved map by map so that machine
//! noise spreads over all maps alike.
//!
//! Environment:
//! * `BUSTLE_SIZES=16,22` capacities as log2 (default `16`)
//! * `BUSTLE_MIXES=ReadHeavy,Exchange,RapidGrow` (default all)
//! * `BENCH_MAPS`, `BENCH_THREADS` as for the other benches (default threads `1,2,4`)
//! * `BUSTLE_REPS=15` repetitions per point
//! * `BUSTLE_OPS=1.0` operations per run as a multiple of the capacity (conc-map-bench's
//!   default is 1.0; a larger value shows the steady state after tiermap's first promotion)
//! * `BUSTLE_CSV=path` appends `mix,log2,map,threads,mops,ops_multiple` rows
//! * `TIERMAP_BENCH_SHARDS=n` builds tiermap with `n` shards instead of its own choice (every
//!   bench that uses `benches/common`)
//!
//! Run: `cargo bench --bench bustle_mixes` (about 2 minutes at 2^16; 2^22 adds ~10 minutes).

#[macro_use]
mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bustle::{Collection, CollectionHandle, Mix, Workload};
use common::BenchMap;

/// Any adapter as a bustle collection.
struct Bustle<M>(Arc<M>);

/// A handle: the map, and when the handle made its first operation.
struct Handle<M>(Arc<M>, Option<Instant>);

/// (first operation, drop) of every handle dropped since the last `run_once` began, in drop
/// order. bustle's prefill handles are all dropped before its mix threads create theirs, so
/// the last `threads` entries belong to the mix.
static SPANS: Mutex<Vec<(Option<Instant>, Instant)>> = Mutex::new(Vec::new());

impl<M> Handle<M> {
    #[inline]
    fn tick(&mut self) {
        if self.1.is_none() {
            self.1 = Some(Instant::now());
        }
    }
}

impl<M> Drop for Handle<M> {
    fn drop(&mut self) {
        let end = Instant::now();
        SPANS.lock().unwrap().push((self.1, end));
    }
}

impl<M: BenchMap> Collection for Bustle<M> {
    type Handle = Handle<M>;
    fn with_capacity(capacity: usize) -> Self {
        Bustle(Arc::new(M::with_capacity(capacity)))
    }
    fn pin(&self) -> Self::Handle {
        Handle(self.0.clone(), None)
    }
}

impl<M: BenchMap> CollectionHandle for Handle<M> {
    type Key = u64;
    fn get(&mut self, key: &u64) -> bool {
        self.tick();
        self.0.load(*key).is_some()
    }
    fn insert(&mut self, key: &u64) -> bool {
        self.tick();
        self.0.swap(*key, 0).is_none()
    }
    fn remove(&mut self, key: &u64) -> bool {
        self.tick();
        self.0.load_and_delete(*key).is_some()
    }
    fn update(&mut self, key: &u64) -> bool {
        self.tick();
        self.0.update(*key, 1)
    }
}

#[derive(Clone, Copy)]
struct MixDef {
    name: &'static str,
    mix: Mix,
    prefill: f64,
}

fn mixes() -> Vec<MixDef> {
    let all = [
        MixDef {
            name: "ReadHeavy",
            mix: Mix {
                read: 98,
                insert: 1,
                remove: 1,
                update: 0,
                upsert: 0,
            },
            prefill: 0.75,
        },
        MixDef {
            name: "Exchange",
            mix: Mix {
                read: 10,
                insert: 40,
                remove: 40,
                update: 10,
                upsert: 0,
            },
            prefill: 0.75,
        },
        MixDef {
            name: "RapidGrow",
            mix: Mix {
                read: 5,
                insert: 80,
                remove: 5,
                update: 10,
                upsert: 0,
            },
            prefill: 0.0,
        },
    ];
    let sel = std::env::var("BUSTLE_MIXES").unwrap_or_default();
    all.into_iter()
        .filter(|m| sel.trim().is_empty() || sel.split(',').any(|s| s.trim() == m.name))
        .collect()
}

fn run_once<M: BenchMap>(mix: MixDef, log2: u8, threads: usize, seed: [u8; 32]) -> f64 {
    let m = Workload::new(threads, mix.mix)
        .initial_capacity_log2(log2)
        .prefill_fraction(mix.prefill)
        .operations(ops_multiple())
        .seed(seed)
        .run_silently::<Bustle<M>>();
    let spans = std::mem::take(&mut *SPANS.lock().unwrap());
    let mix = &spans[spans.len().saturating_sub(threads)..];
    let start = mix.iter().filter_map(|s| s.0).min();
    let end = mix.iter().map(|s| s.1).max();
    match (start, end) {
        (Some(start), Some(end)) if mix.len() == threads => {
            m.total_ops as f64 / (end - start).as_secs_f64() / 1e6
        }
        _ => panic!("expected {threads} mix handles with operations, got {mix:?}"),
    }
}

/// `BUSTLE_OPS`: operations per run as a multiple of the capacity (conc-map-bench: 1.0).
fn ops_multiple() -> f64 {
    std::env::var("BUSTLE_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

type Runner = fn(MixDef, u8, usize, [u8; 32]) -> f64;

fn main() {
    // Ignore criterion/libtest style arguments (`--bench`) that cargo passes.
    let sizes: Vec<u8> = std::env::var("BUSTLE_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![16]);
    let threads = common::thread_counts();
    let mut runners: Vec<(&'static str, bool, Runner)> = Vec::new();
    for_each_map!(M => {
        runners.push((M::NAME, M::READ_ONLY, run_once::<M> as Runner));
    });
    let mut csv = std::env::var("BUSTLE_CSV").ok().map(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .expect("open BUSTLE_CSV")
    });

    println!(
        "bustle mixes; {} hardware threads; threads {:?}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        threads
    );
    for log2 in sizes {
        let reps: usize = std::env::var("BUSTLE_REPS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(if log2 <= 18 { 15 } else { 3 });
        for mix in mixes() {
            // HashIndex only takes part in the read-heavy mix.
            let maps: Vec<_> = runners
                .iter()
                .filter(|(_, ro, _)| !*ro || mix.name == "ReadHeavy")
                .collect();
            // results[map][thread] = runs
            let mut results = vec![vec![Vec::new(); threads.len()]; maps.len()];
            for rep in 0..reps {
                let mut seed = [0u8; 32];
                seed[0] = rep as u8;
                seed[1] = log2;
                for (ti, &t) in threads.iter().enumerate() {
                    for (mi, (_, _, run)) in maps.iter().enumerate() {
                        results[mi][ti].push(run(mix, log2, t, seed));
                    }
                }
            }
            let med: Vec<Vec<f64>> = results
                .into_iter()
                .map(|per_t| per_t.into_iter().map(median).collect())
                .collect();
            println!();
            println!(
                "### {} at 2^{}, {}x capacity operations ({} reps, median Mops/s; ratio = map / best peer at that thread count)",
                mix.name, log2, ops_multiple(), reps
            );
            println!();
            let mut head = String::from("| map |");
            let mut rule = String::from("|---|");
            for t in &threads {
                head += &format!(" {t} thr | ratio |");
                rule += "---:|---:|";
            }
            println!("{head}");
            println!("{rule}");
            for (mi, (name, _, _)) in maps.iter().enumerate() {
                let mut row = format!("| {name} |");
                for ti in 0..threads.len() {
                    let best_peer = med
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != mi)
                        .map(|(_, r)| r[ti])
                        .fold(0.0, f64::max);
                    row += &format!(" {:.2} | {:.2} |", med[mi][ti], med[mi][ti] / best_peer);
                }
                println!("{row}");
                if let Some(f) = csv.as_mut() {
                    for (ti, t) in threads.iter().enumerate() {
                        writeln!(
                            f,
                            "{},{},{},{},{:.4},{}",
                            mix.name,
                            log2,
                            name,
                            t,
                            med[mi][ti],
                            ops_multiple()
                        )
                        .unwrap();
                    }
                }
            }
        }
    }
}
