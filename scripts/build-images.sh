#!/usr/bin/env bash
# Builds the service images (iceway-turn, iceway-signal, iceway-auth, iceway-bridge) FROM scratch,
# pulling no base image: a fully static, stripped release binary each, CA certificates, /etc/passwd
# and /etc/group with user nonroot (65532), and for iceway-signal the browser pages (client/web) at
# /usr/share/iceway/web. The layout is the one deploy/docker/Dockerfile produces for users with a
# registry.
#
#   scripts/build-images.sh [--out DIR] [--tag TAG] [--skip-build] [--only NAME]...
#
# --only iceway-bridge (repeatable) builds just those images (and compiles just those binaries).
#
# Results: localhost/iceway/<name>:<tag> in the local containers store (buildah/podman) and
# DIR/<name>-<tag>.oci.tar (default DIR: images/), ready for
#   skopeo copy oci-archive:images/iceway-turn-0.1.0.oci.tar docker://REGISTRY/iceway/iceway-turn:0.1.0
# Reproducible: layers and config are committed with --timestamp 0, so the same binaries and
# commit give the same image id. Needs buildah (apt-get install -y buildah).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

services=(iceway-turn iceway-signal iceway-auth iceway-bridge)
only=()
triple=x86_64-unknown-linux-gnu
version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)"
out="$repo/images"
tag="$version"
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --skip-build) build=0; shift ;;
    --only) only+=("$2"); shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "build-images: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ "${#only[@]}" -gt 0 ]; then
  for svc in "${only[@]}"; do
    [[ " ${services[*]} " == *" $svc "* ]] || { echo "build-images: unknown image $svc (${services[*]})" >&2; exit 2; }
  done
  services=("${only[@]}")
fi
[ -n "$version" ] || { echo "build-images: no workspace version in Cargo.toml" >&2; exit 1; }
command -v buildah >/dev/null || { echo "build-images: needs buildah (apt-get install -y buildah)" >&2; exit 1; }
certs=/etc/ssl/certs/ca-certificates.crt
[ -s "$certs" ] || { echo "build-images: $certs missing (apt-get install -y ca-certificates)" >&2; exit 1; }

target_dir="${CARGO_TARGET_DIR:-$repo/target}"
if [ "$build" = 1 ]; then
  echo "== static release build ($triple, crt-static) =="
  RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
    cargo build --release --locked --target "$triple" $(printf -- '-p %s ' "${services[@]}")
fi

revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
[ -z "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] || revision="$revision-dirty"
source_url="https://example.invalid/iceway"  # helm/iceway/Chart.yaml `sources`

stage="$(mktemp -d "${TMPDIR:-/tmp}/iceway-images.XXXXXX")"
ctr=""
cleanup() { [ -z "$ctr" ] || buildah rm "$ctr" >/dev/null 2>&1 || true; rm -rf "$stage"; }
trap cleanup EXIT
mkdir -p "$out"

# Fixed modes and owners, so the layers do not depend on the checkout's umask.
install -m 0644 deploy/docker/rootfs/etc/passwd deploy/docker/rootfs/etc/group "$certs" "$stage/"
mkdir -p "$stage/web"
cp -r client/web/. "$stage/web/"
find "$stage/web" -type d -exec chmod 0755 {} + && find "$stage/web" -type f -exec chmod 0644 {} +

for svc in "${services[@]}"; do
  bin="$target_dir/$triple/release/$svc"
  [ -x "$bin" ] || { echo "build-images: $bin missing (run without --skip-build)" >&2; exit 1; }
  if ! file -b "$bin" 2>/dev/null | grep -q 'static'; then
    echo "build-images: $bin is not statically linked" >&2; exit 1
  fi
  strip -o "$stage/$svc" "$bin"
  chmod 0755 "$stage/$svc"

  case "$svc" in
    iceway-turn) ports=(3478/udp 3478/tcp 5349/tcp 9478/tcp); title="Iceway TURN/STUN relay" ;;
    iceway-signal) ports=(8080/tcp 9480/tcp); title="Iceway signaling" ;;
    iceway-auth) ports=(8081/tcp 9481/tcp); title="Iceway TURN credential API" ;;
    # Admin only: the bridge dials out to cameras, signal and TURN and listens on nothing else.
    iceway-bridge) ports=(9482/tcp); title="Iceway RTSP bridge" ;;
  esac
  image="localhost/iceway/$svc:$tag"
  echo "== $image =="
  ctr="$(buildah from --pull-never scratch)"
  buildah copy --chown 0:0 "$ctr" "$stage/passwd" /etc/passwd >/dev/null
  buildah copy --chown 0:0 "$ctr" "$stage/group" /etc/group >/dev/null
  buildah copy --chown 0:0 "$ctr" "$stage/ca-certificates.crt" /etc/ssl/certs/ca-certificates.crt >/dev/null
  buildah copy --chown 0:0 "$ctr" "$stage/$svc" "/usr/local/bin/$svc" >/dev/null
  cfg=(--user 65532:65532 --workingdir / --entrypoint "[\"/usr/local/bin/$svc\"]" --cmd ''
       --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
       --label "org.opencontainers.image.title=$svc"
       --label "org.opencontainers.image.description=$title"
       --label "org.opencontainers.image.source=$source_url"
       --label "org.opencontainers.image.version=$version"
       --label "org.opencontainers.image.revision=$revision"
       --label "org.opencontainers.image.licenses=Apache-2.0")
  for p in "${ports[@]}"; do cfg+=(--port "$p"); done
  if [ "$svc" = iceway-signal ]; then
    buildah copy --chown 0:0 "$ctr" "$stage/web" /usr/share/iceway/web >/dev/null
    cfg+=(--env ICEWAY_SIGNAL__WEB_ROOT=/usr/share/iceway/web)
  fi
  buildah config "${cfg[@]}" "$ctr"
  previous="$(buildah images --quiet --no-trunc "$image" 2>/dev/null | head -1 || true)"
  buildah commit --quiet --timestamp 0 --rm "$ctr" "$image" >"$stage/id"
  ctr=""
  # The image this tag named before, now untagged (a new commit's revision label), is dropped.
  if [ -n "$previous" ] && [ "${previous#sha256:}" != "$(cat "$stage/id")" ]; then
    buildah rmi "$previous" >/dev/null 2>&1 || true
  fi
  archive="$out/$svc-$tag.oci.tar"
  rm -f "$archive"
  buildah push --quiet "$image" "oci-archive:$archive:$image" >/dev/null
  echo "$svc: id $(cut -c1-12 "$stage/id"), archive $archive"
done

echo "== images =="
for svc in "${services[@]}"; do
  image="localhost/iceway/$svc:$tag"
  printf '%-36s %s (archive %s)\n' "$image" \
    "$(buildah images --format '{{.Size}}' "$image" | head -1)" \
    "$(du -h "$out/$svc-$tag.oci.tar" | cut -f1)"
done
