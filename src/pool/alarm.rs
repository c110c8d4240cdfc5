//! A [`MapPool`]'s retention alarm and hook: the policy ([`PoolRetentionPolicy`]), the alert
//! ([`PoolRetentionAlert`]), the installed alarm ([`PoolRetentionAlarm`], judged by the shared
//! [`Hysteresis`]), the return-path hook that runs it and the metrics publisher
//! ([`PoolHooks`]), and the `MapPool` methods that set them.

use std::fmt;
// The atomics come from the facade (loom's in model-checking builds); loom re-exports std's
// `Ordering`, so it is taken from std. No atomic here lives in a `static` (loom's cannot).
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::{MapPool, PoolStats, Recycle};
#[cfg(feature = "metrics")]
use crate::alarm::Publish;
use crate::alarm::{rearm_level, Callbacks, Check, Hysteresis, Reading, Sinks};
use crate::facade::{AtomicBool, AtomicUsize};
use crate::stats::Bytes;

/// Threshold for the memory a [`MapPool`] keeps in idle objects, checked by the alarm that
/// [`MapPool::set_retention_alarm`] installs.
///
/// The condition is [`PoolStats::retained_bytes`] above
/// [`max_retained_bytes`](Self::max_retained_bytes); it re-arms at
/// `threshold × (1 − hysteresis)` or below. A pool with its capacity ceiling in force never
/// holds more than `max_idle × ceiling × bytes per slot`; the alarm is for pools whose ceiling
/// is off or set too high, where one huge request leaves a huge object idle.
///
/// ```
/// let policy = tiermap::PoolRetentionPolicy::new().max_retained_bytes(8 << 20);
/// assert_eq!(policy.threshold(), Some(8 << 20));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PoolRetentionPolicy {
    max_retained_bytes: Option<usize>,
    hysteresis: f64,
}

impl Default for PoolRetentionPolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl PoolRetentionPolicy {
    /// A policy with no threshold (it never trips) and a hysteresis of 0.2.
    ///
    /// ```
    /// assert_eq!(tiermap::PoolRetentionPolicy::new().threshold(), None);
    /// ```
    pub const fn new() -> Self {
        PoolRetentionPolicy {
            max_retained_bytes: None,
            hysteresis: 0.2,
        }
    }

    /// Trips when the idle objects hold more than `bytes` ([`PoolStats::retained_bytes`]).
    ///
    /// ```
    /// let policy = tiermap::PoolRetentionPolicy::new().max_retained_bytes(1 << 20);
    /// assert_eq!(policy.threshold(), Some(1 << 20));
    /// ```
    #[must_use]
    pub const fn max_retained_bytes(mut self, bytes: usize) -> Self {
        self.max_retained_bytes = Some(bytes);
        self
    }

    /// As [`RetentionPolicy::hysteresis`](crate::RetentionPolicy::hysteresis): a tripped alarm
    /// re-arms at
    /// `threshold × (1 − fraction)` or below. Defaults to 0.2.
    ///
    /// # Panics
    ///
    /// If `fraction` is not within `0.0..1.0`.
    ///
    /// ```
    /// let policy = tiermap::PoolRetentionPolicy::new().max_retained_bytes(1000).hysteresis(0.5);
    /// assert_eq!(policy.rearm_level(), Some(500));
    /// ```
    #[must_use]
    pub fn hysteresis(mut self, fraction: f64) -> Self {
        assert!(
            (0.0..1.0).contains(&fraction),
            "hysteresis must be within 0..1, got {fraction}"
        );
        self.hysteresis = fraction;
        self
    }

    /// The threshold, if set.
    ///
    /// ```
    /// assert_eq!(tiermap::PoolRetentionPolicy::new().max_retained_bytes(7).threshold(), Some(7));
    /// ```
    pub fn threshold(&self) -> Option<usize> {
        self.max_retained_bytes
    }

    /// The retained bytes at or below which a tripped alarm re-arms, if a threshold is set.
    ///
    /// ```
    /// let policy = tiermap::PoolRetentionPolicy::new().max_retained_bytes(1000); // 0.2
    /// assert_eq!(policy.rearm_level(), Some(800));
    /// ```
    pub fn rearm_level(&self) -> Option<usize> {
        self.max_retained_bytes
            .map(|t| rearm_level(t as f64, self.hysteresis) as usize)
    }
}

