//! Concurrent check: two or three threads run their own operation sequences on one shared map,
//! then the run checks what holds under every interleaving.
//!
//! Each thread owns a key range that no other thread writes, and all of them share a small range.
//! For its own keys a thread keeps a sequential model and compares every result exactly; for
//! shared keys it checks what any interleaving allows (a `compare_exchange` that succeeded
//! replaced the value it compared, a value returned is one some thread wrote, a read-modify-write
//! stored what its closure made from an intact value of the key, ...). Every value
//! carries `(key, thread, seq)` and a checksum of them, so a torn or misdirected value is caught
//! wherever it shows up. Values count their constructions and drops: after the threads are joined
//! and the map is released and dropped, each was dropped exactly once.
//!
//! In `chaos` mode threads may also `clear` the map, which breaks the ownership of keys: only
//! the structural checks remain (no torn value, no key visited twice, exact counts once the map
//! is quiescent, no leak).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier};

use tiermap::{Computed, GetOrInsert, Op, Ref, SyncMap};

use super::{assert_all_dropped, FuzzHasher, HasherKind, Rng, Tracker};

/// Keys owned by each thread.
const OWN: u16 = 1024;
/// First shared key (after the owned ranges of up to three threads).
const SHARED_BASE: u16 = 4 * OWN;
/// Shared keys.
const SHARED: u16 = 32;
/// Refs held per thread at most.
const MAX_HELD: usize = 4;

fuzz_input! {
    /// One fuzz input: a sequence per thread (two or three threads).
    #[derive(Clone, Debug)]
    pub struct Input {
        pub hasher: HasherKind,
        /// Threads may call `clear`; per-thread models are not checked.
        pub chaos: bool,
        /// The map has `1 << (shards % 4)` shards.
        pub shards: u8,
        pub threads: Vec<Vec<COp>>,
    }

    /// A thread's operation. `shared` picks the shared key range instead of the thread's own.
    #[derive(Clone, Debug)]
    pub enum COp {
        Insert { k: u16, shared: bool },
        Get { k: u16, shared: bool },
        GetCloned { k: u16, shared: bool },
        ContainsKey { k: u16, shared: bool },
        LoadOrStore { k: u16, shared: bool },
        LoadOrStoreWith { k: u16, shared: bool },
        Remove { k: u16, shared: bool },
        RemoveIf { k: u16, shared: bool, m: u8 },
        /// `hit`: compare with the value the thread believes current (else with a wrong one).
        CompareExchange { k: u16, shared: bool, hit: bool },
        CompareRemove { k: u16, shared: bool, hit: bool },
        /// Removes own and shared keys that `seq % (m % 4 + 1) == 0`; keeps other threads' keys.
        Retain { m: u8 },
        Iter,
        CloneMap,
        ShrinkToFit,
        Reclaim,
        Stats,
        /// Inserts `4 * len` own keys from `start`.
        InsertRange { start: u16, len: u8 },
        /// Removes `4 * len` own keys from `start`.
        RemoveRange { start: u16, len: u8 },
        Hold { k: u16, shared: bool },
        DropRefs,
        /// `clear` (chaos mode only; a `Stats` otherwise).
        Clear,
        /// `clear_and_release` (chaos mode only; a `Reclaim` otherwise).
        ClearAndRelease,
        /// `update(k)` with a fresh value.
        Update { k: u16, shared: bool },
        /// `update_or_insert_with(k)`, both closures making fresh values.
        UpdateOrInsert { k: u16, shared: bool },
        /// `compute(k)`: `m % 3` = 0 stores a fresh value, 1 removes a value of even `seq` and
        /// keeps others, 2 keeps.
        Compute { k: u16, shared: bool, m: u8 },
    }
}

/// A value that says where it belongs and who wrote it.
#[derive(Debug)]
pub struct CVal {
    key: u16,
    thread: u8,
    seq: u32,
    check: u64,
    tracker: Arc<Tracker>,
}

fn checksum(key: u16, thread: u8, seq: u32) -> u64 {
    let x = (u64::from(key) << 40) ^ (u64::from(thread) << 32) ^ u64::from(seq);
    x.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29) ^ 0xA5A5_5A5A_F00D_BEEF
}

