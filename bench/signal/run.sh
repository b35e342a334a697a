#!/usr/bin/env bash
# Side-by-side signaling benchmark: iceway-signal and peerjs-server 1.0.2 (npm package `peer`),
# started one after the other in the same time window, each under the same load from
# `iceway-loadtest signal` (its own process, so each side has its own open-file limit).
#
# Phases (the server order flips between phases so drift does not favour one side):
#   traffic  PAIRS camera/viewer pairs, RATE relayed ~SIZE-byte messages/s in total, DURATION
#   idle     IDLE_PAIRS pairs (2 connections each) negotiated and held for DURATION: RSS per
#            connection and the connect rate at scale
# Environment: PAIRS (500), RATE (10000), SIZE (500), DURATION (5s), IDLE_PAIRS (9500 = 19,000
# connections; 0 skips), OUT (bench/results/signal-<time>), NO_BUILD=1, PERF=1 (perf record
# the server during the traffic phase, if perf is installed).
# Needs: cargo, node + npm (installs peer@1.0.2 into bench/signal/node_modules), python3.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PAIRS=${PAIRS:-500}
RATE=${RATE:-10000}
SIZE=${SIZE:-500}
DURATION=${DURATION:-5s}
IDLE_PAIRS=${IDLE_PAIRS:-9500}
OUT=${OUT:-$ROOT/bench/results/signal-$(date -u +%Y%m%dT%H%M%SZ)}
LT=${ICEWAY_LOADTEST_BIN:-$ROOT/target/release/iceway-loadtest}
SIGNAL=${ICEWAY_SIGNAL_BIN:-$ROOT/target/release/iceway-signal}
PEERJS=$HERE/node_modules/.bin/peerjs

if [ -z "${NO_BUILD:-}" ]; then
  (cd "$ROOT" && cargo build --release -p iceway-loadtest -p iceway-signal)
fi
if [ ! -x "$PEERJS" ]; then
  npm install --prefix "$HERE" --no-save --no-audit --no-fund peer@1.0.2 >&2
fi
for f in "$LT" "$SIGNAL" "$PEERJS"; do
  [ -x "$f" ] || { echo "missing $f" >&2; exit 1; }
done
mkdir -p "$OUT"
WORK=$(mktemp -d)
SERVER_PID=""
PERF_PID=""
cleanup() {
  if [ -n "$PERF_PID" ]; then kill -INT "$PERF_PID" 2>/dev/null || true; fi
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_tcp() {
  python3 - "$1" <<'EOF'
import socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
deadline = time.time() + 15
while time.time() < deadline:
    try:
        socket.create_connection((host, int(port)), timeout=0.2).close(); sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit("nothing listening on " + sys.argv[1])
EOF
}

# utime + stime of a process, in clock ticks (fields 14 and 15 of /proc/PID/stat).
cpu_ticks() {
  sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}

head -c 48 /dev/urandom | base64 >"$WORK/jwt"
. "$HERE/server-env.sh"

# run_one PHASE SERVER PAIRS RATE
run_one() {
  local phase=$1 server=$2 pairs=$3 rate=$4 port url proto
  port=$(free_port)
  case $server in
    iceway)
      "$SIGNAL" --listen "127.0.0.1:$port" --admin "127.0.0.1:$(free_port)" \
        --jwt-secret-file "$WORK/jwt" >"$OUT/${phase}__${server}.server.log" 2>&1 &
      url="ws://127.0.0.1:$port/v1/ws"; proto=iceway ;;
    peerjs)
      "$PEERJS" --port "$port" --host 127.0.0.1 --concurrent_limit 20000 \
        >"$OUT/${phase}__${server}.server.log" 2>&1 &
      url="ws://127.0.0.1:$port/peerjs"; proto=peerjs ;;
  esac
  SERVER_PID=$!
  wait_tcp "127.0.0.1:$port"
  echo "== $phase on $server (pid $SERVER_PID): $pairs pairs, $rate msg/s, $DURATION" >&2
  if [ -n "${PERF:-}" ] && [ "$phase" = traffic ] && command -v perf >/dev/null; then
    # Starts at once; the connect phase is short next to DURATION, so the profile is traffic.
    perf record -g -F 999 -p "$SERVER_PID" -o "$OUT/perf-$server.data" >/dev/null 2>&1 &
    PERF_PID=$!
  fi
  local cpu0; cpu0=$(cpu_ticks "$SERVER_PID")
  timeout 60 "$LT" signal --url "$url" --protocol "$proto" --jwt-secret-file "$WORK/jwt" \
    --pairs "$pairs" --rate "$rate" --message-size "$SIZE" --duration "$DURATION" \
    --server-pid "$SERVER_PID" --setup-timeout 20s --drain 2s --json --no-progress \
    >"$OUT/${phase}__${server}.json" 2>"$OUT/${phase}__${server}.err" \
    || echo "   failed: $(tail -1 "$OUT/${phase}__${server}.err")" >&2
  # Server CPU over the whole run (connects, negotiation, hold, closes), for connects per
  # server CPU-second: the connect rate alone measures the shared 2-core machine.
  echo "$(( $(cpu_ticks "$SERVER_PID") - cpu0 )) $(getconf CLK_TCK)" >"$OUT/${phase}__${server}.cpu"
  if [ -n "$PERF_PID" ]; then
    kill -INT "$PERF_PID" 2>/dev/null || true; wait "$PERF_PID" 2>/dev/null || true; PERF_PID=""
  fi
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}

run_one traffic iceway "$PAIRS" "$RATE"
run_one traffic peerjs "$PAIRS" "$RATE"
if [ "$IDLE_PAIRS" -gt 0 ]; then
  run_one idle peerjs "$IDLE_PAIRS" 0
  run_one idle iceway "$IDLE_PAIRS" 0
fi

echo "reports in $OUT" >&2
python3 "$HERE/table.py" "$OUT"
