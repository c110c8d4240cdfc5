//! Model 20 (four tests): the split of a map built small (`RawMap::split`) racing the operations of another
//! thread that may have picked the split shard before the split.
//!
//! The map splits at 2 live keys (`loom_split_at`) into two shards; keys `IN_0` and `IN_1` go
//! to different new shards. The splitting thread iterates, which promotes the dirty tier (it
//! holds both keys) and then, as the observation that follows the promotion, splits. The other
//! thread meanwhile inserts a new key, reads, or removes: an operation that loaded the shard
//! array before the split works on the old shard, whose read tier still holds every key (the
//! entries are shared with the new shards), and anything of it that takes the old shard's lock
//! is forwarded to the key's new shard. What the models check: no key is lost or seen twice,
//! values are the ones written, `len` stays exact (what the old shard counts after the split
//! is added in, `RawMap::residual`), and every key and value is dropped once. Mutations:
//! `split_no_forward` (a write under the old shard's lock stays there: the new key is lost),
//! `split_no_residual` (a removal counted in the old shard after the split is not seen by
//! `len`), `split_relaxed_root` (the new shard array published without release: a thread that
//! loads it reads shards whose creation it has not seen).
#![cfg(tiermap_loom)]

use loom::sync::Arc;
use loom::thread;
use tiermap_loom_tests::*;

use crate::drop_map;

/// A key of each of the two shards the split makes.
const IN_0: u32 = 2;
const IN_1: u32 = 1;
/// A new key, inserted while the map splits.
const NEW: u32 = 3;

/// A one-shard model map that splits at 2 live keys, holding `IN_0` and `IN_1` in its dirty
/// tier (its read tier empty): the next promotion makes it due.
fn splitting_map(t: &std::sync::Arc<Tracker>) -> Arc<Map> {
    assert_eq!((shard_of(IN_0, 2), shard_of(IN_1, 2)), (0, 1), "key choice");
    let mut map = new_map();
    map.loom_split_at(2);
    for (k, v) in [(IN_0, 10), (IN_1, 20)] {
        assert!(map.insert(t.key(k), t.val(v)).is_none());
    }
    assert_eq!(map.shard_count(), 1);
    Arc::new(map)
}

/// The splitting thread: an iteration (promotes, then splits, when it observes).
fn split_in_thread(map: &Arc<Map>) -> thread::JoinHandle<Vec<(u32, u64)>> {
    let map = map.clone();
    thread::spawn(move || snapshot(&map))
}

#[test]
fn split_vs_insert_and_reads() {
    check("split_vs_insert_and_reads", 1, || {
        let t = Tracker::new();
        let map = splitting_map(&t);
        let splitter = split_in_thread(&map);
        assert!(map.insert(t.key(NEW), t.val(30)).is_none());
        assert_eq!(get(&map, IN_1), Some(20), "key lost across the split");
        assert_eq!(get(&map, NEW), Some(30), "inserted key lost");
        let seen = splitter.join().unwrap();
        // The iteration saw both old keys, and the new one at most once.
        assert!(
            seen == [(IN_1, 20), (IN_0, 10)] || seen == [(IN_1, 20), (IN_0, 10), (NEW, 30)],
            "iteration across the split: {seen:?}"
        );
        assert_eq!(map.shard_count(), 2, "not split");
        assert_eq!(snapshot(&map), [(IN_1, 20), (IN_0, 10), (NEW, 30)]);
        assert_eq!(map.len(), 3);
        drop_map(map);
        t.assert_all_dropped_once();
    });
}

#[test]
fn split_vs_remove() {
    check("split_vs_remove", 1, || {
        let t = Tracker::new();
        let map = splitting_map(&t);
        let splitter = split_in_thread(&map);
        assert_eq!(map.remove(&IN_0).map(|v| v.get()), Some(10));
        assert_eq!(get(&map, IN_0), None, "removed key still there");
        let seen = splitter.join().unwrap();
        assert!(
            seen == [(IN_1, 20)] || seen == [(IN_1, 20), (IN_0, 10)],
            "iteration across the split: {seen:?}"
        );
        assert_eq!(snapshot(&map), [(IN_1, 20)]);
        assert_eq!(map.len(), 1, "count across the split");
        drop_map(map);
        t.assert_all_dropped_once();
    });
}

#[test]
fn split_vs_clear() {
    check("split_vs_clear", 1, || {
        let t = Tracker::new();
        let map = splitting_map(&t);
        let splitter = split_in_thread(&map);
        // `clear` locks every shard of the array it loaded: if that is the one-shard array
        // and the split froze its shard meanwhile, it starts over on the new shards.
        map.clear();
        assert_eq!(get(&map, IN_0), None, "key present after clear");
        assert_eq!(get(&map, IN_1), None, "key present after clear");
        let seen = splitter.join().unwrap();
        assert!(
            seen.is_empty() || seen == [(IN_1, 20), (IN_0, 10)],
            "iteration across the split and the clear: {seen:?}"
        );
        assert_eq!(snapshot(&map), [], "cleared map not empty");
        assert_eq!(map.len(), 0, "count after clear");
        drop_map(map);
        t.assert_all_dropped_once();
    });
}

/// The split with a migration under way: the other thread's new key may arrive between the
/// promotion (by this thread's iteration) and the split that follows it, starting the next
/// migration; the split then takes the keys of both tiers (the read tier's beyond the
/// migration cursor, and the dirty tier's, the new key among them). (The splitting thread is
/// the model's main thread here, so that this interleaving needs one preemption.)
#[test]
fn split_mid_migration_vs_insert() {
    check("split_mid_migration_vs_insert", 1, || {
        let t = Tracker::new();
        let map = splitting_map(&t);
        let inserter = {
            let map = map.clone();
            let t = t.clone();
            thread::spawn(move || {
                assert!(map.insert(t.key(NEW), t.val(30)).is_none());
                assert_eq!(get(&map, NEW), Some(30), "inserted key lost");
            })
        };
        let seen = snapshot(&map);
        assert!(
            seen == [(IN_1, 20), (IN_0, 10)] || seen == [(IN_1, 20), (IN_0, 10), (NEW, 30)],
            "iteration across the split: {seen:?}"
        );
        inserter.join().unwrap();
        assert_eq!(map.shard_count(), 2, "not split");
        assert_eq!(snapshot(&map), [(IN_1, 20), (IN_0, 10), (NEW, 30)]);
        assert_eq!(map.len(), 3);
        drop_map(map);
        t.assert_all_dropped_once();
    });
}