impl CVal {
    fn new(key: u16, thread: u8, seq: u32, tracker: &Arc<Tracker>) -> Self {
        tracker.created.fetch_add(1, SeqCst);
        CVal {
            key,
            thread,
            seq,
            check: checksum(key, thread, seq),
            tracker: tracker.clone(),
        }
    }

    /// Panics unless the value is intact and belongs to `key`.
    fn verify(&self, key: u16) {
        assert_eq!(
            self.check,
            checksum(self.key, self.thread, self.seq),
            "torn value {self:?}"
        );
        assert_eq!(
            self.key, key,
            "value of key {} found under key {key}",
            self.key
        );
    }

    fn id(&self) -> (u8, u32) {
        (self.thread, self.seq)
    }
}

impl Clone for CVal {
    fn clone(&self) -> Self {
        CVal::new(self.key, self.thread, self.seq, &self.tracker)
    }
}

impl PartialEq for CVal {
    fn eq(&self, other: &Self) -> bool {
        (self.key, self.thread, self.seq) == (other.key, other.thread, other.seq)
    }
}

impl Drop for CVal {
    fn drop(&mut self) {
        self.tracker.dropped.fetch_add(1, SeqCst);
    }
}

/// The map under test.
pub type Map = SyncMap<u16, CVal, FuzzHasher>;

struct Worker<'m> {
    map: &'m Map,
    t: u8,
    chaos: bool,
    seq: u32,
    tracker: Arc<Tracker>,
    /// Own keys: the sequence number of the current value.
    model: HashMap<u16, u32>,
    /// Shared keys: the last value this thread saw or wrote.
    last: HashMap<u16, (u8, u32)>,
    /// Every `(key, seq)` this thread wrote, for the final check of shared keys.
    written: HashSet<(u16, u32)>,
    held: Vec<Ref<'m, CVal>>,
}

/// Panics with the thread's name, so a failure says which sequence broke.
macro_rules! check {
    ($w:expr, $cond:expr, $($fmt:tt)*) => {
        assert!($cond, "thread {}: {}", $w.t, format!($($fmt)*))
    };
}

impl<'m> Worker<'m> {
    fn key(&self, k: u16, shared: bool) -> u16 {
        if shared {
            SHARED_BASE + k % SHARED
        } else {
            u16::from(self.t) * OWN + k % OWN
        }
    }

    fn owned(&self, key: u16) -> bool {
        !self.chaos && key / OWN == u16::from(self.t) && key < SHARED_BASE
    }

    fn fresh(&mut self, key: u16) -> CVal {
        self.seq += 1;
        self.written.insert((key, self.seq));
        CVal::new(key, self.t, self.seq, &self.tracker)
    }

    /// A value this thread believes current (`hit`) or certainly not current.
    fn expected(&self, key: u16, hit: bool) -> CVal {
        let (t, seq) = if self.owned(key) {
            (self.t, self.model.get(&key).copied().unwrap_or(u32::MAX))
        } else {
            self.last.get(&key).copied().unwrap_or((self.t, u32::MAX))
        };
        let seq = if hit { seq } else { u32::MAX - 1 };
        CVal::new(key, t, seq, &self.tracker)
    }

    fn seen(&mut self, key: u16, v: Option<&CVal>) {
        if let Some(v) = v {
            v.verify(key);
            if !self.owned(key) {
                self.last.insert(key, v.id());
            }
        }
    }

    /// Compares a result for an own key with the model.
    fn own(&self, key: u16, got: Option<&CVal>, expect: Option<u32>, what: &str) {
        if self.owned(key) {
            check!(
                self,
                got.map(|v| v.id()) == expect.map(|s| (self.t, s)),
                "{what}({key}): got {got:?}, model {expect:?}"
            );
        }
    }

    fn run(&mut self, ops: &[COp]) {
        for op in ops {
            self.op(op);
            for r in &self.held {
                r.verify(r.key);
            }
        }
        self.held.clear();
    }

