//! Unit tests of the pool: ceiling, max_idle, detach, owned guards, panics.

use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use proptest::prelude::*;

use super::shard::Shard;
use super::*;

type Map = HashMap<u64, u64>;

// Static checks of the auto traits the API promises.
fn assert_send<T: Send>() {}
fn assert_sync<T: Sync>() {}
fn assert_static<T: 'static>() {}

#[test]
fn auto_traits() {
    assert_send::<MapPool<Map>>();
    assert_sync::<MapPool<Map>>();
    assert_send::<Pooled<'static, Map>>();
    assert_sync::<Pooled<'static, Map>>();
    assert_send::<OwnedPooled<Map>>();
    assert_sync::<OwnedPooled<Map>>();
    assert_static::<OwnedPooled<Map>>();
    assert_send::<PoolBuilder<Map>>();
    assert_sync::<PoolBuilder<Map>>();
    assert_send::<PoolStats>();
    // A `Send` but not `Sync` type still gives a `Sync` pool (objects are only
    // reached under a lock or through an exclusive guard).
    assert_sync::<MapPool<Vec<std::cell::Cell<u8>>>>();
    assert_send::<OwnedPooled<Vec<std::cell::Cell<u8>>>>();
}

#[test]
fn oversized_return_is_shrunk_to_the_ceiling() {
    let pool: MapPool<Map> = MapPool::builder().capacity_ceiling(64).shards(1).build();
    let ceiling = pool.capacity_ceiling().unwrap();
    assert_eq!(ceiling, Map::with_capacity(64).capacity());
    {
        let mut map = pool.get();
        map.extend((0..10_000).map(|k| (k, k)));
    }
    let stats = pool.stats();
    assert_eq!(
        (stats.returns, stats.returns_shrunk, stats.returns_dropped),
        (1, 1, 0)
    );
    assert_eq!(stats.idle, 1);
    let map = pool.get();
    assert!(map.is_empty());
    assert_eq!(map.capacity(), ceiling);
    assert_eq!(pool.stats().hits, 1);
}

#[test]
fn object_at_the_rounded_ceiling_is_not_shrunk() {
    let pool: MapPool<Map> = MapPool::builder().capacity_ceiling(1000).build();
    let ceiling = pool.capacity_ceiling().unwrap();
    for _ in 0..3 {
        let mut map = pool.get();
        // Fill to the rounded capacity, without growing past it.
        map.reserve(ceiling);
        map.extend((0..ceiling as u64).map(|k| (k, k)));
        assert_eq!(map.capacity(), ceiling);
    }
    assert_eq!(pool.stats().returns_shrunk, 0);
}

#[test]
fn no_ceiling_keeps_everything() {
    let pool: MapPool<Vec<u64>> = MapPool::builder().capacity_ceiling(None).build();
    pool.get().extend(0..100_000);
    let stats = pool.stats();
    assert_eq!((stats.returns_shrunk, stats.returns_dropped), (0, 0));
    assert_eq!(stats.retained_bytes, pool.get().capacity() * 8);
}

/// A type whose shrink does nothing: it can never come back under a ceiling.
struct Stubborn(Vec<u8>);

impl Recycle for Stubborn {
    fn with_capacity(capacity: usize) -> Self {
        Stubborn(Vec::with_capacity(capacity))
    }
    fn reset(&mut self) {
        self.0.clear();
    }
    fn capacity(&self) -> usize {
        self.0.capacity()
    }
    fn heap_bytes(&self) -> usize {
        self.0.capacity()
    }
    fn shrink_to(&mut self, _capacity: usize) {}
}

#[test]
fn unshrinkable_object_is_dropped() {
    let pool: MapPool<Stubborn> = MapPool::builder().capacity_ceiling(16).build();
    pool.get().0.resize(1000, 0);
    let stats = pool.stats();
    assert_eq!(
        (stats.returns, stats.returns_shrunk, stats.returns_dropped),
        (1, 1, 1)
    );
    assert_eq!((stats.idle, stats.retained_bytes), (0, 0));
}

#[test]
fn initial_capacity_and_prefill_are_clamped() {
    let pool: MapPool<Vec<u8>> = MapPool::builder()
        .initial_capacity(100)
        .capacity_ceiling(10)
        .prefill(50)
        .max_idle(3)
        .build();
    assert_eq!(pool.initial_capacity(), 10);
    let stats = pool.stats();
    assert_eq!((stats.idle, stats.retained_bytes), (3, 30));
    assert_eq!(stats.gets + stats.returns, 0);
}

