// Session resume in the browser: the viewer page's signaling socket dies without a close frame
// (a phone's network dropping; here a TCP proxy in front of `iceway dev` destroys it), the page
// reconnects through the proxy with the resume secret of its last welcome and gets the same
// session back (`resumed`), and the call is never renegotiated: the same peer connection stays
// connected and its framesDecoded keeps counting up (a new one would start again from 0).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { rmSync } from 'node:fs';
import { startDev, launchBrowser, openPage, stats, waitForStats, withRelay } from './harness.mjs';

let dev;
let browser;
let proxy;

after(async () => {
  if (browser) await browser.close();
  if (proxy) proxy.close();
  if (dev) {
    await dev.stop();
    rmSync(dev.stateDir, { recursive: true, force: true });
  }
});

/** A TCP proxy on a free loopback port to `port`; `dropAll()` destroys every connection. */
function startProxy(port) {
  const sockets = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(port, '127.0.0.1');
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {});
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      resolve({
        port: server.address().port,
        dropAll() {
          const n = sockets.size;
          for (const s of sockets) s.destroy();
          return n;
        },
        close() {
          for (const s of sockets) s.destroy();
          server.close();
        },
      });
    });
  });
}

test('a viewer page whose socket drops resumes its session and keeps its call', async () => {
  dev = await startDev();
  browser = await launchBrowser();
  const http = new URL(dev.http);
  proxy = await startProxy(Number(http.port));
  const viaProxy = (url) => {
    const u = new URL(url);
    u.port = String(proxy.port);
    return u.toString();
  };
  const camera = await openPage(browser, dev.http, withRelay(dev.camera_url));
  await waitForStats(camera, (s) => s.signal === 'open', 20000, 'the camera to be online');
  const origin = `http://127.0.0.1:${proxy.port}`;
  const viewer = await openPage(browser, origin, withRelay(viaProxy(dev.viewer_url)));
  const before = await waitForStats(viewer, (s) => s.framesDecoded > 10 && !!s.session, 45000, 'video before the drop');

  assert.ok(proxy.dropAll() > 0, 'the proxy carried the viewer page');
  const back = await waitForStats(viewer, (s) => s.signal === 'open' && s.resumed, 20000, 'the viewer to resume');
  assert.equal(back.session, before.session, 'the same session');
  const live = await waitForStats(viewer, (s) => s.framesDecoded > back.framesDecoded + 30, 30000, 'video after the resume');
  assert.ok(back.framesDecoded >= before.framesDecoded, `framesDecoded went from ${before.framesDecoded} to ${back.framesDecoded}: a new peer connection`);
  assert.equal(live.connectionState, 'connected');
  assert.equal(live.cameraSession, before.cameraSession);
  assert.equal(live.path, 'relay');
  const cam = await stats(camera);
  assert.equal(cam.signal, 'open');
  await camera.context().close();
  await viewer.context().close();
});