    fn op(&mut self, op: &COp) {
        let map = self.map;
        match *op {
            COp::Insert { k, shared } => {
                let key = self.key(k, shared);
                let v = self.fresh(key);
                let seq = v.seq;
                let old = map.insert(key, v);
                self.seen(key, old.as_deref());
                let expect = self.model_insert(key, seq);
                self.own(key, old.as_deref(), expect, "insert");
                if !self.owned(key) {
                    self.last.insert(key, (self.t, seq));
                }
            }
            COp::Get { k, shared } => {
                let key = self.key(k, shared);
                let got = map.get(&key);
                self.seen(key, got.as_deref());
                self.own(key, got.as_deref(), self.model.get(&key).copied(), "get");
            }
            COp::GetCloned { k, shared } => {
                let key = self.key(k, shared);
                let got = map.get_cloned(&key);
                self.seen(key, got.as_ref());
                self.own(
                    key,
                    got.as_ref(),
                    self.model.get(&key).copied(),
                    "get_cloned",
                );
            }
            COp::ContainsKey { k, shared } => {
                let key = self.key(k, shared);
                let c = map.contains_key(&key);
                if self.owned(key) {
                    check!(
                        self,
                        c == self.model.contains_key(&key),
                        "contains_key({key})"
                    );
                }
            }
            COp::LoadOrStore { k, shared } | COp::LoadOrStoreWith { k, shared } => {
                let key = self.key(k, shared);
                let v = self.fresh(key);
                let mine = v.id();
                let mut calls = 0;
                let r = if matches!(op, COp::LoadOrStore { .. }) {
                    calls = 1;
                    map.get_or_insert(key, v)
                } else {
                    map.get_or_insert_with(key, || {
                        calls += 1;
                        v
                    })
                };
                check!(
                    self,
                    calls <= 1,
                    "get_or_insert_with ran its closure {calls} times"
                );
                let inserted = r.is_inserted();
                let r = r.into_inner();
                r.verify(key);
                if inserted {
                    check!(self, r.id() == mine, "Inserted returned {r:?}, not ours");
                    check!(self, calls == 1, "Inserted without running the closure");
                } else {
                    check!(
                        self,
                        r.id() != mine,
                        "Loaded returned the value just offered"
                    );
                }
                if self.owned(key) {
                    let expect = match self.model.get(&key) {
                        Some(&s) => GetOrInsert::Loaded(s),
                        None => GetOrInsert::Inserted(mine.1),
                    };
                    let got = if inserted {
                        GetOrInsert::Inserted(r.seq)
                    } else {
                        GetOrInsert::Loaded(r.seq)
                    };
                    check!(
                        self,
                        got == expect,
                        "get_or_insert({key}): {got:?}, model {expect:?}"
                    );
                    self.model.insert(key, r.seq);
                } else {
                    self.last.insert(key, r.id());
                }
            }
            COp::Remove { k, shared } => {
                let key = self.key(k, shared);
                let old = map.remove(&key);
                self.seen(key, old.as_deref());
                let expect = self.model_remove(key);
                self.own(key, old.as_deref(), expect, "remove");
            }
            COp::RemoveIf { k, shared, m } => {
                let key = self.key(k, shared);
                let m = u32::from(m % 4) + 1;
                let mut judged = Vec::new();
                let old = map.remove_if(&key, |v| {
                    v.verify(key);
                    judged.push(v.id());
                    v.seq % m == 0
                });
                if let Some(v) = old.as_deref() {
                    v.verify(key);
                    check!(self, v.seq % m == 0, "remove_if removed {v:?}, refused");
                    check!(
                        self,
                        judged.last() == Some(&v.id()),
                        "removed an unjudged value"
                    );
                }
                if self.owned(key) {
                    let cur = self.model.get(&key).copied();
                    let expect = cur.filter(|s| s % m == 0);
                    check!(
                        self,
                        judged.len() == usize::from(cur.is_some()),
                        "judged {judged:?}"
                    );
                    self.own(key, old.as_deref(), expect, "remove_if");
                    if expect.is_some() {
                        self.model.remove(&key);
                    }
                }
            }
            COp::CompareExchange { k, shared, hit } => {
                let key = self.key(k, shared);
                let cur = self.expected(key, hit);
                let new = self.fresh(key);
                let new_id = new.id();
                match map.compare_exchange(&key, &cur, new) {
                    Ok(old) => {
                        old.verify(key);
                        check!(
                            self,
                            *old == cur,
                            "compare_exchange replaced {old:?}, not {cur:?}"
                        );
                        if self.owned(key) {
                            check!(
                                self,
                                self.model.get(&key) == Some(&cur.seq),
                                "swapped {cur:?}"
                            );
                            self.model.insert(key, new_id.1);
                        } else {
                            self.last.insert(key, new_id);
                        }
                    }
                    Err(e) => {
                        check!(
                            self,
                            e.new.id() == new_id,
                            "compare_exchange returned another new"
                        );
                        if let Some(c) = e.current.as_deref() {
                            c.verify(key);
                            check!(self, *c != cur, "compare_exchange refused an equal value");
                        }
                        if self.owned(key) {
                            let m = self.model.get(&key).copied();
                            check!(
                                self,
                                m != Some(cur.seq),
                                "compare_exchange refused the current value {cur:?}"
                            );
                            self.own(key, e.current.as_deref(), m, "compare_exchange");
                        } else if let Some(c) = e.current.as_deref() {
                            self.last.insert(key, c.id());
                        }
                    }
                }
            }
            COp::CompareRemove { k, shared, hit } => {
                let key = self.key(k, shared);
                let cur = self.expected(key, hit);
                let removed = map.compare_remove(&key, &cur);
                if self.owned(key) {
                    let expect = self.model.get(&key) == Some(&cur.seq);
                    check!(self, removed == expect, "compare_remove({key}, {cur:?})");
                    if removed {
                        self.model.remove(&key);
                    }
                }
            }
            COp::Retain { m } => {
                let m = u32::from(m % 4) + 1;
                let t = self.t;
                let mut seen = HashSet::new();
                let mut dup = None;
                map.retain(|k, v| {
                    v.verify(*k);
                    if !seen.insert(*k) {
                        dup = Some(*k);
                    }
                    let mine = *k >= SHARED_BASE || *k / OWN == u16::from(t);
                    !(mine && v.seq % m == 0)
                });
                check!(self, dup.is_none(), "retain visited {dup:?} twice");
                if !self.chaos {
                    for (k, s) in &self.model {
                        check!(self, seen.contains(k), "retain missed own key {k}");
                        let _ = s;
                    }
                    self.model.retain(|_, s| *s % m != 0);
                }
            }
            COp::Iter => {
                let pinned = map.pin();
                let mut seen = HashSet::new();
                for (k, v) in pinned.iter() {
                    v.verify(*k);
                    check!(self, seen.insert(*k), "iteration visited {k} twice");
                    if self.owned(*k) {
                        check!(
                            self,
                            self.model.get(k) == Some(&v.seq) && v.thread == self.t,
                            "iteration showed {v:?}, model {:?}",
                            self.model.get(k)
                        );
                    }
                }
                if !self.chaos {
                    for k in self.model.keys() {
                        check!(self, seen.contains(k), "iteration missed own key {k}");
                    }
                }
            }
            COp::CloneMap => {
                let copy = map.clone();
                let pinned = copy.pin();
                let mut n = 0;
                for (k, v) in pinned.iter() {
                    v.verify(*k);
                    n += 1;
                }
                check!(
                    self,
                    n == copy.len(),
                    "clone: len {} but {n} keys",
                    copy.len()
                );
                if !self.chaos {
                    for (k, s) in &self.model {
                        let got = pinned.get(k).map(|v| v.id());
                        check!(self, got == Some((self.t, *s)), "clone lacks own key {k}");
                    }
                }
            }
            COp::ShrinkToFit => map.shrink_to_fit(),
            COp::Reclaim => {
                map.reclaim();
            }
            COp::Stats => {
                let s = map.stats();
                // Counters are updated after the CAS that publishes a change, so racing
                // operations on other keys may be counted late: allow one per thread.
                let slack = 3;
                let most = 3 * usize::from(OWN) + usize::from(SHARED) + slack;
                check!(self, s.len <= most, "stats().len above the key space: {s}");
                let own = self.model.len();
                check!(
                    self,
                    s.len + slack >= own,
                    "stats().len below own keys: {s}"
                );
            }
            COp::InsertRange { start, len } => {
                for i in 0..4 * u16::from(len) {
                    self.op(&COp::Insert {
                        k: start.wrapping_add(i),
                        shared: false,
                    });
                }
            }
            COp::RemoveRange { start, len } => {
                for i in 0..4 * u16::from(len) {
                    self.op(&COp::Remove {
                        k: start.wrapping_add(i),
                        shared: false,
                    });
                }
            }
            COp::Hold { k, shared } => {
                let key = self.key(k, shared);
                if let Some(r) = map.get(&key) {
                    r.verify(key);
                    if self.held.len() >= MAX_HELD {
                        self.held.remove(0);
                    }
                    self.held.push(r);
                }
            }
            COp::DropRefs => self.held.clear(),
            COp::Clear => {
                if self.chaos {
                    map.clear();
                } else {
                    self.op(&COp::Stats);
                }
            }
            COp::ClearAndRelease => {
                if self.chaos {
                    map.clear_and_release();
                } else {
                    self.op(&COp::Reclaim);
                }
            }
            COp::Update { k, shared } => self.update(k, shared),
            COp::UpdateOrInsert { k, shared } => self.update_or_insert(k, shared),
            COp::Compute { k, shared, m } => self.compute(k, shared, m),
        }
    }

