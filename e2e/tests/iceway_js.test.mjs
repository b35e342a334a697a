// Unit tests of the pages' shared module (client/web/js/iceway.js): the pure helpers, no browser.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  pageParams, tokenClaims, tokenExpired, explain, iceServersOf, rtcConfig, candidateFrame,
  explainIceError, formatKbps, IceServerCache,
} from '../../client/web/js/iceway.js';

const b64url = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
const jwt = (claims) => `${b64url({ alg: 'HS256', kid: 'default' })}.${b64url(claims)}.sig`;

test('page parameters come from the query string', () => {
  globalThis.location = { protocol: 'https:', host: 'cam.example:8443' };
  const p = pageParams('?token=T&camera=cam1&relay=1');
  assert.deepEqual(p, { token: 'T', camera: 'cam1', relayOnly: true, signalUrl: 'wss://cam.example:8443/v1/ws' });
  assert.equal(pageParams('?token=T').relayOnly, false);
  assert.equal(pageParams('?signal=ws://x/v1/ws').signalUrl, 'ws://x/v1/ws');
});

test('token claims and expiry are read without verifying', () => {
  const now = Date.now();
  const live = jwt({ sub: 'alice', exp: Math.floor(now / 1000) + 60 });
  const dead = jwt({ sub: 'alice', exp: Math.floor(now / 1000) - 60 });
  assert.equal(tokenClaims(live).sub, 'alice');
  assert.equal(tokenExpired(live, now), false);
  assert.equal(tokenExpired(dead, now), true);
  assert.equal(tokenClaims('garbage'), null);
});

test('errors are explained in plain words', () => {
  const dead = jwt({ sub: 'a', exp: 1 });
  assert.match(explain('unauthorized', dead), /expired/);
  assert.match(explain(4003, dead), /not yours/);
  assert.match(explain('forbidden', dead), /not yours/);
  assert.match(explainIceError({ url: 'turn:h:3478?transport=udp', errorCode: 401 }), /expired or are wrong/);
  assert.equal(explainIceError({ url: 'stun:h:3478', errorCode: 701 }), null);
});

test('ICE servers accept the welcome list and the /v1/ice-servers body', () => {
  const list = [{ urls: ['turn:h:3478'], username: 'u', credential: 'p' }];
  assert.deepEqual(iceServersOf(list), list);
  assert.deepEqual(iceServersOf({ iceServers: list, ttl: 60 }), list);
  assert.deepEqual(iceServersOf(undefined), []);
  assert.equal(rtcConfig(list, true).iceTransportPolicy, 'relay');
  assert.equal(rtcConfig(list, false).iceTransportPolicy, 'all');
});

test('candidate frames carry the DESIGN §3 fields', () => {
  const f = candidateFrame('s1', { candidate: 'candidate:1 1 udp 1 1.2.3.4 5 typ relay', sdpMid: '0', sdpMLineIndex: 0 });
  assert.deepEqual(f, { type: 'candidate', to: 's1', candidate: 'candidate:1 1 udp 1 1.2.3.4 5 typ relay', sdpMid: '0', sdpMLineIndex: 0 });
  assert.equal(formatKbps(1500), '1.5 Mbit/s');
  assert.equal(formatKbps(300), '300 kbit/s');
});

test('the ICE-server cache serves the welcome list while fresh and refetches once stale', async () => {
  const list = [{ urls: ['stun:127.0.0.1:3478'] }];
  const fresh = [{ urls: ['turn:127.0.0.1:3478'], username: 'u', credential: 'p' }];
  const calls = [];
  const realFetch = globalThis.fetch;
  globalThis.location = { origin: 'http://iceway.test' };
  globalThis.fetch = async (url, init) => {
    calls.push([url, init.headers.Authorization]);
    return { ok: true, json: async () => ({ iceServers: fresh, ttl: 60 }) };
  };
  try {
    const cache = new IceServerCache('tok', 60_000);
    cache.set({ iceServers: list });
    assert.deepEqual(await cache.current(), list);
    assert.equal(calls.length, 0);
    cache.fetchedAt -= 120_000;
    assert.deepEqual(await cache.current(), fresh);
    assert.deepEqual(calls, [['http://iceway.test/v1/ice-servers', 'Bearer tok']]);
  } finally {
    globalThis.fetch = realFetch;
    delete globalThis.location;
  }
});
