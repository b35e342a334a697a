// Viewer page: watches one camera, shows the live video, the connection state, the path (relay or
// direct) and the bitrate, and talks back with push-to-talk.
import {
  Signal, pageParams, rtcConfig, IceServerCache, candidateFrame, summarize,
  pathLabel, formatKbps, showMessage, explain, explainIceError, tokenClaims, tokenExpired,
} from './iceway.js';

const params = pageParams();
const ice = new IceServerCache(params.token);
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
};

let signal = null;
let pc = null;
let cameraSession = null;
let pending = [];
let stats = null;
let ttffMs = null;
let lastMessage = '';
let cameraState = 'unknown';
let iceError = null;
let fatal = false;
let mic = null;
let talking = false;

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
    fail(explain('unauthorized', params.token));
    return;
  }
  ui.who.textContent = `${claims.sub} → ${params.camera}`;
  signal = new Signal({ url: params.signalUrl, token: params.token });
  signal.addEventListener('state', (ev) => onSignalState(ev.detail));
  signal.addEventListener('token-expiring', () => {
    say('Your access link expires in a minute: ask the app for a new one to keep going.', 'warn');
  });
  signal.addEventListener('frame', (ev) => onFrame(ev.detail).catch((e) => say(`Error: ${e.message}`, 'bad')));
  signal.addEventListener('fatal', (ev) => fail(ev.detail.message));
  signal.start();
  setupTalk();
  ui.sound.addEventListener('click', () => {
    ui.video.muted = !ui.video.muted;
    ui.sound.textContent = ui.video.muted ? 'Sound on' : 'Sound off';
    ui.video.play().catch(() => {});
  });
  setInterval(refreshStats, 1000);
}

function fail(text) {
  fatal = true;
  say(text, 'bad');
  overlay(text);
  closePeer();
  if (signal) signal.stop();
}

function onSignalState(state) {
  ui.signalState.textContent = state;
  if (state === 'reconnecting' && !fatal) {
    say(pc && pc.connectionState === 'connected'
      ? 'Lost the signaling server; reconnecting. The video keeps playing.'
      : 'Lost the signaling server; reconnecting…', 'warn');
  }
}

async function onFrame(f) {
  switch (f.type) {
    case 'token-refreshed':
      // A fresh token came with fresh TURN credentials; later fetches use the new token.
      ice.token = signal.token;
      ice.set(f.iceServers);
      break;
    case 'welcome':
      ice.set(f.iceServers);
      // The same session, taken back after a dropped socket: the calls go on as they were.
      if (f.resumed) {
        say('Reconnected.', 'ok');
        break;
      }
      signal.send({ type: 'watch', camera: params.camera });
      break;
    case 'camera-offline':
      if (f.camera && f.camera !== params.camera) return;
      cameraState = 'offline';
      closePeer();
      say('The camera is offline. Waiting for it to come online…', 'warn');
      overlay('Camera offline — waiting for it to come online');
      break;
    case 'camera-online':
      if (f.camera && f.camera !== params.camera) return;
      cameraState = 'online';
      say('The camera is online. Connecting…', 'ok');
      if (!pc || pc.connectionState !== 'connected') overlay('Connecting to the camera…');
      break;
    case 'offer':
      await onOffer(f);
      break;
    case 'candidate':
      if (pc && f.from === cameraSession && pc.remoteDescription) await addCandidate(f);
      else pending.push(f);
      break;
    case 'peer-left':
      if (f.peer === cameraSession) {
        closePeer();
        say('The camera left. Waiting for it to come back…', 'warn');
        overlay('Camera offline — waiting for it to come online');
      }
      break;
    case 'error':
      if (f.code === 'forbidden' || f.code === 'unauthorized' || f.code === 'not-found') {
        fail(explain(f.code, params.token, f.message));
      } else if (f.code !== 'peer-gone') {
        say(explain(f.code, params.token, f.message), 'warn');
      }
      break;
    default:
      break;
  }
}

async function addCandidate(f) {
  try {
    await pc.addIceCandidate({ candidate: f.candidate, sdpMid: f.sdpMid, sdpMLineIndex: f.sdpMLineIndex });
  } catch (e) {
    console.warn('addIceCandidate', e);
  }
}


