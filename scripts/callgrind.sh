#!/usr/bin/env bash
# Instructions per operation, one thread, tiermap beside its peers, counted with callgrind
# (exact, independent of the machine's load). Prints a markdown table on stdout: rows are
# workloads, columns maps, cells instructions per operation. Progress goes to stderr.
#
#   scripts/callgrind.sh
#   INSTR_MAPS=tiermap,dashmap INSTR_WORKLOADS=read_hit,exchange scripts/callgrind.sh
#   INSTR_N=65536 INSTR_M=16384 scripts/callgrind.sh
#
# Each (map, workload) pair is one process of the `instructions` bench (benches/instructions.rs)
# under `valgrind --tool=callgrind --collect-atstart=no --toggle-collect=$INSTR_TOGGLE`: only
# the measured loop `measure_<workload>` (and everything it calls) is counted, never the
# prefill, the key generation or the map's drop. The count is divided by the `ops=` the binary
# prints (M; for remove_insert M delete+insert pairs).
#
# Environment:
#   INSTR_MAPS       comma list of map ids (default: all below). Ids are the bench ids
#                    (tiermap papaya dashmap scc scc-index rwlock mutex) plus `tiermap+bg`.
#                    `tiermap` runs with TIERMAP_BACKGROUND_RECLAIM=0, so that it frees its
#                    garbage on the measured thread and the count repeats exactly; `tiermap+bg`
#                    is tiermap's default (a background reclaimer thread with a 10 ms tick):
#                    only the measuring thread is counted, and how much freeing it does depends
#                    on when the reclaimer runs, so that column varies by ~1-3 % between runs.
#   INSTR_WORKLOADS  comma list (default: read_hit read_miss insert_new overwrite remove_insert
#                    read_heavy exchange rapid_grow)
#   INSTR_N, INSTR_M prefill size / operations (default 65536 each; N a power of two)
#   INSTR_TOGGLE     callgrind --toggle-collect pattern (default 'instructions::measure_*')
#   INSTR_OUT        directory for the callgrind.out files (default $TARGET/callgrind), to look
#                    at with `callgrind_annotate --inclusive=yes FILE`
#   CARGO_TARGET_DIR as usual
#
# Every map is built with the same fixed ahash keys (see the bench's header), so the other
# columns repeat exactly from run to run.
set -euo pipefail
cd "$(dirname "$0")/.."

ALL_MAPS="tiermap,tiermap+bg,papaya,dashmap,scc,scc-index,rwlock,mutex"
ALL_WORKLOADS="read_hit,read_miss,insert_new,overwrite,remove_insert,read_heavy,exchange,rapid_grow"
MAPS=${INSTR_MAPS:-$ALL_MAPS}
WORKLOADS=${INSTR_WORKLOADS:-$ALL_WORKLOADS}
N=${INSTR_N:-65536}
M=${INSTR_M:-65536}
TOGGLE=${INSTR_TOGGLE:-'instructions::measure_*'}
IFS=, read -r -a maps <<<"$MAPS"
IFS=, read -r -a workloads <<<"$WORKLOADS"

die() {
    echo "callgrind.sh: $*" >&2
    exit 1
}
command -v valgrind >/dev/null || die "valgrind is not installed"

start=$(date +%s)
echo "== building the instructions bench (release)" >&2
json=$(cargo bench --bench instructions --no-run --message-format=json)
BIN=$(grep -o '"executable":"[^"]*"' <<<"$json" | sed 's/"executable":"//; s/"$//' |
    grep '/instructions-' | tail -n1)
[[ -n "$BIN" && -x "$BIN" ]] || die "could not find the instructions bench binary"
TARGET=${CARGO_TARGET_DIR:-target}
OUT=${INSTR_OUT:-$TARGET/callgrind}
mkdir -p "$OUT"
echo "   $BIN" >&2

declare -A cell
for w in "${workloads[@]}"; do
    for map in "${maps[@]}"; do
        id=$map
        bg=0
        if [[ "$map" == "tiermap+bg" ]]; then
            id=tiermap
            bg=1
        fi
        file="$OUT/callgrind.$map.$w.out"
        rm -f "$file"
        log="$OUT/callgrind.$map.$w.log"
        if ! TIERMAP_BACKGROUND_RECLAIM=$bg INSTR_MAP=$id INSTR_WORKLOAD=$w INSTR_N=$N \
            INSTR_M=$M valgrind --tool=callgrind --callgrind-out-file="$file" \
            --collect-atstart=no --toggle-collect="$TOGGLE" "$BIN" >"$log.stdout" 2>"$log"; then
            cat "$log.stdout" "$log" >&2
            die "$map $w: the run failed (see above)"
        fi
        line=$(grep '^map=' "$log.stdout" || true)
        if [[ "$line" == *" skip" ]]; then
            cell[$w.$map]="—"
            rm -f "$file"
            echo "   $w $map: not applicable" >&2
            continue
        fi
        ops=$(sed -n 's/.* ops=\([0-9]*\).*/\1/p' <<<"$line")
        [[ -n "$ops" && "$ops" -gt 0 ]] || die "$map $w: no ops= in the output: $line"
        ir=$(awk '/^totals:/ {print $2; exit}' "$file")
        [[ -n "$ir" ]] || ir=$(awk '/^summary:/ {print $2; exit}' "$file")
        # The toggle must have matched exactly this workload's loop.
        if [[ -z "$ir" || "$ir" -eq 0 ]]; then
            die "$map $w: callgrind collected nothing: --toggle-collect='$TOGGLE' did not match (file $file)"
        fi
        # (callgrind names a function once, on its first fn= or cfn= line.)
        names=$(grep -E '^c?fn=\([0-9]+\) .*measure_[a-z_]+$' "$file" | sed 's/.* //' || true)
        grep -q "measure_$w\$" <<<"$names" ||
            die "$map $w: measure_$w is not in $file: the toggle pattern caught something else"
        others=$(grep -v "measure_$w\$" <<<"$names" || true)
        [[ -z "$others" ]] || die "$map $w: other measured functions in $file: $others"
        per=$(awk -v ir="$ir" -v ops="$ops" 'BEGIN {printf "%.1f", ir / ops}')
        cell[$w.$map]=$per
        echo "   $w $map: $ir Ir / $ops ops = $per" >&2
    done
done
secs=$(($(date +%s) - start))

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
echo "### Instructions per operation, one thread (callgrind)"
echo
echo "Commit $commit (built from the working tree), N = $N prefilled keys, M = $M operations;"
echo "$(valgrind --version), toggle \`$TOGGLE\`; $secs s."
echo
head="| workload |"
rule="|---|"
for map in "${maps[@]}"; do
    head+=" $map |"
    rule+="---:|"
done
echo "$head"
echo "$rule"
for w in "${workloads[@]}"; do
    label=$w
    [[ "$w" == remove_insert ]] && label="remove_insert (per pair)"
    row="| $label |"
    for map in "${maps[@]}"; do
        row+=" ${cell[$w.$map]} |"
    done
    echo "$row"
done
echo
echo "\`tiermap\`: TIERMAP_BACKGROUND_RECLAIM=0 (all reclamation on the measured thread, exact)."
echo "\`tiermap+bg\`: default background reclaimer; its thread is not counted and the column"
echo "varies between runs. \`—\`: scc-index (HashIndex) takes part in read workloads only."
