//! One small adapter per map, so that every workload is written once.
//!
//! Shared by the bench binaries (`mod common;`) and by `examples/memory.rs`
//! (`#[path = "../benches/common/mod.rs"]`). Keys and values are `u64`; every map uses
//! `ahash::RandomState`, as conc-map-bench does.
//!
//! The adapters use each map the way its documentation suggests, with the fast path a careful
//! user would write: a `load_or_store` on a lock-based map reads under the shared lock first
//! (as Go's `RWMutexMap` reference does); epoch maps pin once per operation.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap as StdHashMap;
use std::sync::{Mutex, RwLock};

pub type Hasher = ahash::RandomState;

/// What a benchmark needs from a concurrent `u64 -> u64` map.
pub trait BenchMap: Send + Sync + 'static {
    /// Label in tables and criterion ids.
    const NAME: &'static str;
    /// Only measured in read workloads (scc::HashIndex).
    const READ_ONLY: bool = false;

    fn with_capacity(cap: usize) -> Self;
    /// Go `Load`.
    fn load(&self, k: u64) -> Option<u64>;
    /// Go `Store`.
    fn store(&self, k: u64, v: u64) {
        let _ = self.swap(k, v);
    }
    /// Go `Swap`: store, returning the previous value.
    fn swap(&self, k: u64, v: u64) -> Option<u64>;
    /// Go `LoadOrStore`: (actual, loaded).
    fn load_or_store(&self, k: u64, v: u64) -> (u64, bool);
    /// Go `LoadAndDelete`.
    fn load_and_delete(&self, k: u64) -> Option<u64>;
    /// Go `Delete`.
    fn delete(&self, k: u64) {
        let _ = self.load_and_delete(k);
    }
    /// Go `CompareAndSwap`: a missing key gives false and inserts nothing.
    fn compare_and_swap(&self, k: u64, old: u64, new: u64) -> bool;
    /// Go `CompareAndDelete`.
    fn compare_and_delete(&self, k: u64, old: u64) -> bool;
    /// Replace the value only if the key is present (bustle's `update`).
    fn update(&self, k: u64, v: u64) -> bool;
    /// Go `Range`: stop when `f` returns false. `f` must not call back into the map (the
    /// lock-based maps hold a lock while it runs).
    fn range<F: FnMut(u64, u64) -> bool>(&self, f: F);
    /// Go `Clear`.
    fn clear(&self);
    fn len(&self) -> usize;

    // ---- memory operations (examples/memory.rs) ----
    /// The map's own "give memory back" call, if it has one: (name, run it).
    fn shrink(&self) -> Option<&'static str> {
        None
    }
    /// Flush deferred frees, if the map defers them (epoch / hazard schemes).
    fn reclaim(&self) {}
}

// --------------------------------------------------------------------------------------------
// tiermap

pub type Tier = tiermap::SyncMap<u64, u64, Hasher>;

/// `TIERMAP_BENCH_SHARDS`, read once.
pub fn tiermap_bench_shards() -> Option<usize> {
    static SHARDS: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *SHARDS.get_or_init(|| {
        std::env::var("TIERMAP_BENCH_SHARDS")
            .ok()
            .and_then(|s| s.parse().ok())
    })
}

