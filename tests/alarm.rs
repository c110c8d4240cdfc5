//! The retention alarm on real maps: once per crossing, re-arming, callbacks that call the map,
//! panicking callbacks, and concurrent writers.
//!
//! The tests hold retired tables back with a long-lived guard, which pins the global epoch for
//! every map in the process; they take `SERIAL` so that one test's guard does not hold back
//! another's reclamation.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use tiermap::{RetentionAlert, RetentionCondition, RetentionPolicy, SyncMap};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Retired bytes above 256 KiB trip; at or below 128 KiB re-arm.
fn retired_policy() -> RetentionPolicy {
    RetentionPolicy::new()
        .max_retired_bytes(256 << 10)
        .hysteresis(0.5)
}

/// A callback that records every alert.
fn recorder() -> (
    Arc<Mutex<Vec<RetentionAlert>>>,
    impl Fn(&RetentionAlert) + Send + Sync + 'static,
) {
    let seen: Arc<Mutex<Vec<RetentionAlert>>> = Arc::default();
    let sink = Arc::clone(&seen);
    (seen, move |a: &RetentionAlert| {
        sink.lock().unwrap().push(*a)
    })
}

/// Inserts fresh keys `from..to` (each a slow-path operation; promotions retire tables).
fn fill(map: &SyncMap<u64, u64>, keys: std::ops::Range<u64>) {
    for k in keys {
        map.insert(k, k);
    }
}

/// Runs slow-path operations (fresh keys, then their removal) until the retired bytes that a
/// dropped guard held back are freed and a snapshot has shown it; returns that snapshot's
/// retired bytes as the map reports them now.
fn settle(map: &SyncMap<u64, u64>, scratch: u64) -> usize {
    map.reclaim();
    // 64 slow operations of a shard guarantee a check (a map built empty is split into
    // several shards once it grows: 128 per shard makes each one's count likely to pass 64);
    // the keys are removed again (also slow-path: they are dirty-only), so the map is
    // unchanged.
    let n = 128 * map.shard_count() as u64;
    for k in scratch..scratch + n {
        map.insert(k, k);
    }
    for k in scratch..scratch + n {
        map.remove(&k);
    }
    map.stats().retired_bytes
}

#[test]
fn fires_once_per_crossing_and_rearms() {
    let _serial = serial();
    let map: SyncMap<u64, u64> = SyncMap::new();
    let (seen, callback) = recorder();
    let alarm = map.set_retention_alarm(retired_policy(), callback);
    assert_eq!(alarm.fired(), 0, "a new map is quiet");

    // Crossing 1: a guard held across many promotions keeps every superseded table.
    let promotions_before = map.stats().promotions;
    {
        let guard = map.pin();
        fill(&map, 0..100_000);
        let s = map.stats();
        assert!(
            s.retired_bytes > 1 << 20,
            "the guard holds tables back: {s}"
        );
        // Many checks ran above the threshold (one after every promotion at least), one alert.
        assert!(s.promotions - promotions_before >= 5, "{s}");
        assert_eq!(alarm.fired(), 1);
        assert!(alarm.is_tripped(RetentionCondition::RetiredBytes));
        drop(guard);
    }
    let first = seen.lock().unwrap()[0];
    assert_eq!(first.condition, RetentionCondition::RetiredBytes);
    assert!(first.value > first.threshold);
    assert_eq!(first.threshold, (256 << 10) as f64);
    assert!(first.stats.retired_bytes > 256 << 10);

    // The guard is gone: the next checks see the tables freed and re-arm, without firing.
    let retired = settle(&map, 1 << 40);
    assert!(retired <= 128 << 10, "retired {retired}");
    assert!(!alarm.is_tripped(RetentionCondition::RetiredBytes));
    assert_eq!(alarm.fired(), 1);

    // Crossing 2 fires again, once.
    {
        let _guard = map.pin();
        fill(&map, 100_000..300_000);
        assert_eq!(alarm.fired(), 2);
    }
    settle(&map, 1 << 41);
    assert!(!alarm.is_tripped(RetentionCondition::RetiredBytes));
    assert_eq!(seen.lock().unwrap().len(), 2);
    assert_eq!(alarm.panics(), 0);
}

