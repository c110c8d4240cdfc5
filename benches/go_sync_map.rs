//! Go's own `sync.Map` benchmark set (`src/sync/map_bench_test.go`, go1.23), re-expressed with
//! criterion and run against every peer in the same process.
//!
//! Semantics follow Go's `benchMap`: a fresh map per measurement, the workload's `setup` run
//! untimed, then `iters` operations split across `threads` workers, worker `id` starting its
//! counter at `id * iters` (Go's `perG(b, pb, id*b.N, m)`). The time criterion reports per
//! iteration is wall time divided by the total operation count, like Go's ns/op under
//! `RunParallel`.
//!
//! Selection (all optional):
//! * criterion's own filter: `cargo bench --bench go_sync_map -- 'LoadMostlyHits/tiermap'`
//! * `BENCH_WORKLOADS=LoadMostlyHits,Range` `BENCH_MAPS=tiermap,dashmap` `BENCH_THREADS=2`
//! * `BENCH_TIME_MS=1000` measurement time per benchmark (default 1000), `BENCH_WARMUP_MS`
//!   (default 300), `BENCH_SAMPLES` (default 10).

#[macro_use]
mod common;

use std::sync::Barrier;
use std::time::{Duration, Instant};

use common::BenchMap;
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum W {
    LoadMostlyHits,
    LoadMostlyMisses,
    LoadOrStoreBalanced,
    LoadOrStoreUnique,
    LoadOrStoreCollision,
    LoadAndDeleteBalanced,
    LoadAndDeleteUnique,
    LoadAndDeleteCollision,
    Range,
    AdversarialAlloc,
    AdversarialDelete,
    DeleteCollision,
    SwapCollision,
    SwapMostlyHits,
    SwapMostlyMisses,
    CompareAndSwapCollision,
    CompareAndSwapNoExistingKey,
    CompareAndSwapValueNotEqual,
    CompareAndSwapMostlyHits,
    CompareAndSwapMostlyMisses,
    CompareAndDeleteCollision,
    CompareAndDeleteMostlyHits,
    CompareAndDeleteMostlyMisses,
    Clear,
}

const ALL: [W; 24] = [
    W::LoadMostlyHits,
    W::LoadMostlyMisses,
    W::LoadOrStoreBalanced,
    W::LoadOrStoreUnique,
    W::LoadOrStoreCollision,
    W::LoadAndDeleteBalanced,
    W::LoadAndDeleteUnique,
    W::LoadAndDeleteCollision,
    W::Range,
    W::AdversarialAlloc,
    W::AdversarialDelete,
    W::DeleteCollision,
    W::SwapCollision,
    W::SwapMostlyHits,
    W::SwapMostlyMisses,
    W::CompareAndSwapCollision,
    W::CompareAndSwapNoExistingKey,
    W::CompareAndSwapValueNotEqual,
    W::CompareAndSwapMostlyHits,
    W::CompareAndSwapMostlyMisses,
    W::CompareAndDeleteCollision,
    W::CompareAndDeleteMostlyHits,
    W::CompareAndDeleteMostlyMisses,
    W::Clear,
];

impl W {
    fn name(self) -> String {
        let s = format!("{self:?}");
        if self == W::Range {
            "Range1024".to_string()
        } else {
            s
        }
    }

    /// Workloads where the read-optimized scc::HashIndex is measured too.
    fn is_read(self) -> bool {
        matches!(self, W::LoadMostlyHits | W::LoadMostlyMisses | W::Range)
    }
}

/// Go's "hits then prime": LoadOrStore `0..hits`, then Load `i % hits` for `2 * hits`.
fn prime<M: BenchMap>(m: &M, hits: u64) {
    for i in 0..hits {
        m.load_or_store(i, i);
    }
    for i in 0..hits * 2 {
        std::hint::black_box(m.load(i % hits));
    }
}

