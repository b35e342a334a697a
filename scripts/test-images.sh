#!/usr/bin/env bash
# Builds the images (scripts/build-images.sh, arguments passed on, e.g. --skip-build) and runs each
# one with podman, hardened as the chart runs it (read-only root, no capabilities): the container
# starts, its admin /healthz answers and it runs as nonroot; iceway-signal serves /viewer from the
# image's web root; iceway-turn relays a coturn turnutils_uclient run to turnutils_peer;
# iceway-bridge passes --check-config, mints its camera's token with the mounted app key and holds
# a session on the signal container while its camera (nothing listening) stays down.
# Configuration and secrets are mounted files; every port is picked free at run time on
# 127.0.0.1, traffic stays on loopback; the containers are removed on exit.
# Needs: buildah podman runc (scripts/install-test-deps.sh), coturn's clients, curl, python3.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
start=$(date +%s)

for t in buildah podman runc turnutils_uclient turnutils_peer curl python3; do
  command -v "$t" >/dev/null || { echo "test-images: $t missing (scripts/install-test-deps.sh)" >&2; exit 1; }
done

scripts/build-images.sh "$@"
tag="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)"
out="$repo/images"
for ((i = 1; i <= $#; i++)); do
  j=$((i + 1))
  case "${!i}" in --tag) tag="${!j}" ;; --out) out="${!j}" ;; esac
done

