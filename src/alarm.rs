//! The retention alarm ([`RetentionPolicy`], [`RetentionAlarm`]) and the `metrics` export, both
//! fed by the map's one observer hook through a small fan-out ([`Hooks`]); and the same two for
//! [`MapPool`] ([`PoolRetentionPolicy`], [`PoolHooks`]).
//!
//! # Where the checks run
//!
//! The engine calls its observer, which takes a fresh [`MapStats`], every 64 slow-path (locked)
//! operations, after every promotion and after every `clear`, on the thread that did the
//! operation, after it released the dirty lock. A read hit never looks at the hook, and neither do
//! lock-free overwrites and deletes of keys in the read tier; so a condition is noticed at the
//! next slow-path operation, which the map's own compaction triggers as soon as deleted entries
//! pile up. This module adds nothing to any other path.
//!
//! # State machine of one condition
//!
//! | state   | snapshot says                            | next state | effect             |
//! |---------|------------------------------------------|------------|--------------------|
//! | armed   | value > threshold                        | tripped    | the callback runs  |
//! | armed   | value <= threshold                       | armed      | —                  |
//! | tripped | value > threshold × (1 − hysteresis)     | tripped    | —                  |
//! | tripped | value <= threshold × (1 − hysteresis)    | armed      | —                  |
//!
//! For [`RetentionCondition::RetiredBytes`], the value that trips is the smallest of the last
//! `retired_window` snapshots (a promotion leaves a table pending for a check or two), while
//! the value that re-arms is the latest one.
//!
//! Each alarm takes its snapshot and judges it under a mutex of its own, so checks running on
//! several threads judge their snapshots one at a time and in the order they were taken. (Taking
//! the snapshot first and judging it later let a snapshot from before a crossing, judged after
//! another thread had fired for that crossing, re-arm the alarm: the same crossing then fired
//! twice.) The callback runs after that mutex is released, so it may call the map. Cost: a check
//! that finds another in progress waits for its snapshot (a `stats()` call, which takes the
//! dirty lock briefly) and judgement, never for a callback; checks run once per 64 slow
//! operations, so they rarely meet.
//!
//! # Pools
//!
//! A [`MapPool`] has no engine hook; its return path calls [`PoolHooks::after_return`], which
//! checks every 64th return to the pool and at once for a big object (see there). The single
//! condition, retained bytes, follows the same state machine.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
// The atomics come from the facade (loom's in model-checking builds); loom re-exports std's
// `Ordering`, so it is taken from std. No atomic here lives in a `static` (loom's cannot).
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwapOption;

use crate::facade::{AtomicBool, AtomicU64, AtomicUsize};
use crate::pool::{MapPool, PoolStats, Recycle};
use crate::raw::{Observer, Snapshot};
use crate::stats::{Bytes, MapStats};

/// One measurable way a map can hold more memory than its live entries need.
///
/// Each condition is a number computed from a [`MapStats`] snapshot (see
/// [`RetentionCondition::measure`]) and compared with the threshold a [`RetentionPolicy`] sets.
///
/// ```
/// use tiermap::RetentionCondition;
///
/// let map: tiermap::SyncMap<u64, u64> = (0..100).map(|i| (i, i)).collect();
/// let stats = map.stats();
/// assert!(RetentionCondition::BytesPerEntry.measure(&stats) > 16.0);
/// assert_eq!(RetentionCondition::DeletedRatio.measure(&stats), 0.0);
/// assert_eq!(RetentionCondition::DeletedRatio.to_string(), "deleted_ratio");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RetentionCondition {
    /// [`MapStats::held_bytes`] per live entry (per one entry when the map is empty, so an empty
    /// map that holds a large table measures its whole size).
    BytesPerEntry,
    /// The fraction of the entries the map holds that are deleted:
    /// `deleted / (len + deleted)`, from 0 to 1 (0 for an empty map holding no entry).
    DeletedRatio,
    /// [`MapStats::retired_bytes`]: superseded tables not yet freed, typically because a guard
    /// ([`Ref`](crate::Ref), [`Pinned`](crate::Pinned), an iteration) stays alive for long.
    RetiredBytes,
}

impl RetentionCondition {
    /// Every condition, in a fixed order.
    ///
    /// ```
    /// assert_eq!(tiermap::RetentionCondition::ALL.len(), 3);
    /// ```
    pub const ALL: [RetentionCondition; 3] = [
        RetentionCondition::BytesPerEntry,
        RetentionCondition::DeletedRatio,
        RetentionCondition::RetiredBytes,
    ];

    /// A short `snake_case` name, fit for a log line or a metric label.
    ///
    /// ```
    /// assert_eq!(tiermap::RetentionCondition::RetiredBytes.as_str(), "retired_bytes");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            RetentionCondition::BytesPerEntry => "bytes_per_entry",
            RetentionCondition::DeletedRatio => "deleted_ratio",
            RetentionCondition::RetiredBytes => "retired_bytes",
        }
    }

    /// The value of this condition in `stats` (no floor applied; see
    /// [`RetentionPolicy::min_held_bytes`]).
    ///
    /// ```
    /// use tiermap::RetentionCondition;
    ///
    /// let map: tiermap::SyncMap<u64, u64> = tiermap::SyncMap::new();
    /// let s = map.stats();
    /// // An empty map is measured per one entry: its whole size.
    /// assert_eq!(RetentionCondition::BytesPerEntry.measure(&s), s.held_bytes as f64);
    /// assert_eq!(RetentionCondition::RetiredBytes.measure(&s), s.retired_bytes as f64);
    /// ```
    pub fn measure(self, stats: &MapStats) -> f64 {
        match self {
            RetentionCondition::BytesPerEntry => stats.held_bytes as f64 / stats.len.max(1) as f64,
            RetentionCondition::DeletedRatio => {
                let held = stats.len.saturating_add(stats.deleted);
                if held == 0 {
                    0.0
                } else {
                    stats.deleted as f64 / held as f64
                }
            }
            RetentionCondition::RetiredBytes => stats.retired_bytes as f64,
        }
    }

    fn index(self) -> usize {
        match self {
            RetentionCondition::BytesPerEntry => 0,
            RetentionCondition::DeletedRatio => 1,
            RetentionCondition::RetiredBytes => 2,
        }
    }

    /// Whether the floor of [`RetentionPolicy::min_held_bytes`] applies.
    fn has_floor(self) -> bool {
        !matches!(self, RetentionCondition::RetiredBytes)
    }
}