    /// `update`: the closure sees an intact value of the key; the value stored is the one its
    /// last call made. Own keys: exactly one call, on the model's value.
    fn update(&mut self, k: u16, shared: bool) {
        let map = self.map;
        let key = self.key(k, shared);
        let mut saw = Vec::new();
        let mut made = Vec::new();
        let r = map.update(&key, |v| {
            v.verify(key);
            saw.push(v.id());
            let new = self.fresh(key);
            made.push(new.id());
            new
        });
        if let Some(r) = r.as_deref() {
            r.verify(key);
            check!(
                self,
                made.last() == Some(&r.id()),
                "update stored {r:?}, made {made:?}"
            );
        }
        if self.owned(key) {
            let cur = self.model.get(&key).copied();
            check!(
                self,
                saw == cur.map(|s| (self.t, s)).into_iter().collect::<Vec<_>>(),
                "update({key}) saw {saw:?}, model {cur:?}"
            );
            check!(
                self,
                r.is_some() == cur.is_some(),
                "update({key}): {r:?}, model {cur:?}"
            );
            if let Some(r) = r.as_deref() {
                self.model.insert(key, r.seq);
            }
        } else if let Some(r) = r.as_deref() {
            self.last.insert(key, r.id());
        }
    }

    /// `update_or_insert_with`: the value stored is one this call made (by `f` from an intact
    /// value, or by `make`, which runs at most once). Own keys: exactly as the model says.
    fn update_or_insert(&mut self, k: u16, shared: bool) {
        let map = self.map;
        let key = self.key(k, shared);
        // Both closures make values: they share the worker through a `RefCell`.
        let this = RefCell::new(&mut *self);
        let saw = RefCell::new(Vec::new());
        let made = RefCell::new(Vec::new());
        let mut makes = 0;
        let r = map.update_or_insert_with(
            key,
            |v| {
                v.verify(key);
                saw.borrow_mut().push(Some(v.id()));
                let new = this.borrow_mut().fresh(key);
                made.borrow_mut().push(new.id());
                new
            },
            || {
                makes += 1;
                saw.borrow_mut().push(None);
                let new = this.borrow_mut().fresh(key);
                made.borrow_mut().push(new.id());
                new
            },
        );
        let (saw, made) = (saw.into_inner(), made.into_inner());
        r.verify(key);
        check!(
            self,
            makes <= 1,
            "update_or_insert_with made {makes} defaults"
        );
        check!(
            self,
            made.contains(&r.id()),
            "update_or_insert stored {r:?}, made {made:?}"
        );
        if self.owned(key) {
            let cur = self.model.get(&key).copied();
            check!(
                self,
                saw == [cur.map(|s| (self.t, s))] && made.last() == Some(&r.id()),
                "update_or_insert({key}) saw {saw:?}, stored {r:?}, model {cur:?}"
            );
            self.model.insert(key, r.seq);
        } else {
            self.last.insert(key, r.id());
        }
    }

