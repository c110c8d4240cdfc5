//! Latency of single operations (not criterion): prints markdown tables.
//!
//! 1. **First new-key insert after a read-only phase.** Fill a map (created empty, no capacity
//!    hint, as a Go `sync.Map` is) with `n` keys, read every key twice (for tiermap this
//!    promotes the dirty tier, so the map is in Go's "all keys in read, no dirty map" state),
//!    then time one insert of a new key. In Go 1.9-1.23 this insert copies the whole read map
//!    into a new dirty map under the lock. Median and max over several trials, each on a fresh
//!    map.
//!    The same trials also time the `drop` of the map right after that insert (a second table).
//! 2. **Sliding-window churn.** Insert key `i`, remove key `i - W`, for `STEPS` steps, timing
//!    every step (the insert and the remove); p50/p99/p99.9/p99.99/max. `LAT_CLOCK=cpu` times
//!    with the thread's CPU clock instead of the wall clock, which takes the scheduler of a
//!    shared machine out of the tail.
//!
//! Environment: `BENCH_MAPS` (see benches/common), `LAT_SIZES=10000,100000,1000000`,
//! `LAT_WINDOW=100000`, `LAT_STEPS=2000000`, `LAT_CSV=dir` writes `first_insert.csv` and
//! `churn_latency.csv` there.
//!
//! Run: `cargo bench --bench latency` (about a minute).

#[macro_use]
mod common;

use std::hint::black_box;
use std::io::Write;
use std::time::Instant;

use common::BenchMap;

