//! Model 9: `MapPool` get/put from two threads. An object is never handed to two owners at
//! once, and every object is dropped exactly once (kept idle, or dropped on return).
#![cfg(tiermap_loom)]

use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use loom::sync::Arc;
use loom::thread;
use tiermap::{MapPool, Recycle};
use tiermap_loom_tests::check;

/// An object that detects a second owner: taking it sets `in_use`, which must have been clear.
struct Owned {
    in_use: Arc<AtomicBool>,
    drops: Arc<AtomicUsize>,
    created: Arc<AtomicUsize>,
    len: usize,
}

impl Owned {
    fn take(&self) {
        assert!(
            !self.in_use.swap(true, SeqCst),
            "object handed to two owners"
        );
    }
    fn release(&self) {
        assert!(self.in_use.swap(false, SeqCst), "object released twice");
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.drops.fetch_add(1, SeqCst);
    }
}

// The pool creates objects through `Recycle::with_capacity`, which has no context: the model
// passes its counters through a loom-local slot set before the pool is used.
loom::lazy_static! {
    static ref COUNTERS: loom::sync::Mutex<Option<(Arc<AtomicUsize>, Arc<AtomicUsize>)>> =
        loom::sync::Mutex::new(None);
}

impl Recycle for Owned {
    fn with_capacity(capacity: usize) -> Self {
        let (drops, created) = COUNTERS.lock().unwrap().clone().expect("counters set");
        created.fetch_add(1, SeqCst);
        Owned {
            in_use: Arc::new(AtomicBool::new(false)),
            drops,
            created,
            len: capacity,
        }
    }
    fn reset(&mut self) {
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

#[test]
fn pool_get_put_never_shares_an_object() {
    check("pool_get_put_never_shares_an_object", 2, || {
        let drops = Arc::new(AtomicUsize::new(0));
        let created = Arc::new(AtomicUsize::new(0));
        *COUNTERS.lock().unwrap() = Some((drops.clone(), created.clone()));
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
        let made = created.load(SeqCst);
        assert_eq!(
            made,
            1 + s.misses as usize,
            "prefill plus one object per miss"
        );
        assert!(s.idle <= 1);
        drop(Arc::try_unwrap(pool).ok().expect("joined"));
        assert_eq!(
            drops.load(SeqCst),
            made,
            "every object dropped exactly once"
        );
    });
}
