#!/usr/bin/env bash
# Model-checks tiermap's real SyncMap code with loom (loom-tests/, see loom-tests/README.md).
#
# What it turns on:
#   --cfg tiermap_loom    tiermap's facade (src/facade.rs) takes every atomic and the dirty Mutex
#                         from loom, gives each map its own crossbeam_epoch::Collector (one
#                         participant registered per pin) and 4-slot table chunks.
#   --cfg crossbeam_loom  crossbeam-epoch's own atomics come from loom too (with the `loom`
#                         feature, which loom-tests enables), so the epoch is model-checked along
#                         with the map.
#   --release             loom explores 10^4-10^5 executions per model; debug builds are ~10x
#                         slower.
#   CARGO_TARGET_DIR      target/loom: the RUSTFLAGS change every crate's fingerprint, so a
#                         separate directory keeps the normal build's cache intact.
#
# Bounds: each model sets its own preemption bound (loom::model::Builder::preemption_bound, the
# second argument of `check(...)` in loom-tests/tests/models/*.rs): 2 for the cheap races, 1 for
# the models whose executions are long (promotion + iteration, clear_and_release, shrink_to_fit:
# every pin registers a participant and every SeqCst fence of crossbeam-epoch costs loom a scan of
# all atomics, so a bound of 2 there takes many minutes). LOOM_MAX_PREEMPTIONS, if set, overrides
# every model's bound (e.g. LOOM_MAX_PREEMPTIONS=2 for a long local run). LOOM_MAX_BRANCHES
# defaults to 100000 in the models (an execution takes a few thousand scheduling points).
#
# Time on this 2-core machine: 500 s wall in the last fresh-clone CI run of 2026-12-02 (53 s of
# it the release build of loom and its dependencies; the machine ran about 2x slower than usual
# that day; 755 s before the compaction model was split and the longest model started first),
# 434 s of models on an idle day before. The long pole is `remove_vs_insert_same_key`
# (bound 2: 669,444 executions, 291-318 s on the slow day; started first, below), then the
# bound-2 promotion models (~100 s each); the compaction model took 424 s before it was split in two (8a and 8b: 91 s
# and 5 s). Per-model counts and times are printed (--nocapture) and listed in
# loom-tests/README.md.
#
# Installs nothing: cargo only. Extra arguments go to the test binary (e.g. a model name filter).
set -euo pipefail
cd "$(dirname "$0")/.."

export RUSTFLAGS="--cfg tiermap_loom --cfg crossbeam_loom ${TIERMAP_LOOM_RUSTFLAGS:-}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/loom}"
# Loom prints a failing execution's schedule only with LOOM_LOG/LOOM_LOCATION; keep a backtrace.
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

start=$(date +%s)
models=(cargo test --release -p tiermap-loom-tests --test models --)
# The longest model. libtest starts the models in name order, which put this one among the last
# (2026-12-02: it ran alone for its last ~80 s while the other thread had nothing left); the
# whole suite runs it in a process of its own, started first, beside the rest on two threads
# (three busy threads on two cores share them until the end).
long="remove_insert::remove_vs_insert_same_key"
if [ $# -eq 0 ]; then
  cargo test --release -p tiermap-loom-tests --test models --no-run
  "${models[@]}" --nocapture --exact "$long" &
  long_pid=$!
  rest=0
  # Two test threads: the models are independent and each is single-threaded under loom.
  "${models[@]}" --nocapture --test-threads="${LOOM_TEST_THREADS:-2}" --skip "$long" || rest=$?
  long_rc=0
  wait "$long_pid" || long_rc=$?
  if [ "$rest" -ne 0 ] || [ "$long_rc" -ne 0 ]; then
    echo "ci/loom.sh: FAILED (the other models: exit $rest; $long: exit $long_rc)" >&2
    exit 1
  fi
else
  "${models[@]}" --nocapture --test-threads="${LOOM_TEST_THREADS:-2}" "$@"
fi
echo "ci/loom.sh: all loom models passed in $(( $(date +%s) - start )) s"