impl fmt::Display for RetentionCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Thresholds for a map's retained memory, checked by the alarm that
/// [`SyncMap::set_retention_alarm`](crate::SyncMap::set_retention_alarm) installs.
///
/// A new policy checks nothing; each builder method turns one [`RetentionCondition`] on. A
/// condition trips when its value goes *above* its threshold, and re-arms when the value falls
/// back to `threshold × (1 − hysteresis)` or below. While a map holds fewer than
/// [`min_held_bytes`](Self::min_held_bytes) bytes (256 KiB unless set), the per-entry and
/// deleted-ratio conditions count as 0, so a small map never trips them.
///
/// ```
/// use tiermap::{RetentionCondition, RetentionPolicy};
///
/// let policy = RetentionPolicy::new()
///     .max_bytes_per_entry(1024)
///     .max_deleted_ratio(0.75)
///     .max_retired_bytes(64 << 20)
///     .min_held_bytes(1 << 20)
///     .hysteresis(0.25);
/// assert_eq!(policy.threshold(RetentionCondition::DeletedRatio), Some(0.75));
///
/// // Stateless use: which conditions a snapshot exceeds.
/// let map: tiermap::SyncMap<u64, u64> = (0..1000).map(|i| (i, i)).collect();
/// assert_eq!(policy.exceeded(&map.stats()).count(), 0);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetentionPolicy {
    /// Indexed by `RetentionCondition::index`.
    thresholds: [Option<f64>; 3],
    floor: usize,
    hysteresis: f64,
    /// Snapshots over which retired bytes must stay above their threshold (1..=MAX_WINDOW).
    retired_window: usize,
}

