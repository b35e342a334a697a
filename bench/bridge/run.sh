#!/usr/bin/env bash
# iceway-bridge beside GStreamer's own passthrough on the same RTSP source: time to the first
# decoded frame in Chromium, and publisher CPU per forwarded stream at 1, 10 and 50 viewers
# (bench/bridge/bench.mjs). Runs everything inside a network namespace it makes (one veth
# address, 10.250.0.1, so libnice and Chromium have a non-loopback interface); nothing leaves it.
#
# Environment: ROUNDS (TTFF rounds, 5), VIEWERS (1,10,50), WINDOW_S (CPU window, 10), GOP (60),
# OUT (results directory), NO_BUILD=1 to skip the release build.
# Needs root, chromium, e2e/node_modules (npm ci --prefix e2e), and the Debian packages
# python3-gst-1.0 gir1.2-gst-rtsp-server-1.0 gir1.2-gst-plugins-bad-1.0 gstreamer1.0-nice
# gir1.2-nice-0.1 gstreamer1.0-plugins-{good,bad,ugly} python3-websockets.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
if [ -z "${NO_BUILD:-}" ]; then
  (cd "$ROOT" && cargo build --release -p iceway -p iceway-bridge -p iceway-client)
fi
ns="iceway-bench-bridge-$$"
cleanup() { ip netns del "$ns" 2>/dev/null || true; }
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" link add v0 type veth peer name v1
ip -n "$ns" addr add 10.250.0.1/24 dev v0
ip -n "$ns" link set v0 up
ip -n "$ns" link set v1 up
ip -n "$ns" route add default dev v0
ip netns exec "$ns" env BENCH_IP=10.250.0.1 ICEWAY_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/iceway" node "$ROOT/bench/bridge/bench.mjs"
