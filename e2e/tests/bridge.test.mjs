// An IP camera in the browser (issue 13): GStreamer's RTSP server (bridge/tests/fake_camera.py,
// High profile, a GOP that runs on whoever connects) behind iceway-bridge, watched by the viewer
// page in Chromium through iceway-signal and iceway-turn, relay only. The viewer page opens
// before the camera exists and shows video when it comes up; the camera goes away (the page
// says offline) and comes back (video again), with no reload and no sleep in the page.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { startDev, launchBrowser, openPage, waitForStats, withRelay, targetDir, repoRoot } from './harness.mjs';

const bridgeBin = process.env.ICEWAY_BRIDGE_BIN || path.join(targetDir, 'debug', 'iceway-bridge');
const fakeCamera = path.join(repoRoot, 'bridge', 'tests', 'fake_camera.py');

let dev;
let browser;
let bridge;
let camera;

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** The fake camera on `port`; resolves once it listens. */
function startCamera(port, args = []) {
  return new Promise((resolve, reject) => {
    const child = spawn('/usr/bin/python3', [fakeCamera, '--port', String(port), ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error('the fake camera did not start within 20 s'));
    }, 20000);
    createInterface({ input: child.stdout }).on('line', (line) => {
      if (line.startsWith('READY ')) {
        clearTimeout(timer);
        resolve(child);
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the fake camera exited (${code})`));
    });
  });
}

async function stopChild(child) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(t);
}

before(async () => {
  if (!existsSync(bridgeBin)) throw new Error(`missing ${bridgeBin} (cargo build -p iceway-bridge)`);
  dev = await startDev();
  browser = await launchBrowser();
});

after(async () => {
  await stopChild(camera);
  await stopChild(bridge);
  if (browser) await browser.close();
  if (dev) await dev.stop();
});

test('a bridged RTSP camera plays in the viewer page: before it exists, while it runs, after it comes back', async () => {
  const port = await freePort();
  bridge = spawn(bridgeBin, [
    '--signal-url', dev.signal_url,
    '--camera', `${dev.camera_id}=rtsp://127.0.0.1:${port}/cam`,
    '--jwt-secret-file', path.join(dev.stateDir, 'jwt-secret'),
    '--relay-only',
    '--admin', '127.0.0.1:0',
  ], {
    stdio: ['ignore', 'inherit', 'inherit'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'error', ICEWAY_BRIDGE__FRAME_TIMEOUT: '2s', ICEWAY_BRIDGE__RECONNECT_MAX: '1s' },
  });

  // The seed's problem: the page opens before the camera's stream exists.
  const viewer = await openPage(browser, dev.http, withRelay(dev.viewer_url));
  await waitForStats(viewer, (s) => s.cameraState === 'offline', 20000, 'the page to say the camera is offline');
  camera = await startCamera(port, ['--profile', 'high', '--gop', '30']);
  const live = await waitForStats(viewer, (s) => s.framesDecoded > 30 && s.connectionState === 'connected', 45000, 'video once the camera came up');
  assert.equal(live.path, 'relay');
  console.log(`bridged camera: first frame ${live.ttffMs} ms after the page opened (the camera started later)`);

  // The camera goes away: the page says so, without a reload.
  await stopChild(camera);
  await waitForStats(viewer, (s) => s.cameraState === 'offline', 30000, 'camera-offline after the RTSP server stopped');

  // And comes back: video again on the same page.
  camera = await startCamera(port, ['--profile', 'high', '--gop', '30']);
  const again = await waitForStats(viewer, (s) => s.cameraState === 'online' && s.connectionState === 'connected' && s.framesDecoded > 30, 60000, 'video after the camera came back');
  assert.equal(again.path, 'relay');
  assert.equal(again.fatal, false);
  await viewer.context().close();
});
