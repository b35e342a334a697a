// The SDK's pure pieces, no server: error words, token claims, credential expiry.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { explain, IcewayError, tokenClaims, tokenExpired, credentialsExpireAt, iceServersOf, parseServerFrame, candidateFrame, rtcConfig } from '../dist/index.js';

const b64url = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
const jwt = (claims) => `${b64url({ alg: 'HS256', kid: 'default' })}.${b64url(claims)}.sig`;

test('forbidden tells a full camera from one that is not yours', () => {
  const full = IcewayError.fromFrame({ code: 'forbidden', message: 'camera already has 8 viewers', ref: 'watch' });
  assert.equal(full.reason, 'camera-full');
  assert.match(explain(full), /already has 8 viewers/);
  const notYours = IcewayError.fromFrame({ code: 'forbidden', message: 'camera cam9 is not in this token', ref: 'watch' });
  assert.equal(notYours.reason, 'not-allowed');
  assert.match(explain(notYours), /not yours/);
  assert.notEqual(explain(full), explain(notYours));
  // The server's own words (signal-server/src/session/mod.rs; docs/signaling.md, Error codes).
  for (const message of ['only a viewer token may watch', 'only a camera token may publish']) {
    const e = IcewayError.fromFrame({ code: 'forbidden', message });
    assert.equal(e.reason, 'wrong-role', message);
    assert.match(explain(e), /other side/);
  }
  for (const message of ['camera is not in this token\'s cams', 'a camera publishes only as its own sub', 'this connection watches too many cameras']) {
    assert.equal(IcewayError.fromFrame({ code: 'forbidden', message }).reason, 'not-allowed', message);
  }
});

test('close codes become typed errors: replaced and resumed-elsewhere are worded apart', () => {
  assert.equal(IcewayError.fromClose(4010, '').code, 'replaced');
  assert.match(explain(4010), /another device/);
  assert.equal(IcewayError.fromClose(4011, '').code, 'resumed-elsewhere');
  assert.match(explain(4011), /another tab/);
  assert.equal(IcewayError.fromClose(1006, ''), null);
  assert.match(explain(new IcewayError({ code: 'unauthorized' }), jwt({ exp: 1 })), /expired/);
  assert.match(explain('media-permission'), /Allow it/);
});

test('token claims are read without verifying, and expiry is judged', () => {
  const now = Date.now();
  const t = jwt({ sub: 'ä-cam', exp: Math.floor(now / 1000) + 60 });
  assert.equal(tokenClaims(t).sub, 'ä-cam');
  assert.equal(tokenExpired(t, now), false);
  assert.equal(tokenExpired(t, now + 120_000), true);
  assert.equal(tokenClaims('garbage'), null);
});

test('TURN credential expiry is read off REST and JWT usernames', () => {
  const servers = [
    { urls: 'stun:h:3478' },
    { urls: ['turn:h:3478'], username: '1767225600:viewer1', credential: 'x' },
    { urls: ['turn:h:3479'], username: jwt({ exp: 1767220000 }), credential: 'y' },
  ];
  assert.equal(credentialsExpireAt(servers), 1767220000 * 1000);
  assert.equal(credentialsExpireAt([{ urls: 'stun:h' }]), null);
  assert.deepEqual(iceServersOf({ iceServers: servers, ttl: 5 }), servers);
});

test('frames are parsed strictly and built with the wire names', () => {
  assert.equal(parseServerFrame('{"type":"nope"}'), null);
  assert.equal(parseServerFrame('[1]'), null);
  assert.equal(parseServerFrame('not json'), null);
  assert.equal(parseServerFrame('{"type":"pong"}').type, 'pong');
  assert.deepEqual(candidateFrame('s1', { candidate: 'c', sdpMid: '0', sdpMLineIndex: 0 }), { type: 'candidate', to: 's1', candidate: 'c', sdpMid: '0', sdpMLineIndex: 0 });
  assert.equal(rtcConfig([], true).iceTransportPolicy, 'relay');
});
