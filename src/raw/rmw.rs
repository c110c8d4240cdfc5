//! Atomic read-modify-write: `update`, `update_or_insert_with` and `compute`.
//!
//! Each runs the user's closure outside every lock, on a value loaded under the caller's guard,
//! and publishes what it returns with one compare-and-swap on the entry's value pointer
//! ([`Entry::replace_exact`], or [`Entry::try_revive`] for a deleted entry). The CAS succeeds
//! only if the entry still holds the very value (or the deleted state) the closure saw, so the
//! write is atomic with respect to what the closure saw; if it fails, another write came in
//! between and the closure runs again on what the entry holds now. So a closure may run more
//! than once, and a read-modify-write of a present key never takes the lock (as a
//! `compare_exchange` does not).
//!
//! Pointer identity is a sound test of "unchanged": a value unlinked from an entry is retired
//! through the epoch, so its address cannot be reused while the caller's guard is pinned; and
//! an entry's inline slot holds its first value only (no later value is stored inline), so the
//! inline address never comes back either.
//!
//! A key that no tier holds is added only under the dirty lock, through the same
//! `locate`/`insert_fresh` pass as `insert`, with a value the closure computed before the lock
//! was taken. If that pass finds the key present (another thread inserted it meanwhile), it
//! hands the entry back, and the closure runs again, outside the lock, on its value. An entry
//! that turns out expunged is looked up again: its key, if present, lives in a newer entry of
//! the dirty tier (`lookup` finds it there without the lock).
//!
//! A panicking closure leaves the map unchanged: nothing is published before the closure
//! returns, and everything the operation holds at that point (the key, a value computed by an
//! earlier call, an unpublished allocation in a [`Pending`]) is dropped by unwinding, with no
//! lock held.

use std::borrow::Borrow;
use std::ptr;
use std::sync::atomic::Ordering::Relaxed;

use super::entry::{take_value, Entry, State};
use super::{Gen, Pending, Shard};
use crate::facade::Guard;
use crate::outcome::{Computed, Op};

/// What the locked pass of [`Shard::compute`] did.
enum Locked<'g, K, V> {
    /// Added the key (a fresh entry, or a deleted one revived) with this value.
    Inserted(&'g V),
    /// Found the key present: the closure looks at this entry's value, outside the lock.
    Present(&'g Entry<K, V>, &'g Gen),
}

/// The outcome of the closure's attempts on one entry.
enum Attempt<'g, V> {
    /// The operation is complete.
    Done(Computed<&'g V>),
    /// The entry was expunged: the key, if present, lives in a newer entry; look it up again.
    Expunged,
}

