// Reconnects: the signal server (here the whole `iceway dev` stack, TURN included) restarts
// under a live call; both pages reconnect by themselves, the camera publishes again, the viewer
// watches again and video comes back, with no reload.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { startDev, launchBrowser, openPage, waitForStats, withRelay } from './harness.mjs';

let dev;
let browser;

after(async () => {
  if (browser) await browser.close();
  if (dev) {
    await dev.stop();
    rmSync(dev.stateDir, { recursive: true, force: true });
  }
});

test('pages reconnect and video resumes after the server restarts', async () => {
  dev = await startDev();
  browser = await launchBrowser();
  const httpPort = new URL(dev.http).port;
  const turnPort = new URL(dev.turn_urls[1].replace(/^turn:/, 'http://')).port;
  const camera = await openPage(browser, dev.http, withRelay(dev.camera_url));
  await waitForStats(camera, (s) => s.signal === 'open', 20000, 'the camera to be online');
  const viewer = await openPage(browser, dev.http, withRelay(dev.viewer_url));
  await waitForStats(viewer, (s) => s.framesDecoded > 10, 45000, 'video before the restart');
  const before = await waitForStats(camera, (s) => !!s.session, 5000, 'camera session');

  await dev.stop({ keepState: true });
  await waitForStats(viewer, (s) => s.signal === 'reconnecting', 20000, 'the viewer to notice the restart');
  dev = await startDev([], { stateDir: dev.stateDir, httpPort, turnPort });

  const back = await waitForStats(camera, (s) => s.signal === 'open' && s.session && s.session !== before.session, 30000, 'the camera to be back online');
  assert.notEqual(back.session, before.session);
  const live = await waitForStats(viewer, (s) => s.cameraSession === back.session && s.connectionState === 'connected' && s.framesDecoded > 10, 60000, 'video after the restart');
  assert.equal(live.path, 'relay');
  await camera.context().close();
  await viewer.context().close();
});
