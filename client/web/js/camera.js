// Camera page: publishes this device's camera and microphone, one RTCPeerConnection per viewer,
// and plays what viewers say with push-to-talk.
import {
  Signal, pageParams, rtcConfig, IceServerCache, candidateFrame, summarize,
  pathLabel, formatKbps, showMessage, explain, explainIceError, tokenClaims, tokenExpired,
} from './iceway.js';

const params = pageParams();
const ice = new IceServerCache(params.token);
const ui = {
  who: document.getElementById('who'),
  preview: document.getElementById('preview'),
  overlay: document.getElementById('overlay'),
  message: document.getElementById('message'),
  signalState: document.getElementById('signal-state'),
  viewerCount: document.getElementById('viewer-count'),
  bitrate: document.getElementById('bitrate'),
  viewers: document.getElementById('viewers'),
};

/** viewer session id -> { viewer, user, pc, pending: [], stats, restarted, audio } */
const peers = new Map();
let stream = null;
let signal = null;
let lastMessage = '';

function say(text, tone) {
  lastMessage = text;
  showMessage(ui.message, text, tone);
}

async function start() {
  const claims = tokenClaims(params.token);
  if (!params.token || !claims) {
    say('This link has no valid access token. Open the camera link from the app.', 'bad');
    ui.overlay.textContent = 'No access token';
    return;
  }
  if (tokenExpired(params.token)) {
    say(explain('unauthorized', params.token), 'bad');
    ui.overlay.textContent = 'Access expired';
    return;
  }
  ui.who.textContent = `camera ${claims.sub}`;
  try {
    stream = await getMedia();
  } catch (e) {
    say(`Cannot open the camera: ${e.message}. Allow camera access and reload.`, 'bad');
    ui.overlay.textContent = 'No camera';
    return;
  }
  ui.preview.srcObject = stream;
  ui.overlay.hidden = true;

  signal = new Signal({ url: params.signalUrl, token: params.token });
  signal.addEventListener('state', (ev) => onSignalState(ev.detail));
  signal.addEventListener('token-expiring', () => {
    say('Your access link expires in a minute: ask the app for a new one to keep going.', 'warn');
  });
  signal.addEventListener('frame', (ev) => onFrame(ev.detail).catch((e) => say(`Error: ${e.message}`, 'bad')));
  signal.addEventListener('fatal', (ev) => {
    say(ev.detail.message, 'bad');
    closeAll();
  });
  signal.start();
  setInterval(refreshStats, 1000);
}

async function getMedia() {
  const video = { width: { ideal: 1280 }, height: { ideal: 720 }, facingMode: 'environment' };
  try {
    return await navigator.mediaDevices.getUserMedia({ video, audio: true });
  } catch (e) {
    // A camera without a usable microphone still streams video.
    return navigator.mediaDevices.getUserMedia({ video, audio: false });
  }
}

function onSignalState(state) {
  ui.signalState.textContent = state;
  if (state === 'reconnecting') say('Lost the signaling server; reconnecting… Viewers already connected keep watching.', 'warn');
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
      signal.send({ type: 'publish' });
      say('Online. Waiting for viewers.', 'ok');
      break;
    case 'viewer-joined':
      await addViewer(f.viewer, f.user);
      break;
    case 'answer': {
      const p = peers.get(f.from);
      if (!p) return;
      await p.pc.setRemoteDescription({ type: 'answer', sdp: f.sdp });
      for (const c of p.pending.splice(0)) await addCandidate(p, c);
      break;
    }
    case 'candidate': {
      const p = peers.get(f.from);
      if (!p) return;
      if (p.pc.remoteDescription) await addCandidate(p, f);
      else p.pending.push(f);
      break;
    }
    case 'peer-left':
      removeViewer(f.peer);
      break;
    case 'error':
      if (f.code === 'peer-gone') {
        // `peer` names the session that is gone (`ref` is the frame that found out).
        if (f.peer && peers.has(f.peer)) removeViewer(f.peer);
        return;
      }
      say(explain(f.code, params.token, f.message), f.code === 'rate-limited' ? 'warn' : 'bad');
      break;
    default:
      break;
  }
}

async function addCandidate(p, f) {
  try {
    await p.pc.addIceCandidate({ candidate: f.candidate, sdpMid: f.sdpMid, sdpMLineIndex: f.sdpMLineIndex });
  } catch (e) {
    console.warn('addIceCandidate', e);
  }
}