impl BenchMap for Tier {
    const NAME: &'static str = "tiermap";
    fn with_capacity(cap: usize) -> Self {
        // `TIERMAP_BENCH_SHARDS=n` overrides the shard count the map would choose (to measure
        // the choice; BENCHMARKS.md, "Shards"). Unset: the map's own choice, as a user gets.
        match tiermap_bench_shards() {
            Some(n) => tiermap::SyncMap::with_capacity_shards_and_hasher(cap, n, Hasher::new()),
            None => tiermap::SyncMap::with_capacity_and_hasher(cap, Hasher::new()),
        }
    }
    #[inline]
    fn load(&self, k: u64) -> Option<u64> {
        self.pin().get(&k).copied()
    }
    #[inline]
    fn swap(&self, k: u64, v: u64) -> Option<u64> {
        self.pin().insert(k, v).copied()
    }
    #[inline]
    fn load_or_store(&self, k: u64, v: u64) -> (u64, bool) {
        match self.pin().get_or_insert(k, v) {
            tiermap::GetOrInsert::Loaded(x) => (*x, true),
            tiermap::GetOrInsert::Inserted(x) => (*x, false),
        }
    }
    #[inline]
    fn load_and_delete(&self, k: u64) -> Option<u64> {
        self.pin().remove(&k).copied()
    }
    #[inline]
    fn compare_and_swap(&self, k: u64, old: u64, new: u64) -> bool {
        self.pin().compare_exchange(&k, &old, new).is_ok()
    }
    #[inline]
    fn compare_and_delete(&self, k: u64, old: u64) -> bool {
        self.pin().compare_remove(&k, &old)
    }
    #[inline]
    fn update(&self, k: u64, v: u64) -> bool {
        // Replace if present, as the peers' own calls do (papaya `update`, dashmap `get_mut`,
        // scc `update_sync`): one lookup and a compare-and-swap.
        self.pin().update(&k, |_| v).is_some()
    }
    fn range<F: FnMut(u64, u64) -> bool>(&self, mut f: F) {
        for (k, v) in self.pin().iter() {
            if !f(*k, *v) {
                break;
            }
        }
    }
    fn clear(&self) {
        tiermap::SyncMap::clear(self)
    }
    fn len(&self) -> usize {
        tiermap::SyncMap::len(self)
    }
    fn shrink(&self) -> Option<&'static str> {
        self.shrink_to_fit();
        Some("shrink_to_fit")
    }
    fn reclaim(&self) {
        let _ = tiermap::SyncMap::reclaim(self);
    }
}

// --------------------------------------------------------------------------------------------
// papaya

pub type Papaya = papaya::HashMap<u64, u64, Hasher>;

impl BenchMap for Papaya {
    const NAME: &'static str = "papaya";
    fn with_capacity(cap: usize) -> Self {
        papaya::HashMap::with_capacity_and_hasher(cap, Hasher::new())
    }
    #[inline]
    fn load(&self, k: u64) -> Option<u64> {
        self.pin().get(&k).copied()
    }
    #[inline]
    fn swap(&self, k: u64, v: u64) -> Option<u64> {
        self.pin().insert(k, v).copied()
    }
    #[inline]
    fn load_or_store(&self, k: u64, v: u64) -> (u64, bool) {
        match self.pin().try_insert(k, v) {
            Ok(x) => (*x, false),
            Err(e) => (*e.current, true),
        }
    }
    #[inline]
    fn load_and_delete(&self, k: u64) -> Option<u64> {
        self.pin().remove(&k).copied()
    }
    #[inline]
    fn compare_and_swap(&self, k: u64, old: u64, new: u64) -> bool {
        use papaya::{Compute, Operation};
        let m = self.pin();
        let r = m.compute(k, |e| match e {
            Some((_, v)) if *v == old => Operation::Insert(new),
            _ => Operation::Abort(()),
        });
        matches!(r, Compute::Updated { .. })
    }
    #[inline]
    fn compare_and_delete(&self, k: u64, old: u64) -> bool {
        matches!(self.pin().remove_if(&k, |_, v| *v == old), Ok(Some(_)))
    }
    #[inline]
    fn update(&self, k: u64, v: u64) -> bool {
        self.pin().update(k, |_| v).is_some()
    }
    fn range<F: FnMut(u64, u64) -> bool>(&self, mut f: F) {
        for (k, v) in self.pin().iter() {
            if !f(*k, *v) {
                break;
            }
        }
    }
    fn clear(&self) {
        self.pin().clear()
    }
    fn len(&self) -> usize {
        papaya::HashMap::len(self)
    }
    fn reclaim(&self) {
        use papaya::Guard;
        for _ in 0..4 {
            self.guard().flush();
        }
    }
}

// --------------------------------------------------------------------------------------------
// dashmap

pub type Dash = dashmap::DashMap<u64, u64, Hasher>;