run_id="iceway-test-$$"
work="$(mktemp -d "${TMPDIR:-/tmp}/iceway-images.XXXXXX")"
containers=()
peer_pid=""
cleanup() {
  for c in "${containers[@]}"; do podman rm -f -t 2 "$c" >/dev/null 2>&1 || true; done
  [ -z "$peer_pid" ] || kill "$peer_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# free_port [udp]: a port free for TCP and UDP on 127.0.0.1 (the kernel picks it; bind-to-0).
free_port() {
  python3 - <<'PY'
import socket
for _ in range(100):
    t = socket.socket(); t.bind(("127.0.0.1", 0)); port = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        t.close(); u.close()
    print(port); break
PY
}

# The containers run as 65532: the mounted files must be readable by it.
chmod 0755 "$work"
python3 -c 'import secrets; print(secrets.token_urlsafe(24))' >"$work/turn-secrets"
python3 -c 'import secrets; print(secrets.token_urlsafe(48))' >"$work/jwt-secret"
chmod 0644 "$work"/turn-secrets "$work"/jwt-secret
turn_secret="$(cat "$work/turn-secrets")"

turn_port=$(free_port); turn_admin=$(free_port)
signal_port=$(free_port); signal_admin=$(free_port)
auth_port=$(free_port); auth_admin=$(free_port)
bridge_admin=$(free_port); camera_port=$(free_port)

shared() {  # shared() ADMIN_PORT
  cat <<TOML
[admin]
listen = "127.0.0.1:$1"

[log]
format = "json"

[turn_credentials]
secret_file = "/etc/iceway/turn-secrets"
urls = ["turn:127.0.0.1:$turn_port?transport=udp"]
TOML
}
{
  shared "$turn_admin"
  # Loopback peers are allowed only here, for turnutils_peer; Debian's turnutils_uclient picks
  # RFC 5766 channel numbers.
  cat <<TOML

[turn]
listen = ["127.0.0.1:$turn_port"]
realm = "iceway-test"
allow_peers = ["127.0.0.0/8"]
rfc5766_channel_numbers = true
threads = 2
TOML
} >"$work/turn.toml"
{
  shared "$signal_admin"
  printf '\n[jwt]\nsecret_file = "/etc/iceway/jwt-secret"\n\n[signal]\nlisten = "127.0.0.1:%s"\n' "$signal_port"
} >"$work/signal.toml"
{
  shared "$auth_admin"
  printf '\n[jwt]\nsecret_file = "/etc/iceway/jwt-secret"\n\n[auth]\nlisten = "127.0.0.1:%s"\n' "$auth_port"
} >"$work/auth.toml"
# The bridge: one camera on a loopback port nothing listens on, credentials from a mounted file.
printf 'viewer:camera-password\n' >"$work/porch.credentials"
chmod 0644 "$work/porch.credentials"
cat >"$work/bridge.toml" <<TOML
[admin]
listen = "127.0.0.1:$bridge_admin"

[log]
format = "json"

[jwt]
secret_file = "/etc/iceway/jwt-secret"

[bridge]
signal_url = "ws://127.0.0.1:$signal_port/v1/ws"
reconnect_max = "2s"

[[bridge.cameras]]
id = "porch"
url = "rtsp://127.0.0.1:$camera_port/cam"
credentials_file = "/etc/iceway/porch.credentials"
TOML
chmod 0644 "$work"/*.toml

# start NAME: runs localhost/iceway/NAME:TAG with its config file.
start_container() {
  local svc="$1" name="$run_id-$1"
  containers+=("$name")
  podman run -d --name "$name" --pull never --runtime runc \
    --ulimit nofile=20000:20000 --ulimit nproc=32768:32768 --network host \
    --read-only --cap-drop ALL --security-opt no-new-privileges \
    -v "$work:/etc/iceway:ro" \
    "localhost/iceway/iceway-$svc:$tag" --config "/etc/iceway/$svc.toml" >/dev/null
}

# wait_http NAME URL: 200 from URL within 30 s, while the container is running.
wait_http() {
  local name="$1" url="$2" deadline=$(( $(date +%s) + 30 ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    if curl -fsS --max-time 2 -o /dev/null "$url" 2>/dev/null; then return 0; fi
    if [ "$(podman inspect -f '{{.State.Running}}' "$name" 2>/dev/null)" != true ]; then
      echo "test-images: $name exited:"; podman logs "$name" 2>&1 | tail -20; return 1
    fi
    sleep 0.2
  done
  echo "test-images: $url did not answer 200 within 30 s"; podman logs "$name" 2>&1 | tail -20
  return 1
}

failed=0
ok() { echo "ok   $1"; }
fail() { echo "FAIL $1"; failed=$((failed + 1)); }

echo "== run =="
# The configuration check the chart's `helm test` runs, here in the image as the chart runs it.
if check_out="$(podman run --rm --pull never --runtime runc --ulimit nofile=20000:20000 \
     --ulimit nproc=32768:32768 --network none --read-only --cap-drop ALL \
     --security-opt no-new-privileges -v "$work:/etc/iceway:ro" "localhost/iceway/iceway-bridge:$tag" \
     --check-config --config /etc/iceway/bridge.toml 2>&1)" && grep -q porch <<<"$check_out" \
   && ! grep -q camera-password <<<"$check_out"; then
  ok "iceway-bridge image: --check-config accepts the mounted config, shows no credential"
else
  fail "iceway-bridge image: --check-config"; echo "$check_out" | tail -20
fi

for svc in turn signal auth bridge; do start_container "$svc"; done
for pair in "turn $turn_admin" "signal $signal_admin" "auth $auth_admin" "bridge $bridge_admin"; do
  read -r svc port <<<"$pair"
  if wait_http "$run_id-$svc" "http://127.0.0.1:$port/healthz"; then ok "iceway-$svc container: /healthz 200"
  else fail "iceway-$svc container: /healthz"; fi
done

if wait_http "$run_id-bridge" "http://127.0.0.1:$bridge_admin/readyz"; then ok "iceway-bridge container: /readyz 200"
else fail "iceway-bridge container: /readyz"; fi

for svc in turn signal auth bridge; do
  who="$(podman top "$run_id-$svc" user group | tail -1 | tr -s ' ')"
  if [ "$who" = "nonroot nonroot " ] || [ "$who" = "nonroot nonroot" ]; then ok "iceway-$svc container: runs as nonroot (65532)"
  else fail "iceway-$svc container: runs as '$who', not nonroot"; fi
done

viewer="$(curl -fsS --max-time 5 "http://127.0.0.1:$signal_port/viewer" || true)"
if [ -n "$viewer" ] && [ "$viewer" = "$(cat client/web/viewer.html)" ]; then
  ok "iceway-signal container: /viewer 200 from /usr/share/iceway/web"
else fail "iceway-signal container: /viewer"; fi
if curl -fsS --max-time 5 -o /dev/null "http://127.0.0.1:$signal_port/js/viewer.js"; then
  ok "iceway-signal container: /js/viewer.js 200"
else fail "iceway-signal container: /js/viewer.js"; fi

# coturn's echo peer on P and P+1 (uclient sends RTCP to P+1), then a channel run with REST
# credentials from the mounted secret.
for _ in 1 2 3 4 5; do
  peer_port=$(free_port)
  [ "$(python3 -c "import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(('127.0.0.1',$peer_port+1));print('ok')" 2>/dev/null)" = ok ] && break
done
turnutils_peer -L 127.0.0.1 -p "$peer_port" </dev/null >"$work/peer.log" 2>&1 &
peer_pid=$!
uclient_log="$work/uclient.log"
if timeout 90 turnutils_uclient -e 127.0.0.1 -r "$peer_port" -c -W "$turn_secret" \
     -p "$turn_port" -n 30 -m 4 -l 180 127.0.0.1 >"$uclient_log" 2>&1 \
   && grep -q "Total lost packets 0 (" "$uclient_log" \
   && sent=$(sed -n 's/.*tot_send_msgs=\([0-9]*\), tot_recv_msgs=\([0-9]*\).*/\1 \2/p' "$uclient_log" | tail -1) \
   && [ -n "$sent" ] && [ "${sent% *}" -gt 0 ] && [ "${sent% *}" = "${sent#* }" ]; then
  ok "iceway-turn container: turnutils_uclient relayed ${sent% *} messages to turnutils_peer, none lost"
else
  fail "iceway-turn container: turnutils_uclient run"; tail -20 "$uclient_log"
  podman logs "$run_id-turn" 2>&1 | tail -20
fi
relayed="$(curl -fsS --max-time 5 "http://127.0.0.1:$turn_admin/metrics" \
  | sed -n 's/^iceway_turn_relayed_packets_total{direction="to_peer"} //p')"