    /// `compute`: what it reports matches what its closure's last call saw and decided. Own
    /// keys: exactly one call, on the model's value.
    fn compute(&mut self, k: u16, shared: bool, m: u8) {
        let map = self.map;
        let key = self.key(k, shared);
        let mut saw = Vec::new();
        let mut made = Vec::new();
        let rule = m % 3;
        let r = map.compute(key, |v| {
            if let Some(v) = v {
                v.verify(key);
            }
            saw.push(v.map(|v| v.id()));
            match (rule, v) {
                (0, _) => {
                    let new = self.fresh(key);
                    made.push(new.id());
                    Op::Insert(new)
                }
                (1, Some(v)) if v.seq % 2 == 0 => Op::Remove,
                _ => Op::Keep,
            }
        });
        let last = *saw.last().expect("compute calls its closure");
        let ok = match (&r, last) {
            (Computed::Inserted(v), None) => rule == 0 && made.last() == Some(&v.id()),
            (Computed::Updated { old, new }, Some(l)) => {
                rule == 0 && old.id() == l && made.last() == Some(&new.id())
            }
            (Computed::Removed(v), Some(l)) => rule == 1 && v.id() == l && l.1 % 2 == 0,
            (Computed::Unchanged(v), Some(l)) => {
                v.id() == l && (rule == 2 || rule == 1 && l.1 % 2 == 1)
            }
            (Computed::Absent, None) => rule != 0,
            _ => false,
        };
        check!(
            self,
            ok,
            "compute({key}, rule {rule}) saw {saw:?}, reported {r:?}"
        );
        match &r {
            Computed::Inserted(v) | Computed::Unchanged(v) => v.verify(key),
            Computed::Updated { old, new } => {
                old.verify(key);
                new.verify(key);
            }
            Computed::Removed(v) => v.verify(key),
            Computed::Absent => {}
        }
        if self.owned(key) {
            let cur = self.model.get(&key).copied();
            check!(
                self,
                saw == [cur.map(|s| (self.t, s))],
                "compute({key}) saw {saw:?}, model {cur:?}"
            );
            match &r {
                Computed::Inserted(v) | Computed::Updated { new: v, .. } => {
                    self.model.insert(key, v.seq);
                }
                Computed::Removed(_) => {
                    self.model.remove(&key);
                }
                Computed::Unchanged(_) | Computed::Absent => {}
            }
        } else {
            match &r {
                Computed::Inserted(v)
                | Computed::Updated { new: v, .. }
                | Computed::Unchanged(v) => {
                    self.last.insert(key, v.id());
                }
                Computed::Removed(_) | Computed::Absent => {}
            }
        }
    }

