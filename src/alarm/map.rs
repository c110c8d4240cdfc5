//! The map's retention alarm: the conditions ([`RetentionCondition`]), the policy
//! ([`RetentionPolicy`]), the alert ([`RetentionAlert`]) and the installed alarm
//! ([`RetentionAlarm`]), judged by the shared [`Hysteresis`].

use std::fmt;
use std::sync::Arc;

use super::{Callbacks, Check, Hysteresis, Reading};
use crate::raw::Snapshot;
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
            .map(|t| super::hysteresis::rearm_level(t, self.hysteresis))
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
pub(crate) type Callback = Box<dyn Fn(&RetentionAlert) + Send + Sync>;

/// One installed alarm: its policy, its callback and the state of each condition.
pub(crate) struct AlarmState {
    policy: RetentionPolicy,
    on_alarm: Callback,
    /// The state of each condition, indexed by `RetentionCondition::index` (the order of
    /// `RetentionCondition::ALL`); its judge lock guards the retired bytes of the latest
    /// snapshots.
    conditions: Hysteresis<Window, 3>,
    callbacks: Callbacks,
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
    /// A new alarm, every condition armed.
    pub(crate) fn new(policy: RetentionPolicy, on_alarm: Callback) -> Self {
        AlarmState {
            policy,
            on_alarm,
            conditions: Hysteresis::new(policy.hysteresis, Window::default()),
            callbacks: Callbacks::default(),
        }
    }

    /// Takes a snapshot with `snapshot`, judges it, and runs the callback once for each
    /// condition it trips. Called outside every lock of the map; returns the snapshot.
    ///
    /// The snapshot is taken and judged under the judge lock of `conditions` (see
    /// [`Hysteresis::check`]), so checks from several threads judge their snapshots in the
    /// order they took them; the callbacks run after that lock is released (they may call the
    /// map, whose next check takes it again).
    fn check(&self, snapshot: &Snapshot<'_>) -> MapStats {
        let (stats, crossed) = self.conditions.check(snapshot, |i, stats, window| {
            let c = RetentionCondition::ALL[i];
            let threshold = self.policy.threshold(c)?;
            let now = self.policy.level(c, stats);
            // What trips is the sustained value; what re-arms is the latest one.
            let value = if c == RetentionCondition::RetiredBytes {
                window.push_min(now, self.policy.retired_window)
            } else {
                now
            };
            Some(Reading {
                value,
                latest: now,
                threshold,
            })
        });
        for (c, reading) in RetentionCondition::ALL.into_iter().zip(crossed) {
            if let Some(Reading {
                value, threshold, ..
            }) = reading
            {
                let alert = RetentionAlert {
                    condition: c,
                    value,
                    threshold,
                    stats,
                };
                self.callbacks.run(|| (self.on_alarm)(&alert));
            }
        }
        stats
    }
}

impl Check<MapStats> for AlarmState {
    fn check(&self, snapshot: &Snapshot<'_>) -> MapStats {
        AlarmState::check(self, snapshot)
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
pub struct RetentionAlarm(pub(super) Arc<AlarmState>);

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
        self.0.callbacks.fired()
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
        self.0.callbacks.panics()
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
        self.0.conditions.is_tripped(condition.index())
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::alarm::Hooks;

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

    #[test]
    #[should_panic(expected = "max_deleted_ratio")]
    fn ratio_out_of_range() {
        let _ = RetentionPolicy::new().max_deleted_ratio(1.5);
    }
}