#[test]
fn max_idle_is_exact_for_every_shard_count() {
    for shards in [1, 2, 3, 4, 8, 64] {
        for max_idle in [0, 1, 2, 3, 5, 8, 13] {
            let pool: MapPool<Vec<u8>> =
                MapPool::builder().max_idle(max_idle).shards(shards).build();
            let held: Vec<_> = (0..20).map(|_| pool.get()).collect();
            drop(held);
            let stats = pool.stats();
            let label = format!("shards {shards}, max_idle {max_idle}: {stats}");
            assert_eq!(stats.idle, max_idle, "{label}");
            assert_eq!(stats.returns_dropped, 20 - max_idle as u64, "{label}");
            // Every idle object can be found again from this one thread.
            let again: Vec<_> = (0..20).map(|_| pool.get()).collect();
            assert_eq!(pool.stats().hits, max_idle as u64, "{label}");
            drop(again);
        }
    }
}

#[test]
fn prefill_fills_every_shard_configuration() {
    for shards in [1, 2, 4, 8] {
        for max_idle in 0..12 {
            for prefill in 0..=max_idle {
                let pool: MapPool<Vec<u8>> = MapPool::builder()
                    .max_idle(max_idle)
                    .prefill(prefill)
                    .shards(shards)
                    .build();
                assert_eq!(pool.stats().idle, prefill);
            }
        }
    }
}

#[test]
fn detach_and_put() {
    let pool: MapPool<Vec<u32>> = MapPool::new();
    let mut guard = pool.get();
    guard.extend([1, 2, 3]);
    let kept = Pooled::detach(guard);
    assert_eq!(kept, [1, 2, 3]);
    let stats = pool.stats();
    assert_eq!((stats.detached, stats.returns, stats.idle), (1, 0, 0));
    pool.put(kept);
    let stats = pool.stats();
    assert_eq!((stats.returns, stats.idle), (1, 1));
    let again = pool.get();
    assert!(again.is_empty() && again.capacity() >= 3);
}

