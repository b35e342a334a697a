#!/usr/bin/env bash
# Installs what Iceway's tests need on a fresh Debian machine: real peers and servers (coturn's
# clients, redis-server, prometheus/promtool, chromium), network-namespace tools, openssl and
# zbarimg (iceway/tests/dev_lan.rs checks the dev CA and the QR codes), GStreamer's RTSP server
# with x264 (bridge/tests/fake_camera.py, an IP camera for iceway-bridge's tests), the image tools
# (buildah, podman, skopeo, runc: scripts/build-images.sh, scripts/test-images.sh), helm, the
# schema validators and cargo-deny. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_pkgs=(coturn redis-server prometheus nftables iproute2 iputils-ping chromium chromium-driver
          unzip ca-certificates procps curl file binutils buildah podman skopeo runc openssl
          zbar-tools
          python3-gst-1.0 gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp gstreamer1.0-tools
          gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Debian's coturn and redis packages start system services where an init runs; tests start their
# own instances on free ports, so nothing else is needed here.

if ! command -v cargo-nextest >/dev/null 2>&1 && ! cargo nextest --version >/dev/null 2>&1; then
  echo "cargo-nextest missing: installing"
  cargo install --locked cargo-nextest
fi

# cargo-deny (supply-chain checks in .ci/run); 0.20.2 needs rustc >= 1.88.
if ! cargo deny --version >/dev/null 2>&1; then
  echo "cargo-deny missing: installing"
  cargo install --locked cargo-deny --version 0.20.2
fi

python3 -m openapi_spec_validator --help >/dev/null 2>&1 || \
  pip install --quiet openapi-spec-validator

# peerjs-server, the signaling baseline the loadtest compares against.
command -v peerjs >/dev/null 2>&1 || npm install -g --no-audit --no-fund peer@1.0.2

# Helm, kubernetes-validate, yamllint (chart checks) and node modules (browser e2e tests).
scripts/install-helm-tools.sh --live
if [ -f e2e/package.json ] && [ ! -d e2e/node_modules ]; then
  (cd e2e && if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi)
fi
echo "test dependencies ready"
