//! `serde` support, behind the `serde` feature.
//!
//! * [`SyncMap`] serializes as a map (like `HashMap`) and deserializes from one;
//! * [`MapStats`], [`Released`] and [`PoolStats`] serialize as structs with their field names,
//!   so that a server can return them as JSON as they are (`examples/server` does).
//!
//! ```
//! use tiermap::SyncMap;
//!
//! let map: SyncMap<String, u32> = SyncMap::new();
//! map.insert("a".to_string(), 1);
//! let json = serde_json::to_string(&map).unwrap();
//! assert_eq!(json, r#"{"a":1}"#);
//!
//! let back: SyncMap<String, u32> = serde_json::from_str(r#"{"a":1,"b":2}"#).unwrap();
//! assert_eq!(back.len(), 2);
//! assert_eq!(back.get_cloned("b"), Some(2));
//!
//! let stats = serde_json::to_value(back.stats()).unwrap();
//! assert_eq!(stats["len"], 2);
//! ```

use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeStruct, Serializer};

use crate::pool::PoolStats;
use crate::{MapStats, Released, SyncMap};

/// Serializes the map as a map of its entries, in no particular order.
///
/// The entries are those of one pass over a pinned snapshot (see
/// [`Pinned::iter`](crate::Pinned::iter)): under concurrent writes each key appears at most once,
/// with a value it had during the pass. The pass collects references first (16 bytes per entry)
/// so that the length given to the serializer is exact, as formats such as bincode require.
///
/// ```
/// use tiermap::SyncMap;
///
/// let map: SyncMap<u32, Vec<u8>> = (0..3).map(|i| (i, vec![i as u8])).collect();
/// let value = serde_json::to_value(&map).unwrap();
/// assert_eq!(value.as_object().unwrap().len(), 3);
/// assert_eq!(value["2"], serde_json::json!([2]));
/// ```
impl<K, V, S> Serialize for SyncMap<K, V, S>
where
    K: Serialize + Hash + Eq + Send + 'static,
    V: Serialize + Send + 'static,
    S: BuildHasher,
{
    fn serialize<Ser: Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        let pinned = self.pin();
        let entries: Vec<(&K, &V)> = pinned.iter().collect();
        let mut map = serializer.serialize_map(Some(entries.len()))?;
        for (key, value) in entries {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// Deserializes a map; a key given twice keeps its last value, as for `HashMap`.
///
/// ```
/// use tiermap::SyncMap;
///
/// let map: SyncMap<String, i64> = serde_json::from_str(r#"{"x": 1, "y": -2, "x": 3}"#).unwrap();
/// assert_eq!(map.len(), 2);
/// assert_eq!(map.get_cloned("x"), Some(3));
///
/// // Not a map:
/// assert!(serde_json::from_str::<SyncMap<String, i64>>("[1, 2]").is_err());
/// ```
impl<'de, K, V, S> Deserialize<'de> for SyncMap<K, V, S>
where
    K: Deserialize<'de> + Hash + Eq + Send + 'static,
    V: Deserialize<'de> + Send + 'static,
    S: BuildHasher + Default,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(SyncMapVisitor(PhantomData))
    }
}

/// `fn() -> ..`: the visitor makes maps, it owns none (so it is `Send` and `Sync` whatever `K`
/// and `V` are).
type Makes<K, V, S> = fn() -> SyncMap<K, V, S>;

struct SyncMapVisitor<K, V, S>(PhantomData<Makes<K, V, S>>);

impl<'de, K, V, S> Visitor<'de> for SyncMapVisitor<K, V, S>
where
    K: Deserialize<'de> + Hash + Eq + Send + 'static,
    V: Deserialize<'de> + Send + 'static,
    S: BuildHasher + Default,
{
    type Value = SyncMap<K, V, S>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        // The hint comes from the input: trust it only up to 1 MiB worth of entries, as serde
        // does for its own collections, so that a short hostile input cannot reserve gigabytes.
        let cap = access
            .size_hint()
            .unwrap_or(0)
            .min((1 << 20) / std::mem::size_of::<(K, V)>().max(1));
        let map = SyncMap::with_capacity_and_hasher(cap, S::default());
        while let Some((key, value)) = access.next_entry()? {
            map.insert(key, value);
        }
        Ok(map)
    }
}

/// Serializes the snapshot as a struct of its public fields (`len`, `deleted`, `read_capacity`,
/// `dirty_capacity`, `migrating`, `misses`, `held_bytes`, `retired_bytes`, `promotions`,
/// `migrations`, `compactions`, `clones`; and `spare_bytes`).
///
/// ```
/// let map: tiermap::SyncMap<u64, u64> = (0..10).map(|i| (i, i)).collect();
/// let json = serde_json::to_value(map.stats()).unwrap();
/// assert_eq!(json["len"], 10);
/// assert_eq!(json["held_bytes"], map.stats().held_bytes);
/// assert_eq!(json["migrating"], false);
/// ```
impl Serialize for MapStats {
    fn serialize<Ser: Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        // Destructured so that a new field cannot be forgotten here.
        let MapStats {
            len,
            deleted,
            read_capacity,
            dirty_capacity,
            migrating,
            misses,
            held_bytes,
            spare_bytes,
            retired_bytes,
            promotions,
            migrations,
            compactions,
            clones,
        } = *self;
        let mut s = serializer.serialize_struct("MapStats", 13)?;
        s.serialize_field("len", &len)?;
        s.serialize_field("deleted", &deleted)?;
        s.serialize_field("read_capacity", &read_capacity)?;
        s.serialize_field("dirty_capacity", &dirty_capacity)?;
        s.serialize_field("migrating", &migrating)?;
        s.serialize_field("misses", &misses)?;
        s.serialize_field("held_bytes", &held_bytes)?;
        s.serialize_field("spare_bytes", &spare_bytes)?;
        s.serialize_field("retired_bytes", &retired_bytes)?;
        s.serialize_field("promotions", &promotions)?;
        s.serialize_field("migrations", &migrations)?;
        s.serialize_field("compactions", &compactions)?;
        s.serialize_field("clones", &clones)?;
        s.end()
    }
}

