//! The retention alarms and the `metrics` export: the map's alarm ([`RetentionPolicy`],
//! [`RetentionAlarm`]; module `map`), the trip/re-arm state machine both the map's and the
//! pool's alarms run ([`Hysteresis`]), the fan-out from a hook to its sinks ([`Sinks`],
//! [`Hooks`]), the counting of callbacks ([`Callbacks`]) and the map's metrics publisher
//! (module `metrics`). The pool's alarm lives next to the pool (`pool::alarm`), on top of
//! this module; nothing here depends on the pool.
//!
//! # Where the checks run
//!
//! The engine calls its observer, which takes a fresh [`MapStats`](crate::MapStats), every 64
//! slow-path (locked) operations of a shard, after every promotion and after every `clear`, on the thread
//! that did the operation, after it released the dirty lock. A read hit never looks at the
//! hook, and neither do lock-free overwrites and deletes of keys in the read tier; so a
//! condition is noticed at the next slow-path operation, which the map's own compaction
//! triggers as soon as deleted entries pile up. This module adds nothing to any other path.
//!
//! # State machine of one condition
//!
//! | state   | snapshot says                            | next state | effect             |
//! |---------|------------------------------------------|------------|--------------------|
//! | armed   | value > threshold                        | tripped    | the callback runs  |
//! | armed   | value <= threshold                       | armed      | —                  |
//! | tripped | value > threshold × (1 − hysteresis)     | tripped    | —                  |
//! | tripped | value <= threshold × (1 − hysteresis)    | armed      | —                  |
//!
//! For [`RetentionCondition::RetiredBytes`], the value that trips is the smallest of the last
//! `retired_window` snapshots (a promotion leaves a table pending for a check or two), while
//! the value that re-arms is the latest one.
//!
//! Each alarm takes its snapshot and judges it under a mutex of its own (the one of its
//! [`Hysteresis`]), so checks running on several threads judge their snapshots one at a time
//! and in the order they were taken. (Taking the snapshot first and judging it later let a
//! snapshot from before a crossing, judged after another thread had fired for that crossing,
//! re-arm the alarm: the same crossing then fired twice.) The callback runs after that mutex is
//! released, so it may call the map. Cost: a check that finds another in progress waits for its
//! snapshot (a `stats()` call, which takes the dirty lock briefly) and judgement, never for a
//! callback; checks run once per 64 slow operations, so they rarely meet.
//!
//! # Pools
//!
//! A [`MapPool`](crate::MapPool) has no engine hook; its return path calls its own hook
//! (`pool::alarm::PoolHooks`), which checks every 64th return to the pool and at once for a
//! big object. The single condition, retained bytes, follows the same state machine, through
//! the same [`Hysteresis`].

mod callback;
mod hysteresis;
mod map;
#[cfg(feature = "metrics")]
mod metrics;
mod sinks;

pub(crate) use callback::Callbacks;
pub(crate) use hysteresis::{rearm_level, Hysteresis, Reading};
pub use map::{RetentionAlarm, RetentionAlert, RetentionCondition, RetentionPolicy};
#[cfg(not(feature = "metrics"))]
pub(crate) use sinks::NoPublisher;
#[cfg(feature = "metrics")]
pub(crate) use sinks::Publish;
pub(crate) use sinks::{Check, Hooks, Sinks};
