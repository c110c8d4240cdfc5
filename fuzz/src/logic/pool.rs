//! `MapPool` of `SyncMap`s against a model of its counters, on one thread.
//!
//! Checks what the pool promises: an object handed out is empty and never over the capacity
//! ceiling; a return is counted, shrunk exactly when it is over the ceiling, and kept exactly
//! when there is room under `max_idle`; the idle objects hold at most `max_idle` objects of at
//! most the ceiling's bytes; `clear` drops exactly the idle objects; and every value put in a
//! pooled map is dropped exactly once, whether the map was reset, shrunk, detached or dropped.

use std::sync::Arc;

use tiermap::{MapPool, OwnedPooled, PoolStats, Pooled, Recycle, SyncMap};

use super::{assert_all_dropped, Rng, Tracker, Val};

/// The pooled type.
pub type Map = SyncMap<u16, Val>;

fuzz_input! {
    /// A pool configuration and the operations applied to it.
    #[derive(Clone, Debug)]
    pub struct PoolProgram {
        /// `max_idle` (reduced modulo 9).
        pub max_idle: u8,
        /// `capacity_ceiling`: `Some(c)` is reduced to 1..=512.
        pub ceiling: Option<u16>,
        /// `shards` (reduced to 1..=4).
        pub shards: u8,
        /// `prefill` (reduced modulo 9).
        pub prefill: u8,
        /// `initial_capacity` (reduced modulo 1024).
        pub initial_capacity: u16,
        pub ops: Vec<PoolOp>,
    }

    /// One operation. `slot` picks a held guard, `d` a detached map (modulo their count).
    #[derive(Clone, Debug)]
    pub enum PoolOp {
        Get,
        GetOwned,
        /// Inserts `8 * n` keys from `start` into a held map.
        Fill { slot: u8, start: u16, n: u8 },
        /// Removes `8 * n` keys from `start` in a held map.
        Drain { slot: u8, start: u16, n: u8 },
        /// Drops a held guard: the map goes back to the pool.
        Return { slot: u8 },
        /// `Pooled::detach` / `OwnedPooled::detach`.
        Detach { slot: u8 },
        /// `pool.put` of a detached map.
        Put { d: u8 },
        /// Drops a detached map.
        DropDetached { d: u8 },
        Clear,
        Stats,
    }
}

enum Held<'p> {
    Borrowed(Pooled<'p, Map>),
    Owned(OwnedPooled<Map>),
}

impl Held<'_> {
    fn map(&self) -> &Map {
        match self {
            Held::Borrowed(g) => g,
            Held::Owned(g) => g,
        }
    }
}

/// Runs `prog`, checking every step; panics on the first mismatch.
pub fn run(prog: &PoolProgram, patience: std::time::Duration) {
    let tracker = Tracker::new();
    let max_idle = usize::from(prog.max_idle % 9);
    let ceiling = prog.ceiling.map(|c| usize::from(c % 512) + 1);
    let pool: Arc<MapPool<Map>> = Arc::new(
        MapPool::builder()
            .max_idle(max_idle)
            .capacity_ceiling(ceiling)
            .shards(usize::from(prog.shards % 4) + 1)
            .prefill(usize::from(prog.prefill % 9))
            .initial_capacity(usize::from(prog.initial_capacity % 1024))
            .build(),
    );
    let effective = pool.capacity_ceiling();
    assert_eq!(effective.is_some(), ceiling.is_some(), "capacity_ceiling");
    // What one idle map may hold: a reset map of the ceiling's capacity.
    let most_bytes = effective.map(|c| <Map as Recycle>::with_capacity(c).heap_bytes());
    let mut idle = usize::from(prog.prefill % 9).min(max_idle);
    let mut expect = PoolStats::default();
    expect.idle = idle;
    check_stats(&pool, &expect, most_bytes);
    {
        let mut held: Vec<Held<'_>> = Vec::new();
        let mut detached: Vec<Map> = Vec::new();
        for op in &prog.ops {
            match *op {
                PoolOp::Get | PoolOp::GetOwned => {
                    if held.len() >= 16 {
                        continue;
                    }
                    let h = if matches!(op, PoolOp::Get) {
                        Held::Borrowed(pool.get())
                    } else {
                        Held::Owned(pool.get_owned())
                    };
                    let m = h.map();
                    assert!(m.is_empty(), "handed out a non-empty map: {}", m.stats());
                    assert!(
                        m.pin().iter().next().is_none(),
                        "handed out a map with keys"
                    );
                    if let Some(c) = effective {
                        let cap = Recycle::capacity(m);
                        assert!(cap <= c, "handed out capacity {cap} over the ceiling {c}");
                    }
                    expect.gets += 1;
                    if idle > 0 {
                        idle -= 1;
                        expect.hits += 1;
                    } else {
                        expect.misses += 1;
                    }
                    held.push(h);
                }
                PoolOp::Fill { slot, start, n } => {
                    if let Some(h) = pick(&held, slot) {
                        for i in 0..8 * u16::from(n) {
                            let k = start.wrapping_add(i);
                            h.map().insert(k, Val::new(u32::from(i), &tracker));
                        }
                    }
                }
                PoolOp::Drain { slot, start, n } => {
                    if let Some(h) = pick(&held, slot) {
                        for i in 0..8 * u16::from(n) {
                            h.map().remove(&start.wrapping_add(i));
                        }
                    }
                }
                PoolOp::Return { slot } => {
                    if held.is_empty() {
                        continue;
                    }
                    let h = held.swap_remove(usize::from(slot) % held.len());
                    let over = effective.is_some_and(|c| Recycle::capacity(h.map()) > c);
                    drop(h);
                    returned(&mut expect, &mut idle, max_idle, over);
                }
                PoolOp::Detach { slot } => {
                    if held.is_empty() {
                        continue;
                    }
                    let map = match held.swap_remove(usize::from(slot) % held.len()) {
                        Held::Borrowed(g) => Pooled::detach(g),
                        Held::Owned(g) => OwnedPooled::detach(g),
                    };
                    expect.detached += 1;
                    detached.push(map);
                }
                PoolOp::Put { d } => {
                    if detached.is_empty() {
                        continue;
                    }
                    let map = detached.swap_remove(usize::from(d) % detached.len());
                    let over = effective.is_some_and(|c| Recycle::capacity(&map) > c);
                    pool.put(map);
                    returned(&mut expect, &mut idle, max_idle, over);
                }
                PoolOp::DropDetached { d } => {
                    if !detached.is_empty() {
                        detached.swap_remove(usize::from(d) % detached.len());
                    }
                }
                PoolOp::Clear => {
                    assert_eq!(pool.clear(), idle, "clear dropped a different count");
                    idle = 0;
                }
                PoolOp::Stats => {
                    let _ = format!("{} {:?}", pool.stats(), pool);
                }
            }
            expect.idle = idle;
            check_stats(&pool, &expect, most_bytes);
        }
    }
    drop(pool);
    assert_all_dropped(&tracker, patience);
}

