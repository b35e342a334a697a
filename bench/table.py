#!/usr/bin/env python3
"""Prints the side-by-side table of a bench/run.sh results directory (markdown).

Work per server CPU-second: relayed packets (to the peer + back to the client) for TURN shapes,
Binding responses for the STUN shapes. Ratios: iceway/coturn, iceway/ceiling, coturn/ceiling.
With several rounds (SHAPE__SERVER__rN.json) every figure is the median of the rounds, the
work columns also show their min-max, and the ratios are ratios of the medians.
"""
import json
import os
import statistics
import sys

ORDER = [
    "a100-flood-120", "a100-flood-1000", "a100-50pps-120", "a100-50pps-1000",
    "a1000-flood-120", "a1000-flood-1000", "a1000-50pps-120", "a1000-50pps-1000",
    "any-a100-flood-120", "any-a100-50pps-120", "any-a1000-50pps-1000",
    "tcp-a100-flood-120", "tcp-a100-50pps-120",
    "tls-a100-flood-120", "tls-a100-flood-1000", "tls-a100-50pps-120", "tls-a100-50pps-1000",
    "stun-flood", "any-stun-flood", "sat80",
]


def load(directory):
    """{shape: {server: [report, ...]}}; files without a round (older runs) count as one."""
    runs = {}
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".json") or "__" not in name:
            continue
        shape, server, *_round = name[:-5].split("__")
        with open(os.path.join(directory, name)) as f:
            runs.setdefault(shape, {}).setdefault(server, []).append(json.load(f))
    return runs


def work_per_cpu(r):
    s = r.get("server") or {}
    return s.get("relayed_per_cpu_second") or s.get("responses_per_cpu_second")


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt_k(x):
    return "–" if x is None else f"{x / 1000:.0f}k"


def fmt_work(values):
    """The median, and the spread of the rounds when there is more than one."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return fmt_k(values[0])
    return f"{fmt_k(statistics.median(values))} ({fmt_k(min(values))}–{fmt_k(max(values))})"


def ratio(a, b):
    return "–" if not a or not b else f"{a / b:.2f}"


def main():
    directory = sys.argv[1]
    runs = load(directory)
    shapes = [s for s in ORDER if s in runs] + sorted(s for s in runs if s not in ORDER)
    print("| load | rounds | ceiling work/CPU-s | coturn work/CPU-s | iceway work/CPU-s "
          "| iceway/coturn | iceway/ceiling | coturn/ceiling "
          "| loss c / i | p99 µs c / i | server cores busy c / i |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for shape in shapes:
        by = runs[shape]
        works = {k: [work_per_cpu(r) for r in v] for k, v in by.items()}
        w = {k: median(v) for k, v in works.items()}
        rounds = sorted({len(v) for v in by.values()})

        def pair(metric, fmt):
            return " / ".join("–" if k not in by else fmt(median([metric(r) for r in by[k]]))
                              for k in ("coturn", "iceway"))

        loss = pair(lambda r: r["traffic"]["loss_ratio"] * 100, lambda x: f"{x:.2f} %")
        p99 = pair(lambda r: r["traffic"]["latency_us"]["p99"], lambda x: f"{x:.0f}")
        busy = pair(lambda r: (r.get("server") or {}).get("cores_busy", 0), lambda x: f"{x:.2f}")
        print(f"| {shape} | {'/'.join(map(str, rounds))} | {fmt_work(works.get('ceiling', []))} "
              f"| {fmt_work(works.get('coturn', []))} | {fmt_work(works.get('iceway', []))} "
              f"| {ratio(w.get('iceway'), w.get('coturn'))} "
              f"| {ratio(w.get('iceway'), w.get('ceiling'))} "
              f"| {ratio(w.get('coturn'), w.get('ceiling'))} | {loss} | {p99} | {busy} |")
    print()
    print("work = relayed packets (to peer + to client) per server CPU-second for TURN loads, "
          "Binding responses per server CPU-second for the stun shapes; with more than one round, "
          "each figure is the median of the rounds (work: median (min–max)) and the ratios are "
          "ratios of the medians. any-: iceway-turn on 0.0.0.0, coturn on every interface (the "
          "ceiling stays on 127.0.0.1). sat80: each server paced at 80 % of its own "
          "a100-flood-120 throughput (its loss column is the 0-loss target).")
    rss = []
    for shape in shapes:
        for server in ("coturn", "iceway", "ceiling"):
            per = median([((r.get("server") or {}).get("rss_bytes_per_flow"))
                          for r in runs[shape].get(server, [])])
            if per is not None and "a1000" in shape:
                rss.append(f"{shape} {server}: {per / 1024:.1f} kB per allocation")
    if rss:
        print()
        print("RSS growth per allocation (1000 allocations): " + "; ".join(rss))


if __name__ == "__main__":
    main()
