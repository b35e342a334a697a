#!/usr/bin/env bash
# Side-by-side signaling benchmark: iceway-signal, peerjs-server 1.0.2 (npm package `peer`) and
# the bare WebSocket relay `ceiling-ws` (the most a relay on iceway-signal's stack could do),
# started one after the other in the same time window, each under the same load from
# `iceway-loadtest signal` (its own process, so each side has its own open-file limit).
#
# Phases, in each of ROUNDS rounds (the server order flips from one phase to the next, and
# so from one round to the next, so drift does not favour one side):
#   traffic  PAIRS camera/viewer pairs, RATE relayed ~SIZE-byte messages/s in total, DURATION;
#            servers: ceiling, iceway, peerjs
#   idle     IDLE_PAIRS pairs (2 connections each) negotiated and held for DURATION: RSS per
#            connection and the connect rate at scale; iceway, peerjs
#   storm    STORM_PAIRS pairs (2 clients each) connected to replica A, which is then told to
#            drain (SIGTERM); every client reconnects once to replica B, already running. Time
#            from the first lost socket to the last welcome/OPEN, B's CPU per connect,
#            failures. iceway: A closes every socket 1001 after its drain grace (STORM_GRACE),
#            no Redis (a drained replica ends its sessions, so there is nothing to resume).
#            peerjs (no drain: on SIGTERM it stops listening and keeps its sockets): A is
#            killed STORM_GRACE after SIGTERM, as an orchestrator does at the end of a pod's
#            grace period, and the kernel ends its sockets.
# Environment: PAIRS (500), RATE (10000), SIZE (500), DURATION (5s), IDLE_PAIRS (9500 = 19,000
# connections; 0 skips), STORM_PAIRS (9500; 0 skips), STORM_GRACE (1s), ROUNDS (1), OUT
# (bench/results/signal-<time>), NO_BUILD=1, PERF=1 (perf record the servers during round 1's
# traffic phase, if perf is installed); binaries ICEWAY_LOADTEST_BIN, ICEWAY_SIGNAL_BIN,
# CEILING_WS_BIN (default target/release/...).
# Needs: cargo, node + npm (installs peer@1.0.2 into bench/signal/node_modules), python3.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PAIRS=${PAIRS:-500}
RATE=${RATE:-10000}
SIZE=${SIZE:-500}
DURATION=${DURATION:-5s}
IDLE_PAIRS=${IDLE_PAIRS:-9500}
STORM_PAIRS=${STORM_PAIRS:-9500}
STORM_GRACE=${STORM_GRACE:-1s}
ROUNDS=${ROUNDS:-1}
OUT=${OUT:-$ROOT/bench/results/signal-$(date -u +%Y%m%dT%H%M%SZ)}
LT=${ICEWAY_LOADTEST_BIN:-$ROOT/target/release/iceway-loadtest}
SIGNAL=${ICEWAY_SIGNAL_BIN:-$ROOT/target/release/iceway-signal}
CEILING=${CEILING_WS_BIN:-$ROOT/target/release/ceiling-ws}
PEERJS=$HERE/node_modules/.bin/peerjs

if [ -z "${NO_BUILD:-}" ]; then
  (cd "$ROOT" && cargo build --release -p iceway-loadtest -p iceway-signal)
fi
if [ ! -x "$PEERJS" ]; then
  npm install --prefix "$HERE" --no-save --no-audit --no-fund peer@1.0.2 >&2
fi
for f in "$LT" "$SIGNAL" "$CEILING" "$PEERJS"; do
  [ -x "$f" ] || { echo "missing $f" >&2; exit 1; }
done
mkdir -p "$OUT"
WORK=$(mktemp -d)
SERVER_PIDS=()
PERF_PID=""
stop_servers() {
  local pid
  for pid in "${SERVER_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${SERVER_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  SERVER_PIDS=()
}
cleanup() {
  if [ -n "$PERF_PID" ]; then kill -INT "$PERF_PID" 2>/dev/null || true; fi
  stop_servers
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

# start_server SERVER LOG [ENV=VALUE...]: starts one server on a free port; sets STARTED_PID,
# STARTED_URL and STARTED_PROTO.
start_server() {
  local server=$1 log=$2 port; shift 2
  port=$(free_port)
  case $server in
    iceway)
      env "$@" "$SIGNAL" --listen "127.0.0.1:$port" --admin "127.0.0.1:$(free_port)" \
        --jwt-secret-file "$WORK/jwt" >"$log" 2>&1 &
      STARTED_URL="ws://127.0.0.1:$port/v1/ws"; STARTED_PROTO=iceway ;;
    peerjs)
      "$PEERJS" --port "$port" --host 127.0.0.1 --concurrent_limit 20000 >"$log" 2>&1 &
      STARTED_URL="ws://127.0.0.1:$port/peerjs"; STARTED_PROTO=peerjs ;;
    ceiling)
      "$CEILING" --listen "127.0.0.1:$port" >"$log" 2>&1 &
      STARTED_URL="ws://127.0.0.1:$port/"; STARTED_PROTO=ceiling ;;
  esac
  STARTED_PID=$!
  SERVER_PIDS+=("$STARTED_PID")
  wait_tcp "127.0.0.1:$port"
}