impl BenchMap for Dash {
    const NAME: &'static str = "dashmap";
    fn with_capacity(cap: usize) -> Self {
        dashmap::DashMap::with_capacity_and_hasher(cap, Hasher::new())
    }
    #[inline]
    fn load(&self, k: u64) -> Option<u64> {
        self.get(&k).map(|r| *r)
    }
    #[inline]
    fn swap(&self, k: u64, v: u64) -> Option<u64> {
        self.insert(k, v)
    }
    #[inline]
    fn load_or_store(&self, k: u64, v: u64) -> (u64, bool) {
        if let Some(r) = self.get(&k) {
            return (*r, true);
        }
        match self.entry(k) {
            dashmap::Entry::Occupied(o) => (*o.get(), true),
            dashmap::Entry::Vacant(e) => {
                e.insert(v);
                (v, false)
            }
        }
    }
    #[inline]
    fn load_and_delete(&self, k: u64) -> Option<u64> {
        self.remove(&k).map(|(_, v)| v)
    }
    #[inline]
    fn compare_and_swap(&self, k: u64, old: u64, new: u64) -> bool {
        match self.get_mut(&k) {
            Some(mut r) if *r == old => {
                *r = new;
                true
            }
            _ => false,
        }
    }
    #[inline]
    fn compare_and_delete(&self, k: u64, old: u64) -> bool {
        self.remove_if(&k, |_, v| *v == old).is_some()
    }
    #[inline]
    fn update(&self, k: u64, v: u64) -> bool {
        self.get_mut(&k).map(|mut r| *r = v).is_some()
    }
    fn range<F: FnMut(u64, u64) -> bool>(&self, mut f: F) {
        for r in self.iter() {
            if !f(*r.key(), *r.value()) {
                break;
            }
        }
    }
    fn clear(&self) {
        dashmap::DashMap::clear(self)
    }
    fn len(&self) -> usize {
        dashmap::DashMap::len(self)
    }
    fn shrink(&self) -> Option<&'static str> {
        self.shrink_to_fit();
        Some("shrink_to_fit")
    }
}

// --------------------------------------------------------------------------------------------
// scc::HashMap (scc 3.x: every blocking method carries a `_sync` suffix, next to its `_async`
// twin; the adapters use the `_sync` forms, which are what scc 2.4's unsuffixed methods were)

pub type Scc = scc::HashMap<u64, u64, Hasher>;

/// Flushes scc's deferred frees (sdd, re-exported as `scc::Guard` since scc 3; `scc::ebr` is gone).
fn scc_flush() {
    let g = scc::Guard::new();
    g.accelerate();
    drop(g);
    for _ in 0..8 {
        drop(scc::Guard::new());
    }
}

impl BenchMap for Scc {
    const NAME: &'static str = "scc";
    fn with_capacity(cap: usize) -> Self {
        scc::HashMap::with_capacity_and_hasher(cap, Hasher::new())
    }
    #[inline]
    fn load(&self, k: u64) -> Option<u64> {
        // `read_sync` (2.4 `read`): shared bucket lock, copy the value out. scc 3's `HashMap` has
        // no lock-free `peek`; `get_sync` would take the exclusive lock.
        self.read_sync(&k, |_, v| *v)
    }
    #[inline]
    fn swap(&self, k: u64, v: u64) -> Option<u64> {
        self.upsert_sync(k, v)
    }
    #[inline]
    fn load_or_store(&self, k: u64, v: u64) -> (u64, bool) {
        if let Some(x) = self.read_sync(&k, |_, v| *v) {
            return (x, true);
        }
        match self.entry_sync(k) {
            scc::hash_map::Entry::Occupied(o) => (*o.get(), true),
            scc::hash_map::Entry::Vacant(e) => {
                e.insert_entry(v);
                (v, false)
            }
        }
    }
    #[inline]
    fn load_and_delete(&self, k: u64) -> Option<u64> {
        self.remove_sync(&k).map(|(_, v)| v)
    }
    #[inline]
    fn compare_and_swap(&self, k: u64, old: u64, new: u64) -> bool {
        self.update_sync(&k, |_, v| {
            if *v == old {
                *v = new;
                true
            } else {
                false
            }
        })
        .unwrap_or(false)
    }
    #[inline]
    fn compare_and_delete(&self, k: u64, old: u64) -> bool {
        self.remove_if_sync(&k, |v| *v == old).is_some()
    }
    #[inline]
    fn update(&self, k: u64, v: u64) -> bool {
        self.update_sync(&k, |_, x| *x = v).is_some()
    }
    fn range<F: FnMut(u64, u64) -> bool>(&self, mut f: F) {
        // `iter_sync` (2.4 `any` with a negated predicate): shared bucket locks, stops when `f`
        // returns false. scc 3's `any_sync` takes exclusive locks and returns an entry.
        self.iter_sync(|k, v| f(*k, *v));
    }
    fn clear(&self) {
        self.clear_sync()
    }
    fn len(&self) -> usize {
        scc::HashMap::len(self)
    }
    fn reclaim(&self) {
        scc_flush();
    }
}

