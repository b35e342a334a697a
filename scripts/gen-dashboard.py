#!/usr/bin/env python3
"""Writes the Iceway Grafana dashboard (helm/iceway/files/dashboards/iceway.json).

The JSON is generated so that every panel uses the same selectors and units; edit this file, run
it, and commit both. scripts/test-helm.sh fails when the committed JSON differs from the output.

  scripts/gen-dashboard.py            rewrite the JSON
  scripts/gen-dashboard.py --stdout   print it instead
"""

import json
import pathlib
import sys

OUT = pathlib.Path(__file__).resolve().parent.parent / "helm/iceway/files/dashboards/iceway.json"

DS = {"type": "prometheus", "uid": "${datasource}"}
S = 'namespace=~"$namespace", release=~"$release", job=~"$job", pod=~"$pod"'
R = "$__rate_interval"
# TURN answers every first Allocate with a 401 challenge and a stale nonce with 438: both are part
# of the protocol, not failures.
TURN_NOT_FAILED = 'result!~"ok|401|438"'


def by_service(metric_expr):
    """Attach the `service` label of iceway_build_info to a process_* series of the same target."""
    return f"{metric_expr} * on (job, instance) group_left (service) iceway_build_info{{{S}}}"


def quantiles(bucket, by=""):
    extra = f", {by}" if by else ""
    legend = f"{{{{{by}}}}} " if by else ""
    return [
        (
            f"histogram_quantile(0.5, sum by (le{extra}) (rate({bucket}{{{S}}}[{R}])))",
            f"{legend}p50",
        ),
        (
            f"histogram_quantile(0.99, sum by (le{extra}) (rate({bucket}{{{S}}}[{R}])))",
            f"{legend}p99",
        ),
    ]


