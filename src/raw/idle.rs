//! The idle watch: the background reclaimer promotes the dirty tier of a shard that no
//! operation has locked for a while, so that a map left alone after its writes gives back its
//! older table without waiting for the misses that would promote it (which, in a map nobody
//! reads, never come).
//!
//! Go's `sync.Map` promotes only after as many misses as the dirty map has keys; a map filled
//! and then left idle (or read only through keys its read tier already holds) keeps both
//! tables for good. Here, a shard whose dirty tier exists, whose read table holds at least
//! [`IDLE_MIN_BYTES`], and whose lock no operation of the map's took for [`IDLE_AFTER`], has its
//! migration finished and its dirty tier promoted by the background reclaimer's thread, in
//! steps of [`IDLE_CHUNK`] work units, each under a `try_lock` (the thread never waits for a
//! shard's lock, and a shard written to again is left alone until it is quiet again). The
//! retired read tier then goes the way of every retired tier (the graveyard, after its grace
//! period), and the reclaimer returns the freed pages to the operating system.
//!
//! What it costs: a shard promoted while idle starts a new migration at its next new key (one
//! copy of the shard, spread over the following slow operations, as after any promotion), so
//! a shard pays at most one extra copy per quiet period; a shard written to again soon after
//! the watch promoted it has its period doubled (see [`SOON`]), so that a map written in
//! batches every few seconds is not copied after every batch. Reads never see a difference: a
//! promotion by the watch is the promotion a miss would have made.
//!
//! The map registers its watch (`IdleWatch::arm`) when an operation observes a shard with a
//! dirty tier and a read table of [`IDLE_MIN_BYTES`] or more (every migration start is
//! observed); the reclaimer looks at each watched map every `IDLE_TICK` (100 ms), and drops it
//! from its list once no such shard is left. The map's exclusive paths (`drop`, `drain`, the
//! pool's reset) detach the watch first (`IdleWatch::detach`). Loom builds never start the
//! reclaimer; the models call `Shard::idle_step` themselves (`SyncMap::loom_idle_steps`).

use std::marker::PhantomData;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::background::{self, Idle};
use super::sharded::array_slice;
use super::Shard;
use crate::facade::Guard;

/// How long a shard's lock must have been left alone before the watch promotes it.
pub(crate) const IDLE_AFTER: Duration = Duration::from_secs(1);

/// Read tables smaller than this are not worth a promotion of their own (the watch exists to
/// give memory back; a small table's promotion would cost a copy to save a few pages).
pub(crate) const IDLE_MIN_BYTES: usize = 64 << 10;

/// Migration work units (see `Shard::migration_work`) per locked step of the watch: about a
/// tenth of a millisecond under the lock, so a writer that comes back waits no longer.
pub(crate) const IDLE_CHUNK: usize = 4096;

/// The most times the watch doubles the quiet period it asks of one shard (`IDLE_AFTER` up to
/// 64 s): see [`SOON`].
const MAX_BACKOFF: u32 = 6;

/// A shard written to again within this many of its quiet periods after the watch promoted it
/// has its quiet period doubled (up to [`MAX_BACKOFF`] times); one written to later has it
/// halved. A map that gets a batch of writes every few seconds is then promoted by the watch
/// a few times, not after every batch (each promotion costs the shard a copy at its next new
/// key), while one written to rarely keeps the one-second period.
const SOON: u32 = 4;

/// Time one look at a map may spend finishing migrations (each shard that needs one still gets
/// one [`IDLE_CHUNK`] per look): the longest a `drop` of the map waits for a look in progress,
/// about.
const STEP_TIME: Duration = Duration::from_millis(2);

/// When a shard is worth promoting by the watch: quiet for `quiet`, with a read tier of
/// `min_bytes` at least.
#[derive(Clone, Copy)]
pub(crate) struct Rule {
    pub(crate) quiet: Duration,
    pub(crate) min_bytes: usize,
}