// --------------------------------------------------------------------------------------------
// scc::HashIndex (read-optimized; values are replaced, not mutated in place)

pub type SccIndex = scc::HashIndex<u64, u64, Hasher>;

impl BenchMap for SccIndex {
    const NAME: &'static str = "scc-index";
    const READ_ONLY: bool = true;
    fn with_capacity(cap: usize) -> Self {
        scc::HashIndex::with_capacity_and_hasher(cap, Hasher::new())
    }
    #[inline]
    fn load(&self, k: u64) -> Option<u64> {
        // `peek_with`, lock-free as in 2.4 (3.x `read_sync` also takes this path for `u64`).
        self.peek_with(&k, |_, v| *v)
    }
    fn swap(&self, k: u64, v: u64) -> Option<u64> {
        match self.entry_sync(k) {
            scc::hash_index::Entry::Occupied(mut o) => {
                let old = *o.get();
                o.update(v);
                Some(old)
            }
            scc::hash_index::Entry::Vacant(e) => {
                e.insert_entry(v);
                None
            }
        }
    }
    fn load_or_store(&self, k: u64, v: u64) -> (u64, bool) {
        if let Some(x) = self.peek_with(&k, |_, v| *v) {
            return (x, true);
        }
        match self.entry_sync(k) {
            scc::hash_index::Entry::Occupied(o) => (*o.get(), true),
            scc::hash_index::Entry::Vacant(e) => {
                e.insert_entry(v);
                (v, false)
            }
        }
    }
    fn load_and_delete(&self, k: u64) -> Option<u64> {
        let mut got = None;
        self.remove_if_sync(&k, |v| {
            got = Some(*v);
            true
        });
        got
    }
    fn compare_and_swap(&self, k: u64, old: u64, new: u64) -> bool {
        match self.get_sync(&k) {
            Some(mut o) if *o.get() == old => {
                o.update(new);
                true
            }
            _ => false,
        }
    }
    fn compare_and_delete(&self, k: u64, old: u64) -> bool {
        self.remove_if_sync(&k, |v| *v == old)
    }
    fn update(&self, k: u64, v: u64) -> bool {
        match self.get_sync(&k) {
            Some(mut o) => {
                o.update(v);
                true
            }
            None => false,
        }
    }
    fn range<F: FnMut(u64, u64) -> bool>(&self, mut f: F) {
        let g = scc::Guard::new();
        for (k, v) in self.iter(&g) {
            if !f(*k, *v) {
                break;
            }
        }
    }
    fn clear(&self) {
        self.clear_sync()
    }
    fn len(&self) -> usize {
        scc::HashIndex::len(self)
    }
    fn reclaim(&self) {
        scc_flush();
    }
}

// --------------------------------------------------------------------------------------------
// std::sync::RwLock<HashMap> and Mutex<HashMap>

pub struct RwMap(pub RwLock<StdHashMap<u64, u64, Hasher>>);
pub struct MutexMap(pub Mutex<StdHashMap<u64, u64, Hasher>>);