if [ -n "$relayed" ] && [ "${relayed%.*}" -gt 0 ]; then ok "iceway-turn container: /metrics counts $relayed packets to the peer"
else fail "iceway-turn container: relayed packets in /metrics"; fi

# The bridge mints the camera's token with the mounted app key: signal accepts the session (the
# only WebSocket client here), while the camera stays down and is retried.
metric() {  # metric URL SERIES: its value, or empty
  curl -fsS --max-time 5 "$1" 2>/dev/null | awk -v s="$2" '$1 == s { print $2 }'
}
deadline=$(( $(date +%s) + 30 )); sessions=""; down=""
while [ "$(date +%s)" -lt "$deadline" ]; do
  sessions="$(metric "http://127.0.0.1:$signal_admin/metrics" iceway_signal_connections)"
  down="$(metric "http://127.0.0.1:$bridge_admin/metrics" 'iceway_bridge_cameras{state="down"}')"
  [ "${sessions:-0}" -ge 1 ] && [ "${down:-0}" = 1 ] && break
  sleep 0.5
done
if [ "${sessions:-0}" -ge 1 ]; then ok "iceway-bridge container: its minted camera token opens a session on iceway-signal"
else fail "iceway-bridge container: no session on signal"; podman logs "$run_id-bridge" 2>&1 | tail -20; fi
if [ "${down:-0}" = 1 ]; then ok "iceway-bridge container: /metrics shows the unreachable camera down"
else fail "iceway-bridge container: iceway_bridge_cameras{state=\"down\"} is '${down}', not 1"; fi
if podman logs "$run_id-bridge" 2>&1 | grep -q camera-password; then
  fail "iceway-bridge container: the camera password is in its log"
else ok "iceway-bridge container: the camera password is not logged"; fi

echo "== image sizes =="
for svc in iceway-turn iceway-signal iceway-auth iceway-bridge; do
  printf '%-36s %s (oci-archive %s)\n' "localhost/iceway/$svc:$tag" \
    "$(podman image inspect -f '{{.Size}}' "localhost/iceway/$svc:$tag" | numfmt --to=si)B" \
    "$(du -h "$out/$svc-$tag.oci.tar" 2>/dev/null | cut -f1)"
done
echo "images: $failed failed, in $(( $(date +%s) - start )) s"
[ "$failed" -eq 0 ]
