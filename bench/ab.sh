#!/usr/bin/env bash
# A/B of two iceway-turn binaries on the same shapes: ROUNDS alternated rounds (A then B, B then
# A, ...), each one bench/run.sh round with SERVERS=iceway, then per shape the median work per
# server CPU-second of each binary and B/A. For "did this change make it faster or slower",
# where bench/run.sh answers "how does it compare with coturn and the ceiling".
#
# Usage: bench/ab.sh BIN_A BIN_B "SHAPE ..."   (shapes as in bench/run.sh)
# Environment: ROUNDS (default 5), DURATION (default 3s), OUT (default bench/results/ab-TIME).
# Build B from the working tree and A from the commit to compare with, e.g.
#   git stash && git checkout BASE && cargo build --release -p iceway-turn &&
#   cp target/release/iceway-turn /tmp/iceway-turn-a && git checkout - && git stash pop &&
#   cargo build --release -p iceway-turn -p iceway-loadtest
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ $# -eq 3 ] || { echo "usage: $0 BIN_A BIN_B \"SHAPE ...\"" >&2; exit 2; }
A=$1 B=$2 SHAPES=$3
ROUNDS=${ROUNDS:-5}
OUT=${OUT:-$ROOT/bench/results/ab-$(date -u +%Y%m%dT%H%M%SZ)}
for bin in "$A" "$B"; do [ -x "$bin" ] || { echo "not an executable: $bin" >&2; exit 2; }; done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "ROUNDS must be a whole number of 1 or more" >&2; exit 2; }
mkdir -p "$OUT"

for round in $(seq 1 "$ROUNDS"); do
  order="a b"
  if [ $((round % 2)) -eq 0 ]; then order="b a"; fi
  for tag in $order; do
    bin=$A
    if [ "$tag" = b ]; then bin=$B; fi
    echo "== round $round/$ROUNDS: $tag ($bin)" >&2
    OUT="$OUT/$tag-r$round" NO_BUILD=1 ROUNDS=1 SERVERS=iceway ICEWAY_TURN_BIN="$bin" \
      SHAPES="$SHAPES" DURATION="${DURATION:-3s}" "$ROOT/bench/run.sh" >"$OUT/$tag-r$round.log" 2>&1
  done
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import collections, glob, json, os, statistics, sys

out = sys.argv[1]
work = collections.defaultdict(list)
for path in glob.glob(os.path.join(out, "*-r*", "*.json")):
    tag = os.path.basename(os.path.dirname(path)).split("-r")[0]
    shape = os.path.basename(path).split("__")[0]
    server = json.load(open(path)).get("server") or {}
    value = server.get("relayed_per_cpu_second") or server.get("responses_per_cpu_second")
    if value:
        work[(shape, tag)].append(value)
print("| load | A work/CPU-s | B work/CPU-s | B/A |")
print("|---|---|---|---|")
for shape in sorted({s for s, _ in work}):
    a, b = work.get((shape, "a"), []), work.get((shape, "b"), [])
    if not a or not b:
        print(f"| {shape} | {len(a)} runs | {len(b)} runs | – |")
        continue
    ma, mb = statistics.median(a), statistics.median(b)
    span = lambda xs: f"{min(xs) / 1e3:.0f}k–{max(xs) / 1e3:.0f}k"
    print(f"| {shape} | {ma / 1e3:.0f}k ({span(a)}) | {mb / 1e3:.0f}k ({span(b)}) | {mb / ma:.2f} |")
print(f"\nmedians of {sys.argv[2]} alternated rounds; raw: {out}")
PY
