#!/usr/bin/env python3
"""Prints the side-by-side table of a bench/run.sh results directory (markdown).

Work per server CPU-second: relayed packets (to the peer + back to the client) for TURN shapes,
Binding responses for the STUN shape. Ratios: iceway/coturn, iceway/ceiling, coturn/ceiling.
"""
import json
import os
import sys


def load(directory):
    runs = {}
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".json") or "__" not in name:
            continue
        shape, server = name[:-5].split("__", 1)
        with open(os.path.join(directory, name)) as f:
            runs.setdefault(shape, {})[server] = json.load(f)
    return runs


def work_per_cpu(r):
    s = r.get("server") or {}
    return s.get("relayed_per_cpu_second") or s.get("responses_per_cpu_second")


def fmt_k(x):
    return "–" if x is None else f"{x / 1000:.0f}k"


def ratio(a, b):
    return "–" if not a or not b else f"{a / b:.2f}"


def main():
    directory = sys.argv[1]
    runs = load(directory)
    order = [
        "a100-flood-120", "a100-flood-1000", "a100-50pps-120", "a100-50pps-1000",
        "a1000-flood-120", "a1000-flood-1000", "a1000-50pps-120", "a1000-50pps-1000",
        "tcp-a100-flood-120", "tcp-a100-50pps-120", "stun-flood", "sat80",
    ]
    shapes = [s for s in order if s in runs] + sorted(s for s in runs if s not in order)
    print("| load | ceiling work/CPU-s | coturn work/CPU-s | iceway work/CPU-s "
          "| iceway/coturn | iceway/ceiling | coturn/ceiling "
          "| loss c / i | p99 µs c / i | server cores busy c / i |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for shape in shapes:
        by = runs[shape]
        w = {k: work_per_cpu(v) for k, v in by.items()}

        def pair(f):
            return " / ".join(f(by[k]) if k in by else "–" for k in ("coturn", "iceway"))

        loss = pair(lambda r: f"{r['traffic']['loss_ratio'] * 100:.2f} %")
        p99 = pair(lambda r: f"{r['traffic']['latency_us']['p99']:.0f}")
        busy = pair(lambda r: f"{(r.get('server') or {}).get('cores_busy', 0):.2f}")
        print(f"| {shape} | {fmt_k(w.get('ceiling'))} | {fmt_k(w.get('coturn'))} "
              f"| {fmt_k(w.get('iceway'))} | {ratio(w.get('iceway'), w.get('coturn'))} "
              f"| {ratio(w.get('iceway'), w.get('ceiling'))} "
              f"| {ratio(w.get('coturn'), w.get('ceiling'))} | {loss} | {p99} | {busy} |")
    print()
    print("work = relayed packets (to peer + to client) per server CPU-second for TURN loads, "
          "Binding responses per server CPU-second for stun-flood. sat80: each server paced at "
          "80 % of its own a100-flood-120 throughput (its loss column is the 0-loss target).")
    rss = []
    for shape in shapes:
        for server in ("coturn", "iceway", "ceiling"):
            r = runs[shape].get(server)
            per = ((r or {}).get("server") or {}).get("rss_bytes_per_flow")
            if per is not None and shape.startswith("a1000"):
                rss.append(f"{shape} {server}: {per / 1024:.1f} kB per allocation")
    if rss:
        print()
        print("RSS growth per allocation (1000 allocations): " + "; ".join(rss))


if __name__ == "__main__":
    main()