async function onOffer(f) {
  // The same camera session offering again is an ICE restart or renegotiation: keep the
  // connection. A new session (the camera reconnected) gets a fresh connection.
  const renegotiate = pc && f.from === cameraSession && pc.signalingState !== 'closed';
  if (!renegotiate) {
    closePeer();
    cameraSession = f.from;
    pc = newPeer(await ice.current());
  }
  try {
    await pc.setRemoteDescription({ type: 'offer', sdp: f.sdp });
  } catch (e) {
    if (!renegotiate) throw e;
    // The camera replaced its connection (new certificate): start over with a fresh one.
    closePeer();
    cameraSession = f.from;
    pc = newPeer(await ice.current());
    await pc.setRemoteDescription({ type: 'offer', sdp: f.sdp });
  }
  const audio = audioTransceiver();
  if (audio && (audio.direction === 'recvonly' || audio.direction === 'inactive')) {
    // Ready to talk back without renegotiating: the mic track is attached while the button is held.
    audio.direction = 'sendrecv';
  }
  if (audio && talking && mic) await audio.sender.replaceTrack(mic);
  const answer = await pc.createAnswer();
  await pc.setLocalDescription(answer);
  signal.send({ type: 'answer', to: cameraSession, sdp: pc.localDescription.sdp });
  const queued = pending.filter((c) => c.from === cameraSession);
  pending = [];
  for (const c of queued) await addCandidate(c);
  ui.talk.disabled = false;
}

function newPeer(servers) {
  const peer = new RTCPeerConnection(rtcConfig(servers, params.relayOnly));
  iceError = null;
  const remote = new MediaStream();
  peer.ontrack = (ev) => {
    remote.addTrack(ev.track);
    ui.video.srcObject = remote;
    ui.video.play().catch(() => {});
  };
  peer.onicecandidate = (ev) => {
    if (ev.candidate && cameraSession) signal.send(candidateFrame(cameraSession, ev.candidate));
  };
  peer.onicecandidateerror = (ev) => {
    const why = explainIceError(ev);
    if (why) {
      iceError = why;
      say(why, 'bad');
    }
  };
  peer.onconnectionstatechange = () => {
    if (peer !== pc) return;
    const s = peer.connectionState;
    ui.connState.textContent = s;
    if (s === 'connected') {
      say('Live.', 'ok');
    } else if (s === 'disconnected') {
      say('Connection interrupted; reconnecting…', 'warn');
    } else if (s === 'failed') {
      if (iceError) {
        say(`No video: ${iceError}`, 'bad');
        overlay('No video: the relay refused our credentials');
      } else {
        say('Connection failed; asking the camera to reconnect…', 'warn');
        overlay('Reconnecting…');
      }
      // A new watch makes the camera offer again (after a network change, say).
      signal.send({ type: 'watch', camera: params.camera });
    }
  };
  watchFirstFrame();
  return peer;
}

function watchFirstFrame() {
  if (ttffMs !== null) return;
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

function audioTransceiver() {
  if (!pc) return null;
  return pc.getTransceivers().find((t) => t.receiver && t.receiver.track && t.receiver.track.kind === 'audio') || null;
}

function closePeer() {
  if (pc) pc.close();
  pc = null;
  cameraSession = null;
  pending = [];
  ui.talk.disabled = true;
  ui.connState.textContent = '–';
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
  if (on === talking) return;
  talking = on;
  ui.talk.classList.toggle('active', on);
  ui.talk.textContent = on ? 'Talking… release to stop' : 'Hold to talk';
  const t = audioTransceiver();
  try {
    if (on) {
      if (!mic) {
        const s = await navigator.mediaDevices.getUserMedia({ audio: true });
        mic = s.getAudioTracks()[0];
      }
      // Released while the permission prompt was open.
      if (!talking) return;
      if (t) await t.sender.replaceTrack(mic);
    } else if (t) {
      await t.sender.replaceTrack(null);
    }
  } catch (e) {
    talking = false;
    ui.talk.classList.remove('active');
    ui.talk.textContent = 'Hold to talk';
    say(`Cannot use the microphone: ${e.message}`, 'warn');
  }
}

async function refreshStats() {
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
  let s = null;
  if (pc) {
    try {
      s = await summarize(pc, null);
    } catch {
      s = null;
    }
  }
  return {
    role: 'viewer',
    signal: signal ? signal.state : 'closed',
    session: signal && signal.welcome ? signal.welcome.session : null,
    resumed: !!(signal && signal.welcome && signal.welcome.resumed),
    camera: params.camera,
    cameraState,
    cameraSession,
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
    talking,
    iceError,
    fatal,
    message: lastMessage,
    overlay: ui.overlay.hidden ? '' : ui.overlay.textContent,
  };
};
window.icewayTalk = (on) => setTalking(!!on);

start();
