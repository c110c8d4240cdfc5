#!/usr/bin/env bash
# Regenerates every number and chart behind BENCHMARKS.md.
#
#   scripts/bench.sh            # everything except the 2^22 bustle runs   (~25 min on 2 cores)
#   FULL=1 scripts/bench.sh     # also bustle at 2^22                       (~+15 min)
#   ONLY=go|bustle|headline|latency|memory|pool|charts scripts/bench.sh   # one part
#
# Outputs (all under docs/charts/, committed):
#   go_sync_map.md        Go sync.Map benchmark set, Mops/s and tiermap / best peer, per thread count
#   bustle.md, bustle.csv ReadHeavy / Exchange / RapidGrow tables (Mops/s, ratio to best peer);
#                         bustle_steady.md (ReadHeavy, 10x operations), bustle_2e22.md (FULL=1)
#   final_2threads.md     LoadMostlyHits and the three mixes re-run at 2 threads (headline)
#   latency.md, *.csv     first new-key insert after a read-only phase; churn insert percentiles
#   memory.md, *.csv      bytes per entry, held bytes after remove-all / clear / shrink; churn
#   pool.md               MapPool vs other pools (only if benches/pool.rs exists)
#   *.svg                 charts (python3 + matplotlib; installed with pip if missing)
#
# The machine has 2 cores and is shared: compare maps within one run (ratios), not across runs.
# Tunables are passed through: BENCH_TIME_MS, BENCH_THREADS, BENCH_MAPS, BENCH_WORKLOADS (see
# benches/common/mod.rs and each bench's header).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=docs/charts
mkdir -p "$OUT"
ONLY=${ONLY:-all}
want() { [[ "$ONLY" == all || "$ONLY" == "$1" ]]; }
start=$(date +%s)

cargo bench --no-run >/dev/null

if want go; then
    echo "== Go sync.Map set (criterion)" >&2
    rm -rf target/criterion
    BENCH_TIME_MS=${BENCH_TIME_MS:-1000} cargo bench --bench go_sync_map 2>&1 |
        grep -E '^[A-Za-z].*/[0-9]+$|time:|thrpt:' >target/go_sync_map.log || true
    python3 scripts/plot.py go-table target/criterion "$OUT/go_sync_map.md"
fi

if want bustle; then
    echo "== bustle mixes" >&2
    rm -f "$OUT/bustle.csv"
    BUSTLE_SIZES=16 BUSTLE_CSV="$OUT/bustle.csv" cargo bench --bench bustle_mixes >"$OUT/bustle.md"
    BUSTLE_SIZES=16 BUSTLE_MIXES=ReadHeavy BUSTLE_OPS=10 BUSTLE_REPS=5 BUSTLE_CSV="$OUT/bustle.csv" \
        cargo bench --bench bustle_mixes >"$OUT/bustle_steady.md"
    if [[ "${FULL:-0}" == 1 ]]; then
        BUSTLE_SIZES=22 BUSTLE_REPS=1 BUSTLE_CSV="$OUT/bustle.csv" \
            cargo bench --bench bustle_mixes >"$OUT/bustle_2e22.md"
    fi
fi

if want headline; then
    # The key numbers re-run at 2 threads, for the table at the top of BENCHMARKS.md.
    echo "== headline (2 threads)" >&2
    rm -rf target/criterion-headline
    CRITERION_HOME=target/criterion-headline BENCH_THREADS=2 BENCH_WORKLOADS=LoadMostlyHits \
        BENCH_TIME_MS=2000 cargo bench --bench go_sync_map >/dev/null 2>&1
    python3 scripts/plot.py go-table target/criterion-headline "$OUT/final_2threads.md"
    BENCH_THREADS=2 cargo bench --bench bustle_mixes >>"$OUT/final_2threads.md"
fi

if want latency; then
    echo "== latency" >&2
    LAT_CSV="$OUT" cargo bench --bench latency >"$OUT/latency.md"
fi

if want memory; then
    echo "== memory" >&2
    cargo build --release --example memory 2>/dev/null
    MEM_CSV="$OUT" ./target/release/examples/memory >/dev/null
fi

if want pool && [[ -f benches/pool.rs ]]; then
    echo "== pool" >&2
    cargo bench --bench pool >"$OUT/pool.md"
fi

if want charts || [[ "$ONLY" == all ]]; then
    python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install --quiet matplotlib
    python3 scripts/plot.py charts "$OUT"
fi

echo "done in $(( $(date +%s) - start )) s" >&2
