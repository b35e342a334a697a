#!/usr/bin/env python3
"""Tables from bench/signal/run.sh's JSON reports: iceway/peerjs with issue 5's targets,
iceway/ceiling messages per CPU-second and the reconnect storm with issue 15's. Several rounds
(rN_PHASE__SERVER.json) give medians, with every round's value beside them."""
import json
import os
import re
import statistics
import sys


def rounds(d):
    """Round prefixes present ("r1_", ...), or [""] for a directory of one unnumbered run."""
    found = sorted({int(m.group(1)) for f in os.listdir(d) if (m := re.match(r"r(\d+)_", f))})
    return [f"r{n}_" for n in found] or [""]


def load(d, prefix, phase, server):
    try:
        with open(os.path.join(d, f"{prefix}{phase}__{server}.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def run_cpu_seconds(d, prefix, phase, server):
    """Server CPU seconds over a whole run, from run.sh's PHASE__SERVER.cpu ("ticks hz")."""
    try:
        with open(os.path.join(d, f"{prefix}{phase}__{server}.cpu")) as f:
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
    if isinstance(x, int):
        return f"{x:,}"
    if abs(x) >= 10000:
        return f"{x/1000:.1f}k{unit}"
    if abs(x) >= 100:
        return f"{x:.0f}{unit}"
    return f"{x:.2f}{unit}"


def ratio(a, b):
    return a / b if a and b else None


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


class Runs:
    """One measure over the rounds of a directory."""

    def __init__(self, d):
        self.d, self.prefixes = d, rounds(d)

    def values(self, phase, server, get):
        return [get(load(self.d, p, phase, server), p, server) for p in self.prefixes]

    def median(self, phase, server, get):
        return median(self.values(phase, server, get))

    def per_round(self, phase, servers, get):
        vals = [self.values(phase, s, get) for s in servers]
        return "; ".join(" / ".join(fmt(v[i]) for v in vals) for i in range(len(self.prefixes)))


def main(d):
    runs = Runs(d)
    n = len(runs.prefixes)
    print(f"{n} round(s); medians over the rounds.\n")

    def per_cpu(r, p, s):
        c = run_cpu_seconds(d, p, "idle", s)
        k = g(r, "setup", "succeeded")
        return k / c if c and k else None

    kb = lambda r: (g(r, "server", "rss_bytes_per_flow") or 0) / 1024 or None
    rows = [
        # name, phase, getter, target, check(a, b, ratio)
        ("messages per server CPU-second", "traffic", lambda r, p, s: g(r, "server", "relayed_per_cpu_second"), "≥ 4× peerjs", lambda a, b, r: r is not None and r >= 4),
        ("relay latency p50 µs", "traffic", lambda r, p, s: g(r, "traffic", "latency_us", "p50"), "", None),
        ("relay latency p99 µs", "traffic", lambda r, p, s: g(r, "traffic", "latency_us", "p99"), "≤ 1000 µs", lambda a, b, r: a is not None and a <= 1000),
        ("loss %", "traffic", lambda r, p, s: (g(r, "traffic", "loss_ratio") or 0) * 100 if r else None, "", None),
        ("server cores busy (traffic)", "traffic", lambda r, p, s: g(r, "server", "cores_busy"), "", None),
        ("watch→answer p50 µs", "traffic", lambda r, p, s: g(r, "signal", "watch_to_answer_us", "p50"), "", None),
        ("connects/s (1,000 conns)", "traffic", lambda r, p, s: g(r, "setup", "per_second"), "≥ 2× peerjs", lambda a, b, r: r is not None and r >= 2),
        ("connects/s (idle, 19,000 conns)", "idle", lambda r, p, s: g(r, "setup", "per_second"), "≥ 2× peerjs", lambda a, b, r: r is not None and r >= 2),
        ("connects per server CPU-s (idle run, incl. negotiate + close)", "idle", per_cpu, "", None),
        ("idle connections held", "idle", lambda r, p, s: g(r, "signal", "connections_held"), "", None),
        ("RSS per idle connection kB", "idle", lambda r, p, s: kb(r) if r else None, "≤ 4 kB", lambda a, b, r: a is not None and a <= 4),
    ]
    print("| measure | iceway-signal | peerjs-server | iceway/peerjs | target | verdict |")
    print("|---|---|---|---|---|---|")
    for name, phase, get, target, check in rows:
        a, b = runs.median(phase, "iceway", get), runs.median(phase, "peerjs", get)
        r = ratio(a, b)
        verdict = "" if check is None or a is None else ("met" if check(a, b, r) else "**missed**")
        print(f"| {name} | {fmt(a)} | {fmt(b)} | {fmt(r)} | {target} | {verdict} |")

    # Issue 15: against the bare WebSocket relay.
    mps = lambda r, p, s: g(r, "server", "relayed_per_cpu_second")
    per_round_ratio = [ratio(i, c) for i, c in zip(runs.values("traffic", "iceway", mps), runs.values("traffic", "ceiling", mps))]
    c, i, pj = (runs.median("traffic", s, mps) for s in ("ceiling", "iceway", "peerjs"))
    if c is not None:
        r = median(per_round_ratio)
        print("\n| traffic (500 pairs, 10,000 msg/s) | ceiling-ws | iceway-signal | peerjs-server | iceway/ceiling | target | verdict |")
        print("|---|---|---|---|---|---|---|")
        verdict = "–" if r is None else ("met" if r >= 0.8 else "**missed**")
        print(f"| messages per server CPU-second | {fmt(c)} | {fmt(i)} | {fmt(pj)} | {fmt(r)} | ≥ 0.8× ceiling | {verdict} |")
        for label, get in (
            ("relay latency p50 µs", lambda r, p, s: g(r, "traffic", "latency_us", "p50")),
            ("relay latency p99 µs", lambda r, p, s: g(r, "traffic", "latency_us", "p99")),
            ("server cores busy", lambda r, p, s: g(r, "server", "cores_busy")),
            ("loss %", lambda r, p, s: (g(r, "traffic", "loss_ratio") or 0) * 100 if r else None),
        ):
            vals = [runs.median("traffic", s, get) for s in ("ceiling", "iceway", "peerjs")]
            print(f"| {label} | {' | '.join(fmt(v) for v in vals)} | {fmt(ratio(vals[1], vals[0]))} | | |")
        print(f"\nper round, messages per CPU-second (ceiling / iceway / peerjs): {runs.per_round('traffic', ('ceiling', 'iceway', 'peerjs'), mps)}")
        print(f"per round, iceway/ceiling: {'; '.join(fmt(x) for x in per_round_ratio)}")

    st = lambda *path: (lambda r, p, s: g(r, "signal", "storm", *path))
    if any(runs.values("storm", "iceway", st("clients")) + runs.values("storm", "peerjs", st("clients"))):
        storm_rows = [
            ("clients connected before the drain", st("clients"), None),
            ("greeted again on replica B", st("reconnected"), None),
            ("failures", st("failed"), "0"),
            ("first lost socket → last welcome/OPEN, s", st("storm_seconds"), None),
            ("SIGTERM → last welcome/OPEN, s", st("seconds_from_signal"), None),
            ("reconnect p50 ms (socket lost → greeted)", lambda r, p, s: (g(r, "signal", "storm", "reconnect_us", "p50") or 0) / 1000 or None, None),
            ("reconnect p99 ms", lambda r, p, s: (g(r, "signal", "storm", "reconnect_us", "p99") or 0) / 1000 or None, None),
            ("replica B CPU seconds over the storm", st("server_cpu_seconds"), None),
            ("replica B CPU µs per connect", st("server_cpu_us_per_connect"), None),
        ]
        print("\n| reconnect storm | iceway-signal | peerjs-server | iceway/peerjs | target | verdict |")
        print("|---|---|---|---|---|---|")
        for label, get, target in storm_rows:
            a, b = runs.median("storm", "iceway", get), runs.median("storm", "peerjs", get)
            verdict = ""
            if target == "0":
                worst = max([x for x in runs.values("storm", "iceway", get) if x is not None], default=None)
                verdict = "–" if worst is None else ("met" if worst == 0 else "**missed**")
            print(f"| {label} | {fmt(a)} | {fmt(b)} | {fmt(ratio(a, b))} | {'0 (every round)' if target else ''} | {verdict} |")
        print(f"\nper round, storm s (iceway / peerjs): {runs.per_round('storm', ('iceway', 'peerjs'), st('storm_seconds'))}")
        print(f"per round, CPU µs per connect (iceway / peerjs): {runs.per_round('storm', ('iceway', 'peerjs'), st('server_cpu_us_per_connect'))}")
        print(f"per round, failures (iceway / peerjs): {runs.per_round('storm', ('iceway', 'peerjs'), st('failed'))}")
        for p in runs.prefixes:
            for s in ("iceway", "peerjs"):
                r = load(d, p, "storm", s)
                if g(r, "signal", "storm", "lost_by"):
                    print(f"{p}storm {s}: sockets ended by {g(r, 'signal', 'storm', 'lost_by')}")

    for p in runs.prefixes:
        for phase in ("traffic", "idle", "storm"):
            for s in ("ceiling", "iceway", "peerjs"):
                r = load(d, p, phase, s)
                errs = g(r, "signal", "errors")
                if errs:
                    print(f"\n{p}{phase} {s} errors by code: {errs}")
                if r and phase != "storm" and g(r, "traffic", "sent") != (g(r, "traffic", "received") or 0) + (g(r, "traffic", "lost") or 0):
                    print(f"\n{p}{phase} {s}: report does not add up")


if __name__ == "__main__":
    main(sys.argv[1])