/// What a pool's retention alarm reports: the retained bytes that crossed the threshold, and
/// the snapshot that showed them. Its `Display` is one log line.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use tiermap::pool::MapPool;
/// use tiermap::{PoolRetentionAlert, PoolRetentionPolicy};
///
/// let pool: MapPool<Vec<u64>> = MapPool::builder().capacity_ceiling(None).build();
/// let seen: Arc<Mutex<Vec<PoolRetentionAlert>>> = Arc::default();
/// let sink = seen.clone();
/// let policy = PoolRetentionPolicy::new().max_retained_bytes(1 << 20);
/// pool.set_retention_alarm(policy, move |alert| sink.lock().unwrap().push(*alert));
/// let mut huge = pool.get();
/// huge.extend(0..1_000_000u64); // 8 MB, kept idle: the ceiling is off
/// drop(huge);
/// let alert = seen.lock().unwrap()[0];
/// assert!(alert.retained_bytes >= 8_000_000);
/// assert_eq!(alert.threshold, 1 << 20);
/// println!("{alert}");
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct PoolRetentionAlert {
    /// [`PoolStats::retained_bytes`] of the snapshot.
    pub retained_bytes: usize,
    /// The threshold it crossed.
    pub threshold: usize,
    /// The snapshot that showed it.
    pub stats: PoolStats,
}

impl fmt::Display for PoolRetentionAlert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pool retention alarm: retained {} > {} ({})",
            Bytes(self.retained_bytes),
            Bytes(self.threshold),
            self.stats
        )
    }
}

/// The callback of a pool's retention alarm.
type PoolCallback = Box<dyn Fn(&PoolRetentionAlert) + Send + Sync>;

/// One installed pool alarm.
struct PoolAlarmState {
    policy: PoolRetentionPolicy,
    on_alarm: PoolCallback,
    /// The state of the one condition (retained bytes); the judge lock guards nothing else.
    condition: Hysteresis<(), 1>,
    callbacks: Callbacks,
}

impl PoolAlarmState {
    /// A new alarm, armed.
    fn new(policy: PoolRetentionPolicy, on_alarm: PoolCallback) -> Self {
        PoolAlarmState {
            policy,
            on_alarm,
            condition: Hysteresis::new(policy.hysteresis, ()),
            callbacks: Callbacks::default(),
        }
    }
}

impl Check<PoolStats> for PoolAlarmState {
    /// As the map's alarm: takes a snapshot and judges it under the judge lock (see
    /// [`Hysteresis::check`]), then runs the callback (after releasing it) if this snapshot is
    /// the crossing. Returns the snapshot.
    fn check(&self, snapshot: &dyn Fn() -> PoolStats) -> PoolStats {
        let Some(threshold) = self.policy.max_retained_bytes else {
            return snapshot();
        };
        let (stats, crossed) = self.condition.check(snapshot, |_, stats: &PoolStats, ()| {
            Some(Reading::new(stats.retained_bytes as f64, threshold as f64))
        });
        if crossed[0].is_some() {
            let alert = PoolRetentionAlert {
                retained_bytes: stats.retained_bytes,
                threshold,
                stats,
            };
            self.callbacks.run(|| (self.on_alarm)(&alert));
        }
        stats
    }
}

/// A handle to a pool's retention alarm (from [`MapPool::set_retention_alarm`]).
///
/// ```
/// use tiermap::pool::MapPool;
///
/// let pool: MapPool<Vec<u8>> = MapPool::new();
/// let alarm = pool.set_retention_alarm(
///     tiermap::PoolRetentionPolicy::new().max_retained_bytes(1 << 30),
///     |_| {},
/// );
/// drop(pool.get());
/// assert_eq!((alarm.fired(), alarm.panics()), (0, 0));
/// assert!(!alarm.is_tripped());
/// ```
#[derive(Clone)]
pub struct PoolRetentionAlarm(Arc<PoolAlarmState>);

impl PoolRetentionAlarm {
    /// The policy this alarm checks.
    ///
    /// ```
    /// let pool: tiermap::pool::MapPool<Vec<u8>> = tiermap::pool::MapPool::new();
    /// let policy = tiermap::PoolRetentionPolicy::new().max_retained_bytes(1);
    /// assert_eq!(pool.set_retention_alarm(policy, |_| {}).policy(), &policy);
    /// ```
    pub fn policy(&self) -> &PoolRetentionPolicy {
        &self.0.policy
    }

    /// How many times the callback was called (once per crossing).
    ///
    /// ```
    /// let pool: tiermap::pool::MapPool<Vec<u8>> = tiermap::pool::MapPool::new();
    /// let alarm = pool.set_retention_alarm(tiermap::PoolRetentionPolicy::new(), |_| {});
    /// assert_eq!(alarm.fired(), 0);
    /// ```
    pub fn fired(&self) -> u64 {
        self.0.callbacks.fired()
    }