#[test]
fn owned_guard_crosses_threads() {
    let pool: Arc<MapPool<Map>> = Arc::new(MapPool::builder().shards(2).build());
    let guards: Vec<OwnedPooled<Map>> = (0..4).map(|_| pool.get_owned()).collect();
    let handles: Vec<_> = guards
        .into_iter()
        .enumerate()
        .map(|(i, mut map)| {
            std::thread::spawn(move || {
                map.insert(i as u64, 1);
                assert_eq!(map.len(), 1);
                // Dropped here, on another thread.
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    let stats = pool.stats();
    assert_eq!((stats.gets, stats.returns, stats.idle), (4, 4, 4));
    let detached = OwnedPooled::detach(pool.get_owned());
    assert!(detached.is_empty());
    assert_eq!(pool.stats().detached, 1);
    // The pool outlives its creator's handle while a guard holds it.
    let guard = pool.get_owned();
    drop(pool);
    assert!(guard.is_empty());
}

#[test]
fn panic_while_holding_a_guard_returns_the_object() {
    let pool: MapPool<Map> = MapPool::builder().shards(1).build();
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        let mut map = pool.get();
        map.insert(1, 1);
        panic!("request failed");
    }));
    assert!(result.is_err());
    let stats = pool.stats();
    assert_eq!((stats.gets, stats.returns, stats.idle), (1, 1, 1));
    assert!(pool.get().is_empty());
}

/// Objects of this type panic in `reset` (or in `Drop`) when told to.
struct Touchy {
    panic_in_reset: bool,
    panic_in_drop: bool,
    drops: Arc<AtomicUsize>,
}

static TOUCHY_DROPS: AtomicUsize = AtomicUsize::new(0);

impl Recycle for Touchy {
    fn with_capacity(_capacity: usize) -> Self {
        Touchy {
            panic_in_reset: false,
            panic_in_drop: false,
            drops: Arc::new(AtomicUsize::new(0)),
        }
    }
    fn reset(&mut self) {
        if self.panic_in_reset {
            panic!("reset failed");
        }
    }
    fn capacity(&self) -> usize {
        0
    }
    fn heap_bytes(&self) -> usize {
        0
    }
    fn shrink_to(&mut self, _capacity: usize) {}
}

impl Drop for Touchy {
    fn drop(&mut self) {
        self.drops.fetch_add(1, SeqCst);
        TOUCHY_DROPS.fetch_add(1, SeqCst);
        if self.panic_in_drop {
            panic!("drop failed");
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

#[test]
fn panicking_reset_drops_the_object_and_propagates() {
    let pool: MapPool<Touchy> = MapPool::new();
    let mut guard = pool.get();
    guard.panic_in_reset = true;
    let drops = Arc::clone(&guard.drops);
    let payload = panic::catch_unwind(AssertUnwindSafe(|| drop(guard))).unwrap_err();
    assert_eq!(panic_message(&*payload), "reset failed");
    assert_eq!(drops.load(SeqCst), 1);
    let stats = pool.stats();
    assert_eq!(
        (stats.returns, stats.returns_dropped, stats.idle),
        (1, 1, 0)
    );
    // Still usable.
    drop(pool.get());
    assert_eq!(pool.stats().idle, 1);
}

#[test]
fn panicking_reset_during_unwinding_does_not_abort() {
    let pool: MapPool<Touchy> = MapPool::new();
    let payload = panic::catch_unwind(AssertUnwindSafe(|| {
        let mut guard = pool.get();
        guard.panic_in_reset = true;
        guard.panic_in_drop = true;
        panic!("handler failed");
    }))
    .unwrap_err();
    // The first panic is the one that comes out.
    assert_eq!(panic_message(&*payload), "handler failed");
    let stats = pool.stats();
    assert_eq!(
        (stats.returns, stats.returns_dropped, stats.idle),
        (1, 1, 0)
    );
    drop(pool.get());
    assert_eq!(pool.stats().idle, 1);
}

#[test]
fn panicking_drop_of_an_excess_object_while_unwinding_does_not_abort() {
    let pool: MapPool<Touchy> = MapPool::builder().max_idle(0).build();
    let before = TOUCHY_DROPS.load(SeqCst);
    let payload = panic::catch_unwind(AssertUnwindSafe(|| {
        let mut guard = pool.get();
        guard.panic_in_drop = true;
        panic!("handler failed");
    }))
    .unwrap_err();
    assert_eq!(panic_message(&*payload), "handler failed");
    assert!(TOUCHY_DROPS.load(SeqCst) > before);
    assert_eq!(pool.stats().returns_dropped, 1);
}

#[test]
fn poisoned_shard_lock_is_recovered() {
    let shard: Shard<Vec<u8>> = Shard::new(2);
    let _ = panic::catch_unwind(AssertUnwindSafe(|| {
        let mut locked = shard.lock();
        locked.push(Vec::new(), 0).unwrap();
        panic!("poison");
    }));
    assert!(shard.lock().pop().is_some());
    assert!(shard.try_lock().is_some());
    assert_eq!(shard.idle_hint(), 0);
}

#[test]
fn idle_objects_are_found_across_shards() {
    let pool: MapPool<Vec<u8>> = MapPool::builder().shards(4).max_idle(8).build();
    let held: Vec<_> = (0..8).map(|_| pool.get()).collect();
    drop(held);
    assert_eq!(pool.stats().idle, 8);
    let held: Vec<_> = (0..8).map(|_| pool.get()).collect();
    let stats = pool.stats();
    assert_eq!((stats.hits, stats.misses), (8, 8));
    drop(held);
}

#[test]
fn clear_drops_idle_objects_only() {
    let pool: MapPool<Vec<u8>> = MapPool::builder().initial_capacity(10).prefill(4).build();
    let held = pool.get();
    assert_eq!(pool.clear(), 3);
    let stats = pool.stats();
    assert_eq!((stats.idle, stats.retained_bytes), (0, 0));
    drop(held);
    assert_eq!(pool.stats().idle, 1);
}

#[test]
fn zero_sized_elements_never_trip_the_ceiling() {
    let pool: MapPool<Vec<()>> = MapPool::builder().capacity_ceiling(4).build();
    assert_eq!(pool.capacity_ceiling(), Some(usize::MAX));
    pool.get().extend(std::iter::repeat_n((), 100));
    let stats = pool.stats();
    assert_eq!(
        (stats.returns_shrunk, stats.idle, stats.retained_bytes),
        (0, 1, 0)
    );
}

#[test]
fn debug_output_names_the_settings() {
    let pool: MapPool<Vec<u8>> = MapPool::builder().max_idle(3).build();
    let text = format!("{pool:?}");
    assert!(text.contains("max_idle: 3"), "{text}");
    let builder = MapPool::<Vec<u8>>::builder().capacity_ceiling(None);
    assert!(format!("{builder:?}").contains("capacity_ceiling: None"));
    let guard = pool.get();
    assert_eq!(format!("{guard:?}"), "Pooled([])");
}

#[derive(Clone, Debug)]
enum Op {
    Get,
    /// Grow the held object at this index (mod the number held) to this many
    /// elements.
    Grow(usize, usize),
    /// Drop the held object at this index.
    Release(usize),
    Detach(usize),
    Put(usize),
    Clear,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Get),
        3 => (any::<usize>(), 0usize..200).prop_map(|(i, n)| Op::Grow(i, n)),
        4 => any::<usize>().prop_map(Op::Release),
        1 => any::<usize>().prop_map(Op::Detach),
        1 => (0usize..200).prop_map(Op::Put),
        1 => Just(Op::Clear),
    ]
}

/// What the pool should count, for one thread.
#[derive(Default)]
struct Model {
    max_idle: usize,
    ceiling: Option<usize>,
    idle: usize,
    gets: u64,
    hits: u64,
    returns: u64,
    shrunk: u64,
    dropped: u64,
    detached: u64,
}

impl Model {
    fn give_back(&mut self, capacity: usize) {
        self.returns += 1;
        if self.ceiling.is_some_and(|c| capacity > c) {
            self.shrunk += 1;
        }
        if self.idle < self.max_idle {
            self.idle += 1;
        } else {
            self.dropped += 1;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 4 } else { 128 }))]

    /// The pool against a model of its idle count and counters, one thread.
    #[test]
    fn matches_a_model(
        ops in proptest::collection::vec(op(), 0..60),
        max_idle in 0usize..6,
        shards in 1usize..4,
        ceiling in proptest::option::of(0usize..64),
    ) {
        let pool: MapPool<Vec<u64>> = MapPool::builder()
            .max_idle(max_idle)
            .shards(shards)
            .capacity_ceiling(ceiling)
            .build();
        let mut held: Vec<Pooled<'_, Vec<u64>>> = Vec::new();
        let mut model = Model { max_idle, ceiling, ..Model::default() };
        for op in ops {
            match op {
                Op::Get => {
                    let v = pool.get();
                    prop_assert!(v.is_empty());
                    prop_assert!(ceiling.is_none_or(|c| v.capacity() <= c));
                    model.gets += 1;
                    if model.idle > 0 {
                        model.idle -= 1;
                        model.hits += 1;
                    }
                    held.push(v);
                }
                Op::Grow(i, n) if !held.is_empty() => {
                    let len = held.len();
                    held[i % len].extend(0..n as u64);
                }
                Op::Release(i) if !held.is_empty() => {
                    let len = held.len();
                    let v = held.swap_remove(i % len);
                    model.give_back(v.capacity());
                    drop(v);
                }
                Op::Detach(i) if !held.is_empty() => {
                    let len = held.len();
                    let v = Pooled::detach(held.swap_remove(i % len));
                    model.detached += 1;
                    model.give_back(v.capacity());
                    pool.put(v);
                }
                Op::Put(n) => {
                    let v: Vec<u64> = (0..n as u64).collect();
                    model.give_back(v.capacity());
                    pool.put(v);
                }
                Op::Clear => {
                    prop_assert_eq!(pool.clear(), model.idle);
                    model.idle = 0;
                }
                _ => {}
            }
            let stats = pool.stats();
            prop_assert_eq!(stats.idle, model.idle);
            prop_assert_eq!(stats.gets, model.gets);
            prop_assert_eq!(stats.hits, model.hits);
            prop_assert_eq!(stats.misses, model.gets - model.hits);
            prop_assert_eq!(stats.returns, model.returns);
            prop_assert_eq!(stats.returns_shrunk, model.shrunk);
            prop_assert_eq!(stats.returns_dropped, model.dropped);
            prop_assert_eq!(stats.detached, model.detached);
            if let Some(c) = ceiling {
                prop_assert!(stats.retained_bytes <= model.idle * c * 8);
            }
        }
    }
}

