//! `POST /ingest`: parse a JSON object straight into a pooled scratch map, then summarize it.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;

use axum::http::StatusCode;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::{ApiError, Scratch};

/// What one ingest body may hold.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeyLimits {
    pub(crate) max_keys: usize,
    pub(crate) max_key_len: usize,
}

/// One `key: value` of an [`IngestSummary`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// Its total.
    pub value: i64,
}

/// The body of a successful `POST /ingest`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IngestSummary {
    /// `key: value` pairs in the body, duplicates included.
    pub pairs: usize,
    /// Distinct keys (a key given twice adds its values up, saturating).
    pub keys: usize,
    /// Sum of all values.
    pub sum: i128,
    /// The smallest total of a key, if any.
    pub min: Option<i64>,
    /// The largest total of a key, if any.
    pub max: Option<i64>,
    /// The keys with the largest totals, largest first (ties by key), as many as `?top=` asked.
    pub top: Vec<KeyValue>,
    /// Capacity of the pooled scratch map once filled (slots).
    pub scratch_capacity: usize,
}

/// Fills `map` (empty, from the pool) with the JSON object in `body` and summarizes it.
///
/// Errors: 400 for malformed JSON, 422 for well-formed JSON of the wrong shape or over the
/// limits. Either way the map may be partly filled; the pool empties it on return.
pub(crate) fn fill_and_summarize(
    map: &mut Scratch,
    body: &[u8],
    limits: KeyLimits,
    top: usize,
) -> Result<IngestSummary, ApiError> {
    let mut violation = None;
    let pairs = {
        let mut de = serde_json::Deserializer::from_slice(body);
        let filler = Filler {
            map: &mut *map,
            limits,
            violation: &mut violation,
        };
        (&mut de)
            .deserialize_map(filler)
            .and_then(|pairs| de.end().map(|()| pairs))
    };
    let pairs = match (pairs, violation) {
        (_, Some(violation)) => return Err(violation),
        (Ok(pairs), None) => pairs,
        (Err(e), None) => return Err(json_error(&e)),
    };
    Ok(summarize(map, pairs, top))
}

fn json_error(e: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format_args!("expected a JSON object of string keys to integers: {e}"),
        ),
        Category::Syntax | Category::Eof | Category::Io => {
            ApiError::new(StatusCode::BAD_REQUEST, format_args!("malformed JSON: {e}"))
        }
    }
}

fn summarize(map: &Scratch, pairs: usize, top: usize) -> IngestSummary {
    let mut sum: i128 = 0;
    let mut min: Option<i64> = None;
    let mut max: Option<i64> = None;
    // A min-heap of the best `top` so far; "better" is a larger value, then a smaller key.
    let mut best: BinaryHeap<Reverse<(i64, Reverse<&str>)>> = BinaryHeap::with_capacity(top + 1);
    for (key, &value) in map.iter() {
        sum += i128::from(value);
        min = Some(min.map_or(value, |m| m.min(value)));
        max = Some(max.map_or(value, |m| m.max(value)));
        if top > 0 {
            best.push(Reverse((value, Reverse(key.as_str()))));
            if best.len() > top {
                best.pop();
            }
        }
    }
    let top = best
        .into_sorted_vec()
        .into_iter()
        .map(|Reverse((value, Reverse(key)))| KeyValue {
            key: key.to_owned(),
            value,
        })
        .collect();
    IngestSummary {
        pairs,
        keys: map.len(),
        sum,
        min,
        max,
        top,
        scratch_capacity: map.capacity(),
    }
}

/// Visits the top-level object, inserting as it goes: no intermediate map or `Value` is built,
/// and the limits are checked before a key is copied.
struct Filler<'a> {
    map: &'a mut Scratch,
    limits: KeyLimits,
    violation: &'a mut Option<ApiError>,
}

impl<'de> Visitor<'de> for Filler<'_> {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object of string keys to integers")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<usize, A::Error> {
        let mut pairs = 0usize;
        while let Some(Key(key)) = access.next_key::<Key<'de>>()? {
            if pairs == self.limits.max_keys {
                *self.violation = Some(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format_args!(
                        "too many keys: at most {} per request",
                        self.limits.max_keys
                    ),
                ));
                return Err(de::Error::custom("too many keys"));
            }
            if key.is_empty() || key.len() > self.limits.max_key_len {
                *self.violation = Some(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format_args!(
                        "keys must be 1 to {} bytes, got one of {}",
                        self.limits.max_key_len,
                        key.len()
                    ),
                ));
                return Err(de::Error::custom("key too long"));
            }
            let value: i64 = access.next_value()?;
            pairs += 1;
            match self.map.get_mut(key.as_ref()) {
                Some(total) => *total = total.saturating_add(value),
                None => {
                    self.map.insert(key.into_owned(), value);
                }
            }
        }
        Ok(pairs)
    }
}

/// A key, borrowed from the body when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }

        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: KeyLimits = KeyLimits {
        max_keys: 4,
        max_key_len: 8,
    };

    fn run(body: &str) -> Result<IngestSummary, ApiError> {
        fill_and_summarize(&mut Scratch::new(), body.as_bytes(), LIMITS, 2)
    }

    #[test]
    fn sums_duplicates_and_ranks() {
        let s = run(r#"{"a": 1, "b": 5, "a": 9, "c\u0041": -3}"#).unwrap();
        assert_eq!((s.pairs, s.keys, s.sum), (4, 3, 12));
        assert_eq!((s.min, s.max), (Some(-3), Some(10)));
        let top: Vec<_> = s.top.iter().map(|kv| (kv.key.as_str(), kv.value)).collect();
        assert_eq!(top, [("a", 10), ("b", 5)]);
    }

    #[test]
    fn ties_rank_by_key() {
        let s = run(r#"{"z": 1, "y": 1, "x": 1}"#).unwrap();
        let keys: Vec<_> = s.top.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["x", "y"]);
    }

    #[test]
    fn empty_object() {
        let s = run("{}").unwrap();
        assert_eq!(
            (s.pairs, s.keys, s.sum, s.min, s.top.len()),
            (0, 0, 0, None, 0)
        );
    }

    #[test]
    fn rejections() {
        let status = |body: &str| run(body).unwrap_err().status;
        assert_eq!(status(""), StatusCode::BAD_REQUEST);
        assert_eq!(status(r#"{"a": 1"#), StatusCode::BAD_REQUEST);
        assert_eq!(status(r#"{"a": 1} x"#), StatusCode::BAD_REQUEST);
        assert_eq!(status("[1, 2]"), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(status(r#"{"a": 1.5}"#), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(status(r#"{"a": "1"}"#), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            status(r#"{"a": 99999999999999999999}"#),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            status(r#"{"a":1,"b":2,"c":3,"d":4,"e":5}"#),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            status(r#"{"123456789": 1}"#),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(status(r#"{"": 1}"#), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(run(r#"{"a":1,"b":2,"c":3,"d":4}"#).is_ok());
    }
}