    fn model_insert(&mut self, key: u16, seq: u32) -> Option<u32> {
        if self.owned(key) {
            self.model.insert(key, seq)
        } else {
            None
        }
    }

    fn model_remove(&mut self, key: u16) -> Option<u32> {
        if self.owned(key) {
            self.model.remove(&key)
        } else {
            None
        }
    }
}

/// What a thread leaves behind: its own keys' model and every `(key, seq)` it wrote.
type ThreadResult = (HashMap<u16, u32>, HashSet<(u16, u32)>);

/// Runs the threads of `input` on one map and checks the outcome (see the module docs).
/// `patience` bounds the wait for other threads' epoch pins when checking for leaks.
pub fn run(input: &Input, patience: std::time::Duration) {
    let tracker = Tracker::new();
    let shards = 1 << (input.shards % 4);
    let map = Map::with_capacity_shards_and_hasher(0, shards, FuzzHasher::new(input.hasher));
    let empty: Vec<COp> = Vec::new();
    let n = input.threads.len().clamp(2, 3);
    let seqs: Vec<&[COp]> = (0..n)
        .map(|i| input.threads.get(i).map_or(&empty[..], |v| &v[..]))
        .collect();
    let barrier = Barrier::new(n);
    let done = AtomicUsize::new(0);
    let results: Vec<ThreadResult> = std::thread::scope(|s| {
        let handles: Vec<_> = seqs
            .iter()
            .enumerate()
            .map(|(t, ops)| {
                let (map, tracker, barrier, done) = (&map, tracker.clone(), &barrier, &done);
                s.spawn(move || {
                    let mut w = Worker {
                        map,
                        t: t as u8,
                        chaos: input.chaos,
                        seq: 0,
                        tracker,
                        model: HashMap::new(),
                        last: HashMap::new(),
                        written: HashSet::new(),
                        held: Vec::new(),
                    };
                    barrier.wait();
                    w.run(ops);
                    done.fetch_add(1, SeqCst);
                    (w.model, w.written)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(r) => r,
                Err(e) => std::panic::resume_unwind(e),
            })
            .collect()
    });
    assert_eq!(done.load(SeqCst), n);

    // Quiescent now: counts are exact.
    let pinned = map.pin();
    let mut present = HashMap::new();
    for (k, v) in pinned.iter() {
        v.verify(*k);
        assert!(
            present.insert(*k, v.id()).is_none(),
            "final iteration visited {k} twice"
        );
    }
    assert_eq!(map.len(), present.len(), "len after the threads stopped");
    let s = map.stats();
    assert_eq!(s.len, present.len(), "stats after the threads stopped: {s}");
    for (k, id) in &present {
        assert_eq!(
            pinned.get(k).map(|v| v.id()),
            Some(*id),
            "get({k}) after the threads"
        );
        let (t, seq) = *id;
        let written = results
            .get(usize::from(t))
            .is_some_and(|(_, w)| w.contains(&(*k, seq)));
        assert!(
            written,
            "key {k} holds ({t}, {seq}), which no thread wrote there"
        );
    }
    if !input.chaos {
        for (t, (model, _)) in results.iter().enumerate() {
            let base = t as u16 * OWN;
            for k in base..base + OWN {
                let expect = model.get(&k).map(|&s| (t as u8, s));
                assert_eq!(
                    present.get(&k).copied(),
                    expect,
                    "thread {t}'s key {k} at the end"
                );
            }
        }
    }
    drop(pinned);
    let released = map.clear_and_release();
    let _ = released;
    drop(map);
    assert_all_dropped(&tracker, patience);
}

impl Input {
    /// A random input of 2 or 3 threads with up to `max_ops` operations each.
    pub fn random(rng: &mut Rng, max_ops: usize) -> Input {
        let n = 2 + rng.below(2) as usize;
        Input {
            hasher: rng.hasher(),
            chaos: rng.chance(1, 4),
            shards: rng.below(4) as u8,
            threads: (0..n)
                .map(|_| {
                    let len = rng.below(max_ops as u64 + 1) as usize;
                    (0..len).map(|_| COp::random(rng)).collect()
                })
                .collect(),
        }
    }
}

impl COp {
    /// A random operation.
    pub fn random(rng: &mut Rng) -> COp {
        let k = rng.u16() % 64;
        let shared = rng.chance(1, 3);
        match rng.below(48) {
            0..=7 => COp::Insert { k, shared },
            8..=11 => COp::Get { k, shared },
            12 => COp::GetCloned { k, shared },
            13 => COp::ContainsKey { k, shared },
            14..=15 => COp::LoadOrStore { k, shared },
            16..=17 => COp::LoadOrStoreWith { k, shared },
            18..=23 => COp::Remove { k, shared },
            24..=25 => COp::RemoveIf {
                k,
                shared,
                m: rng.u8(),
            },
            26..=28 => COp::CompareExchange {
                k,
                shared,
                hit: rng.chance(2, 3),
            },
            29..=30 => COp::CompareRemove {
                k,
                shared,
                hit: rng.chance(2, 3),
            },
            31 => COp::Retain { m: rng.u8() },
            32 => COp::Iter,
            33 => COp::CloneMap,
            34 => COp::ShrinkToFit,
            35 => COp::Reclaim,
            36 => COp::Stats,
            37..=38 => COp::InsertRange {
                start: rng.u16(),
                len: rng.u8() % 64,
            },
            39..=40 => COp::RemoveRange {
                start: rng.u16(),
                len: rng.u8() % 64,
            },
            41..=42 => COp::Hold { k, shared },
            43 => COp::DropRefs,
            44 => COp::Clear,
            45 => COp::ClearAndRelease,
            46 => {
                if rng.chance(1, 2) {
                    COp::Update { k, shared }
                } else {
                    COp::UpdateOrInsert { k, shared }
                }
            }
            47 => COp::Compute {
                k,
                shared,
                m: rng.u8(),
            },
            _ => COp::Insert { k, shared },
        }
    }
}