# (title, unit, [(expr, legend)], description, kind)
ROWS = [
    (
        "Overview",
        [
            (
                "Build versions",
                "none",
                [(f"count by (service, version) (iceway_build_info{{{S}}})", "{{service}} {{version}}")],
                "Pods per service and version; two versions of one service mean a rollout in progress.",
                "table",
            ),
            (
                "Pods reporting",
                "none",
                [(f"count by (service) (iceway_build_info{{{S}}})", "{{service}}")],
                "Pods whose /metrics Prometheus scrapes, by service.",
                "stat",
            ),
            (
                "Error rates",
                "percentunit",
                [
                    (
                        f"(sum(rate(iceway_turn_requests_total{{{S}, {TURN_NOT_FAILED}}}[{R}])) or vector(0))"
                        f" / sum(rate(iceway_turn_requests_total{{{S}}}[{R}]))",
                        "TURN requests failed",
                    ),
                    (
                        f'(sum(rate(iceway_turn_allocations_total{{{S}, result!="ok"}}[{R}])) or vector(0))'
                        f" / sum(rate(iceway_turn_allocations_total{{{S}}}[{R}]))",
                        "Allocations refused",
                    ),
                    (
                        f'(sum(rate(iceway_signal_messages_total{{{S}, result!="ok"}}[{R}])) or vector(0))'
                        f" / sum(rate(iceway_signal_messages_total{{{S}}}[{R}]))",
                        "Signaling messages failed",
                    ),
                    (
                        f'(sum(rate(iceway_auth_requests_total{{{S}, code=~"5.."}}[{R}])) or vector(0))'
                        f" / sum(rate(iceway_auth_requests_total{{{S}}}[{R}]))",
                        "Credential API 5xx",
                    ),
                ],
                "Share of failed work per service. TURN 401/438 challenges are normal and left out.",
                "timeseries",
            ),
        ],
    ),
    (
        "TURN relay",
        [
            (
                "Allocations",
                "none",
                [(f"sum by (pod) (iceway_turn_allocations{{{S}}})", "{{pod}}")],
                "Live allocations per relay; each holds one relay port.",
                "timeseries",
            ),
            (
                "Allocate results",
                "reqps",
                [(f"sum by (result) (rate(iceway_turn_allocations_total{{{S}}}[{R}]))", "{{result}}")],
                "Allocate requests per second by result (ok, quota, error).",
                "timeseries",
            ),
            (
                "Permissions and channels",
                "none",
                [
                    (f"sum(iceway_turn_permissions{{{S}}})", "permissions"),
                    (f"sum(iceway_turn_channels{{{S}}})", "channels"),
                ],
                "Live permissions and channel bindings.",
                "timeseries",
            ),
            (
                "Relayed bandwidth",
                "bps",
                [(f"sum by (direction) (rate(iceway_turn_relayed_bytes_total{{{S}}}[{R}])) * 8", "{{direction}}")],
                "Relayed bits per second, to_peer (client to peer) and to_client.",
                "timeseries",
            ),
            (
                "Relayed bandwidth per relay",
                "bps",
                [(f"sum by (pod) (rate(iceway_turn_relayed_bytes_total{{{S}}}[{R}])) * 8", "{{pod}}")],
                "Relayed bits per second, both directions, per relay pod (one per node with the DaemonSet).",
                "timeseries",
            ),
            (
                "Relay port use",
                "percentunit",
                [
                    (
                        f"max by (pod) (iceway_turn_allocations{{{S}}})"
                        f" / max by (pod) (iceway_turn_relay_ports{{{S}}})",
                        "{{pod}}",
                    )
                ],
                "Allocations over the ports of the relay range, per relay; Allocates fail with 508 at 100%.",
                "timeseries",
            ),
            (
                "Relayed packets",
                "pps",
                [(f"sum by (direction) (rate(iceway_turn_relayed_packets_total{{{S}}}[{R}]))", "{{direction}}")],
                "Relayed packets per second by direction.",
                "timeseries",
            ),
            (
                "Allocation lifetime",
                "s",
                quantiles("iceway_turn_allocation_lifetime_seconds_bucket"),
                "How long ended allocations lived.",
                "timeseries",
            ),
            (
                "TURN auth failures",
                "reqps",
                [(f"sum by (reason) (rate(iceway_turn_auth_failures_total{{{S}}}[{R}]))", "{{reason}}")],
                "Requests refused by authentication, by reason.",
                "timeseries",
            ),
            (
                "Denied peers",
                "reqps",
                [(f"sum by (pod) (rate(iceway_turn_peer_denied_total{{{S}}}[{R}]))", "{{pod}}")],
                "Permissions refused by the peer policy (private, loopback and metadata ranges).",
                "timeseries",
            ),
            (
                "Quota rejections",
                "reqps",
                [(f"sum by (kind) (rate(iceway_turn_quota_rejections_total{{{S}}}[{R}]))", "{{kind}}")],
                "Allocations refused by a quota: per user, per client address, or in all.",
                "timeseries",
            ),
            (
                "TURN TCP/TLS connections",
                "none",
                [(f"sum by (pod) (iceway_turn_stream_connections{{{S}}})", "{{pod}}")],
                "Open TCP and TLS client connections (capped by turn.stream_max_connections).",
                "timeseries",
            ),
            (
                "TURN TCP/TLS connections closed or refused",
                "reqps",
                [(f"sum by (reason) (rate(iceway_turn_stream_rejected_total{{{S}}}[{R}]))", "{{reason}}")],
                "Stream connections reset at a cap, or closed by the first-message or idle deadline.",
                "timeseries",
            ),
            (
                "TURN requests",
                "reqps",
                [(f"sum by (method, result) (rate(iceway_turn_requests_total{{{S}}}[{R}]))", "{{method}} {{result}}")],
                "STUN/TURN requests by method and result (ok or the error code).",
                "timeseries",
            ),
            (
                "STUN Binding rate",
                "reqps",
                [(f"sum by (pod) (rate(iceway_stun_binding_requests_total{{{S}}}[{R}]))", "{{pod}}")],
                "Binding requests per second, TURN relays and STUN-only pods.",
                "timeseries",
            ),
        ],
    ),
    (
        "Signaling",
        [
            (
                "Connections",
                "none",
                [
                    (f"sum by (pod) (iceway_signal_connections{{{S}}})", "{{pod}}"),
                    (f"max by (pod) (iceway_signal_connections_max{{{S}}})", "{{pod}} max"),
                ],
                "Open WebSocket connections per replica, and the most each accepts (signal.max_connections).",
                "timeseries",
            ),
            (
                "Connection attempts",
                "reqps",
                [(f"sum by (result) (rate(iceway_signal_connections_total{{{S}}}[{R}]))", "{{result}}")],
                "WebSocket upgrades per second by result.",
                "timeseries",
            ),
            (
                "Cameras online and viewers",
                "none",
                [
                    (f"sum(iceway_signal_cameras_online{{{S}}})", "cameras online"),
                    (f"sum(iceway_signal_viewers{{{S}}})", "viewers"),
                ],
                "Cameras published and viewers connected, summed over replicas.",
                "timeseries",
            ),
            (
                "Messages",
                "reqps",
                [(f"sum by (type, result) (rate(iceway_signal_messages_total{{{S}}}[{R}]))", "{{type}} {{result}}")],
                "Signaling frames per second by type and result.",
                "timeseries",
            ),
            (
                "Relay latency",
                "s",
                quantiles("iceway_signal_relay_latency_seconds_bucket"),
                "Time from a frame's arrival to its delivery to the other peer.",
                "timeseries",
            ),
            (
                "Signaling auth failures",
                "reqps",
                [(f"sum by (reason) (rate(iceway_signal_auth_failures_total{{{S}}}[{R}]))", "{{reason}}")],
                "Connections refused by app-token checks, by reason.",
                "timeseries",
            ),
            (
                "Backplane errors",
                "reqps",
                [(f"sum by (pod) (rate(iceway_signal_backplane_errors_total{{{S}}}[{R}]))", "{{pod}}")],
                "Failed Redis operations; above zero, replicas cannot reach each other's peers.",
                "timeseries",
            ),
        ],
    ),
    (
        "Credential API",
        [
            (
                "Requests",
                "reqps",
                [(f"sum by (route, code) (rate(iceway_auth_requests_total{{{S}}}[{R}]))", "{{route}} {{code}}")],
                "Credential API requests per second by route and status code.",
                "timeseries",
            ),
            (
                "Credentials issued",
                "reqps",
                [(f"sum by (format) (rate(iceway_auth_credentials_issued_total{{{S}}}[{R}]))", "{{format}}")],
                "TURN credentials minted per second, REST or JWT format.",
                "timeseries",
            ),
            (
                "Request duration",
                "s",
                quantiles("iceway_auth_request_duration_seconds_bucket"),
                "Credential API latency.",
                "timeseries",
            ),
        ],
    ),
    (
        "Processes",
        [
            (
                "CPU",
                "percentunit",
                [
                    (
                        f"sum by (service, pod) ({by_service(f'rate(process_cpu_seconds_total{{{S}}}[{R}])')})",
                        "{{service}} {{pod}}",
                    )
                ],
                "CPU cores used per pod (1.0 = one core).",
                "timeseries",
            ),
            (
                "Resident memory",
                "bytes",
                [
                    (
                        f"sum by (service, pod) ({by_service(f'process_resident_memory_bytes{{{S}}}')})",
                        "{{service}} {{pod}}",
                    )
                ],
                "RSS per pod.",
                "timeseries",
            ),
            (
                "Secret and certificate reloads",
                "short",
                [
                    (f"sum by (pod, what, result) (increase(iceway_reloads_total{{{S}}}[{R}]))", "{{pod}} {{what}} {{result}}"),
                    (f"min by (pod, what) (iceway_reload_successful{{{S}}})", "{{pod}} {{what}} loaded"),
                ],
                "Re-reads of rotated files (ok, error) and whether each pod's last read succeeded (1) or it kept the previous set (0).",
                "timeseries",
            ),
            (
                "Age of loaded secrets",
                "s",
                [(f"time() - max by (pod, what) (iceway_reload_last_success_timestamp_seconds{{{S}}})", "{{pod}} {{what}}")],
                "Seconds since each pod last loaded each set successfully; after a rotation step every pod should drop below the step's age.",
                "timeseries",
            ),
        ],
    ),
]


