#!/usr/bin/env bash
# Side-by-side TURN/STUN benchmark: the bare ceiling relay, coturn and iceway-turn, started one
# after another for every load shape (alternated in the same time window), each measured by
# iceway-loadtest with the server's PID. Prints a table of ratios at the end (bench/table.py).
#
# Environment: DURATION (per run, default 3s), THREADS (load-side worker threads, default 1),
# SERVERS (default "ceiling coturn iceway"), SHAPES (names from the list below, default all),
# ROUNDS (default 1: every shape that many times, the server order flipped from round to round;
# the table reports the median and the min-max of the rounds), OUT (results directory),
# NO_BUILD=1 to skip the release build.
#
# Shape prefixes: none: the servers listen on 127.0.0.1. any-: the shipped listener
# (iceway-turn --listen 0.0.0.0:PORT, coturn's default binding on every interface), relays still
# on 127.0.0.1, clients still send to 127.0.0.1; the ceiling keeps its 127.0.0.1 listener.
# tcp-, tls-: client <-> server over TCP or TLS (the relay to the peer stays UDP); for TLS both
# servers serve the same self-signed certificate, made here with openssl, that the load trusts.
# Needs: coturn's turnserver (apt-get install -y --no-install-recommends coturn), python3, openssl.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-3s}
THREADS=${THREADS:-1}
ROUNDS=${ROUNDS:-1}
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
  "any-a100-flood-120|turn -n 100 --window 8 --size 120"
  "any-a100-50pps-120|turn -n 100 --rate 50 --size 120"
  "any-a1000-50pps-1000|turn -n 1000 --rate 50 --size 1000"
  "tcp-a100-flood-120|turn -n 100 --window 8 --size 120 --transport tcp"
  "tcp-a100-50pps-120|turn -n 100 --rate 50 --size 120 --transport tcp"
  "tls-a100-flood-120|turn -n 100 --window 8 --size 120 --transport tls"
  "tls-a100-flood-1000|turn -n 100 --window 8 --size 1000 --transport tls"
  "tls-a100-50pps-120|turn -n 100 --rate 50 --size 120 --transport tls"
  "tls-a100-50pps-1000|turn -n 100 --rate 50 --size 1000 --transport tls"
  "stun-flood|stun --sockets 16 --window 16"
  "any-stun-flood|stun --sockets 16 --window 16"
)

if [ -z "${NO_BUILD:-}" ]; then
  (cd "$ROOT" && cargo build --release -p iceway-loadtest -p iceway-turn)
fi
command -v turnserver >/dev/null || { echo "turnserver missing: apt-get install -y --no-install-recommends coturn" >&2; exit 1; }
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "ROUNDS must be a whole number of 1 or more, not '$ROUNDS'" >&2; exit 1; }
mkdir -p "$OUT"
WORK=$(mktemp -d)
SERVER_PID=""

cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# One certificate and key for both servers' TLS listeners (ECDSA P-256, like rcgen's default);
# the load trusts exactly this certificate (--tls-ca) under the name "localhost".
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -addext basicConstraints=critical,CA:FALSE \
  -keyout "$WORK/key.pem" -out "$WORK/cert.pem" >/dev/null 2>&1

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

# Waits (up to 15 s) until something accepts TCP at ADDR (a TLS listener).
wait_tcp() {
  python3 - "$1" <<'EOF'
import socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
deadline = time.time() + 15
while time.time() < deadline:
    try:
        socket.create_connection((host, int(port)), timeout=0.5).close(); sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit("nothing accepts TCP at %s" % sys.argv[1])
EOF
}

# start_server NAME MODE, MODE one of lo (listen on 127.0.0.1), any (the shipped listener) or
# tls (a TLS listener beside the UDP/TCP one). Sets SERVER_ADDR (where the load goes) and
# SERVER_PID.
start_server() {
  local name=$1 mode=$2 port tls_port=""
  port=$(free_port)
  SERVER_ADDR="127.0.0.1:$port"
  if [ "$mode" = tls ]; then tls_port=$(free_port); fi
  case $name in
    ceiling)
      "$CEILING" --listen "$SERVER_ADDR" >"$WORK/ceiling.log" 2>&1 &
      ;;
    coturn)
      rm -f "$WORK/turndb"
      local bind=(--listening-ip 127.0.0.1) tls=(--no-tls)
      if [ "$mode" = any ]; then bind=(); fi
      if [ "$mode" = tls ]; then
        tls=(--cert "$WORK/cert.pem" --pkey "$WORK/key.pem" --tls-listening-port "$tls_port")
      fi
      turnserver -n --no-cli --no-dtls "${tls[@]}" --allow-loopback-peers \
        "${bind[@]}" --relay-ip 127.0.0.1 --listening-port "$port" \
        --min-port 40000 --max-port 60000 --use-auth-secret --static-auth-secret="$SECRET" \
        --realm iceway --pidfile "$WORK/turnserver.pid" --userdb "$WORK/turndb" \
        --simple-log --log-file "$WORK/coturn.log" --no-stdout-log >/dev/null 2>&1 &
      ;;
    iceway)
      echo "$SECRET" >"$WORK/secrets"
      local listen=127.0.0.1 tls=()
      if [ "$mode" = any ]; then listen=0.0.0.0; fi
      if [ "$mode" = tls ]; then tls=(--tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem"); fi
      # The TLS listener is only opened with a certificate; the relay stays on 127.0.0.1 even
      # when the listener is 0.0.0.0.
      ICEWAY_TURN__RELAY_IP=127.0.0.1 ICEWAY_TURN__TLS_LISTEN="127.0.0.1:${tls_port:-5349}" \
        "$ICEWAY" --listen "$listen:$port" --admin "127.0.0.1:$(free_port)" --realm iceway \
        --secret-file "$WORK/secrets" --relay-range 40000-60000 --allow-peers 127.0.0.0/8 \
        "${tls[@]}" >"$WORK/iceway.log" 2>&1 &
      ;;
  esac
  SERVER_PID=$!
  wait_ready "$SERVER_ADDR" "$name"
  if [ -n "$tls_port" ]; then
    SERVER_ADDR="127.0.0.1:$tls_port"
    wait_tcp "$SERVER_ADDR"
  fi
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
  echo "duration: $DURATION per run, load threads: $THREADS, rounds: $ROUNDS"
} >"$OUT/meta.txt"
cat "$OUT/meta.txt"

