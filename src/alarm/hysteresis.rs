//! [`Hysteresis`]: the trip/re-arm state machine both alarms (map and pool) run, judged under
//! the alarm's own lock.

// The atomics come from the facade (loom's in model-checking builds); loom re-exports std's
// `Ordering`, so it is taken from std. No atomic here lives in a `static` (loom's cannot).
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::{Mutex, PoisonError};

use crate::facade::AtomicBool;

/// The value at or below which a condition tripped at `threshold` re-arms: `threshold × (1 −
/// fraction)`. The policies report it and [`Hysteresis::check`] applies it, so they agree.
pub(crate) fn rearm_level(threshold: f64, fraction: f64) -> f64 {
    threshold * (1.0 - fraction)
}

/// One condition as an alarm reads it in one snapshot.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Reading {
    /// The value that trips the condition when it is above [`threshold`](Self::threshold) (for
    /// a windowed condition, the sustained value).
    pub(crate) value: f64,
    /// The value that re-arms it when it is at or below the re-arm level (the latest one; for
    /// most conditions the same as [`value`](Self::value)).
    pub(crate) latest: f64,
    /// The condition's threshold.
    pub(crate) threshold: f64,
}

impl Reading {
    /// A reading whose tripping and re-arming values are both `value`.
    pub(crate) fn new(value: f64, threshold: f64) -> Self {
        Reading {
            value,
            latest: value,
            threshold,
        }
    }
}

/// The state of `N` conditions of one alarm, each armed or tripped (see the state machine in
/// the [module docs of `alarm`](super)), and the lock they are judged under, which also guards
/// the alarm's memory of past snapshots `W` (the map's retired-bytes window; `()` for a pool).
///
/// A condition trips when its value goes above its threshold, once per crossing, and re-arms
/// when its latest value is at or below [`rearm_level`]. [`check`](Self::check) takes the
/// snapshot *and* judges it under the lock, so checks running on several threads judge their
/// snapshots one at a time and in the order they were taken: a snapshot taken before a crossing
/// but judged after another thread had fired for it would otherwise re-arm the condition and
/// let the same crossing fire twice (the regression test `stale_snapshot_never_rearms`).
pub(crate) struct Hysteresis<W, const N: usize> {
    /// The re-arm band, as a fraction of each threshold.
    fraction: f64,
    /// Invariant: `tripped[i]` is `true` from the snapshot that took condition `i` above its
    /// threshold (whose checker ran the callback) until one at or below its re-arm level.
    /// Changed only under `judge`.
    tripped: [AtomicBool; N],
    /// Held while a checker takes its snapshot and judges it, never while a callback runs.
    judge: Mutex<W>,
}

impl<W, const N: usize> Hysteresis<W, N> {
    /// `N` armed conditions with a re-arm band of `fraction`, and `memory` for the judge.
    pub(crate) fn new(fraction: f64, memory: W) -> Self {
        Hysteresis {
            fraction,
            tripped: std::array::from_fn(|_| AtomicBool::new(false)),
            judge: Mutex::new(memory),
        }
    }

    /// Takes a snapshot with `snapshot` and judges it, both under the judge lock: `read` turns
    /// the snapshot into condition `i`'s [`Reading`] (`None`: not checked), with the judge's
    /// memory at hand. Returns the snapshot and, at index `i`, the reading of condition `i` if
    /// this snapshot is its crossing (the caller runs the callback for it, after this returns,
    /// so with the lock released: the callback may trigger the next check).
    pub(crate) fn check<S>(
        &self,
        snapshot: impl FnOnce() -> S,
        mut read: impl FnMut(usize, &S, &mut W) -> Option<Reading>,
    ) -> (S, [Option<Reading>; N]) {
        let mut crossed = [None; N];
        let mut memory = self.judge.lock().unwrap_or_else(PoisonError::into_inner);
        let stats = snapshot();
        for (i, flag) in self.tripped.iter().enumerate() {
            let Some(reading) = read(i, &stats, &mut memory) else {
                continue;
            };
            // Relaxed loads and stores of the flags suffice for the transitions: they are only
            // changed under `judge`, whose lock orders them. Release on the stores publishes
            // them to `is_tripped` (Acquire).
            if reading.value > reading.threshold {
                if !flag.load(Relaxed) {
                    flag.store(true, Release);
                    crossed[i] = Some(reading);
                }
            } else if reading.latest <= rearm_level(reading.threshold, self.fraction)
                && flag.load(Relaxed)
            {
                flag.store(false, Release);
            }
        }
        drop(memory);
        (stats, crossed)
    }

    /// Whether condition `i` is tripped.
    pub(crate) fn is_tripped(&self, i: usize) -> bool {
        // Acquire: pairs with the Release stores of `check`.
        self.tripped[i].load(Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trips once per crossing, re-arms only at or below the band, judges `value` to trip and
    /// `latest` to re-arm.
    #[test]
    fn trips_once_per_crossing() {
        let h: Hysteresis<(), 1> = Hysteresis::new(0.5, ());
        let mut fired = 0;
        for v in [0.0, 11.0, 20.0, 9.0, 5.1, 15.0, 5.0, 10.0, 10.5] {
            let (_, crossed) = h.check(|| v, |_, &v, _| Some(Reading::new(v, 10.0)));
            fired += crossed.iter().flatten().count();
        }
        // 11 fires; 5.0 re-arms; 10.5 fires.
        assert_eq!(fired, 2);
        assert!(h.is_tripped(0));
        // A sustained value below the threshold whose latest value is in the band: no re-arm.
        let (_, crossed) = h.check(
            || (),
            |_, _, _| {
                Some(Reading {
                    value: 1.0,
                    latest: 6.0,
                    threshold: 10.0,
                })
            },
        );
        assert_eq!(crossed, [None]);
        assert!(h.is_tripped(0));
        // Unchecked conditions stay as they are.
        let (_, crossed) = h.check(|| (), |_, _, _| None);
        assert_eq!(crossed, [None]);
        assert!(h.is_tripped(0));
    }
}