impl<K: Send + 'static, V: Send + 'static> Shard<K, V> {
    /// Replaces the value of a present key by `f(current)`, retrying on a concurrent change.
    /// Returns the new value, or `None` (without calling `f`) if the key is absent.
    pub(crate) fn update<'g, Q>(
        &self,
        hash: u64,
        key: &Q,
        mut f: impl FnMut(&V) -> V,
        guard: &'g Guard,
    ) -> Option<&'g V>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        loop {
            let (e, _) = self.lookup(hash, key, guard, true)?;
            let mut state = e.load();
            loop {
                state = match state {
                    State::Live(p) => {
                        // SAFETY: a live pointer loaded under `guard` stays allocated while it
                        // is pinned (values are retired through the epoch).
                        let cur = unsafe { &*p };
                        // Allocated only after `f` returned: a panic in `f` leaves nothing.
                        let new = Pending::new(f(cur), &self.cells);
                        #[cfg(not(tiermap_mutation = "rmw_blind_store"))]
                        let stored = e.replace_exact(p, new.0);
                        // Seeded bug for the loom models (never built otherwise): store the
                        // closure's result whatever the entry holds now (a lost update).
                        #[cfg(tiermap_mutation = "rmw_blind_store")]
                        let stored = e.try_store(new.0).map(|_| ()).map_err(|()| State::Expunged);
                        match stored {
                            Ok(()) => {
                                let new = new.publish();
                                // SAFETY: we unlinked `p` from `e` with our CAS, under `guard`;
                                // it is retired once, here.
                                unsafe { self.retire_value(e, p, guard) };
                                // SAFETY: published by our CAS under `guard`; if it is replaced
                                // or removed later it is retired through the epoch, so it
                                // outlives the guard.
                                return Some(unsafe { &*new });
                            }
                            // Changed since `f` looked: `new` is freed unpublished (its value
                            // dropped, outside every lock) and `f` runs again on what is there.
                            Err(now) => now,
                        }
                    }
                    // The key is absent (a deleted entry that is not expunged is the key's only
                    // entry: I2).
                    State::Deleted => return None,
                    // Deleted, then expunged by a migration since `lookup` returned it: a newer
                    // entry may hold the key now.
                    State::Expunged => break,
                }
            }
        }
    }

    /// Calls `f` with the current value (or `None`) and applies the operation it returns,
    /// atomically with respect to the value it saw; retries (calling `f` again) if the key
    /// changed in between.
    ///
    /// `f`'s second argument is the value of its previous call's `Op::Insert` when that was not
    /// stored (`None` on the first call and after an `Op::Remove`), so that a caller can reuse
    /// a value it cannot make twice.
    pub(crate) fn compute<'g>(
        &self,
        hash: u64,
        key: K,
        mut f: impl FnMut(Option<&V>, Option<V>) -> Op<V>,
        guard: &'g Guard,
    ) -> Computed<&'g V>
    where
        K: Eq,
    {
        // The key, until a fresh entry takes it.
        let mut key = Some(key);
        // The value of a failed `Op::Insert`, handed back at `f`'s next call.
        let mut back: Option<V> = None;
        self.prefetch_dirty(hash, guard);
        loop {
            let k = key.as_ref().expect("key kept until inserted");
            let (e, gen) = match self.lookup(hash, k, guard, true) {
                Some(found) => found,
                None => {
                    let mut value = match f(None, back.take()) {
                        Op::Keep | Op::Remove => return Computed::Absent,
                        Op::Insert(v) => Some(v),
                    };
                    match self.insert_locked(hash, &mut key, &mut value, guard) {
                        Locked::Inserted(v) => return Computed::Inserted(v),
                        Locked::Present(e, gen) => {
                            back = value;
                            (e, gen)
                        }
                    }
                }
            };
            match self.attempt(e, gen, hash, &mut f, &mut back, guard) {
                Attempt::Done(c) => return c,
                Attempt::Expunged => continue,
            }
        }
    }

    /// Runs `f` on the entry `e` (of generation `gen`, its key's mixed hash `hash`) until its
    /// operation is applied, or the entry turns out expunged.
    fn attempt<'g>(
        &self,
        e: &'g Entry<K, V>,
        gen: &'g Gen,
        hash: u64,
        f: &mut impl FnMut(Option<&V>, Option<V>) -> Op<V>,
        back: &mut Option<V>,
        guard: &'g Guard,
    ) -> Attempt<'g, V> {
        let mut state = e.load();
        loop {
            state = match state {
                State::Live(p) => {
                    // SAFETY: a live pointer loaded under `guard` stays allocated while it is
                    // pinned (values are retired through the epoch).
                    let cur = unsafe { &*p };
                    match f(Some(cur), back.take()) {
                        Op::Keep => return Attempt::Done(Computed::Unchanged(cur)),
                        Op::Insert(v) => {
                            let new = Pending::new(v, &self.cells);
                            match e.replace_exact(p, new.0) {
                                Ok(()) => {
                                    let new = new.publish();
                                    // SAFETY: we unlinked `p` from `e` with our CAS, under
                                    // `guard`; it is retired once, here.
                                    unsafe { self.retire_value(e, p, guard) };
                                    // SAFETY: published by our CAS under `guard`; values are
                                    // retired through the epoch, so it outlives the guard.
                                    let new = unsafe { &*new };
                                    return Attempt::Done(Computed::Updated { old: cur, new });
                                }
                                Err(now) => {
                                    // SAFETY: never published (the CAS failed): ours alone.
                                    *back = Some(unsafe { take_value(new.publish()) });
                                    now
                                }
                            }
                        }
                        Op::Remove => match e.replace_exact(p, ptr::null_mut()) {
                            Ok(()) => {
                                let old = self.after_remove(e, gen, p, hash, guard);
                                return Attempt::Done(Computed::Removed(old));
                            }
                            Err(now) => now,
                        },
                    }
                }
                State::Deleted => match f(None, back.take()) {
                    Op::Keep | Op::Remove => return Attempt::Done(Computed::Absent),
                    Op::Insert(v) => {
                        let new = Pending::new(v, &self.cells);
                        match e.try_revive(new.0) {
                            Ok(()) => {
                                let new = new.publish();
                                // Relaxed: a counter; see `Gen::live`.
                                gen.live.fetch_add(1, Relaxed);
                                // SAFETY: published by our CAS under `guard`; values are
                                // retired through the epoch, so it outlives the guard.
                                return Attempt::Done(Computed::Inserted(unsafe { &*new }));
                            }
                            Err(now) => {
                                // SAFETY: never published (the CAS failed): ours alone.
                                *back = Some(unsafe { take_value(new.publish()) });
                                now
                            }
                        }
                    }
                },
                State::Expunged => return Attempt::Expunged,
            };
        }
    }

    /// The locked pass of `compute` for a key the lock-free lookup saw absent: inserts the
    /// value in `value` (a fresh entry, or a deleted entry revived), or hands the entry back if
    /// the key is present now. Takes the key out of `key` only when a fresh entry takes it, and
    /// the value out of `value` only when it is stored. Runs no user closure, and drops no
    /// value, under the lock: the caller's frame owns both, so even when user code under the
    /// lock panics (the key's `Eq`, in `locate`), unwinding drops them after the lock is
    /// released.
    fn insert_locked<'g>(
        &self,
        hash: u64,
        key: &mut Option<K>,
        value: &mut Option<V>,
        guard: &'g Guard,
    ) -> Locked<'g, K, V>
    where
        K: Eq,
    {
        let stale = self.read(guard);
        self.with_lock(hash, guard, |this, st, guard| {
            let read = this.read_locked(stale, guard);
            let k = key.as_ref().expect("key kept until inserted");
            let place = this.locate(st, read, None, hash, k);
            // SAFETY: found while `guard` is pinned.
            let Some(e) = (unsafe { place.entry(guard) }) else {
                let k = key.take().expect("key kept until inserted");
                let v = value.take().expect("value kept until stored");
                let v = this.insert_fresh(st, hash, k, v, guard);
                // SAFETY: the value of the entry just published under `guard`; entries and
                // values are retired through the epoch, so it outlives the guard.
                return Locked::Inserted(unsafe { &*v });
            };
            match e.load() {
                State::Live(_) => Locked::Present(e, &read.gen),
                State::Deleted => {
                    let new =
                        Pending::new(value.take().expect("value kept until stored"), &self.cells);
                    match e.try_revive(new.0) {
                        Ok(()) => {
                            let new = new.publish();
                            // Relaxed: a counter; see `Gen::live`.
                            read.gen.live.fetch_add(1, Relaxed);
                            // SAFETY: published by our CAS under `guard`; values are retired
                            // through the epoch, so it outlives the guard.
                            Locked::Inserted(unsafe { &*new })
                        }
                        // Revived by a lock-free write meanwhile (only a migration, under the
                        // lock, expunges): the key is present.
                        Err(_) => {
                            // SAFETY: never published (the CAS failed): ours alone.
                            *value = Some(unsafe { take_value(new.publish()) });
                            Locked::Present(e, &read.gen)
                        }
                    }
                }
                State::Expunged => unreachable!("entry under lock is not expunged"),
            }
        })
    }

    /// Replaces the value of `key` by `f(current)` if present; else inserts `make()`. `make`
    /// runs at most once, and only after the key was seen absent; its value is kept while the
    /// key turns out present and offered again if it turns absent later, so no update is lost
    /// and nothing is made twice. Returns the value stored.
    pub(crate) fn update_or_insert_with<'g>(
        &self,
        hash: u64,
        key: K,
        mut f: impl FnMut(&V) -> V,
        make: impl FnOnce() -> V,
        guard: &'g Guard,
    ) -> &'g V
    where
        K: Eq,
    {
        let mut make = Some(make);
        let mut spare: Option<V> = None;
        // Whether the last value offered came from `make` (then a value handed back is it).
        let mut offered_spare = false;
        let done = self.compute(
            hash,
            key,
            |cur, back| {
                if offered_spare {
                    spare = back.or(spare.take());
                }
                // Else `back` is a stale `f(..)`, dropped here.
                match cur {
                    Some(v) => {
                        offered_spare = false;
                        Op::Insert(f(v))
                    }
                    None => {
                        offered_spare = true;
                        let v = match spare.take() {
                            Some(v) => v,
                            None => (make.take().expect("made at most once"))(),
                        };
                        Op::Insert(v)
                    }
                }
            },
            guard,
        );
        match done {
            Computed::Inserted(v) | Computed::Updated { new: v, .. } => v,
            Computed::Removed(_) | Computed::Unchanged(_) | Computed::Absent => {
                unreachable!("the closure always stores a value")
            }
        }
    }
}
