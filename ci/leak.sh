#!/usr/bin/env bash
# Runs the stress, concurrency and fuzz-replay tests under LeakSanitizer and fails on any leak.
#
#   ci/leak.sh                  LeakSanitizer (nightly), the default
#   LEAK_TOOL=valgrind ci/leak.sh   valgrind memcheck on the stable build instead
#
# What counts as a leak: memory that no pointer reaches when the test process exits. Epoch
# garbage is not one: crossbeam-epoch's global collector lives in a static and keeps its queue
# (and the thread-local bags of exited threads) reachable. What the tests check besides: every
# value they create is dropped exactly once (drop counting), which also catches an entry or a
# value that is still reachable but will never be freed.
#
# Time: about 2 minutes to build, 1 minute to run on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOL="${LEAK_TOOL:-lsan}"
# The test binaries to check: the ones that retire, migrate, compact and clear under load.
TESTS=(${LEAK_TESTS:-concurrency memory fuzz_replay panic_injection})
TARGET=x86_64-unknown-linux-gnu

test_args=()
for t in "${TESTS[@]}"; do
  [ -f "tests/$t.rs" ] && test_args+=(--test "$t")
done
if [ ${#test_args[@]} -eq 0 ]; then
  echo "leak: none of ${TESTS[*]} exists" >&2
  exit 1
fi

case "$TOOL" in
lsan)
  if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
  fi
  # -Zsanitizer=leak links LeakSanitizer's runtime (shipped with nightly's rust-std for this
  # target; nothing to install from apt). It checks at process exit and makes the process exit
  # non-zero on a leak.
  export RUSTFLAGS="${RUSTFLAGS:-} -Zsanitizer=leak"
  # --target is required with a sanitizer: without it RUSTFLAGS also apply to build scripts and
  # proc macros, which then fail to link. A separate target dir keeps the instrumented build
  # from invalidating the normal one.
  # exitcode=23: a leak makes the test binary fail visibly, distinct from a test failure.
  # report_objects=1: name every leaked object, not only the allocation stacks.
  export LSAN_OPTIONS="${LSAN_OPTIONS:-exitcode=23:report_objects=1}"
  # The test profile (opt-level 1, debug assertions on, see Cargo.toml) as in `cargo test`.
  cargo +nightly test --target "$TARGET" --target-dir target/lsan "${test_args[@]}"
  ;;
valgrind)
  command -v valgrind >/dev/null || apt-get install -y valgrind
  # Build the test binaries, then run each under memcheck:
  #   --leak-check=full              report each leak with its allocation stack
  #   --errors-for-leak-kinds=definite,indirect  fail on memory nothing points to any more
  #                                  ("possibly lost" is interior pointers, e.g. tagged slots)
  #   --error-exitcode=1             a reported error or leak fails the run
  #   --fair-sched=yes               interleave threads, which valgrind otherwise serializes
  #                                  coarsely
  # TIERMAP_REPLAY_CASES shrinks the replayed fuzz sequences: memcheck is ~30x slower.
  mapfile -t bins < <(cargo test --no-run --message-format=json "${test_args[@]}" 2>/dev/null |
    grep -o '"executable":"[^"]*"' | cut -d'"' -f4)
  for b in "${bins[@]}"; do
    echo "leak: valgrind $b"
    TIERMAP_REPLAY_CASES="${TIERMAP_REPLAY_CASES:-200}" valgrind --leak-check=full \
      --errors-for-leak-kinds=definite,indirect --error-exitcode=1 --fair-sched=yes \
      --quiet "$b" --test-threads=2
  done
  ;;
*)
  echo "leak: unknown LEAK_TOOL=$TOOL (lsan or valgrind)" >&2
  exit 2
  ;;
esac
echo "leak: no leak ($TOOL)"
