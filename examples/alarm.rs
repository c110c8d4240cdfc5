//! The retention alarm on the workload that leaks in Go's `sync.Map`, and on the one way
//! tiermap can still hold memory back.
//!
//! 1. A read-mostly session table: a million sessions are loaded and read until they all sit
//!    in the read tier, then all but a thousand log out, and no new session arrives. Go's
//!    `sync.Map` deletes a read-tier key by setting its entry to nil in place; the entries go
//!    only when a new key is stored and the dirty map is rebuilt, which this workload never
//!    does, so Go keeps all million entries for the thousand live ones. tiermap purges them by
//!    itself: the alarm, set well above tiermap's normal levels, stays quiet. The same policy
//!    applied to a model of what Go would hold trips two conditions.
//! 2. A guard kept alive while the map grows (a `Pinned` handle parked in a long task) holds
//!    every superseded table back: the retired-bytes condition fires once, and re-arms once the
//!    guard is dropped and the tables are freed.
//! 3. A `MapPool` with its capacity ceiling turned off (Go's `sync.Pool` behaviour) is fed one
//!    huge request among small ones: the huge map is kept idle, and the pool's alarm fires as
//!    it comes back. The same traffic through a pool with the default ceiling stays quiet.
//!
//! `cargo run --release --example alarm`

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use std::collections::HashMap;

use tiermap::pool::MapPool;
use tiermap::{MapStats, PoolRetentionPolicy, RetentionCondition, RetentionPolicy, SyncMap};

const SESSIONS: u64 = 1_000_000;
const STAYING: u64 = 1_000;

fn main() {
    let policy = RetentionPolicy::new()
        .max_bytes_per_entry(1024) // tiermap stays under ~200 B/entry for u64 -> u64
        .max_deleted_ratio(0.5) // tiermap compacts at about 1/3
        .max_retired_bytes(32 << 20);
    println!("policy: {policy:?}\n");
    go_leak_workload(policy);
    long_lived_guard(policy);
    misconfigured_pool();
}

fn go_leak_workload(policy: RetentionPolicy) {
    println!("1. read-mostly map, {SESSIONS} sessions, all but {STAYING} deleted, no new key");
    let sessions: SyncMap<u64, u64> = SyncMap::new();
    let alarms = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&alarms);
    let alarm = sessions.set_retention_alarm(policy, move |alert| {
        counter.fetch_add(1, Relaxed);
        println!("   ALARM {alert}");
    });

    let t = Instant::now();
    for id in 0..SESSIONS {
        sessions.insert(id, id);
    }
    // Read-mostly: lookups of unknown ids miss, which moves the promotion clock, until the
    // dirty tier is promoted and every session sits in the lock-free read tier (as in Go).
    let mut misses = 0u64;
    while sessions.stats().dirty_capacity > 0 && misses < 8 * SESSIONS {
        for id in 0..10_000 {
            assert!(sessions.get(&(SESSIONS + id)).is_none());
        }
        misses += 10_000;
    }
    let hits = (0..SESSIONS)
        .filter(|id| sessions.get(id).is_some())
        .count();
    let loaded = sessions.stats();
    println!("   loaded:  {loaded}  ({misses} misses, {hits} hits)");

    // Logouts: lock-free deletes in the read tier; no new session arrives.
    let mut peak = loaded;
    for id in STAYING..SESSIONS {
        sessions.remove(&id);
        if id % 10_000 == 0 {
            let s = sessions.stats();
            if s.held_bytes > peak.held_bytes || s.deleted > peak.deleted {
                peak = s;
            }
        }
    }
    let after = sessions.stats();
    println!("   after:   {after}");
    println!(
        "   tiermap: {:.0} B/entry, deleted ratio {:.2}; alarm fired {} time(s) in {:.2?}",
        RetentionCondition::BytesPerEntry.measure(&after),
        RetentionCondition::DeletedRatio.measure(&after),
        alarm.fired(),
        t.elapsed(),
    );
    assert_eq!(
        alarms.load(Relaxed),
        0,
        "tiermap must stay under the policy"
    );

    // What Go's design would hold at the end: every entry of the loaded read map, all but
    // STAYING of them deleted (nil) and never purged, since no new key is ever stored.
    let mut go = MapStats::default();
    go.len = STAYING as usize;
    go.deleted = (SESSIONS - STAYING) as usize;
    go.held_bytes = loaded.held_bytes; // the same table and entries, kept
    go.read_capacity = loaded.read_capacity;
    let tripped: Vec<_> = policy.exceeded(&go).collect();
    println!("   Go model: {go}");
    println!(
        "   Go model: {:.0} B/entry, deleted ratio {:.3}; the same policy trips {tripped:?}\n",
        RetentionCondition::BytesPerEntry.measure(&go),
        RetentionCondition::DeletedRatio.measure(&go),
    );
    assert!(tripped.contains(&RetentionCondition::BytesPerEntry));
    assert!(tripped.contains(&RetentionCondition::DeletedRatio));
}

fn long_lived_guard(policy: RetentionPolicy) {
    println!("2. a guard kept alive while the map grows");
    let map: SyncMap<u64, u64> = SyncMap::new();
    let alarm = map.set_retention_alarm(policy, |alert| println!("   ALARM {alert}"));
    {
        let parked = map.pin(); // e.g. an iteration left half-way in a long task
        for k in 0..2_000_000 {
            map.insert(k, k);
        }
        println!("   with the guard: {}", map.stats());
        assert_eq!(alarm.fired(), 1, "one crossing, one alarm");
        drop(parked);
    }
    let pending = map.reclaim();
    // The next checks (every 64 slow-path operations) see the tables gone and re-arm.
    for k in 0..200 {
        map.insert(u64::MAX - k, k);
    }
    println!(
        "   guard dropped:  {} (pending after reclaim: {pending} B)",
        map.stats()
    );
    println!(
        "   retired_bytes tripped: {}; fired {} time(s), {} panic(s)",
        alarm.is_tripped(RetentionCondition::RetiredBytes),
        alarm.fired(),
        alarm.panics()
    );
    assert!(!alarm.is_tripped(RetentionCondition::RetiredBytes));
}

fn misconfigured_pool() {
    println!("\n3. a pool of HashMap<u64, u64> fed 1000 small requests and one huge one");
    let policy = PoolRetentionPolicy::new().max_retained_bytes(8 << 20);
    for (name, pool) in [
        (
            "ceiling off",
            MapPool::<HashMap<u64, u64>>::builder()
                .capacity_ceiling(None)
                .build(),
        ),
        ("default ceiling", MapPool::new()),
    ] {
        let alarm = pool.set_retention_alarm(policy, |alert| println!("   ALARM {alert}"));
        for request in 0..1000u64 {
            let entries = if request == 500 { 2_000_000 } else { 100 };
            let mut map = pool.get();
            map.extend((0..entries).map(|k| (k, k)));
        }
        println!(
            "   {name:<15}: {}; alarm fired {} time(s)",
            pool.stats(),
            alarm.fired()
        );
        assert_eq!(alarm.fired(), u64::from(name == "ceiling off"));
    }
}
