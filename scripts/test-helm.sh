#!/usr/bin/env bash
# Checks the Helm chart, its alert rules, the Grafana dashboard and the Dockerfiles with real tools:
#   helm lint --strict and helm template for the default values and every helm/iceway/ci/*.yaml,
#   kubernetes-validate --strict (Kubernetes 1.30 and 1.37 schemas) and yamllint on the output,
#   values that must be refused, hardened pods and standard labels (scripts/helm_checks.py),
#   promtool check rules + promtool test rules (a firing and a silent case for every alert),
#   every dashboard expression as a recording rule through promtool check rules,
#   DESIGN §4 metric names only, hadolint on deploy/docker/Dockerfile.
# Tools: scripts/install-helm-tools.sh (helm, kubernetes-validate, yamllint, hadolint into
# $ICEWAY_TOOLS_DIR, default .tools/; promtool from Debian's prometheus package).
# Ends with a "N passed, N failed" line; exits non-zero when a check fails or a tool is missing.
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="${ICEWAY_TOOLS_DIR:-$repo/.tools}"
export PATH="$tools/bin:$PATH"
chart="$repo/helm/iceway"
release=t
namespace=iceway
kube_versions=(1.30.0 1.37.0)

passed=0
failed=0
failed_names=()
out="$(mktemp -d "${TMPDIR:-/tmp}/iceway-helm.XXXXXX")"
trap 'rm -rf "$out"' EXIT

missing=()
for t in helm kubernetes-validate yamllint promtool hadolint; do
  command -v "$t" >/dev/null 2>&1 || missing+=("$t")
done
py="$tools/venv/bin/python"
[ -x "$py" ] || py=python3
"$py" -c 'import yaml' 2>/dev/null || missing+=("python3-yaml")
if [ "${#missing[@]}" -gt 0 ]; then
  echo "test-helm: missing tools: ${missing[*]}" >&2
  echo "test-helm: run scripts/install-helm-tools.sh (as root for promtool), or set ICEWAY_TOOLS_DIR" >&2
  echo "0 passed, 1 failed"
  exit 1
fi

# check NAME COMMAND...: runs one check, keeps its output in $out/log/NAME, prints it on failure.
mkdir -p "$out/log"
check() {
  local name="$1"; shift
  local log="$out/log/${name//[^A-Za-z0-9_.-]/_}"
  if "$@" >"$log" 2>&1; then
    passed=$((passed + 1))
    echo "ok   $name"
  else
    failed=$((failed + 1))
    failed_names+=("$name")
    echo "FAIL $name"
    sed 's/^/     /' "$log" | tail -40
  fi
}

# must_fail NAME EXPECTED-MESSAGE HELM-ARGS...: helm template must refuse these values.
must_fail() {
  local name="$1" expected="$2"; shift 2
  local log="$out/log/refuse_${name}"
  if helm template "$release" "$chart" -n "$namespace" "$@" >"$log" 2>&1; then
    echo "helm template accepted values that must be refused: $*"
    return 1
  fi
  grep -qF -- "$expected" "$log" || { echo "refused, but without \"$expected\":"; cat "$log"; return 1; }
}

# The tools themselves must refuse a broken manifest, or a pass proves nothing.
validate_catches_unknown_field() {
  printf 'apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  portz: []\n' >"$out/bad.yaml"
  ! kubernetes-validate --strict --quiet "$out/bad.yaml"
}

echo "== tools: $(helm version --short), kubernetes-validate $(kubernetes-validate --version), $(promtool --version 2>&1 | head -1 | cut -d' ' -f1-3)"
check "kubernetes-validate refuses an unknown field" validate_catches_unknown_field

