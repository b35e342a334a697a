#!/usr/bin/env bash
# The JavaScript SDK (client/js, npm package `iceway`): build, check that the pages' copy in
# client/web/js/iceway is that build, type-check a consumer against the packed package, and run
# its tests against a real signaling server (iceway dev). Needs Node.js >= 20 and npm (with the
# registry, for `npm ci` of the dev dependency typescript).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/client/js"
target="${CARGO_TARGET_DIR:-$root/target}"

npm ci --no-audit --no-fund --loglevel=error
npm run build
if ! git -C "$root" diff --quiet -- client/web/js/iceway || [ -n "$(git -C "$root" ls-files --others --exclude-standard -- client/web/js/iceway)" ]; then
  echo "test-js: client/web/js/iceway differs from a fresh build of client/js: run 'npm run build' in client/js and commit" >&2
  git -C "$root" status --short -- client/web/js/iceway >&2
  exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "== npm pack and a consumer's type check"
tgz="$(npm pack --silent --pack-destination "$work" | tail -1)"
mkdir -p "$work/consumer/node_modules/iceway"
tar -xzf "$work/$tgz" -C "$work/consumer/node_modules/iceway" --strip-components=1
cp test/consumer/consumer.ts test/consumer/tsconfig.json "$work/consumer/"
node_modules/.bin/tsc -p "$work/consumer/tsconfig.json"
tar -tzf "$work/$tgz" | sort | sed 's/^/  /'

echo "== SDK tests against iceway dev"
(cd "$root" && cargo build -q -p iceway)
CARGO_TARGET_DIR="$target" npm test
echo "test-js: ok"
