#!/usr/bin/env bash
# Proves the loom models catch bugs: builds the loom models once per seeded mutation of the core
# (`--cfg tiermap_mutation="..."`, see `grep -rn tiermap_mutation src/`) and runs them all.
# A mutation is caught when at least one model fails (an assertion, a loom "Causality violation",
# a use-after-free magic check, a leak/double-drop check, or a crash). Exits non-zero if any
# mutation survives every model, and prints one line per mutation with the models that failed.
#
# Usage: ci/loom-mutations.sh [mutation...]   (default: all of them)
#
# A mutation listed in `unit` below is caught by a white-box unit test instead of a loom model
# (loom cannot schedule it; see loom-tests/README.md): the script runs that test, with the
# mutation, in a normal build.
#
# By default each mutation runs only against the models listed for it in `models` below (the
# ones that catch it), with their own bounds; LOOM_MUT_ALL=1 runs the whole suite per mutation.
#
# Time: ~1 min per mutation to build its target dir the first time (loom and its dependencies
# in release; later runs rebuild tiermap only, ~20 s), then a few seconds until the model fails
# (the publication models of model 14 fail within 1 s). With LOOM_MUT_ALL=1, a mutation no model
# catches costs a full ci/loom.sh. Not run by CI; run it after changing the core or the models.
# Installs nothing: cargo only. Each mutation builds in its own target dir (target/loom-mut-NAME,
# ~100 MB each) so that re-runs are incremental.
set -uo pipefail
cd "$(dirname "$0")/.."

all=(relaxed_value_load no_recheck retire_before_publish skip_expunged_check free_without_defer bury_without_grace relaxed_dirty_view clear_view_before_swap relaxed_slot_publish
     relaxed_value_store relaxed_revive relaxed_cas_publish relaxed_promote_publish relaxed_clear_publish relaxed_dirty_publish
     expire_borrows_yard expire_all rmw_blind_store filter_no_recheck skip_read_probe_unchecked
     no_clear_check clear_shard_by_shard filter_after_publish filter_skips_copies
     split_no_forward split_no_residual split_relaxed_root split_skips_dirty clone_drops_entry idle_skips_migration word_drops_hash_bits
     pool_claim_shares_cell pool_release_free_first pool_unlink_late pool_exit_keeps_cell pool_spill_trusts_hint)