/// Longest window of [`RetentionPolicy::retired_window`].
const MAX_WINDOW: usize = 16;

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl RetentionPolicy {
    /// A policy with no condition, a floor of 256 KiB, a hysteresis of 0.2 and a retired-bytes
    /// window of 8 snapshots.
    ///
    /// ```
    /// let policy = tiermap::RetentionPolicy::new();
    /// assert!(tiermap::RetentionCondition::ALL.iter().all(|c| policy.threshold(*c).is_none()));
    /// ```
    pub const fn new() -> Self {
        RetentionPolicy {
            thresholds: [None; 3],
            floor: 256 << 10,
            hysteresis: 0.2,
            retired_window: 8,
        }
    }

    /// Trips when the map holds more than `bytes` per live entry
    /// ([`RetentionCondition::BytesPerEntry`]).
    ///
    /// What is normal depends on `K` and `V`: the map keeps at most eight table slots per live
    /// entry (plus 1024), its entries and value cells, and, while it migrates, a second table.
    /// Measure a healthy map of your types with [`SyncMap::stats`](crate::SyncMap::stats) and
    /// [`MapStats::bytes_per_entry`] and set a few times that.
    ///
    /// ```
    /// let policy = tiermap::RetentionPolicy::new().max_bytes_per_entry(512);
    /// assert_eq!(policy.threshold(tiermap::RetentionCondition::BytesPerEntry), Some(512.0));
    /// ```
    #[must_use]
    pub const fn max_bytes_per_entry(mut self, bytes: usize) -> Self {
        self.thresholds[0] = Some(bytes as f64);
        self
    }

    /// Trips when more than `ratio` of the entries the map holds are deleted
    /// ([`RetentionCondition::DeletedRatio`]). tiermap starts a compaction when deleted entries
    /// pass half the live ones plus 64 (a ratio of about 1/3), so a threshold of 0.5 or more
    /// only trips if compaction falls behind.
    ///
    /// # Panics
    ///
    /// If `ratio` is not within `0.0..=1.0`.
    ///
    /// ```
    /// let policy = tiermap::RetentionPolicy::new().max_deleted_ratio(0.5);
    /// assert_eq!(policy.threshold(tiermap::RetentionCondition::DeletedRatio), Some(0.5));
    /// ```
    #[must_use]
    pub fn max_deleted_ratio(mut self, ratio: f64) -> Self {
        assert!(
            (0.0..=1.0).contains(&ratio),
            "max_deleted_ratio must be within 0..=1, got {ratio}"
        );
        self.thresholds[1] = Some(ratio);
        self
    }

    /// Trips when more than `bytes` of superseded tables stay waiting to be freed
    /// ([`RetentionCondition::RetiredBytes`]): the sign of a guard kept alive for too long. The
    /// floor does not apply to this condition.
    ///
    /// Every promotion and every `clear` retires a table (after a `clear`, the whole old map),
    /// and the hook takes its snapshot right then, before any collection could free it: one
    /// table is pending for a check or two after each promotion, however healthy the map. So
    /// the alarm judges this condition on the *smallest* retired-bytes value of the last
    /// [`retired_window`](Self::retired_window) snapshots (8 unless set): it trips only when
    /// retired bytes stay above `bytes` for that many checks in a row, and re-arms as soon as
    /// one snapshot is at or below the re-arm level.
    ///
    /// Even so, set `bytes` above the largest table you expect (about a third of
    /// [`MapStats::held_bytes`] at the map's peak): with several threads writing on fewer cores,
    /// a thread descheduled while pinned delays every collection, and a superseded table may
    /// then wait for thousands of operations without any guard being leaked.
    ///
    /// ```
    /// let policy = tiermap::RetentionPolicy::new().max_retired_bytes(64 << 20);
    /// assert!(policy.threshold(tiermap::RetentionCondition::RetiredBytes).is_some());
    /// ```
    #[must_use]
    pub const fn max_retired_bytes(mut self, bytes: usize) -> Self {
        self.thresholds[2] = Some(bytes as f64);
        self
    }

    /// The floor: while [`MapStats::held_bytes`] is below `bytes`, the per-entry and
    /// deleted-ratio conditions count as 0 (and so re-arm). Defaults to 256 KiB.
    ///
    /// ```
    /// use tiermap::{RetentionCondition, RetentionPolicy};
    ///
    /// let map: tiermap::SyncMap<u64, u64> = tiermap::SyncMap::new(); // a few hundred bytes
    /// let strict = RetentionPolicy::new().max_bytes_per_entry(8);
    /// assert_eq!(strict.exceeded(&map.stats()).count(), 0); // below the floor
    /// let no_floor = strict.min_held_bytes(0);
    /// assert_eq!(no_floor.exceeded(&map.stats()).next(), Some(RetentionCondition::BytesPerEntry));
    /// ```
    #[must_use]
    pub const fn min_held_bytes(mut self, bytes: usize) -> Self {
        self.floor = bytes;
        self
    }

    /// How many consecutive snapshots retired bytes must stay above
    /// [`max_retired_bytes`](Self::max_retired_bytes) to trip (see there why). Defaults to 8,
    /// which spans at least 448 slow-path operations after a promotion (with one writer, a
    /// promotion's table was seen freed within four checks); 1 judges every snapshot alone.
    ///
    /// # Panics
    ///
    /// If `snapshots` is 0 or more than 16.
    ///
    /// ```
    /// let policy = tiermap::RetentionPolicy::new().max_retired_bytes(1 << 20).retired_window(8);
    /// # let _ = policy;
    /// ```
    #[must_use]
    pub fn retired_window(mut self, snapshots: usize) -> Self {
        assert!(
            (1..=MAX_WINDOW).contains(&snapshots),
            "retired_window must be within 1..={MAX_WINDOW}, got {snapshots}"
        );
        self.retired_window = snapshots;
        self
    }

    /// How far below its threshold a tripped condition must fall to re-arm, as a fraction of the
    /// threshold: it re-arms at `threshold × (1 − fraction)` or below. Defaults to 0.2; 0 re-arms
    /// as soon as the value is back at the threshold.
    ///
    /// # Panics
    ///
    /// If `fraction` is not within `0.0..1.0`.
    ///
    /// ```
    /// let policy = tiermap::RetentionPolicy::new().max_deleted_ratio(0.5).hysteresis(0.5);
    /// assert_eq!(policy.rearm_level(tiermap::RetentionCondition::DeletedRatio), Some(0.25));
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

    /// The threshold of `condition`, or `None` if the policy does not check it.
    ///
    /// ```
    /// let policy = tiermap::RetentionPolicy::new().max_retired_bytes(1000);
    /// assert_eq!(policy.threshold(tiermap::RetentionCondition::RetiredBytes), Some(1000.0));
    /// assert_eq!(policy.threshold(tiermap::RetentionCondition::DeletedRatio), None);
    /// ```
    pub fn threshold(&self, condition: RetentionCondition) -> Option<f64> {
        self.thresholds[condition.index()]
    }

    /// The value at or below which a tripped `condition` re-arms, or `None` if the policy does
    /// not check it.
    ///
    /// ```
    /// let policy = tiermap::RetentionPolicy::new().max_retired_bytes(1000); // hysteresis 0.2
    /// assert_eq!(policy.rearm_level(tiermap::RetentionCondition::RetiredBytes), Some(800.0));
    /// ```
    pub fn rearm_level(&self, condition: RetentionCondition) -> Option<f64> {
        self.threshold(condition)
            .map(|t| t * (1.0 - self.hysteresis))
    }

    /// The value of `condition` in `stats` as the alarm judges it: 0 below the floor for the
    /// conditions it applies to, [`RetentionCondition::measure`] otherwise.
    ///
    /// ```
    /// use tiermap::{RetentionCondition, RetentionPolicy};
    ///
    /// let map: tiermap::SyncMap<u64, u64> = tiermap::SyncMap::new();
    /// let s = map.stats();
    /// assert_eq!(RetentionPolicy::new().level(RetentionCondition::BytesPerEntry, &s), 0.0);
    /// ```
    pub fn level(&self, condition: RetentionCondition, stats: &MapStats) -> f64 {
        if condition.has_floor() && stats.held_bytes < self.floor {
            0.0
        } else {
            condition.measure(stats)
        }
    }

    /// The conditions that `stats` puts above their thresholds, without any alarm state (no
    /// hysteresis, no retired-bytes window): for code that polls
    /// [`SyncMap::stats`](crate::SyncMap::stats) itself.
    ///
    /// ```
    /// use tiermap::{RetentionCondition, RetentionPolicy};
    ///
    /// let map: tiermap::SyncMap<u64, u64> = (0..10_000).map(|i| (i, i)).collect();
    /// let tight = RetentionPolicy::new().max_bytes_per_entry(1);
    /// let over: Vec<_> = tight.exceeded(&map.stats()).collect();
    /// assert_eq!(over, [RetentionCondition::BytesPerEntry]);
    /// ```
    pub fn exceeded<'a>(
        &'a self,
        stats: &'a MapStats,
    ) -> impl Iterator<Item = RetentionCondition> + 'a {
        RetentionCondition::ALL
            .into_iter()
            .filter(move |&c| self.threshold(c).is_some_and(|t| self.level(c, stats) > t))
    }
}

/// What the retention alarm reports to its callback: which condition crossed its threshold, by
/// how much, and the snapshot that showed it.
///
/// Its `Display` is one log line:
/// `retention alarm: deleted_ratio 0.91 > 0.5 (len=10 deleted=100 held=...)`.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use tiermap::{RetentionAlert, RetentionCondition, RetentionPolicy, SyncMap};
///
/// let map: SyncMap<u64, u64> = (0..10_000).map(|i| (i, i)).collect();
/// let seen: Arc<Mutex<Vec<RetentionAlert>>> = Arc::default();
/// let sink = seen.clone();
/// let policy = RetentionPolicy::new().max_bytes_per_entry(1);
/// map.set_retention_alarm(policy, move |alert| sink.lock().unwrap().push(*alert));
/// let alert = seen.lock().unwrap()[0]; // checked once on installation
/// assert_eq!(alert.condition, RetentionCondition::BytesPerEntry);
/// assert!(alert.value > alert.threshold);
/// assert_eq!(alert.stats.len, 10_000);
/// println!("{alert}");
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct RetentionAlert {
    /// The condition that crossed its threshold.
    pub condition: RetentionCondition,
    /// Its value in [`stats`](Self::stats) (see [`RetentionPolicy::level`]); for
    /// [`RetentionCondition::RetiredBytes`], the smallest value of the window of snapshots
    /// that tripped it (see [`RetentionPolicy::max_retired_bytes`]).
    pub value: f64,
    /// The threshold it crossed.
    pub threshold: f64,
    /// The snapshot that showed it.
    pub stats: MapStats,
}

