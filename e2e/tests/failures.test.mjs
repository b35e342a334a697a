// 4c: what users hit when things go wrong, seen in the pages and in the Rust CLI.
// - a viewer whose token does not list the camera is told it is not theirs (forbidden);
// - a viewer that opens before the camera waits, then connects when the camera comes online;
// - expired TURN credentials: no media, and both the page and the CLI say why.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import {
  startDev, launchBrowser, openPage, stats, waitForStats, withRelay, icewayBin, clientBin,
} from './harness.mjs';

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

function mintToken(args) {
  return execFileSync(icewayBin, ['--state-dir', dev.stateDir, 'token', ...args]).toString().trim();
}

/** A TURN REST credential (DESIGN §2) signed with the dev secret that expired an hour ago. */
function expiredTurnServers() {
  const secret = readFileSync(path.join(dev.stateDir, 'turn-secret'), 'utf8').trim();
  const username = `${Math.floor(Date.now() / 1000) - 3600}:expired-user`;
  const credential = createHmac('sha1', secret).update(username).digest('base64');
  const urls = dev.turn_urls.filter((u) => u.startsWith('turn:'));
  return [{ urls, username, credential }];
}

test('viewer without the camera in its token is told the camera is not theirs', async () => {
  const token = mintToken(['--role', 'viewer', '--sub', 'mallory', '--cams', 'some-other-cam', '--ttl', '10m']);
  const viewer = await openPage(browser, dev.http, `${dev.http}/viewer?token=${token}&camera=${dev.camera_id}&relay=1`);
  const s = await waitForStats(viewer, (x) => x.fatal, 20000, 'the forbidden message');
  assert.match(s.message, /not yours/i);
  assert.equal(s.framesDecoded, 0);
  await viewer.context().close();
});

test('rust viewer without the camera in its token exits with "forbidden"', async () => {
  if (!existsSync(clientBin)) throw new Error(`missing ${clientBin} (cargo build -p iceway-client)`);
  const token = mintToken(['--role', 'viewer', '--sub', 'mallory', '--cams', 'some-other-cam', '--ttl', '10m']);
  const r = await run(clientBin, ['--signal', dev.signal_url, '--token', token, 'viewer', '--camera', dev.camera_id, '--frames', '1', '--timeout', '20s']);
  assert.equal(r.code, 3, r.stderr);
  assert.match(r.stderr, /forbidden/i);
});

test('viewer opened before the camera waits, then connects when the camera comes online', async () => {
  const viewer = await openPage(browser, dev.http, withRelay(dev.viewer_url));
  const waiting = await waitForStats(viewer, (s) => s.cameraState === 'offline', 20000, 'camera-offline');
  assert.match(waiting.overlay, /offline/i);
  const camera = await openPage(browser, dev.http, withRelay(dev.camera_url));
  const live = await waitForStats(viewer, (s) => s.framesDecoded > 10, 45000, 'video after the camera came online');
  assert.equal(live.path, 'relay');
  console.log(`time to first frame (viewer waiting for camera, relay): ${live.ttffMs} ms since the viewer page opened`);
  await camera.context().close();
  // The camera page closing makes the viewer wait again, without reloading.
  await waitForStats(viewer, (s) => s.cameraState === 'offline' || s.connectionState !== 'connected', 45000, 'the viewer to notice the camera left');
  await viewer.context().close();
});

test('expired TURN credentials: no video, and the viewer page says why', async () => {
  const camera = await openPage(browser, dev.http, withRelay(dev.camera_url));
  await waitForStats(camera, (s) => s.signal === 'open', 20000, 'the camera to be online');
  const context = await browser.newContext();
  await context.grantPermissions(['camera', 'microphone'], { origin: dev.http });
  const viewer = await context.newPage();
  const expired = expiredTurnServers();
  // Hand the page the expired credential in place of the welcome's fresh one.
  await viewer.routeWebSocket(/\/v1\/ws/, (ws) => {
    const server = ws.connectToServer();
    server.onMessage((message) => {
      let frame;
      try {
        frame = JSON.parse(message);
      } catch {
        ws.send(message);
        return;
      }
      if (frame.type === 'welcome') frame.iceServers = expired;
      ws.send(JSON.stringify(frame));
    });
  });
  // The SDK refetches credentials it can see have expired: make the credential API hand out
  // the same dead ones (as after a TURN secret rotated out of order).
  await viewer.route(/\/v1\/ice-servers/, (route) => route.fulfill({
    status: 200, contentType: 'application/json', body: JSON.stringify({ iceServers: expired, ttl: 3600 }),
  }));
  await viewer.goto(withRelay(dev.viewer_url));
  const s = await waitForStats(viewer, (x) => x.iceError, 30000, 'the TURN credential error');
  assert.match(s.message, /expired|refused/i);
  assert.equal(s.framesDecoded, 0);
  assert.notEqual(s.connectionState, 'connected');
  await context.close();
  await camera.context().close();
});

test('expired TURN credentials in welcome: the page fetches fresh ones from the credential API and plays', async () => {
  const camera = await openPage(browser, dev.http, withRelay(dev.camera_url));
  await waitForStats(camera, (s) => s.signal === 'open', 20000, 'the camera to be online');
  const context = await browser.newContext();
  await context.grantPermissions(['camera', 'microphone'], { origin: dev.http });
  const viewer = await context.newPage();
  const expired = expiredTurnServers();
  let fetched = 0;
  await viewer.routeWebSocket(/\/v1\/ws/, (ws) => {
    const server = ws.connectToServer();
    server.onMessage((message) => {
      const frame = JSON.parse(message);
      if (frame.type === 'welcome') frame.iceServers = expired;
      ws.send(JSON.stringify(frame));
    });
  });
  await viewer.route(/\/v1\/ice-servers/, (route) => {
    fetched += 1;
    return route.continue();
  });
  await viewer.goto(withRelay(dev.viewer_url));
  const s = await waitForStats(viewer, (x) => x.framesDecoded > 10, 45000, 'video with refreshed credentials');
  assert.equal(s.path, 'relay');
  assert.ok(fetched >= 1, 'the credential API was asked');
  await context.close();
  await camera.context().close();
});

test('expired TURN credentials: the rust viewer gets no video and says the credentials expired', async () => {
  if (!existsSync(clientBin)) throw new Error(`missing ${clientBin} (cargo build -p iceway-client)`);
  const file = path.join(dev.stateDir, 'expired-ice.json');
  writeFileSync(file, JSON.stringify(expiredTurnServers()));
  const camera = spawn(clientBin, ['--signal', dev.signal_url, '--token', dev.camera_token, '--relay-only', 'camera', '--duration', '60s'], { stdio: 'ignore' });
  try {
    const r = await run(clientBin, ['--signal', dev.signal_url, '--token', dev.viewer_token, '--relay-only', '--ice-servers', file, 'viewer', '--camera', dev.camera_id, '--frames', '10', '--timeout', '15s']);
    assert.equal(r.code, 2, r.stderr);
    const report = JSON.parse(r.stdout.trim().split('\n').pop());
    assert.equal(report.frames, 0);
    assert.match(report.reason, /expired/);
    assert.match(r.stderr, /TURN credentials .* expired/);
  } finally {
    camera.kill('SIGTERM');
  }
});

function run(bin, args) {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: 'warn' } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { stderr += d; });
    const timer = setTimeout(() => child.kill('SIGKILL'), 90000);
    child.on('error', reject);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

export { stats };