if [ $# -gt 0 ]; then mutations=("$@"); else mutations=("${all[@]}"); fi

# Mutations shown harmless (see loom-tests/README.md): reported, but not counted as survivors
# unless LOOM_MUT_STRICT=1.
harmless=" ${LOOM_MUT_HARMLESS-retire_before_publish filter_after_publish} "
# Mutations that are real bugs but that loom cannot see with this harness (see the README: the
# epoch's SeqCst fences order the store anyway): reported, not counted unless LOOM_MUT_STRICT=1.
invisible=" ${LOOM_MUT_INVISIBLE-relaxed_dirty_view} "
# The models each mutation is run against by default (libtest filters: the models that catch
# it, or for a harmless/invisible one the models of its path). LOOM_MUT_ALL=1 runs every model
# for every mutation instead (about the length of ci/loom.sh per mutation).
declare -A models=(
  [relaxed_value_load]="get_or_insert_with_deleted_key insert_and_miss_vs_miss_driven_promotion"
  [no_recheck]="same_new_key_inserted_across_a_promotion"
  [filter_no_recheck]="dirty_promotion"
  [skip_read_probe_unchecked]="insert_promotion get_or_insert dirty_promotion"
  [filter_after_publish]="publication::fresh_slot second_fresh_key_read_from_dirty_tier dirty_promotion"
  [filter_skips_copies]="compaction_vs_read iter_vs_remove_insert_promotion read_hit_vs_replace_and_promotion"
  [no_clear_check]="clear_across_shards"
  [clear_shard_by_shard]="clear_across_shards"
  [split_no_forward]="split::"
  [split_no_residual]="split::"
  [split_relaxed_root]="split::"
  [split_skips_dirty]="split::"
  [retire_before_publish]="read_promotion publication::promoted_tier"
  [skip_expunged_check]="remove_vs_insert_same_key"
  [free_without_defer]="removed_values_batched_while_a_reader_holds_one compare_exchange_vs_compare_remove"
  [bury_without_grace]="removed_values_batched_while_a_reader_holds_one clear_and_release_vs_pinned_reader compaction_vs_read"
  [relaxed_dirty_view]="dirty_promotion publication::"
  [clear_view_before_swap]="dirty_promotion idle::"
  [relaxed_slot_publish]="publication::fresh_slot second_fresh_key_read_from_dirty_tier"
  [clone_drops_entry]="clone::"
  [relaxed_value_store]="publication::replaced_value"
  [relaxed_revive]="publication::revived_value"
  [relaxed_cas_publish]="publication::swapped_value"
  [relaxed_promote_publish]="publication::promoted_tier"
  [relaxed_clear_publish]="publication::cleared_tier"
  [relaxed_dirty_publish]="publication::new_dirty_tier publication::promoted_tier"
  [expire_borrows_yard]="drop_burial"
  [rmw_blind_store]="rmw::"
  [pool_claim_shares_cell]="pool"
  [pool_release_free_first]="pool"
  [pool_unlink_late]="pool"
  [pool_exit_keeps_cell]="pool"
  [pool_spill_trusts_hint]="pool"
)
# Mutations caught by a unit test (name:test filter), run in a normal build.
declare -A unit=([expire_all]="expiry_frees_only_what_was_retired_before_the_deferral"
                 [idle_skips_migration]="idle_watch_finishes_the_migration_and_promotes"
                 [word_drops_hash_bits]="the_value_word_keeps_the_hash_bits")
survivors=0
summary=()
for m in "${mutations[@]}"; do
  dir="${LOOM_MUT_TARGET_PREFIX:-target/loom-mut-}$m"
  log="$dir.log"
  mkdir -p "$(dirname "$dir")"
  echo "=== mutation $m (log: $log)"
  start=$(date +%s)
  filters=""
  [ "${LOOM_MUT_ALL:-0}" = 1 ] || filters="${models[$m]:-}"
  if [ -n "${unit[$m]:-}" ]; then
    RUSTFLAGS="--cfg tiermap_mutation=\"$m\"" CARGO_TARGET_DIR="$dir" RUST_BACKTRACE=0 \
      cargo test -p tiermap --lib --no-fail-fast -- "${unit[$m]}" >"$log" 2>&1
  else
    RUSTFLAGS="--cfg tiermap_loom --cfg crossbeam_loom --cfg tiermap_mutation=\"$m\"" \
    CARGO_TARGET_DIR="$dir" \
    RUST_BACKTRACE=0 \
      cargo test --release -p tiermap-loom-tests --test models --no-fail-fast -- \
        --nocapture --test-threads="${LOOM_TEST_THREADS:-2}" $filters >"$log" 2>&1
  fi
  status=$?
  secs=$(( $(date +%s) - start ))
  # Test names that failed (libtest prints "test NAME ... FAILED"; a crash ends the binary).
  failed=$(grep -E '^test .* \.\.\. FAILED' "$log" | sed -E 's/^test (.*) \.\.\. FAILED/\1/' | tr '\n' ' ')
  if grep -q 'error: could not compile' "$log"; then
    echo "    build failed, see $log"; survivors=$((survivors + 1))
    summary+=("$m: BUILD FAILED")
  elif [ $status -ne 0 ]; then
    crash=""
    grep -qE 'signal: [0-9]+|SIGSEGV|SIGABRT' "$log" && crash=" (test binary crashed: $(grep -oE 'signal: [0-9]+[^)]*' "$log" | head -1))"
    echo "    caught in ${secs}s by: ${failed:-?}${crash}"
    grep -E "panicked at|Causality violation|use after free|double (drop|free)|leak:|not linearizable|lost" "$log" \
      | grep -v '^\s*$' | sort | uniq -c | sort -rn | head -8 | sed 's/^/      /'
    summary+=("$m: caught by ${failed:-a crash}${crash} (${secs}s)")
  else
    if [[ "$harmless" == *" $m "* && "${LOOM_MUT_STRICT:-0}" != 1 ]]; then
      echo "    not caught, as expected: harmless with crossbeam-epoch (see README) (${secs}s)"
      summary+=("$m: not caught (known harmless) (${secs}s)")
    elif [[ "$invisible" == *" $m "* && "${LOOM_MUT_STRICT:-0}" != 1 ]]; then
      echo "    not caught, as expected: a real bug loom cannot see here (see README) (${secs}s)"
      summary+=("$m: not caught (known loom-invisible; see README) (${secs}s)")
    else
      echo "    SURVIVED: every model passed (${secs}s)"
      survivors=$((survivors + 1))
      summary+=("$m: SURVIVED (${secs}s)")
    fi
  fi
done

echo
echo "=== summary"
printf '%s\n' "${summary[@]}"
if [ $survivors -ne 0 ]; then
  echo "ci/loom-mutations.sh: $survivors mutation(s) not caught" >&2
  exit 1
fi