impl fmt::Display for RetentionAlert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "retention alarm: {} ", self.condition)?;
        match self.condition {
            RetentionCondition::RetiredBytes => write!(
                f,
                "{} > {}",
                Bytes(self.value as usize),
                Bytes(self.threshold as usize)
            )?,
            RetentionCondition::BytesPerEntry => {
                write!(f, "{:.0} B > {:.0} B", self.value, self.threshold)?
            }
            RetentionCondition::DeletedRatio => {
                write!(f, "{:.2} > {}", self.value, self.threshold)?
            }
        }
        write!(f, " ({})", self.stats)
    }
}

/// The callback of a retention alarm.
type Callback = Box<dyn Fn(&RetentionAlert) + Send + Sync>;

/// One installed alarm: its policy, its callback and the state of each condition.
struct AlarmState {
    policy: RetentionPolicy,
    on_alarm: Callback,
    /// Indexed by `RetentionCondition::index`. Invariant: `true` from the snapshot that took the
    /// condition above its threshold (whose checker ran the callback) until one at or below its
    /// re-arm level. Changed only under `judge`.
    tripped: [AtomicBool; 3],
    /// The retired bytes of the latest snapshots. Held while a checker takes its snapshot and
    /// judges it (never while a callback runs), so that snapshots are judged one at a time and
    /// in the order they were taken: a snapshot taken before a crossing but judged after it
    /// would otherwise re-arm the alarm and let the same crossing fire twice.
    judge: Mutex<Window>,
    fired: AtomicU64,
    panics: AtomicU64,
}

/// The latest values of one condition, in a ring.
#[derive(Default)]
struct Window {
    recent: [f64; MAX_WINDOW],
    next: usize,
    filled: usize,
}

impl Window {
    /// Records `value` and returns the smallest of the latest `len` values, or 0 while fewer
    /// than `len` were recorded (so the condition cannot trip before the window is full).
    fn push_min(&mut self, value: f64, len: usize) -> f64 {
        self.recent[self.next] = value;
        self.next = (self.next + 1) % len;
        self.filled = (self.filled + 1).min(len);
        if self.filled < len {
            return 0.0;
        }
        self.recent[..len]
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
    }
}

impl AlarmState {
    /// Takes a snapshot with `snapshot`, judges it, and runs the callback once for each
    /// condition it trips. Called outside every lock of the map; returns the snapshot.
    ///
    /// The snapshot is taken and judged under `judge`, so checks from several threads judge
    /// their snapshots in the order they took them; the callbacks run after `judge` is
    /// released (they may call the map, whose next check takes `judge` again).
    fn check(&self, snapshot: &Snapshot<'_>) -> MapStats {
        let mut alerts = Vec::new();
        let stats = {
            let mut window = self.judge.lock().unwrap_or_else(PoisonError::into_inner);
            let stats = snapshot();
            for c in RetentionCondition::ALL {
                let Some(threshold) = self.policy.threshold(c) else {
                    continue;
                };
                let now = self.policy.level(c, &stats);
                // What trips is the sustained value; what re-arms is the latest one.
                let value = if c == RetentionCondition::RetiredBytes {
                    window.push_min(now, self.policy.retired_window)
                } else {
                    now
                };
                let flag = &self.tripped[c.index()];
                // Relaxed loads and stores of the flags suffice for the transitions: they are
                // only changed under `judge`, whose lock orders them. Release on the stores
                // publishes them to `is_tripped` (Acquire).
                if value > threshold {
                    if !flag.load(Relaxed) {
                        flag.store(true, Release);
                        alerts.push(RetentionAlert {
                            condition: c,
                            value,
                            threshold,
                            stats,
                        });
                    }
                } else if now <= threshold * (1.0 - self.policy.hysteresis) && flag.load(Relaxed) {
                    flag.store(false, Release);
                }
            }
            stats
        };
        for alert in alerts {
            self.fire(alert);
        }
        stats
    }

    fn fire(&self, alert: RetentionAlert) {
        run_callback(&self.fired, &self.panics, || (self.on_alarm)(&alert));
    }
}

/// Runs an alarm callback, counting the call and, if it panics, the panic (caught).
fn run_callback(fired: &AtomicU64, panics: &AtomicU64, callback: impl FnOnce()) {
    // Relaxed: statistics.
    fired.fetch_add(1, Relaxed);
    // AssertUnwindSafe: after a panic we touch none of the callback's state, only count it; the
    // alarm's own state was settled before the call (the crossing counts as reported), and no
    // lock of the map or pool is held here.
    if let Err(payload) = catch_unwind(AssertUnwindSafe(callback)) {
        panics.fetch_add(1, Relaxed);
        // A payload whose destructor panics would escape here; drop it under a guard too.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
    }
}

/// A handle to an installed retention alarm (from
/// [`SyncMap::set_retention_alarm`](crate::SyncMap::set_retention_alarm)): how often it fired,
/// how many of its callbacks panicked, which conditions are tripped now.
///
/// It stays readable after the alarm is replaced or removed. Cloning it is cheap.
///
/// ```
/// use tiermap::{RetentionCondition, RetentionPolicy, SyncMap};
///
/// let map: SyncMap<u64, u64> = (0..10_000).map(|i| (i, i)).collect();
/// let alarm = map.set_retention_alarm(RetentionPolicy::new().max_bytes_per_entry(1), |_| {});
/// assert_eq!(alarm.fired(), 1);
/// assert!(alarm.is_tripped(RetentionCondition::BytesPerEntry));
/// assert_eq!(alarm.panics(), 0);
/// ```
#[derive(Clone)]
pub struct RetentionAlarm(Arc<AlarmState>);

