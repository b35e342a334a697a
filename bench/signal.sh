#!/usr/bin/env bash
# Side-by-side signaling benchmark: iceway-signal and peerjs-server (npm package `peer`), one
# after the other, with the same camera/viewer load from iceway-loadtest's `signal` mode.
#
# Two phases per server: traffic (PAIRS pairs, RATE messages/s) and idle (IDLE_PAIRS pairs held
# open for DURATION, for RSS per connection and the connect rate at scale).
# Environment: PAIRS (default 500), RATE (relayed messages per second over all pairs, default
# 10000), SIZE (bytes per message, default 500), DURATION (default 5s), IDLE_PAIRS (default 9500:
# 19,000 connections, under the 20,000 open-file limit; 0 skips), OUT, NO_BUILD=1.
# Needs: peerjs-server (npm install -g peer@1.0.2), python3.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PAIRS=${PAIRS:-500}
RATE=${RATE:-10000}
SIZE=${SIZE:-500}
DURATION=${DURATION:-5s}
IDLE_PAIRS=${IDLE_PAIRS:-9500}
OUT=${OUT:-$ROOT/bench/results/signal-$(date -u +%Y%m%dT%H%M%SZ)}
LT=$ROOT/target/release/iceway-loadtest
SIGNAL=${ICEWAY_SIGNAL_BIN:-$ROOT/target/release/iceway-signal}

if [ -z "${NO_BUILD:-}" ]; then
  (cd "$ROOT" && cargo build --release -p iceway-loadtest -p iceway-signal)
fi
command -v peerjs >/dev/null || { echo "peerjs missing: npm install -g peer@1.0.2" >&2; exit 1; }
mkdir -p "$OUT"
WORK=$(mktemp -d)
SERVER_PID=""
cleanup() {
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

head -c 48 /dev/urandom | base64 >"$WORK/jwt"
# The load sends RATE/PAIRS frames per second per camera: lift the per-connection limit above it
# (the default, 20/s, is for real clients, not this benchmark).
export ICEWAY_SIGNAL__RATE_PER_SECOND=$((RATE / PAIRS * 4 + 100))
export ICEWAY_SIGNAL__RATE_BURST=$((RATE / PAIRS * 8 + 200))
# Room for the idle phase's 19,000 connections (both servers default to fewer).
export ICEWAY_SIGNAL__MAX_CONNECTIONS=19500
ulimit -n 20000 2>/dev/null || true

run_phase() {
  local phase=$1 pairs=$2 rate=$3 server port url proto
  for server in iceway peerjs; do
    port=$(free_port)
    case $server in
      iceway)
        "$SIGNAL" --listen "127.0.0.1:$port" --admin "127.0.0.1:$(free_port)" \
          --jwt-secret-file "$WORK/jwt" >"$WORK/signal.log" 2>&1 &
        url="ws://127.0.0.1:$port/v1/ws"; proto=iceway
        ;;
      peerjs)
        peerjs --port "$port" --host 127.0.0.1 --concurrent_limit 20000 >"$WORK/peerjs.log" 2>&1 &
        url="ws://127.0.0.1:$port/peerjs"; proto=peerjs
        ;;
    esac
    SERVER_PID=$!
    wait_tcp "127.0.0.1:$port"
    echo "== signal $phase on $server ($url, pid $SERVER_PID): $pairs pairs, $rate msg/s" >&2
    "$LT" signal --url "$url" --protocol "$proto" --jwt-secret-file "$WORK/jwt" --pairs "$pairs" \
      --rate "$rate" --message-size "$SIZE" --duration "$DURATION" --server-pid "$SERVER_PID" \
      --setup-timeout 120s --json --no-progress \
      >"$OUT/${phase}__${server}.json" 2>"$OUT/${phase}__${server}.err" \
      || echo "   failed: $(tail -1 "$OUT/${phase}__${server}.err")" >&2
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  done
}

run_phase signal "$PAIRS" "$RATE"
if [ "$IDLE_PAIRS" -gt 0 ]; then run_phase idle "$IDLE_PAIRS" 0; fi

python3 - "$OUT" <<'EOF'
import json, os, sys
d = sys.argv[1]
rows = {}
for s in ("iceway", "peerjs"):
    p = os.path.join(d, f"signal__{s}.json")
    if os.path.exists(p):
        rows[s] = json.load(open(p))
def g(r, *path):
    for k in path:
        r = (r or {}).get(k)
    return r
print("| server | msgs/CPU-s | p50 µs | p99 µs | loss | connects/s | watch→answer p50 ms | RSS/conn kB | errors |")
print("|---|---|---|---|---|---|---|---|---|")
idle = {}
for s in ("iceway", "peerjs"):
    p = os.path.join(d, f"idle__{s}.json")
    if os.path.exists(p):
        idle[s] = json.load(open(p))
for s, r in rows.items():
    per = g(r, "server", "relayed_per_cpu_second") or 0
    rss = g(r, "server", "rss_bytes_per_flow") or 0
    print(f"| {s} | {per/1000:.1f}k | {g(r,'traffic','latency_us','p50'):.0f} | {g(r,'traffic','latency_us','p99'):.0f} "
          f"| {g(r,'traffic','loss_ratio')*100:.2f} % | {g(r,'setup','per_second'):.0f} "
          f"| {g(r,'signal','watch_to_answer_us','p50')/1000:.1f} | {rss/1024:.1f} | {g(r,'signal','errors')} |")
if len(rows) == 2:
    a, b = (g(rows[s], "server", "relayed_per_cpu_second") for s in ("iceway", "peerjs"))
    if a and b:
        print(f"\niceway/peerjs messages per CPU-second: {a/b:.2f}")
if idle:
    print("\n| server (idle) | connections held | connects/s | RSS per connection kB | errors |")
    print("|---|---|---|---|---|")
    for s, r in idle.items():
        print(f"| {s} | {g(r,'signal','connections_held')} | {g(r,'setup','per_second'):.0f} "
              f"| {(g(r,'server','rss_bytes_per_flow') or 0)/1024:.2f} | {g(r,'signal','errors')} |")
EOF