    /// How many calls of the callback panicked (caught and counted, as for maps; see
    /// [`SyncMap::set_retention_alarm`](crate::SyncMap::set_retention_alarm)).
    ///
    /// ```
    /// let pool: tiermap::pool::MapPool<Vec<u8>> = tiermap::pool::MapPool::new();
    /// let alarm = pool.set_retention_alarm(tiermap::PoolRetentionPolicy::new(), |_| {});
    /// assert_eq!(alarm.panics(), 0);
    /// ```
    pub fn panics(&self) -> u64 {
        self.0.callbacks.panics()
    }

    /// Whether the alarm is tripped (crossed and not yet back at the re-arm level).
    ///
    /// ```
    /// let pool: tiermap::pool::MapPool<Vec<u8>> = tiermap::pool::MapPool::new();
    /// let alarm = pool.set_retention_alarm(tiermap::PoolRetentionPolicy::new(), |_| {});
    /// assert!(!alarm.is_tripped());
    /// ```
    pub fn is_tripped(&self) -> bool {
        self.0.condition.is_tripped(0)
    }
}

impl fmt::Debug for PoolRetentionAlarm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolRetentionAlarm")
            .field("policy", &self.0.policy)
            .field("tripped", &self.is_tripped())
            .field("fired", &self.fired())
            .field("panics", &self.panics())
            .finish()
    }
}

/// Returns to one pool between two checks of its sinks (a power of two, so the check period
/// survives the return counter wrapping around).
const POOL_CHECK_EVERY: usize = 64;

/// A pool's hook: the alarm and the metrics publisher, checked on the return path.
///
/// A return checks (takes a [`PoolStats`] snapshot, which sums the shards' counters) on every
/// 64th return to this pool while a sink is set, whichever threads make them, and at once when
/// it kept an object of at least a sixteenth of the alarm's threshold (so one huge object is seen
/// on its way in). With no sink set, a return pays one relaxed load; with one, two relaxed loads
/// and a relaxed increment of the pool's return counter.
///
/// The counter is per pool. (It was per thread, shared by all pools: a thread alternating
/// returns between two pools gave each only odd or only even counts, so one of them was never
/// checked.)
#[derive(Default)]
pub(crate) struct PoolHooks {
    /// Whether any sink is set.
    active: AtomicBool,
    /// A kept object of at least this many bytes is checked at once (0 while unset: never).
    big: AtomicUsize,
    /// Returns to this pool made while a sink was set (wrapping); every `POOL_CHECK_EVERY`th
    /// one checks. Untouched while no sink is set.
    returns: AtomicUsize,
    /// The alarm and the metrics publisher.
    sinks: Sinks<PoolAlarmState, PoolPublisher>,
}

/// The metrics publisher of a pool.
#[cfg(feature = "metrics")]
type PoolPublisher = super::metrics::PoolPublisher;
#[cfg(not(feature = "metrics"))]
type PoolPublisher = crate::alarm::NoPublisher;

impl fmt::Debug for PoolHooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolHooks")
            // Relaxed: diagnostic output only.
            .field("active", &self.active.load(Relaxed))
            .finish_non_exhaustive()
    }
}

impl PoolHooks {
    /// Called after every return, outside every lock of the pool: `kept_bytes` are the bytes of
    /// the object kept idle (0 if it was dropped).
    #[inline]
    pub(crate) fn after_return(&self, kept_bytes: usize, stats: impl Fn() -> PoolStats) {
        // Relaxed: a hint; a sink set concurrently is seen at a later return.
        if !self.active.load(Relaxed) {
            return;
        }
        // Relaxed: a hint as `active`; a stale value moves one check, never skips the periodic
        // ones.
        let big = self.big.load(Relaxed);
        // Relaxed: the counter only schedules checks and publishes nothing; the read-modify-write
        // alone gives each return its own count, so one return in `POOL_CHECK_EVERY` checks.
        let nth = self.returns.fetch_add(1, Relaxed).wrapping_add(1);
        if (big > 0 && kept_bytes >= big) || nth % POOL_CHECK_EVERY == 0 {
            self.sinks.notify(&stats);
        }
    }

    /// The smallest object (in heap bytes) that the return path must keep in the shared stripes
    /// rather than in a per-thread cache: with a sink set, the at-once threshold (so that
    /// `MapPool::clear`, from any thread, reaches the big objects that trip the alarm), else
    /// none (`usize::MAX`).
    #[inline]
    pub(crate) fn cache_limit(&self) -> usize {
        // Relaxed: hints, as in `after_return`.
        if !self.active.load(Relaxed) {
            return usize::MAX;
        }
        match self.big.load(Relaxed) {
            0 => usize::MAX,
            big => big,
        }
    }