/// The background reclaimer's rule.
pub(crate) const RULE: Rule = Rule {
    quiet: IDLE_AFTER,
    min_bytes: IDLE_MIN_BYTES,
};

/// What the watch remembers of a shard between its looks (under the shard's lock, in
/// `LockedState`).
#[derive(Default)]
pub(crate) struct WatchState {
    /// `LockedState::locked_ops` at the last look, and when the watch first saw that value.
    mark: u32,
    since: Option<Instant>,
    /// When the watch last promoted the shard (until the next write is seen), and how many
    /// times it doubled the quiet period it asks of it (see [`SOON`]).
    promoted_at: Option<Instant>,
    backoff: u32,
}

/// What one look of the watch found in a shard.
pub(crate) enum Look<K, V> {
    /// No dirty tier (or one not worth promoting): nothing to watch.
    Settled,
    /// A dirty tier the watch keeps looking at: written to lately, its lock busy, or its
    /// migration being finished.
    Watching,
    /// The shard was split: its keys are in the shards of this (tagged) array.
    Split(*mut Shard<K, V>),
}

/// A map's handle for the background reclaimer's idle watch (see the module docs). Shared with
/// the reclaimer's list through a `Weak`, so the list never keeps it alive, and the map clears
/// its pointer before anything else uses the shards exclusively, or frees them.
pub(crate) struct IdleWatch<K, V> {
    /// The map's current shard array (tagged, as `RawMap::root`); null while the map is used
    /// with exclusive access or being dropped. The watch holds the lock for as long as it
    /// works on the shards, so that `detach` returns only once no step runs.
    shards: std::sync::Mutex<ArrayPtr<K, V>>,
    /// The watch is on the reclaimer's list.
    registered: AtomicBool,
    /// The watch was ever put on the list (never cleared): until then the reclaimer's thread
    /// has never seen it, and `detach` and `attach` need not take the mutex (pooled per-request
    /// maps, too small to be watched, pay no lock for it in their resets).
    ever_listed: AtomicBool,
    _owns: PhantomData<*mut (K, V)>,
}

/// A shard array's tagged pointer, as the watch keeps it.
struct ArrayPtr<K, V>(*mut Shard<K, V>);

// SAFETY: the watch only hands the shard array to the reclaimer's thread as `&Shard`, under its
// mutex, while the map guarantees that the array is alive and not used exclusively (`detach`);
// what that thread does with a shard (finish a migration, promote, retire the old tier through
// the graveyard) reads no key or value, and drops them only as the graveyard does on any thread
// (`K, V: Send`).
unsafe impl<K: Send, V: Send> Send for IdleWatch<K, V> {}
// SAFETY: as above; every field is behind the mutex or atomic.
unsafe impl<K: Send, V: Send> Sync for IdleWatch<K, V> {}

impl<K, V> IdleWatch<K, V> {
    /// A watch on the (tagged) shard array `shards`, not yet on the reclaimer's list.
    pub(crate) fn new(shards: *mut Shard<K, V>) -> Arc<Self> {
        Arc::new(IdleWatch {
            shards: std::sync::Mutex::new(ArrayPtr(shards)),
            registered: AtomicBool::new(false),
            ever_listed: AtomicBool::new(false),
            _owns: PhantomData,
        })
    }

