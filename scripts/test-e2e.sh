#!/usr/bin/env bash
# End-to-end tests of the reference clients through iceway-turn and iceway-signal (issue 6):
#   4a  e2e/nat-call.sh: Rust camera <-> Rust viewer, each behind its own NAT (network
#       namespaces + nft masquerade), relay only;
#   4b-d and the `iceway dev` screenshot: e2e/tests/*.test.mjs, headless Chromium via
#       playwright-core, run inside a private network namespace that has only loopback.
# Installs nothing. Needs (CI installs them): root; apt packages chromium iproute2 nftables
# python3; Node.js >= 20 with `npm ci` run in e2e/. Screenshots go to target/e2e/.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"

missing=()
[ "$(id -u)" = 0 ] || missing+=("root (network namespaces)")
command -v ip >/dev/null || missing+=("ip (apt-get install iproute2)")
command -v nft >/dev/null || missing+=("nft (apt-get install nftables)")
command -v python3 >/dev/null || missing+=("python3")
if ! command -v node >/dev/null; then
  missing+=("node (Node.js >= 20)")
elif [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
  missing+=("Node.js >= 20 (found $(node --version))")
fi
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || missing+=("chromium at ${CHROMIUM:-/usr/bin/chromium} (apt-get install chromium)")
[ -d e2e/node_modules/playwright-core ] || missing+=("e2e/node_modules/playwright-core (run: npm ci --prefix e2e)")
if [ "${#missing[@]}" -gt 0 ]; then
  printf 'test-e2e: missing: %s\n' "${missing[@]}" >&2
  exit 1
fi

cargo build -p iceway -p iceway-client -p iceway-bridge

failed=0
echo "== 4a: Rust camera and viewer behind separate NATs, relay only"
if ! e2e/nat-call.sh "$target"; then failed=1; fi

echo "== 4b-d: browser pages (Chromium) and mixed calls, in a loopback-only namespace"
ns="iceway-e2e-$$"
cleanup() { ip netns del "$ns" 2>/dev/null || true; }
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
if ! ip netns exec "$ns" env CARGO_TARGET_DIR="$target" node --test --test-concurrency=1 e2e/tests/; then
  failed=1
fi

if [ "$failed" != 0 ]; then
  echo "test-e2e: FAILED" >&2
  exit 1
fi
echo "test-e2e: all end-to-end tests passed (screenshots in $target/e2e/)"
