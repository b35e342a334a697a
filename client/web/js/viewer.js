// Viewer page: watches one camera with the SDK's Viewer, shows the live video, the connection
// state, the path (relay or direct) and the bitrate, and talks back with push-to-talk.
import { Viewer, explain, summarize, tokenClaims, tokenExpired } from './iceway/index.js';
import { pageParams, showMessage, pathLabel, formatKbps, askForToken } from './page.js';

const params = pageParams();
const ui = {
  who: document.getElementById('who'),
  video: document.getElementById('remote'),
  overlay: document.getElementById('overlay'),
  message: document.getElementById('message'),
  talk: document.getElementById('talk'),
  sound: document.getElementById('sound'),
  connState: document.getElementById('conn-state'),
  path: document.getElementById('path'),
  bitrate: document.getElementById('bitrate'),
  frames: document.getElementById('frames'),
  ttff: document.getElementById('ttff'),
  signalState: document.getElementById('signal-state'),
  renew: document.getElementById('renew'),
};

let viewer = null;
let stats = null;
let ttffMs = null;
let lastMessage = '';
let fatal = false;

function say(text, tone) {
  lastMessage = text;
  showMessage(ui.message, text, tone);
}

function overlay(text) {
  ui.overlay.hidden = !text;
  if (text) ui.overlay.textContent = text;
}

function start() {
  const claims = tokenClaims(params.token);
  if (!params.token || !claims) {
    fail('This link has no valid access token. Open the viewer link from the app.');
    return;
  }
  if (!params.camera) {
    fail('This link does not say which camera to watch (?camera=...).');
    return;
  }
  if (tokenExpired(params.token)) {
    fail(explain('token-expired'));
    offerNewLink();
    return;
  }
  ui.who.textContent = `${claims.sub} → ${params.camera}`;
  viewer = new Viewer({
    signalUrl: params.signalUrl,
    token: params.token,
    camera: params.camera,
    iceServersUrl: params.iceServersUrl,
    relayOnly: params.relayOnly,
    tokenProvider: typeof window.icewayRefreshToken === 'function' ? () => window.icewayRefreshToken() : undefined,
  });
  viewer.on('state', (st) => {
    ui.signalState.textContent = st;
    if (st === 'reconnecting' && !fatal) {
      say(viewer.pc && viewer.pc.connectionState === 'connected'
        ? 'Lost the signaling server; reconnecting. The video keeps playing.'
        : 'Lost the signaling server; reconnecting…', 'warn');
    }
  });
  viewer.on('camera-state', (s) => {
    if (s === 'offline') {
      say('The camera is offline. Waiting for it to come online…', 'warn');
      overlay('Camera offline — waiting for it to come online');
    } else if (s === 'online') {
      say('The camera is online. Connecting…', 'ok');
      if (!viewer.pc || viewer.pc.connectionState !== 'connected') overlay('Connecting to the camera…');
    }
  });
  viewer.on('stream', (stream) => {
    ui.video.srcObject = stream;
    ui.video.play().catch(() => {});
    watchFirstFrame();
  });
  viewer.on('connection-state', (s) => {
    ui.connState.textContent = s === 'none' ? '–' : s;
    ui.talk.disabled = s === 'none';
    if (s === 'connected') {
      say('Live.', 'ok');
    } else if (s === 'disconnected') {
      say('Connection interrupted; reconnecting…', 'warn');
    } else if (s === 'failed') {
      if (viewer.iceError) {
        say(`No video: ${explain(viewer.iceError)}`, 'bad');
        overlay('No video: the relay refused our credentials');
      } else {
        say('Connection failed; reconnecting…', 'warn');
        overlay('Reconnecting…');
      }
    }
  });
  viewer.on('error', (e) => {
    if (e.code === 'turn-refused') {
      say(explain(e), 'bad');
      return;
    }
    say(explain(e, viewer.signal.token), 'warn');
  });
  viewer.on('token-expiring', () => {
    say('Your access link expires in a minute. Paste a new link from the app to keep watching.', 'warn');
    askForToken(ui.renew).then((t) => {
      viewer.updateToken(t);
      say('New link accepted.', 'ok');
    }, () => {});
  });
  viewer.on('fatal', (e) => {
    fail(explain(e, viewer.signal.token));
    if (e.code === 'unauthorized') offerNewLink();
  });
  viewer.on('talking', (on) => {
    ui.talk.classList.toggle('active', on);
    ui.talk.textContent = on ? 'Talking… release to stop' : 'Hold to talk';
  });
  viewer.start();
  setupTalk();
  ui.sound.addEventListener('click', () => {
    ui.video.muted = !ui.video.muted;
    ui.sound.textContent = ui.video.muted ? 'Sound on' : 'Sound off';
    ui.video.play().catch(() => {});
  });
  document.addEventListener('visibilitychange', () => {
    // Back in front after the phone slept: the socket and the path may both be stale.
    if (document.visibilityState === 'visible' && viewer && !fatal) {
      viewer.signal.checkConnection();
      ui.video.play().catch(() => {});
    }
  });
  setInterval(refreshStats, 1000);
}

