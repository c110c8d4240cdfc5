//! Differential fuzzing of `SyncMap` against `HashMap` (see `src/logic/differential.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tiermap_fuzz::logic::differential::{run, Config, Program};

fuzz_target!(|prog: Program| {
    run(&prog, Config::strict());
});