def panel(pid, title, unit, targets, description, kind, x, y, w, h):
    p = {
        "id": pid,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "targets": [],
    }
    for i, (expr, legend) in enumerate(targets):
        t = {"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend}
        if kind == "table":
            t.update({"instant": True, "format": "table"})
        p["targets"].append(t)
    if kind == "timeseries":
        p["fieldConfig"]["defaults"]["custom"] = {"fillOpacity": 10, "showPoints": "never"}
        p["options"] = {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}}
    elif kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"}
    elif kind == "table":
        p["transformations"] = [{"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True}}}]
    return p


def variable(name, label, query):
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": name},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def dashboard():
    panels = []
    pid = 1
    y = 0
    for row_title, row_panels in ROWS:
        panels.append(
            {"id": pid, "type": "row", "title": row_title, "collapsed": False, "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []}
        )
        pid += 1
        y += 1
        x = 0
        for title, unit, targets, description, kind in row_panels:
            w = 8
            if x + w > 24:
                x = 0
                y += 8
            panels.append(panel(pid, title, unit, targets, description, kind, x, y, w, 8))
            pid += 1
            x += w
        y += 8
    return {
        "uid": "iceway-overview",
        "title": "Iceway",
        "description": "Golden signals of Iceway's TURN relay, signaling and credential API.",
        "tags": ["iceway", "webrtc"],
        "timezone": "",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-3h", "to": "now"},
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                },
                variable("namespace", "Namespace", "label_values(iceway_build_info, namespace)"),
                variable("release", "Release", 'label_values(iceway_build_info{namespace=~"$namespace"}, release)'),
                variable(
                    "job",
                    "Job",
                    'label_values(iceway_build_info{namespace=~"$namespace", release=~"$release"}, job)',
                ),
                variable(
                    "pod",
                    "Pod",
                    'label_values(iceway_build_info{namespace=~"$namespace", release=~"$release", job=~"$job"}, pod)',
                ),
            ]
        },
        "panels": panels,
    }


def main():
    text = json.dumps(dashboard(), indent=2, sort_keys=False) + "\n"
    if "--stdout" in sys.argv[1:]:
        sys.stdout.write(text)
    else:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(text)
        print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