fn env_list(name: &str, default: &[u64]) -> Vec<u64> {
    std::env::var(name)
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Nanoseconds of the first new-key insert after a read-only phase, and of the `drop` of the
/// map right after it (wall clock), one trial.
fn first_insert<M: BenchMap>(n: u64) -> (u64, u64) {
    let m = M::with_capacity(0);
    for i in 0..n {
        m.store(i, i);
    }
    for _ in 0..2 {
        for i in 0..n {
            black_box(m.load(i));
        }
    }
    let t = Instant::now();
    m.store(n, n);
    let ns = t.elapsed().as_nanos() as u64;
    black_box(&m);
    let t = Instant::now();
    drop(m);
    (ns, t.elapsed().as_nanos() as u64)
}

/// Nanoseconds on the clock chosen by `LAT_CLOCK`: `wall` (default, `Instant`) or `cpu`
/// (this thread's CPU time, `CLOCK_THREAD_CPUTIME_ID`: time the thread was descheduled is not
/// counted, so a spike is work done by the operation, not the scheduler of a shared machine).
#[derive(Clone, Copy)]
enum Clock {
    Wall(Instant),
    Cpu,
}

impl Clock {
    fn from_env() -> Clock {
        match std::env::var("LAT_CLOCK").as_deref() {
            Ok("cpu") => Clock::Cpu,
            _ => Clock::Wall(Instant::now()),
        }
    }

    fn now(self) -> u64 {
        match self {
            Clock::Wall(origin) => origin.elapsed().as_nanos() as u64,
            Clock::Cpu => {
                let mut ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant that
                // Linux supports for the calling thread.
                let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
                assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
                ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
            }
        }
    }
}

/// Per-step nanoseconds along a sliding-window churn: a step inserts key `i` and removes key
/// `i - window`. Both are timed: deferred frees run inside whichever operation pins next, and
/// a remove may start a compaction.
fn churn<M: BenchMap>(window: u64, steps: u64) -> Vec<u64> {
    let m = M::with_capacity(0);
    let clock = Clock::from_env();
    let mut lat = Vec::with_capacity(steps as usize);
    for i in 0..steps {
        let t = clock.now();
        m.store(i, i);
        if i >= window {
            m.delete(i - window);
        }
        lat.push(clock.now() - t);
    }
    lat
}

fn fmt_ns(ns: u64) -> String {
    if ns >= 1_000_000 {
        format!("{:.2} ms", ns as f64 / 1e6)
    } else if ns >= 1_000 {
        format!("{:.1} µs", ns as f64 / 1e3)
    } else {
        format!("{ns} ns")
    }
}

type FirstFn = fn(u64) -> (u64, u64);
type ChurnFn = fn(u64, u64) -> Vec<u64>;

/// Fixes glibc's mmap threshold at its default (128 KiB), so that every map's allocations
/// follow the same policy whatever ran before it. Left dynamic, glibc raises the threshold to
/// the size of each mmapped block freed (up to 32 MiB), so a map measured after one that freed
/// large tables gets its own tables from the heap, and its `drop` skips the `munmap`s the
/// others paid for: dashmap's `drop` of 1M entries read 8 µs after papaya, 5 ms alone.
fn fix_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes the allocator's tuning; called before any other thread
    // of this process allocates.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

fn main() {
    fix_mmap_threshold();
    let sizes = env_list("LAT_SIZES", &[10_000, 100_000, 1_000_000]);
    let window = env_u64("LAT_WINDOW", 100_000);
    let steps = env_u64("LAT_STEPS", 2_000_000);
    let csv_dir = std::env::var("LAT_CSV").ok();

    let mut maps: Vec<(&'static str, FirstFn, ChurnFn)> = Vec::new();
    for_each_map!(M => {
        if !M::READ_ONLY {
            maps.push((M::NAME, first_insert::<M> as FirstFn, churn::<M> as ChurnFn));
        }
    });

    // ---- 1. first new-key insert
    println!("### First new-key insert after a read-only phase (median / max of trials)");
    println!();
    let mut head = String::from("| map |");
    let mut rule = String::from("|---|");
    for n in &sizes {
        head += &format!(" n={n} median | max |");
        rule += "---:|---:|";
    }
    println!("{head}");
    println!("{rule}");
    let mut first_csv = String::from("map,n,trial,ns,drop_ns\n");
    let mut rows = vec![String::new(); maps.len()];
    let mut drop_rows = vec![String::new(); maps.len()];
    for (mi, (name, _, _)) in maps.iter().enumerate() {
        rows[mi] = format!("| {name} |");
        drop_rows[mi] = format!("| {name} |");
    }
    for &n in &sizes {
        let trials = if n >= 1_000_000 {
            7
        } else if n >= 100_000 {
            15
        } else {
            41
        };
        let mut per_map = vec![Vec::new(); maps.len()];
        let mut drops = vec![Vec::new(); maps.len()];
        // Interleave maps trial by trial so that machine noise spreads over all of them.
        for trial in 0..trials {
            for (mi, (name, first, _)) in maps.iter().enumerate() {
                let (ns, drop_ns) = first(n);
                per_map[mi].push(ns);
                drops[mi].push(drop_ns);
                first_csv += &format!("{name},{n},{trial},{ns},{drop_ns}\n");
            }
        }
        for (row, mut v) in rows.iter_mut().zip(per_map) {
            v.sort_unstable();
            *row += &format!(
                " {} | {} |",
                fmt_ns(pct(&v, 0.5)),
                fmt_ns(*v.last().unwrap())
            );
        }
        for (row, mut v) in drop_rows.iter_mut().zip(drops) {
            v.sort_unstable();
            *row += &format!(
                " {} | {} |",
                fmt_ns(pct(&v, 0.5)),
                fmt_ns(*v.last().unwrap())
            );
        }
    }
    for r in rows {
        println!("{r}");
    }
    // The same trials' maps: `drop` right after that insert (wall clock; tiermap's includes
    // its `malloc_trim` when it frees 1 MiB or more).
    println!();
    println!("### `drop` of the map after that insert (median / max of the same trials)");
    println!();
    println!("{head}");
    println!("{rule}");
    for r in drop_rows {
        println!("{r}");
    }

    // ---- 2. sliding-window churn
    println!();
    let clock = match Clock::from_env() {
        Clock::Wall(_) => "wall clock",
        Clock::Cpu => "thread CPU time",
    };
    println!("### Step latency along a sliding-window churn (insert i + remove i-{window}, {clock}; {steps} steps, one thread)");
    println!();
    println!("| map | p50 | p99 | p99.9 | p99.99 | max | mean |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut churn_csv = String::from("map,p50,p99,p999,p9999,max,mean\n");
    for (name, _, churn) in &maps {
        let mut v = churn(window, steps);
        // `LAT_TOP=n` prints the n slowest steps (index and time), to tell a periodic stall from
        // a one-off.
        let top = env_u64("LAT_TOP", 0) as usize;
        if top > 0 {
            let mut idx: Vec<usize> = (0..v.len()).collect();
            idx.sort_unstable_by_key(|&i| std::cmp::Reverse(v[i]));
            let list: Vec<String> = idx[..top.min(idx.len())]
                .iter()
                .map(|&i| format!("step {i}: {}", fmt_ns(v[i])))
                .collect();
            eprintln!("{name} slowest: {}", list.join(", "));
        }
        let mean = v.iter().sum::<u64>() as f64 / v.len() as f64;
        v.sort_unstable();
        let (p50, p99, p999, p9999, max) = (
            pct(&v, 0.5),
            pct(&v, 0.99),
            pct(&v, 0.999),
            pct(&v, 0.9999),
            *v.last().unwrap(),
        );
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} |",
            fmt_ns(p50),
            fmt_ns(p99),
            fmt_ns(p999),
            fmt_ns(p9999),
            fmt_ns(max),
            fmt_ns(mean as u64)
        );
        churn_csv += &format!("{name},{p50},{p99},{p999},{p9999},{max},{mean:.1}\n");
    }

    // ---- 3. building blocks: the cost of entering each scheme's protected region
    if std::env::var("LAT_PIN").map_or(true, |v| v != "0") {
        println!();
        println!("### Cost of one reader-side pin + unpin (one thread, ns per pin)");
        println!();
        println!("| scheme | ns |");
        println!("|---|---:|");
        const PINS: u32 = 20_000_000;
        let t: common::Tier = BenchMap::with_capacity(0);
        let p: common::Papaya = BenchMap::with_capacity(0);
        let lock = std::sync::RwLock::new(0u64);
        let rows: [(&str, &dyn Fn()); 4] = [
            ("tiermap `SyncMap::pin` (crossbeam-epoch)", &|| {
                drop(black_box(t.pin()))
            }),
            ("papaya `HashMap::guard` (seize)", &|| {
                drop(black_box(p.guard()))
            }),
            ("scc `Guard::new` (sdd)", &|| {
                drop(black_box(scc::Guard::new()))
            }),
            ("uncontended `RwLock::read`", &|| {
                drop(black_box(lock.read().unwrap()))
            }),
        ];
        for (name, f) in rows {
            for _ in 0..PINS / 10 {
                f();
            }
            let start = Instant::now();
            for _ in 0..PINS {
                f();
            }
            let ns = start.elapsed().as_nanos() as f64 / f64::from(PINS);
            println!("| {name} | {ns:.2} |");
        }
    }

    if let Some(dir) = csv_dir {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::File::create(format!("{dir}/first_insert.csv"))
            .unwrap()
            .write_all(first_csv.as_bytes())
            .unwrap();
        std::fs::File::create(format!("{dir}/churn_latency.csv"))
            .unwrap()
            .write_all(churn_csv.as_bytes())
            .unwrap();
    }
}
