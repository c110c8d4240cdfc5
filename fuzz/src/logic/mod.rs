//! Operation sequences, models and checks shared by the fuzz targets and `tests/fuzz_replay.rs`.
//!
//! The includer must define `fuzz_input!` before including this module: the fuzz crate makes it
//! derive `arbitrary::Arbitrary`, the replay test makes it a no-op (see `fuzz/src/lib.rs`).
//! Nothing here depends on `arbitrary`; [`Rng`] generates the same input types for the replay
//! test.

pub mod concurrent;
pub mod differential;
pub mod pool;

use std::collections::hash_map::{DefaultHasher, RandomState};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

fuzz_input! {
    /// Which hasher the map under test uses.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum HasherKind {
        /// `RandomState`, as users get by default.
        Random,
        /// `k % 4`: four hashes for the whole key space, long probe runs, `Eq` on every step.
        Mod4,
        /// The key itself.
        Identity,
        /// Every key hashes to 0.
        Zero,
    }
}

/// A `BuildHasher` whose kind is chosen by the fuzz input, so one map type covers them all.
#[derive(Clone)]
pub struct FuzzHasher {
    kind: HasherKind,
    random: RandomState,
}

impl FuzzHasher {
    /// A hasher of `kind`.
    pub fn new(kind: HasherKind) -> Self {
        FuzzHasher {
            kind,
            random: RandomState::new(),
        }
    }
}

/// The hasher built by [`FuzzHasher`].
pub enum FuzzHash {
    /// SipHash with random keys.
    Std(DefaultHasher),
    /// The key's bytes folded into an integer, then reduced by the kind.
    Weak(HasherKind, u64),
}

impl Hasher for FuzzHash {
    fn write(&mut self, bytes: &[u8]) {
        match self {
            FuzzHash::Std(h) => h.write(bytes),
            FuzzHash::Weak(_, acc) => {
                for &b in bytes.iter().rev() {
                    *acc = acc.rotate_left(8) ^ u64::from(b);
                }
            }
        }
    }

    fn finish(&self) -> u64 {
        match self {
            FuzzHash::Std(h) => h.finish(),
            FuzzHash::Weak(HasherKind::Mod4, acc) => acc % 4,
            FuzzHash::Weak(HasherKind::Zero, _) => 0,
            FuzzHash::Weak(_, acc) => *acc,
        }
    }
}

impl BuildHasher for FuzzHasher {
    type Hasher = FuzzHash;
    fn build_hasher(&self) -> FuzzHash {
        match self.kind {
            HasherKind::Random => FuzzHash::Std(self.random.build_hasher()),
            kind => FuzzHash::Weak(kind, 0),
        }
    }
}

/// Counts the values of one run: every construction (including clones) and every drop.
#[derive(Debug, Default)]
pub struct Tracker {
    created: AtomicUsize,
    dropped: AtomicUsize,
}

impl Tracker {
    /// A fresh tracker.
    pub fn new() -> Arc<Self> {
        Arc::new(Tracker::default())
    }

    /// Values created and not dropped yet (negative: something was dropped twice).
    pub fn live(&self) -> isize {
        // Read `dropped` first: a value dropped between the two loads cannot make this negative.
        let dropped = self.dropped.load(SeqCst) as isize;
        self.created.load(SeqCst) as isize - dropped
    }

    /// `(created, dropped)`.
    pub fn counts(&self) -> (usize, usize) {
        (self.created.load(SeqCst), self.dropped.load(SeqCst))
    }
}

/// Flushes the epoch collector until every value of `tracker` is dropped, or `patience` runs
/// out. Returns the values still alive.
///
/// Values retired by the map wait in crossbeam-epoch's bags: this thread's bag is pushed to the
/// global queue by `flush`, and bags of exited threads were pushed when they exited; a
/// collection frees them once the epoch has advanced twice, which needs every pinned thread of
/// the process to unpin (other tests of the same binary may be pinned for a while).
pub fn drain(tracker: &Tracker, patience: Duration) -> isize {
    let start = Instant::now();
    let mut rounds = 0u64;
    loop {
        let live = tracker.live();
        if live <= 0 || (rounds >= 64 && start.elapsed() > patience) {
            return live;
        }
        crossbeam_epoch::pin().flush();
        rounds += 1;
        if rounds & 63 == 0 {
            std::thread::yield_now();
        }
    }
}

/// Asserts that every value of `tracker` was dropped exactly once after draining the epoch.
pub fn assert_all_dropped(tracker: &Tracker, patience: Duration) {
    let live = drain(tracker, patience);
    let (created, dropped) = tracker.counts();
    assert!(
        live == 0,
        "values leaked or dropped twice: created {created}, dropped {dropped}"
    );
}

/// A value that counts its constructions and drops in a [`Tracker`].
pub struct Val {
    /// The payload compared by the model.
    pub n: u32,
    tracker: Arc<Tracker>,
}

impl Val {
    /// A new value with payload `n`.
    pub fn new(n: u32, tracker: &Arc<Tracker>) -> Self {
        tracker.created.fetch_add(1, SeqCst);
        Val {
            n,
            tracker: tracker.clone(),
        }
    }
}

impl std::fmt::Debug for Val {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Val({})", self.n)
    }
}

impl Clone for Val {
    fn clone(&self) -> Self {
        Val::new(self.n, &self.tracker)
    }
}

impl PartialEq for Val {
    fn eq(&self, other: &Self) -> bool {
        self.n == other.n
    }
}

impl Drop for Val {
    fn drop(&mut self) {
        self.tracker.dropped.fetch_add(1, SeqCst);
    }
}

/// A xorshift generator for the replay test (no dependency, stable across platforms).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value; 0 is remapped).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// `true` with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    /// Random bits cut to the type.
    pub fn u8(&mut self) -> u8 {
        self.next_u64() as u8
    }

    /// Random bits cut to the type.
    pub fn u16(&mut self) -> u16 {
        self.next_u64() as u16
    }

    /// A hasher kind, each equally likely.
    pub fn hasher(&mut self) -> HasherKind {
        match self.below(4) {
            0 => HasherKind::Random,
            1 => HasherKind::Mod4,
            2 => HasherKind::Identity,
            _ => HasherKind::Zero,
        }
    }
}
