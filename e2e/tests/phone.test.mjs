// Two phones (issue 16): the camera and viewer pages, built on the SDK (client/js), in Chromium's
// mobile emulation (a phone's viewport, touch, a mobile user agent; fake camera and microphone),
// relay only through iceway-turn. Video goes one way, push-to-talk audio (held by a touch on the
// talk button) the other, both counted in getStats; the camera switches between back and front
// by a tap; then the viewer phone's network link goes down and comes back, and the call resumes
// on the same page, with no reload.
//
// Each phone is its own browser in its own network namespace, so "the viewer's network drops"
// is a real link going down under one browser only (Chromium sees it, fires `offline`/`online`,
// and its sockets stop), as when a phone leaves Wi-Fi. The namespaces are made here and deleted
// at the end; traffic stays inside them:
//
//   home (iceway dev on 10.77.0.1, the camera phone) --veth-- phone (the viewer phone)
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  startDev, loadPlaywright, chromiumArgs, chromiumPath, waitForStats, stats, withRelay,
  ensureArtifactsDir,
} from './harness.mjs';

const tag = `${process.pid % 100000}`;
const homeNs = `iceway-home-${tag}`;
const phoneNs = `iceway-phone-${tag}`;
const serverIp = '10.77.0.1';
const homeLink = '10.77.1.1';
const phoneLink = '10.77.1.2';

let dev;
let browsers = [];
let work;