/// Serializes as `{"released_bytes": .., "pending_bytes": ..}`.
///
/// ```
/// let map: tiermap::SyncMap<u64, u64> = (0..1000).map(|i| (i, i)).collect();
/// let json = serde_json::to_value(map.clear_and_release()).unwrap();
/// assert!(json["released_bytes"].as_u64().unwrap() > 0);
/// assert_eq!(json["pending_bytes"], 0);
/// ```
impl Serialize for Released {
    fn serialize<Ser: Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        let Released {
            released_bytes,
            pending_bytes,
        } = *self;
        let mut s = serializer.serialize_struct("Released", 2)?;
        s.serialize_field("released_bytes", &released_bytes)?;
        s.serialize_field("pending_bytes", &pending_bytes)?;
        s.end()
    }
}

/// Serializes the snapshot as a struct of its public fields (`gets`, `hits`, `misses`,
/// `returns`, `returns_shrunk`, `returns_dropped`, `detached`, `idle`, `retained_bytes`).
///
/// ```
/// use tiermap::pool::MapPool;
///
/// let pool: MapPool<Vec<u64>> = MapPool::new();
/// drop(pool.get());
/// let json = serde_json::to_value(pool.stats()).unwrap();
/// assert_eq!(json["gets"], 1);
/// assert_eq!(json["idle"], 1);
/// ```
impl Serialize for PoolStats {
    fn serialize<Ser: Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        // Destructured so that a new field cannot be forgotten here.
        let PoolStats {
            gets,
            hits,
            misses,
            returns,
            returns_shrunk,
            returns_dropped,
            detached,
            idle,
            retained_bytes,
        } = *self;
        let mut s = serializer.serialize_struct("PoolStats", 9)?;
        s.serialize_field("gets", &gets)?;
        s.serialize_field("hits", &hits)?;
        s.serialize_field("misses", &misses)?;
        s.serialize_field("returns", &returns)?;
        s.serialize_field("returns_shrunk", &returns_shrunk)?;
        s.serialize_field("returns_dropped", &returns_dropped)?;
        s.serialize_field("detached", &detached)?;
        s.serialize_field("idle", &idle)?;
        s.serialize_field("retained_bytes", &retained_bytes)?;
        s.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_json() {
        let map: SyncMap<u64, String> = (0..500).map(|i| (i, format!("v{i}"))).collect();
        let json = serde_json::to_string(&map).unwrap();
        let back: SyncMap<u64, String> = serde_json::from_str(&json).unwrap();
        assert_eq!(back.len(), 500);
        for i in 0..500 {
            assert_eq!(back.get_cloned(&i), Some(format!("v{i}")));
        }
    }

    #[test]
    fn empty_map_is_an_empty_object() {
        let map: SyncMap<String, u8> = SyncMap::new();
        assert_eq!(serde_json::to_string(&map).unwrap(), "{}");
        let back: SyncMap<String, u8> = serde_json::from_str("{}").unwrap();
        assert!(back.is_empty());
    }

    #[test]
    fn deleted_keys_are_not_serialized() {
        let map: SyncMap<u32, u32> = (0..100).map(|i| (i, i)).collect();
        for i in 0..50 {
            map.remove(&i);
        }
        let value = serde_json::to_value(&map).unwrap();
        let object = value.as_object().unwrap();
        assert_eq!(object.len(), 50);
        assert!(object.contains_key("99") && !object.contains_key("0"));
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(serde_json::from_str::<SyncMap<String, u32>>(r#"{"a": "x"}"#).is_err());
        assert!(serde_json::from_str::<SyncMap<String, u32>>(r#"{"a": 1"#).is_err());
    }

    #[test]
    fn stats_fields_are_all_there() {
        let map: SyncMap<u64, u64> = (0..10).map(|i| (i, i)).collect();
        let value = serde_json::to_value(map.stats()).unwrap();
        let object = value.as_object().unwrap();
        assert_eq!(object.len(), 13);
        assert_eq!(value["spare_bytes"], map.stats().spare_bytes);
        assert_eq!(value["clones"], map.stats().clones);
        assert_eq!(value["len"], 10);
        let released = serde_json::to_value(Released::default()).unwrap();
        assert_eq!(
            released,
            serde_json::json!({"released_bytes": 0, "pending_bytes": 0})
        );
    }
}