#[test]
fn installation_checks_at_once_and_clear_removes() {
    let _serial = serial();
    let map: SyncMap<u64, u64> = (0..10_000).map(|i| (i, i)).collect();
    let (seen, callback) = recorder();
    let alarm = map.set_retention_alarm(RetentionPolicy::new().max_bytes_per_entry(1), callback);
    assert_eq!(alarm.fired(), 1, "checked before returning");
    assert_eq!(
        seen.lock().unwrap()[0].condition,
        RetentionCondition::BytesPerEntry
    );

    let removed = map.clear_retention_alarm().expect("an alarm was set");
    assert_eq!(removed.fired(), 1);
    // Nothing runs any more, whatever happens: clear, refill, keep a guard across promotions.
    map.clear();
    let guard = map.pin();
    fill(&map, 0..50_000);
    drop(guard);
    assert_eq!(seen.lock().unwrap().len(), 1);

    // A replacement starts armed.
    let (seen2, callback2) = recorder();
    let alarm2 = map.set_retention_alarm(RetentionPolicy::new().max_bytes_per_entry(1), callback2);
    assert_eq!(alarm2.fired(), 1);
    assert_eq!(seen2.lock().unwrap().len(), 1);
}

#[test]
fn healthy_maps_stay_quiet() {
    let _serial = serial();
    // Thresholds far above what tiermap holds for u64 -> u64 (under 200 B per entry, deleted
    // ratio under 0.4 at any time), through growth, churn and mass deletion.
    let policy = RetentionPolicy::new()
        .max_bytes_per_entry(512)
        .max_deleted_ratio(0.5)
        .max_retired_bytes(64 << 20);
    let map: SyncMap<u64, u64> = SyncMap::new();
    let (seen, callback) = recorder();
    let alarm = map.set_retention_alarm(policy, callback);
    fill(&map, 0..200_000);
    for i in 0..200_000 {
        map.get(&i);
    }
    for i in 0..199_000 {
        map.remove(&i);
    }
    for i in 0..100_000u64 {
        map.insert(1_000_000 + i, i);
        map.remove(&(1_000_000 + i / 2));
    }
    map.clear();
    assert_eq!(alarm.fired(), 0, "{:?}", seen.lock().unwrap());
}

/// Runs `f` on another thread and fails the test if it does not finish in time (a deadlock).
fn within(secs: u64, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let worker = thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) => worker.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The worker panicked: report its panic.
            worker.join().unwrap();
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("deadlock: no progress in {secs} s"),
    }
}

#[test]
fn callback_may_call_the_map() {
    let _serial = serial();
    within(60, || {
        let map: Arc<SyncMap<u64, u64>> = Arc::new(SyncMap::new());
        let weak = Arc::downgrade(&map);
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let alarm = map.set_retention_alarm(retired_policy(), move |alert| {
            counter.fetch_add(1, Relaxed);
            let map = weak
                .upgrade()
                .expect("the map is alive while it runs callbacks");
            // Reads, writes that take the slow path (and so run the hook again, nested),
            // stats, iteration, reclamation, and re-installing the alarm itself.
            assert!(!map.is_empty());
            let _ = map.stats();
            for k in 0..200 {
                map.insert(u64::MAX - k, k);
            }
            for k in 0..200 {
                map.remove(&(u64::MAX - k));
            }
            map.for_each(|_, _| {});
            map.reclaim();
            let _ = alert.stats.retired_bytes;
            #[cfg(feature = "metrics")]
            map.publish_metrics("callback");
        });
        {
            let _guard = map.pin();
            fill(&map, 0..100_000);
        }
        assert_eq!(alarm.fired(), 1);
        assert_eq!(calls.load(Relaxed), 1);
        assert_eq!(alarm.panics(), 0);
        // Disarming from inside the callback: `clear_retention_alarm` and `set_retention_alarm`
        // take only the fan-out's own lock, never held while a callback runs.
        let weak = Arc::downgrade(&map);
        let alarm =
            map.set_retention_alarm(RetentionPolicy::new().max_bytes_per_entry(1), move |_| {
                let map = weak.upgrade().unwrap();
                assert!(map.clear_retention_alarm().is_some());
                map.clear();
            });
        assert_eq!(alarm.fired(), 1);
        assert!(map.is_empty(), "the callback cleared the map");
        assert!(map.clear_retention_alarm().is_none(), "it removed itself");
        map.insert(1, 1);
        assert_eq!(map.get_cloned(&1), Some(1));
    });
}

