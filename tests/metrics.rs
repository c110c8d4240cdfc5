//! `publish_metrics` (feature `metrics`): a test recorder sees the expected gauges and counters
//! after a known sequence of operations, per named map, alongside a retention alarm.
#![cfg(feature = "metrics")]

use std::collections::HashMap;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tiermap::{RetentionPolicy, SyncMap};

/// The metrics recorded since the last read, by (name, `map` or `pool` label). Reading resets them (the
/// debugging recorder swaps values out), so a metric the map did not set again reads as absent
/// or 0.
fn read(snapshotter: &Snapshotter) -> HashMap<(String, String), f64> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _unit, _desc, value)| {
            let key = key.key();
            let map = key
                .labels()
                .find(|l| l.key() == "map" || l.key() == "pool")
                .map(|l| l.value().to_string())
                .unwrap_or_default();
            let value = match value {
                DebugValue::Gauge(g) => g.0,
                DebugValue::Counter(c) => c as f64,
                DebugValue::Histogram(_) => unreachable!("tiermap publishes no histogram"),
            };
            ((key.name().to_string(), map), value)
        })
        .collect()
}

fn get(m: &HashMap<(String, String), f64>, name: &str, map: &str) -> f64 {
    *m.get(&(name.to_string(), map.to_string()))
        .unwrap_or_else(|| panic!("no {name}{{map={map}}} in {m:?}"))
}

#[test]
fn gauges_follow_a_known_sequence() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let map: SyncMap<u64, u64> = SyncMap::new();
    // The handles bind to the recorder current at this call; updates from any thread reach it.
    metrics::with_local_recorder(&recorder, || map.publish_metrics("sessions"));

    let m = read(&snapshotter);
    assert_eq!(get(&m, "tiermap_map_entries", "sessions"), 0.0);
    assert_eq!(get(&m, "tiermap_map_deleted_entries", "sessions"), 0.0);
    assert_eq!(
        get(&m, "tiermap_map_held_bytes", "sessions"),
        map.stats().held_bytes as f64
    );
    assert_eq!(get(&m, "tiermap_map_retired_bytes", "sessions"), 0.0);
    assert_eq!(get(&m, "tiermap_map_promotions_total", "sessions"), 0.0);
    assert_eq!(get(&m, "tiermap_map_compactions_total", "sessions"), 0.0);

    // 1000 new keys: 1000 slow-path operations, so the hook published on its own.
    for i in 0..1000 {
        map.insert(i, i);
    }
    let m = read(&snapshotter);
    let entries = get(&m, "tiermap_map_entries", "sessions");
    assert!(entries > 0.0 && entries <= 1000.0, "{entries}");
    assert!(get(&m, "tiermap_map_promotions_total", "sessions") >= 1.0);

    // Remove 100, then publish at once (calling again replaces the publisher and publishes).
    for i in 0..100 {
        map.remove(&i);
    }
    metrics::with_local_recorder(&recorder, || map.publish_metrics("sessions"));
    let s = map.stats();
    let m = read(&snapshotter);
    assert_eq!(get(&m, "tiermap_map_entries", "sessions"), 900.0);
    assert_eq!(
        get(&m, "tiermap_map_deleted_entries", "sessions"),
        s.deleted as f64
    );
    assert_eq!(
        get(&m, "tiermap_map_held_bytes", "sessions"),
        s.held_bytes as f64
    );
    assert_eq!(
        get(&m, "tiermap_map_retired_bytes", "sessions"),
        s.retired_bytes as f64
    );
    assert_eq!(
        get(&m, "tiermap_map_promotions_total", "sessions"),
        s.promotions as f64
    );
    assert_eq!(
        get(&m, "tiermap_map_compactions_total", "sessions"),
        s.compactions as f64
    );

    // `clear` runs the hook: the gauges show the empty map, and the old one retired, at once
    // (reading reset them to 0, so these values were set by the hook).
    map.clear();
    let m = read(&snapshotter);
    let s = map.stats();
    assert_eq!(s.len, 0);
    assert_eq!(
        get(&m, "tiermap_map_held_bytes", "sessions"),
        s.held_bytes as f64
    );
    assert!(get(&m, "tiermap_map_retired_bytes", "sessions") > 0.0);

    // After `unpublish_metrics`, nothing is set any more (the recorder reads 0 after a read).
    assert!(map.unpublish_metrics());
    for i in 0..1000 {
        map.insert(i, i);
    }
    let m = read(&snapshotter);
    assert_eq!(get(&m, "tiermap_map_entries", "sessions"), 0.0);
}

