#!/usr/bin/env python3
"""Checks behind scripts/test-helm.sh and scripts/test-dashboard-live.sh that no packaged tool does.

  helm_checks.py manifests FILE...            hardened pods, probes, labels on rendered manifests
  helm_checks.py extract-rules RENDERED OUT   the PrometheusRule's groups as a promtool rule file
  helm_checks.py alert-coverage RULES TEST RUNBOOK
                                              every alert: runbook annotations, a runbook section,
                                              a firing and a silent promtool test case
  helm_checks.py dashboard-configmap RENDERED JSON
                                              the dashboard ConfigMap carries JSON, sidecar label
  helm_checks.py dashboard-rules JSON OUT     every dashboard expression as a recording rule
  helm_checks.py dashboard-names JSON         metric names the dashboard uses, one per line
  helm_checks.py names-contract JSON RULES    dashboard and alerts use only DESIGN §4 names, and
                                              the dashboard shows every one of them

Needs PyYAML (the tools venv has it through yamllint). Exit status 1 on any failure.
"""

import json
import re
import sys
import tomllib

import yaml

# DESIGN §4, plus the process metrics every service exports. Histograms are named by their base.
DESIGN_METRICS = {
    "iceway_build_info",
    "iceway_turn_allocations",
    "iceway_turn_allocations_total",
    "iceway_turn_allocation_lifetime_seconds",
    "iceway_turn_permissions",
    "iceway_turn_channels",
    "iceway_turn_relayed_bytes_total",
    "iceway_turn_relayed_packets_total",
    "iceway_turn_requests_total",
    "iceway_turn_auth_failures_total",
    "iceway_turn_peer_denied_total",
    "iceway_turn_quota_rejections_total",
    "iceway_stun_binding_requests_total",
    "iceway_signal_connections",
    "iceway_signal_connections_total",
    "iceway_signal_cameras_online",
    "iceway_signal_viewers",
    "iceway_signal_messages_total",
    "iceway_signal_relay_latency_seconds",
    "iceway_signal_auth_failures_total",
    "iceway_signal_backplane_errors_total",
    "iceway_auth_credentials_issued_total",
    "iceway_auth_requests_total",
    "iceway_auth_request_duration_seconds",
    # Added by the project where DESIGN §4 is silent (documented in docs/turn-server.md).
    "iceway_turn_stream_connections",
    "iceway_turn_stream_rejected_total",
    # (documented in docs/signaling.md)
    "iceway_signal_connections_max",
    # (documented in docs/turn-server.md)
    "iceway_turn_relay_ports",
    # Every service that reads key files (documented in docs/auth.md, "Rotation without a restart").
    "iceway_reload_successful",
    "iceway_reload_last_success_timestamp_seconds",
    "iceway_reloads_total",
}
PROCESS_METRICS = {"process_cpu_seconds_total", "process_resident_memory_bytes"}
HISTOGRAMS = {
    "iceway_turn_allocation_lifetime_seconds",
    "iceway_signal_relay_latency_seconds",
    "iceway_auth_request_duration_seconds",
}
# Series alerts may use that no Iceway service exports: Prometheus' own and kube-state-metrics'.
ALERT_EXTERNAL = {"up", "kube_pod_status_ready"}

# Substitutions that turn Grafana's variables into plain PromQL.
GRAFANA_VARS = {"$__rate_interval": "5m", "$namespace": ".*", "$release": ".*", "$job": ".*", "$pod": ".*"}

failures = []


def fail(msg):
    failures.append(msg)
    print(f"FAIL: {msg}", file=sys.stderr)


def metric_names(expr):
    """Metric names in a PromQL expression: every identifier directly before a `{` selector."""
    names = set()
    for m in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{", expr):
        name = m.group(1)
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name[: -len(suffix)] in HISTOGRAMS:
                name = name[: -len(suffix)]
        names.add(name)
    return names


def dashboard_exprs(path):
    with open(path) as f:
        dash = json.load(f)
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t["refId"], t["expr"]))
    return dash, out


def promql(expr):
    for k, v in GRAFANA_VARS.items():
        expr = expr.replace(k, v)
    if "$" in expr:
        fail(f"unsubstituted variable in {expr}")
    return expr


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