#[test]
fn panicking_callback_leaves_the_map_usable() {
    let _serial = serial();
    let map: SyncMap<u64, u64> = SyncMap::new();
    let alarm = map.set_retention_alarm(retired_policy(), |alert| {
        panic!("pager is down ({alert})");
    });
    {
        let _guard = map.pin();
        // The insert whose check fires the alarm returns normally.
        fill(&map, 0..100_000);
    }
    assert_eq!(alarm.fired(), 1);
    assert_eq!(alarm.panics(), 1);
    // Still tripped: no panic on every later check.
    assert!(alarm.is_tripped(RetentionCondition::RetiredBytes));

    // Every kind of operation still works, the slow path (the dirty lock) included.
    assert_eq!(map.len(), 100_000);
    assert_eq!(map.get_cloned(&99_999), Some(99_999));
    assert_eq!(map.insert(7, 70).as_deref(), Some(&7));
    assert!(map.insert(1 << 50, 1).is_none());
    assert_eq!(map.remove(&(1 << 50)).as_deref(), Some(&1));
    map.retain(|k, _| k % 2 == 0);
    assert_eq!(map.len(), 50_000);
    map.shrink_to_fit();
    let s = map.stats();
    assert_eq!((s.len, s.deleted), (50_000, 0), "{s}");

    // It re-arms, and a second crossing is caught and counted too.
    settle(&map, 1 << 40);
    assert!(!alarm.is_tripped(RetentionCondition::RetiredBytes));
    {
        let _guard = map.pin();
        fill(&map, 200_000..400_000);
    }
    assert_eq!((alarm.fired(), alarm.panics()), (2, 2));
    map.clear_and_release();
    assert!(map.is_empty());
}