function fail(text) {
  fatal = true;
  say(text, 'bad');
  overlay(text);
  ui.talk.disabled = true;
  if (viewer) viewer.stop();
}

function offerNewLink() {
  askForToken(ui.renew).then((token) => {
    const url = new URL(location.href);
    url.searchParams.set('token', token);
    location.replace(url);
  }, () => {});
}

let watchingFrames = false;

/** One frame-callback chain per page, however many streams arrive after reconnects. */
function watchFirstFrame() {
  if (watchingFrames) return;
  watchingFrames = true;
  const onFrame = () => {
    if (ttffMs === null) {
      // From navigation start: what a person waits after opening the link.
      ttffMs = Math.round(performance.now());
      ui.ttff.textContent = `${(ttffMs / 1000).toFixed(2)} s`;
    }
    overlay('');
  };
  if ('requestVideoFrameCallback' in HTMLVideoElement.prototype) {
    const tick = () => {
      onFrame();
      ui.video.requestVideoFrameCallback(tick);
    };
    ui.video.requestVideoFrameCallback(tick);
  } else {
    ui.video.addEventListener('playing', onFrame);
  }
}

function setupTalk() {
  const down = (ev) => {
    ev.preventDefault();
    setTalking(true);
  };
  const up = () => setTalking(false);
  ui.talk.addEventListener('pointerdown', down);
  ui.talk.addEventListener('pointerup', up);
  ui.talk.addEventListener('pointerleave', up);
  ui.talk.addEventListener('pointercancel', up);
  ui.talk.addEventListener('contextmenu', (ev) => ev.preventDefault());
  window.addEventListener('keydown', (ev) => {
    if (ev.code === 'Space' && !ev.repeat) setTalking(true);
  });
  window.addEventListener('keyup', (ev) => {
    if (ev.code === 'Space') setTalking(false);
  });
}

async function setTalking(on) {
  if (!viewer) return;
  try {
    await viewer.talk(on);
  } catch (e) {
    say(explain(e), 'warn');
  }
}

async function refreshStats() {
  const pc = viewer && viewer.pc;
  if (!pc) {
    ui.path.textContent = '–';
    ui.bitrate.textContent = '–';
    return;
  }
  try {
    stats = await summarize(pc, stats);
  } catch {
    return;
  }
  ui.connState.textContent = pc.connectionState;
  ui.path.textContent = pathLabel(stats);
  ui.bitrate.textContent = formatKbps(stats.bitrateInKbps);
  ui.frames.textContent = `${stats.video.framesDecoded}${stats.video.framesPerSecond ? ` (${Math.round(stats.video.framesPerSecond)} fps)` : ''}`;
}

// Test and debugging hooks.
window.icewayStats = async () => {
  const pc = viewer && viewer.pc;
  let s = null;
  if (pc) {
    try {
      s = await summarize(pc, null);
    } catch {
      s = null;
    }
  }
  const w = viewer && viewer.signal.welcome;
  return {
    role: 'viewer',
    signal: viewer ? viewer.signal.state : 'closed',
    session: viewer ? viewer.signal.session : null,
    resumed: !!(w && w.resumed),
    camera: params.camera,
    cameraState: viewer ? viewer.cameraState : 'unknown',
    cameraSession: viewer ? viewer.cameraSession : null,
    connectionState: pc ? pc.connectionState : 'none',
    path: s ? s.path : null,
    localCandidateType: s ? s.localCandidateType : null,
    remoteCandidateType: s ? s.remoteCandidateType : null,
    framesDecoded: s ? s.video.framesDecoded : 0,
    framesPerSecond: s ? s.video.framesPerSecond : 0,
    bitrateKbps: stats ? stats.bitrateInKbps : 0,
    audioPacketsReceived: s ? s.audioIn.packetsReceived : 0,
    audioPacketsSent: s ? s.audioOut.packetsSent : 0,
    ttffMs,
    talking: viewer ? viewer.talking : false,
    iceError: viewer && viewer.iceError ? explain(viewer.iceError) : null,
    fatal,
    message: lastMessage,
    overlay: ui.overlay.hidden ? '' : ui.overlay.textContent,
  };
};
window.icewayTalk = (on) => setTalking(!!on);

start();