    /// White-box tests that step the watch themselves, as the reclaimer's thread does once
    /// `arm` listed it: marks it as listed, so that `detach` waits for their looks.
    #[cfg(test)]
    pub(crate) fn mark_listed(&self) {
        // Relaxed: as in `arm` (the test's later `drop` of the map is on this thread).
        self.ever_listed.store(true, Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ArrayPtr<K, V>> {
        // Nothing panics with the lock held but a key's or value's `Drop`, run by a step's
        // graveyard service after the pointer was last written: the pointer is consistent.
        self.shards.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the shard array away from the watch: when this returns, no step of the watch
    /// runs, and none will until `attach`. Before any exclusive use of the shards (`&mut` of
    /// the map).
    pub(crate) fn detach(&self) {
        // Relaxed: `arm` runs in an operation through `&self`, which happens-before the
        // caller's `&mut` (whatever gave it exclusive access synchronized with every earlier
        // user); if no `arm` ever listed the watch, the thread has never seen it and cannot
        // step it during the exclusive use (only `arm` lists it, and it needs `&self`).
        if self.ever_listed.load(Relaxed) {
            self.lock().0 = std::ptr::null_mut();
        }
    }

    /// Gives the watch the (tagged) shard array `shards` again, after an exclusive use.
    pub(crate) fn attach(&self, shards: *mut Shard<K, V>) {
        // Relaxed: as in `detach` (the same thread, still with exclusive access).
        if self.ever_listed.load(Relaxed) {
            self.lock().0 = shards;
        }
    }
}

impl<K: Send + 'static, V: Send + 'static> IdleWatch<K, V> {
    /// Puts the watch on the background reclaimer's list, if it is not there and the reclaimer
    /// is enabled. Called when an operation observes a shard with a dirty tier.
    pub(crate) fn arm(self: &Arc<Self>) {
        // SeqCst: one total order of the flag's changes with `step`'s clear and re-check.
        if !background::enabled() || self.registered.load(SeqCst) {
            return;
        }
        if !self.registered.swap(true, SeqCst) {
            // Relaxed: read with exclusive access only (see `detach`), which this operation
            // happens-before.
            self.ever_listed.store(true, Relaxed);
            let weak: Weak<dyn Idle> = Arc::downgrade(&(self.clone() as Arc<dyn Idle>));
            background::watch(weak);
        }
    }
}

impl<K: Send + 'static, V: Send + 'static> Idle for IdleWatch<K, V> {
    fn step(&self, guard: &Guard) -> bool {
        self.step_with(guard, RULE)
    }
}

impl<K: Send + 'static, V: Send + 'static> IdleWatch<K, V> {
    /// One look at every shard with `rule` (`Idle::step` with the reclaimer's rule); whether
    /// to keep the watch listed.
    pub(crate) fn step_with(&self, guard: &Guard, rule: Rule) -> bool {
        let mut at = self.lock();
        if at.0.is_null() {
            // The map is gone or used exclusively: off the list (`arm` lists it again).
            self.registered.store(false, SeqCst);
            return false;
        }
        let now = Instant::now();
        let until = now + STEP_TIME;
        let mut watching = false;
        let mut i = 0;
        while i < array_slice::<K, V>(at.0).len() {
            let shards = array_slice::<K, V>(at.0);
            match shards[i].idle_step(guard, rule, now, until) {
                Look::Settled => i += 1,
                Look::Watching => {
                    watching = true;
                    i += 1;
                }
                Look::Split(next) => {
                    // The one shard of a map built small was split: watch the new array (the
                    // old one, like it, lives as long as the map).
                    at.0 = next;
                    watching = false;
                    i = 0;
                }
            }
        }
        if !watching {
            // Off the list, unless a shard got a dirty tier since its look (see
            // `has_dirty_tier` for the window this leaves, and what closes it).
            self.registered.store(false, SeqCst);
            let shards = array_slice::<K, V>(at.0);
            if shards.iter().any(|s| s.worth_watching(guard)) && !self.registered.swap(true, SeqCst)
            {
                watching = true;
            }
        }
        watching
    }
}

impl<K: Send + 'static, V: Send + 'static> Shard<K, V> {
    /// One look of the idle watch at this shard at time `now` (see the module docs): if no
    /// operation ended under its lock since the last look, `rule.quiet` ago at least, and its
    /// read tier holds `rule.min_bytes` or more, finishes its migration in steps of
    /// [`IDLE_CHUNK`] units (one step, then more until `until`) and promotes its dirty tier.
    /// Never waits for the lock. A first look only starts the quiet period, even with
    /// `rule.quiet` zero.
    pub(crate) fn idle_step(
        &self,
        guard: &Guard,
        rule: Rule,
        now: Instant,
        until: Instant,
    ) -> Look<K, V> {
        let Some(mut st) = crate::facade::try_lock(&self.dirty) else {
            return Look::Watching;
        };
        if st.frozen {
            return Look::Split(st.successors);
        }
        if st.tier.is_none() || self.read(guard).bytes() < rule.min_bytes {
            st.watch.since = None;
            return Look::Settled;
        }
        // The quiet period this shard is asked for (see `SOON`).
        let period = rule.quiet * (1 << st.watch.backoff);
        match st.watch.since {
            Some(since) if st.watch.mark == st.locked_ops => {
                if now.saturating_duration_since(since) < period {
                    return Look::Watching;
                }
            }
            _ => {
                // Written to since the last look (or never looked at): quiet from now on. If
                // the watch promoted this shard, adjust the period it asks (see `SOON`).
                if let Some(at) = st.watch.promoted_at.take() {
                    st.watch.backoff = if now.saturating_duration_since(at) < period * SOON {
                        (st.watch.backoff + 1).min(MAX_BACKOFF)
                    } else {
                        st.watch.backoff.saturating_sub(1)
                    };
                }
                st.watch.mark = st.locked_ops;
                st.watch.since = Some(now);
                return Look::Watching;
            }
        }
        loop {
            let read = self.read(guard);
            // Deliberately wrong for the unit test `idle_watch_finishes_the_migration_and_promotes`
            // (promotes a dirty tier that lacks the read tier's keys past the cursor); never
            // built otherwise.
            #[cfg(tiermap_mutation = "idle_skips_migration")]
            {
                st.cursor = read.table.capacity();
            }
            if st.cursor < read.table.capacity() {
                self.migrate(&mut st, IDLE_CHUNK, guard);
            }
            let done = st.cursor >= read.table.capacity();
            if done {
                self.promote(&mut st, guard);
                st.watch.promoted_at = Some(now);
                // The reclaimer returns the old table's pages to the operating system once
                // the graveyard has freed it (`Reclaim::shrank`). Relaxed: a hint for that
                // trim; nothing is published through it.
                self.shared.idle_release.store(true, Relaxed);
            }
            let retired = std::mem::take(&mut st.retired);
            let budget = st.budget;
            drop(st);
            if retired {
                // Starts the grace period of the old read tier (the observer runs at the
                // map's next operation: its statistics changed).
                self.after_unlock(budget, true, guard);
            }
            if done {
                return Look::Settled;
            }
            if Instant::now() >= until {
                return Look::Watching;
            }
            match crate::facade::try_lock(&self.dirty) {
                // Still quiet, and still this migration: go on.
                Some(again)
                    if again.locked_ops == again.watch.mark
                        && again.tier.is_some()
                        && !again.frozen =>
                {
                    st = again
                }
                _ => return Look::Watching,
            }
        }
    }

    /// Whether the idle watch has something to do here: a dirty tier, and a read tier worth
    /// giving back ([`IDLE_MIN_BYTES`]). A hint, read without the lock; small maps (pooled
    /// per-request maps, say) never list their watch.
    pub(crate) fn worth_watching(&self, guard: &Guard) -> bool {
        self.has_dirty_tier() && self.read(guard).bytes() >= IDLE_MIN_BYTES
    }

    /// Whether the shard has a dirty tier now (a hint: read without the lock).
    pub(crate) fn has_dirty_tier(&self) -> bool {
        // Relaxed: a hint. The watch's re-check after clearing its flag (`IdleWatch::step`) may
        // miss a dirty tier created at that moment, by an operation that also found the flag
        // still set; then the shard's next observation (every `OBSERVE_EVERY` slow operations)
        // lists the watch again, and until then the shard keeps both tiers as it would without
        // a watch.
        !self
            .dirty_view
            .load(std::sync::atomic::Ordering::Relaxed)
            .is_null()
    }
}
