//! `MapPool`'s per-thread caches (one cached object per thread and pool): what happens when a
//! thread exits, when the pool is dropped while other threads still cache its objects, how the
//! caches count against `max_idle`, and a panicking `reset` on the cached path.
//!
//! Every object is a `Counted`, which records its drops in a per-test registry: a test fails
//! on a double drop at once, and on a leak when it checks that every object created was
//! dropped exactly once.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, OnceLock};
use std::thread;

use tiermap::pool::{MapPool, Recycle};

/// Most objects one test may create.
const MAX_OBJECTS: usize = 1 << 14;

/// The objects of one test: drops per object id. `SeqCst` everywhere: this is the oracle.
struct Registry {
    created: AtomicUsize,
    drops: Box<[AtomicUsize]>,
}

/// One registry per test (selected by `Counted`'s parameter), so tests may run in parallel.
fn registry(index: usize) -> &'static Registry {
    static ALL: OnceLock<Vec<Registry>> = OnceLock::new();
    &ALL.get_or_init(|| {
        (0..8)
            .map(|_| Registry {
                created: AtomicUsize::new(0),
                drops: (0..MAX_OBJECTS).map(|_| AtomicUsize::new(0)).collect(),
            })
            .collect()
    })[index]
}

impl Registry {
    fn created(&self) -> usize {
        self.created.load(SeqCst)
    }

    /// Objects created and not yet dropped.
    fn live(&self) -> usize {
        let created = self.created();
        created
            - (0..created)
                .filter(|&i| self.drops[i].load(SeqCst) > 0)
                .count()
    }

    /// Every object created so far was dropped exactly once.
    fn assert_all_dropped_once(&self) {
        for i in 0..self.created() {
            assert_eq!(
                self.drops[i].load(SeqCst),
                1,
                "object {i} dropped a wrong number of times"
            );
        }
    }
}

/// A pooled object that counts its drops, and can be told to panic in `reset`.
struct Counted<const R: usize> {
    id: usize,
    panic_in_reset: bool,
    used: Vec<u8>,
}

impl<const R: usize> Recycle for Counted<R> {
    fn with_capacity(capacity: usize) -> Self {
        let id = registry(R).created.fetch_add(1, SeqCst);
        assert!(id < MAX_OBJECTS, "too many objects");
        Counted {
            id,
            panic_in_reset: false,
            used: Vec::with_capacity(capacity),
        }
    }
    fn reset(&mut self) {
        if self.panic_in_reset {
            panic!("reset failed");
        }
        self.used.clear();
    }
    fn capacity(&self) -> usize {
        self.used.capacity()
    }
    fn heap_bytes(&self) -> usize {
        self.used.capacity()
    }
    fn shrink_to(&mut self, capacity: usize) {
        self.used.shrink_to(capacity);
    }
    fn rounded_capacity(requested: usize) -> usize {
        // `Vec` is exact; not creating a probe keeps the registry exact.
        requested
    }
}

impl<const R: usize> Drop for Counted<R> {
    fn drop(&mut self) {
        let before = registry(R).drops[self.id].fetch_add(1, SeqCst);
        assert_eq!(before, 0, "object {} dropped twice", self.id);
    }
}