#[test]
fn named_maps_publish_separately_and_compose_with_the_alarm() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let sessions: SyncMap<u64, u64> = (0..500).map(|i| (i, i)).collect();
    let cache: SyncMap<u64, String> = (0..70).map(|i| (i, i.to_string())).collect();
    metrics::with_local_recorder(&recorder, || {
        sessions.publish_metrics("sessions");
        cache.publish_metrics("cache");
    });
    let m = read(&snapshotter);
    assert_eq!(get(&m, "tiermap_map_entries", "sessions"), 500.0);
    assert_eq!(get(&m, "tiermap_map_entries", "cache"), 70.0);

    // Both sinks on one hook: the alarm fires and the metrics keep flowing; removing either
    // leaves the other working.
    let alarm = sessions.set_retention_alarm(
        RetentionPolicy::new()
            .max_bytes_per_entry(1)
            .min_held_bytes(0),
        |_| {},
    );
    assert_eq!(alarm.fired(), 1);
    for i in 500..700 {
        sessions.insert(i, i);
    }
    let m = read(&snapshotter);
    assert!(get(&m, "tiermap_map_entries", "sessions") > 500.0);
    assert_eq!(
        get(&m, "tiermap_map_entries", "cache"),
        0.0,
        "cache did nothing"
    );

    assert!(sessions.clear_retention_alarm().is_some());
    sessions.clear();
    let m = read(&snapshotter);
    assert_eq!(
        get(&m, "tiermap_map_held_bytes", "sessions"),
        sessions.stats().held_bytes as f64
    );

    let alarm = sessions.set_retention_alarm(
        RetentionPolicy::new()
            .max_bytes_per_entry(1)
            .min_held_bytes(0),
        |_| {},
    );
    assert!(sessions.unpublish_metrics());
    sessions.clear(); // the hook still runs for the alarm
    assert_eq!(alarm.fired(), 1);
    for i in 0..300 {
        sessions.insert(i, i);
    }
    let m = read(&snapshotter);
    assert_eq!(
        get(&m, "tiermap_map_entries", "sessions"),
        0.0,
        "not published any more"
    );
}

#[test]
fn pool_counters_and_gauges() {
    use tiermap::pool::MapPool;
    use tiermap::PoolRetentionPolicy;

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let pool: MapPool<Vec<u64>> = MapPool::builder()
        .capacity_ceiling(1000)
        .max_idle(1)
        .shards(1)
        .build();
    metrics::with_local_recorder(&recorder, || pool.publish_metrics("buffers"));
    let alarm = pool.set_retention_alarm(
        PoolRetentionPolicy::new().max_retained_bytes(1 << 30),
        |_| {},
    );

    // A known sequence: a miss; a hit; a return over the ceiling (shrunk); two objects out at
    // once, so one return finds the single idle slot taken (dropped).
    drop(pool.get());
    let mut v = pool.get();
    v.extend(0..10_000);
    drop(v);
    let (a, b) = (pool.get(), pool.get());
    drop(a);
    drop(b);
    metrics::with_local_recorder(&recorder, || pool.publish_metrics("buffers"));
    let s = pool.stats();
    assert_eq!((s.gets, s.hits, s.misses), (4, 2, 2), "{s}");
    assert_eq!(
        (s.returns_shrunk, s.returns_dropped, s.idle),
        (1, 1, 1),
        "{s}"
    );

    let m = read(&snapshotter);
    let pool_metric = |name: &str| get(&m, name, "buffers");
    assert_eq!(pool_metric("tiermap_pool_gets_total"), 4.0);
    assert_eq!(pool_metric("tiermap_pool_hits_total"), 2.0);
    assert_eq!(pool_metric("tiermap_pool_misses_total"), 2.0);
    assert_eq!(pool_metric("tiermap_pool_returns_shrunk_total"), 1.0);
    assert_eq!(pool_metric("tiermap_pool_returns_dropped_total"), 1.0);
    assert_eq!(pool_metric("tiermap_pool_idle"), 1.0);
    assert_eq!(
        pool_metric("tiermap_pool_retained_bytes"),
        s.retained_bytes as f64
    );
    assert_eq!(alarm.fired(), 0);
    assert!(pool.unpublish_metrics());
}