#[test]
fn reset_is_called_on_every_kept_return() {
    struct Flagged(Vec<u8>, Arc<AtomicBool>);
    impl Recycle for Flagged {
        fn with_capacity(capacity: usize) -> Self {
            Flagged(
                Vec::with_capacity(capacity),
                Arc::new(AtomicBool::new(false)),
            )
        }
        fn reset(&mut self) {
            self.0.clear();
            self.1.store(true, SeqCst);
        }
        fn capacity(&self) -> usize {
            self.0.capacity()
        }
        fn heap_bytes(&self) -> usize {
            self.0.capacity()
        }
        fn shrink_to(&mut self, capacity: usize) {
            self.0.shrink_to(capacity);
        }
        fn rounded_capacity(requested: usize) -> usize {
            requested
        }
    }
    let pool: MapPool<Flagged> = MapPool::new();
    let guard = pool.get();
    let flag = Arc::clone(&guard.1);
    drop(guard);
    assert!(flag.load(SeqCst));
}

// ---------------------------------------------------------------------------------------------
// Per-thread caches (white-box: `local`).

/// Whether the calling thread has a cache (cell) in `pool`.
fn has_cell<T: Recycle>(pool: &MapPool<T>) -> bool {
    matches!(pool.shared.my_cell(), Ok(Some(_)))
}

