//! Shared pieces of the loom models of tiermap (the models themselves are in `tests/`).
//!
//! Everything here is compiled only with `--cfg tiermap_loom`; a plain `cargo test --workspace`
//! builds an empty crate. See `README.md` next to this crate for what is modelled and how to run
//! it (`ci/loom.sh`).
//!
//! The tools:
//!
//! * [`Tracker`] hands out [`Key`]s and [`Val`]s with unique ids and counts their drops, so a
//!   model can assert that every key and value was dropped exactly once (no leak, no double
//!   free) after the map is dropped.
//! * A [`Val`] carries a `loom::cell::UnsafeCell` written when the value is created and when it
//!   is dropped, and read by [`Val::get`]. Loom checks every access to it against the
//!   happens-before relation it builds from the real atomics, so reading a value whose pointer
//!   was loaded without `Acquire`, or dropping a value while a reader may still read it, is
//!   reported as a "Causality violation".
//! * Every key and value starts with a magic word that `Drop` poisons, and the test binaries use
//!   a quarantining allocator ([`Quarantine`]) that fills freed blocks with `0xDD` and delays
//!   their reuse, so touching a freed key, value, entry or table reads poison instead of
//!   plausible data: [`Val::get`] and [`Key`]'s `Borrow`/`Eq` check the magic and panic with
//!   "use after free".
#![cfg(tiermap_loom)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::borrow::Borrow;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::{Arc, Mutex};

pub use loom;
use loom::cell::UnsafeCell;

/// The map type every model uses: tracked keys and values, a deterministic hasher.
pub type Map = tiermap::SyncMap<Key, Val, BuildHasherDefault<IdHasher>>;

/// A new, empty model map.
pub fn new_map() -> Map {
    Map::with_hasher(BuildHasherDefault::default())
}

/// A new, empty model map with `shards` shards (see [`shard_of`]).
pub fn new_sharded_map(shards: usize) -> Map {
    Map::with_capacity_shards_and_hasher(0, shards, BuildHasherDefault::default())
}

/// The shard of key `k` in a model map of `shards` shards: `IdHasher` passes `k` through, the
/// map mixes it (`table::mix`) and takes the shard index from bits 32.. (`raw/sharded.rs`).
/// Kept in step with those two by hand; the models that use it assert the outcome it implies.
pub fn shard_of(k: u32, shards: usize) -> usize {
    let h = k as u64;
    let mixed = (h ^ (h >> 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> 32) as usize & (shards - 1)
}

const KEY_MAGIC: u64 = 0x4B45_595F_4B45_595F;
const VAL_MAGIC: u64 = 0x5641_4C5F_5641_4C5F;
const POISON: u64 = 0xDEAD_DEAD_DEAD_DEAD;

/// Counts creations and drops of the keys and values of one model execution.
///
/// Loom runs every thread of an execution on the test's OS thread and switches only at its own
/// synchronization points, so plain `std` locks and counters here are invisible to the model
/// and never block. Create one per execution (inside the `loom::model` closure).
#[derive(Default)]
pub struct Tracker {
    // Drops seen per object id (keys and values share the id space).
    drops: Mutex<Vec<u32>>,
    // The `n` of each id and whether it is a value, for messages.
    what: Mutex<Vec<(bool, u64)>>,
}

impl Tracker {
    /// A fresh tracker, shared by the objects it makes.
    pub fn new() -> Arc<Tracker> {
        Arc::new(Tracker::default())
    }

    fn register(&self, is_val: bool, n: u64) -> usize {
        let mut d = self.drops.lock().unwrap();
        d.push(0);
        self.what.lock().unwrap().push((is_val, n));
        d.len() - 1
    }

    fn dropped(&self, id: usize) {
        let mut d = self.drops.lock().unwrap();
        d[id] += 1;
        if d[id] > 1 && !std::thread::panicking() {
            let (is_val, n) = self.what.lock().unwrap()[id];
            drop(d);
            panic!(
                "double drop: {} {n} (id {id}) dropped twice",
                if is_val { "value" } else { "key" }
            );
        }
    }

    /// How many times object `id` was dropped so far.
    pub fn drops_of(&self, id: usize) -> u32 {
        self.drops.lock().unwrap()[id]
    }

    /// Objects created so far.
    pub fn created(&self) -> usize {
        self.drops.lock().unwrap().len()
    }

    /// Asserts that every key and value made by this tracker was dropped exactly once. Call it
    /// after the map (and every `Ref`/`Pinned`) is dropped: under loom the map owns its epoch
    /// collector, and dropping the map runs every deferred free.
    pub fn assert_all_dropped_once(&self) {
        let d = self.drops.lock().unwrap();
        let what = self.what.lock().unwrap();
        for (id, &count) in d.iter().enumerate() {
            let (is_val, n) = what[id];
            assert_eq!(
                count,
                1,
                "leak: {} {n} (id {id}) dropped {count} times after the map was dropped",
                if is_val { "value" } else { "key" },
            );
        }
    }

    /// A key `k`.
    pub fn key(self: &Arc<Self>, k: u32) -> Key {
        let id = self.register(false, k as u64);
        Key {
            magic: KEY_MAGIC,
            k,
            id,
            tracker: self.clone(),
        }
    }

    /// A value `n`.
    pub fn val(self: &Arc<Self>, n: u64) -> Val {
        let id = self.register(true, n);
        Val {
            magic: VAL_MAGIC,
            n,
            id,
            cell: Payload(UnsafeCell::new(n)),
            tracker: self.clone(),
        }
    }
}

/// A map key: a `u32` that counts its drops and detects use after free.
///
/// Hashes like its `u32`, so the map can be queried with `&u32` ([`Borrow`]).
#[repr(C)]
pub struct Key {
    magic: u64,
    k: u32,
    id: usize,
    tracker: Arc<Tracker>,
}

impl Key {
    fn check(&self) -> &u32 {
        // SAFETY: `self` may point into freed (poisoned) memory in a buggy build; reading the
        // first word is what detects it, and the quarantine keeps the block mapped.
        let magic = unsafe { std::ptr::read_volatile(&self.magic) };
        assert!(
            magic == KEY_MAGIC,
            "use after free: key read after it was dropped/freed (magic {magic:#x})"
        );
        &self.k
    }

    /// The key's number.
    pub fn k(&self) -> u32 {
        *self.check()
    }

    /// The tracker id of this key.
    pub fn id(&self) -> usize {
        self.id
    }
}

impl Borrow<u32> for Key {
    fn borrow(&self) -> &u32 {
        self.check()
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.check().hash(state)
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.check() == other.check()
    }
}
impl Eq for Key {}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({})", self.k)
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        let magic = unsafe { std::ptr::read_volatile(&self.magic) };
        if std::thread::panicking() && magic != KEY_MAGIC {
            return; // already failing; a second panic would abort the test binary
        }
        assert!(
            magic == KEY_MAGIC,
            "double free: key dropped with a poisoned magic ({magic:#x})"
        );
        self.tracker.dropped(self.id);
        // SAFETY: `self` is alive; poisoning makes a later use visible.
        unsafe { std::ptr::write_volatile(&mut self.magic, POISON) };
    }
}