impl RetentionAlarm {
    /// The policy this alarm checks.
    ///
    /// ```
    /// let map: tiermap::SyncMap<u8, u8> = tiermap::SyncMap::new();
    /// let policy = tiermap::RetentionPolicy::new().max_deleted_ratio(0.9);
    /// assert_eq!(map.set_retention_alarm(policy, |_| {}).policy(), &policy);
    /// ```
    pub fn policy(&self) -> &RetentionPolicy {
        &self.0.policy
    }

    /// How many times the callback was called (once per crossing, per condition).
    ///
    /// ```
    /// let map: tiermap::SyncMap<u8, u8> = tiermap::SyncMap::new();
    /// let alarm = map.set_retention_alarm(tiermap::RetentionPolicy::new(), |_| {});
    /// assert_eq!(alarm.fired(), 0);
    /// ```
    pub fn fired(&self) -> u64 {
        // Relaxed: a statistic; a call counted concurrently is seen by a later read.
        self.0.fired.load(Relaxed)
    }

    /// How many calls of the callback panicked. The panics were caught (after the panic hook
    /// printed them) and the operations that ran the callback returned normally; see
    /// [`SyncMap::set_retention_alarm`](crate::SyncMap::set_retention_alarm).
    ///
    /// ```
    /// let map: tiermap::SyncMap<u64, u64> = (0..10_000).map(|i| (i, i)).collect();
    /// let policy = tiermap::RetentionPolicy::new().max_bytes_per_entry(1);
    /// let alarm = map.set_retention_alarm(policy, |_| panic!("pager is down"));
    /// assert_eq!(alarm.panics(), 1);
    /// map.insert(1, 1); // the map is fine
    /// ```
    pub fn panics(&self) -> u64 {
        // Relaxed: a statistic, as `fired`.
        self.0.panics.load(Relaxed)
    }

    /// Whether `condition` is tripped: it crossed its threshold and has not fallen back to its
    /// re-arm level since.
    ///
    /// ```
    /// let map: tiermap::SyncMap<u8, u8> = tiermap::SyncMap::new();
    /// let alarm = map.set_retention_alarm(tiermap::RetentionPolicy::new(), |_| {});
    /// assert!(!alarm.is_tripped(tiermap::RetentionCondition::RetiredBytes));
    /// ```
    pub fn is_tripped(&self, condition: RetentionCondition) -> bool {
        self.0.tripped[condition.index()].load(Acquire)
    }

    /// Takes a snapshot and judges it now, as the map's hook does (the map's installation uses
    /// this).
    pub(crate) fn check(&self, snapshot: &Snapshot<'_>) {
        self.0.check(snapshot);
    }
}

impl fmt::Debug for RetentionAlarm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tripped: Vec<_> = RetentionCondition::ALL
            .into_iter()
            .filter(|&c| self.is_tripped(c))
            .collect();
        f.debug_struct("RetentionAlarm")
            .field("policy", &self.0.policy)
            .field("tripped", &tripped)
            .field("fired", &self.fired())
            .field("panics", &self.panics())
            .finish()
    }
}

/// The sinks behind a map's one observer: the retention alarm and the metrics publisher, each
/// optional, both called with the same snapshot.
#[derive(Default)]
struct Sinks {
    alarm: ArcSwapOption<AlarmState>,
    #[cfg(feature = "metrics")]
    metrics: ArcSwapOption<metrics_export::Publisher>,
}

impl Sinks {
    fn notify(&self, snapshot: &Snapshot<'_>) {
        // `load_full`, not a guard: the callback may run long and may replace these sinks.
        let stats = match self.alarm.load_full() {
            // The alarm takes the snapshot (under its own lock); the publisher reuses it.
            Some(alarm) => alarm.check(snapshot),
            #[cfg(feature = "metrics")]
            None if self.metrics.load().is_some() => snapshot(),
            None => return,
        };
        #[cfg(feature = "metrics")]
        if let Some(publisher) = self.metrics.load_full() {
            publisher.publish(&stats);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = stats;
    }

    fn any(&self) -> bool {
        #[cfg(feature = "metrics")]
        if self.metrics.load().is_some() {
            return true;
        }
        self.alarm.load().is_some()
    }
}

/// A map's fan-out: owns the sinks and installs one observer in the engine while any sink is
/// set (and none while no sink is, so an unwatched map pays nothing beyond the engine's check
/// for an empty hook).
#[derive(Default)]
pub(crate) struct Hooks {
    sinks: Arc<Sinks>,
    /// Whether the observer is installed. Held while the sinks change, never while they run.
    installed: Mutex<bool>,
}

impl Hooks {
    /// Changes the sinks with `change`, then installs or removes the observer through `install`
    /// to match.
    fn update<R>(
        &self,
        install: impl FnOnce(Option<Observer>),
        change: impl FnOnce(&Sinks) -> R,
    ) -> R {
        let mut installed = self
            .installed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let r = change(&self.sinks);
        let want = self.sinks.any();
        if want != *installed {
            let observer = want.then(|| {
                let sinks = Arc::clone(&self.sinks);
                Observer(Box::new(move |snapshot: &Snapshot<'_>| {
                    sinks.notify(snapshot)
                }))
            });
            install(observer);
            *installed = want;
        }
        r
    }

    /// Installs a new alarm (replacing any) and returns its handle; the caller checks it once.
    pub(crate) fn set_alarm(
        &self,
        policy: RetentionPolicy,
        on_alarm: Callback,
        install: impl FnOnce(Option<Observer>),
    ) -> RetentionAlarm {
        let state = Arc::new(AlarmState {
            policy,
            on_alarm,
            tripped: Default::default(),
            judge: Mutex::default(),
            fired: AtomicU64::new(0),
            panics: AtomicU64::new(0),
        });
        self.update(install, |s| s.alarm.store(Some(Arc::clone(&state))));
        RetentionAlarm(state)
    }