/// A thread caches the object it returned; when it exits the object goes to the shared
/// stripes, where the other threads find it. While it lives, it is counted as idle, but no
/// other thread can take it (their gets miss).
#[test]
fn thread_exit_returns_the_cached_object() {
    type C = Counted<0>;
    let reg = registry(0);
    let pool: Arc<MapPool<C>> = Arc::new(MapPool::builder().max_idle(8).shards(1).build());
    let (ready_tx, ready_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let worker = {
        let pool = Arc::clone(&pool);
        thread::spawn(move || {
            drop(pool.get()); // a miss; the object is cached by this thread
            drop(pool);
            ready_tx.send(()).unwrap();
            go_rx.recv().unwrap();
        })
    };
    ready_rx.recv().unwrap();
    let s = pool.stats();
    assert_eq!((s.gets, s.misses, s.returns, s.idle), (1, 1, 1, 1), "{s}");
    // The worker's cache is its own: this get misses, and this object is cached here.
    drop(pool.get());
    let s = pool.stats();
    assert_eq!((s.gets, s.misses, s.idle), (2, 2, 2), "{s}");
    assert_eq!(reg.live(), 2);

    go_tx.send(()).unwrap();
    worker.join().unwrap();
    // Joined: the worker's thread-local destructor ran and gave its object to the stripes.
    let s = pool.stats();
    assert_eq!((s.idle, s.returns_dropped), (2, 0), "{s}");
    let (a, b) = (pool.get(), pool.get());
    let s = pool.stats();
    assert_eq!(
        (s.gets, s.hits, s.misses),
        (4, 2, 2),
        "both idle objects reached: {s}"
    );
    assert_ne!(a.id, b.id);
    drop((a, b));
    assert_eq!(reg.live(), 2);
    drop(pool);
    assert_eq!(reg.live(), 0);
    reg.assert_all_dropped_once();
}

/// The pool is dropped while another thread, still running, caches one of its objects: the
/// pool's drop drops it (on the dropping thread, before the drop returns), and the thread's
/// later exit does not touch it again.
#[test]
fn pool_dropped_while_another_thread_caches_an_object() {
    type C = Counted<1>;
    let reg = registry(1);
    let pool: Arc<MapPool<C>> = Arc::new(MapPool::builder().max_idle(4).build());
    let (ready_tx, ready_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let worker = {
        let pool = Arc::clone(&pool);
        thread::spawn(move || {
            let mut first = pool.get();
            first.used.push(1);
            drop(first); // cached by this thread
            drop(pool.get()); // taken from and given back to the cache again
            drop(pool);
            ready_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            // Exits with the (dead) pool still in its table.
        })
    };
    ready_rx.recv().unwrap();
    assert_eq!(reg.created(), 1);
    assert_eq!(reg.live(), 1, "cached by the worker");
    let Ok(pool) = Arc::try_unwrap(pool) else {
        panic!("the worker dropped its handle");
    };
    assert_eq!(pool.stats().idle, 1);
    drop(pool);
    assert_eq!(
        reg.live(),
        0,
        "the pool's drop dropped the worker's cached object"
    );
    reg.assert_all_dropped_once();
    go_tx.send(()).unwrap();
    worker.join().unwrap();
    reg.assert_all_dropped_once();
}

/// Threads exiting race with the pool's drop (the last handle is dropped by whichever thread
/// gets there last, while others may be running their thread-local destructors): every object
/// is dropped exactly once, and none outlives the pool's drop.
#[test]
fn pool_drop_races_thread_exits() {
    type C = Counted<2>;
    let reg = registry(2);
    const ROUNDS: usize = if cfg!(miri) { 4 } else { 200 };
    for round in 0..ROUNDS {
        let pool: Arc<MapPool<C>> =
            Arc::new(MapPool::builder().max_idle(8).shards(2).prefill(2).build());
        let workers: Vec<_> = (0..3)
            .map(|t| {
                let pool = Arc::clone(&pool);
                thread::spawn(move || {
                    let held = pool.get();
                    for _ in 0..(round + t) % 4 {
                        drop(pool.get());
                    }
                    drop(held);
                    // The last `Arc` may be this one: then the pool is dropped here, before
                    // this thread's table gives its cell back (it then finds the pool gone).
                    drop(pool);
                })
            })
            .collect();
        if round % 2 == 0 {
            thread::yield_now();
        }
        drop(pool);
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(reg.live(), 0, "round {round}: an object outlived its pool");
    }
    reg.assert_all_dropped_once();
}

/// Idle objects in the stripes and in the threads' caches together never exceed `max_idle`:
/// each cache borrows its one slot from a stripe's share. At most `max_idle / 2` threads have a
/// cache; the others use the stripes only.
#[test]
fn max_idle_holds_with_per_thread_caches() {
    type C = Counted<3>;
    let reg = registry(3);
    const THREADS: usize = 8;
    const MAX_IDLE: usize = 6;
    let pool: MapPool<C> = MapPool::builder().max_idle(MAX_IDLE).shards(2).build();
    let returned = Barrier::new(THREADS + 1);
    let checked = Barrier::new(THREADS + 1);
    thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let (pool, returned, checked) = (&pool, &returned, &checked);
                s.spawn(move || {
                    for _ in 0..50 {
                        let (a, b, c) = (pool.get(), pool.get(), pool.get());
                        drop((a, b, c));
                        assert!(pool.stats().idle <= MAX_IDLE);
                    }
                    let (a, b) = (pool.get(), pool.get());
                    drop((a, b));
                    returned.wait();
                    checked.wait();
                })
            })
            .collect();
        returned.wait();
        // Every thread is alive and has returned its objects: 3 caches (max_idle / 2) hold
        // one each, the stripes the rest of the budget.
        let s = pool.stats();
        assert!(s.idle <= MAX_IDLE, "{s}");
        assert_eq!(reg.live(), s.idle, "{s}");
        checked.wait();
        for w in workers {
            w.join().unwrap();
        }
    });
    let s = pool.stats();
    assert!(s.idle <= MAX_IDLE, "{s}");
    assert_eq!(s.gets, s.returns, "{s}");
    assert_eq!(s.idle as u64 + s.returns_dropped + s.hits, s.returns, "{s}");
    assert_eq!(reg.live(), s.idle, "{s}");
    // The exited threads' cached objects are in the stripes now: all reachable from here.
    let all: Vec<_> = (0..s.idle).map(|_| pool.get()).collect();
    assert_eq!(pool.stats().hits, s.hits + s.idle as u64);
    drop(all);
    drop(pool);
    assert_eq!(reg.live(), 0);
    reg.assert_all_dropped_once();
}

