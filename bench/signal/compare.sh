#!/usr/bin/env bash
# Before/after benchmark of two iceway-signal binaries under the same load as run.sh, in the same
# time window: ROUNDS rounds, the order flipping each round so drift favours neither; reports the
# median of each measure and the ratio candidate/baseline.
#   BASELINE=path/to/old/iceway-signal CANDIDATE=path/to/new/iceway-signal bench/signal/compare.sh
# Environment as run.sh (PAIRS, RATE, SIZE, DURATION, IDLE_PAIRS, OUT) plus ROUNDS (3).
# Needs: a release iceway-loadtest (cargo build --release -p iceway-loadtest), python3.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PAIRS=${PAIRS:-500}
RATE=${RATE:-10000}
SIZE=${SIZE:-500}
DURATION=${DURATION:-5s}
IDLE_PAIRS=${IDLE_PAIRS:-9500}
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-$ROOT/bench/results/signal-compare-$(date -u +%Y%m%dT%H%M%SZ)}
LT=${ICEWAY_LOADTEST_BIN:-$ROOT/target/release/iceway-loadtest}
: "${BASELINE:?set BASELINE to the iceway-signal binary to compare against}"
: "${CANDIDATE:?set CANDIDATE to the iceway-signal binary under test}"
for f in "$LT" "$BASELINE" "$CANDIDATE"; do
  [ -x "$f" ] || { echo "missing $f" >&2; exit 1; }
done
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
head -c 48 /dev/urandom | base64 >"$WORK/jwt"
. "$HERE/server-env.sh"

# An older binary refuses configuration keys it does not know: BASELINE_UNSET lists the
# variables above to leave out of its environment (default: the per-address limits, which
# such a binary does not have).
BASELINE_UNSET=${BASELINE_UNSET-ICEWAY_SIGNAL__MAX_CONNECTIONS_PER_IP ICEWAY_SIGNAL__UPGRADES_PER_MINUTE ICEWAY_SIGNAL__UPGRADE_BURST}

# run_one ROUND PHASE NAME BIN PAIRS RATE
run_one() {
  local round=$1 phase=$2 name=$3 bin=$4 pairs=$5 rate=$6 port
  local -a unset=()
  if [ "$name" = baseline ]; then
    for v in $BASELINE_UNSET; do unset+=(-u "$v"); done
  fi
  port=$(free_port)
  env "${unset[@]}" "$bin" --listen "127.0.0.1:$port" --admin "127.0.0.1:$(free_port)" \
    --jwt-secret-file "$WORK/jwt" >"$OUT/r${round}_${phase}__${name}.server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 150); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), timeout=0.2).close()" 2>/dev/null && break
    sleep 0.1
  done
  echo "== round $round: $phase on $name (pid $SERVER_PID)" >&2
  timeout 90 "$LT" signal --url "ws://127.0.0.1:$port/v1/ws" --protocol iceway \
    --jwt-secret-file "$WORK/jwt" --pairs "$pairs" --rate "$rate" --message-size "$SIZE" \
    --duration "$DURATION" --server-pid "$SERVER_PID" --setup-timeout 30s --drain 2s --json \
    --no-progress >"$OUT/r${round}_${phase}__${name}.json" 2>"$OUT/r${round}_${phase}__${name}.err" \
    || echo "   failed: $(tail -1 "$OUT/r${round}_${phase}__${name}.err")" >&2
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}

for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then order="baseline candidate"; else order="candidate baseline"; fi
  for name in $order; do
    bin=$BASELINE; [ "$name" = candidate ] && bin=$CANDIDATE
    run_one "$round" traffic "$name" "$bin" "$PAIRS" "$RATE"
    if [ "$IDLE_PAIRS" -gt 0 ]; then run_one "$round" idle "$name" "$bin" "$IDLE_PAIRS" 0; fi
  done
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import json, os, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def get(r, *path):
    for k in path:
        r = (r or {}).get(k)
    return r
def load(round, phase, name):
    try:
        with open(os.path.join(out, f"r{round}_{phase}__{name}.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
rows = [
    ("messages per server CPU-second", "traffic", ("server", "relayed_per_cpu_second"), 1),
    ("relay latency p99 µs", "traffic", ("traffic", "latency_us", "p99"), 1),
    ("RSS per idle connection kB", "idle", ("server", "rss_bytes_per_flow"), 1 / 1024),
    ("idle connections held", "idle", ("signal", "connections_held"), 1),
]
print("| measure | baseline (median) | candidate (median) | candidate/baseline | per round (b / c) |")
print("|---|---|---|---|---|")
for label, phase, path, scale in rows:
    vals = {n: [get(load(r, phase, n), *path) for r in range(1, rounds + 1)] for n in ("baseline", "candidate")}
    med = {n: statistics.median([v * scale for v in vs if v is not None]) if any(v is not None for v in vs) else None for n, vs in vals.items()}
    ratio = med["candidate"] / med["baseline"] if med["baseline"] and med["candidate"] else None
    per = "; ".join(f"{(b or 0) * scale:.1f} / {(c or 0) * scale:.1f}" for b, c in zip(vals["baseline"], vals["candidate"]))
    fmt = lambda x: "–" if x is None else f"{x:.2f}"
    print(f"| {label} | {fmt(med['baseline'])} | {fmt(med['candidate'])} | {fmt(ratio)} | {per} |")
PY
echo "reports in $OUT" >&2
