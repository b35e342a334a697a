// The SDK against a real signaling server (iceway dev): typed events, typed errors with the
// server's codes, reconnect with session resume, token refresh on the open socket, and the
// credential API. Run with `npm test` (Node >= 20, --experimental-websocket).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { SignalClient, Viewer, Camera, IceServerSource, IcewayError, CloseCode } from '../dist/index.js';
import { startDev, next, proxy } from './harness.mjs';

let dev;
const clients = [];
const track = (c) => { clients.push(c); return c; };

before(async () => { dev = await startDev(); });
after(async () => {
  for (const c of clients) c.stop();
  if (dev) await dev.stop();
});

test('welcome arrives as a typed event with ICE servers naming TURN', async () => {
  const s = track(new SignalClient({ url: dev.signal_url, token: dev.camera_token }));
  const states = [];
  s.on('state', (st) => states.push(st));
  const welcome = next(s, 'welcome');
  s.start();
  const w = await welcome;
  assert.equal(w.role, 'camera');
  assert.equal(s.session, w.session);
  assert.equal(s.state, 'open');
  assert.ok(w.iceServers.some((i) => [].concat(i.urls).some((u) => u.startsWith('turn:')) && i.username && i.credential));
  assert.deepEqual(states, ['connecting', 'open']);
  s.stop();
  assert.equal(s.state, 'closed');
});

test('camera and viewer meet: camera-online, viewer-joined, and SDP relayed both ways', async () => {
  const cam = track(new SignalClient({ url: dev.signal_url, token: dev.camera_token }));
  const viewer = track(new SignalClient({ url: dev.signal_url, token: dev.viewer_token }));
  cam.start();
  await next(cam, 'welcome');
  const online = next(cam, 'camera-online');
  assert.equal(cam.send({ type: 'publish' }), true);
  assert.equal((await online).camera, dev.camera_id);

  viewer.start();
  await next(viewer, 'welcome');
  const seen = next(viewer, 'camera-online');
  const joined = next(cam, 'viewer-joined');
  viewer.send({ type: 'watch', camera: dev.camera_id });
  const co = await seen;
  assert.equal(co.session, cam.session);
  const j = await joined;
  assert.equal(j.viewer, viewer.session);
  assert.equal(j.user, dev.viewer_id);

  const offer = next(viewer, 'offer');
  cam.send({ type: 'offer', to: j.viewer, sdp: 'v=0 offer' });
  assert.deepEqual(await offer, { type: 'offer', from: cam.session, sdp: 'v=0 offer' });
  const answer = next(cam, 'answer');
  viewer.send({ type: 'answer', to: cam.session, sdp: 'v=0 answer' });
  assert.equal((await answer).from, viewer.session);
  const cand = next(cam, 'candidate');
  viewer.send({ type: 'candidate', to: cam.session, candidate: 'candidate:1 1 udp 1 127.0.0.1 9 typ host', sdpMid: '0', sdpMLineIndex: 0 });
  assert.equal((await cand).sdpMid, '0');

  const left = next(viewer, 'camera-offline');
  cam.stop();
  assert.equal((await left).camera, dev.camera_id);
  viewer.stop();
});

test('a frame to a session that is gone is a peer-gone error naming it', async () => {
  const s = track(new SignalClient({ url: dev.signal_url, token: dev.camera_token }));
  s.start();
  await next(s, 'welcome');
  const err = next(s, 'error');
  s.send({ type: 'offer', to: 'no-such-session', sdp: 'x' });
  const e = await err;
  assert.ok(e instanceof IcewayError);
  assert.equal(e.code, 'peer-gone');
  assert.equal(e.peer, 'no-such-session');
  assert.equal(e.fatal, false);
  s.stop();
});

test('a viewer watching a camera it may not see stops with forbidden, in plain words', async () => {
  const token = dev.token('viewer', 'mallory', { cams: ['someone-else'] });
  const v = track(new Viewer({ signalUrl: dev.signal_url, token, camera: dev.camera_id }));
  const fatal = next(v, 'fatal');
  v.start();
  const e = await fatal;
  assert.equal(e.code, 'forbidden');
  assert.equal(e.reason, 'not-allowed');
  assert.equal(e.fatal, true);
  assert.equal(v.signal.state, 'closed');
});

test('a refused token closes with 4001: fatal unauthorized without a provider, recovered with one', async () => {
  const bad = track(new SignalClient({ url: dev.signal_url, token: 'not-a-jwt' }));
  const fatal = next(bad, 'fatal');
  bad.start();
  const e = await fatal;
  assert.equal(e.code, 'unauthorized');
  assert.equal(e.closeCode, CloseCode.Unauthorized);

  let asked = 0;
  const good = track(new SignalClient({
    url: dev.signal_url,
    token: 'not-a-jwt',
    tokenProvider: async () => { asked += 1; return dev.camera_token; },
  }));
  const welcome = next(good, 'welcome');
  good.start();
  assert.equal((await welcome).role, 'camera');
  assert.equal(asked, 1);
  good.stop();
});

test('a second camera with the same token replaces the first, which stops with replaced', async () => {
  const token = dev.token('camera', 'cam-replace');
  const first = track(new SignalClient({ url: dev.signal_url, token }));
  first.start();
  await next(first, 'welcome');
  first.send({ type: 'publish' });
  await next(first, 'camera-online');
  const second = track(new SignalClient({ url: dev.signal_url, token }));
  second.start();
  await next(second, 'welcome');
  const fatal = next(first, 'fatal');
  second.send({ type: 'publish' });
  const e = await fatal;
  assert.equal(e.code, 'replaced');
  assert.equal(e.closeCode, CloseCode.Replaced);
  second.stop();
});

