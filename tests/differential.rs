//! Differential test: random operation sequences on `SyncMap` and on a `Mutex<HashMap>` model,
//! every result compared.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;

use proptest::prelude::*;
use tiermap::SyncMap;

#[derive(Debug, Clone)]
enum Op {
    Get(u8),
    Insert(u8, u16),
    GetOrInsert(u8, u16),
    GetOrInsertWith(u8, u16),
    Remove(u8),
    RemoveIf(u8, u16),
    CompareExchange(u8, u16, u16),
    CompareRemove(u8, u16),
    ContainsKey(u8),
    Len,
    Iterate,
    Retain(u8),
    Clear,
    ClearAndRelease,
    ShrinkToFit,
}

fn op() -> impl Strategy<Value = Op> {
    // Small key space so that keys are revisited in every state (read, dirty, deleted,
    // expunged); values small so that compare operations sometimes match.
    let k = 0u8..48;
    let v = 0u16..4;
    prop_oneof![
        6 => k.clone().prop_map(Op::Get),
        6 => (k.clone(), v.clone()).prop_map(|(k, v)| Op::Insert(k, v)),
        2 => (k.clone(), v.clone()).prop_map(|(k, v)| Op::GetOrInsert(k, v)),
        2 => (k.clone(), v.clone()).prop_map(|(k, v)| Op::GetOrInsertWith(k, v)),
        5 => k.clone().prop_map(Op::Remove),
        1 => (k.clone(), v.clone()).prop_map(|(k, v)| Op::RemoveIf(k, v)),
        2 => (k.clone(), v.clone(), v.clone()).prop_map(|(k, a, b)| Op::CompareExchange(k, a, b)),
        1 => (k.clone(), v.clone()).prop_map(|(k, v)| Op::CompareRemove(k, v)),
        1 => k.clone().prop_map(Op::ContainsKey),
        1 => Just(Op::Len),
        1 => Just(Op::Iterate),
        1 => (1u8..5).prop_map(Op::Retain),
        1 => Just(Op::Clear),
        1 => Just(Op::ClearAndRelease),
        1 => Just(Op::ShrinkToFit),
    ]
}

/// A deliberately weak hasher: four distinct hashes in all.
#[derive(Default, Clone)]
struct Weak;
struct WeakHasher(u64);
impl BuildHasher for Weak {
    type Hasher = WeakHasher;
    fn build_hasher(&self) -> WeakHasher {
        WeakHasher(0)
    }
}
impl Hasher for WeakHasher {
    fn finish(&self) -> u64 {
        self.0 % 4
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.wrapping_mul(31).wrapping_add(*b as u64);
        }
    }
}

fn run<S: BuildHasher>(map: SyncMap<u8, u16, S>, ops: &[Op]) {
    let model: Mutex<HashMap<u8, u16>> = Mutex::new(HashMap::new());
    for (i, op) in ops.iter().enumerate() {
        let mut m = model.lock().unwrap();
        match *op {
            Op::Get(k) => assert_eq!(map.get_cloned(&k), m.get(&k).copied(), "op {i}: {op:?}"),
            Op::ContainsKey(k) => assert_eq!(map.contains_key(&k), m.contains_key(&k)),
            Op::Insert(k, v) => {
                assert_eq!(
                    map.insert(k, v).map(|r| *r),
                    m.insert(k, v),
                    "op {i}: {op:?}"
                )
            }
            Op::GetOrInsert(k, v) => {
                let expected = *m.entry(k).or_insert(v);
                let got = map.get_or_insert(k, v);
                assert_eq!(**got.clone_ref(), expected, "op {i}: {op:?}");
            }
            Op::GetOrInsertWith(k, v) => {
                let was = m.contains_key(&k);
                let expected = *m.entry(k).or_insert(v);
                let mut ran = false;
                let got = map.get_or_insert_with(k, || {
                    ran = true;
                    v
                });
                assert_eq!(got.is_loaded(), was, "op {i}: {op:?}");
                assert_eq!(ran, !was, "op {i}: closure runs only when absent");
                assert_eq!(*got.into_inner(), expected);
            }
            Op::Remove(k) => {
                assert_eq!(map.remove(&k).map(|r| *r), m.remove(&k), "op {i}: {op:?}")
            }
            Op::RemoveIf(k, v) => {
                let expected = (m.get(&k) == Some(&v)).then(|| m.remove(&k).unwrap());
                assert_eq!(map.remove_if(&k, |x| *x == v).map(|r| *r), expected);
            }
            Op::CompareExchange(k, a, b) => {
                let ok = m.get(&k) == Some(&a);
                if ok {
                    m.insert(k, b);
                }
                let r = map.compare_exchange(&k, &a, b);
                assert_eq!(r.is_ok(), ok, "op {i}: {op:?}");
            }
            Op::CompareRemove(k, v) => {
                let ok = m.get(&k) == Some(&v);
                if ok {
                    m.remove(&k);
                }
                assert_eq!(map.compare_remove(&k, &v), ok, "op {i}: {op:?}");
            }
            Op::Len => assert_eq!(map.len(), m.len(), "op {i}"),
            Op::Iterate => {
                let mut got: Vec<(u8, u16)> = map.pin().iter().map(|(k, v)| (*k, *v)).collect();
                got.sort();
                let mut want: Vec<(u8, u16)> = m.iter().map(|(k, v)| (*k, *v)).collect();
                want.sort();
                assert_eq!(got, want, "op {i}");
            }
            Op::Retain(d) => {
                m.retain(|k, _| k % d == 0);
                map.retain(|k, _| k % d == 0);
            }
            Op::Clear => {
                m.clear();
                map.clear();
            }
            Op::ClearAndRelease => {
                m.clear();
                map.clear_and_release();
            }
            Op::ShrinkToFit => map.shrink_to_fit(),
        }
        let s = map.stats();
        assert_eq!(s.len, m.len(), "stats after op {i}: {op:?}: {s}");
    }
    let mut got: Vec<(u8, u16)> = map.into_iter().collect();
    got.sort();
    let mut want: Vec<(u8, u16)> = model.into_inner().unwrap().into_iter().collect();
    want.sort();
    assert_eq!(got, want);
}

trait CloneRef<'a> {
    fn clone_ref(&self) -> &tiermap::Ref<'a, u16>;
}
impl<'a> CloneRef<'a> for tiermap::GetOrInsert<tiermap::Ref<'a, u16>> {
    fn clone_ref(&self) -> &tiermap::Ref<'a, u16> {
        match self {
            tiermap::GetOrInsert::Loaded(r) | tiermap::GetOrInsert::Inserted(r) => r,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 4 } else { 256 },
        ..ProptestConfig::default()
    })]

    #[test]
    fn matches_hashmap(ops in proptest::collection::vec(op(), 1..400)) {
        run(SyncMap::new(), &ops);
    }

    #[test]
    fn matches_hashmap_with_colliding_hasher(ops in proptest::collection::vec(op(), 1..400)) {
        run(SyncMap::with_hasher(Weak), &ops);
    }
}
