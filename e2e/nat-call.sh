#!/usr/bin/env bash
# 4a: Rust camera <-> Rust viewer through iceway-turn, relay only, each client behind its own
# NAT router, the server in a namespace of its own:
#
#   cam host (192.168.1.2) -- r1 [nft masquerade] --\
#                                                    br0 10.99.0.1 (server ns: iceway dev)
#   viewer host (192.168.2.2) -- r2 [masquerade] ---/
#
# The hosts have no route to each other's LAN; media can only flow through the TURN relay.
# Namespaces are named uniquely per run and deleted on exit. Needs root, ip (iproute2), nft.
# Usage: e2e/nat-call.sh [TARGET_DIR]   (binaries from TARGET_DIR/debug, default target/)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
target="${1:-${CARGO_TARGET_DIR:-$root/target}}"
iceway="$target/debug/iceway"
client="$target/debug/iceway-client"

fail() { echo "nat-call: FAIL: $*" >&2; exit 1; }
for tool in ip nft; do command -v "$tool" >/dev/null || fail "$tool is missing (apt-get install iproute2 nftables)"; done
[ "$(id -u)" = 0 ] || fail "needs root (network namespaces)"
[ -x "$iceway" ] || fail "$iceway missing (cargo build -p iceway)"
[ -x "$client" ] || fail "$client missing (cargo build -p iceway-client)"

id="iw$$"
srv="$id-srv"; r1="$id-r1"; r2="$id-r2"; h1="$id-cam"; h2="$id-view"
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  for ns in "$h1" "$h2" "$r1" "$r2" "$srv"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

for ns in "$srv" "$r1" "$r2" "$h1" "$h2"; do
  ip netns add "$ns"
  ip -n "$ns" link set lo up
done

# Server: a bridge the two routers' WAN sides plug into.
ip -n "$srv" link add br0 type bridge
ip -n "$srv" addr add 10.99.0.1/24 dev br0
ip -n "$srv" link set br0 up

# router_setup NS INDEX HOST: WAN 10.99.0.1INDEX on the bridge, LAN 192.168.INDEX.1 to HOST.
router_setup() {
  local r="$1" n="$2" h="$3"
  ip link add "w$n-$id" type veth peer name "b$n-$id"
  ip link set "w$n-$id" netns "$r"
  ip link set "b$n-$id" netns "$srv"
  ip -n "$srv" link set "b$n-$id" master br0 up
  ip -n "$r" link set "w$n-$id" name wan up
  ip -n "$r" addr add "10.99.0.1$n/24" dev wan

  ip link add "l$n-$id" type veth peer name "h$n-$id"
  ip link set "l$n-$id" netns "$r"
  ip link set "h$n-$id" netns "$h"
  ip -n "$r" link set "l$n-$id" name lan up
  ip -n "$r" addr add "192.168.$n.1/24" dev lan
  ip -n "$h" link set "h$n-$id" name eth0 up
  ip -n "$h" addr add "192.168.$n.2/24" dev eth0
  ip -n "$h" route add default via "192.168.$n.1"

  ip netns exec "$r" sysctl -qw net.ipv4.ip_forward=1
  ip netns exec "$r" nft -f - <<EOF
table ip nat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" counter masquerade
  }
}
table ip filter {
  chain forward {
    type filter hook forward priority filter; policy drop;
    iifname "lan" oifname "wan" accept
    iifname "wan" oifname "lan" ct state established,related accept
  }
}
EOF
}
router_setup "$r1" 1 "$h1"
router_setup "$r2" 2 "$h2"

# The stack in the server namespace; it prints one JSON line when ready (fixed ports are fine:
# the namespace is private to this run).
mkfifo "$work/dev.fifo"
ip netns exec "$srv" env RUST_LOG=warn "$iceway" --state-dir "$work/state" dev --bind 10.99.0.1 \
  --http-port 8080 --turn-port 3478 --relay-range 50000-50200 --json >"$work/dev.fifo" 2>"$work/dev.log" &
pids+=($!)
exec 3<"$work/dev.fifo"
read -r -t 30 -u 3 ready || { cat "$work/dev.log" >&2; fail "iceway dev did not start within 30 s"; }
printf '%s\n' "$ready" >"$work/dev.json"
json() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$work/dev.json" "$1"; }
signal="$(json signal_url)"; cam_token="$(json camera_token)"; view_token="$(json viewer_token)"; cam_id="$(json camera_id)"

ip netns exec "$h1" env RUST_LOG=warn "$client" --signal "$signal" --token "$cam_token" --relay-only \
  camera --duration 90s >"$work/cam.out" 2>"$work/cam.log" &
pids+=($!)

set +e
ip netns exec "$h2" env RUST_LOG=warn "$client" --signal "$signal" --token "$view_token" --relay-only \
  viewer --camera "$cam_id" --frames 90 --timeout 60s >"$work/viewer.json" 2>"$work/viewer.log"
code=$?
set -e
cat "$work/viewer.log" >&2
[ "$code" = 0 ] || { echo "--- camera log" >&2; tail -20 "$work/cam.log" >&2; echo "--- dev log" >&2; tail -20 "$work/dev.log" >&2; fail "viewer exited $code"; }

report="$(tail -n1 "$work/viewer.json")"
python3 - "$report" <<'EOF'
import json, sys
r = json.loads(sys.argv[1])
assert r["ok"] and r["frames"] >= 90, r
pair = r["selected_pair"] or {}
assert pair.get("local") == "relay", f"selected pair is not relayed: {pair}"
print(f"nat-call: {r['frames']} frames, time to first frame {r['time_to_first_frame_ms']} ms, "
      f"{r['fps']} fps, {r['bitrate_kbps']} kbit/s, pair {pair['local']} -> {pair['remote']}")
EOF
# Both clients really were behind NAT: each router masqueraded their traffic.
for r in "$r1" "$r2"; do
  packets="$(ip netns exec "$r" nft list chain ip nat postrouting | sed -n 's/.*counter packets \([0-9]*\).*/\1/p' | head -n1)"
  [ "${packets:-0}" -gt 0 ] || fail "router $r masqueraded no packets"
done
echo "1 passed, 0 failed"
