// Camera page: publishes this device's camera and microphone with the SDK's Camera (one peer
// connection per viewer), plays what viewers say with push-to-talk, keeps the screen on.
import {
  Camera, openCamera, keepScreenOn, explain, summarize, tokenClaims, tokenExpired, IcewayError,
} from './iceway/index.js';
import { pageParams, showMessage, pathLabel, formatKbps, askForToken } from './page.js';

const params = pageParams();
const ui = {
  who: document.getElementById('who'),
  preview: document.getElementById('preview'),
  overlay: document.getElementById('overlay'),
  message: document.getElementById('message'),
  signalState: document.getElementById('signal-state'),
  viewerCount: document.getElementById('viewer-count'),
  bitrate: document.getElementById('bitrate'),
  viewers: document.getElementById('viewers'),
  flip: document.getElementById('flip'),
  retry: document.getElementById('retry'),
  renew: document.getElementById('renew'),
};

let camera = null;
let stream = null;
let facing = params.facing;
let wake = null;
let lastMessage = '';
/** viewer session id -> { stats, prevAudioIn, audio } */
const extras = new Map();

function say(text, tone) {
  lastMessage = text;
  showMessage(ui.message, text, tone);
}

function overlay(text) {
  ui.overlay.hidden = !text;
  if (text) ui.overlay.textContent = text;
}

async function start() {
  const claims = tokenClaims(params.token);
  if (!params.token || !claims) {
    say('This link has no valid access token. Open the camera link from the app.', 'bad');
    overlay('No access token');
    return;
  }
  if (tokenExpired(params.token)) {
    say(explain('token-expired'), 'bad');
    overlay('Access expired');
    offerNewLink();
    return;
  }
  ui.who.textContent = `camera ${claims.sub}`;
  if (!(await openMedia())) return;

  camera = new Camera({
    signalUrl: params.signalUrl,
    token: params.token,
    iceServersUrl: params.iceServersUrl,
    stream,
    relayOnly: params.relayOnly,
    tokenProvider: typeof window.icewayRefreshToken === 'function' ? () => window.icewayRefreshToken() : undefined,
  });
  camera.on('state', (st) => {
    ui.signalState.textContent = st;
    if (st === 'reconnecting') say('Lost the signaling server; reconnecting… Viewers already connected keep watching.', 'warn');
  });
  camera.on('online', () => say(camera.viewers.size ? `${camera.viewers.size} viewer(s) watching.` : 'Online. Waiting for viewers.', 'ok'));
  camera.on('viewer-joined', (v) => {
    extras.set(v.id, { stats: null, prevAudioIn: undefined, audio: null });
    renderViewers();
  });
  camera.on('viewer-left', ({ id }) => {
    const x = extras.get(id);
    if (x && x.audio) x.audio.srcObject = null;
    extras.delete(id);
    renderViewers();
  });
  camera.on('viewer-state', ({ state }) => {
    renderViewers();
    if (state === 'connected') say(`${camera.viewers.size} viewer(s) watching.`, 'ok');
  });
  camera.on('viewer-audio', ({ viewer, track }) => {
    const audio = new Audio();
    audio.autoplay = true;
    audio.srcObject = new MediaStream([track]);
    audio.play().catch(() => say('Tap anywhere to hear viewers talking.', 'warn'));
    document.addEventListener('pointerdown', () => audio.play().catch(() => {}), { once: true });
    const x = extras.get(viewer.id);
    if (x) x.audio = audio;
  });
  camera.on('error', (e) => say(explain(e, camera.signal.token), e.code === 'rate-limited' ? 'warn' : 'bad'));
  camera.on('token-expiring', () => {
    say('Your access link expires in a minute. Paste a new link from the app to keep the camera on.', 'warn');
    renewToken();
  });
  camera.on('fatal', (e) => {
    say(explain(e, camera.signal.token), 'bad');
    overlay(e.code === 'replaced' ? 'Running on another device' : 'Stopped');
    releaseWake();
    if (e.code === 'unauthorized') offerNewLink();
  });
  camera.start();
  wake = keepScreenOn();
  setInterval(refreshStats, 1000);
}

