//! Two or three threads on one map, checked for what holds under any interleaving (see
//! `src/logic/concurrent.rs`).
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tiermap_fuzz::logic::concurrent::{run, Input};

fuzz_target!(|input: Input| {
    run(&input, Duration::from_secs(5));
});
