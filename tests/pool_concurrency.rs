//! Threads hammering one `MapPool`: no object is ever held twice, none is
//! lost or leaked, and the statistics add up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::thread;

use tiermap::pool::{MapPool, OwnedPooled, Pooled, Recycle};

const THREADS: usize = 4;
const ITERATIONS: usize = if cfg!(miri) { 200 } else { 20_000 };
/// Most objects that can ever exist in one test.
const MAX_OBJECTS: usize = 1 << 16;
const CEILING: usize = 64;

/// Book-keeping for the objects of one test. Every check uses `SeqCst`: this
/// is the oracle, it should be obviously right rather than fast.
struct Registry {
    in_use: Box<[AtomicBool]>,
    created: AtomicUsize,
    live: AtomicUsize,
}

/// One registry per test, selected by `Tracked`'s parameter, so that tests
/// may run in parallel.
fn registry(index: usize) -> &'static Registry {
    static ALL: OnceLock<Vec<Registry>> = OnceLock::new();
    &ALL.get_or_init(|| {
        (0..4)
            .map(|_| Registry {
                in_use: (0..MAX_OBJECTS).map(|_| AtomicBool::new(false)).collect(),
                created: AtomicUsize::new(0),
                live: AtomicUsize::new(0),
            })
            .collect()
    })[index]
}

/// A pooled object that knows who holds it.
struct Tracked<const R: usize> {
    id: usize,
    /// The tag of the thread using the object, 0 when nobody does.
    owner: AtomicUsize,
    data: Vec<u64>,
}

impl<const R: usize> Tracked<R> {
    /// Marks the object as held; fails if it already was.
    fn acquire(&self, tag: usize) {
        let registry = registry(R);
        assert!(
            !registry.in_use[self.id].swap(true, SeqCst),
            "object {} handed out while in use",
            self.id
        );
        assert!(self.data.is_empty(), "object {} was not reset", self.id);
        assert!(
            self.data.capacity() <= CEILING,
            "object {} over the ceiling",
            self.id
        );
        assert_eq!(
            self.owner.swap(tag, SeqCst),
            0,
            "object {} has an owner",
            self.id
        );
    }

    /// Uses the object for a while, checking that nobody else does.
    fn work(&mut self, tag: usize, amount: u64) {
        for i in 0..amount {
            self.data.push(i);
            assert_eq!(self.owner.load(SeqCst), tag, "object {} shared", self.id);
        }
        thread::yield_now();
        assert_eq!(self.owner.load(SeqCst), tag, "object {} shared", self.id);
    }

    /// Marks the object as released; the caller then gives it back.
    fn release(&self, tag: usize) {
        assert_eq!(self.owner.swap(0, SeqCst), tag, "object {} stolen", self.id);
        assert!(
            registry(R).in_use[self.id].swap(false, SeqCst),
            "object {} not held",
            self.id
        );
    }
}

impl<const R: usize> Recycle for Tracked<R> {
    fn with_capacity(capacity: usize) -> Self {
        let registry = registry(R);
        let id = registry.created.fetch_add(1, SeqCst);
        assert!(id < MAX_OBJECTS, "too many objects created");
        registry.live.fetch_add(1, SeqCst);
        Tracked {
            id,
            owner: AtomicUsize::new(0),
            data: Vec::with_capacity(capacity),
        }
    }

    fn reset(&mut self) {
        assert!(
            !registry(R).in_use[self.id].load(SeqCst),
            "reset while in use"
        );
        assert_eq!(self.owner.load(SeqCst), 0, "reset while owned");
        self.data.clear();
    }

    fn capacity(&self) -> usize {
        self.data.capacity()
    }

    fn heap_bytes(&self) -> usize {
        self.data.capacity() * 8
    }

    fn shrink_to(&mut self, capacity: usize) {
        self.data.shrink_to(capacity);
    }

    fn rounded_capacity(requested: usize) -> usize {
        // `Vec` is exact; not creating a probe keeps `created` exact too.
        requested
    }
}

