//! The fan-out from one hook to its sinks (an alarm and a metrics publisher): the generic
//! [`Sinks`], and the map's [`Hooks`], which installs the engine's observer while a sink is set.

#[cfg(not(feature = "metrics"))]
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwapOption;

use super::map::{AlarmState, Callback, RetentionAlarm, RetentionPolicy};
use crate::raw::{Observer, Snapshot};
#[cfg(feature = "metrics")]
use crate::stats::MapStats;

/// A sink that takes the snapshot itself (under a lock of its own, see
/// [`Hysteresis::check`](super::Hysteresis::check)) and returns it: an alarm.
pub(crate) trait Check<S> {
    /// Takes a snapshot with `snapshot`, judges it, runs any callback; returns the snapshot.
    fn check(&self, snapshot: &dyn Fn() -> S) -> S;
}

/// A sink that is handed a snapshot taken for it: a metrics publisher.
// Without `metrics`, the only publisher type is `NoPublisher`, which has no value: nothing
// calls `publish`.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) trait Publish<S> {
    /// Publishes `stats`.
    fn publish(&self, stats: &S);
}

/// The publisher type of a build without the `metrics` feature: none can exist.
#[cfg(not(feature = "metrics"))]
pub(crate) enum NoPublisher {}

#[cfg(not(feature = "metrics"))]
impl<S> Publish<S> for NoPublisher {
    fn publish(&self, _: &S) {
        match *self {}
    }
}

/// The sinks behind one hook: the alarm `A` and the metrics publisher `P`, each optional, both
/// called with the same snapshot.
pub(crate) struct Sinks<A, P> {
    pub(crate) alarm: ArcSwapOption<A>,
    #[cfg(feature = "metrics")]
    pub(crate) metrics: ArcSwapOption<P>,
    #[cfg(not(feature = "metrics"))]
    metrics: PhantomData<fn(&P)>,
    /// Whether any sink was set after the last change. Held while the sinks change, never
    /// while they run.
    config: Mutex<bool>,
}

impl<A, P> Default for Sinks<A, P> {
    fn default() -> Self {
        Sinks {
            alarm: ArcSwapOption::empty(),
            #[cfg(feature = "metrics")]
            metrics: ArcSwapOption::empty(),
            #[cfg(not(feature = "metrics"))]
            metrics: PhantomData,
            config: Mutex::new(false),
        }
    }
}

impl<A, P> Sinks<A, P> {
    /// Runs the sinks on one snapshot: the alarm takes it (under its own lock) and the
    /// publisher reuses it; with no alarm, the snapshot is taken for the publisher alone, and
    /// with no sink, not at all.
    pub(crate) fn notify<S>(&self, snapshot: &dyn Fn() -> S)
    where
        A: Check<S>,
        P: Publish<S>,
    {
        // `load_full`, not a guard: the callback may run long and may replace these sinks.
        let stats = match self.alarm.load_full() {
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

    /// Whether any sink is set.
    pub(crate) fn any(&self) -> bool {
        #[cfg(feature = "metrics")]
        if self.metrics.load().is_some() {
            return true;
        }
        self.alarm.load().is_some()
    }

    /// Changes the sinks with `change`, then calls `settle` with the sinks, whether any sink was
    /// set before and whether one is now, all under the configuration lock (so the hook's own
    /// state, which `settle` updates, follows the changes in their order).
    pub(crate) fn update<R>(
        &self,
        change: impl FnOnce(&Self) -> R,
        settle: impl FnOnce(&Self, bool, bool),
    ) -> R {
        let mut any = self.config.lock().unwrap_or_else(PoisonError::into_inner);
        let r = change(self);
        let now = self.any();
        settle(self, *any, now);
        *any = now;
        r
    }
}

/// The metrics publisher of a map.
#[cfg(feature = "metrics")]
type MapPublisher = super::metrics::Publisher;
#[cfg(not(feature = "metrics"))]
type MapPublisher = NoPublisher;

/// The sinks of a map.
type MapSinks = Sinks<AlarmState, MapPublisher>;

/// A map's fan-out: owns the sinks and installs one observer in the engine while any sink is
/// set (and none while no sink is, so an unwatched map pays nothing beyond the engine's check
/// for an empty hook).
#[derive(Default)]
pub(crate) struct Hooks {
    sinks: Arc<MapSinks>,
}

impl Hooks {
    /// Changes the sinks with `change`, then installs or removes the observer through `install`
    /// to match.
    fn update<R>(
        &self,
        install: impl FnOnce(Option<Observer>),
        change: impl FnOnce(&MapSinks) -> R,
    ) -> R {
        self.sinks.update(change, |_, installed, want| {
            if want != installed {
                let observer = want.then(|| {
                    let sinks = Arc::clone(&self.sinks);
                    Observer(Box::new(move |snapshot: &Snapshot<'_>| {
                        sinks.notify(snapshot)
                    }))
                });
                install(observer);
            }
        })
    }

    /// Installs a new alarm (replacing any) and returns its handle; the caller checks it once.
    pub(crate) fn set_alarm(
        &self,
        policy: RetentionPolicy,
        on_alarm: Callback,
        install: impl FnOnce(Option<Observer>),
    ) -> RetentionAlarm {
        let state = Arc::new(AlarmState::new(policy, on_alarm));
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
        let publisher = Arc::new(MapPublisher::new(name));
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