# --- render every value set ---------------------------------------------------------------------
value_sets=(default)
for f in "$chart"/ci/*-values.yaml; do value_sets+=("$(basename "$f" -values.yaml)"); done

for vs in "${value_sets[@]}"; do
  args=()
  [ "$vs" = default ] || args=(-f "$chart/ci/$vs-values.yaml")
  rendered="$out/$vs.yaml"
  check "helm lint --strict [$vs]" helm lint --strict "$chart" -n "$namespace" "${args[@]}"
  check "helm template [$vs]" sh -c 'helm template "$@" > "'"$rendered"'"' _ "$release" "$chart" -n "$namespace" "${args[@]}"
  check "NOTES.txt renders (helm install --dry-run=client) [$vs]" sh -c \
    'helm install "$@" --dry-run=client | grep -q "is installed as release"' _ "$release" "$chart" -n "$namespace" "${args[@]}"
  [ -s "$rendered" ] || continue
  for kv in "${kube_versions[@]}"; do
    check "kubernetes-validate --strict k8s $kv [$vs]" kubernetes-validate --strict --quiet -k "$kv" "$rendered"
  done
  check "yamllint [$vs]" yamllint -s -d '{extends: default, rules: {line-length: disable, document-start: disable, indentation: {indent-sequences: whatever}}}' "$rendered"
  check "hardened pods, probes, labels [$vs]" "$py" "$repo/scripts/helm_checks.py" manifests "$rendered"
done

# --- a component's configuration rolls that component only --------------------------------------
# Renders twice, the second time with only auth's configuration changed (its drain timeout follows
# its grace period); the chart's Secret is an existing one so that its checksum is stable. Every
# pod template but auth's must be byte-for-byte the same, and auth's must differ.
config_change_rolls_only_auth() {
  local a="$out/log/roll_a.yaml" b="$out/log/roll_b.yaml"
  local common=(--set secrets.existingSecret=iceway-secrets --set stun.enabled=true)
  helm template "$release" "$chart" -n "$namespace" "${common[@]}" >"$a" || return 1
  helm template "$release" "$chart" -n "$namespace" "${common[@]}" \
    --set auth.terminationGracePeriodSeconds=45 >"$b" || return 1
  "$py" - "$a" "$b" <<'PY'
import json, sys, yaml
def templates(path):
    with open(path) as f:
        return {f"{d['kind']}/{d['metadata']['name']}": json.dumps(d["spec"]["template"], sort_keys=True)
                for d in yaml.safe_load_all(f) if d and d.get("kind") in ("Deployment", "DaemonSet", "StatefulSet")}
a, b = templates(sys.argv[1]), templates(sys.argv[2])
changed = sorted(k for k in a if a[k] != b.get(k))
assert any(k.endswith("-turn") for k in a) and any(k.endswith("-stun") for k in a), sorted(a)
if [k for k in changed if not k.endswith("-auth")] or not changed:
    sys.exit(f"an auth-only change changed the pod templates of {changed or 'nothing'}")
print(f"an auth-only change rolls {changed} only")
PY
}
check "a change to auth's configuration rolls auth only, not TURN (per-component checksums)" config_change_rolls_only_auth

# --- a rotated secret rolls nothing: the services re-read the mounted files ---------------------
secret_change_rolls_nothing() {
  local a="$out/log/secret_a.yaml" b="$out/log/secret_b.yaml"
  local common=(--set stun.enabled=true --set secrets.jwtSecret=app-key-0123456789abcdef0123456789)
  helm template "$release" "$chart" -n "$namespace" "${common[@]}" \
    --set "secrets.turnSecrets={first-secret-0123456789}" >"$a" || return 1
  helm template "$release" "$chart" -n "$namespace" "${common[@]}" \
    --set "secrets.turnSecrets={second-secret-0123456789}" >"$b" || return 1
  "$py" - "$a" "$b" <<'PY'
import json, sys, yaml
def docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]
a, b = docs(sys.argv[1]), docs(sys.argv[2])
def templates(ds):
    return {f"{d['kind']}/{d['metadata']['name']}": json.dumps(d["spec"]["template"], sort_keys=True)
            for d in ds if d.get("kind") in ("Deployment", "DaemonSet", "StatefulSet")}
ta, tb = templates(a), templates(b)
assert len(ta) >= 3, sorted(ta)
changed = sorted(k for k in ta if ta[k] != tb.get(k))
if changed:
    sys.exit(f"a TURN secret change rolls {changed}")
secret = lambda ds: next(d for d in ds if d.get("kind") == "Secret")
assert secret(a) != secret(b), "the Secret itself must change"
print("a secret change updates the Secret and rolls no workload")
PY
}
check "a rotated secret updates the Secret and rolls no pod (services reload the files)" secret_change_rolls_nothing

# --- behind the chart's ingress, per-client limits key on X-Forwarded-For -------------------------
forwarded_for_follows_the_ingress() {
  local on="$out/log/ingress_on.yaml" off="$out/log/ingress_off.yaml"
  helm template "$release" "$chart" -n "$namespace" --set signal.ingress.enabled=true \
    --set auth.ingress.enabled=true >"$on" || return 1
  helm template "$release" "$chart" -n "$namespace" --set signal.ingress.enabled=true \
    --set signal.ingress.trustForwardedFor=false >"$off" || return 1
  "$py" - "$on" "$off" <<'PY'
import sys, tomllib, yaml
def configs(path):
    with open(path) as f:
        return {k: tomllib.loads(v) for d in yaml.safe_load_all(f) if d and d["kind"] == "ConfigMap"
                for k, v in d["data"].items()}
on, off = configs(sys.argv[1]), configs(sys.argv[2])
assert on["signal.toml"]["signal"]["trust_forwarded_for"] is True, on["signal.toml"]
assert on["auth.toml"]["auth"]["rate_limit"]["trust_forwarded_for"] is True, on["auth.toml"]
assert "trust_forwarded_for" not in off["signal.toml"].get("signal", {}), off["signal.toml"]
assert "trust_forwarded_for" not in off["auth.toml"].get("auth", {}).get("rate_limit", {}), off["auth.toml"]
print("ingress on: signal and auth trust X-Forwarded-For; off (or opted out): they do not")
PY
}
check "an enabled ingress sets trust_forwarded_for for signal and auth" forwarded_for_follows_the_ingress

# --- the Redis URL (and its password) never in argv or the environment ---------------------------
redis_url_stays_out_of_argv() {
  local sec="$out/log/redis_secret.yaml" plain="$out/log/redis_plain.yaml"
  helm template "$release" "$chart" -n "$namespace" --set signal.replicas=2 \
    --set signal.redis.existingSecret=redis-creds >"$sec" || return 1
  helm template "$release" "$chart" -n "$namespace" --set signal.replicas=2 \
    --set signal.redis.url=redis://:hunter2@redis.example:6379/0 >"$plain" || return 1
  "$py" - "$sec" "$plain" <<'PY'
import json, sys, tomllib, yaml
def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]
for path, want in ((sys.argv[1], "file"), (sys.argv[2], "url")):
    docs = load(path)
    signal = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-signal"))
    pod = signal["spec"]["template"]["spec"]
    c = pod["containers"][0]
    shown = json.dumps([c.get("args", []), c.get("env", []), c.get("envFrom", [])])
    assert "redis" not in shown.lower(), f"Redis in argv or env: {shown}"
    cfg = next(tomllib.loads(d["data"]["signal.toml"]) for d in docs if d["kind"] == "ConfigMap" and "signal.toml" in d["data"])["signal"]
    if want == "file":
        assert cfg == {"redis_url_file": "/etc/iceway/redis/redis-url"}, cfg
        vol = next(v for v in pod["volumes"] if v["name"] == "redis")
        assert vol["secret"]["secretName"] == "redis-creds", vol
        assert any(m["name"] == "redis" and m["mountPath"] == "/etc/iceway/redis" for m in c["volumeMounts"])
    else:
        assert cfg == {"redis_url": "redis://:hunter2@redis.example:6379/0"}, cfg
print("the Redis URL reaches signal by a mounted Secret file or its config file, never argv or env")
PY
}
check "the Redis URL is never in argv or the environment" redis_url_stays_out_of_argv

# --- turn.externalIP: value, else the node's address (fromNode), else none ------------------------
external_ip_follows_values() {
  local node="$out/log/extip_node.yaml" none="$out/log/extip_none.yaml" val="$out/log/extip_value.yaml"
  helm template "$release" "$chart" -n "$namespace" >"$node" || return 1
  helm template "$release" "$chart" -n "$namespace" --set turn.externalIP.fromNode=false >"$none" || return 1
  helm template "$release" "$chart" -n "$namespace" --set turn.externalIP.value=203.0.113.9 >"$val" || return 1
  "$py" - "$node" "$none" "$val" <<'PY'
import sys, yaml
def turn(path):
    with open(path) as f:
        d = next(d for d in yaml.safe_load_all(f) if d and d["kind"] == "DaemonSet" and d["metadata"]["name"].endswith("-turn"))
    c = d["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in c.get("env") or []}
    return c["args"], env
args, env = turn(sys.argv[1])
assert "--external-ip=$(ICEWAY_EXTERNAL_IP)" in args
assert env["ICEWAY_EXTERNAL_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP", env
args, env = turn(sys.argv[2])
assert not any(a.startswith("--external-ip") for a in args) and "ICEWAY_EXTERNAL_IP" not in env, (args, env)
args, env = turn(sys.argv[3])
assert env["ICEWAY_EXTERNAL_IP"]["value"] == "203.0.113.9", env
print("externalIP: the node's address by default, none with fromNode=false, value when set")
PY
}
check "turn.externalIP.fromNode is honoured" external_ip_follows_values

# --- turn.externalIP.fromStun: in the TURN ConfigMap, no --external-ip, fromNode replaced --------
external_ip_from_stun() {
  local f="$out/log/extip_stun.yaml"
  helm template "$release" "$chart" -n "$namespace" \
    --set 'turn.externalIP.fromStun={stun.example.net:3478,[2001:db8::1]:3478}' >"$f" || return 1
  "$py" - "$f" <<'PY'
import sys, tomllib, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
ds = next(d for d in docs if d["kind"] == "DaemonSet" and d["metadata"]["name"].endswith("-turn"))
c = ds["spec"]["template"]["spec"]["containers"][0]
assert not any(a.startswith("--external-ip") for a in c["args"]), c["args"]
assert "ICEWAY_EXTERNAL_IP" not in {e["name"] for e in c.get("env") or []}, c.get("env")
cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-turn-config"))
cfg = tomllib.loads(cm["data"]["turn.toml"])
assert cfg["turn"]["external_ip_stun"] == ["stun.example.net:3478", "[2001:db8::1]:3478"], cfg
stun = next((d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-stun-config")), None)
assert stun is None or "external_ip_stun" not in stun["data"]["stun.toml"], "only the relay discovers"
print("externalIP.fromStun: turn.external_ip_stun in the TURN ConfigMap, no --external-ip")
PY
}
check "turn.externalIP.fromStun reaches the relay's config" external_ip_from_stun
check "refuses: externalIP.value with fromStun" must_fail extip-stun "exclude each other" \
  --set turn.externalIP.value=203.0.113.1 --set 'turn.externalIP.fromStun={stun.example.net:3478}'
check "refuses: a fromStun entry without a port" must_fail extip-stun-port "fromStun" \
  --set 'turn.externalIP.fromStun={stun.example.net}'

# --- the RTSP bridge: cameras and their credentials reach it as mounted Secret files only ---------
bridge_cameras_from_values() {
  local f="$out/log/bridge_values.yaml" g="$out/log/bridge_values_2.yaml"
  local common=(--set bridge.enabled=true --set bridge.relayOnly=true
    --set 'bridge.cameras[0].id=porch' --set 'bridge.cameras[0].url=rtsp://192.168.1.64:554/Streaming/Channels/101'
    --set 'bridge.cameras[0].username=viewer' --set 'bridge.cameras[1].id=gate'
    --set 'bridge.cameras[1].url=rtsp://192.168.1.65/live' --set 'bridge.cameras[1].transport=udp'
    --set networkPolicy.enabled=true --set 'networkPolicy.httpFrom[0].namespaceSelector.matchLabels.team=edge'
    --set bridge.networkPolicy.restrictEgress=true --set 'bridge.networkPolicy.cameras[0].cidr=192.168.1.0/24')
  helm template "$release" "$chart" -n "$namespace" "${common[@]}" \
    --set 'bridge.cameras[0].password=hunter2-camera-password' >"$f" || return 1
  helm template "$release" "$chart" -n "$namespace" "${common[@]}" \
    --set 'bridge.cameras[0].password=other-camera-password' >"$g" || return 1
  "$py" - "$f" "$g" <<'PY'
import base64, json, sys, tomllib, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
other = [d for d in yaml.safe_load_all(open(sys.argv[2])) if d]
by = lambda ds, kind, name: next(d for d in ds if d["kind"] == kind and d["metadata"]["name"] == name)
dep = by(docs, "Deployment", "t-iceway-bridge")
assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}, dep["spec"]
pod = dep["spec"]["template"]["spec"]
c = pod["containers"][0]
assert c["image"].endswith("/iceway-bridge:0.1.0"), c["image"]
for d in docs:
    spec = d["spec"]["template"]["spec"] if d["kind"] in ("Deployment", "DaemonSet") else d["spec"] if d["kind"] == "Pod" else None
    for k in (spec or {}).get("containers", []):
        shown = json.dumps([k.get("args", []), k.get("env", []), k.get("envFrom", [])])
        assert "hunter2" not in shown and "rtsp://" not in shown, f"{d['metadata']['name']}: camera in argv or env: {shown}"
args = c["args"]
for want in ("--config=/etc/iceway/bridge/bridge.toml", "--admin=0.0.0.0:9482", "--relay-only",
             "--signal-url=ws://t-iceway-signal:8080/v1/ws", "--jwt-secret-file=/etc/iceway/secrets/jwt-secret"):
    assert want in args, (want, args)
assert [p["containerPort"] for p in c["ports"] if p["name"] == "admin"] == [9482], c["ports"]
assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}, c["livenessProbe"]
assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}, c["readinessProbe"]
vols = {v["name"]: v for v in pod["volumes"]}
assert vols["cameras"]["secret"]["secretName"] == "t-iceway-bridge", vols
# The app key only: the bridge has no use for the TURN secrets.
assert [i["key"] for i in vols["secrets"]["secret"]["items"]] == ["jwt-secret"], vols["secrets"]
mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
assert mounts["cameras"] == "/etc/iceway/bridge" and mounts["secrets"] == "/etc/iceway/secrets", mounts
data = {k: base64.b64decode(v).decode() for k, v in by(docs, "Secret", "t-iceway-bridge")["data"].items()}
cams = tomllib.loads(data["bridge.toml"])["bridge"]["cameras"]
assert [(k["id"], k["transport"]) for k in cams] == [("porch", "tcp"), ("gate", "udp")], cams
assert "hunter2" not in data["bridge.toml"] and "credentials_file" not in cams[1], data
cred = cams[0]["credentials_file"]
assert cred.startswith("/etc/iceway/bridge/"), cred
assert data[cred.rsplit("/", 1)[1]] == "viewer:hunter2-camera-password", data
svc = by(docs, "Service", "t-iceway-bridge-admin")
assert svc["metadata"]["labels"]["iceway/admin"] == "true" and svc["spec"]["ports"][0]["port"] == 9482, svc
check = by(docs, "Pod", "t-iceway-check-config-bridge")["spec"]
assert check["containers"][0]["args"] == ["--check-config"] + args, check["containers"][0]["args"]
assert {v["name"]: v for v in check["volumes"]}["cameras"] == vols["cameras"], check["volumes"]
np = by(docs, "NetworkPolicy", "t-iceway-bridge")["spec"]
assert np["policyTypes"] == ["Ingress", "Egress"] and [r["ports"][0]["port"] for r in np["ingress"]] == [9482], np
assert {"ipBlock": {"cidr": "192.168.1.0/24"}} in [t for r in np["egress"] for t in r.get("to", [])], np["egress"]
sig = by(docs, "NetworkPolicy", "t-iceway-signal")["spec"]["ingress"][0]["from"]
assert any((p.get("podSelector") or {}).get("matchLabels", {}).get("app.kubernetes.io/component") == "bridge" for p in sig), sig
# A camera password change rolls the bridge (it reads its files at start), and only the bridge.
tpl = lambda ds: {d["metadata"]["name"]: json.dumps(d["spec"]["template"], sort_keys=True) for d in ds if d["kind"] in ("Deployment", "DaemonSet")}
ta, tb = tpl(docs), tpl(other)
assert sorted(k for k in ta if ta[k] != tb.get(k)) == ["t-iceway-bridge"], "a camera password change must roll the bridge only"
print("bridge: Deployment (1, Recreate), cameras and credentials in its Secret only, probes on 9482, check-config, egress policy")
PY
}
check "bridge with bridge.cameras: Secret files mounted, nothing secret in args, probes on 9482" bridge_cameras_from_values

bridge_cameras_from_existing_secret() {
  local f="$out/log/bridge_secret.yaml" off="$out/log/bridge_off.yaml"
  helm template "$release" "$chart" -n "$namespace" -f "$chart/ci/bridge-secret-values.yaml" >"$f" || return 1
  helm template "$release" "$chart" -n "$namespace" >"$off" || return 1
  "$py" - "$f" "$off" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
assert not [d for d in docs if d["kind"] == "Secret"], "existing Secrets are not rendered"
dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "t-iceway-bridge")
tmpl = dep["spec"]["template"]
pod, c = tmpl["spec"], tmpl["spec"]["containers"][0]
assert "--signal-url=wss://signal.example.com/v1/ws" in c["args"], c["args"]
assert "--jwt-secret-file=/etc/iceway/secrets/jwt-secret" in c["args"], c["args"]
vols = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
assert vols == {"cameras": "bridge-cameras", "secrets": "iceway-secrets"}, vols
assert {"name": "cameras", "mountPath": "/etc/iceway/bridge", "readOnly": True} in c["volumeMounts"], c["volumeMounts"]
assert "checksum/cameras" not in (tmpl["metadata"].get("annotations") or {}), "the chart cannot hash a Secret it does not render"
off = [d for d in yaml.safe_load_all(open(sys.argv[2])) if d]
assert not [d for d in off if d["metadata"]["name"].startswith("t-iceway-bridge") or "bridge" in d["metadata"]["name"]], "bridge is off by default"
print("bridge with bridge.existingSecret: that Secret mounted at /etc/iceway/bridge, no Secret rendered; off by default")
PY
}
check "bridge with bridge.existingSecret mounts it; the bridge is off by default" bridge_cameras_from_existing_secret

cam=(--set bridge.enabled=true --set 'bridge.cameras[0].id=porch' --set 'bridge.cameras[0].url=rtsp://10.0.0.5/s')
check "refuses: two bridge replicas" must_fail bridge-replicas "bridge.replicas must be 0 or 1" "${cam[@]}" --set bridge.replicas=2
check "refuses: bridge without cameras" must_fail bridge-none "needs bridge.cameras or bridge.existingSecret" --set bridge.enabled=true
check "refuses: bridge cameras from values and a Secret" must_fail bridge-both "exclude each other" \
  "${cam[@]}" --set bridge.existingSecret=cams
check "refuses: bridge.config with bridge.existingSecret" must_fail bridge-config "put those settings in its bridge.toml" \
  --set bridge.enabled=true --set bridge.existingSecret=cams --set bridge.config.bridge.rtsp_timeout=5s
check "refuses: camera credentials in the URL" must_fail bridge-url-creds "not the URL" \
  --set bridge.enabled=true --set 'bridge.cameras[0].id=porch' --set 'bridge.cameras[0].url=rtsp://admin:pw@10.0.0.5/s'
check "refuses: bridge without signal or signalUrl" must_fail bridge-signal "set bridge.signalUrl" "${cam[@]}" --set signal.enabled=false
check "refuses: bridge minting without the HS256 app key" must_fail bridge-hs256 "needs appAuth.hs256" "${cam[@]}" --set appAuth.hs256=false

# --- values the chart must refuse ---------------------------------------------------------------
check "refuses: signal scaled out without Redis" must_fail signal-no-redis "needs signal.redis.url" --set signal.replicas=3
check "refuses: signal HPA without Redis" must_fail hpa-no-redis "needs signal.redis.url" --set signal.autoscaling.enabled=true
check "refuses: LoadBalancer TURN with a wide relay range" must_fail lb-range "more than turn.service.maxRelayPorts" \
  --set turn.mode=deployment --set turn.externalIP.value=203.0.113.1
check "refuses: LoadBalancer TURN without an external IP" must_fail lb-ip "needs turn.externalIP.value" \
  --set turn.mode=deployment --set turn.relayRange.min=50000 --set turn.relayRange.max=50009
check "refuses: LoadBalancer TURN with 2 replicas" must_fail lb-replicas "turn.replicas must be 1" \
  --set turn.mode=deployment --set turn.externalIP.value=203.0.113.1 --set turn.relayRange.min=50000 \
  --set turn.relayRange.max=50009 --set turn.replicas=2
check "refuses: TLS without a certificate source" must_fail tls "turn.tls.enabled needs" --set turn.tls.enabled=true
check "refuses: ServiceMonitor and PodMonitor together" must_fail monitors "enable one" \
  --set metrics.serviceMonitor.enabled=true --set metrics.podMonitor.enabled=true
check "refuses: unknown value (schema)" must_fail schema-typo "additional properties" --set signal.replica=2
check "refuses: bad relay range type (schema)" must_fail schema-type "relayRange" --set turn.relayRange.min=80

# --- alert rules --------------------------------------------------------------------------------
rules="$out/rules/rules.yaml"
mkdir -p "$out/rules"
cp "$chart/tests/alerts.test.yaml" "$out/rules/"
check "extract PrometheusRule [all-on]" "$py" "$repo/scripts/helm_checks.py" extract-rules "$out/all-on.yaml" "$rules"
check "promtool check rules (alerts)" promtool check rules "$rules"
check "promtool test rules (alerts)" sh -c 'cd "$1" && promtool test rules alerts.test.yaml' _ "$out/rules"
check "every alert: runbook, firing and silent tests" "$py" "$repo/scripts/helm_checks.py" alert-coverage \
  "$rules" "$chart/tests/alerts.test.yaml" "$repo/docs/runbook.md"

# --- dashboard ----------------------------------------------------------------------------------
dash="$chart/files/dashboards/iceway.json"
check "dashboard JSON is generated (scripts/gen-dashboard.py)" sh -c \
  '"$1" "$2/scripts/gen-dashboard.py" --stdout | diff -u "$3" -' _ "$py" "$repo" "$dash"
check "dashboard ConfigMap carries the JSON" "$py" "$repo/scripts/helm_checks.py" dashboard-configmap "$out/all-on.yaml" "$dash"
check "dashboard expressions as recording rules" "$py" "$repo/scripts/helm_checks.py" dashboard-rules "$dash" "$out/dashboard-rules.yaml"
check "promtool check rules (dashboard expressions)" promtool check rules "$out/dashboard-rules.yaml"
check "dashboard and alerts use DESIGN §4 names only, dashboard shows all" "$py" "$repo/scripts/helm_checks.py" \
  names-contract "$dash" "$rules"

# --- Dockerfiles --------------------------------------------------------------------------------
shopt -s nullglob
dockerfiles=("$repo"/deploy/docker/Dockerfile "$repo"/deploy/docker/*.Dockerfile)
shopt -u nullglob
existing=(); for f in "${dockerfiles[@]}"; do [ -f "$f" ] && existing+=("$f"); done; dockerfiles=("${existing[@]}")
if [ "${#dockerfiles[@]}" -eq 0 ]; then
  check "Dockerfiles exist" false
fi
for f in "${dockerfiles[@]}"; do
  check "hadolint $(basename "$f")" hadolint --failure-threshold warning "$f"
done

echo
if [ "$failed" -gt 0 ]; then
  echo "failed checks:"
  printf '  %s\n' "${failed_names[@]}"
fi
echo "helm: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