/// The stripes' limits now.
fn limits<T: Recycle>(pool: &MapPool<T>) -> Vec<usize> {
    pool.core()
        .shards
        .iter()
        .map(|s| s.0.limit_hint())
        .collect()
}

#[test]
fn a_cache_borrows_one_unit_of_max_idle_while_its_thread_lives() {
    let pool: MapPool<Vec<u8>> = MapPool::builder().max_idle(4).shards(1).build();
    assert_eq!(pool.core().cells.len(), 2, "max_idle / 2 caches");
    assert_eq!(limits(&pool), [4]);
    assert!(!has_cell(&pool));
    drop(pool.get());
    assert!(has_cell(&pool), "claimed on first use");
    assert_eq!(limits(&pool), [3]);
    std::thread::scope(|s| {
        s.spawn(|| {
            drop(pool.get());
            assert!(has_cell(&pool));
            assert_eq!(limits(&pool), [2]);
        })
        .join()
        .unwrap();
    });
    // Joined explicitly: the thread's destructors ran, its unit and object came back.
    assert_eq!(limits(&pool), [3]);
    let stats = pool.stats();
    assert_eq!((stats.idle, stats.gets, stats.misses), (2, 2, 2), "{stats}");
    // Both are reachable: one cached here, one in the stripe.
    let (a, b) = (pool.get(), pool.get());
    assert_eq!(pool.stats().misses, 2);
    drop((a, b));
}

#[test]
fn a_claim_on_a_full_stripe_moves_an_object_into_the_cache() {
    let pool: MapPool<Vec<u8>> = MapPool::builder().max_idle(4).shards(1).prefill(4).build();
    assert_eq!(limits(&pool), [4]);
    let guard = pool.get(); // claims: the stripe lends a unit and one of its 4 objects
    assert_eq!(limits(&pool), [3]);
    let stats = pool.stats();
    assert_eq!((stats.hits, stats.idle), (1, 3), "{stats}");
    drop(guard);
    assert_eq!(pool.stats().idle, 4);
    assert_eq!(pool.stats().returns_dropped, 0);
}

#[test]
fn threads_beyond_the_caches_use_the_stripes() {
    // `max_idle(2)`: one cache, claimed by the first thread; the stripe keeps one unit.
    let pool: MapPool<Vec<u8>> = MapPool::builder().max_idle(2).shards(1).build();
    drop(pool.get());
    assert!(has_cell(&pool));
    std::thread::scope(|s| {
        s.spawn(|| {
            let guard = pool.get();
            assert!(!has_cell(&pool), "no cache left");
            drop(guard);
            let stats = pool.stats();
            assert_eq!((stats.misses, stats.idle), (2, 2), "{stats}");
            // It took the stripe's object, not the other thread's cached one.
            drop(pool.get());
            assert_eq!(pool.stats().misses, 2);
        });
    });
    // A pool with `max_idle` under 2 has no cache at all.
    let tiny: MapPool<Vec<u8>> = MapPool::builder().max_idle(1).build();
    drop(tiny.get());
    assert!(!has_cell(&tiny));
    assert_eq!(tiny.stats().idle, 1);
}

#[test]
fn hits_are_gets_minus_misses() {
    let pool: MapPool<Vec<u8>> = MapPool::builder().max_idle(4).build();
    for n in 1..5u64 {
        let held: Vec<_> = (0..n).map(|_| pool.get()).collect();
        drop(held);
    }
    let stats = pool.stats();
    assert_eq!(stats.gets, 10);
    assert_eq!(stats.misses, 4, "{stats}");
    assert_eq!(stats.hits, 6, "{stats}");
}