/// A single thread fills the caches' and stripes' budget exactly: its own cache plus every
/// stripe.
#[test]
fn one_thread_fills_max_idle_exactly() {
    type C = Counted<4>;
    let reg = registry(4);
    for max_idle in [2, 3, 7, 64] {
        let pool: MapPool<C> = MapPool::builder().max_idle(max_idle).build();
        let held: Vec<_> = (0..max_idle + 3).map(|_| pool.get()).collect();
        drop(held);
        let s = pool.stats();
        assert_eq!((s.idle, s.returns_dropped), (max_idle, 3), "{s}");
        assert_eq!(reg.live(), max_idle);
        drop(pool);
        assert_eq!(reg.live(), 0);
    }
    reg.assert_all_dropped_once();
}

/// A `reset` that panics on the cached path: the object is dropped (once), the panic comes
/// out of the guard's drop, and the thread's cache still works.
#[test]
fn panicking_reset_on_the_cached_path() {
    type C = Counted<5>;
    let reg = registry(5);
    let pool: MapPool<C> = MapPool::builder().max_idle(4).build();
    drop(pool.get()); // the thread's cache now holds the object
    let mut guard = pool.get();
    assert_eq!(pool.stats().hits, 1, "taken from the cache");
    guard.panic_in_reset = true;
    let payload = panic::catch_unwind(AssertUnwindSafe(|| drop(guard))).unwrap_err();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"reset failed"));
    let s = pool.stats();
    assert_eq!((s.returns, s.returns_dropped, s.idle), (2, 1, 0), "{s}");
    assert_eq!(reg.live(), 0);
    // The cache is usable: a miss, then the object is cached and found again.
    drop(pool.get());
    drop(pool.get());
    let s = pool.stats();
    assert_eq!((s.gets, s.hits, s.misses, s.idle), (4, 2, 2, 1), "{s}");

    // The same during unwinding: the first panic comes out, the object is dropped once.
    let unwinding = AtomicBool::new(false);
    let payload = panic::catch_unwind(AssertUnwindSafe(|| {
        let mut guard = pool.get();
        guard.panic_in_reset = true;
        unwinding.store(true, SeqCst);
        panic!("handler failed");
    }))
    .unwrap_err();
    assert!(unwinding.load(SeqCst));
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"handler failed"));
    let s = pool.stats();
    assert_eq!((s.returns_dropped, s.idle), (2, 0), "{s}");
    drop(pool);
    assert_eq!(reg.live(), 0);
    reg.assert_all_dropped_once();
}

/// `clear` drops the calling thread's cached object and the stripes', not the objects other
/// live threads cache (documented); those go to the stripes when their thread exits.
#[test]
fn clear_reaches_the_callers_cache_only() {
    type C = Counted<6>;
    let reg = registry(6);
    let pool: Arc<MapPool<C>> = Arc::new(MapPool::builder().max_idle(8).shards(1).build());
    let (ready_tx, ready_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let worker = {
        let pool = Arc::clone(&pool);
        thread::spawn(move || {
            drop(pool.get());
            drop(pool);
            ready_tx.send(()).unwrap();
            go_rx.recv().unwrap();
        })
    };
    ready_rx.recv().unwrap();
    let (a, b) = (pool.get(), pool.get());
    drop((a, b)); // one in this thread's cache, one in the stripe
    assert_eq!(pool.stats().idle, 3);
    assert_eq!(
        pool.clear(),
        2,
        "this thread's cached object and the stripe's"
    );
    assert_eq!(pool.stats().idle, 1, "the worker's");
    assert_eq!(reg.live(), 1);
    go_tx.send(()).unwrap();
    worker.join().unwrap();
    assert_eq!(
        pool.clear(),
        1,
        "the worker's, moved to the stripes when it exited"
    );
    assert_eq!(reg.live(), 0);
    reg.assert_all_dropped_once();
}

/// One thread using more pools at once than its table has entries: the extra pools work
/// through their stripes, with the same counts.
#[test]
fn many_pools_on_one_thread() {
    type C = Counted<7>;
    let reg = registry(7);
    let pools: Vec<MapPool<C>> = (0..20)
        .map(|_| MapPool::builder().max_idle(4).build())
        .collect();
    for _ in 0..3 {
        for pool in &pools {
            let (a, b) = (pool.get(), pool.get());
            drop((a, b));
        }
    }
    for pool in &pools {
        let s = pool.stats();
        assert_eq!((s.gets, s.misses, s.hits, s.idle), (6, 2, 4, 2), "{s}");
    }
    drop(pools);
    // Pools built and dropped one after the other reuse the table entries of dropped pools:
    // each one's object is cached by this thread, so another thread's get misses.
    for i in 0..40 {
        let pool: MapPool<C> = MapPool::builder().max_idle(2).build();
        drop(pool.get());
        drop(pool.get());
        assert_eq!(pool.stats().hits, 1);
        thread::scope(|s| {
            s.spawn(|| drop(pool.get()));
        });
        let s = pool.stats();
        assert_eq!(
            (s.misses, s.idle),
            (2, 2),
            "pool {i}: this thread's object was cached: {s}"
        );
    }
    assert_eq!(reg.live(), 0);
    reg.assert_all_dropped_once();
}