fn pick<'a, 'p>(held: &'a [Held<'p>], slot: u8) -> Option<&'a Held<'p>> {
    (!held.is_empty()).then(|| &held[usize::from(slot) % held.len()])
}

/// The model's view of one return (a dropped guard or a `put`).
fn returned(expect: &mut PoolStats, idle: &mut usize, max_idle: usize, over: bool) {
    expect.returns += 1;
    if over {
        expect.returns_shrunk += 1;
    }
    if *idle < max_idle {
        *idle += 1;
    } else {
        expect.returns_dropped += 1;
    }
}

fn check_stats(pool: &MapPool<Map>, expect: &PoolStats, most_bytes: Option<usize>) {
    let s = pool.stats();
    let got = (
        s.gets,
        s.hits,
        s.misses,
        s.returns,
        s.returns_shrunk,
        s.returns_dropped,
        s.detached,
        s.idle,
    );
    let want = (
        expect.gets,
        expect.hits,
        expect.misses,
        expect.returns,
        expect.returns_shrunk,
        expect.returns_dropped,
        expect.detached,
        expect.idle,
    );
    assert_eq!(
        got, want,
        "pool stats (gets, hits, misses, returns, shrunk, dropped, detached, idle): {s}"
    );
    assert!(s.idle <= pool.max_idle(), "idle over max_idle: {s}");
    if let Some(most) = most_bytes {
        assert!(
            s.retained_bytes <= s.idle * most,
            "idle maps hold {} bytes, more than {} x {most}: {s}",
            s.retained_bytes,
            s.idle
        );
    }
}

impl PoolProgram {
    /// A random program of up to `max_ops` operations.
    pub fn random(rng: &mut Rng, max_ops: usize) -> PoolProgram {
        let n = rng.below(max_ops as u64 + 1) as usize;
        PoolProgram {
            max_idle: rng.u8(),
            ceiling: rng.chance(3, 4).then(|| rng.u16()),
            shards: rng.u8(),
            prefill: rng.u8(),
            initial_capacity: rng.u16(),
            ops: (0..n)
                .map(|_| match rng.below(12) {
                    0..=1 => PoolOp::Get,
                    2 => PoolOp::GetOwned,
                    3..=4 => PoolOp::Fill {
                        slot: rng.u8(),
                        start: rng.u16(),
                        n: rng.u8() % 64,
                    },
                    5 => PoolOp::Drain {
                        slot: rng.u8(),
                        start: rng.u16(),
                        n: rng.u8() % 64,
                    },
                    6..=7 => PoolOp::Return { slot: rng.u8() },
                    8 => PoolOp::Detach { slot: rng.u8() },
                    9 => PoolOp::Put { d: rng.u8() },
                    10 => PoolOp::DropDetached { d: rng.u8() },
                    _ => {
                        if rng.chance(1, 2) {
                            PoolOp::Clear
                        } else {
                            PoolOp::Stats
                        }
                    }
                })
                .collect(),
        }
    }
}
