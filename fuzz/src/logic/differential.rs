//! Differential check: one thread applies an operation sequence to a [`SyncMap`] and to a
//! `HashMap` model, and compares every result, the statistics and the final contents.
//!
//! Beyond one-to-one comparisons it checks what the single-threaded contract says about
//! re-entrant user code: iteration bodies that mutate the map (each visited pair is the key's
//! current value, no key is visited twice, a key present throughout is visited), and
//! `get_or_insert_with`/`remove_if`/`update`/`update_or_insert_with`/`compute` closures that call
//! back into the map (a write to the same key makes a read-modify-write run its closure again).
//! It holds [`Ref`]s across later operations to check that retired values stay readable, and
//! counts every value so that a leak or a double drop fails the run.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::mem::size_of;
use std::sync::Arc;
use std::time::Duration;

use tiermap::{Computed, GetOrInsert, Op as Rmw, Ref, SyncMap};

use super::{assert_all_dropped, FuzzHasher, HasherKind, Rng, Tracker, Val};

/// The map under test.
pub type Map = SyncMap<u16, Val, FuzzHasher>;

/// Refs held across operations at most (the oldest is dropped first).
const MAX_HELD: usize = 8;

fuzz_input! {
    /// How many distinct keys the operations use.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum KeySpace {
        /// 8 keys: every operation collides with earlier ones.
        Tiny,
        /// 64 keys.
        Small,
        /// 512 keys: tables of several chunks.
        Medium,
        /// 4096 keys: migrations and compactions of real size.
        Large,
    }

    /// One fuzz input.
    #[derive(Clone, Debug)]
    pub struct Program {
        /// The map's hasher.
        pub hasher: HasherKind,
        /// The key space; every key in an operation is reduced modulo its size.
        pub keys: KeySpace,
        /// `Some(c)`: the map is made with capacity `c % 4096` and `1 << (c >> 12 & 3)` shards
        /// (`None`: `with_hasher`, one shard).
        pub capacity: Option<u16>,
        /// Whether the map is consumed by `into_iter` at the end (else dropped).
        pub into_iter: bool,
        /// The operations.
        pub ops: Vec<Op>,
    }

    /// An operation at the top level.
    #[derive(Clone, Debug)]
    pub enum Op {
        /// A plain operation.
        Simple(SimpleOp),
        /// Iterates with `pinned.iter()`, applying `body[i]` after the i-th visit; stops after
        /// `stop` visits if given.
        IterWith { body: Vec<SimpleOp>, stop: Option<u8> },
        /// `get_or_insert_with(k, v)` whose closure first runs `inner` on the map.
        LoadOrStoreReentrant { k: u16, v: u8, inner: SimpleOp },
        /// `remove_if(k, pred(m, r))` whose predicate runs `inner` on the map at its first call.
        RemoveIfReentrant { k: u16, m: u8, r: u8, inner: SimpleOp },
        /// Keeps the `Ref` of `get(k)` alive across later operations.
        Hold { k: u16 },
        /// Keeps the `Ref` to the value replaced by `insert(k, v)`.
        InsertHold { k: u16, v: u8 },
        /// Keeps the `Ref` to the value removed by `remove(k)`.
        RemoveHold { k: u16 },
        /// Drops every held `Ref`.
        DropRefs,
        /// Compares the whole map with the model.
        CheckAll,
        /// `update(k, +d)` whose closure runs `inner` on the map at its first call.
        UpdateReentrant { k: u16, d: u8, inner: SimpleOp },
        /// `compute(k, rule, v)` (see [`decide`]) whose closure runs `inner` at its first call.
        ComputeReentrant { k: u16, rule: u8, v: u8, inner: SimpleOp },
        /// `update_or_insert_with(k, +d, v)` whose closures (either) run `inner` at the first
        /// call.
        UpsertReentrant { k: u16, d: u8, v: u8, inner: SimpleOp },
    }

    /// An operation that can also run inside an iteration body or a closure.
    #[derive(Clone, Debug)]
    pub enum SimpleOp {
        Insert { k: u16, v: u8 },
        PinnedInsert { k: u16, v: u8 },
        Get { k: u16 },
        PinnedGet { k: u16 },
        GetCloned { k: u16 },
        ContainsKey { k: u16 },
        /// `get_or_insert`.
        LoadOrStore { k: u16, v: u8 },
        /// `get_or_insert_with`.
        LoadOrStoreWith { k: u16, v: u8 },
        PinnedLoadOrStore { k: u16, v: u8 },
        Remove { k: u16 },
        PinnedRemove { k: u16 },
        RemoveIf { k: u16, m: u8, r: u8 },
        CompareExchange { k: u16, cur: u8, new: u8 },
        PinnedCompareExchange { k: u16, cur: u8, new: u8 },
        CompareRemove { k: u16, cur: u8 },
        Clear,
        ClearAndRelease,
        /// `retain`, dropping the entries that `pred(m, r)` accepts.
        Retain { m: u8, r: u8 },
        ShrinkToFit,
        Reclaim,
        Iter,
        ForEach,
        Range { stop: u8 },
        Len,
        Stats,
        /// Inserts `4 * len` consecutive keys from `start`.
        InsertRange { start: u16, len: u8, v: u8 },
        /// Removes `4 * len` consecutive keys from `start`.
        RemoveRange { start: u16, len: u8 },
        CloneMap,
        /// `update(k, +d)`.
        Update { k: u16, d: u8 },
        PinnedUpdate { k: u16, d: u8 },
        /// `update_or_insert(k, +d, v)`.
        UpdateOrInsert { k: u16, d: u8, v: u8 },
        /// `update_or_insert_with(k, +d, || v)`.
        UpdateOrInsertWith { k: u16, d: u8, v: u8 },
        /// `compute(k, ..)` deciding by `rule` (see [`decide`]).
        Compute { k: u16, rule: u8, v: u8 },
        PinnedCompute { k: u16, rule: u8, v: u8 },
    }
}

/// Known, reported bugs that a run can step around (so that fuzzing finds the next one), by
/// name in `TIERMAP_FUZZ_SKIP` (comma-separated). Each has a regression test in
/// `tests/fuzz_replay.rs` named after it.
///
/// Fixed ones leave the list, with their `skips(..)` checks: `remove_if_clear` (fixed in
/// 027d330) and `retain_stall` (a compaction already running when `retain` removed many entries
/// advanced one step only; fixed in 03113bc).
pub const KNOWN_BUGS: &[&str] = &[];