    /// Runs the sinks now if any is set (after `clear`, and on installation).
    pub(crate) fn check_now(&self, stats: impl Fn() -> PoolStats) {
        // Relaxed: as in `after_return`; the sinks themselves are read through `ArcSwapOption`,
        // which orders their contents.
        if self.active.load(Relaxed) {
            self.sinks.notify(&stats);
        }
    }

    /// Changes the sinks with `change`, then updates the hints `active` and `big` to match.
    fn update<R>(&self, change: impl FnOnce(&Sinks<PoolAlarmState, PoolPublisher>) -> R) -> R {
        self.sinks.update(change, |sinks, _, active| {
            let big = sinks
                .alarm
                .load()
                .as_ref()
                .and_then(|a| a.policy.max_retained_bytes)
                .map_or(0, |t| (t / 16).max(1));
            // Relaxed: both are hints read with relaxed loads (see `after_return`); the sinks'
            // configuration lock orders the writers, and the sinks are published by
            // `ArcSwapOption` itself.
            self.big.store(big, Relaxed);
            self.active.store(active, Relaxed);
        })
    }
}

impl<T: Recycle> MapPool<T> {
    /// Installs a retention alarm on the pool: `on_alarm` runs once each time the idle objects'
    /// [`PoolStats::retained_bytes`] cross the policy's threshold, and the alarm re-arms once
    /// they fall back to the re-arm level. Replaces any alarm set before; checks once before
    /// returning.
    ///
    /// **When it is checked.** After returns (a guard dropped, or [`MapPool::put`]), outside
    /// every lock of the pool: on every 64th return to this pool (counting the returns of all
    /// threads together), at once after a return that kept an object of at least a sixteenth of
    /// the threshold, and after [`MapPool::clear`]. `get` never checks.
    ///
    /// **Cost.** With no alarm and no metrics publisher, one relaxed load per return. With
    /// one, two relaxed loads and a relaxed increment of the pool's return counter per return
    /// (one counter shared by all threads), and every 64 returns a check that sums the shards'
    /// counters (a few atomic loads per shard), plus one check per big object kept.
    ///
    /// **Big objects are kept where `clear` reaches them.** While an alarm is set, a return that
    /// keeps an object of at least a sixteenth of the threshold stores it in the shared stripes,
    /// never in the returning thread's cache (see [per-thread
    /// caches](crate::pool#per-thread-caches)), so that [`MapPool::clear`] from any thread drops
    /// it.
    ///
    /// **The callback** runs on the returning thread, may use the pool (and `get` or `put`
    /// objects), and if it panics the panic is caught and counted
    /// ([`PoolRetentionAlarm::panics`]), as for maps; the return completes normally.
    ///
    /// ```
    /// use tiermap::pool::MapPool;
    /// use tiermap::PoolRetentionPolicy;
    ///
    /// // Mis-configured: no ceiling, so a huge request leaves a huge map idle.
    /// let pool: MapPool<std::collections::HashMap<u64, u64>> =
    ///     MapPool::builder().capacity_ceiling(None).build();
    /// let alarm = pool.set_retention_alarm(
    ///     PoolRetentionPolicy::new().max_retained_bytes(4 << 20),
    ///     |alert| eprintln!("{alert}"),
    /// );
    /// let mut map = pool.get();
    /// map.extend((0..1_000_000).map(|k| (k, k)));
    /// drop(map);
    /// assert_eq!(alarm.fired(), 1);
    /// pool.clear(); // the huge map is dropped; the alarm re-arms
    /// assert!(!alarm.is_tripped());
    /// ```
    pub fn set_retention_alarm(
        &self,
        policy: PoolRetentionPolicy,
        on_alarm: impl Fn(&PoolRetentionAlert) + Send + Sync + 'static,
    ) -> PoolRetentionAlarm {
        let state = Arc::new(PoolAlarmState::new(policy, Box::new(on_alarm)));
        self.hook
            .update(|h| h.alarm.store(Some(Arc::clone(&state))));
        state.check(&|| self.stats());
        PoolRetentionAlarm(state)
    }

    /// Removes the pool's retention alarm, returning its handle if one was set.
    ///
    /// ```
    /// let pool: tiermap::pool::MapPool<Vec<u8>> = tiermap::pool::MapPool::new();
    /// pool.set_retention_alarm(tiermap::PoolRetentionPolicy::new(), |_| {});
    /// assert!(pool.clear_retention_alarm().is_some());
    /// assert!(pool.clear_retention_alarm().is_none());
    /// ```
    pub fn clear_retention_alarm(&self) -> Option<PoolRetentionAlarm> {
        self.hook
            .update(|h| h.alarm.swap(None).map(PoolRetentionAlarm))
    }