# --- manifests ------------------------------------------------------------------------------------


def pod_spec(doc):
    kind = doc.get("kind")
    if kind in ("Deployment", "DaemonSet", "StatefulSet"):
        return doc["spec"]["template"]["spec"]
    return None


def check_manifests(paths):
    for path in paths:
        for doc in load_docs(path):
            name = f"{path}: {doc.get('kind')}/{doc['metadata'].get('name')}"
            labels = doc["metadata"].get("labels") or {}
            for key in (
                "app.kubernetes.io/name",
                "app.kubernetes.io/instance",
                "app.kubernetes.io/version",
                "app.kubernetes.io/managed-by",
                "helm.sh/chart",
            ):
                if key not in labels:
                    fail(f"{name}: label {key} missing")
            if doc.get("kind") == "ConfigMap":
                for key, text in (doc.get("data") or {}).items():
                    if key.endswith(".toml"):
                        try:
                            tomllib.loads(text)
                        except tomllib.TOMLDecodeError as e:
                            fail(f"{name}: {key} is not valid TOML: {e}")
            spec = pod_spec(doc)
            if spec is None:
                continue
            psc = spec.get("securityContext") or {}
            if not psc.get("runAsNonRoot"):
                fail(f"{name}: pod securityContext.runAsNonRoot is not true")
            if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
                fail(f"{name}: seccompProfile is not RuntimeDefault")
            if spec.get("automountServiceAccountToken") is not False:
                fail(f"{name}: service account token is mounted")
            for c in spec["containers"]:
                cn = f"{name} container {c['name']}"
                sc = c.get("securityContext") or {}
                if sc.get("readOnlyRootFilesystem") is not True:
                    fail(f"{cn}: root filesystem is writable")
                if sc.get("allowPrivilegeEscalation") is not False:
                    fail(f"{cn}: privilege escalation allowed")
                caps = sc.get("capabilities") or {}
                if caps.get("drop") != ["ALL"]:
                    fail(f"{cn}: capabilities not dropped")
                ports = [p["containerPort"] for p in c.get("ports", [])]
                added = caps.get("add") or []
                low = any(p < 1024 for p in ports)
                if added not in ([], ["NET_BIND_SERVICE"]):
                    fail(f"{cn}: adds capabilities {added}")
                if low != (added == ["NET_BIND_SERVICE"]):
                    fail(f"{cn}: NET_BIND_SERVICE must be added exactly when a port is below 1024 (ports {ports}, add {added})")
                admin = [p for p in c.get("ports", []) if p["name"] == "admin"]
                if not admin:
                    fail(f"{cn}: no admin port")
                for probe, path_ in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                    get = (c.get(probe) or {}).get("httpGet") or {}
                    if get.get("path") != path_ or get.get("port") != "admin":
                        fail(f"{cn}: {probe} is not GET {path_} on the admin port")
                if "resources" not in c or "requests" not in c["resources"]:
                    fail(f"{cn}: no resource requests")
                if not any(a.startswith("--admin=") for a in c.get("args", [])):
                    fail(f"{cn}: no --admin flag")
            if "terminationGracePeriodSeconds" not in spec:
                fail(f"{name}: no terminationGracePeriodSeconds")


# --- rules ----------------------------------------------------------------------------------------


def extract_rules(rendered, out):
    rules = [d for d in load_docs(rendered) if d.get("kind") == "PrometheusRule"]
    if len(rules) != 1:
        fail(f"{rendered}: expected one PrometheusRule, found {len(rules)}")
        return
    with open(out, "w") as f:
        yaml.safe_dump(rules[0]["spec"], f, sort_keys=False, width=10000)


