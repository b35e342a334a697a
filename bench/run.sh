#!/usr/bin/env bash
# Side-by-side TURN/STUN benchmark: the bare ceiling relay, coturn and iceway-turn, started one
# after another for every load shape (alternated in the same time window), each measured by
# iceway-loadtest with the server's PID. Prints a table of ratios at the end (bench/table.py).
#
# Environment: DURATION (per run, default 3s), THREADS (load-side worker threads, default 1),
# SERVERS (default "ceiling coturn iceway"), SHAPES (names from the list below, default all),
# OUT (results directory), NO_BUILD=1 to skip the release build.
# Needs: coturn's turnserver (apt-get install -y --no-install-recommends coturn), python3.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-3s}
THREADS=${THREADS:-1}
SERVERS=${SERVERS:-"ceiling coturn iceway"}
OUT=${OUT:-$ROOT/bench/results/$(date -u +%Y%m%dT%H%M%SZ)}
LT=$ROOT/target/release/iceway-loadtest
CEILING=$ROOT/target/release/ceiling-relay
ICEWAY=${ICEWAY_TURN_BIN:-$ROOT/target/release/iceway-turn}
SECRET="bench-secret-$$"

# name | loadtest arguments
SHAPE_LIST=(
  "a100-flood-120|turn -n 100 --window 8 --size 120"
  "a100-flood-1000|turn -n 100 --window 8 --size 1000"
  "a100-50pps-120|turn -n 100 --rate 50 --size 120"
  "a100-50pps-1000|turn -n 100 --rate 50 --size 1000"
  "a1000-flood-120|turn -n 1000 --window 2 --size 120"
  "a1000-flood-1000|turn -n 1000 --window 2 --size 1000"
  "a1000-50pps-120|turn -n 1000 --rate 50 --size 120"
  "a1000-50pps-1000|turn -n 1000 --rate 50 --size 1000"
  "tcp-a100-flood-120|turn -n 100 --window 8 --size 120 --transport tcp"
  "tcp-a100-50pps-120|turn -n 100 --rate 50 --size 120 --transport tcp"
  "stun-flood|stun --sockets 16 --window 16"
)

if [ -z "${NO_BUILD:-}" ]; then
  (cd "$ROOT" && cargo build --release -p iceway-loadtest -p iceway-turn)
fi
command -v turnserver >/dev/null || { echo "turnserver missing: apt-get install -y --no-install-recommends coturn" >&2; exit 1; }
mkdir -p "$OUT"
WORK=$(mktemp -d)
SERVER_PID=""

cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 - <<'EOF'
import socket
for _ in range(100):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0)); p = u.getsockname()[1]
    t = socket.socket()
    try:
        t.bind(("127.0.0.1", p)); print(p); break
    except OSError:
        pass
    finally:
        t.close(); u.close()
EOF
}

# Waits (up to 15 s) until ADDR answers: a STUN Binding, or the ceiling relay's bind frame.
wait_ready() {
  python3 - "$1" "$2" <<'EOF'
import socket, struct, sys, time
host, port = sys.argv[1].rsplit(":", 1); kind = sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.2)
if kind == "ceiling":
    req = struct.pack("!HH4sH", 0xFFFF, 6, socket.inet_aton("127.0.0.1"), 9)
else:
    req = struct.pack("!HHI12s", 1, 0, 0x2112A442, b"benchwaiting")
deadline = time.time() + 15
while time.time() < deadline:
    s.sendto(req, (host, int(port)))
    try:
        s.recvfrom(2048); sys.exit(0)
    except socket.timeout:
        pass
sys.exit("server at %s did not answer" % sys.argv[1])
EOF
}