fn setup<M: BenchMap>(w: W, m: &M) {
    match w {
        W::LoadMostlyHits
        | W::SwapMostlyHits
        | W::CompareAndSwapMostlyHits
        | W::CompareAndDeleteMostlyHits => prime(m, 1023),
        W::LoadMostlyMisses
        | W::SwapMostlyMisses
        | W::CompareAndSwapMostlyMisses
        | W::CompareAndDeleteMostlyMisses => prime(m, 1),
        W::LoadOrStoreBalanced | W::LoadAndDeleteBalanced => prime(m, 128),
        W::LoadOrStoreCollision
        | W::LoadAndDeleteCollision
        | W::DeleteCollision
        | W::SwapCollision
        | W::CompareAndSwapCollision
        | W::CompareAndDeleteCollision => {
            m.load_or_store(0, 0);
        }
        W::CompareAndSwapValueNotEqual => m.store(0, 0),
        W::Range | W::AdversarialDelete => {
            for i in 0..1024 {
                m.store(i, i);
            }
        }
        W::LoadOrStoreUnique
        | W::LoadAndDeleteUnique
        | W::AdversarialAlloc
        | W::CompareAndSwapNoExistingKey
        | W::Clear => {}
    }
}

/// One worker's loop: `n` operations with the counter starting at `i0`.
#[inline(never)]
fn per_g<M: BenchMap>(w: W, m: &M, i0: u64, n: u64) {
    use std::hint::black_box as bb;
    let end = i0 + n;
    match w {
        W::LoadMostlyHits => {
            for i in i0..end {
                bb(m.load(i % 1024));
            }
        }
        W::LoadMostlyMisses => {
            for i in i0..end {
                bb(m.load(i % 1024));
            }
        }
        W::LoadOrStoreBalanced => {
            const HITS: u64 = 128;
            for i in i0..end {
                let j = i % (HITS * 2);
                if j < HITS {
                    let (_, loaded) = m.load_or_store(j, i);
                    assert!(loaded, "unexpected miss for {j}");
                } else {
                    let (_, loaded) = m.load_or_store(i, i);
                    assert!(!loaded, "failed to store {i}");
                }
            }
        }
        W::LoadOrStoreUnique => {
            for i in i0..end {
                bb(m.load_or_store(i, i));
            }
        }
        W::LoadOrStoreCollision => {
            for _ in i0..end {
                bb(m.load_or_store(0, 0));
            }
        }
        W::LoadAndDeleteBalanced => {
            const HITS: u64 = 128;
            for i in i0..end {
                let j = i % (HITS * 2);
                if j < HITS {
                    bb(m.load_and_delete(j));
                } else {
                    bb(m.load_and_delete(i));
                }
            }
        }
        W::LoadAndDeleteUnique => {
            for i in i0..end {
                bb(m.load_and_delete(i));
            }
        }
        W::LoadAndDeleteCollision => {
            for _ in i0..end {
                if m.load_and_delete(0).is_some() {
                    m.store(0, 0);
                }
            }
        }
        W::Range => {
            for _ in i0..end {
                m.range(|k, v| {
                    bb((k, v));
                    true
                });
            }
        }
        W::AdversarialAlloc => {
            let (mut stores, mut loads_since_store) = (0u64, 0u64);
            for i in i0..end {
                bb(m.load(i));
                loads_since_store += 1;
                if loads_since_store > stores {
                    m.load_or_store(i, stores);
                    loads_since_store = 0;
                    stores += 1;
                }
            }
        }
        W::AdversarialDelete => {
            const SIZE: u64 = 1024;
            for i in i0..end {
                bb(m.load(i));
                if i % SIZE == 0 {
                    // go1.9's form of the benchmark: find one key, then delete it outside the
                    // callback (the lock-based peers cannot be called back from `range`).
                    let mut key = None;
                    m.range(|k, _| {
                        key = Some(k);
                        false
                    });
                    if let Some(k) = key {
                        m.delete(k);
                    }
                    m.store(i, i);
                }
            }
        }
        W::DeleteCollision => {
            for _ in i0..end {
                m.delete(0);
            }
        }
        W::SwapCollision => {
            for _ in i0..end {
                bb(m.swap(0, 0));
            }
        }
        W::SwapMostlyHits | W::SwapMostlyMisses => {
            let hits = if w == W::SwapMostlyHits { 1023 } else { 1 };
            let total = 1024;
            for i in i0..end {
                if i % total < hits {
                    let v = i % total;
                    bb(m.swap(v, v));
                } else {
                    bb(m.swap(i, i));
                    m.delete(i);
                }
            }
        }
        W::CompareAndSwapCollision => {
            for _ in i0..end {
                if m.compare_and_swap(0, 0, 42) {
                    m.compare_and_swap(0, 42, 0);
                }
            }
        }
        W::CompareAndSwapNoExistingKey => {
            for i in i0..end {
                if m.compare_and_swap(i, 0, 0) {
                    m.delete(i);
                }
            }
        }
        W::CompareAndSwapValueNotEqual => {
            for _ in i0..end {
                bb(m.compare_and_swap(0, 1, 2));
            }
        }
        W::CompareAndSwapMostlyHits | W::CompareAndSwapMostlyMisses => {
            let hits = if w == W::CompareAndSwapMostlyHits {
                1023
            } else {
                1
            };
            for i in i0..end {
                let v = if i % 1024 < hits { i % 1024 } else { i };
                bb(m.compare_and_swap(v, v, v));
            }
        }
        W::CompareAndDeleteCollision => {
            for _ in i0..end {
                if m.compare_and_delete(0, 0) {
                    m.store(0, 0);
                }
            }
        }
        W::CompareAndDeleteMostlyHits | W::CompareAndDeleteMostlyMisses => {
            let hits = if w == W::CompareAndDeleteMostlyHits {
                1023
            } else {
                1
            };
            for i in i0..end {
                let v = if i % 1024 < hits { i % 1024 } else { i };
                if m.compare_and_delete(v, v) {
                    m.store(v, v);
                }
            }
        }
        W::Clear => {
            for i in i0..end {
                m.clear();
                m.store(i % 256, i % 256);
            }
        }
    }
}

