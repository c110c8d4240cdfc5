//! [`PoolStats`], a snapshot of a pool's counters.

use std::fmt;

/// A snapshot of a [`MapPool`](super::MapPool)'s counters, from
/// [`MapPool::stats`](super::MapPool::stats).
///
/// Counters start at zero when the pool is built and only grow (`idle` and
/// `retained_bytes` are gauges). They are sums over the pool's stripes and its
/// per-thread caches (see [`MapPool`](super::MapPool)'s module docs); a
/// thread's cached object counts in `idle` and `retained_bytes`. Taken while
/// other threads use the pool, the fields may come from slightly different
/// instants; once those threads are joined they are exact, and then:
///
/// * `gets == hits + misses`;
/// * `gets == returns + detached + (guards still alive)`, where
///   `returns` also counts objects handed over with
///   [`MapPool::put`](super::MapPool::put);
/// * `idle == prefill + returns - returns_dropped - hits`, where `prefill` is
///   the number of objects the builder created.
///
/// Its [`Display`](fmt::Display) form fits in a log line.
///
/// ```
/// use std::collections::HashMap;
/// use tiermap::pool::MapPool;
///
/// let pool: MapPool<HashMap<u64, u64>> = MapPool::new();
/// drop(pool.get()); // a miss, then a return
/// drop(pool.get()); // a hit, then a return
/// let stats = pool.stats();
/// assert_eq!((stats.gets, stats.hits, stats.misses), (2, 1, 1));
/// assert_eq!((stats.returns, stats.idle), (2, 1));
/// println!("map pool: {stats}");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Objects handed out by `get` and `get_owned`.
    pub gets: u64,
    /// Gets served by an idle object (from the thread's cache or a stripe).
    /// Derived, not counted: `gets - misses`.
    pub hits: u64,
    /// Gets that created a new object (with `Recycle::with_capacity`).
    pub misses: u64,
    /// Objects given back: guards dropped plus `put` calls, whatever became of
    /// the object.
    pub returns: u64,
    /// Returns whose capacity was over the ceiling, emptied and shrunk with
    /// `Recycle::reset_and_shrink` (whether they were kept or not).
    pub returns_shrunk: u64,
    /// Returns that were dropped instead of kept: still over the ceiling after
    /// the shrink, no room under `max_idle`, or a panic in `reset`.
    pub returns_dropped: u64,
    /// Guards turned into plain objects with `Pooled::detach` or
    /// `OwnedPooled::detach`.
    pub detached: u64,
    /// Objects idle in the pool now: in the shared stripes and in the threads'
    /// caches (one at most per thread).
    pub idle: usize,
    /// Approximate heap bytes held by the idle objects (the sum of their
    /// `Recycle::heap_bytes`, taken when each was stored).
    pub retained_bytes: usize,
}

impl PoolStats {
    /// The fraction of gets that reused an object, between 0 and 1 (1 when
    /// nothing was taken yet).
    ///
    /// ```
    /// use tiermap::pool::MapPool;
    ///
    /// let pool: MapPool<Vec<u8>> = MapPool::builder().prefill(1).build();
    /// drop(pool.get());
    /// assert_eq!(pool.stats().hit_rate(), 1.0);
    /// ```
    #[must_use]
    pub fn hit_rate(&self) -> f64 {
        if self.gets == 0 {
            1.0
        } else {
            self.hits as f64 / self.gets as f64
        }
    }
}

/// Formats a byte count with a binary unit (`512 B`, `34.0 KiB`, `1.5 MiB`).
struct Bytes(usize);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
        if self.0 < 1024 {
            return write!(f, "{} B", self.0);
        }
        let mut value = self.0 as f64 / 1024.0;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        write!(f, "{value:.1} {}", UNITS[unit])
    }
}

/// One line, for logs:
/// `gets 3 (hits 2, misses 1, 66.7% hit), returns 3 (shrunk 0, dropped 1),
/// detached 0, idle 2 holding 128 B`.
impl fmt::Display for PoolStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "gets {} (hits {}, misses {}, {:.1}% hit), returns {} (shrunk {}, dropped {}), \
             detached {}, idle {} holding {}",
            self.gets,
            self.hits,
            self.misses,
            self.hit_rate() * 100.0,
            self.returns,
            self.returns_shrunk,
            self.returns_dropped,
            self.detached,
            self.idle,
            Bytes(self.retained_bytes),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_reads_as_one_line() {
        let stats = PoolStats {
            gets: 3,
            hits: 2,
            misses: 1,
            returns: 3,
            returns_shrunk: 0,
            returns_dropped: 1,
            detached: 0,
            idle: 2,
            retained_bytes: 128,
        };
        assert_eq!(
            stats.to_string(),
            "gets 3 (hits 2, misses 1, 66.7% hit), returns 3 (shrunk 0, dropped 1), \
             detached 0, idle 2 holding 128 B"
        );
    }

    #[test]
    fn bytes_use_binary_units() {
        assert_eq!(Bytes(0).to_string(), "0 B");
        assert_eq!(Bytes(1023).to_string(), "1023 B");
        assert_eq!(Bytes(34 * 1024).to_string(), "34.0 KiB");
        assert_eq!(Bytes(3 << 19).to_string(), "1.5 MiB");
        assert_eq!(Bytes(5 << 30).to_string(), "5.0 GiB");
    }
}