# The server order for shape number S (from 0) in round R (from 1): as listed when S + R is odd,
# reversed when even, so it flips from shape to shape and, for each shape, from round to round.
server_order() {
  if [ $((($1 + $2) % 2)) -eq 0 ]; then echo "$SERVERS" | tr ' ' '\n' | tac | tr '\n' ' '; else echo "$SERVERS"; fi
}

mode_of() {
  case $1 in
    any-*) echo any ;;
    tls-*) echo tls ;;
    *) echo lo ;;
  esac
}

wanted() { [ -z "${SHAPES:-}" ] || [[ " $SHAPES " == *" $1 "* ]]; }

# run_one SHAPE SERVER ROUND LOADTEST-ARGS...: one measured run; its report goes to
# SHAPE__SERVER__rROUND.json (stderr beside it in .err).
run_one() {
  local shape=$1 server=$2 round=$3
  shift 3
  local base="$OUT/${shape}__${server}__r${round}"
  start_server "$server" "$(mode_of "$shape")"
  local extra=(--secret "$SECRET")
  if [ "$server" = ceiling ]; then extra=(--protocol ceiling); fi
  if [ "$1" = stun ]; then extra=(); fi
  if [[ " $* " == *" --transport tls "* ]]; then extra+=(--tls-ca "$WORK/cert.pem"); fi
  echo "== $shape on $server, round $round/$ROUNDS ($SERVER_ADDR, pid $SERVER_PID): iceway-loadtest $*" >&2
  if ! "$LT" "$@" --server "$SERVER_ADDR" "${extra[@]}" --duration "$DURATION" \
    --threads "$THREADS" --server-pid "$SERVER_PID" --json --no-progress \
    >"$base.json" 2>"$base.err"; then
    echo "   failed: $(tail -1 "$base.err")" >&2
    rm -f "$base.json"
  fi
  stop_server
}

for round in $(seq 1 "$ROUNDS"); do
  s=0
  for entry in "${SHAPE_LIST[@]}"; do
    shape=${entry%%|*}
    args=${entry#*|}
    wanted "$shape" || continue
    order=$(server_order "$s" "$round")
    s=$((s + 1))
    for server in $order; do
      # The ceiling relays UDP with its own framing: no STUN, no TCP, no TLS.
      if [ "$server" = ceiling ] && [[ $args == stun* || $args == *"--transport t"* ]]; then continue; fi
      if [ "$server" = iceway ] && [ ! -x "$ICEWAY" ]; then echo "skip iceway: $ICEWAY not built" >&2; continue; fi
      # shellcheck disable=SC2086
      run_one "$shape" "$server" "$round" $args
    done
  done

  # Loss at 80 % of saturation: the a100-flood-120 throughput (median of the rounds so far) is
  # each server's saturation rate on this machine; offer 80 % of it, paced, and look at the
  # loss column of `sat80`.
  if wanted sat80; then
    for server in $(server_order "$s" "$round"); do
      rate=$(python3 - "$OUT" "$server" <<'EOF'
import glob, json, statistics, sys
runs = glob.glob(f"{sys.argv[1]}/a100-flood-120__{sys.argv[2]}__r*.json")
rates = [json.load(open(p))["traffic"]["received_per_second"] for p in runs]
print(int(0.8 * statistics.median(rates) / 100) if rates else 0)
EOF
      )
      [ "$rate" -gt 0 ] || continue
      echo "== sat80 on $server: 100 allocations at $rate pps each (80 % of its flood rate)" >&2
      run_one sat80 "$server" "$round" turn -n 100 --rate "$rate" --size 120
    done
  fi
done

python3 "$ROOT/bench/table.py" "$OUT" | tee "$OUT/table.md"
