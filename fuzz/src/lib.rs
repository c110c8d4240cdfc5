//! The fuzz logic of tiermap, shared with `tests/fuzz_replay.rs` (which includes
//! `src/logic/mod.rs` by path, so that `cargo test` runs the very same checks).
//!
//! `fuzz_input!` is the one difference between the two builds: here it derives
//! [`arbitrary::Arbitrary`] for the input types so that libFuzzer's bytes decode into operation
//! sequences; the replay test defines it as a no-op and generates inputs with its own RNG.

macro_rules! fuzz_input {
    ($($item:item)*) => { $( #[derive(arbitrary::Arbitrary)] $item )* };
}

pub mod logic;
