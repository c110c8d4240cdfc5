//! Model 15: a map dropped while another map's operations run its deferred closures (issue 13).
//!
//! In normal builds every map shares crossbeam-epoch's global collector, so the deferral that
//! ends a map's grace period (`Graveyard::defer`'s closure, which moves retired items to
//! `ready`) can run on any thread, at any later collection, after the map is gone. Under loom
//! each map owns a collector; here map B shares map A's (`loom_share_collector`), so B's
//! operations on another thread collect A's deferral while the main thread drops A.
//!
//! What must hold: the closure owns a count of A's graveyard (it outlives A), finds it closed
//! after A's drop and does nothing; A's drop frees everything A retired (grace period or not)
//! exactly once; nothing of B is disturbed. The seeded mutation `expire_borrows_yard` (the
//! closure borrows the graveyard instead of owning a count) makes the closure touch freed
//! memory when it runs after the drop.
#![cfg(tiermap_loom)]

use loom::sync::Arc;
use loom::thread;
use tiermap_loom_tests::*;

use crate::drop_map;

#[test]
fn map_dropped_while_another_map_runs_its_deferral() {
    check(
        "drop_burial::map_dropped_while_another_map_runs_its_deferral",
        2,
        || {
            let t = Tracker::new();
            let a = new_map();
            let mut b = new_map();
            b.loom_share_collector(&a);
            fill_read(&t, &a, &[(1, 10), (2, 20)]);
            // Two removals fill a value batch (2 slots under loom): the second seals it, queues it
            // in A's graveyard and defers its grace period in the shared collector.
            assert_eq!(a.remove(&1).map(|v| v.get()), Some(10));
            assert_eq!(a.remove(&2).map(|v| v.get()), Some(20));
            let b = Arc::new(b);

            let other = {
                let b = b.clone();
                let t = t.clone();
                thread::spawn(move || {
                    // Each operation pins the shared collector and may run A's deferral.
                    assert!(b.insert(t.key(5), t.val(50)).is_none());
                    assert_eq!(get(&b, 5), Some(50));
                })
            };
            drop(a);
            other.join().unwrap();

            assert_eq!(snapshot(&b), [(5, 50)]);
            // The last map holding the collector: dropping it runs every deferral still queued,
            // A's included if B's operations did not.
            drop_map(b);
            t.assert_all_dropped_once();
        },
    );
}