/// Go's `benchMap` for one map and one thread count: returns wall time for `iters` operations,
/// from the first worker's start to the last worker's end (each worker stamps its own times,
/// so a descheduled coordinating thread cannot shorten the measurement).
fn run<M: BenchMap>(w: W, threads: usize, iters: u64) -> Duration {
    let m = M::with_capacity(0);
    setup(w, &m);
    let barrier = Barrier::new(threads);
    let per = iters / threads as u64;
    let extra = iters % threads as u64;
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads as u64)
            .map(|id| {
                let (m, barrier) = (&m, &barrier);
                let n = per + u64::from(id < extra);
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    per_g(w, m, id * iters, n);
                    (start, Instant::now())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    drop(m);
    let start = spans.iter().map(|s| s.0).min().unwrap();
    let end = spans.iter().map(|s| s.1).max().unwrap();
    end - start
}

fn env_ms(name: &str, default: u64) -> Duration {
    Duration::from_millis(
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default),
    )
}

fn main() {
    let samples = std::env::var("BENCH_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let mut c = Criterion::default()
        .sample_size(samples)
        .measurement_time(env_ms("BENCH_TIME_MS", 1000))
        .warm_up_time(env_ms("BENCH_WARMUP_MS", 300))
        .without_plots()
        .configure_from_args();
    let threads = common::thread_counts();
    for w in ALL {
        if !common::workload_selected(&w.name()) {
            continue;
        }
        let mut g = c.benchmark_group(w.name());
        g.sampling_mode(SamplingMode::Flat);
        g.throughput(Throughput::Elements(1));
        for_each_map!(M => {
            if !M::READ_ONLY || w.is_read() {
                for &t in &threads {
                    g.bench_function(BenchmarkId::new(common::short_id(M::NAME), t), |b| {
                        b.iter_custom(|iters| run::<M>(w, t, iters))
                    });
                }
            }
        });
        g.finish();
    }
    c.final_summary();
}
