// 4d: a Chromium camera page and the Rust viewer (iceway-client) through signal-server and
// iceway-turn, relay only. The Rust viewer depacketizes the browser's video and reports the
// selected pair.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { startDev, launchBrowser, openPage, waitForStats, withRelay, clientBin } from './harness.mjs';

let dev;
let browser;

before(async () => {
  dev = await startDev();
  browser = await launchBrowser();
});

after(async () => {
  if (browser) await browser.close();
  if (dev) await dev.stop();
});

test('rust viewer receives the browser camera through the TURN relay', async () => {
  if (!existsSync(clientBin)) throw new Error(`missing ${clientBin} (cargo build -p iceway-client)`);
  const camera = await openPage(browser, dev.http, withRelay(dev.camera_url));
  await waitForStats(camera, (s) => s.signal === 'open', 20000, 'the camera to be online');
  const r = await new Promise((resolve, reject) => {
    const child = spawn(clientBin, [
      '--signal', dev.signal_url, '--token', dev.viewer_token, '--relay-only',
      'viewer', '--camera', dev.camera_id, '--frames', '60', '--timeout', '45s',
    ], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: 'warn' } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { stderr += d; });
    const timer = setTimeout(() => child.kill('SIGKILL'), 90000);
    child.on('error', reject);
    child.on('exit', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }); });
  });
  assert.equal(r.code, 0, r.stderr);
  const report = JSON.parse(r.stdout.trim().split('\n').pop());
  console.log(`time to first frame (browser camera -> rust viewer, relay): ${report.time_to_first_frame_ms} ms; ${report.fps} fps, ${report.bitrate_kbps} kbit/s`);
  assert.ok(report.frames >= 60);
  assert.equal(report.selected_pair.local, 'relay');
  const cam = await waitForStats(camera, (s) => s.viewers.length === 0 || s.viewers[0].framesSent > 0, 10000, 'camera stats');
  assert.ok(cam);
  await camera.context().close();
});

test('browser viewer shows the rust camera through the TURN relay', async () => {
  if (!existsSync(clientBin)) throw new Error(`missing ${clientBin} (cargo build -p iceway-client)`);
  const camera = spawn(clientBin, [
    '--signal', dev.signal_url, '--token', dev.camera_token, '--relay-only', 'camera', '--duration', '90s',
  ], { stdio: 'ignore', env: { ...process.env, RUST_LOG: 'warn' } });
  try {
    const viewer = await openPage(browser, dev.http, withRelay(dev.viewer_url));
    const live = await waitForStats(viewer, (s) => s.framesDecoded > 30, 45000, 'the rust camera video');
    console.log(`time to first frame (rust camera -> browser viewer, relay): ${live.ttffMs} ms`);
    assert.equal(live.path, 'relay');
    await viewer.context().close();
  } finally {
    camera.kill('SIGTERM');
  }
});