def alerts_of(rules_path):
    with open(rules_path) as f:
        doc = yaml.safe_load(f)
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def alert_coverage(rules_path, test_path, runbook_path):
    with open(test_path) as f:
        tests = yaml.safe_load(f)
    fired, silent = set(), set()
    for t in tests["tests"]:
        for a in t.get("alert_rule_test", []):
            (fired if a.get("exp_alerts") else silent).add(a["alertname"])
    with open(runbook_path) as f:
        runbook = f.read().lower()
    for rule in alerts_of(rules_path):
        name = rule["alert"]
        ann = rule.get("annotations") or {}
        for key in ("summary", "description", "runbook", "runbook_url"):
            if not ann.get(key):
                fail(f"alert {name}: annotation {key} missing")
        anchor = ann.get("runbook_url", "").rsplit("#", 1)[-1]
        if anchor != name.lower() or f"## {name.lower()}" not in runbook:
            fail(f"alert {name}: no '## {name}' section in {runbook_path} matching its runbook_url")
        if "severity" not in (rule.get("labels") or {}):
            fail(f"alert {name}: no severity label")
        if name not in fired:
            fail(f"alert {name}: no promtool test case where it fires")
        if name not in silent:
            fail(f"alert {name}: no promtool test case where it stays silent")
    print(f"alert coverage: {len(alerts_of(rules_path))} alerts, each with a firing and a silent test")


# --- dashboard ------------------------------------------------------------------------------------


def dashboard_rules(path, out):
    dash, exprs = dashboard_exprs(path)
    variables = {v["name"] for v in dash["templating"]["list"]}
    if not {"namespace", "release", "job", "pod"} <= variables:
        fail("dashboard is not templated by namespace, release, job and pod")
    rules = []
    for i, (title, ref, expr) in enumerate(exprs):
        for var in ("namespace", "release", "job", "pod"):
            if f'{var}=~"${var}"' not in expr:
                fail(f"dashboard panel {title!r} {ref}: not filtered by ${var}: {expr}")
        rules.append({"record": f"dashboard:panel_{i}:{ref.lower()}", "expr": promql(expr)})
    with open(out, "w") as f:
        yaml.safe_dump({"groups": [{"name": "iceway-dashboard", "rules": rules}]}, f, sort_keys=False, width=10000)
    print(f"dashboard: {len(rules)} expressions written as recording rules to {out}")


def dashboard_configmap(rendered, path):
    cms = [
        d
        for d in load_docs(rendered)
        if d.get("kind") == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")
    ]
    if len(cms) != 1:
        fail(f"{rendered}: expected one dashboard ConfigMap, found {len(cms)}")
        return
    cm = cms[0]
    if (cm["metadata"].get("labels") or {}).get("grafana_dashboard") != "1":
        fail("dashboard ConfigMap lacks the sidecar label grafana_dashboard=1")
    with open(path) as f:
        if json.loads(cm["data"]["iceway.json"]) != json.load(f):
            fail("dashboard ConfigMap differs from files/dashboards/iceway.json")


def dashboard_names(path):
    _, exprs = dashboard_exprs(path)
    names = set()
    for _, _, expr in exprs:
        names |= metric_names(expr)
    for n in sorted(names):
        print(n)


def names_contract(dash_path, rules_path):
    _, exprs = dashboard_exprs(dash_path)
    used = set()
    for title, ref, expr in exprs:
        names = metric_names(expr)
        used |= names
        for n in names - DESIGN_METRICS - PROCESS_METRICS:
            fail(f"dashboard panel {title!r} {ref}: metric {n} is not in DESIGN §4")
    for n in sorted(DESIGN_METRICS - used):
        fail(f"dashboard: DESIGN §4 metric {n} is on no panel")
    for n in sorted(PROCESS_METRICS - used):
        fail(f"dashboard: {n} is on no panel")
    for rule in alerts_of(rules_path):
        for n in metric_names(rule["expr"]) - DESIGN_METRICS - ALERT_EXTERNAL:
            fail(f"alert {rule['alert']}: metric {n} is not in DESIGN §4")
    print(f"names: dashboard uses {len(used)} metric names, all from DESIGN §4 and process_*")


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "manifests":
        check_manifests(args)
    elif cmd == "extract-rules":
        extract_rules(*args)
    elif cmd == "alert-coverage":
        alert_coverage(*args)
    elif cmd == "dashboard-configmap":
        dashboard_configmap(*args)
    elif cmd == "dashboard-rules":
        dashboard_rules(*args)
    elif cmd == "dashboard-names":
        dashboard_names(*args)
    elif cmd == "names-contract":
        names_contract(*args)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