# run_one ROUND PHASE SERVER PAIRS RATE
run_one() {
  local round=$1 phase=$2 server=$3 pairs=$4 rate=$5 name pid
  name="r${round}_${phase}__${server}"
  start_server "$server" "$OUT/$name.server.log"
  pid=$STARTED_PID
  echo "== round $round: $phase on $server (pid $pid): $pairs pairs, $rate msg/s, $DURATION" >&2
  if [ -n "${PERF:-}" ] && [ "$round" = 1 ] && [ "$phase" = traffic ] && command -v perf >/dev/null; then
    # Starts at once; the connect phase is short next to DURATION, so the profile is traffic.
    perf record -g -F 999 -p "$pid" -o "$OUT/perf-$server.data" >/dev/null 2>&1 &
    PERF_PID=$!
  fi
  local cpu0; cpu0=$(cpu_ticks "$pid")
  timeout 90 "$LT" signal --url "$STARTED_URL" --protocol "$STARTED_PROTO" \
    --jwt-secret-file "$WORK/jwt" --pairs "$pairs" --rate "$rate" --message-size "$SIZE" \
    --duration "$DURATION" --server-pid "$pid" --setup-timeout 30s --drain 2s --json \
    --no-progress >"$OUT/$name.json" 2>"$OUT/$name.err" \
    || echo "   failed: $(tail -1 "$OUT/$name.err")" >&2
  # Server CPU over the whole run (connects, negotiation, hold, closes), for connects per
  # server CPU-second: the connect rate alone measures the shared 2-core machine.
  echo "$(( $(cpu_ticks "$pid") - cpu0 )) $(getconf CLK_TCK)" >"$OUT/$name.cpu"
  if [ -n "$PERF_PID" ]; then
    kill -INT "$PERF_PID" 2>/dev/null || true; wait "$PERF_PID" 2>/dev/null || true; PERF_PID=""
  fi
  stop_servers
}

# run_storm ROUND SERVER: clients on replica A, A told to drain, everyone back on replica B.
run_storm() {
  local round=$1 server=$2 name a_pid a_url b_pid b_url
  local -a kill=()
  [ "$server" = peerjs ] && kill=(--storm-kill-after "$STORM_GRACE")
  name="r${round}_storm__${server}"
  # Only A drains; a short grace, since the storm starts when the sockets close, not before.
  start_server "$server" "$OUT/$name.a.server.log" "ICEWAY_DRAIN__TIMEOUT=$STORM_GRACE"
  a_pid=$STARTED_PID; a_url=$STARTED_URL
  start_server "$server" "$OUT/$name.b.server.log"
  b_pid=$STARTED_PID; b_url=$STARTED_URL
  echo "== round $round: storm on $server: $((2 * STORM_PAIRS)) clients from pid $a_pid to pid $b_pid" >&2
  timeout 180 "$LT" signal --url "$a_url" --protocol "$STARTED_PROTO" \
    --jwt-secret-file "$WORK/jwt" --pairs "$STORM_PAIRS" --rate 0 --server-pid "$b_pid" \
    --storm-url "$b_url" --storm-drain-pid "$a_pid" "${kill[@]}" --storm-timeout 60s --setup-timeout 60s \
    --json --no-progress >"$OUT/$name.json" 2>"$OUT/$name.err" \
    || echo "   failed: $(tail -1 "$OUT/$name.err")" >&2
  # A has been told to stop; give its drain a bounded time to end before the next run.
  for _ in $(seq 1 300); do kill -0 "$a_pid" 2>/dev/null || break; sleep 0.1; done
  stop_servers
}

for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then
    traffic="ceiling iceway peerjs"; idle="peerjs iceway"; storm="iceway peerjs"
  else
    traffic="peerjs iceway ceiling"; idle="iceway peerjs"; storm="peerjs iceway"
  fi
  for s in $traffic; do run_one "$round" traffic "$s" "$PAIRS" "$RATE"; done
  if [ "$IDLE_PAIRS" -gt 0 ]; then
    for s in $idle; do run_one "$round" idle "$s" "$IDLE_PAIRS" 0; done
  fi
  if [ "$STORM_PAIRS" -gt 0 ]; then
    for s in $storm; do run_storm "$round" "$s"; done
  fi
done

echo "reports in $OUT" >&2
python3 "$HERE/table.py" "$OUT"
