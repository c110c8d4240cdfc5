//! `MapPool<SyncMap>` against a model of its counters and ceiling (see `src/logic/pool.rs`).
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tiermap_fuzz::logic::pool::{run, PoolProgram};

fuzz_target!(|prog: PoolProgram| {
    run(&prog, Duration::from_secs(5));
});