#[test]
fn concurrent_writers_fire_once() {
    let _serial = serial();
    let map: Arc<SyncMap<u64, u64>> = Arc::new(SyncMap::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let alarm = map.set_retention_alarm(retired_policy(), move |_| {
        counter.fetch_add(1, Relaxed);
    });
    // The main thread's guard keeps every retired table while two writers promote many times
    // and both run checks far above the threshold.
    let guard = map.pin();
    let writers: Vec<_> = (0..2u64)
        .map(|t| {
            let map = Arc::clone(&map);
            thread::spawn(move || {
                for i in 0..60_000 {
                    map.insert(t << 32 | i, i);
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    assert!(map.stats().retired_bytes > 1 << 20);
    drop(guard);
    assert_eq!(calls.load(Relaxed), 1);
    assert_eq!(alarm.fired(), 1);
}

mod pool {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    use std::sync::Arc;

    use tiermap::pool::MapPool;
    use tiermap::PoolRetentionPolicy;

    /// No ceiling, as in Go: whatever comes back is kept at its size.
    fn unbounded() -> MapPool<HashMap<u64, u64>> {
        MapPool::builder()
            .capacity_ceiling(None)
            .max_idle(8)
            .build()
    }

    fn grow(pool: &MapPool<HashMap<u64, u64>>, entries: u64) {
        let mut map = pool.get();
        map.extend((0..entries).map(|k| (k, k)));
    }

    #[test]
    fn fires_once_per_crossing_and_rearms() {
        let pool = unbounded();
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let policy = PoolRetentionPolicy::new().max_retained_bytes(1 << 20);
        let alarm = pool.set_retention_alarm(policy, move |alert| {
            assert!(alert.retained_bytes > alert.threshold);
            counter.fetch_add(1, Relaxed);
        });
        // Small round trips: far below the threshold, whatever the count.
        for _ in 0..500 {
            grow(&pool, 10);
        }
        assert_eq!(alarm.fired(), 0);
        // One huge request: seen on its way back, at once.
        grow(&pool, 200_000);
        assert_eq!(alarm.fired(), 1);
        // It stays above: more returns (checks every 64) do not fire again.
        for _ in 0..500 {
            grow(&pool, 10);
        }
        assert_eq!(calls.load(Relaxed), 1);
        assert!(alarm.is_tripped());
        // `clear` drops the idle maps and re-arms; a second crossing fires again.
        pool.clear();
        assert!(!alarm.is_tripped());
        grow(&pool, 200_000);
        assert_eq!(alarm.fired(), 2);
        assert_eq!(alarm.panics(), 0);
    }

    /// Regression (issue 12): the periodic check counted returns per thread, across all pools.
    /// A thread alternating returns between two pools gave one of them only odd counts, so that
    /// pool's alarm never fired for a crossing that only the periodic check can see (many
    /// objects, each too small for the at-once check of a big object). Each pool must now be
    /// checked by the 64th return to it.
    #[test]
    fn periodic_check_counts_each_pool_separately() {
        // Threshold 16_000 B: the at-once check is for objects of 1_000 B or more.
        const THRESHOLD: usize = 16_000;
        const OBJECT: usize = 999;
        // Default ceiling (1024) and 64 idle objects: every 999-byte vector is kept.
        let pools: [MapPool<Vec<u8>>; 2] = [MapPool::new(), MapPool::new()];
        let alarms = pools.each_ref().map(|pool| {
            pool.set_retention_alarm(
                PoolRetentionPolicy::new().max_retained_bytes(THRESHOLD),
                |_| {},
            )
        });
        assert_eq!(alarms.each_ref().map(|a| a.fired()), [0, 0], "empty pools");
        // 64 returns to each, alternating; after the 17th each pool is over the threshold.
        for _ in 0..64 {
            for pool in &pools {
                pool.put(Vec::with_capacity(OBJECT));
            }
        }
        for pool in &pools {
            let stats = pool.stats();
            assert!(stats.retained_bytes > THRESHOLD, "{stats}");
            assert!(
                stats.retained_bytes / stats.idle < THRESHOLD / 16,
                "every object is below the at-once check: {stats}"
            );
        }
        assert_eq!(
            alarms.each_ref().map(|a| a.fired()),
            [1, 1],
            "each pool's periodic check saw its crossing"
        );
    }

    #[test]
    fn callback_may_use_the_pool_and_may_panic() {
        let pool = Arc::new(unbounded());
        let weak = Arc::downgrade(&pool);
        let alarm = pool.set_retention_alarm(
            PoolRetentionPolicy::new().max_retained_bytes(1 << 20),
            move |_| {
                let pool = weak.upgrade().unwrap();
                // Take and return objects, read stats, drop what is idle: no lock is held.
                drop(pool.get());
                let _ = pool.stats();
                pool.clear();
                panic!("after using the pool, the callback panics");
            },
        );
        grow(&pool, 200_000);
        assert_eq!((alarm.fired(), alarm.panics()), (1, 1));
        // The return completed, the callback's clear ran, and the pool works.
        assert_eq!(pool.stats().retained_bytes, 0);
        grow(&pool, 10);
        assert_eq!(pool.stats().idle, 1);
        assert!(pool.clear_retention_alarm().is_some());
        grow(&pool, 200_000);
        assert_eq!(alarm.fired(), 1, "removed");
    }
}
