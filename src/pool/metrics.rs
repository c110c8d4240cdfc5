//! The pool's `metrics` export (feature `metrics`): the [`PoolPublisher`] that sets a named
//! pool's gauges and counters from a [`PoolStats`] snapshot.

use metrics::{Counter, Gauge, Unit};

use super::PoolStats;
use crate::alarm::Publish;

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
}

impl Publish<PoolStats> for PoolPublisher {
    fn publish(&self, s: &PoolStats) {
        self.idle.set(s.idle as f64);
        self.retained_bytes.set(s.retained_bytes as f64);
        self.gets.absolute(s.gets);
        self.hits.absolute(s.hits);
        self.misses.absolute(s.misses);
        self.shrunk.absolute(s.returns_shrunk);
        self.dropped.absolute(s.returns_dropped);
    }
}