function ip(...args) {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

function makeNamespaces() {
  for (const ns of [homeNs, phoneNs]) {
    ip('netns', 'add', ns);
    ip('-n', ns, 'link', 'set', 'lo', 'up');
  }
  // The server's address sits on the home namespace's loopback: the camera phone reaches it
  // whatever the veth does, and the viewer phone reaches it only over the veth.
  ip('-n', homeNs, 'addr', 'add', `${serverIp}/32`, 'dev', 'lo');
  ip('-n', homeNs, 'link', 'add', 'home0', 'type', 'veth', 'peer', 'name', 'phone0', 'netns', phoneNs);
  ip('-n', homeNs, 'addr', 'add', `${homeLink}/30`, 'dev', 'home0');
  ip('-n', phoneNs, 'addr', 'add', `${phoneLink}/30`, 'dev', 'phone0');
  ip('-n', homeNs, 'link', 'set', 'home0', 'up');
  phoneLinkUp();
}

/** The viewer phone's link up with its default route (a link going down drops its routes). */
function phoneLinkUp() {
  ip('-n', phoneNs, 'link', 'set', 'phone0', 'up');
  ip('-n', phoneNs, 'route', 'replace', 'default', 'via', homeLink);
}

function deleteNamespaces() {
  for (const ns of [homeNs, phoneNs]) {
    try {
      ip('netns', 'del', ns);
    } catch {
      // not created
    }
  }
}

/** Chromium started inside `ns`; Playwright's pipe (fds 3 and 4) passes through `ip netns exec`. */
async function launchPhoneBrowser(ns, origin) {
  const wrapper = path.join(work, `chromium-${ns}`);
  writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${ns} ${chromiumPath} "$@"\n`);
  chmodSync(wrapper, 0o755);
  const { chromium } = await loadPlaywright();
  const browser = await chromium.launch({
    executablePath: wrapper,
    headless: true,
    // A LAN address over plain http is not a secure origin; `iceway dev --lan` serves https
    // for real phones, this flag stands in for the installed CA here.
    args: [...chromiumArgs, `--unsafely-treat-insecure-origin-as-secure=${origin}`],
  });
  browsers.push(browser);
  return browser;
}

async function openPhonePage(browser, origin, url) {
  const { devices } = await loadPlaywright();
  const context = await browser.newContext({ ...devices['Pixel 7'] });
  // grantPermissions denies what it does not name; a phone's Chrome grants the screen wake
  // lock without asking.
  await context.grantPermissions(['camera', 'microphone', 'screen-wake-lock'], { origin });
  const page = await context.newPage();
  const consoleLines = [];
  page.on('console', (m) => consoleLines.push(`[${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`[pageerror] ${e.message}`));
  page.loads = 0;
  page.on('load', () => {
    page.loads += 1;
  });
  await page.goto(url);
  page.consoleLines = consoleLines;
  return page;
}

/** A finger held on `selector` (touchStart now, touchEnd when the returned function is called). */
async function holdTouch(page, selector) {
  const box = await page.locator(selector).boundingBox();
  assert.ok(box, `${selector} is on screen`);
  const point = { x: box.x + box.width / 2, y: box.y + box.height / 2 };
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Input.dispatchTouchEvent', { type: 'touchStart', touchPoints: [point] });
  return () => cdp.send('Input.dispatchTouchEvent', { type: 'touchEnd', touchPoints: [] });
}

function cameraViewer(s) {
  return s.viewers.find((v) => v.connectionState === 'connected') || s.viewers[0] || null;
}

before(async () => {
  work = mkdtempSync(path.join(tmpdir(), 'iceway-phone-'));
  deleteNamespaces();
  makeNamespaces();
  dev = await startDev(['--bind', serverIp], { netns: homeNs });
});

after(async () => {
  for (const b of browsers) await b.close().catch(() => {});
  browsers = [];
  if (dev) await dev.stop();
  deleteNamespaces();
  if (work) rmSync(work, { recursive: true, force: true });
});

test('two phones: video one way, push-to-talk the other, and the call survives the viewer losing its network', async () => {
  const origin = dev.http;
  const cameraPhone = await launchPhoneBrowser(homeNs, origin);
  const viewerPhone = await launchPhoneBrowser(phoneNs, origin);

  const camera = await openPhonePage(cameraPhone, origin, withRelay(dev.camera_url));
  await waitForStats(camera, (s) => s.signal === 'open', 20000, 'the camera phone online');
  const size = await camera.evaluate(() => ({ w: innerWidth, touch: navigator.maxTouchPoints, mobile: /Mobile/.test(navigator.userAgent) }));
  assert.ok(size.w <= 500 && size.touch > 0 && size.mobile, `a phone's screen: ${JSON.stringify(size)}`);
  // A camera phone left on a shelf must not sleep: the page holds a screen wake lock.
  const awake = await waitForStats(camera, (s) => s.wakeLock, 10000, 'the camera phone to hold a screen wake lock');
  assert.equal(awake.facing, 'environment', 'a pet cam films with the back camera by default');

  const viewer = await openPhonePage(viewerPhone, origin, withRelay(dev.viewer_url));
  await viewer.evaluate(() => {
    window.phoneTestMarker = 'same page';
  });
  const live = await waitForStats(viewer, (s) => s.framesDecoded > 10 && s.connectionState === 'connected', 45000, 'video on the viewer phone');
  assert.equal(live.path, 'relay');
  assert.equal(live.localCandidateType, 'relay');

  // Push-to-talk: a finger on the talk button sends the microphone to the camera.
  const release = await holdTouch(viewer, '#talk');
  const talking = await waitForStats(viewer, (s) => s.talking && s.audioPacketsSent > 25, 20000, 'the viewer phone sending audio');
  const heard = await waitForStats(camera, (s) => {
    const v = cameraViewer(s);
    return v && v.audioPacketsReceived > 25;
  }, 20000, 'the camera phone receiving the viewer\'s audio');
  await release();
  await waitForStats(viewer, (s) => !s.talking, 5000, 'talk released');
  console.log(`push-to-talk: viewer sent ${talking.audioPacketsSent} audio packets, camera received ${cameraViewer(heard).audioPacketsReceived}`);

  // The camera phone's owner taps the front/back switch: the track is replaced under the live
  // call (no renegotiation), and video goes on at the viewer.
  const beforeFlip = await stats(viewer);
  await camera.tap('#flip');
  await waitForStats(camera, (s) => s.facing === 'user', 10000, 'the front camera');
  await waitForStats(viewer, (s) => s.connectionState === 'connected' && s.framesDecoded > beforeFlip.framesDecoded + 30, 30000, 'video after the camera switch');

  // The viewer phone loses its network: video stops, the connection notices.
  const beforeDrop = await stats(viewer);
  ip('-n', phoneNs, 'link', 'set', 'phone0', 'down');
  const dropped = await waitForStats(viewer, (s) => s.connectionState !== 'connected', 45000, 'the viewer to notice its network is gone');
  const stalled = await stats(viewer);
  console.log(`network down: viewer connection ${dropped.connectionState}, signaling ${dropped.signal}, frames ${beforeDrop.framesDecoded} -> ${stalled.framesDecoded}`);

  // Back: the same page reconnects (ICE restart or a new watch) and video flows again.
  phoneLinkUp();
  const back = await waitForStats(
    viewer,
    (s) => s.connectionState === 'connected' && s.framesDecoded > stalled.framesDecoded + 30 && s.signal === 'open',
    90000,
    'video again after the network came back',
  );
  assert.equal(back.path, 'relay');
  assert.equal(await viewer.evaluate(() => window.phoneTestMarker), 'same page', 'the page was not reloaded');
  assert.equal(viewer.loads, 1, 'one page load');
  assert.equal(back.fatal, false);
  // Signaling took its session back (docs/signaling.md, "Session resume"): the camera kept
  // talking to the same viewer, no peer-left, no new watch.
  assert.equal(back.session, beforeDrop.session, 'the same signaling session');
  assert.equal(back.resumed, true);
  console.log(`network back: video resumed at ${back.framesDecoded} frames, session resumed`);

  // Talking still works on the resumed call.
  const release2 = await holdTouch(viewer, '#talk');
  const pressed = await waitForStats(viewer, (s) => s.talking, 5000, 'talking again');
  await waitForStats(viewer, (s) => s.talking && s.audioPacketsSent > pressed.audioPacketsSent + 25, 20000, 'audio again after the network came back');
  await release2();

  const dir = ensureArtifactsDir();
  await viewer.screenshot({ path: path.join(dir, 'phone-viewer.png') });
  await camera.screenshot({ path: path.join(dir, 'phone-camera.png') });
});
