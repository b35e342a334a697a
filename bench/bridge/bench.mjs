// iceway-bridge against an independent passthrough on the same RTSP source (bench/bridge/run.sh
// runs this inside a network namespace of its own). Two numbers, alternating the two
// publishers in every round:
//   1. time from opening the viewer page (watch) to the first decoded frame in Chromium;
//   2. publisher CPU per forwarded stream with 1, 10 and 50 viewers (iceway-client viewers).
// Publishers: iceway-bridge (camA), GStreamer `rtspsrc ! rtph264depay ! rtph264pay ! webrtcbin`
// per viewer (gst_camera.py, camG), both on one fake camera (baseline, fixed GOP that does not
// restart per client); and iceway-bridge on a High-profile camera (camH), which the GStreamer
// passthrough cannot offer to Chromium.
import { spawn, execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { startDev, loadPlaywright, chromiumArgs, chromiumPath, waitForStats } from '../../e2e/tests/harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');
const release = path.join(process.env.CARGO_TARGET_DIR || path.join(root, 'target'), 'release');
const BIND = process.env.BENCH_IP || '10.250.0.1';
const ROUNDS = Number(process.env.ROUNDS || 5);
const VIEWERS = (process.env.VIEWERS || '1,10,50').split(',').map(Number);
const WINDOW_S = Number(process.env.WINDOW_S || 10);
const GOP = Number(process.env.GOP || 60);
const OUT = process.env.OUT || path.join(root, 'bench', 'results', `bridge-${new Date().toISOString().replace(/[:.]/g, '')}`);
const children = [];

function start(cmd, args, opts = {}) {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
  children.push(child);
  return child;
}

function firstLine(child, pred, ms, what) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`timeout: ${what}`)), ms);
    createInterface({ input: child.stdout }).on('line', (l) => {
      if (pred(l)) {
        clearTimeout(t);
        resolve(l);
      }
    });
    child.once('exit', (c) => reject(new Error(`${what}: exited ${c}`)));
  });
}

function cpuSeconds(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / 100; // utime + stime, in clock ticks (USER_HZ 100)
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function measureCpu(pid, seconds) {
  const a = cpuSeconds(pid);
  await sleep(seconds * 1000);
  return (cpuSeconds(pid) - a) / seconds;
}

async function fakeCamera(args) {
  const c = start('/usr/bin/python3', [path.join(root, 'bridge/tests/fake_camera.py'), '--port', '0', '--gop', String(GOP), ...args]);
  const line = await firstLine(c, (l) => l.startsWith('READY '), 20000, 'fake camera');
  return `rtsp://127.0.0.1:${line.split(' ')[1]}/cam`;
}

function token(dev, args) {
  return execFileSync(path.join(release, 'iceway'), ['--state-dir', dev.stateDir, 'token', ...args]).toString().trim();
}

/** N iceway-client viewers of `camera`; resolves once all are connected. */
async function viewers(dev, camera, n) {
  const procs = [];
  const connected = [];
  for (let i = 0; i < n; i++) {
    // One user each: signaling caps the connections of one user.
    const vt = token(dev, ['--role', 'viewer', '--sub', `bench-${i}`, '--cams', camera, '--ttl', '1h']);
    const p = start(path.join(release, 'iceway-client'), ['--signal', dev.signal_url, '--token', vt, 'viewer', '--camera', camera, '--frames', '100000000', '--timeout', '300s'], { env: { ...process.env, RUST_LOG: 'info' } });
    procs.push(p);
    p.log = [];
    p.up = false;
    connected.push(new Promise((resolve) => {
      createInterface({ input: p.stderr }).on('line', (l) => {
        p.log.push(l);
        if (l.includes('peer connection') && l.endsWith('connected')) {
          p.up = true;
          resolve();
        }
      });
    }));
  }
  const all = Promise.all(connected);
  const deadline = sleep(90000).then(() => {
    const down = procs.filter((p) => !p.up);
    throw new Error(`${camera}: ${down.length} of ${n} viewers not connected in 90 s; one of them said:\n${down[0].log.slice(-15).join('\n')}`);
  });
  await Promise.race([all, deadline]);
  return procs;
}

async function stopAll(procs) {
  await Promise.all(procs.map((p) => new Promise((resolve) => {
    if (p.exitCode !== null) return resolve();
    p.once('exit', resolve);
    p.kill('SIGTERM');
    setTimeout(() => p.kill('SIGKILL'), 3000);
  })));
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)] : NaN;
}

