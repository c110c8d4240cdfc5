//! The map's `metrics` export (feature `metrics`): metric names and the [`Publisher`] that
//! sets a named map's gauges and counters from a [`MapStats`] snapshot.

use metrics::{Counter, Gauge, Unit};

use super::Publish;
use crate::stats::MapStats;

/// Gauge: keys present ([`MapStats::len`]).
pub(crate) const ENTRIES: &str = "tiermap_map_entries";
/// Gauge: entries held for deleted keys ([`MapStats::deleted`]).
pub(crate) const DELETED: &str = "tiermap_map_deleted_entries";
/// Gauge: [`MapStats::held_bytes`].
pub(crate) const HELD_BYTES: &str = "tiermap_map_held_bytes";
/// Gauge: [`MapStats::spare_bytes`].
pub(crate) const SPARE_BYTES: &str = "tiermap_map_spare_bytes";
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
    spare_bytes: Gauge,
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
            SPARE_BYTES,
            Unit::Bytes,
            "Bytes of the map's entry blocks that hold no entry, kept for its next inserts."
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
            spare_bytes: metrics::gauge!(SPARE_BYTES, &labels),
            retired_bytes: metrics::gauge!(RETIRED_BYTES, &labels),
            promotions: metrics::counter!(PROMOTIONS, &labels),
            compactions: metrics::counter!(COMPACTIONS, &labels),
        }
    }
}

impl Publish<MapStats> for Publisher {
    fn publish(&self, s: &MapStats) {
        self.entries.set(s.len as f64);
        self.deleted.set(s.deleted as f64);
        self.held_bytes.set(s.held_bytes as f64);
        self.spare_bytes.set(s.spare_bytes as f64);
        self.retired_bytes.set(s.retired_bytes as f64);
        self.promotions.absolute(s.promotions);
        self.compactions.absolute(s.compactions);
    }
}