    /// Publishes the pool's statistics through the [`metrics`](https://docs.rs/metrics) facade,
    /// labelled `pool="<name>"` (feature `metrics`); composes with the pool's alarm.
    ///
    /// | metric                               | kind    | from                            |
    /// |--------------------------------------|---------|---------------------------------|
    /// | `tiermap_pool_idle`                  | gauge   | [`PoolStats::idle`]             |
    /// | `tiermap_pool_retained_bytes`        | gauge   | [`PoolStats::retained_bytes`]   |
    /// | `tiermap_pool_gets_total`            | counter | [`PoolStats::gets`]             |
    /// | `tiermap_pool_hits_total`            | counter | [`PoolStats::hits`]             |
    /// | `tiermap_pool_misses_total`          | counter | [`PoolStats::misses`]           |
    /// | `tiermap_pool_returns_shrunk_total`  | counter | [`PoolStats::returns_shrunk`]   |
    /// | `tiermap_pool_returns_dropped_total` | counter | [`PoolStats::returns_dropped`]  |
    ///
    /// Published once before returning (calling again publishes on demand), then when the
    /// pool's hook checks (see [`MapPool::set_retention_alarm`]). Install the recorder first.
    ///
    /// ```
    /// let pool: tiermap::pool::MapPool<Vec<u8>> = tiermap::pool::MapPool::new();
    /// pool.publish_metrics("buffers");
    /// drop(pool.get());
    /// ```
    #[cfg(feature = "metrics")]
    pub fn publish_metrics(&self, name: impl Into<String>) {
        let publisher = Arc::new(PoolPublisher::new(name.into()));
        self.hook
            .update(|h| h.metrics.store(Some(Arc::clone(&publisher))));
        publisher.publish(&self.stats());
    }

    /// Stops publishing the pool's metrics (feature `metrics`); whether a publisher was set.
    ///
    /// ```
    /// let pool: tiermap::pool::MapPool<Vec<u8>> = tiermap::pool::MapPool::new();
    /// pool.publish_metrics("buffers");
    /// assert!(pool.unpublish_metrics());
    /// ```
    #[cfg(feature = "metrics")]
    pub fn unpublish_metrics(&self) -> bool {
        self.hook.update(|h| h.metrics.swap(None).is_some())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// A pool hook with an alarm (threshold 1 MiB, so small returns never take the big-object
    /// path) whose callback is never reached: the tests count snapshots, i.e. checks.
    fn watched_pool_hooks() -> PoolHooks {
        let hooks = PoolHooks::default();
        let state = Arc::new(PoolAlarmState::new(
            PoolRetentionPolicy::new().max_retained_bytes(1 << 20),
            Box::new(|_| {}),
        ));
        hooks.update(|h| h.alarm.store(Some(state)));
        hooks
    }

    /// Regression (issue 12): the periodic pool check counted returns per thread across all
    /// pools, so a thread alternating returns between two pools gave one of them only odd
    /// counts and it was never checked. Each pool must be checked on every 64th return to it,
    /// whatever other pools the thread returns to in between.
    #[test]
    fn pool_check_counts_returns_per_pool() {
        let pools = [watched_pool_hooks(), watched_pool_hooks()];
        let checks = [Cell::new(0usize), Cell::new(0usize)];
        let returns_each = 4 * POOL_CHECK_EVERY;
        for _ in 0..returns_each {
            for (hooks, checks) in pools.iter().zip(&checks) {
                // Kept bytes of 1: far below the big-object trigger (1 MiB / 16).
                hooks.after_return(1, || {
                    checks.set(checks.get() + 1);
                    PoolStats::default()
                });
            }
        }
        let expected = returns_each / POOL_CHECK_EVERY;
        assert_eq!(
            [checks[0].get(), checks[1].get()],
            [expected, expected],
            "each pool is checked every {POOL_CHECK_EVERY} returns to it"
        );
    }

    /// A pool with no sink set neither counts its returns nor checks (the no-alarm fast path
    /// is one load), even for an object as big as can be.
    #[test]
    fn unwatched_pool_neither_counts_nor_checks() {
        let hooks = PoolHooks::default();
        for _ in 0..2 * POOL_CHECK_EVERY {
            hooks.after_return(usize::MAX, || panic!("an unwatched pool took a snapshot"));
        }
        // Relaxed: one thread wrote and reads it.
        assert_eq!(hooks.returns.load(Relaxed), 0);
    }
}
