#!/usr/bin/env bash
# Builds every fuzz target in fuzz/ and runs each for a bounded time; fails on a crash.
#
#   ci/fuzz.sh                    every target, FUZZ_SECONDS each, all at the same time
#   ci/fuzz.sh differential       one target
#   FUZZ_SECONDS=600 ci/fuzz.sh   longer runs
#
# A crash leaves its input in fuzz/artifacts/<target>/; replay it with
#   cargo +nightly fuzz run -O <target> fuzz/artifacts/<target>/crash-...
# and print it as a Rust value with `cargo +nightly fuzz fmt <target> <file>` (the input types
# derive Debug), to paste into a regression test in tests/fuzz_replay.rs.
#
# Time: about 3 minutes to install cargo-fuzz and build the three targets with AddressSanitizer
# on a fresh machine, then FUZZ_SECONDS (default 60) for all of them together (they run side by
# side, sharing the cores).
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
# Step around the bugs listed in KNOWN_BUGS (fuzz/src/logic/differential.rs): each is reported
# and has a failing regression test in tests/fuzz_replay.rs, so fuzzing here reports only new
# ones. TIERMAP_FUZZ_SKIP= (empty) fuzzes for them too.
export TIERMAP_FUZZ_SKIP="${TIERMAP_FUZZ_SKIP-known}"
TOOLCHAIN="${FUZZ_TOOLCHAIN:-nightly}"

# cargo-fuzz needs a nightly compiler (it passes -Zsanitizer=address and sanitizer-coverage
# flags). Install it only if it is missing; rust-std is the only component needed.
if ! rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1; then
  rustup toolchain install "$TOOLCHAIN" --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  # --locked: the versions cargo-fuzz was released with, not whatever resolves today.
  cargo install cargo-fuzz --locked
fi

build_flags=(
  -O                   # release profile: fuzz/Cargo.toml keeps debug assertions and overflow
                       # checks on in it, so tiermap's debug_assert!s run while fuzzing
  --no-trace-compares  # no comparison tracing: ~1.5x more executions per second; our inputs
                       # have no magic values for it to find
)
# AddressSanitizer (cargo-fuzz's default) stays on: it turns a use-after-free of an entry,
# value or table that the epoch freed too early into a crash.

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +"$TOOLCHAIN" fuzz list)
fi

echo "fuzz: building ${targets[*]}"
for t in "${targets[@]}"; do
  cargo +"$TOOLCHAIN" fuzz build "${build_flags[@]}" "$t"
done

run_flags=(
  -max_total_time="$FUZZ_SECONDS"  # stop after this many seconds
  -max_len=2048        # inputs of up to ~400 operations; longer ones are slower, not deeper
  -timeout=60          # an input running longer than this is a hang, reported as a failure
  -rss_limit_mb=4096   # fail on runaway memory (ASan's quarantine alone takes ~256 MB)
  -detect_leaks=0      # values freed through the epoch outlive the input that retired them,
                       # which LeakSanitizer's per-input check would report; the targets count
                       # every value instead (created == dropped at the end of each input), and
                       # ci/leak.sh runs the tests under LeakSanitizer at exit
  -print_final_stats=1 # executions and exec/s in the log
)

# The targets run at the same time (each fuzzer is one process; one after another, they left
# a core idle for most of the step): the step takes FUZZ_SECONDS, not one FUZZ_SECONDS per
# target. Each one's output is printed, in order, when all are done.
logs="$(mktemp -d)"
pids=()
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  cargo +"$TOOLCHAIN" fuzz run "${build_flags[@]}" "$t" "fuzz/corpus/$t" -- "${run_flags[@]}" \
    >"$logs/$t.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!targets[@]}"; do
  t="${targets[$i]}"
  rc=0
  wait "${pids[$i]}" || rc=$?
  echo "fuzz: $t for ${FUZZ_SECONDS}s (exit $rc)"
  cat "$logs/$t.log"
  if [ "$rc" -ne 0 ]; then
    echo "fuzz: $t FAILED; artifacts:" >&2
    ls -l "fuzz/artifacts/$t" >&2 || true
    status=1
  fi
done
rm -rf "$logs"
exit $status