/// A loom cell that is only written by the creator and by `Drop`.
struct Payload(UnsafeCell<u64>);
// SAFETY: the cell is written at creation and in `Drop` (both with exclusive access in a
// correct map) and read through `&Val` otherwise; loom checks exactly that claim.
unsafe impl Sync for Payload {}

/// A map value: a `u64` that counts its drops and whose reads loom checks for causality.
#[repr(C)]
pub struct Val {
    magic: u64,
    n: u64,
    id: usize,
    cell: Payload,
    tracker: Arc<Tracker>,
}

impl Val {
    /// Reads the value, checking that it was not freed and (through loom) that its creation
    /// happens-before this read.
    pub fn get(&self) -> u64 {
        // SAFETY: see `Key::check`.
        let magic = unsafe { std::ptr::read_volatile(&self.magic) };
        assert!(
            magic == VAL_MAGIC,
            "use after free: value read after it was dropped/freed (magic {magic:#x})"
        );
        let n = self.cell.0.with(|p| unsafe { *p });
        assert_eq!(n, self.n, "value cell corrupted");
        n
    }

    /// The tracker id of this value.
    pub fn id(&self) -> usize {
        self.id
    }
}

impl PartialEq for Val {
    fn eq(&self, other: &Val) -> bool {
        self.get() == other.get()
    }
}

impl std::fmt::Debug for Val {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Val({})", self.n)
    }
}

impl Drop for Val {
    fn drop(&mut self) {
        let magic = unsafe { std::ptr::read_volatile(&self.magic) };
        if std::thread::panicking() && magic != VAL_MAGIC {
            return; // already failing; a second panic would abort the test binary
        }
        assert!(
            magic == VAL_MAGIC,
            "double free: value dropped with a poisoned magic ({magic:#x})"
        );
        // A write access: loom reports a race with any read that does not happen-before it.
        // Skipped while unwinding from a failed model: loom may have left the cell marked as
        // being read, and a second panic would abort the whole test binary.
        if !std::thread::panicking() {
            self.cell.0.with_mut(|p| unsafe { *p = 0 });
        }
        self.tracker.dropped(self.id);
        // SAFETY: `self` is alive; poisoning makes a later use visible.
        unsafe { std::ptr::write_volatile(&mut self.magic, POISON) };
    }
}

/// Puts `pairs` in the read tier of an empty `map`: inserts them (they land in the dirty tier)
/// and iterates, which promotes the dirty tier because it holds keys the read tier lacks.
pub fn fill_read(t: &std::sync::Arc<Tracker>, map: &Map, pairs: &[(u32, u64)]) {
    for &(k, v) in pairs {
        assert!(map.insert(t.key(k), t.val(v)).is_none());
    }
    assert_eq!(map.pin().iter().count(), pairs.len());
    let s = map.stats();
    assert!(s.dirty_capacity == 0 && s.read_capacity > 0, "setup: {s}");
}