test('a dropped socket reconnects with backoff and resumes the same session', async () => {
  const p = await proxy(dev.port);
  try {
    const url = `ws://127.0.0.1:${p.port}/v1/ws`;
    const cam = track(new SignalClient({ url, token: dev.token('camera', 'cam-resume'), backoffMs: 100 }));
    cam.start();
    const first = await next(cam, 'welcome');
    assert.equal(first.resumed ?? false, false);
    assert.ok(first.resume, 'the server offers resume');
    const states = [];
    cam.on('state', (s) => states.push(s));
    const again = next(cam, 'welcome', { timeoutMs: 15_000 });
    p.cut();
    const w = await again;
    assert.equal(w.resumed, true);
    assert.equal(w.session, first.session);
    assert.deepEqual(states, ['reconnecting', 'open']);
    cam.stop();
  } finally {
    await p.close();
  }
});

test('a short-lived token is refreshed on the open socket through the provider', async () => {
  const sub = 'cam-refresh';
  const s = track(new SignalClient({
    url: dev.signal_url,
    token: dev.token('camera', sub, { ttl: '6s' }),
    tokenProvider: async () => dev.token('camera', sub, { ttl: '1h' }),
  }));
  s.start();
  await next(s, 'welcome');
  let closed = false;
  s.on('state', (st) => { if (st !== 'open') closed = true; });
  const refreshed = await next(s, 'token-refreshed', { timeoutMs: 15_000 });
  assert.ok(refreshed.exp * 1000 > Date.now() + 30 * 60_000);
  assert.ok(refreshed.iceServers.length > 0);
  assert.equal(closed, false, 'the socket stayed open');
  s.stop();
});

test('without a provider, token-expiring reaches the app, and updateToken keeps the socket', async () => {
  const sub = 'cam-update';
  const s = track(new SignalClient({ url: dev.signal_url, token: dev.token('camera', sub, { ttl: '6s' }) }));
  s.start();
  await next(s, 'welcome');
  const expiring = await next(s, 'token-expiring', { timeoutMs: 15_000 });
  assert.ok(expiring.exp * 1000 <= Date.now() + 10_000);
  const refreshed = next(s, 'token-refreshed');
  s.updateToken(dev.token('camera', sub, { ttl: '1h' }));
  await refreshed;
  assert.equal(s.state, 'open');
  s.stop();
});

test('the server restarting: the client reconnects by itself and starts a new session', async () => {
  const token = dev.token('camera', 'cam-restart');
  const s = track(new SignalClient({ url: dev.signal_url, token, backoffMs: 100, maxBackoffMs: 1_000 }));
  s.start();
  const first = await next(s, 'welcome');
  const states = [];
  s.on('state', (st) => states.push(`${Date.now() % 100000}:${st}`));
  const reconnecting = next(s, 'state', { pred: (st) => st === 'reconnecting' });
  const port = dev.port;
  await dev.stop({ keepState: true });
  await reconnecting;
  // Listen first: the client may be back before startDev has read the server's banner.
  const again = next(s, 'welcome', { timeoutMs: 60_000 });
  dev = await startDev({ stateDir: dev.stateDir, httpPort: port });
  const restartedAt = Date.now() % 100000;
  const w = await again.catch((e) => {
    throw new Error(`${e.message}; states: ${states.join(' ')}; server back at ${restartedAt}`);
  });
  assert.notEqual(w.session, first.session);
  assert.equal(w.resumed ?? false, false);
  s.stop();
});

test('a Camera in Node publishes and goes online (no peer connection needed until a viewer)', async () => {
  const cam = track(new Camera({ signalUrl: dev.signal_url, token: dev.token('camera', 'cam-node'), stream: { getVideoTracks: () => [], getAudioTracks: () => [] } }));
  const online = next(cam, 'online');
  cam.start();
  assert.equal((await online).camera, 'cam-node');
  cam.stop();
});

test('ICE servers from the credential API, refreshed before the credentials expire', async () => {
  let fetches = 0;
  const counting = (...a) => { fetches += 1; return fetch(...a); };
  const src = new IceServerSource({ baseUrl: dev.http, token: dev.viewer_token, fetch: counting, refreshLeadMs: 60_000 });
  const list = await src.current();
  assert.ok(list.some((i) => i.username && /^\d+:/.test(i.username)), 'REST-format TURN credentials');
  assert.equal(fetches, 1);
  // A fresh list is served from memory.
  await src.current();
  assert.equal(fetches, 1);
  src.stop();

  const refused = new IceServerSource({ baseUrl: dev.http, token: 'nope' });
  await assert.rejects(refused.refresh(), (e) => e instanceof IcewayError && e.code === 'unauthorized');
  refused.stop();
});

test('a connect that neither opens nor fails is given up after welcomeTimeoutMs and retried', async () => {
  const { createServer } = await import('node:net');
  let accepted = 0;
  const held = [];
  // Accepts and never answers the upgrade: a server gone quiet mid-handshake.
  const quiet = createServer((sock) => { accepted += 1; held.push(sock); });
  await new Promise((r) => quiet.listen(0, '127.0.0.1', r));
  const url = `ws://127.0.0.1:${quiet.address().port}/v1/ws`;
  const s = track(new SignalClient({ url, token: dev.token('camera', 'cam-quiet'), welcomeTimeoutMs: 300, backoffMs: 50, maxBackoffMs: 100 }));
  s.start();
  const deadline = Date.now() + 10_000;
  while (accepted < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  s.stop();
  held.forEach((x) => x.destroy());
  quiet.close();
  assert.ok(accepted >= 3, `only ${accepted} attempts: a stalled connect held the client`);
});
