//! Models 9 and 9b: `MapPool`'s shared stripes. An object is never handed to two owners at
//! once, and every object is dropped exactly once (kept idle and dropped with the pool, or
//! dropped on return). The per-thread caches have their own models in `pool_cache.rs`.
#![cfg(tiermap_loom)]

use std::sync::atomic::{AtomicUsize as StdAtomicUsize, Ordering::Relaxed};

use loom::sync::atomic::{AtomicBool, Ordering::SeqCst};
use loom::sync::Arc;
use loom::thread;
use tiermap::{MapPool, Recycle};
use tiermap_loom_tests::{check, Tracker, Val};

/// A pooled object that detects a second owner (taking it sets `in_use`, which must have been
/// clear) and carries a tracked [`Val`]: reading it checks, through loom, that the object's
/// creation happens-before the read (so every handoff between threads synchronizes), and its
/// drop is counted (a double drop fails at once, a leak in `assert_all_dropped_once`).
pub(crate) struct Owned {
    in_use: AtomicBool,
    val: Val,
    len: usize,
}

impl Owned {
    /// Takes the object: it must be free, and its value readable.
    pub(crate) fn take(&self) {
        assert!(
            !self.in_use.swap(true, SeqCst),
            "object handed to two owners"
        );
        self.val.get();
    }

    /// Gives it up (before its guard is dropped).
    pub(crate) fn release(&self) {
        assert!(self.in_use.swap(false, SeqCst), "object released twice");
    }
}

// The pool creates objects through `Recycle::with_capacity`, which has no context: a model
// passes its tracker through this per-execution slot, set before the pool is built.
loom::lazy_static! {
    static ref TRACKER: std::sync::Mutex<Option<std::sync::Arc<Tracker>>> =
        std::sync::Mutex::new(None);
}

/// A fresh tracker for this execution, used by every `Owned` it creates.
pub(crate) fn tracker() -> std::sync::Arc<Tracker> {
    let t = Tracker::new();
    *TRACKER.lock().unwrap() = Some(t.clone());
    t
}

/// Objects created and not dropped yet.
pub(crate) fn live(t: &Tracker) -> usize {
    (0..t.created()).filter(|&id| t.drops_of(id) == 0).count()
}

impl Recycle for Owned {
    fn with_capacity(capacity: usize) -> Self {
        let t = TRACKER.lock().unwrap().clone().expect("tracker set");
        let n = t.created() as u64;
        Owned {
            in_use: AtomicBool::new(false),
            val: t.val(n),
            len: capacity,
        }
    }
    fn reset(&mut self) {
        assert!(!self.in_use.load(SeqCst), "reset while in use");
        self.len = 0;
    }
    fn capacity(&self) -> usize {
        self.len.max(1)
    }
    fn heap_bytes(&self) -> usize {
        0
    }
    fn shrink_to(&mut self, capacity: usize) {
        self.len = self.len.min(capacity);
    }
    fn rounded_capacity(requested: usize) -> usize {
        requested.max(1)
    }
}

/// Drops the last handle to the pool (every thread using it must be joined).
pub(crate) fn drop_pool(pool: Arc<MapPool<Owned>>) {
    drop(Arc::try_unwrap(pool).ok().expect("every thread is joined"));
}

#[test]
fn pool_get_put_never_shares_an_object() {
    check("pool_get_put_never_shares_an_object", 2, || {
        let t = tracker();
        // `max_idle(1)`: no per-thread cache (a pool has `max_idle / 2` of them), one stripe.
        let pool: Arc<MapPool<Owned>> = Arc::new(
            MapPool::builder()
                .max_idle(1)
                .shards(1)
                .prefill(1)
                .capacity_ceiling(8)
                .build(),
        );
        let other = {
            let pool = pool.clone();
            thread::spawn(move || {
                let g = pool.get();
                g.take();
                g.release();
            })
        };
        {
            let g = pool.get();
            g.take();
            g.release();
        }
        other.join().unwrap();
        let s = pool.stats();
        assert_eq!(s.gets, 2);
        assert_eq!(s.gets, s.hits + s.misses);
        assert_eq!(
            t.created(),
            1 + s.misses as usize,
            "prefill plus one object per miss"
        );
        assert!(s.idle <= 1);
        assert_eq!(live(&t), s.idle);
        drop_pool(pool);
        t.assert_all_dropped_once();
    });
}

