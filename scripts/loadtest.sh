#!/usr/bin/env bash
# Load test of examples/server (issue 8): builds the server and its load generator (release),
# starts the server on an ephemeral port of 127.0.0.1, drives it for a bounded time with small
# requests and rare huge ones, and prints throughput, latency percentiles and the server's held
# memory (from /stats and from /proc/PID/status) before, during and after a huge request and
# after POST /admin/clear. Stops by itself; only ever talks to 127.0.0.1.
#
#   scripts/loadtest.sh [SECONDS]          # default 25
#
# Environment: CONCURRENCY (8), KEY_SPACE (100000), HUGE_KEYS (150000), HUGE_EVERY (5, seconds),
# MAX_REQUESTS (2000000 per phase), SERVER_ARGS (extra tiermap-server flags, e.g.
# "--pool-ceiling 4096"). Needs cargo; everything else comes from crates.io through it.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${1:-25}"
CONCURRENCY="${CONCURRENCY:-8}"
KEY_SPACE="${KEY_SPACE:-100000}"
HUGE_KEYS="${HUGE_KEYS:-150000}"
HUGE_EVERY="${HUGE_EVERY:-5}"
MAX_REQUESTS="${MAX_REQUESTS:-2000000}"
SERVER_ARGS="${SERVER_ARGS:-}"

case "$DURATION" in
  '' | *[!0-9]*) echo "loadtest: SECONDS must be a whole number" >&2; exit 2 ;;
esac
if [ "$DURATION" -gt 300 ]; then
  echo "loadtest: at most 300 s" >&2
  exit 2
fi
command -v cargo >/dev/null || { echo "loadtest: cargo is required (rustup.rs)" >&2; exit 1; }

echo "=== building (release)"
cargo build --release -p tiermap-server --bins
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
BIN="${TARGET_DIR:-target}/release"

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

echo "=== starting the server"
# shellcheck disable=SC2086 # SERVER_ARGS is a list of flags.
"$BIN/tiermap-server" 0 $SERVER_ARGS >"$WORK/stdout" 2>"$WORK/stderr" &
SERVER_PID=$!
ADDR=""
for _ in $(seq 100); do
  ADDR="$(head -n 1 "$WORK/stdout" 2>/dev/null || true)"
  [ -n "$ADDR" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || break
  sleep 0.1
done
case "$ADDR" in
  127.0.0.1:*) ;;
  *) echo "loadtest: the server did not start:" >&2; cat "$WORK/stderr" >&2; exit 1 ;;
esac
rss() { awk -v f="$1" '$1 == f { printf "%.1f MiB", $2 / 1024 }' "/proc/$SERVER_PID/status"; }
echo "server pid $SERVER_PID on http://$ADDR; RSS $(rss VmRSS:)"
echo

# The load generator stops by itself; the timeout is a backstop.
timeout --kill-after=10 "$((DURATION + 120))" \
  "$BIN/load" --addr "$ADDR" --pid "$SERVER_PID" --duration "$DURATION" \
  --concurrency "$CONCURRENCY" --key-space "$KEY_SPACE" --huge-keys "$HUGE_KEYS" \
  --huge-every "$HUGE_EVERY" --max-requests "$MAX_REQUESTS"

echo
echo "=== server at the end: RSS $(rss VmRSS:), peak RSS $(rss VmHWM:)"
echo "command: scripts/loadtest.sh $DURATION (CONCURRENCY=$CONCURRENCY KEY_SPACE=$KEY_SPACE" \
  "HUGE_KEYS=$HUGE_KEYS HUGE_EVERY=$HUGE_EVERY SERVER_ARGS='$SERVER_ARGS')"
