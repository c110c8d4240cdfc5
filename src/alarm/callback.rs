//! [`Callbacks`]: runs an alarm's callback, counting its calls and its (caught) panics.

use std::panic::{catch_unwind, AssertUnwindSafe};
// The atomics come from the facade (loom's in model-checking builds); loom re-exports std's
// `Ordering`, so it is taken from std. No atomic here lives in a `static` (loom's cannot).
use std::sync::atomic::Ordering::Relaxed;

use crate::facade::AtomicU64;

/// How many times an alarm called its callback, and how many of those calls panicked.
pub(crate) struct Callbacks {
    fired: AtomicU64,
    panics: AtomicU64,
}

impl Default for Callbacks {
    fn default() -> Self {
        Callbacks {
            fired: AtomicU64::new(0),
            panics: AtomicU64::new(0),
        }
    }
}

impl Callbacks {
    /// Runs an alarm callback, counting the call and, if it panics, the panic (caught).
    pub(crate) fn run(&self, callback: impl FnOnce()) {
        // Relaxed: statistics.
        self.fired.fetch_add(1, Relaxed);
        // AssertUnwindSafe: after a panic we touch none of the callback's state, only count it;
        // the alarm's own state was settled before the call (the crossing counts as reported),
        // and no lock of the map or pool is held here.
        if let Err(payload) = catch_unwind(AssertUnwindSafe(callback)) {
            self.panics.fetch_add(1, Relaxed);
            // A payload whose destructor panics would escape here; drop it under a guard too.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
        }
    }

    /// Calls so far.
    pub(crate) fn fired(&self) -> u64 {
        // Relaxed: a statistic; a call counted concurrently is seen by a later read.
        self.fired.load(Relaxed)
    }

    /// Calls that panicked so far.
    pub(crate) fn panics(&self) -> u64 {
        // Relaxed: a statistic, as `fired`.
        self.panics.load(Relaxed)
    }
}