/// The bits of the known bugs named in `TIERMAP_FUZZ_SKIP` (`known`: all of them).
fn skipped_from_env() -> u32 {
    let var = std::env::var("TIERMAP_FUZZ_SKIP").unwrap_or_default();
    if var.trim() == "known" {
        return (1 << KNOWN_BUGS.len()) - 1;
    }
    let mut bits = 0;
    for name in var.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match KNOWN_BUGS.iter().position(|b| *b == name) {
            Some(i) => bits |= 1 << i,
            None => panic!("TIERMAP_FUZZ_SKIP: unknown bug {name:?}; known: {KNOWN_BUGS:?}"),
        }
    }
    bits
}

/// How strictly a run checks what depends on the rest of the process.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// No other thread of the process pins crossbeam-epoch but the background reclaimer (a fuzz
    /// target), whose pins last one tick's work: once no guard of this run is alive, reclamation
    /// must complete within `patience` (`reclaim` itself gives other threads' pins about 1.5
    /// ms, and a reclaimer thread descheduled while pinned can hold the epoch longer).
    pub strict: bool,
    /// How long to wait for other threads' pins when draining the epoch at the end.
    pub patience: Duration,
    /// Known bugs to step around (bit `i` is `KNOWN_BUGS[i]`).
    pub skip: u32,
}

impl Config {
    /// For a fuzz target: the only thread of its process.
    pub fn strict() -> Self {
        Config {
            strict: true,
            patience: Duration::from_secs(5),
            skip: skipped_from_env(),
        }
    }

    /// For a test that shares the process with other tests.
    pub fn shared() -> Self {
        Config {
            strict: false,
            patience: Duration::from_secs(30),
            skip: skipped_from_env(),
        }
    }
}

impl KeySpace {
    fn size(self) -> u16 {
        match self {
            KeySpace::Tiny => 8,
            KeySpace::Small => 64,
            KeySpace::Medium => 512,
            KeySpace::Large => 4096,
        }
    }
}

/// `remove_if`/`retain`/`compare` predicate on a value.
pub fn pred(m: u8, r: u8, n: u32) -> bool {
    let m = u32::from(m % 4) + 1;
    n % m == u32::from(r) % m
}

/// The decision of a `compute` closure under `rule`, given the current payload: keep, bump (or
/// insert `v`), remove, or remove even payloads and bump odd ones (inserting `v` if absent).
pub fn decide(rule: u8, cur: Option<u32>, v: u32) -> Rmw<u32> {
    match (rule % 4, cur) {
        (0, _) => Rmw::Keep,
        (1, c) => Rmw::Insert(c.map_or(v, |c| c + v)),
        (2, _) => Rmw::Remove,
        (_, Some(c)) if c % 2 == 0 => Rmw::Remove,
        (_, Some(c)) => Rmw::Insert(c + v),
        (_, None) => Rmw::Insert(v),
    }
}

/// What `compute` must report when its closure's last call saw `cur` and decided `op`.
pub fn computed(op: &Rmw<u32>, cur: Option<u32>) -> Computed<u32> {
    match (op, cur) {
        (Rmw::Keep, Some(c)) => Computed::Unchanged(c),
        (Rmw::Keep | Rmw::Remove, None) => Computed::Absent,
        (Rmw::Remove, Some(c)) => Computed::Removed(c),
        (Rmw::Insert(n), Some(c)) => Computed::Updated { old: c, new: *n },
        (Rmw::Insert(n), None) => Computed::Inserted(*n),
    }
}

/// Which keys an operation may remove (to know which keys an iteration may miss).
enum Removal {
    Nothing,
    Key(u16),
    Any,
}

struct Runner<'m> {
    map: &'m Map,
    model: HashMap<u16, u32>,
    tracker: Arc<Tracker>,
    space: u16,
    cfg: Config,
    /// Guards of this run alive on this thread (iterations in progress, held refs).
    pins: usize,
    held: Vec<(Ref<'m, Val>, u32)>,
    /// `held_bytes` of a new map with this hasher.
    empty_bytes: usize,
}

/// Runs `prog` and checks everything; panics on the first mismatch.
pub fn run(prog: &Program, cfg: Config) {
    let tracker = Tracker::new();
    let hasher = FuzzHasher::new(prog.hasher);
    let shards = prog.capacity.map_or(1, |c| 1 << ((c >> 12) & 3));
    let empty_bytes = Map::with_capacity_shards_and_hasher(0, shards, hasher.clone())
        .stats()
        .held_bytes;
    let map = match prog.capacity {
        Some(c) => Map::with_capacity_shards_and_hasher(usize::from(c % 4096), shards, hasher),
        None => Map::with_hasher(hasher),
    };
    let model = {
        let mut r = Runner {
            map: &map,
            model: HashMap::new(),
            tracker: tracker.clone(),
            // With four hashes (or one) every probe walks one cluster of all the keys: keep
            // weak-hasher runs at up to 128 keys so that they stay fast to fuzz.
            space: match prog.hasher {
                HasherKind::Mod4 | HasherKind::Zero => prog.keys.size().min(128),
                HasherKind::Random | HasherKind::Identity => prog.keys.size(),
            },
            cfg,
            pins: 0,
            held: Vec::new(),
            empty_bytes,
        };
        for op in &prog.ops {
            r.op(op);
            r.check_held();
            r.check_counts();
        }
        r.held.clear();
        r.check_all();
        std::mem::take(&mut r.model)
    };
    if prog.into_iter {
        let mut all: Vec<(u16, u32)> = map.into_iter().map(|(k, v)| (k, v.n)).collect();
        all.sort_unstable();
        let mut expect: Vec<(u16, u32)> = model.into_iter().collect();
        expect.sort_unstable();
        assert_eq!(all, expect, "into_iter");
    } else {
        drop(map);
    }
    assert_all_dropped(&tracker, cfg.patience);
}

impl<'m> Runner<'m> {
    fn key(&self, k: u16) -> u16 {
        k % self.space
    }

    fn val(&self, n: u32) -> Val {
        Val::new(n, &self.tracker)
    }