/** Opens the camera; on failure says why in plain words and offers Retry. */
async function openMedia() {
  try {
    stream = await openCamera({ facing });
  } catch (e) {
    const err = e instanceof IcewayError ? e : new IcewayError({ code: 'media-unavailable', message: String(e) });
    say(explain(err), 'bad');
    overlay(err.code === 'media-permission' ? 'Camera access blocked' : 'No camera');
    ui.retry.hidden = false;
    return false;
  }
  ui.retry.hidden = true;
  ui.preview.srcObject = stream;
  // The front camera previews mirrored, as a phone's own camera app does; viewers see it unmirrored.
  ui.preview.classList.toggle('mirror', facing === 'user');
  overlay('');
  return true;
}

ui.retry.addEventListener('click', async () => {
  if (await openMedia()) {
    if (camera) await camera.replaceStream(stream);
    else start();
  }
});

ui.flip.addEventListener('click', async () => {
  if (!stream) return;
  const old = stream;
  facing = facing === 'user' ? 'environment' : 'user';
  // Phones open one camera at a time: stop the old one first.
  old.getVideoTracks().forEach((t) => t.stop());
  if (await openMedia()) {
    old.getAudioTracks().forEach((t) => t.stop());
    if (camera) await camera.replaceStream(stream);
  }
});

async function renewToken() {
  try {
    const token = await askForToken(ui.renew);
    camera.updateToken(token);
    say('New link accepted; the camera stays on.', 'ok');
  } catch {
    // The user dismissed the form; the server closes when the token runs out.
  }
}

function offerNewLink() {
  askForToken(ui.renew).then((token) => {
    const url = new URL(location.href);
    url.searchParams.set('token', token);
    location.replace(url);
  }, () => {});
}

function releaseWake() {
  if (wake) wake.release();
  wake = null;
}

document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'hidden') {
    // Phones stop the camera (and often the page) in the background.
    say('Keep this page in front: in the background the phone may pause the camera.', 'warn');
  } else if (camera) {
    // Back in front: the socket may have died meanwhile.
    camera.signal.checkConnection();
    say(camera.viewers.size ? `${camera.viewers.size} viewer(s) watching.` : 'Online. Waiting for viewers.', 'ok');
  }
});

function renderViewers() {
  const list = camera ? [...camera.viewers.values()] : [];
  ui.viewerCount.textContent = String(list.length);
  ui.viewers.replaceChildren(...list.map((v) => {
    const x = extras.get(v.id) || {};
    const li = document.createElement('li');
    const talking = x.stats && x.prevAudioIn !== undefined && x.stats.audioIn.packetsReceived > x.prevAudioIn;
    li.textContent = `${v.user || v.id} · ${v.link.connectionState} · ${pathLabel(x.stats)}${talking ? ' · talking' : ''}`;
    return li;
  }));
}

async function refreshStats() {
  let kbps = 0;
  for (const v of camera.viewers.values()) {
    const x = extras.get(v.id);
    if (!x) continue;
    x.prevAudioIn = x.stats ? x.stats.audioIn.packetsReceived : undefined;
    try {
      x.stats = await summarize(v.link.pc, x.stats);
      kbps += x.stats.bitrateOutKbps;
    } catch {
      // closed meanwhile
    }
  }
  ui.bitrate.textContent = formatKbps(kbps);
  renderViewers();
}

// Test and debugging hook: what this page is doing, from getStats.
window.icewayStats = async () => {
  const viewers = [];
  for (const v of camera ? camera.viewers.values() : []) {
    let s = null;
    try {
      s = await summarize(v.link.pc, null);
    } catch {
      s = null;
    }
    viewers.push({
      viewer: v.id,
      user: v.user,
      connectionState: v.link.connectionState,
      path: s ? s.path : null,
      localCandidateType: s ? s.localCandidateType : null,
      framesSent: s ? s.video.framesSent : 0,
      audioPacketsSent: s ? s.audioOut.packetsSent : 0,
      audioPacketsReceived: s ? s.audioIn.packetsReceived : 0,
      iceError: v.link.iceError ? explain(v.link.iceError) : null,
    });
  }
  return {
    role: 'camera',
    signal: camera ? camera.signal.state : 'closed',
    session: camera ? camera.signal.session : null,
    hasAudio: !!(stream && stream.getAudioTracks().length),
    facing,
    wakeLock: !!(wake && wake.held),
    viewers,
    message: lastMessage,
  };
};

start();