    /// Removes the alarm, returning its handle if there was one.
    pub(crate) fn clear_alarm(
        &self,
        install: impl FnOnce(Option<Observer>),
    ) -> Option<RetentionAlarm> {
        self.update(install, |s| s.alarm.swap(None).map(RetentionAlarm))
    }

    /// Installs a metrics publisher (replacing any); the caller publishes once.
    #[cfg(feature = "metrics")]
    pub(crate) fn set_metrics(&self, name: String, install: impl FnOnce(Option<Observer>)) {
        let publisher = Arc::new(metrics_export::Publisher::new(name));
        self.update(install, |s| s.metrics.store(Some(publisher)));
    }

    /// Removes the metrics publisher; whether there was one.
    #[cfg(feature = "metrics")]
    pub(crate) fn clear_metrics(&self, install: impl FnOnce(Option<Observer>)) -> bool {
        self.update(install, |s| s.metrics.swap(None).is_some())
    }

    /// Publishes `stats` now if a publisher is set.
    #[cfg(feature = "metrics")]
    pub(crate) fn publish_now(&self, stats: &MapStats) {
        if let Some(publisher) = self.sinks.metrics.load_full() {
            publisher.publish(stats);
        }
    }
}

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

    /// As [`RetentionPolicy::hysteresis`]: a tripped alarm re-arms at
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
            .map(|t| (t as f64 * (1.0 - self.hysteresis)) as usize)
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
    /// As `AlarmState::tripped`, for the one condition. Changed only under `judge`.
    tripped: AtomicBool,
    /// As `AlarmState::judge`: held while a checker takes its snapshot and judges it.
    judge: Mutex<()>,
    fired: AtomicU64,
    panics: AtomicU64,
}