    /// Whether the known bug `name` is to be stepped around (see [`KNOWN_BUGS`]).
    #[allow(dead_code)]
    fn skips(&self, name: &str) -> bool {
        let i = KNOWN_BUGS
            .iter()
            .position(|b| *b == name)
            .expect("a known bug");
        self.cfg.skip & (1 << i) != 0
    }

    fn idle(&self) -> bool {
        self.cfg.strict && self.pins == 0 && self.held.is_empty()
    }

    /// With no guard of this run alive: calls `reclaim` until nothing retired is left, for at
    /// most `patience`; returns what is left then (0 unless something is never freed).
    fn settle(&self) -> usize {
        let deadline = std::time::Instant::now() + self.cfg.patience;
        loop {
            let pending = self.map.reclaim();
            if pending == 0 || std::time::Instant::now() >= deadline {
                return pending;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn op(&mut self, op: &Op) {
        let map = self.map;
        match *op {
            Op::Simple(ref s) => self.simple(s),
            Op::IterWith { ref body, stop } => self.iter_with(body, stop),
            Op::LoadOrStoreReentrant { k, v, ref inner } => {
                let k = self.key(k);
                let n = u32::from(v);
                let before = self.model.get(&k).copied();
                let mut called = false;
                let v = self.val(n);
                let r = map.get_or_insert_with(k, || {
                    called = true;
                    // The call holds a guard while the closure runs.
                    self.pins += 1;
                    self.simple(inner);
                    self.pins -= 1;
                    v
                });
                let got = r.map(|r| r.n);
                match before {
                    Some(b) => {
                        assert!(!called, "closure ran for a present key");
                        assert_eq!(got, GetOrInsert::Loaded(b));
                    }
                    None => {
                        assert!(called, "closure did not run for an absent key");
                        match (self.model.get(&k).copied(), got) {
                            (Some(cur), got) => assert_eq!(got, GetOrInsert::Loaded(cur)),
                            (None, GetOrInsert::Inserted(x)) => {
                                assert_eq!(x, n);
                                if map.pin().get(&k).is_some() {
                                    self.model.insert(k, n);
                                } else {
                                    // The value went into an entry that the closure's clear
                                    // had already orphaned: linearized before the clear.
                                    assert!(
                                        matches!(
                                            inner,
                                            SimpleOp::Clear | SimpleOp::ClearAndRelease
                                        ),
                                        "Inserted, but the key is absent after {inner:?}"
                                    );
                                }
                            }
                            (None, got) => panic!("{got:?} for a key absent after {inner:?}"),
                        }
                    }
                }
            }
            Op::RemoveIfReentrant { k, m, r, ref inner } => {
                let k = self.key(k);
                let before = self.model.get(&k).copied();
                let mut seen = Vec::new();
                let res = map
                    .remove_if(&k, |v| {
                        seen.push(v.n);
                        if seen.len() == 1 {
                            self.pins += 1;
                            self.simple(inner);
                            self.pins -= 1;
                        }
                        pred(m, r, v.n)
                    })
                    .map(|v| v.n);
                let now = map.pin().get(&k).map(|v| v.n);
                match before {
                    None => {
                        assert!(seen.is_empty(), "predicate ran for an absent key");
                        assert_eq!(res, None);
                    }
                    Some(b) => {
                        assert_eq!(seen[0], b, "predicate saw a stale value");
                        let after_inner = self.model.get(&k).copied();
                        match res {
                            Some(x) => {
                                assert!(pred(m, r, x), "removed a value the predicate refused");
                                assert_eq!(Some(&x), seen.last(), "removed an unjudged value");
                                assert_eq!(
                                    now, None,
                                    "remove_if returned a value but kept the key"
                                );
                                if after_inner == Some(x) {
                                    self.model.remove(&k);
                                } else {
                                    // Linearized just before `inner` removed the key.
                                    assert_eq!(after_inner, None, "removed {x}, but the key held {after_inner:?} after {inner:?}");
                                }
                            }
                            None => {
                                // Refused, or the key was gone (or replaced by a new entry)
                                // when the predicate returned: the map is as `inner` left it.
                                assert_eq!(
                                    now, after_inner,
                                    "remove_if refused and changed the key"
                                );
                                if !Self::touches(inner, k, self.space) {
                                    assert!(
                                        !pred(m, r, b),
                                        "remove_if refused {b}, which the predicate accepted"
                                    );
                                }
                            }
                        }
                    }
                }
            }
            Op::Hold { k } => {
                let k = self.key(k);
                let r = map.get(&k);
                assert_eq!(r.as_ref().map(|r| r.n), self.model.get(&k).copied(), "get");
                if let Some(r) = r {
                    let n = r.n;
                    self.hold(r, n);
                }
            }
            Op::InsertHold { k, v } => {
                let k = self.key(k);
                let n = u32::from(v);
                let old = map.insert(k, self.val(n));
                let expect = self.model.insert(k, n);
                assert_eq!(old.as_ref().map(|r| r.n), expect, "insert");
                if let Some(r) = old {
                    let n = r.n;
                    self.hold(r, n);
                }
            }
            Op::RemoveHold { k } => {
                let k = self.key(k);
                let old = map.remove(&k);
                let expect = self.model.remove(&k);
                assert_eq!(old.as_ref().map(|r| r.n), expect, "remove");
                if let Some(r) = old {
                    let n = r.n;
                    self.hold(r, n);
                }
            }
            Op::DropRefs => self.held.clear(),
            Op::CheckAll => self.check_all(),
            Op::UpdateReentrant { k, d, ref inner } => self.update_reentrant(k, d, inner),
            Op::ComputeReentrant {
                k,
                rule,
                v,
                ref inner,
            } => self.compute_reentrant(k, rule, v, inner),
            Op::UpsertReentrant { k, d, v, ref inner } => self.upsert_reentrant(k, d, v, inner),
        }
    }

    /// Runs `inner` from inside a closure of the map (which holds a guard meanwhile).
    fn nested(&mut self, inner: &SimpleOp) {
        self.pins += 1;
        self.simple(inner);
        self.pins -= 1;
    }

    /// Settles the model after a read-modify-write of `k` whose closure ran `inner` at its
    /// first call. `seen` lists what each call of the closure saw, `after` is the model's value
    /// for `k` once `inner` ran, and `wrote` is `Some(new)` if the operation reports a write
    /// (`Some(None)` for a removal).
    ///
    /// A write must have been applied to the value the last call saw, which is what `inner`
    /// left (if `inner` changed it, the first attempt's compare-and-swap fails and the closure
    /// runs again). The one exception: `inner` cleared the map, orphaning the entry the
    /// operation had found, and the write went into that entry: linearized before the clear.
    fn settle_rmw(
        &mut self,
        k: u16,
        inner: &SimpleOp,
        seen: &[Option<u32>],
        after: Option<u32>,
        wrote: Option<Option<u32>>,
        what: &str,
    ) {
        let now = self.map.pin().get(&k).map(|v| v.n);
        if let Some(new) = wrote {
            let last = *seen.last().expect("a write without a call of the closure");
            if last == after && now == new {
                match new {
                    Some(n) => self.model.insert(k, n),
                    None => self.model.remove(&k),
                };
            } else {
                assert!(
                    seen.len() == 1 && matches!(inner, SimpleOp::Clear | SimpleOp::ClearAndRelease),
                    "{what}({k}) wrote {new:?} after seeing {seen:?}, but the key held {after:?} \
                     after {inner:?} and holds {now:?}"
                );
            }
        }
        assert_eq!(
            now,
            self.model.get(&k).copied(),
            "{what}({k}) after {inner:?}: seen {seen:?}"
        );
    }

    fn update_reentrant(&mut self, k: u16, d: u8, inner: &SimpleOp) {
        let map = self.map;
        let (k, d) = (self.key(k), u32::from(d));
        let before = self.model.get(&k).copied();
        let tracker = self.tracker.clone();
        let mut seen = Vec::new();
        let r = map
            .update(&k, |v| {
                seen.push(Some(v.n));
                if seen.len() == 1 {
                    self.nested(inner);
                }
                Val::new(v.n + d, &tracker)
            })
            .map(|r| r.n);
        let after = self.model.get(&k).copied();
        assert_eq!(
            seen.first().copied(),
            before.map(Some),
            "update saw a stale value"
        );
        assert!(
            seen.len() <= 2,
            "update ran its closure {} times",
            seen.len()
        );
        match r {
            Some(x) => {
                let last = seen.last().copied().flatten();
                assert_eq!(
                    Some(x),
                    last.map(|l| l + d),
                    "update stored {x} after {seen:?}"
                );
                self.settle_rmw(k, inner, &seen, after, Some(Some(x)), "update");
            }
            None => {
                // Absent all along, or removed by `inner`: the key was absent in between.
                assert_eq!(after, None, "update found no key, but it held {after:?}");
                self.settle_rmw(k, inner, &seen, after, None, "update");
            }
        }
    }

    fn compute_reentrant(&mut self, k: u16, rule: u8, v: u8, inner: &SimpleOp) {
        let map = self.map;
        let (k, x) = (self.key(k), u32::from(v));
        let before = self.model.get(&k).copied();
        let tracker = self.tracker.clone();
        let mut seen = Vec::new();
        let r = map
            .compute(k, |cur| {
                let cur = cur.map(|v| v.n);
                seen.push(cur);
                if seen.len() == 1 {
                    self.nested(inner);
                }
                match decide(rule, cur, x) {
                    Rmw::Insert(n) => Rmw::Insert(Val::new(n, &tracker)),
                    Rmw::Keep => Rmw::Keep,
                    Rmw::Remove => Rmw::Remove,
                }
            })
            .map(|r| r.n);
        let after = self.model.get(&k).copied();
        assert_eq!(
            seen.first().copied(),
            Some(before),
            "compute saw a stale value"
        );
        assert!(
            seen.len() <= 3,
            "compute ran its closure {} times",
            seen.len()
        );
        let last = *seen.last().expect("compute calls its closure");
        assert_eq!(
            r,
            computed(&decide(rule, last, x), last),
            "compute({k}) after {seen:?}"
        );
        let wrote = match r {
            Computed::Inserted(n) | Computed::Updated { new: n, .. } => Some(Some(n)),
            Computed::Removed(_) => Some(None),
            Computed::Unchanged(_) | Computed::Absent => None,
        };
        self.settle_rmw(k, inner, &seen, after, wrote, "compute");
    }

    fn upsert_reentrant(&mut self, k: u16, d: u8, v: u8, inner: &SimpleOp) {
        let map = self.map;
        let (k, d, x) = (self.key(k), u32::from(d), u32::from(v));
        let before = self.model.get(&k).copied();
        let tracker = self.tracker.clone();
        // Both closures may run `inner`: they share the runner through a `RefCell`.
        let this = RefCell::new(&mut *self);
        let seen = RefCell::new(Vec::new());
        let first = |cur: Option<u32>| {
            seen.borrow_mut().push(cur);
            if seen.borrow().len() == 1 {
                this.borrow_mut().nested(inner);
            }
        };
        let mut makes = 0;
        let r = map
            .update_or_insert_with(
                k,
                |v| {
                    first(Some(v.n));
                    Val::new(v.n + d, &tracker)
                },
                || {
                    makes += 1;
                    first(None);
                    Val::new(x, &tracker)
                },
            )
            .n;
        let seen = seen.into_inner();
        assert!(
            makes <= 1,
            "update_or_insert_with made its default {makes} times"
        );
        let after = self.model.get(&k).copied();
        assert_eq!(
            seen.first().copied(),
            Some(before),
            "update_or_insert saw a stale value"
        );
        assert!(
            seen.len() <= 3,
            "update_or_insert ran {} closures",
            seen.len()
        );
        let last = *seen.last().expect("a closure runs");
        assert_eq!(
            r,
            last.map_or(x, |c| c + d),
            "update_or_insert({k}) after {seen:?}"
        );
        self.settle_rmw(k, inner, &seen, after, Some(Some(r)), "update_or_insert");
    }

    fn hold(&mut self, r: Ref<'m, Val>, n: u32) {
        if self.held.len() >= MAX_HELD {
            self.held.remove(0);
        }
        self.held.push((r, n));
    }

    fn check_held(&self) {
        for (r, n) in &self.held {
            assert_eq!(r.n, *n, "a held Ref changed under us");
        }
    }

    /// `len` and `stats` against the model, after every operation.
    fn check_counts(&self) {
        let len = self.model.len();
        assert_eq!(self.map.len(), len, "len");
        assert_eq!(self.map.is_empty(), len == 0, "is_empty");
        let s = self.map.stats();
        assert_eq!(s.len, len, "stats().len: {s}");
        assert!(
            s.held_bytes >= len * size_of::<Val>(),
            "held_bytes too small: {s}"
        );
        // The promise: memory proportional to the live entries. Deleted entries are compacted
        // once they pass len/2 + 64, a few slots per operation; leave generous room for a
        // compaction in progress.
        assert!(
            s.deleted <= 2 * len + 2 * 64 + 1024,
            "deleted entries pile up: {s}"
        );
        let bound = 1024 * (len + s.deleted) + 256 * 1024;
        assert!(s.held_bytes <= bound, "held_bytes out of proportion: {s}");
    }

    /// Every key and value, by lookup and by iteration.
    fn check_all(&self) {
        let pinned = self.map.pin();
        for (k, n) in &self.model {
            assert_eq!(pinned.get(k).map(|v| v.n), Some(*n), "get({k})");
        }
        self.check_iteration(pinned.iter().map(|(k, v)| (*k, v.n)), "iter");
        assert_eq!(pinned.len(), self.model.len(), "pinned len");
        if self.model.len() <= 64 {
            let dbg = format!("{:?}", self.map);
            assert_eq!(dbg.matches(':').count(), self.model.len(), "Debug: {dbg}");
        }
    }

    /// A complete iteration of a map nobody changes: exactly the model.
    fn check_iteration(&self, it: impl Iterator<Item = (u16, u32)>, what: &str) {
        let mut seen = HashSet::new();
        for (k, n) in it {
            assert!(seen.insert(k), "{what}: key {k} visited twice");
            assert_eq!(self.model.get(&k), Some(&n), "{what}: visited ({k}, {n})");
        }
        assert_eq!(seen.len(), self.model.len(), "{what}: keys missed");
    }

    /// Whether `op` may write key `k` (replace, remove or re-create its entry).
    fn touches(op: &SimpleOp, k: u16, space: u16) -> bool {
        match *op {
            SimpleOp::Insert { k: x, .. }
            | SimpleOp::PinnedInsert { k: x, .. }
            | SimpleOp::LoadOrStore { k: x, .. }
            | SimpleOp::LoadOrStoreWith { k: x, .. }
            | SimpleOp::PinnedLoadOrStore { k: x, .. }
            | SimpleOp::Remove { k: x }
            | SimpleOp::PinnedRemove { k: x }
            | SimpleOp::RemoveIf { k: x, .. }
            | SimpleOp::CompareExchange { k: x, .. }
            | SimpleOp::PinnedCompareExchange { k: x, .. }
            | SimpleOp::CompareRemove { k: x, .. }
            | SimpleOp::Update { k: x, .. }
            | SimpleOp::PinnedUpdate { k: x, .. }
            | SimpleOp::UpdateOrInsert { k: x, .. }
            | SimpleOp::UpdateOrInsertWith { k: x, .. }
            | SimpleOp::Compute { k: x, .. }
            | SimpleOp::PinnedCompute { k: x, .. } => x % space == k,
            SimpleOp::Clear
            | SimpleOp::ClearAndRelease
            | SimpleOp::Retain { .. }
            | SimpleOp::InsertRange { .. }
            | SimpleOp::RemoveRange { .. } => true,
            _ => false,
        }
    }

    fn removal(op: &SimpleOp, space: u16) -> Removal {
        match *op {
            SimpleOp::Remove { k }
            | SimpleOp::PinnedRemove { k }
            | SimpleOp::RemoveIf { k, .. }
            | SimpleOp::CompareRemove { k, .. }
            | SimpleOp::Compute { k, .. }
            | SimpleOp::PinnedCompute { k, .. } => Removal::Key(k % space),
            SimpleOp::Clear
            | SimpleOp::ClearAndRelease
            | SimpleOp::Retain { .. }
            | SimpleOp::RemoveRange { .. } => Removal::Any,
            _ => Removal::Nothing,
        }
    }

    /// Iterates while `body` mutates the map, checking the iteration contract.
    fn iter_with(&mut self, body: &[SimpleOp], stop: Option<u8>) {
        let map = self.map;
        let pinned = map.pin();
        self.pins += 1;
        let start: HashSet<u16> = self.model.keys().copied().collect();
        let mut gone = HashSet::new();
        let mut seen = HashSet::new();
        let mut stopped = false;
        for (i, (k, v)) in pinned.iter().enumerate() {
            assert!(seen.insert(*k), "iteration visited {k} twice");
            assert_eq!(
                self.model.get(k),
                Some(&v.n),
                "iteration showed ({k}, {}), not the key's current value",
                v.n
            );
            if stop.is_some_and(|s| usize::from(s) <= i) {
                stopped = true;
                break;
            }
            if let Some(op) = body.get(i) {
                match Self::removal(op, self.space) {
                    Removal::Nothing => self.simple(op),
                    Removal::Key(k) => {
                        let had = self.model.contains_key(&k);
                        self.simple(op);
                        if had && !self.model.contains_key(&k) {
                            gone.insert(k);
                        }
                    }
                    Removal::Any => {
                        self.simple(op);
                        gone.extend(start.iter().filter(|k| !self.model.contains_key(k)));
                    }
                }
            }
        }
        if !stopped {
            for k in start.difference(&gone) {
                assert!(seen.contains(k), "iteration missed {k}, present throughout");
            }
        }
        drop(pinned);
        self.pins -= 1;
    }

    fn simple(&mut self, op: &SimpleOp) {
        let map = self.map;
        match *op {
            SimpleOp::Insert { k, v } => {
                let (k, n) = (self.key(k), u32::from(v));
                let old = map.insert(k, self.val(n)).map(|r| r.n);
                assert_eq!(old, self.model.insert(k, n), "insert({k}, {n})");
            }
            SimpleOp::PinnedInsert { k, v } => {
                let (k, n) = (self.key(k), u32::from(v));
                let old = map.pin().insert(k, self.val(n)).map(|r| r.n);
                assert_eq!(old, self.model.insert(k, n), "pinned insert({k}, {n})");
            }
            SimpleOp::Get { k } => {
                let k = self.key(k);
                assert_eq!(
                    map.get(&k).map(|r| r.n),
                    self.model.get(&k).copied(),
                    "get({k})"
                );
            }
            SimpleOp::PinnedGet { k } => {
                let k = self.key(k);
                let got = map.pin().get(&k).map(|r| r.n);
                assert_eq!(got, self.model.get(&k).copied(), "pinned get({k})");
            }
            SimpleOp::GetCloned { k } => {
                let k = self.key(k);
                let got = map.get_cloned(&k).map(|v| v.n);
                assert_eq!(got, self.model.get(&k).copied(), "get_cloned({k})");
            }
            SimpleOp::ContainsKey { k } => {
                let k = self.key(k);
                let c = self.model.contains_key(&k);
                assert_eq!(map.contains_key(&k), c, "contains_key({k})");
                assert_eq!(map.pin().contains_key(&k), c, "pinned contains_key({k})");
            }
            SimpleOp::LoadOrStore { k, v } => {
                let (k, n) = (self.key(k), u32::from(v));
                let got = map.get_or_insert(k, self.val(n)).map(|r| r.n);
                assert_eq!(got, self.load_or_store(k, n), "get_or_insert({k}, {n})");
            }
            SimpleOp::PinnedLoadOrStore { k, v } => {
                let (k, n) = (self.key(k), u32::from(v));
                let got = map.pin().get_or_insert(k, self.val(n)).map(|r| r.n);
                assert_eq!(
                    got,
                    self.load_or_store(k, n),
                    "pinned get_or_insert({k}, {n})"
                );
            }
            SimpleOp::LoadOrStoreWith { k, v } => {
                let (k, n) = (self.key(k), u32::from(v));
                let mut calls = 0;
                let tracker = &self.tracker;
                let got = map
                    .get_or_insert_with(k, || {
                        calls += 1;
                        Val::new(n, tracker)
                    })
                    .map(|r| r.n);
                let expect = self.load_or_store(k, n);
                assert_eq!(got, expect, "get_or_insert_with({k}, {n})");
                assert_eq!(calls, usize::from(expect.is_inserted()), "closure calls");
            }
            SimpleOp::Remove { k } => {
                let k = self.key(k);
                let old = map.remove(&k).map(|r| r.n);
                assert_eq!(old, self.model.remove(&k), "remove({k})");
            }
            SimpleOp::PinnedRemove { k } => {
                let k = self.key(k);
                let old = map.pin().remove(&k).map(|r| r.n);
                assert_eq!(old, self.model.remove(&k), "pinned remove({k})");
            }
            SimpleOp::RemoveIf { k, m, r } => {
                let k = self.key(k);
                let mut calls = Vec::new();
                let got = map
                    .remove_if(&k, |v| {
                        calls.push(v.n);
                        pred(m, r, v.n)
                    })
                    .map(|r| r.n);
                let cur = self.model.get(&k).copied();
                assert_eq!(
                    calls,
                    cur.into_iter().collect::<Vec<_>>(),
                    "remove_if calls"
                );
                let expect = cur.filter(|&n| pred(m, r, n));
                if expect.is_some() {
                    self.model.remove(&k);
                }
                assert_eq!(got, expect, "remove_if({k})");
            }
            SimpleOp::CompareExchange { k, cur, new } => {
                let (k, c, n) = (self.key(k), u32::from(cur), u32::from(new));
                let res = map.compare_exchange(&k, &self.val(c), self.val(n));
                let res = res
                    .map(|r| r.n)
                    .map_err(|e| (e.current.map(|r| r.n), e.new.n));
                assert_eq!(
                    res,
                    self.compare_exchange(k, c, n),
                    "compare_exchange({k}, {c}, {n})"
                );
            }
            SimpleOp::PinnedCompareExchange { k, cur, new } => {
                let (k, c, n) = (self.key(k), u32::from(cur), u32::from(new));
                let pinned = map.pin();
                let res = pinned
                    .compare_exchange(&k, &self.val(c), self.val(n))
                    .map(|r| r.n)
                    .map_err(|e| (e.current.map(|r| r.n), e.new.n));
                drop(pinned);
                let expect = self.compare_exchange(k, c, n);
                assert_eq!(res, expect, "pinned compare_exchange({k}, {c}, {n})");
            }
            SimpleOp::CompareRemove { k, cur } => {
                let (k, c) = (self.key(k), u32::from(cur));
                let removed = map.compare_remove(&k, &self.val(c));
                let expect = self.model.get(&k) == Some(&c);
                if expect {
                    self.model.remove(&k);
                }
                assert_eq!(removed, expect, "compare_remove({k}, {c})");
            }
            SimpleOp::Clear => {
                map.clear();
                self.model.clear();
                self.check_empty("clear");
            }
            SimpleOp::ClearAndRelease => {
                let released = map.clear_and_release();
                self.model.clear();
                self.check_empty("clear_and_release");
                let s = map.stats();
                assert!(
                    s.held_bytes <= self.empty_bytes,
                    "clear_and_release kept {} bytes, a new map holds {}: {s}",
                    s.held_bytes,
                    self.empty_bytes
                );
                if self.idle() && (released.pending_bytes != 0 || s.retired_bytes != 0) {
                    // Only another thread's pin (the background reclaimer's) can keep anything.
                    assert_eq!(self.settle(), 0, "pending after clear_and_release: {s}");
                }
            }
            SimpleOp::Retain { m, r } => {
                let mut seen = Vec::new();
                map.retain(|k, v| {
                    seen.push((*k, v.n));
                    !pred(m, r, v.n)
                });
                self.check_iteration(seen.into_iter(), "retain");
                self.model.retain(|_, n| !pred(m, r, *n));
            }
            SimpleOp::ShrinkToFit => {
                map.shrink_to_fit();
                let s = map.stats();
                assert_eq!(s.deleted, 0, "deleted entries after shrink_to_fit: {s}");
                let len = self.model.len();
                // Each shard keeps at most 8 slots per key it holds plus 64 (its smallest
                // tables): the bound of a one-shard map, per shard.
                let shards = map.shard_count();
                assert!(
                    s.read_capacity <= 8 * len + 64 * shards,
                    "shrink_to_fit left a large table ({shards} shards): {s}"
                );
                if self.idle() && s.retired_bytes != 0 {
                    // As for `clear_and_release`.
                    assert_eq!(self.settle(), 0, "retired after shrink_to_fit: {s}");
                }
            }
            SimpleOp::Reclaim => {
                let pending = map.reclaim();
                if self.idle() && pending != 0 {
                    // As for `clear_and_release`.
                    assert_eq!(self.settle(), 0, "reclaim with no guard alive");
                }
            }
            SimpleOp::Iter => {
                let pinned = map.pin();
                self.check_iteration(pinned.iter().map(|(k, v)| (*k, v.n)), "iter");
                let keys: HashSet<u16> = pinned.keys().copied().collect();
                assert_eq!(keys.len(), self.model.len(), "keys()");
                let sum: u64 = pinned.values().map(|v| u64::from(v.n)).sum();
                assert_eq!(
                    sum,
                    self.model.values().map(|&n| u64::from(n)).sum(),
                    "values()"
                );
            }
            SimpleOp::ForEach => {
                let mut seen = Vec::new();
                map.for_each(|k, v| seen.push((*k, v.n)));
                self.check_iteration(seen.into_iter(), "for_each");
            }
            SimpleOp::Range { stop } => {
                let limit = usize::from(stop) + 1;
                let mut seen = HashSet::new();
                map.range(|k, v| {
                    assert!(seen.insert(*k), "range visited {k} twice");
                    assert_eq!(
                        self.model.get(k),
                        Some(&v.n),
                        "range visited ({k}, {})",
                        v.n
                    );
                    seen.len() < limit
                });
                assert_eq!(
                    seen.len(),
                    limit.min(self.model.len()),
                    "range stopped early"
                );
            }
            SimpleOp::Len => {
                let len = self.model.len();
                assert_eq!(map.pin().len(), len, "pinned len");
                assert_eq!(map.pin().is_empty(), len == 0, "pinned is_empty");
            }
            SimpleOp::Stats => {
                let s = map.stats();
                let _ = format!("{s} {:?}", s.bytes_per_entry());
                assert!(
                    !s.migrating || s.dirty_capacity > 0,
                    "migrating without a dirty tier: {s}"
                );
            }
            SimpleOp::InsertRange { start, len, v } => {
                for i in 0..4 * u16::from(len) {
                    let k = self.key(start.wrapping_add(i));
                    let n = u32::from(v) ^ u32::from(i);
                    let old = map.insert(k, self.val(n)).map(|r| r.n);
                    assert_eq!(old, self.model.insert(k, n), "insert({k}, {n}) in a range");
                }
            }
            SimpleOp::RemoveRange { start, len } => {
                for i in 0..4 * u16::from(len) {
                    let k = self.key(start.wrapping_add(i));
                    let old = map.remove(&k).map(|r| r.n);
                    assert_eq!(old, self.model.remove(&k), "remove({k}) in a range");
                }
            }
            SimpleOp::Update { k, d } | SimpleOp::PinnedUpdate { k, d } => {
                let (k, d) = (self.key(k), u32::from(d));
                let tracker = &self.tracker;
                let mut seen = Vec::new();
                let f = |v: &Val| {
                    seen.push(v.n);
                    Val::new(v.n + d, tracker)
                };
                let got = if matches!(op, SimpleOp::Update { .. }) {
                    map.update(&k, f).map(|r| r.n)
                } else {
                    map.pin().update(&k, f).map(|r| r.n)
                };
                let cur = self.model.get(&k).copied();
                assert_eq!(seen, cur.into_iter().collect::<Vec<_>>(), "update calls");
                let expect = cur.map(|c| c + d);
                if let Some(n) = expect {
                    self.model.insert(k, n);
                }
                assert_eq!(got, expect, "update({k}, +{d})");
            }
            SimpleOp::UpdateOrInsert { k, d, v } | SimpleOp::UpdateOrInsertWith { k, d, v } => {
                let (k, d, x) = (self.key(k), u32::from(d), u32::from(v));
                let cur = self.model.get(&k).copied();
                let tracker = &self.tracker;
                let (mut fs, mut makes) = (0, 0);
                let f = |v: &Val| {
                    fs += 1;
                    Val::new(v.n + d, tracker)
                };
                let got = if matches!(op, SimpleOp::UpdateOrInsert { .. }) {
                    makes = usize::from(cur.is_none());
                    map.update_or_insert(k, f, Val::new(x, tracker)).n
                } else {
                    map.update_or_insert_with(k, f, || {
                        makes += 1;
                        Val::new(x, tracker)
                    })
                    .n
                };
                let expect = cur.map_or(x, |c| c + d);
                self.model.insert(k, expect);
                assert_eq!(got, expect, "update_or_insert({k}, +{d}, {x})");
                assert_eq!(fs, usize::from(cur.is_some()), "update_or_insert f calls");
                assert_eq!(makes, usize::from(cur.is_none()), "make calls");
            }
            SimpleOp::Compute { k, rule, v } | SimpleOp::PinnedCompute { k, rule, v } => {
                let (k, x) = (self.key(k), u32::from(v));
                let tracker = &self.tracker;
                let mut seen = Vec::new();
                let f = |cur: Option<&Val>| {
                    let cur = cur.map(|v| v.n);
                    seen.push(cur);
                    match decide(rule, cur, x) {
                        Rmw::Insert(n) => Rmw::Insert(Val::new(n, tracker)),
                        Rmw::Keep => Rmw::Keep,
                        Rmw::Remove => Rmw::Remove,
                    }
                };
                let got = if matches!(op, SimpleOp::Compute { .. }) {
                    map.compute(k, f).map(|r| r.n)
                } else {
                    map.pin().compute(k, f).map(|r| r.n)
                };
                let cur = self.model.get(&k).copied();
                assert_eq!(seen, [cur], "compute calls");
                let decision = decide(rule, cur, x);
                let expect = computed(&decision, cur);
                match decision {
                    Rmw::Insert(n) => {
                        self.model.insert(k, n);
                    }
                    Rmw::Remove => {
                        self.model.remove(&k);
                    }
                    Rmw::Keep => {}
                }
                assert_eq!(got, expect, "compute({k}, rule {rule}, {x})");
            }
            SimpleOp::CloneMap => {
                let copy = map.clone();
                assert_eq!(copy.len(), self.model.len(), "clone len");
                let pinned = copy.pin();
                self.check_iteration(pinned.iter().map(|(k, v)| (*k, v.n)), "clone");
                for (k, n) in &self.model {
                    assert_eq!(pinned.get(k).map(|v| v.n), Some(*n), "clone get({k})");
                }
            }
        }
    }

    fn check_empty(&self, what: &str) {
        assert_eq!(self.map.len(), 0, "{what}: len");
        let s = self.map.stats();
        assert_eq!((s.len, s.deleted), (0, 0), "{what}: {s}");
        assert!(self.map.pin().iter().next().is_none(), "{what}: iteration");
    }

    fn load_or_store(&mut self, k: u16, n: u32) -> GetOrInsert<u32> {
        match self.model.get(&k) {
            Some(&cur) => GetOrInsert::Loaded(cur),
            None => {
                self.model.insert(k, n);
                GetOrInsert::Inserted(n)
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn compare_exchange(&mut self, k: u16, cur: u32, new: u32) -> Result<u32, (Option<u32>, u32)> {
        match self.model.get(&k).copied() {
            Some(c) if c == cur => {
                self.model.insert(k, new);
                Ok(c)
            }
            other => Err((other, new)),
        }
    }
}

// ---- generation for the replay test -------------------------------------------------------

impl Program {
    /// A random program of up to `max_ops` operations.
    pub fn random(rng: &mut Rng, max_ops: usize) -> Program {
        let keys = match rng.below(8) {
            0..=2 => KeySpace::Tiny,
            3..=5 => KeySpace::Small,
            6 => KeySpace::Medium,
            _ => KeySpace::Large,
        };
        let n = rng.below(max_ops as u64 + 1) as usize;
        Program {
            hasher: rng.hasher(),
            keys,
            capacity: rng
                .chance(1, 2)
                .then(|| (rng.u16() % 2048) | ((rng.u16() % 4) << 12)),
            into_iter: rng.chance(1, 2),
            ops: (0..n).map(|_| Op::random(rng)).collect(),
        }
    }
}

impl Op {
    /// A random top-level operation.
    pub fn random(rng: &mut Rng) -> Op {
        match rng.below(40) {
            0..=1 => Op::IterWith {
                body: (0..rng.below(8)).map(|_| SimpleOp::random(rng)).collect(),
                stop: rng.chance(1, 4).then(|| rng.u8() % 8),
            },
            2 => Op::LoadOrStoreReentrant {
                k: rng.u16(),
                v: rng.u8(),
                inner: SimpleOp::random(rng),
            },
            3 => Op::RemoveIfReentrant {
                k: rng.u16(),
                m: rng.u8(),
                r: rng.u8(),
                inner: SimpleOp::random(rng),
            },
            4 => Op::Hold { k: rng.u16() },
            5 => Op::InsertHold {
                k: rng.u16(),
                v: rng.u8(),
            },
            6 => Op::RemoveHold { k: rng.u16() },
            7 => Op::DropRefs,
            8 => Op::CheckAll,
            9 => Op::UpdateReentrant {
                k: rng.u16(),
                d: rng.u8() % 8,
                inner: SimpleOp::random(rng),
            },
            10 => Op::ComputeReentrant {
                k: rng.u16(),
                rule: rng.u8(),
                v: rng.u8() % 8,
                inner: SimpleOp::random(rng),
            },
            11 => Op::UpsertReentrant {
                k: rng.u16(),
                d: rng.u8() % 8,
                v: rng.u8() % 8,
                inner: SimpleOp::random(rng),
            },
            _ => Op::Simple(SimpleOp::random(rng)),
        }
    }
}

impl SimpleOp {
    /// A random plain operation; values are small so that comparisons often match.
    pub fn random(rng: &mut Rng) -> SimpleOp {
        let k = rng.u16();
        let v = rng.u8() % 8;
        let (m, r) = (rng.u8(), rng.u8());
        match rng.below(64) {
            0..=7 => SimpleOp::Insert { k, v },
            8..=9 => SimpleOp::PinnedInsert { k, v },
            10..=13 => SimpleOp::Get { k },
            14 => SimpleOp::PinnedGet { k },
            15 => SimpleOp::GetCloned { k },
            16 => SimpleOp::ContainsKey { k },
            17..=19 => SimpleOp::LoadOrStore { k, v },
            20..=21 => SimpleOp::LoadOrStoreWith { k, v },
            22 => SimpleOp::PinnedLoadOrStore { k, v },
            23..=29 => SimpleOp::Remove { k },
            30 => SimpleOp::PinnedRemove { k },
            31..=32 => SimpleOp::RemoveIf { k, m, r },
            33..=35 => SimpleOp::CompareExchange {
                k,
                cur: v,
                new: rng.u8() % 8,
            },
            36 => SimpleOp::PinnedCompareExchange {
                k,
                cur: v,
                new: rng.u8() % 8,
            },
            37..=38 => SimpleOp::CompareRemove { k, cur: v },
            39 => SimpleOp::Clear,
            40 => SimpleOp::ClearAndRelease,
            41 => SimpleOp::Retain { m, r },
            42 => SimpleOp::ShrinkToFit,
            43 => SimpleOp::Reclaim,
            44 => SimpleOp::Iter,
            45 => SimpleOp::ForEach,
            46 => SimpleOp::Range {
                stop: rng.u8() % 16,
            },
            47 => SimpleOp::Len,
            48 => SimpleOp::Stats,
            49..=51 => SimpleOp::InsertRange {
                start: k,
                len: rng.u8(),
                v,
            },
            52..=54 => SimpleOp::RemoveRange {
                start: k,
                len: rng.u8(),
            },
            55 => SimpleOp::CloneMap,
            56..=57 => SimpleOp::Update { k, d: v },
            58 => SimpleOp::PinnedUpdate { k, d: v },
            59 => SimpleOp::UpdateOrInsert { k, d: v, v: m % 8 },
            60 => SimpleOp::UpdateOrInsertWith { k, d: v, v: m % 8 },
            61..=62 => SimpleOp::Compute { k, rule: r, v },
            63 => SimpleOp::PinnedCompute { k, rule: r, v },
            _ => SimpleOp::Insert { k, v },
        }
    }
}