/// Executions of model 9b in which a get stole from, and a return spilled to, another stripe.
static STEALS_SEEN: StdAtomicUsize = StdAtomicUsize::new(0);
static SPILLS_SEEN: StdAtomicUsize = StdAtomicUsize::new(0);

/// Model 9b: two stripes, with steal and spill racing the other thread's use of the same
/// stripes. `max_idle(3)` over two stripes gives them limits 2 and 1, and one per-thread cache,
/// which the main thread claims during the setup (borrowing a unit, and an object, from its
/// home stripe 0): the other thread (home stripe 1) has no cache, so it works the stripes.
///
/// Race: the other thread takes two objects (its home stripe holds one: the second is stolen
/// from stripe 0, or missed if stripe 0 is empty or locked) and returns both (its home stripe
/// takes one: the second spills to stripe 0, or is dropped if stripe 0 is full or locked),
/// while the main thread takes one from stripe 0 (its cache is empty: its object is out) and
/// returns two (one to its cache, one to stripe 0 or spilled to stripe 1).
///
/// Asserts: no object has two owners, and every value is read with happens-before from its
/// creation; the counts add up (`gets == hits + misses`, objects created = prefill + misses,
/// idle objects alive = `stats().idle <= max_idle`); every object dropped exactly once after
/// the pool is dropped; and, over all executions, that steals and spills happened.
#[test]
fn pool_two_stripes_steal_and_spill() {
    STEALS_SEEN.store(0, Relaxed);
    SPILLS_SEEN.store(0, Relaxed);
    check("pool_two_stripes_steal_and_spill", 3, || {
        let t = tracker();
        let pool: Arc<MapPool<Owned>> = Arc::new(
            MapPool::builder()
                .max_idle(3)
                .shards(2)
                .prefill(3)
                .capacity_ceiling(8)
                .build(),
        );
        // Setup: the main thread claims the pool's one cache, and takes its object.
        let a = pool.get();
        a.take();
        let s = pool.stats();
        assert_eq!((s.gets, s.hits, s.idle), (1, 1, 2), "setup: {s}");
        let other = {
            let pool = pool.clone();
            thread::spawn(move || {
                let x = pool.get();
                x.take();
                let y = pool.get();
                y.take();
                x.release();
                drop(x);
                y.release();
                drop(y);
            })
        };
        let c = pool.get();
        c.take();
        c.release();
        drop(c);
        a.release();
        drop(a);
        other.join().unwrap();

        let s = pool.stats();
        assert_eq!((s.gets, s.returns), (4, 4), "{s}");
        assert_eq!(s.gets, s.hits + s.misses, "{s}");
        assert_eq!(
            t.created(),
            3 + s.misses as usize,
            "prefill plus misses: {s}"
        );
        assert!(s.idle <= pool.max_idle(), "{s}");
        assert_eq!(live(&t), s.idle, "idle objects are the live ones: {s}");
        let (steals, spills) = pool.loom_steals_and_spills();
        if steals > 0 {
            STEALS_SEEN.fetch_add(1, Relaxed);
        }
        if spills > 0 {
            SPILLS_SEEN.fetch_add(1, Relaxed);
        }
        drop_pool(pool);
        t.assert_all_dropped_once();
    });
    let (steals, spills) = (STEALS_SEEN.load(Relaxed), SPILLS_SEEN.load(Relaxed));
    eprintln!(
        "model pool_two_stripes_steal_and_spill: {steals} executions stole, {spills} spilled"
    );
    assert!(
        steals > 0 && spills > 0,
        "steal ({steals}) and spill ({spills}) must both run"
    );
}
