#!/usr/bin/env bash
# Live check of the Grafana dashboard: starts iceway-turn, iceway-signal and iceway-auth on loopback
# with the Helm chart's args, drives a short load (credential API, turnutils_uclient through TURN,
# a camera and a viewer over the signaling WebSocket), then
#   default:       Prometheus on loopback scrapes the admin ports and every dashboard expression
#                  must return data, and every metric the dashboard names must be on a /metrics;
#   --names-only:  only the metric-name comparison (no Prometheus needed).
# Options: --allow-missing (services not built yet are skipped, not failed), --no-build (use the
# binaries as they are), --keep (keep logs). ICEWAY_BIN_DIR overrides target/debug (implies
# --no-build). Tools: scripts/install-helm-tools.sh --live (helm, Python venv with PyYAML and
# websockets, prometheus, coturn's turnutils, redis-server).
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="${ICEWAY_TOOLS_DIR:-$repo/.tools}"
export PATH="$tools/bin:$PATH"
bin_dir="${ICEWAY_BIN_DIR:-${CARGO_TARGET_DIR:-$repo/target}/debug}"
build=1
[ -n "${ICEWAY_BIN_DIR:-}" ] && build=0
py_args=()
for arg in "$@"; do
  case "$arg" in
    --no-build) build=0 ;;
    --names-only|--allow-missing|--keep) py_args+=("$arg") ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "test-dashboard-live: unknown argument $arg" >&2; exit 2 ;;
  esac
done

py="$tools/venv/bin/python"
if ! [ -x "$py" ] || ! "$py" -c 'import yaml, websockets' 2>/dev/null; then
  echo "test-dashboard-live: $py with PyYAML and websockets is missing: run scripts/install-helm-tools.sh --live" >&2
  echo "0 passed, 1 failed"
  exit 1
fi

if [ "$build" = 1 ]; then
  for pkg in iceway-turn iceway-signal iceway-auth iceway-loadtest; do
    log="$(mktemp "${TMPDIR:-/tmp}/iceway-live-build-$pkg.XXXXXX")"
    if (cd "$repo" && cargo build -q -p "$pkg" 2>"$log"); then
      rm -f "$log"
    else
      echo "test-dashboard-live: build of $pkg failed:" >&2; cat "$log" >&2
      echo "0 passed, 1 failed"
      exit 1
    fi
  done
fi

"$py" "$repo/scripts/dashboard_live.py" --bin-dir "$bin_dir" "${py_args[@]}" &
pid=$!
# The driver stops its own children by PID on SIGTERM; forward ours to it.
trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid"' INT TERM
wait "$pid"