async function addViewer(viewer, user) {
  removeViewer(viewer);
  const pc = new RTCPeerConnection(rtcConfig(await ice.current(), params.relayOnly));
  const p = { viewer, user, pc, pending: [], stats: null, restarted: false, audio: null, iceError: null };
  peers.set(viewer, p);
  for (const t of stream.getVideoTracks()) pc.addTransceiver(t, { direction: 'sendonly', streams: [stream] });
  const mic = stream.getAudioTracks()[0];
  // sendrecv even without a mic: the viewer's push-to-talk audio comes back on this m-line.
  pc.addTransceiver(mic || 'audio', { direction: mic ? 'sendrecv' : 'recvonly', streams: [stream] });
  pc.onicecandidate = (ev) => {
    if (ev.candidate) signal.send(candidateFrame(viewer, ev.candidate));
  };
  pc.onicecandidateerror = (ev) => {
    const why = explainIceError(ev);
    if (why) {
      p.iceError = why;
      say(why, 'bad');
    }
  };
  pc.ontrack = (ev) => {
    if (ev.track.kind !== 'audio') return;
    const audio = new Audio();
    audio.autoplay = true;
    audio.srcObject = new MediaStream([ev.track]);
    audio.play().catch(() => say('Tap anywhere to hear viewers talking.', 'warn'));
    document.addEventListener('pointerdown', () => audio.play().catch(() => {}), { once: true });
    p.audio = audio;
  };
  pc.onconnectionstatechange = () => {
    renderViewers();
    if (pc.connectionState === 'connected') {
      p.restarted = false;
      say(`${peers.size} viewer(s) watching.`, 'ok');
    } else if (pc.connectionState === 'failed') {
      if (!p.restarted) {
        // A network change: try an ICE restart once before giving the viewer up.
        p.restarted = true;
        offer(p, true).catch((e) => console.warn('ice restart', e));
      } else {
        removeViewer(viewer);
        if (p.iceError) say(p.iceError, 'bad');
      }
    }
  };
  await offer(p, false);
  renderViewers();
}

async function offer(p, iceRestart) {
  const desc = await p.pc.createOffer({ iceRestart });
  await p.pc.setLocalDescription(desc);
  signal.send({ type: 'offer', to: p.viewer, sdp: p.pc.localDescription.sdp });
}

function removeViewer(viewer) {
  const p = peers.get(viewer);
  if (!p) return;
  peers.delete(viewer);
  p.pc.close();
  if (p.audio) p.audio.srcObject = null;
  renderViewers();
}

function closeAll() {
  for (const viewer of [...peers.keys()]) removeViewer(viewer);
}

function renderViewers() {
  ui.viewerCount.textContent = String(peers.size);
  ui.viewers.replaceChildren(...[...peers.values()].map((p) => {
    const li = document.createElement('li');
    const talking = p.stats && p.prevAudioIn !== undefined && p.stats.audioIn.packetsReceived > p.prevAudioIn;
    li.textContent = `${p.user || p.viewer} · ${p.pc.connectionState} · ${pathLabel(p.stats)}${talking ? ' · talking' : ''}`;
    return li;
  }));
}

async function refreshStats() {
  let kbps = 0;
  for (const p of peers.values()) {
    p.prevAudioIn = p.stats ? p.stats.audioIn.packetsReceived : undefined;
    try {
      p.stats = await summarize(p.pc, p.stats);
      kbps += p.stats.bitrateOutKbps;
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
  for (const p of peers.values()) {
    let s = null;
    try {
      s = await summarize(p.pc, null);
    } catch {
      s = null;
    }
    viewers.push({
      viewer: p.viewer,
      user: p.user,
      connectionState: p.pc.connectionState,
      path: s ? s.path : null,
      localCandidateType: s ? s.localCandidateType : null,
      framesSent: s ? s.video.framesSent : 0,
      audioPacketsSent: s ? s.audioOut.packetsSent : 0,
      audioPacketsReceived: s ? s.audioIn.packetsReceived : 0,
      iceError: p.iceError,
    });
  }
  return {
    role: 'camera',
    signal: signal ? signal.state : 'closed',
    session: signal && signal.welcome ? signal.welcome.session : null,
    hasAudio: !!(stream && stream.getAudioTracks().length),
    viewers,
    message: lastMessage,
  };
};

start();
