#!/usr/bin/env python3
"""Ratio table iceway/peerjs from bench/signal/run.sh's JSON reports, with issue 5's targets."""
import json
import os
import sys


def load(d, phase, server):
    p = os.path.join(d, f"{phase}__{server}.json")
    try:
        with open(p) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def run_cpu_seconds(d, phase, server):
    """Server CPU seconds over a whole run, from run.sh's PHASE__SERVER.cpu ("ticks hz")."""
    try:
        with open(os.path.join(d, f"{phase}__{server}.cpu")) as f:
            ticks, hz = f.read().split()
        return int(ticks) / int(hz)
    except (OSError, ValueError):
        return None


def g(r, *path):
    for k in path:
        r = (r or {}).get(k)
    return r


def fmt(x, unit=""):
    if x is None:
        return "–"
    if abs(x) >= 10000:
        return f"{x/1000:.1f}k{unit}"
    if abs(x) >= 100:
        return f"{x:.0f}{unit}"
    return f"{x:.2f}{unit}"


def ratio(a, b):
    return a / b if a and b else None


def main(d):
    t = {s: load(d, "traffic", s) for s in ("iceway", "peerjs")}
    i = {s: load(d, "idle", s) for s in ("iceway", "peerjs")}
    def per_cpu(s):
        c = run_cpu_seconds(d, "idle", s)
        n = g(i[s], "setup", "succeeded")
        return n / c if c and n else None

    kb = lambda r: (g(r, "server", "rss_bytes_per_flow") or 0) / 1024 or None
    rows = [
        # name, getter, better ("higher"/"lower"), target ratio, target absolute check
        ("messages per server CPU-second", lambda s: g(t[s], "server", "relayed_per_cpu_second"), "≥ 4× peerjs", lambda a, b, r: r is not None and r >= 4),
        ("relay latency p50 µs", lambda s: g(t[s], "traffic", "latency_us", "p50"), "", None),
        ("relay latency p99 µs", lambda s: g(t[s], "traffic", "latency_us", "p99"), "≤ 1000 µs", lambda a, b, r: a is not None and a <= 1000),
        ("loss %", lambda s: (g(t[s], "traffic", "loss_ratio") or 0) * 100 if t[s] else None, "", None),
        ("server cores busy (traffic)", lambda s: g(t[s], "server", "cores_busy"), "", None),
        ("watch→answer p50 µs", lambda s: g(t[s], "signal", "watch_to_answer_us", "p50"), "", None),
        ("connects/s (1,000 conns)", lambda s: g(t[s], "setup", "per_second"), "≥ 2× peerjs", lambda a, b, r: r is not None and r >= 2),
        ("connects/s (idle, 19,000 conns)", lambda s: g(i[s], "setup", "per_second"), "≥ 2× peerjs", lambda a, b, r: r is not None and r >= 2),
        ("connects per server CPU-s (idle run, incl. negotiate + close)", lambda s: per_cpu(s), "", None),
        ("idle connections held", lambda s: g(i[s], "signal", "connections_held"), "", None),
        ("RSS per idle connection kB", lambda s: kb(i[s]) if i[s] else None, "≤ 4 kB", lambda a, b, r: a is not None and a <= 4),
    ]
    print("| measure | iceway-signal | peerjs-server | iceway/peerjs | target | verdict |")
    print("|---|---|---|---|---|---|")
    for name, get, target, check in rows:
        a, b = get("iceway"), get("peerjs")
        r = ratio(a, b)
        verdict = "" if check is None else ("met" if check(a, b, r) else "**missed**")
        print(f"| {name} | {fmt(a)} | {fmt(b)} | {fmt(r)} | {target} | {verdict} |")
    for phase, reps in (("traffic", t), ("idle", i)):
        for s, r in reps.items():
            errs = g(r, "signal", "errors")
            if errs:
                print(f"\n{phase} {s} errors by code: {errs}")
            if r and g(r, "traffic", "sent") != (g(r, "traffic", "received") or 0) + (g(r, "traffic", "lost") or 0):
                print(f"\n{phase} {s}: report does not add up")


if __name__ == "__main__":
    main(sys.argv[1])
