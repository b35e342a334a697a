// The README's "run it": `iceway dev` starts the stack; the camera and viewer URLs it prints,
// opened as printed in Chromium, show live video. The screenshot lands in target/e2e/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { statSync } from 'node:fs';
import { startDev, launchBrowser, openPage, waitForStats, ensureArtifactsDir } from './harness.mjs';

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

test('the printed camera and viewer URLs show live video', async () => {
  const camera = await openPage(browser, dev.http, dev.camera_url);
  await waitForStats(camera, (s) => s.signal === 'open', 20000, 'the camera to be online');
  const viewer = await openPage(browser, dev.http, dev.viewer_url);
  const live = await waitForStats(viewer, (s) => s.framesDecoded > 60 && s.overlay === '', 45000, 'live video');
  console.log(`time to first frame (iceway dev URLs as printed, path ${live.path}): ${live.ttffMs} ms`);
  // One more stats round so the page shows path and bitrate.
  await waitForStats(viewer, (s) => s.bitrateKbps > 0, 10000, 'a bitrate reading');
  const file = path.join(ensureArtifactsDir(), 'iceway-dev-viewer.png');
  await viewer.screenshot({ path: file });
  assert.ok(statSync(file).size > 10000);
  await camera.context().close();
  await viewer.context().close();
});