macro_rules! locked_map {
    ($ty:ident, $name:literal, $read:ident, $write:ident) => {
        impl BenchMap for $ty {
            const NAME: &'static str = $name;
            fn with_capacity(cap: usize) -> Self {
                $ty(StdHashMap::with_capacity_and_hasher(cap, Hasher::new()).into())
            }
            #[inline]
            fn load(&self, k: u64) -> Option<u64> {
                self.0.$read().unwrap().get(&k).copied()
            }
            #[inline]
            fn swap(&self, k: u64, v: u64) -> Option<u64> {
                self.0.$write().unwrap().insert(k, v)
            }
            #[inline]
            fn load_or_store(&self, k: u64, v: u64) -> (u64, bool) {
                if let Some(x) = self.0.$read().unwrap().get(&k) {
                    return (*x, true);
                }
                let mut m = self.0.$write().unwrap();
                match m.entry(k) {
                    std::collections::hash_map::Entry::Occupied(o) => (*o.get(), true),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(v);
                        (v, false)
                    }
                }
            }
            #[inline]
            fn load_and_delete(&self, k: u64) -> Option<u64> {
                self.0.$write().unwrap().remove(&k)
            }
            #[inline]
            fn compare_and_swap(&self, k: u64, old: u64, new: u64) -> bool {
                match self.0.$write().unwrap().get_mut(&k) {
                    Some(v) if *v == old => {
                        *v = new;
                        true
                    }
                    _ => false,
                }
            }
            #[inline]
            fn compare_and_delete(&self, k: u64, old: u64) -> bool {
                let mut m = self.0.$write().unwrap();
                if m.get(&k) == Some(&old) {
                    m.remove(&k);
                    true
                } else {
                    false
                }
            }
            #[inline]
            fn update(&self, k: u64, v: u64) -> bool {
                self.0
                    .$write()
                    .unwrap()
                    .get_mut(&k)
                    .map(|x| *x = v)
                    .is_some()
            }
            fn range<F: FnMut(u64, u64) -> bool>(&self, mut f: F) {
                for (k, v) in self.0.$read().unwrap().iter() {
                    if !f(*k, *v) {
                        break;
                    }
                }
            }
            fn clear(&self) {
                self.0.$write().unwrap().clear()
            }
            fn len(&self) -> usize {
                self.0.$read().unwrap().len()
            }
            fn shrink(&self) -> Option<&'static str> {
                self.0.$write().unwrap().shrink_to_fit();
                Some("shrink_to_fit")
            }
        }
    };
}

locked_map!(RwMap, "RwLock<HashMap>", read, write);
locked_map!(MutexMap, "Mutex<HashMap>", lock, lock);

// --------------------------------------------------------------------------------------------
// Selection by environment

/// Short id of a map: `tiermap`, `papaya`, `dashmap`, `scc`, `scc-index`, `rwlock`, `mutex`.
pub fn short_id(name: &str) -> String {
    name.split('<').next().unwrap_or(name).to_ascii_lowercase()
}

/// `BENCH_MAPS=tiermap,dashmap` restricts the maps (short ids, see [`short_id`]); unset means
/// all.
pub fn map_selected(name: &str) -> bool {
    match std::env::var("BENCH_MAPS") {
        Ok(s) if !s.trim().is_empty() => s
            .split(',')
            .map(str::trim)
            .any(|w| w.eq_ignore_ascii_case(&short_id(name))),
        _ => true,
    }
}

/// `BENCH_THREADS=1,2` (default `1,2,4`).
pub fn thread_counts() -> Vec<usize> {
    match std::env::var("BENCH_THREADS") {
        Ok(s) if !s.trim().is_empty() => {
            s.split(',').filter_map(|t| t.trim().parse().ok()).collect()
        }
        _ => vec![1, 2, 4],
    }
}

/// `BENCH_WORKLOADS=LoadMostlyHits,Range` (exact names, case-insensitive); unset means all.
pub fn workload_selected(name: &str) -> bool {
    match std::env::var("BENCH_WORKLOADS") {
        Ok(s) if !s.trim().is_empty() => s
            .split(',')
            .map(str::trim)
            .any(|w| w.eq_ignore_ascii_case(name)),
        _ => true,
    }
}

/// Calls `$body` with `$M` bound to each selected map type, in a fixed order.
macro_rules! for_each_map {
    ($M:ident => $body:block) => {{
        {
            type $M = crate::common::Tier;
            if crate::common::map_selected(<$M as crate::common::BenchMap>::NAME) $body
        }
        {
            type $M = crate::common::Papaya;
            if crate::common::map_selected(<$M as crate::common::BenchMap>::NAME) $body
        }
        {
            type $M = crate::common::Dash;
            if crate::common::map_selected(<$M as crate::common::BenchMap>::NAME) $body
        }
        {
            type $M = crate::common::Scc;
            if crate::common::map_selected(<$M as crate::common::BenchMap>::NAME) $body
        }
        {
            type $M = crate::common::SccIndex;
            if crate::common::map_selected(<$M as crate::common::BenchMap>::NAME) $body
        }
        {
            type $M = crate::common::RwMap;
            if crate::common::map_selected(<$M as crate::common::BenchMap>::NAME) $body
        }
        {
            type $M = crate::common::MutexMap;
            if crate::common::map_selected(<$M as crate::common::BenchMap>::NAME) $body
        }
    }};
}