start_server() {
  local name=$1 port
  port=$(free_port)
  SERVER_ADDR="127.0.0.1:$port"
  case $name in
    ceiling)
      "$CEILING" --listen "$SERVER_ADDR" >"$WORK/ceiling.log" 2>&1 &
      ;;
    coturn)
      rm -f "$WORK/turndb"
      turnserver -n --no-cli --no-tls --no-dtls --allow-loopback-peers \
        --listening-ip 127.0.0.1 --relay-ip 127.0.0.1 --listening-port "$port" \
        --min-port 40000 --max-port 60000 --use-auth-secret --static-auth-secret="$SECRET" \
        --realm iceway --pidfile "$WORK/turnserver.pid" --userdb "$WORK/turndb" \
        --simple-log --log-file "$WORK/coturn.log" --no-stdout-log >/dev/null 2>&1 &
      ;;
    iceway)
      echo "$SECRET" >"$WORK/secrets"
      "$ICEWAY" --listen "$SERVER_ADDR" --admin "127.0.0.1:$(free_port)" --realm iceway \
        --secret-file "$WORK/secrets" --relay-range 40000-60000 --allow-peers 127.0.0.0/8 \
        >"$WORK/iceway.log" 2>&1 &
      ;;
  esac
  SERVER_PID=$!
  wait_ready "$SERVER_ADDR" "$name"
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}

{
  echo "date: $(date -u +%FT%TZ)"
  echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -sr)"
  echo "coturn: $(turnserver --version 2>&1 | head -1)"
  echo "rustc: $(rustc --version)"
  echo "iceway: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo uncommitted)"
  echo "duration: $DURATION per run, load threads: $THREADS"
} >"$OUT/meta.txt"
cat "$OUT/meta.txt"

i=0
for entry in "${SHAPE_LIST[@]}"; do
  shape=${entry%%|*}
  args=${entry#*|}
  if [ -n "${SHAPES:-}" ] && [[ " $SHAPES " != *" $shape "* ]]; then continue; fi
  # Alternate the order so slow drift of the machine does not favour one server.
  order=$SERVERS
  if [ $((i % 2)) -eq 1 ]; then order=$(echo "$SERVERS" | tr ' ' '\n' | tac | tr '\n' ' '); fi
  i=$((i + 1))
  for server in $order; do
    if [ "$server" = ceiling ] && [[ $args == stun* || $args == *"--transport tcp"* ]]; then continue; fi
    if [ "$server" = iceway ] && [ ! -x "$ICEWAY" ]; then echo "skip iceway: $ICEWAY not built" >&2; continue; fi
    start_server "$server"
    extra=(--secret "$SECRET")
    if [ "$server" = ceiling ]; then extra=(--protocol ceiling); fi
    if [[ $args == stun* ]]; then extra=(); fi
    echo "== $shape on $server ($SERVER_ADDR, pid $SERVER_PID): iceway-loadtest $args" >&2
    # shellcheck disable=SC2086
    if ! "$LT" $args --server "$SERVER_ADDR" "${extra[@]}" --duration "$DURATION" \
      --threads "$THREADS" --server-pid "$SERVER_PID" --json --no-progress \
      >"$OUT/${shape}__${server}.json" 2>"$OUT/${shape}__${server}.err"; then
      echo "   failed: $(tail -1 "$OUT/${shape}__${server}.err")" >&2
      rm -f "$OUT/${shape}__${server}.json"
    fi
    stop_server
  done
done

# Loss at 80 % of saturation: the flood throughput of a100-flood-120 is each server's saturation
# rate on this machine; offer 80 % of it, paced, and look at the loss column of `sat80`.
if [ -z "${SHAPES:-}" ] || [[ " $SHAPES " == *" sat80 "* ]]; then
  for server in $SERVERS; do
    [ -f "$OUT/a100-flood-120__${server}.json" ] || continue
    rate=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(int(0.8*r["traffic"]["received_per_second"]/100))' \
      "$OUT/a100-flood-120__${server}.json")
    [ "$rate" -gt 0 ] || continue
    start_server "$server"
    extra=(--secret "$SECRET")
    if [ "$server" = ceiling ]; then extra=(--protocol ceiling); fi
    echo "== sat80 on $server: 100 allocations at $rate pps each (80 % of its flood rate)" >&2
    "$LT" turn -n 100 --rate "$rate" --size 120 --server "$SERVER_ADDR" "${extra[@]}" \
      --duration "$DURATION" --threads "$THREADS" --server-pid "$SERVER_PID" --json --no-progress \
      >"$OUT/sat80__${server}.json" 2>"$OUT/sat80__${server}.err" || rm -f "$OUT/sat80__${server}.json"
    stop_server
  done
fi

python3 "$ROOT/bench/table.py" "$OUT" | tee "$OUT/table.md"