/// Adds `pairs` as new keys: they go to the dirty tier only (the slow path also finishes the
/// migration of the tiny read tier, so the dirty tier then holds every key).
pub fn fill_dirty(t: &std::sync::Arc<Tracker>, map: &Map, pairs: &[(u32, u64)]) {
    for &(k, v) in pairs {
        assert!(map.insert(t.key(k), t.val(v)).is_none());
    }
    let s = map.stats();
    assert!(s.dirty_capacity > 0 && !s.migrating, "setup: {s}");
}

/// The value of `k` as a number (reading it checks it is not freed).
pub fn get(map: &Map, k: u32) -> Option<u64> {
    map.get(&k).map(|r| r.get())
}

/// Every key and value seen by one iteration, sorted, asserting that no key is seen twice.
pub fn snapshot(map: &Map) -> Vec<(u32, u64)> {
    let mut all: Vec<(u32, u64)> = map.pin().iter().map(|(k, v)| (k.k(), v.get())).collect();
    all.sort();
    for w in all.windows(2) {
        assert!(
            w[0].0 != w[1].0,
            "key {} seen twice by one iteration: {all:?}",
            w[0].0
        );
    }
    all
}

/// A hasher that passes a `u32` key through (the map mixes it), so slot placement is the same
/// in every execution. (`RandomState` would make executions differ, which loom rejects.)
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ b as u64;
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = n as u64;
    }
}

/// A `loom::model::Builder` with the given preemption bound, unless `LOOM_MAX_PREEMPTIONS` is
/// set (the environment wins, so `ci/loom.sh` can raise or lower every bound at once).
pub fn builder(preemptions: usize) -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(preemptions);
    }
    // One operation pins a fresh epoch participant (registration, pin, unpin, collection): an
    // execution easily takes a few thousand scheduling points.
    if std::env::var_os("LOOM_MAX_BRANCHES").is_none() {
        b.max_branches = 100_000;
    }
    b
}

/// Runs `f` under [`builder`]`(preemptions)` and prints how many executions loom explored and
/// how long it took (shown with `--nocapture`; `ci/loom.sh` passes it).
pub fn check<F>(name: &str, preemptions: usize, f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    let runs = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let b = builder(preemptions);
    let bound = b.preemption_bound;
    let start = std::time::Instant::now();
    b.check(move || {
        counter.fetch_add(1, Relaxed);
        f()
    });
    eprintln!(
        "loom model {name}: {} executions, preemption bound {bound:?}, {:.1?}",
        runs.load(Relaxed),
        start.elapsed()
    );
}

/// A global allocator that poisons freed blocks and delays their reuse.
///
/// Freed blocks are filled with `0xDD` and kept in a FIFO of at most [`Quarantine::BLOCKS`]
/// blocks / [`Quarantine::BYTES`] bytes before they go back to the system allocator, so a use
/// after free in a model reads poison (and fails a magic check) instead of a recycled object.
pub struct Quarantine;

struct Held {
    ring: [(usize, usize, usize); Quarantine::BLOCKS],
    head: usize,
    len: usize,
    bytes: usize,
}

static HELD: Mutex<Held> = Mutex::new(Held {
    ring: [(0, 0, 0); Quarantine::BLOCKS],
    head: 0,
    len: 0,
    bytes: 0,
});

impl Quarantine {
    /// Most blocks held back.
    pub const BLOCKS: usize = 4096;
    /// Most bytes held back.
    pub const BYTES: usize = 32 << 20;
}

// SAFETY: forwards to `System`, only delaying deallocations of blocks that nobody owns any more.
unsafe impl GlobalAlloc for Quarantine {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { ptr.write_bytes(0xDD, layout.size()) };
        if layout.size() > (1 << 20) {
            unsafe { System.dealloc(ptr, layout) };
            return;
        }
        let mut h = match HELD.lock() {
            Ok(h) => h,
            Err(p) => p.into_inner(),
        };
        while h.len == Quarantine::BLOCKS || h.bytes + layout.size() > Quarantine::BYTES {
            let (p, size, align) = h.ring[h.head];
            h.head = (h.head + 1) % Quarantine::BLOCKS;
            h.len -= 1;
            h.bytes -= size;
            unsafe { System.dealloc(p as *mut u8, Layout::from_size_align_unchecked(size, align)) };
        }
        let tail = (h.head + h.len) % Quarantine::BLOCKS;
        h.ring[tail] = (ptr as usize, layout.size(), layout.align());
        h.len += 1;
        h.bytes += layout.size();
    }
}

/// Installs [`Quarantine`] as the global allocator of every binary that links this crate.
#[global_allocator]
static GLOBAL: Quarantine = Quarantine;