async function main() {
  mkdirSync(OUT, { recursive: true });
  process.env.ICEWAY_BIN = path.join(release, 'iceway');
  const dev = await startDev(['--bind', BIND, '--max-viewers-per-camera', String(Math.max(...VIEWERS) + 8)]);
  const baseline = await fakeCamera(['--profile', 'baseline', '--size', '1280x720', '--bitrate', '2000']);
  const high = await fakeCamera(['--profile', 'high', '--size', '1280x720', '--bitrate', '2000']);
  const bridge = start(path.join(release, 'iceway-bridge'), [
    '--signal-url', dev.signal_url, '--camera', `camA=${baseline}`, '--camera', `camH=${high}`,
    '--jwt-secret-file', path.join(dev.stateDir, 'jwt-secret'), '--admin', '127.0.0.1:0',
  ], { env: { ...process.env, RUST_LOG: 'error', ICEWAY_BRIDGE__MAX_VIEWERS_PER_CAMERA: String(Math.max(...VIEWERS) + 8) } });
  const ct = token(dev, ['--role', 'camera', '--sub', 'camG', '--ttl', '2h']);
  const gst = start('/usr/bin/python3', [path.join(here, 'gst_camera.py'), '--signal', dev.signal_url, '--token', ct, '--rtsp', baseline]);
  const gstLog = [];
  globalThis.gstLogTail = () => gstLog.join('').split('\n').slice(-40).join('\n');
  gst.stderr.on('data', (d) => gstLog.push(d.toString()));
  await firstLine(gst, (l) => l === 'READY', 20000, 'gst camera');
  await sleep(3000); // the bridge's RTSP sessions up and published

  const results = { ttff: { camA: [], camG: [], camH: [] }, cpu: [] };

  // 1. Time to first decoded frame in Chromium.
  const { chromium } = await loadPlaywright();
  const browser = await chromium.launch({ executablePath: chromiumPath, headless: true, args: [...chromiumArgs, `--unsafely-treat-insecure-origin-as-secure=${dev.http}`] });
  const vt = token(dev, ['--role', 'viewer', '--sub', 'ttff', '--cams', 'camA,camG,camH', '--ttl', '1h']);
  for (let r = 0; r < ROUNDS; r++) {
    const order = r % 2 === 0 ? ['camA', 'camG', 'camH'] : ['camG', 'camA', 'camH'];
    for (const cam of order) {
      const ctx = await browser.newContext();
      const page = await ctx.newPage();
      await page.goto(`${dev.http}/viewer?token=${vt}&camera=${cam}`);
      const s = await waitForStats(page, (x) => x.framesDecoded > 0 && x.ttffMs !== null, 30000, `first frame of ${cam}`);
      results.ttff[cam].push(s.ttffMs);
      await ctx.close();
    }
  }
  await browser.close();

  // 2. Publisher CPU per forwarded stream.
  const idle = { camA: await measureCpu(bridge.pid, WINDOW_S), camG: await measureCpu(gst.pid, WINDOW_S) };
  for (const n of VIEWERS) {
    const order = VIEWERS.indexOf(n) % 2 === 0 ? ['camA', 'camG'] : ['camG', 'camA'];
    for (const cam of order) {
      const pid = cam === 'camA' ? bridge.pid : gst.pid;
      const procs = await viewers(dev, cam, n);
      await sleep(3000);
      const cpu = await measureCpu(pid, WINDOW_S);
      await stopAll(procs);
      const perStream = (cpu - idle[cam]) / n;
      results.cpu.push({ publisher: cam === 'camA' ? 'iceway-bridge' : 'gstreamer', viewers: n, cpu, idle: idle[cam], perStream });
      await sleep(3000); // the viewers closed their sessions; the publisher frees their calls
    }
  }

  const lines = [];
  lines.push(`Time from opening the viewer page to the first decoded frame (Chromium, ${ROUNDS} rounds, GOP ${GOP} frames at 30 fps), median and all runs:`);
  lines.push('');
  lines.push('| publisher | median ms | runs (ms) |');
  lines.push('|---|---|---|');
  const row = (name, xs) => lines.push(`| ${name} | ${median(xs)} | ${xs.join(', ')} |`);
  row('iceway-bridge, baseline camera', results.ttff.camA);
  row('GStreamer passthrough, same camera', results.ttff.camG);
  row('iceway-bridge, High-profile camera', results.ttff.camH);
  lines.push('');
  lines.push(`ratio (GStreamer / bridge, medians): ${(median(results.ttff.camG) / median(results.ttff.camA)).toFixed(2)}`);
  lines.push('');
  lines.push(`Publisher CPU (cores) over ${WINDOW_S} s with N viewers, 1280x720 2 Mbit/s H.264, minus its idle CPU, per viewer:`);
  lines.push('');
  lines.push('| viewers | bridge CPU | bridge per stream | GStreamer CPU | GStreamer per stream | GStreamer / bridge per stream |');
  lines.push('|---|---|---|---|---|---|');
  for (const n of VIEWERS) {
    const b = results.cpu.find((x) => x.viewers === n && x.publisher === 'iceway-bridge');
    const g = results.cpu.find((x) => x.viewers === n && x.publisher === 'gstreamer');
    lines.push(`| ${n} | ${b.cpu.toFixed(3)} | ${(b.perStream * 1000).toFixed(1)} m | ${g.cpu.toFixed(3)} | ${(g.perStream * 1000).toFixed(1)} m | ${(g.perStream / b.perStream).toFixed(2)} |`);
  }
  lines.push('');
  lines.push(`idle: bridge ${idle.camA.toFixed(3)} cores (two RTSP cameras, no viewer), GStreamer ${idle.camG.toFixed(3)} cores (signaling only)`);
  const text = lines.join('\n');
  console.log(text);
  writeFileSync(path.join(OUT, 'bridge.md'), `${text}\n`);
  writeFileSync(path.join(OUT, 'bridge.json'), JSON.stringify(results, null, 2));
  await dev.stop();
}

main().then(async () => {
  await stopAll(children);
  process.exit(0);
}, async (e) => {
  console.error(e);
  if (globalThis.gstLogTail) console.error(globalThis.gstLogTail());
  await stopAll(children);
  process.exit(1);
});
