// 4b: a Chromium camera page and a Chromium viewer page call each other through signal-server
// and iceway-turn with iceTransportPolicy 'relay'. Video is decoded on the viewer, the selected
// pair is a relay pair, the camera's microphone reaches the viewer, and the viewer's
// push-to-talk reaches the camera while the button is held.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import {
  startDev, launchBrowser, openPage, stats, waitForStats, withRelay, ensureArtifactsDir, icewayBin,
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

test('viewer page shows the camera page live through the TURN relay, and push-to-talk reaches the camera', async () => {
  const camera = await openPage(browser, dev.http, withRelay(dev.camera_url));
  await waitForStats(camera, (s) => s.signal === 'open' && s.session, 20000, 'the camera to be online');

  const viewer = await openPage(browser, dev.http, withRelay(dev.viewer_url));
  const live = await waitForStats(viewer, (s) => s.framesDecoded > 30, 45000, 'more than 30 decoded frames');
  console.log(`time to first frame (browser camera -> browser viewer, relay): ${live.ttffMs} ms`);
  assert.equal(live.connectionState, 'connected');
  assert.equal(live.path, 'relay', `selected pair must be relayed: ${JSON.stringify(live)}`);
  assert.equal(live.localCandidateType, 'relay');

  // The camera's microphone arrives at the viewer.
  const a0 = live.audioPacketsReceived;
  await waitForStats(viewer, (s) => s.audioPacketsReceived > a0 + 25, 20000, 'camera audio at the viewer');

  // Push-to-talk: nothing from the viewer before the button is held...
  const camBefore = await stats(camera);
  assert.equal(camBefore.viewers.length, 1);
  const p0 = camBefore.viewers[0].audioPacketsReceived;
  const talk = viewer.locator('#talk');
  await talk.waitFor({ state: 'visible' });
  const box = await talk.boundingBox();
  await viewer.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  await viewer.mouse.down();
  // ...and the viewer's microphone reaches the camera while it is held.
  await waitForStats(viewer, (s) => s.talking && s.audioPacketsSent > 0, 10000, 'the viewer to send audio');
  const held = await waitForStats(camera, (s) => s.viewers[0] && s.viewers[0].audioPacketsReceived > p0 + 25, 20000, 'viewer audio at the camera');
  await viewer.mouse.up();
  const released = await waitForStats(viewer, (s) => !s.talking, 5000, 'push-to-talk released');
  assert.equal(held.viewers[0].path, 'relay');
  assert.equal(released.talking, false);

  const dir = ensureArtifactsDir();
  await viewer.screenshot({ path: path.join(dir, 'browser-call-viewer.png') });
  await camera.screenshot({ path: path.join(dir, 'browser-call-camera.png') });
  await camera.context().close();
  await viewer.context().close();
});

test('one camera page serves two viewer pages at once, one peer connection each', async () => {
  const camera = await openPage(browser, dev.http, withRelay(dev.camera_url));
  await waitForStats(camera, (s) => s.signal === 'open', 20000, 'the camera to be online');
  const bob = execFileSync(icewayBin, ['--state-dir', dev.stateDir, 'token', '--role', 'viewer', '--sub', 'bob', '--cams', dev.camera_id, '--ttl', '10m']).toString().trim();
  const v1 = await openPage(browser, dev.http, withRelay(dev.viewer_url));
  const v2 = await openPage(browser, dev.http, `${dev.http}/viewer?token=${bob}&camera=${dev.camera_id}&relay=1`);
  await waitForStats(v1, (s) => s.framesDecoded > 20, 45000, 'video at viewer 1');
  await waitForStats(v2, (s) => s.framesDecoded > 20, 45000, 'video at viewer 2');
  const cam = await waitForStats(camera, (s) => s.viewers.length === 2 && s.viewers.every((v) => v.connectionState === 'connected'), 20000, 'two connected viewers');
  assert.deepEqual(cam.viewers.map((v) => v.user).sort(), ['bob', 'viewer1']);
  for (const p of [camera, v1, v2]) await p.context().close();
});