impl PoolAlarmState {
    /// As `AlarmState::check`: takes a snapshot and judges it under `judge`, then runs the
    /// callback (after releasing it) if this snapshot is the crossing. Returns the snapshot.
    fn check(&self, snapshot: &dyn Fn() -> PoolStats) -> PoolStats {
        let Some(threshold) = self.policy.max_retained_bytes else {
            return snapshot();
        };
        let (stats, crossed) = {
            let _judge = self.judge.lock().unwrap_or_else(PoisonError::into_inner);
            let stats = snapshot();
            let value = stats.retained_bytes;
            // Relaxed/Release: as in `AlarmState::check` (changed only under `judge`).
            let mut crossed = false;
            if value > threshold {
                if !self.tripped.load(Relaxed) {
                    self.tripped.store(true, Release);
                    crossed = true;
                }
            } else if (value as f64) <= threshold as f64 * (1.0 - self.policy.hysteresis)
                && self.tripped.load(Relaxed)
            {
                self.tripped.store(false, Release);
            }
            (stats, crossed)
        };
        if crossed {
            let alert = PoolRetentionAlert {
                retained_bytes: stats.retained_bytes,
                threshold,
                stats,
            };
            run_callback(&self.fired, &self.panics, || (self.on_alarm)(&alert));
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
        // Relaxed: a statistic; a call counted concurrently is seen by a later read.
        self.0.fired.load(Relaxed)
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
        // Relaxed: a statistic, as `fired`.
        self.0.panics.load(Relaxed)
    }

    /// Whether the alarm is tripped (crossed and not yet back at the re-arm level).
    ///
    /// ```
    /// let pool: tiermap::pool::MapPool<Vec<u8>> = tiermap::pool::MapPool::new();
    /// let alarm = pool.set_retention_alarm(tiermap::PoolRetentionPolicy::new(), |_| {});
    /// assert!(!alarm.is_tripped());
    /// ```
    pub fn is_tripped(&self) -> bool {
        self.0.tripped.load(Acquire)
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
    alarm: ArcSwapOption<PoolAlarmState>,
    #[cfg(feature = "metrics")]
    metrics: ArcSwapOption<metrics_export::PoolPublisher>,
    /// Held while the sinks change, never while they run.
    config: Mutex<()>,
}

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
            self.notify(&stats);
        }
    }

    /// Runs the sinks now if any is set (after `clear`, and on installation).
    pub(crate) fn check_now(&self, stats: impl Fn() -> PoolStats) {
        // Relaxed: as in `after_return`; the sinks themselves are read through `ArcSwapOption`,
        // which orders their contents.
        if self.active.load(Relaxed) {
            self.notify(&stats);
        }
    }

    fn notify(&self, snapshot: &dyn Fn() -> PoolStats) {
        let stats = match self.alarm.load_full() {
            // As for maps: the alarm takes the snapshot under its lock; the publisher reuses it.
            Some(alarm) => alarm.check(snapshot),
            #[cfg(feature = "metrics")]
            None if self.metrics.load().is_some() => snapshot(),
            None => return,
        };
        #[cfg(feature = "metrics")]
        if let Some(publisher) = self.metrics.load_full() {
            publisher.publish(&stats);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = stats;
    }

    fn update<R>(&self, change: impl FnOnce(&Self) -> R) -> R {
        let _config = self.config.lock().unwrap_or_else(PoisonError::into_inner);
        let r = change(self);
        let alarm = self.alarm.load();
        let big = alarm
            .as_ref()
            .and_then(|a| a.policy.max_retained_bytes)
            .map_or(0, |t| (t / 16).max(1));
        #[cfg(feature = "metrics")]
        let active = alarm.is_some() || self.metrics.load().is_some();
        #[cfg(not(feature = "metrics"))]
        let active = alarm.is_some();
        // Relaxed: both are hints read with relaxed loads (see `after_return`); `config`
        // orders the writers, and the sinks are published by `ArcSwapOption` itself.
        self.big.store(big, Relaxed);
        self.active.store(active, Relaxed);
        r
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
        let state = Arc::new(PoolAlarmState {
            policy,
            on_alarm: Box::new(on_alarm),
            tripped: AtomicBool::new(false),
            judge: Mutex::new(()),
            fired: AtomicU64::new(0),
            panics: AtomicU64::new(0),
        });
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
        let publisher = Arc::new(metrics_export::PoolPublisher::new(name.into()));
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

/// Metric names and the publisher (feature `metrics`).
#[cfg(feature = "metrics")]
pub(crate) mod metrics_export {
    use metrics::{Counter, Gauge, Unit};

    use crate::pool::PoolStats;
    use crate::stats::MapStats;

    /// Gauge: keys present ([`MapStats::len`]).
    pub(crate) const ENTRIES: &str = "tiermap_map_entries";
    /// Gauge: entries held for deleted keys ([`MapStats::deleted`]).
    pub(crate) const DELETED: &str = "tiermap_map_deleted_entries";
    /// Gauge: [`MapStats::held_bytes`].
    pub(crate) const HELD_BYTES: &str = "tiermap_map_held_bytes";
    /// Gauge: [`MapStats::retired_bytes`].
    pub(crate) const RETIRED_BYTES: &str = "tiermap_map_retired_bytes";
    /// Counter: [`MapStats::promotions`].
    pub(crate) const PROMOTIONS: &str = "tiermap_map_promotions_total";
    /// Counter: [`MapStats::compactions`].
    pub(crate) const COMPACTIONS: &str = "tiermap_map_compactions_total";

    /// The handles of one named map's metrics, registered once with the recorder that was
    /// current when it was made.
    pub(crate) struct Publisher {
        entries: Gauge,
        deleted: Gauge,
        held_bytes: Gauge,
        retired_bytes: Gauge,
        promotions: Counter,
        compactions: Counter,
    }

    impl Publisher {
        pub(crate) fn new(name: String) -> Self {
            metrics::describe_gauge!(ENTRIES, Unit::Count, "Keys present in the map.");
            metrics::describe_gauge!(
                DELETED,
                Unit::Count,
                "Entries the map still holds for deleted keys."
            );
            metrics::describe_gauge!(
                HELD_BYTES,
                Unit::Bytes,
                "Heap bytes held by the map's tables, entries and value cells."
            );
            metrics::describe_gauge!(
                RETIRED_BYTES,
                Unit::Bytes,
                "Bytes of superseded tables retired but not yet freed."
            );
            metrics::describe_counter!(
                PROMOTIONS,
                Unit::Count,
                "Times a dirty tier became the read tier."
            );
            metrics::describe_counter!(
                COMPACTIONS,
                Unit::Count,
                "Migrations started to drop deleted entries or shrink the tables."
            );
            let labels = [("map", name)];
            Publisher {
                entries: metrics::gauge!(ENTRIES, &labels),
                deleted: metrics::gauge!(DELETED, &labels),
                held_bytes: metrics::gauge!(HELD_BYTES, &labels),
                retired_bytes: metrics::gauge!(RETIRED_BYTES, &labels),
                promotions: metrics::counter!(PROMOTIONS, &labels),
                compactions: metrics::counter!(COMPACTIONS, &labels),
            }
        }

        pub(crate) fn publish(&self, s: &MapStats) {
            self.entries.set(s.len as f64);
            self.deleted.set(s.deleted as f64);
            self.held_bytes.set(s.held_bytes as f64);
            self.retired_bytes.set(s.retired_bytes as f64);
            self.promotions.absolute(s.promotions);
            self.compactions.absolute(s.compactions);
        }
    }

    /// The handles of one named pool's metrics.
    pub(crate) struct PoolPublisher {
        idle: Gauge,
        retained_bytes: Gauge,
        gets: Counter,
        hits: Counter,
        misses: Counter,
        shrunk: Counter,
        dropped: Counter,
    }

    impl PoolPublisher {
        pub(crate) fn new(name: String) -> Self {
            metrics::describe_gauge!(
                "tiermap_pool_idle",
                Unit::Count,
                "Objects idle in the pool."
            );
            metrics::describe_gauge!(
                "tiermap_pool_retained_bytes",
                Unit::Bytes,
                "Heap bytes held by the pool's idle objects."
            );
            metrics::describe_counter!(
                "tiermap_pool_gets_total",
                Unit::Count,
                "Objects handed out."
            );
            metrics::describe_counter!(
                "tiermap_pool_hits_total",
                Unit::Count,
                "Gets served by an idle object."
            );
            metrics::describe_counter!(
                "tiermap_pool_misses_total",
                Unit::Count,
                "Gets that created a new object."
            );
            metrics::describe_counter!(
                "tiermap_pool_returns_shrunk_total",
                Unit::Count,
                "Returns over the capacity ceiling, emptied and shrunk."
            );
            metrics::describe_counter!(
                "tiermap_pool_returns_dropped_total",
                Unit::Count,
                "Returns dropped instead of kept."
            );
            let labels = [("pool", name)];
            PoolPublisher {
                idle: metrics::gauge!("tiermap_pool_idle", &labels),
                retained_bytes: metrics::gauge!("tiermap_pool_retained_bytes", &labels),
                gets: metrics::counter!("tiermap_pool_gets_total", &labels),
                hits: metrics::counter!("tiermap_pool_hits_total", &labels),
                misses: metrics::counter!("tiermap_pool_misses_total", &labels),
                shrunk: metrics::counter!("tiermap_pool_returns_shrunk_total", &labels),
                dropped: metrics::counter!("tiermap_pool_returns_dropped_total", &labels),
            }
        }

        pub(crate) fn publish(&self, s: &PoolStats) {
            self.idle.set(s.idle as f64);
            self.retained_bytes.set(s.retained_bytes as f64);
            self.gets.absolute(s.gets);
            self.hits.absolute(s.hits);
            self.misses.absolute(s.misses);
            self.shrunk.absolute(s.returns_shrunk);
            self.dropped.absolute(s.returns_dropped);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn stats(len: usize, deleted: usize, held_bytes: usize, retired_bytes: usize) -> MapStats {
        MapStats {
            len,
            deleted,
            held_bytes,
            retired_bytes,
            ..MapStats::default()
        }
    }

    fn counting(policy: RetentionPolicy) -> (RetentionAlarm, Arc<Mutex<Vec<RetentionCondition>>>) {
        let seen: Arc<Mutex<Vec<RetentionCondition>>> = Arc::default();
        let sink = Arc::clone(&seen);
        let hooks = Hooks::default();
        let alarm = hooks.set_alarm(
            policy,
            Box::new(move |a| sink.lock().unwrap().push(a.condition)),
            |_| {},
        );
        (alarm, seen)
    }

    #[test]
    fn hysteresis_band() {
        let policy = RetentionPolicy::new()
            .max_retired_bytes(1000)
            .hysteresis(0.5)
            .retired_window(1);
        let (alarm, seen) = counting(policy);
        for retired in [0, 1001, 2000, 900, 501, 1500, 500, 999, 1001, 1000, 0] {
            alarm.check(&|| stats(0, 0, 0, retired));
        }
        // Crossings: 1001 (fires), 500 re-arms, 1001 (fires), 0 re-arms.
        assert_eq!(seen.lock().unwrap().len(), 2);
        assert_eq!(alarm.fired(), 2);
        assert!(!alarm.is_tripped(RetentionCondition::RetiredBytes));
    }

    #[test]
    fn retired_bytes_must_be_sustained() {
        let policy = RetentionPolicy::new()
            .max_retired_bytes(1000)
            .retired_window(4);
        let (alarm, seen) = counting(policy);
        // Promotion spikes that are gone a check or two later never trip a window of 4.
        for retired in [5000, 5000, 0, 0, 9000, 0, 7000, 7000, 0, 3000] {
            alarm.check(&|| stats(0, 0, 0, retired));
        }
        assert_eq!(alarm.fired(), 0);
        // Four in a row do; the alert reports the smallest of them.
        for retired in [3000, 2000, 4000] {
            alarm.check(&|| stats(0, 0, 0, retired));
        }
        assert_eq!(alarm.fired(), 1);
        assert_eq!(seen.lock().unwrap().len(), 1);
        // One snapshot at the re-arm level (800) re-arms at once.
        alarm.check(&|| stats(0, 0, 0, 800));
        assert!(!alarm.is_tripped(RetentionCondition::RetiredBytes));
        for retired in [1200, 1200, 1200] {
            alarm.check(&|| stats(0, 0, 0, retired));
        }
        assert_eq!(alarm.fired(), 1, "800 is still in the window");
        alarm.check(&|| stats(0, 0, 0, 1200));
        assert_eq!(alarm.fired(), 2);
    }

    #[test]
    fn floor_and_measures() {
        let policy = RetentionPolicy::new()
            .max_bytes_per_entry(100)
            .max_deleted_ratio(0.5)
            .min_held_bytes(10_000);
        // Below the floor: nothing counts.
        assert_eq!(policy.exceeded(&stats(1, 9, 9_999, 0)).count(), 0);
        // Above: 20_000 B over 1 entry, 9 of 10 deleted.
        let over: Vec<_> = policy.exceeded(&stats(1, 9, 20_000, 0)).collect();
        assert_eq!(
            over,
            [
                RetentionCondition::BytesPerEntry,
                RetentionCondition::DeletedRatio
            ]
        );
        assert_eq!(
            RetentionCondition::DeletedRatio.measure(&stats(0, 0, 0, 0)),
            0.0
        );
        assert_eq!(
            RetentionCondition::BytesPerEntry.measure(&stats(0, 0, 500, 0)),
            500.0
        );
    }

    #[test]
    fn alert_display_is_one_line() {
        let alert = RetentionAlert {
            condition: RetentionCondition::RetiredBytes,
            value: 3.0 * 1024.0 * 1024.0,
            threshold: 1024.0 * 1024.0,
            stats: stats(1, 0, 100, 3 << 20),
        };
        let line = alert.to_string();
        assert!(line.starts_with("retention alarm: retired_bytes 3.0 MiB > 1.0 MiB (len=1 "));
        assert!(!line.contains('\n'));
    }

    /// Regression (found by `tests/alarm.rs::concurrent_writers_fire_once`, 1 run in 4 under
    /// load): a checker whose snapshot was taken before a crossing but judged after another
    /// checker had fired for it re-armed the alarm, so the same crossing fired twice. Here
    /// thread A's snapshot (retired 0) is being taken while thread B checks a later snapshot
    /// (retired 2000): B must wait for A's judgement, so A's old value cannot undo B's trip.
    #[test]
    fn stale_snapshot_never_rearms() {
        let policy = RetentionPolicy::new()
            .max_retired_bytes(1000)
            .hysteresis(0.5)
            .retired_window(1);
        let (alarm, seen) = counting(policy);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let b = Mutex::new(None);
        alarm.check(&|| {
            // Inside A's snapshot: B checks a later, high snapshot. Give it time to finish;
            // with snapshots judged in order it cannot before A is judged.
            let (alarm, done_tx) = (alarm.clone(), done_tx.clone());
            *b.lock().unwrap() = Some(std::thread::spawn(move || {
                alarm.check(&|| stats(0, 0, 0, 2000));
                done_tx.send(()).unwrap();
            }));
            let finished = done_rx.recv_timeout(std::time::Duration::from_millis(200));
            assert!(
                finished.is_err(),
                "a later check was judged before this one"
            );
            stats(0, 0, 0, 0)
        });
        b.into_inner().unwrap().unwrap().join().unwrap();
        assert_eq!(alarm.fired(), 1);
        assert!(alarm.is_tripped(RetentionCondition::RetiredBytes));
        // Still high: the same crossing, so no second call.
        alarm.check(&|| stats(0, 0, 0, 2000));
        assert_eq!(alarm.fired(), 1);
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    /// A pool hook with an alarm (threshold 1 MiB, so small returns never take the big-object
    /// path) whose callback is never reached: the tests count snapshots, i.e. checks.
    fn watched_pool_hooks() -> PoolHooks {
        let hooks = PoolHooks::default();
        let state = Arc::new(PoolAlarmState {
            policy: PoolRetentionPolicy::new().max_retained_bytes(1 << 20),
            on_alarm: Box::new(|_| {}),
            tripped: AtomicBool::new(false),
            judge: Mutex::new(()),
            fired: AtomicU64::new(0),
            panics: AtomicU64::new(0),
        });
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

    #[test]
    #[should_panic(expected = "max_deleted_ratio")]
    fn ratio_out_of_range() {
        let _ = RetentionPolicy::new().max_deleted_ratio(1.5);
    }
}
