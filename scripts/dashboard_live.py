#!/usr/bin/env python3
"""Live check of the Grafana dashboard against the real services (driven by
scripts/test-dashboard-live.sh, which finds the tools and builds the binaries).

1. Renders the Helm chart with helm/iceway/ci/local-live-values.yaml and starts iceway-turn,
   iceway-signal and iceway-auth on loopback with the args and TOML files the chart renders (paths
   and ports rewritten to a temp dir and free loopback ports), so the chart's flags are proven
   against the real binaries too.
2. Generates a short load: the credential API with a good and a bad app JWT, turnutils_uclient
   through TURN to a turnutils_peer echo peer (good credentials, a wrong password, over the user
   quota, to a denied peer), turnutils_stunclient Bindings, and a camera and a viewer exchanging
   offer/answer/candidates over the signaling WebSocket (plus a bad token and a bad frame).
3. --names-only: compares the metric names the dashboard uses with each live /metrics.
   Otherwise also: starts Prometheus on loopback scraping the admin ports (1 s) and queries every
   dashboard expression until it returns data (a number, not NaN) or a deadline passes.

Services whose binary is missing or still a stub are reported and their expressions skipped;
without --allow-missing that is a failure. Every process is stopped by PID on exit.
Ends with a "N passed, N failed" line.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import pathlib
import random
import re
import secrets as pysecrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import yaml

REPO = pathlib.Path(__file__).resolve().parent.parent
CHART = REPO / "helm/iceway"
DASHBOARD = CHART / "files/dashboards/iceway.json"
RULES = CHART / "files/rules/alerts.yaml"
LIVE_VALUES = CHART / "ci/local-live-values.yaml"
SERVICES = ("turn", "signal", "auth")
NAMESPACE = "iceway-live"
# Which service exports a metric, by prefix; process_* and iceway_build_info come from all.
OWNER = {"iceway_turn_": "turn", "iceway_stun_": "turn", "iceway_signal_": "signal", "iceway_auth_": "auth"}

sys.path.insert(0, str(REPO / "scripts"))
sys.dont_write_bytecode = True  # no __pycache__ in the work tree
import helm_checks  # noqa: E402

procs = []  # (name, Popen) of everything started, stopped in reverse order
results = {"passed": 0, "failed": 0, "skipped": 0}


def log(msg):
    print(msg, flush=True)


def outcome(ok, name, detail=""):
    if ok is None:
        results["skipped"] += 1
        log(f"skip {name}{': ' + detail if detail else ''}")
    elif ok:
        results["passed"] += 1
        log(f"ok   {name}{': ' + detail if detail else ''}")
    else:
        results["failed"] += 1
        log(f"FAIL {name}{': ' + detail if detail else ''}")


def free_port(kind=socket.SOCK_STREAM):
    """A port free for both TCP and UDP on 127.0.0.1 (TURN listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        other = socket.SOCK_DGRAM if kind == socket.SOCK_STREAM else socket.SOCK_STREAM
        try:
            with socket.socket(socket.AF_INET, other) as s:
                s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port")


def start(name, argv, logdir, env=None):
    out = open(logdir / f"{name}.log", "wb")
    p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    procs.append((name, p))
    return p


def stop_all():
    for name, p in reversed(procs):
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
            except ProcessLookupError:
                pass
    procs.clear()


def wait_for(desc, fn, timeout, proc=None):
    """Polls fn() until truthy, the process dies or the timeout passes (bounded: 0.2 s steps)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{desc}: process exited with {proc.returncode}")
        try:
            v = fn()
            if v:
                return v
        except (OSError, urllib.error.URLError, ValueError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{desc}: not within {timeout}s")


def http(url, headers=None, timeout=5):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


# --- the chart's args, rewritten for loopback -------------------------------------------------


def render_chart(helm, tmp, sets):
    args = [helm, "template", "live", str(CHART), "-n", NAMESPACE, "-f", str(LIVE_VALUES)]
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    # One ConfigMap per component, each holding its <component>.toml.
    for cm in (d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-config")):
        for key, text in cm["data"].items():
            (tmp / "config" / key).write_text(text)
    containers = {}
    for d in docs:
        if d["kind"] in ("Deployment", "DaemonSet"):
            for c in d["spec"]["template"]["spec"]["containers"]:
                containers[c["name"]] = c
    return containers


def loopback_args(container, tmp, env):
    """The container's args with file paths under tmp, 0.0.0.0:PORT as 127.0.0.1:free and $(VAR)
    from env. Returns (args, {container port: loopback port})."""
    ports = {}
    args = []
    for a in container["args"]:
        a = a.replace("/etc/iceway/config/", f"{tmp}/config/").replace("/etc/iceway/secrets/", f"{tmp}/secrets/")
        a = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a)

        def port(m):
            orig = int(m.group(1))
            if orig not in ports:
                ports[orig] = free_port()
            return f"127.0.0.1:{ports[orig]}"

        a = re.sub(r"0\.0\.0\.0:(\d+)", port, a)
        args.append(a)
    return args, ports


def is_real_binary(path, expect="--admin"):
    """A service that is still `fn main() {}` prints no --help."""
    if not path.exists():
        return False, "no binary"
    try:
        r = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return False, "--help hangs"
    if expect not in r.stdout:
        return False, f"stub (no {expect} in --help)"
    return True, ""


# --- load -----------------------------------------------------------------------------------------


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def app_jwt(key, sub, role, cams=None, ttl=600):
    now = int(time.time())
    claims = {"sub": sub, "role": role, "iat": now, "exp": now + ttl, "aud": "iceway"}
    if cams is not None:
        claims["cams"] = cams
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "default"}).encode())
    body = b64url(json.dumps(claims).encode())
    sig = hmac.new(key.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64url(sig)}"


def load_auth(base, key):
    good = {"Authorization": f"Bearer {app_jwt(key, 'viewer-1', 'viewer', ['cam-1'])}"}
    codes = []
    for _ in range(5):
        codes.append(http(f"{base}/v1/ice-servers", good)[0])
    codes.append(http(f"{base}/v1/turn-credentials?service=turn&username=viewer-1", good)[0])
    codes.append(http(f"{base}/v1/ice-servers", {"Authorization": "Bearer not-a-jwt"})[0])
    codes.append(http(f"{base}/v1/ice-servers")[0])
    return codes


def turn_credentials(base, key, user):
    """REST credentials as an app gets them from iceway-auth."""
    good = {"Authorization": f"Bearer {app_jwt(key, user, 'viewer', ['cam-1'])}"}
    status, body = http(f"{base}/v1/turn-credentials?service=turn&username={user}", good)
    if status != 200:
        raise RuntimeError(f"turn-credentials answered {status}: {body[:200]!r}")
    j = json.loads(body)
    return j["username"], j["password"]


def load_turn(turn_port, creds, tmp, loadtest, secret_file):
    """turnutils runs, each bounded in time and with its own user (the per-user quota counts
    allocations that a run leaves behind). Returns {what: exit code}."""
    peer_port = free_port(socket.SOCK_DGRAM)
    if not any(name == "turnutils_peer" for name, _ in procs):
        start("turnutils_peer", ["turnutils_peer", "-L", "127.0.0.1", "-p", str(peer_port)], tmp / "logs")
    else:
        peer_port = load_turn.peer_port
    load_turn.peer_port = peer_port
    tag = pysecrets.token_hex(3)
    users = {what: creds(f"load-{what}-{tag}") for what in ("relay", "relay-send", "bad-password", "over-quota", "denied-peer")}

    def cred(what):
        return ["-u", users[what][0], "-w", users[what][1]]

    runs = {
        # Relayed traffic both ways through channels, two allocations.
        "relay": [*cred("relay"), "-e", "127.0.0.1", "-r", str(peer_port), "-n", "50", "-m", "2", "-l", "120", "-z", "5", "-c"],
        # Send indications.
        "relay-send": [*cred("relay-send"), "-e", "127.0.0.1", "-r", str(peer_port), "-n", "20", "-m", "1", "-s", "-c"],
        # Wrong password: 401 with the integrity check failing.
        "bad-password": ["-u", users["bad-password"][0], "-w", "wrong-password", "-e", "127.0.0.1", "-r", str(peer_port), "-n", "1", "-m", "1", "-c"],
        # More allocations at once than the per-user quota (local-live-values: user_quota 4).
        "over-quota": [*cred("over-quota"), "-e", "127.0.0.1", "-r", str(peer_port), "-n", "5", "-m", "8", "-s", "-c"],
        # A peer in a denied range (RFC 1918 is denied by default).
        "denied-peer": [*cred("denied-peer"), "-e", "10.255.255.1", "-r", "9", "-n", "1", "-m", "1", "-s", "-c"],
    }
    codes = {}
    for what, extra in runs.items():
        argv = ["turnutils_uclient", "-p", str(turn_port), *extra, "127.0.0.1"]
        with open(tmp / "logs" / f"uclient-{what}.log", "wb") as out:
            try:
                codes[what] = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=30).returncode
            except subprocess.TimeoutExpired:
                codes[what] = "timeout"
    if loadtest:
        # The project's own load tool closes its allocations (Refresh lifetime 0), so allocation
        # lifetimes get observed; turnutils_uclient leaves them to expire.
        argv = [str(loadtest), "turn", "--server", f"127.0.0.1:{turn_port}", "-n", "4", "--secret-file", str(secret_file),
                "--duration", "2s", "--rate", "50"]
        with open(tmp / "logs" / "loadtest-turn.log", "wb") as out:
            try:
                codes["iceway-loadtest"] = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=60).returncode
            except subprocess.TimeoutExpired:
                codes["iceway-loadtest"] = "timeout"
    codes["stun"] = stun_bindings(turn_port, tmp, "turn")
    return codes


def stun_bindings(port, tmp, what):
    code = None
    with open(tmp / "logs" / f"stunclient-{what}.log", "ab") as out:
        for _ in range(5):
            try:
                code = subprocess.run(
                    ["turnutils_stunclient", "-p", str(port), "127.0.0.1"], stdout=out, stderr=subprocess.STDOUT, timeout=15
                ).returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
    return code


async def _signal_session(url, key):
    import asyncio

    import websockets

    async def recv_until(ws, types, timeout=10):
        async with asyncio.timeout(timeout):
            while True:
                frame = json.loads(await ws.recv())
                if frame.get("type") in types:
                    return frame

    cam_tok = app_jwt(key, "cam-1", "camera")
    view_tok = app_jwt(key, "viewer-1", "viewer", ["cam-1"])
    seen = []
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {cam_tok}"}) as cam:
        seen.append((await recv_until(cam, {"welcome"}))["type"])
        await cam.send(json.dumps({"type": "publish"}))
        # The viewer authenticates the browser way, with a first frame.
        async with websockets.connect(url) as viewer:
            await viewer.send(json.dumps({"type": "auth", "token": view_tok}))
            seen.append((await recv_until(viewer, {"welcome"}))["type"])
            await viewer.send(json.dumps({"type": "watch", "camera": "cam-1"}))
            joined = await recv_until(cam, {"viewer-joined"})
            viewer_id = joined["viewer"]
            for _ in range(3):
                await cam.send(json.dumps({"type": "offer", "to": viewer_id, "sdp": "v=0 offer"}))
                offer = await recv_until(viewer, {"offer"})
                await viewer.send(json.dumps({"type": "answer", "to": offer["from"], "sdp": "v=0 answer"}))
                await recv_until(cam, {"answer"})
                await viewer.send(
                    json.dumps({"type": "candidate", "to": offer["from"], "candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0", "sdpMLineIndex": 0})
                )
                await recv_until(cam, {"candidate"})
            await viewer.send(json.dumps({"type": "ping"}))
            seen.append((await recv_until(viewer, {"pong"}))["type"])
            # A malformed frame gets an error frame, and the connection lives on.
            await viewer.send("{not json")
            seen.append((await recv_until(viewer, {"error"}))["type"])
            await viewer.send(json.dumps({"type": "offer", "to": "nobody-here", "sdp": "x"}))
            seen.append((await recv_until(viewer, {"error"}))["type"])
    # A bad token is refused (close 4001).
    try:
        async with websockets.connect(url, additional_headers={"Authorization": "Bearer bad"}) as bad:
            await asyncio.wait_for(bad.recv(), 10)
    except Exception as e:  # the refusal is the expected outcome, whatever its form
        seen.append(f"refused:{type(e).__name__}")
    return seen


def load_signal(port, key):
    import asyncio

    return asyncio.run(_signal_session(f"ws://127.0.0.1:{port}/v1/ws", key))


# --- checks ---------------------------------------------------------------------------------------


def parse_metric_names(text):
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            name = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0)
            for suffix in ("_bucket", "_sum", "_count"):
                if name.endswith(suffix) and name[: -len(suffix)] in helm_checks.HISTOGRAMS:
                    name = name[: -len(suffix)]
            names.add(name)
    return names


def owner(metric):
    for prefix, svc in OWNER.items():
        if metric.startswith(prefix):
            return svc
    return None  # every service


def prom_query(base, expr):
    status, body = http(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    j = json.loads(body)
    if j.get("status") != "success":
        raise ValueError(j.get("error", f"HTTP {status}"))
    return j["data"]["result"]


def has_number(result):
    """A result counts as data when one sample is a real number (NaN means 0/0: no events)."""
    for r in result:
        v = r.get("value", [0, "NaN"])[1]
        if v not in ("NaN", "+Inf", "-Inf"):
            return True
    return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", default=str(REPO / "target/debug"))
    ap.add_argument("--names-only", action="store_true")
    ap.add_argument("--allow-missing", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs) after the run")
    ap.add_argument("--query-timeout", type=float, default=60)
    opts = ap.parse_args()

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="iceway-live."))
    for d in ("config", "secrets", "logs", "prom"):
        (tmp / d).mkdir()

    def on_signal(signum, _frame):
        stop_all()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return run(opts, tmp)
    finally:
        stop_all()
        if opts.keep or results["failed"]:
            log(f"logs kept in {tmp}/logs")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def run(opts, tmp):
    helm = shutil.which("helm")
    if not helm:
        log("FAIL helm not found (scripts/install-helm-tools.sh)")
        return 1
    bin_dir = pathlib.Path(opts.bin_dir)

    jwt_key = pysecrets.token_urlsafe(36)
    turn_secret = pysecrets.token_urlsafe(36)
    (tmp / "secrets/jwt-secret").write_text(jwt_key + "\n")
    (tmp / "secrets/turn-secrets").write_text(turn_secret + "\n")

    redis_url = None
    if shutil.which("redis-server"):
        rport = free_port()
        p = start("redis", ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], tmp / "logs")
        wait_for("redis", lambda: socket.create_connection(("127.0.0.1", rport), timeout=1).close() or True, 15, p)
        redis_url = f"redis://127.0.0.1:{rport}/0"

    relay_lo = random.randrange(20000, 30000, 100)
    sets = [f"turn.relayRange.min={relay_lo}", f"turn.relayRange.max={relay_lo + 99}"]
    if redis_url:
        sets.append(f"signal.redis.url={redis_url}")
    containers = render_chart(helm, tmp, sets)
    env = dict(os.environ, ICEWAY_EXTERNAL_IP="127.0.0.1")
    if redis_url:
        env["ICEWAY_REDIS_URL"] = redis_url

    running = {}  # service -> {"admin": port, "ports": {...}}
    # stun is iceway-turn --stun-only with the chart's stun args: started when the values enable it.
    for svc in [*SERVICES, *(["stun"] if "stun" in containers else [])]:
        binary = bin_dir / f"iceway-{'turn' if svc == 'stun' else svc}"
        real, why = is_real_binary(binary)
        if not real:
            outcome(None if opts.allow_missing else False, f"start iceway-{svc}", f"{why} at {binary}")
            continue
        args, ports = loopback_args(containers[svc], tmp, env)
        admin = next(int(a.rsplit(":", 1)[1]) for a in args if a.startswith("--admin="))
        p = start(svc, [str(binary), *args], tmp / "logs", env)
        try:
            wait_for(f"iceway-{svc} /readyz", lambda: http(f"http://127.0.0.1:{admin}/readyz")[0] == 200, 30, p)
            running[svc] = {"admin": admin, "ports": ports}
            outcome(True, f"start iceway-{svc} with the chart's args", " ".join(args))
        except RuntimeError as e:
            outcome(False, f"start iceway-{svc} with the chart's args", f"{e}; log: {tmp}/logs/{svc}.log")
            tail = (tmp / "logs" / f"{svc}.log").read_text(errors="replace")[-1500:]
            log("     " + tail.replace("\n", "\n     "))

    loadtest = bin_dir / "iceway-loadtest"
    loadtest = loadtest if is_real_binary(loadtest, "turn")[0] else None
    prom = None
    if not opts.names_only and running:
        prom = start_prometheus(tmp, running)
        if prom is None:
            return finish()

    # --- before any traffic: every metric the dashboard and the alerts name is already on its
    # service's /metrics (labelled counters initialised at start), so rate() and absent()
    # have series from the first scrape.
    check_names(running, dashboard_names() | alert_names(), "before any traffic", opts, tmp)

    # --- load. With Prometheus, twice: a counter child that appears between two scrapes shows no
    # increase (its first sample already holds the value), so the first round creates every
    # series, Prometheus scrapes them once, and the second round is what the rates see.
    rounds = 1 if prom is None else 2
    for rnd in range(1, rounds + 1):
        generate_load(running, jwt_key, turn_secret, tmp, report=(rnd == rounds), loadtest=loadtest)
        if rnd < rounds:
            after = time.time()
            try:
                wait_for(
                    "a scrape of every target after the first load round",
                    lambda: len([r for r in prom_query(prom, "timestamp(iceway_build_info)") if float(r["value"][1]) > after + 0.1])
                    >= len(running),
                    30,
                )
            except RuntimeError as e:
                outcome(False, "prometheus scrapes after the first load round", str(e))

    # --- names on /metrics after the load
    check_names(running, dashboard_names(), "after the load", opts, tmp)

    # --- every dashboard expression returns data
    if prom is not None:
        check_expressions(prom, running, opts)
    return finish()


def dashboard_names():
    names = set()
    for _, _, expr in helm_checks.dashboard_exprs(DASHBOARD)[1]:
        names |= helm_checks.metric_names(expr)
    return names


def alert_names():
    """Iceway metrics the alert rules query (the rules file is a Helm template: read as text)."""
    names = set()
    for name in re.findall(r"\b(iceway_[a-z0-9_]+)", RULES.read_text()):
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name[: -len(suffix)] in helm_checks.HISTOGRAMS:
                name = name[: -len(suffix)]
        names.add(name)
    return names


def check_names(running, names, when, opts, tmp):
    exported = {}
    for svc, info in running.items():
        status, body = http(f"http://127.0.0.1:{info['admin']}/metrics")
        exported[svc] = parse_metric_names(body.decode(errors="replace")) if status == 200 else set()
        (tmp / "logs" / f"{svc}.{when.replace(' ', '-')}.metrics").write_bytes(body)
    for name in sorted(names):
        svc = owner(name)
        wanted = [svc] if svc else list(SERVICES)
        missing_svc = [s for s in wanted if s not in running]
        present = [s for s in wanted if s in running and name in exported[s]]
        absent = [s for s in wanted if s in running and name not in exported[s]]
        if absent:
            outcome(False, f"/metrics has {name} {when}", f"missing on {', '.join(absent)}")
        elif missing_svc:
            outcome(None if opts.allow_missing else False, f"/metrics has {name} {when}", f"iceway-{', iceway-'.join(missing_svc)} not running")
        else:
            outcome(True, f"/metrics has {name} {when}", ", ".join(present))


def generate_load(running, jwt_key, turn_secret, tmp, report, loadtest):
    say = outcome if report else quiet
    auth_base = f"http://127.0.0.1:{running['auth']['ports'][8081]}" if "auth" in running else None
    if auth_base:
        codes = load_auth(auth_base, jwt_key)
        say(codes[:6] == [200] * 6 and codes[6:] == [401, 401], "load: credential API", f"HTTP codes {codes}")
    if "turn" in running:
        if not shutil.which("turnutils_uclient"):
            say(False, "load: TURN", "turnutils_uclient missing (apt-get install coturn)")
        else:
            def creds(user):
                if auth_base:
                    return turn_credentials(auth_base, jwt_key, user)
                name = f"{int(time.time()) + 600}:{user}"
                return name, base64.b64encode(hmac.new(turn_secret.encode(), name.encode(), hashlib.sha1).digest()).decode()

            codes = load_turn(running["turn"]["ports"][3478], creds, tmp, loadtest, tmp / "secrets/turn-secrets")
            # Runs that must fail (bad password, over quota, denied peer) are there for the metrics;
            # the relay through Send indications (and the project's load tool, if built) must work.
            ok = codes.get("relay-send") == 0 and codes.get("iceway-loadtest", 0) == 0
            say(ok, "load: TURN relay via turnutils_uclient", "exit codes " + json.dumps(codes))
            if codes.get("relay") != 0:
                say(None, "load: TURN relay over channels (turnutils_uclient)", f"exit {codes.get('relay')}, see {tmp}/logs/uclient-relay.log")
    if "stun" in running and shutil.which("turnutils_stunclient"):
        code = stun_bindings(running["stun"]["ports"][3478], tmp, "stun-only")
        say(code == 0, "load: STUN-only Bindings via turnutils_stunclient", f"exit {code}")
    if "signal" in running:
        try:
            seen = load_signal(running["signal"]["ports"][8080], jwt_key)
            say(True, "load: signaling camera <-> viewer", " ".join(seen))
        except Exception as e:  # report the protocol step that failed, keep checking the rest
            say(False, "load: signaling camera <-> viewer", f"{type(e).__name__}: {e}")


def quiet(ok, name, detail=""):
    """Outcome of a warm-up round: only failures are worth a line."""
    if ok is False:
        log(f"warm-up: {name} failed: {detail}")


def start_prometheus(tmp, running):
    if not shutil.which("prometheus"):
        outcome(False, "start prometheus", "prometheus missing (apt-get install prometheus)")
        return None
    port = free_port()
    cfg = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": f"iceway-{svc}",
                "static_configs": [
                    {"targets": [f"127.0.0.1:{info['admin']}"], "labels": {"namespace": NAMESPACE, "pod": f"live-iceway-{svc}-0"}}
                ],
            }
            for svc, info in running.items()
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    p = start(
        "prometheus",
        [
            "prometheus",
            f"--config.file={tmp}/prometheus.yml",
            f"--storage.tsdb.path={tmp}/prom",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ],
        tmp / "logs",
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for("prometheus ready", lambda: http(f"{base}/-/ready")[0] == 200, 60, p)
        want = len(running)
        wait_for(
            "every target scraped",
            lambda: len([r for r in prom_query(base, 'up{job=~"iceway-.+"} == 1')]) == want,
            30,
            p,
        )
        outcome(True, "prometheus scrapes every running service", base)
    except RuntimeError as e:
        outcome(False, "prometheus scrapes every running service", str(e))
        return None
    return base


def check_expressions(base, running, opts):
    _, exprs = helm_checks.dashboard_exprs(DASHBOARD)
    # The load ran within the last minute; a 1m window holds it at a 1 s scrape interval.
    subst = dict(helm_checks.GRAFANA_VARS, **{"$__rate_interval": "1m"})
    pending = {}
    for title, ref, expr in exprs:
        q = expr
        for k, v in subst.items():
            q = q.replace(k, v)
        owners = {owner(n) for n in helm_checks.metric_names(expr)} - {None}
        missing = sorted(s for s in owners if s not in running)
        if missing:
            outcome(None if opts.allow_missing else False, f"query [{title}] {ref}", f"needs iceway-{', iceway-'.join(missing)}")
            continue
        pending[(title, ref)] = q
    # Poll until every expression has data or the deadline passes; no fixed sleeps.
    deadline = time.monotonic() + opts.query_timeout
    last = {}
    while pending and time.monotonic() < deadline:
        for key, q in list(pending.items()):
            try:
                res = prom_query(base, q)
            except ValueError as e:
                outcome(False, f"query [{key[0]}] {key[1]}", f"Prometheus refused it: {e}")
                del pending[key]
                continue
            last[key] = res
            if has_number(res):
                outcome(True, f"query [{key[0]}] {key[1]}", f"{len(res)} series")
                del pending[key]
        if pending:
            time.sleep(1)
    for key, q in pending.items():
        outcome(False, f"query [{key[0]}] {key[1]}", f"no data within {opts.query_timeout:.0f}s: {q} -> {json.dumps(last.get(key))[:300]}")


def finish():
    log("")
    log(f"dashboard-live: {results['passed']} passed, {results['failed']} failed, {results['skipped']} skipped")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