impl<const R: usize> Drop for Tracked<R> {
    fn drop(&mut self) {
        let registry = registry(R);
        assert!(
            !registry.in_use[self.id].load(SeqCst),
            "object {} dropped in use",
            self.id
        );
        registry.live.fetch_sub(1, SeqCst);
    }
}

/// What one thread did, for the final accounting.
#[derive(Default)]
struct Tally {
    gets: u64,
    detached: u64,
    puts: u64,
    detached_dropped: u64,
    oversized: u64,
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) % n
    }
}

fn hammer<const R: usize>(pool: MapPool<Tracked<R>>, prefill: usize) {
    let pool = Arc::new(pool);
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..THREADS)
        .map(|_| mpsc::channel::<OwnedPooled<Tracked<R>>>())
        .unzip();
    // Thread `t` sends owned guards to thread `t + 1`, which drops them.
    let mut senders: Vec<Option<_>> = senders.into_iter().map(Some).collect();
    senders.rotate_left(1);
    let tallies: Vec<Tally> = thread::scope(|scope| {
        let handles: Vec<_> = senders
            .into_iter()
            .zip(receivers)
            .enumerate()
            .map(|(t, (sender, receiver))| {
                let pool = &pool;
                scope.spawn(move || {
                    let sender = sender.unwrap();
                    let tag = t + 1;
                    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (tag as u64) << 7);
                    let mut tally = Tally::default();
                    let mut held: Vec<Pooled<'_, Tracked<R>>> = Vec::new();
                    let mut detached: Vec<Tracked<R>> = Vec::new();
                    for _ in 0..ITERATIONS {
                        match rng.below(100) {
                            // A short request.
                            0..=59 => {
                                let mut guard = pool.get();
                                tally.gets += 1;
                                guard.acquire(tag);
                                guard.work(tag, 1 + rng.below(8));
                                guard.release(tag);
                            }
                            // Hold a few guards at once.
                            60..=74 => {
                                if held.len() < 3 {
                                    let mut guard = pool.get();
                                    tally.gets += 1;
                                    guard.acquire(tag);
                                    guard.work(tag, rng.below(4));
                                    held.push(guard);
                                } else {
                                    for guard in held.drain(..) {
                                        guard.release(tag);
                                    }
                                }
                            }
                            // An owned guard, released by the next thread.
                            75..=84 => {
                                let mut guard = pool.get_owned();
                                tally.gets += 1;
                                guard.acquire(tag);
                                guard.work(tag, 2);
                                guard.release(tag);
                                sender.send(guard).unwrap();
                            }
                            // Detach, and later put back or drop.
                            85..=91 => {
                                let mut guard = pool.get();
                                tally.gets += 1;
                                guard.acquire(tag);
                                guard.work(tag, 1);
                                guard.release(tag);
                                detached.push(Pooled::detach(guard));
                                tally.detached += 1;
                                if detached.len() > 2 {
                                    let object = detached.remove(0);
                                    if rng.below(2) == 0 {
                                        pool.put(object);
                                        tally.puts += 1;
                                    } else {
                                        drop(object);
                                        tally.detached_dropped += 1;
                                    }
                                }
                            }
                            // A request over the ceiling.
                            92..=96 => {
                                let mut guard = pool.get();
                                tally.gets += 1;
                                guard.acquire(tag);
                                guard.work(tag, CEILING as u64 * 4);
                                guard.release(tag);
                                tally.oversized += 1;
                            }
                            // Read the statistics while others work.
                            _ => {
                                let stats = pool.stats();
                                assert!(stats.idle <= pool.max_idle(), "{stats}");
                            }
                        }
                        // Drop owned guards sent by the previous thread.
                        while let Ok(guard) = receiver.try_recv() {
                            drop(guard);
                        }
                    }
                    for guard in held.drain(..) {
                        guard.release(tag);
                    }
                    for object in detached.drain(..) {
                        pool.put(object);
                        tally.puts += 1;
                    }
                    drop(sender);
                    // Until the previous thread is done sending.
                    for guard in receiver {
                        drop(guard);
                    }
                    tally
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let sum = |f: fn(&Tally) -> u64| tallies.iter().map(f).sum::<u64>();
    let (gets, detached, puts) = (sum(|t| t.gets), sum(|t| t.detached), sum(|t| t.puts));
    let detached_dropped = sum(|t| t.detached_dropped);
    let stats = pool.stats();
    let registry = registry(R);
    println!("{stats}");

    assert_eq!(stats.gets, gets, "{stats}");
    assert_eq!(stats.gets, stats.hits + stats.misses, "{stats}");
    assert_eq!(stats.detached, detached, "{stats}");
    assert_eq!(stats.returns, gets - detached + puts, "{stats}");
    assert!(stats.returns_shrunk >= sum(|t| t.oversized), "{stats}");
    assert!(stats.idle <= pool.max_idle(), "{stats}");
    assert_eq!(
        stats.idle as u64 + stats.returns_dropped + stats.hits,
        prefill as u64 + stats.returns,
        "{stats}"
    );
    // Every object ever created is idle in the pool or was dropped.
    assert_eq!(
        registry.created.load(SeqCst) as u64,
        stats.misses + prefill as u64
    );
    assert_eq!(registry.live.load(SeqCst), stats.idle, "{stats}");
    assert_eq!(
        stats.returns_dropped + detached_dropped + stats.idle as u64,
        registry.created.load(SeqCst) as u64,
        "{stats}"
    );
    assert!(registry.in_use.iter().all(|flag| !flag.load(SeqCst)));
    assert!(stats.retained_bytes <= stats.idle * CEILING * 8, "{stats}");

    assert_eq!(pool.clear(), stats.idle);
    assert_eq!(registry.live.load(SeqCst), 0);
    assert_eq!(pool.stats().retained_bytes, 0);
}

#[test]
fn one_shard_tight_max_idle() {
    let pool = MapPool::builder()
        .shards(1)
        .max_idle(2)
        .capacity_ceiling(CEILING)
        .build();
    hammer::<0>(pool, 0);
}

#[test]
fn four_shards_with_prefill() {
    let pool = MapPool::builder()
        .shards(4)
        .max_idle(8)
        .prefill(6)
        .initial_capacity(8)
        .capacity_ceiling(CEILING)
        .build();
    hammer::<1>(pool, 6);
}

#[test]
fn default_shards_roomy_pool() {
    let pool = MapPool::builder()
        .max_idle(64)
        .capacity_ceiling(CEILING)
        .build();
    hammer::<2>(pool, 0);
}

/// std maps under contention: every map handed out is empty and under the
/// ceiling, and an `OwnedPooled` can be sent to and dropped on other threads.
#[test]
fn hash_maps_under_contention() {
    let pool: Arc<MapPool<HashMap<u64, u64>>> = Arc::new(
        MapPool::builder()
            .max_idle(4)
            .capacity_ceiling(CEILING)
            .build(),
    );
    let ceiling = pool.capacity_ceiling().unwrap();
    let handles: Vec<_> = (0..THREADS as u64)
        .map(|t| {
            let pool = Arc::clone(&pool);
            thread::spawn(move || {
                for i in 0..ITERATIONS as u64 / 4 {
                    let mut map = pool.get_owned();
                    assert!(map.is_empty() && map.capacity() <= ceiling);
                    let n = if i % 97 == 0 { 1000 } else { 5 };
                    map.extend((0..n).map(|k| (k, t)));
                    assert!(map.values().all(|&v| v == t));
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    let stats = pool.stats();
    assert_eq!(stats.gets, stats.hits + stats.misses);
    assert_eq!(stats.returns, stats.gets);
    assert!(stats.idle <= 4 && stats.returns_shrunk > 0, "{stats}");
}
