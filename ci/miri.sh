#!/usr/bin/env bash
# Runs the library's unit tests and a selection of its integration tests under Miri.
#
#   ci/miri.sh                         the default selection (below)
#   MIRI_TESTS="semantics memory" ci/miri.sh   other integration test files
#
# Miri interprets the tests and reports undefined behaviour: use-after-free (a value or table
# freed while a guard can still reach it), data races, out-of-bounds or misaligned accesses,
# invalid values, and aliasing violations (under Tree Borrows, see below). The tests shrink
# their sizes under `cfg(miri)`.
#
# Time: about 1 minute to build the Miri sysroot on a fresh machine, then a few minutes per
# test file on one core; the default selection stays under 10 minutes on 2 cores (nextest runs
# two tests at a time when it is installed).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal
fi
installed="$(rustup component list --installed --toolchain nightly)"
for c in miri rust-src; do
  # rust-src: Miri builds its own sysroot from it.
  grep -q "^$c" <<<"$installed" || rustup component add "$c" --toolchain nightly
done
cargo +nightly miri setup

flags=(
  # Aliasing model. Stacked Borrows (Miri's default) stops inside crossbeam-epoch itself
  # (a retag of its `Local` in `internal.rs`, crossbeam-rs/crossbeam#545), before reaching our
  # code. Tree Borrows accepts crossbeam-epoch and still checks every reference and raw pointer
  # of ours (it found the migration's `&Entry`-derived pointer that was later freed).
  -Zmiri-tree-borrows
  # Provenance. We would use -Zmiri-strict-provenance, but crossbeam-epoch stores pointers as
  # `usize` and casts them back (`Pointable::deref`: `&*(ptr as *const T)`, atomic.rs), which
  # strict provenance rejects outright. Permissive provenance still checks that every access
  # is in bounds of a live allocation whose address was exposed; our own crate is written with
  # strict-provenance APIs (`map_addr`) and needs no exposure.
  -Zmiri-permissive-provenance
  # Leaks. crossbeam-epoch's global collector keeps retired garbage, and each thread's
  # `Local`, behind integer-encoded pointers in a static, and frees nothing at exit: Miri
  # cannot see them as reachable and would report every test as leaking
  # (crossbeam-rs/crossbeam#579). So Miri's leak check is off, and leaks are checked in the
  # tests instead: they count every key and value they create and assert, after the map is
  # dropped and the epoch drained, that each was dropped exactly once (fuzz_replay,
  # panic_injection). ci/leak.sh checks the rest (tables, entries) with LeakSanitizer.
  -Zmiri-ignore-leaks
  # proptest (the pool's unit tests) reads the working directory to persist failing cases,
  # which isolation forbids; nothing else here needs the host.
  -Zmiri-disable-isolation
)
export MIRIFLAGS="${MIRIFLAGS:-${flags[*]}}"

# The integration tests to run, and why not the others (times measured on a loaded 2-core
# machine with nextest -j 2; expect about half on an idle one):
#   unit tests       31 tests, 7 minutes (each test is its own Miri process under nextest)
#   fuzz_replay      the fuzz targets' logic on a few generated sequences (the replay test
#                    shrinks itself under cfg(miri), and its single-threaded programs run
#                    without the background reclaimer there: see
#                    `miri_without_background_reclaim`) plus every regression test, 2.3 minutes
#                    (4.2 before that change)
#   panic_injection  user-code panics at call indices 0, 1, 2, 4, 8, ... on one map shape
#                    under cfg(miri)
# Not run by default (select with MIRI_TESTS="..."):
#   semantics        over 20 minutes: deleted_entries_are_purged_without_new_inserts alone
#                    takes 9 (it churns thousands of keys to watch compaction: memory, not UB;
#                    skipped through MIRI_SKIP when semantics runs), and
#                    first_new_key_after_read_only_phase_does_not_copy_the_map and
#                    pooled_sync_map_is_reset_and_bounded run for over 8 minutes each: they
#                    need smaller sizes under cfg(miri) first
#   concurrency      threads racing on one map; run it when touching the lock-free paths
#   differential     proptest: hundreds of cases, minutes each
#   memory           byte accounting over 2,000+ step workloads
#   alarm, metrics   observer plumbing with no unsafe code of its own
TESTS=(${MIRI_TESTS:-fuzz_replay panic_injection})
SKIP=(${MIRI_SKIP:-deleted_entries_are_purged_without_new_inserts})
# MIRI_LIB=0 leaves out the library's unit tests (the pool's, mostly: no unsafe code of its own;
# 7 minutes under load). Any other value but 1 is a name filter: only the unit tests whose
# names contain one of its words run, e.g. MIRI_LIB="raw::grave raw::arena" (the graveyard's
# and the entry arena's white-box tests; the arena's threaded test is where Miri's race
# detector checks the orderings of its free-list push and collection). .ci/run uses that, to
# stay within its time budget. With nextest the filtered unit tests run in the same pool of
# two Miri processes as the integration tests (the ten grave and arena tests: 220 s one after
# another under `cargo miri test`, 130 s under nextest -j 2).
lib="${MIRI_LIB:-1}"
filtered_lib=false
[ "$lib" != 1 ] && [ "$lib" != 0 ] && filtered_lib=true
test_args=()
for t in "${TESTS[@]}"; do
  [ -f "tests/$t.rs" ] && test_args+=(--test "$t")
done

start=$(date +%s)
if cargo nextest --version >/dev/null 2>&1; then
  # One Miri process per test, two at a time: uses both cores.
  filter="all()"
  lib_args=()
  [ "$lib" != 0 ] && lib_args=(--lib)
  if $filtered_lib; then
    words=""
    for w in $lib; do words="${words:+$words | }test($w)"; done
    filter="not kind(lib) | $words"
  fi
  for s in "${SKIP[@]}"; do filter="($filter) - test(=$s)"; done
  echo "miri: nextest filter: $filter"
  cargo +nightly miri nextest run -j 2 --no-fail-fast "${lib_args[@]}" "${test_args[@]}" -E "$filter"
else
  if $filtered_lib; then
    # Several filters, separated by spaces, are each passed to the test binary.
    # shellcheck disable=SC2086
    cargo +nightly miri test --lib -- $lib
  fi
  lib_args=()
  [ "$lib" = 1 ] && lib_args=(--lib)
  skips=()
  for s in "${SKIP[@]}"; do skips+=(--skip "$s"); done
  cargo +nightly miri test --no-fail-fast "${lib_args[@]}" "${test_args[@]}" -- "${skips[@]}"
fi
echo "miri: passed in $(($(date +%s) - start)) s (MIRIFLAGS=$MIRIFLAGS)"
