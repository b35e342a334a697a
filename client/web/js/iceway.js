// Shared pieces of the Iceway reference pages: URL parameters, the signaling client
// (DESIGN §3) with reconnect, ICE configuration and getStats helpers. Plain ES module, no build.

/** Page parameters: ?token=JWT&camera=ID&relay=1&signal=wss://host/v1/ws */
export function pageParams(search = location.search) {
  const q = new URLSearchParams(search);
  const relay = q.get('relay');
  return {
    token: q.get('token') || '',
    camera: q.get('camera') || '',
    relayOnly: relay === '1' || relay === 'true',
    signalUrl: q.get('signal') || defaultSignalUrl(),
  };
}

function defaultSignalUrl() {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/v1/ws`;
}

/** The claims of a JWT, unverified: only used to word messages (the server decides). */
export function tokenClaims(token) {
  try {
    const part = token.split('.')[1];
    const json = atob(part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '='));
    return JSON.parse(json);
  } catch {
    return null;
  }
}

export function tokenExpired(token, now = Date.now()) {
  const claims = tokenClaims(token);
  return !!(claims && typeof claims.exp === 'number' && claims.exp * 1000 <= now);
}

/** Plain words for what went wrong, by DESIGN §3 error code or close code. */
export function explain(code, token, detail = '') {
  switch (code) {
    case 'unauthorized':
    case 4001:
      if (tokenExpired(token)) {
        return 'Your access link has expired. Ask the app for a new one.';
      }
      return `Your access token was refused${detail ? ` (${detail})` : ''}. Ask the app for a new link.`;
    case 'forbidden':
    case 4003:
      return 'This camera is not yours: your access does not include it.';
    case 'not-found':
      return 'That camera does not exist.';
    case 'rate-limited':
      return 'Too many requests; slowing down.';
    case 'too-large':
    case 4009:
      return 'A message was too large for the server.';
    case 4008:
      return 'The server closed the connection (policy).';
    case 4010:
      return 'This camera was started on another device with the same link, which took over.';
    default:
      return detail || `Error: ${code}`;
  }
}

/** ICE servers from a welcome frame or a GET /v1/ice-servers body (both shapes accepted). */
export function iceServersOf(value) {
  if (Array.isArray(value)) return value;
  if (value && Array.isArray(value.iceServers)) return value.iceServers;
  return [];
}

/** Fetches fresh ICE servers with the app token (DESIGN §2 credential API). */
export async function fetchIceServers(token, base = location.origin) {
  const res = await fetch(`${base}/v1/ice-servers`, { headers: { Authorization: `Bearer ${token}` } });
  if (!res.ok) throw new Error(`ice-servers: HTTP ${res.status}`);
  return iceServersOf(await res.json());
}

/**
 * The ICE servers a page uses for new peer connections: set from each `welcome`, refetched with
 * the app token once older than `maxAgeMs` so a long-running page never offers expired TURN
 * credentials; on a failed refetch the last ones are kept.
 */
export class IceServerCache {
  constructor(token, maxAgeMs = 10 * 60 * 1000) {
    this.token = token;
    this.maxAgeMs = maxAgeMs;
    this.servers = [];
    this.fetchedAt = 0;
  }

  set(value) {
    this.servers = iceServersOf(value);
    this.fetchedAt = Date.now();
  }

  async current() {
    if (Date.now() - this.fetchedAt > this.maxAgeMs) {
      try {
        this.servers = await fetchIceServers(this.token);
        this.fetchedAt = Date.now();
      } catch (e) {
        console.warn('refreshing ICE servers failed; using the welcome ones', e);
      }
    }
    return this.servers;
  }
}

const FATAL_CLOSE = new Set([4001, 4003, 4010]);

/**
 * The signaling connection. Emits 'frame' (detail: the parsed frame), 'state' (detail: one of
 * connecting | open | reconnecting | closed), 'fatal' (detail: {code, message}) and
 * 'token-expiring' (detail: {exp}, when no token provider could refresh it) events.
 * Reconnects with capped backoff after drops, signal-server restarts (close 1001) and network
 * changes; gives up only on unauthorized / forbidden / replaced, which a retry cannot fix.
 *
 * Before the token expires the server sends `token-expiring`; `tokenProvider` (an async function
 * returning a fresh token; by default `window.icewayRefreshToken`, which an app embedding the page
 * in a WebView can define) is asked for one, and it is sent on the open socket.
 */
export class Signal extends EventTarget {
  constructor({ url, token, tokenProvider }) {
    super();
    this.url = url;
    this.token = token;
    this.tokenProvider = tokenProvider;
    this.ws = null;
    this.welcome = null;
    this.attempt = 0;
    this.stopped = false;
    this.retryTimer = null;
    this.pingTimer = null;
    this.lastPong = 0;
    this.state = 'closed';
    window.addEventListener('online', () => this.reconnectNow());
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.stopHeartbeat();
    if (this.ws) this.ws.close(1000, 'bye');
    this.setState('closed');
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent('state', { detail: state }));
  }

  connect() {
    clearTimeout(this.retryTimer);
    this.setState(this.attempt === 0 ? 'connecting' : 'reconnecting');
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (e) {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      // Browsers cannot set headers on the upgrade: authenticate with the first frame, and ask
      // for the session the last welcome offered to resume (see docs/signaling.md).
      const auth = { type: 'auth', token: this.token };
      if (this.resume) auth.resume = this.resume;
      ws.send(JSON.stringify(auth));
    };
    ws.onmessage = (ev) => {
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (frame.type === 'welcome') {
        this.welcome = frame;
        this.resume = frame.resume ? { session: frame.session, token: frame.resume } : null;
        this.attempt = 0;
        this.startHeartbeat(frame.heartbeat);
        this.setState('open');
      } else if (frame.type === 'pong') {
        this.lastPong = Date.now();
        return;
      } else if (frame.type === 'token-expiring') {
        this.refreshToken(frame);
      }
      this.dispatchEvent(new CustomEvent('frame', { detail: frame }));
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.stopHeartbeat();
      if (this.stopped) return;
      if (FATAL_CLOSE.has(ev.code)) {
        this.stopped = true;
        this.setState('closed');
        this.dispatchEvent(new CustomEvent('fatal', {
          detail: { code: ev.code, message: explain(ev.code, this.token, ev.reason) },
        }));
        return;
      }
      this.scheduleReconnect();
    };
    ws.onerror = () => {
      // onclose follows and decides about retrying.
    };
  }

  async refreshToken(frame) {
    const provider = this.tokenProvider || globalThis.icewayRefreshToken;
    if (typeof provider === 'function') {
      try {
        const token = await provider();
        if (token && this.ws && this.ws.readyState === WebSocket.OPEN) {
          this.token = token;
          this.ws.send(JSON.stringify({ type: 'auth', token, ref: 'token-refresh' }));
          return;
        }
      } catch (e) {
        console.warn('the token provider failed', e);
      }
    }
    this.dispatchEvent(new CustomEvent('token-expiring', { detail: { exp: frame.exp } }));
  }

  scheduleReconnect() {
    if (this.stopped) return;
    this.setState('reconnecting');
    this.attempt += 1;
    const delay = Math.min(10000, 500 * 2 ** Math.min(this.attempt - 1, 5));
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  reconnectNow() {
    if (this.stopped) return;
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      // The network changed under an open socket: it may be dead without knowing it yet.
      this.ping();
      return;
    }
    this.attempt = 0;
    this.connect();
  }

  startHeartbeat(seconds) {
    this.stopHeartbeat();
    const period = Math.max(5, Number(seconds) || 20) * 1000;
    this.lastPong = Date.now();
    this.pingTimer = setInterval(() => {
      if (Date.now() - this.lastPong > 2.5 * period && this.ws) {
        // No pong for too long: the path is dead (network change); start over.
        this.ws.close(4000, 'heartbeat timeout');
        return;
      }
      this.ping();
    }, period);
  }

  stopHeartbeat() {
    clearInterval(this.pingTimer);
    this.pingTimer = null;
  }

  ping() {
    this.send({ type: 'ping' });
  }

  /** Sends a frame; false when the socket is not open (the caller re-syncs after reconnect). */
  send(frame) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }
}

/** RTCPeerConnection configuration from ICE servers and the relay-only switch. */
export function rtcConfig(iceServers, relayOnly) {
  return {
    iceServers,
    iceTransportPolicy: relayOnly ? 'relay' : 'all',
    bundlePolicy: 'max-bundle',
  };
}

/** Candidate frame for DESIGN §3 from an RTCIceCandidate. */
export function candidateFrame(to, c) {
  return { type: 'candidate', to, candidate: c.candidate, sdpMid: c.sdpMid, sdpMLineIndex: c.sdpMLineIndex };
}

/**
 * What getStats says about a connection: the selected candidate pair and its path, and the
 * RTP streams. `prev` (the previous result) turns byte counters into bitrates.
 */
export async function summarize(pc, prev) {
  const report = await pc.getStats();
  const byId = new Map();
  report.forEach((s) => byId.set(s.id, s));
  let pair = null;
  report.forEach((s) => {
    if (s.type === 'transport' && s.selectedCandidatePairId) pair = byId.get(s.selectedCandidatePairId) || pair;
  });
  if (!pair) {
    report.forEach((s) => {
      if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s;
    });
  }
  const local = pair ? byId.get(pair.localCandidateId) : null;
  const remote = pair ? byId.get(pair.remoteCandidateId) : null;
  const out = {
    at: Date.now(),
    localCandidateType: local ? local.candidateType : null,
    remoteCandidateType: remote ? remote.candidateType : null,
    path: null,
    video: { framesDecoded: 0, framesPerSecond: 0, bytesReceived: 0, framesSent: 0, bytesSent: 0 },
    audioIn: { packetsReceived: 0, bytesReceived: 0 },
    audioOut: { packetsSent: 0, bytesSent: 0 },
    bitrateInKbps: 0,
    bitrateOutKbps: 0,
  };
  if (local) {
    const relayed = local.candidateType === 'relay' || (remote && remote.candidateType === 'relay');
    out.path = relayed ? 'relay' : 'direct';
  }
  report.forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') {
      out.video.framesDecoded += s.framesDecoded || 0;
      out.video.framesPerSecond = s.framesPerSecond || out.video.framesPerSecond;
      out.video.bytesReceived += s.bytesReceived || 0;
    } else if (s.type === 'inbound-rtp' && s.kind === 'audio') {
      out.audioIn.packetsReceived += s.packetsReceived || 0;
      out.audioIn.bytesReceived += s.bytesReceived || 0;
    } else if (s.type === 'outbound-rtp' && s.kind === 'video') {
      out.video.framesSent += s.framesSent || 0;
      out.video.bytesSent += s.bytesSent || 0;
    } else if (s.type === 'outbound-rtp' && s.kind === 'audio') {
      out.audioOut.packetsSent += s.packetsSent || 0;
      out.audioOut.bytesSent += s.bytesSent || 0;
    }
  });
  if (prev && out.at > prev.at) {
    const secs = (out.at - prev.at) / 1000;
    const inBytes = out.video.bytesReceived + out.audioIn.bytesReceived - prev.video.bytesReceived - prev.audioIn.bytesReceived;
    const outBytes = out.video.bytesSent + out.audioOut.bytesSent - prev.video.bytesSent - prev.audioOut.bytesSent;
    out.bitrateInKbps = Math.max(0, Math.round((inBytes * 8) / secs / 1000));
    out.bitrateOutKbps = Math.max(0, Math.round((outBytes * 8) / secs / 1000));
  }
  return out;
}

export function pathLabel(summary) {
  if (!summary || !summary.path) return '–';
  if (summary.path === 'relay') return 'relay (TURN)';
  return `direct (${summary.localCandidateType || '?'})`;
}

export function formatKbps(kbps) {
  if (!kbps) return '0 kbit/s';
  return kbps >= 1000 ? `${(kbps / 1000).toFixed(1)} Mbit/s` : `${kbps} kbit/s`;
}

/** A small UI helper: set a message with a tone (ok | warn | bad | ''). */
export function showMessage(el, text, tone = '') {
  el.textContent = text;
  el.className = `message${tone ? ` ${tone}` : ''}`;
}

/** Words for a TURN ICE candidate error (RTCPeerConnectionIceErrorEvent). */
export function explainIceError(ev) {
  if (!ev || !/^turns?:/.test(ev.url || '')) return null;
  if (ev.errorCode === 401) {
    return 'The relay (TURN) server refused our credentials: they have expired or are wrong. Reload the page to get fresh ones.';
  }
  if (ev.errorCode === 486) return 'The relay (TURN) server is at its allocation quota.';
  if (ev.errorCode === 701) return null; // unreachable on one interface; other candidates may work
  return `The relay (TURN) server answered ${ev.errorCode} ${ev.errorText || ''}`.trim();
}
