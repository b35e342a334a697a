// The signaling client (docs/signaling.md): authenticates with the first frame, reconnects with
// jittered backoff, resumes its session after a drop, refreshes its token on the open socket,
// keeps a heartbeat, and turns frames into typed events.

import { Emitter } from './emitter.js';
import { CloseCode, IcewayError } from './errors.js';
import type {
  AnswerFrame, CameraOfflineFrame, CameraOnlineFrame, CandidateFrame, ClientFrame, OfferFrame,
  PeerLeftFrame, ServerFrame, TokenExpiringFrame, TokenRefreshedFrame, ViewerJoinedFrame, WelcomeFrame,
} from './protocol.js';
import { parseServerFrame } from './protocol.js';

export type SignalState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface SignalEvents {
  state: SignalState;
  /** Every frame the server sent, after the client's own handling. */
  frame: ServerFrame;
  /** Authenticated. `resumed` tells whether the old session (and its calls) came back. */
  welcome: WelcomeFrame;
  'camera-online': CameraOnlineFrame;
  'camera-offline': CameraOfflineFrame;
  'viewer-joined': ViewerJoinedFrame;
  'peer-left': PeerLeftFrame;
  offer: OfferFrame;
  answer: AnswerFrame;
  candidate: CandidateFrame;
  /** The token runs out at `exp` and no `tokenProvider` gave a fresh one: call `updateToken`. */
  'token-expiring': TokenExpiringFrame;
  'token-refreshed': TokenRefreshedFrame;
  /** A frame was refused; the connection stays open. */
  error: IcewayError;
  /** The client stopped for good: a retry cannot fix this (bad token, replaced, …). */
  fatal: IcewayError;
}

/** The parts of the WHATWG WebSocket the client uses (browsers, Node ≥ 22, or `ws`). */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface SignalOptions {
  /** wss://host/v1/ws */
  url: string;
  token: string;
  /** Asked for a fresh token before the current one expires, and once after a 4001 close. */
  tokenProvider?: () => Promise<string>;
  /** Defaults to the global WebSocket. */
  WebSocket?: WebSocketConstructor;
  /** First reconnect delay (default 500 ms); doubles per attempt up to `maxBackoffMs` (10 s). */
  backoffMs?: number;
  maxBackoffMs?: number;
  /** How long a probe ping waits for its pong after a network change (default 4 s). */
  probeTimeoutMs?: number;
  /** How long one connect may take until `welcome` (default 10 s, 30 s when resuming). */
  welcomeTimeoutMs?: number;
  /** A source of randomness for the jitter (tests pin it). */
  random?: () => number;
  /**
   * Listen to the page's `online` event and probe the socket (default true where a window
   * exists): a network change can leave a socket dead without an error for a minute.
   */
  watchNetwork?: boolean;
}

const CONNECTING = 0;
const OPEN = 1;
const FRESH_CONNECT_MS = 2_000;

/** Closes after which reconnecting cannot help. 4001 first asks the token provider. */
const FATAL_CLOSES = new Set([4003, 4010, 4011]);

export class SignalClient extends Emitter<SignalEvents> {
  private ws: WebSocketLike | null = null;
  private _state: SignalState = 'idle';
  private _token: string;
  private _welcome: WelcomeFrame | null = null;
  private resume: { session: string; token: string } | null = null;
  private attempt = 0;
  private stopped = true;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private pingTimer: ReturnType<typeof setInterval> | null = null;
  private probeTimer: ReturnType<typeof setTimeout> | null = null;
  private welcomeTimer: ReturnType<typeof setTimeout> | null = null;
  private lastPong = 0;
  private connectStartedAt = 0;
  private refreshedAfterUnauthorized = false;
  private refreshSeq = 0;
  private readonly opts: SignalOptions;
  private readonly onOnline = () => this.checkConnection();

  constructor(opts: SignalOptions) {
    super();
    this.opts = opts;
    this._token = opts.token;
  }

  get state(): SignalState {
    return this._state;
  }

  get token(): string {
    return this._token;
  }

  /** The last welcome: session id, role, ICE servers. */
  get welcome(): WelcomeFrame | null {
    return this._welcome;
  }

  get session(): string | null {
    return this._welcome ? this._welcome.session : null;
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.attempt = 0;
    const g = globalThis as { addEventListener?: (t: string, f: () => void) => void };
    if ((this.opts.watchNetwork ?? true) && typeof g.addEventListener === 'function') {
      g.addEventListener('online', this.onOnline);
    }
    this.connect();
  }

  /** Closes the socket for good (1000) and stops reconnecting. */
  stop(): void {
    this.stopped = true;
    this.clearTimers();
    const g = globalThis as { removeEventListener?: (t: string, f: () => void) => void };
    if (typeof g.removeEventListener === 'function') g.removeEventListener('online', this.onOnline);
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      try {
        ws.close(1000, 'bye');
      } catch {
        // already closing
      }
    }
    this.setState('closed');
  }

  /** Sends a frame; false when the socket is not open (the caller re-syncs on the next welcome). */
  send(frame: ClientFrame): boolean {
    const ws = this.ws;
    if (!ws || ws.readyState !== OPEN || this._state !== 'open') return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  /** Uses a fresh token: sent on the open socket at once, and on every later connect. */
  updateToken(token: string): void {
    this._token = token;
    this.refreshSeq += 1;
    if (this.ws && this.ws.readyState === OPEN && this._state === 'open') {
      this.ws.send(JSON.stringify({ type: 'auth', token, ref: `token-refresh-${this.refreshSeq}` }));
    }
  }

  /**
   * After a network change: ping, and if no pong comes within `probeTimeoutMs` drop the socket
   * and reconnect (resuming the session). Reconnects at once when no socket is open.
   */
  checkConnection(): void {
    if (this.stopped) return;
    const ws = this.ws;
    // A connect started just now (by an `online` event and a network-change event of the same
    // change) is left to finish; an older one may be stuck on the previous network.
    if (ws && ws.readyState === CONNECTING && Date.now() - this.connectStartedAt < FRESH_CONNECT_MS) return;
    if (!ws || ws.readyState !== OPEN) {
      this.attempt = 0;
      this.connect();
      return;
    }
    if (this.probeTimer) return;
    const sentAt = Date.now();
    this.sendRaw({ type: 'ping' });
    this.probeTimer = setTimeout(() => {
      this.probeTimer = null;
      if (this.ws === ws && this.lastPong < sentAt) this.drop(ws, 'probe timeout');
    }, this.opts.probeTimeoutMs ?? 4_000);
  }

  private setState(state: SignalState): void {
    if (this._state === state) return;
    this._state = state;
    this.emit('state', state);
  }

  private connect(): void {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.ws) this.drop(this.ws, 'reconnect', false);
    this.setState(this._welcome || this.attempt > 0 ? 'reconnecting' : 'connecting');
    const Ctor = this.opts.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!Ctor) {
      this.fail(new IcewayError({ code: 'closed', message: 'no WebSocket implementation: pass options.WebSocket' }));
      return;
    }
    let ws: WebSocketLike;
    try {
      ws = new Ctor(this.opts.url);
    } catch (e) {
      this.fail(new IcewayError({ code: 'closed', message: `bad signaling URL ${this.opts.url}: ${(e as Error).message}` }));
      return;
    }
    this.ws = ws;
    this.connectStartedAt = Date.now();
    // Every attempt has a deadline: a socket that neither opens nor fails (a SYN lost on a
    // network that just changed, a server that accepted and went quiet) must not hold the
    // client in 'reconnecting' for good. A resume may wait for the server to find the old
    // replica dead, hence the longer default.
    if (this.welcomeTimer) clearTimeout(this.welcomeTimer);
    this.welcomeTimer = setTimeout(() => {
      this.welcomeTimer = null;
      if (this.ws === ws) this.drop(ws, 'no welcome in time');
    }, this.opts.welcomeTimeoutMs ?? (this.resume ? 30_000 : 10_000));
    ws.onopen = () => {
      // Browsers cannot set headers on the upgrade: the token goes in the first frame, with the
      // session the last welcome offered to resume.
      const auth: ClientFrame = { type: 'auth', token: this._token };
      if (this.resume) auth.resume = this.resume;
      ws.send(JSON.stringify(auth));
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      const frame = parseServerFrame(ev.data);
      if (frame) this.onFrame(frame);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.stopHeartbeat();
      if (!this.stopped) this.onClosed(ev.code, ev.reason);
    };
    ws.onerror = () => {
      // onclose follows and decides.
    };
  }

  private onClosed(code: number, reason: string): void {
    if (FATAL_CLOSES.has(code)) {
      this.fail(IcewayError.fromClose(code, reason) ?? new IcewayError({ code: 'closed', closeCode: code, message: reason }));
      return;
    }
    if (code === 4001) {
      // The token was refused at connect or ran out: one fresh token from the provider may fix
      // it; a second refusal in a row is final.
      this.resume = null;
      const provider = this.opts.tokenProvider;
      if (provider && !this.refreshedAfterUnauthorized) {
        this.refreshedAfterUnauthorized = true;
        this.setState('reconnecting');
        provider().then((t) => {
          this._token = t;
          if (!this.stopped) this.connect();
        }, () => this.fail(IcewayError.fromClose(code, reason) as IcewayError));
        return;
      }
      this.fail(IcewayError.fromClose(code, reason) as IcewayError);
      return;
    }
    this.scheduleReconnect(code === 1001);
  }

  private fail(err: IcewayError): void {
    this.stopped = true;
    this.clearTimers();
    this.setState('closed');
    this.emit('fatal', err);
  }

  private onFrame(frame: ServerFrame): void {
    switch (frame.type) {
      case 'welcome':
        if (this.welcomeTimer) clearTimeout(this.welcomeTimer);
        this.welcomeTimer = null;
        this._welcome = frame;
        this.resume = frame.resume ? { session: frame.session, token: frame.resume } : null;
        this.attempt = 0;
        this.refreshedAfterUnauthorized = false;
        this.startHeartbeat(frame.heartbeat);
        this.setState('open');
        this.emit('welcome', frame);
        break;
      case 'pong':
        this.lastPong = Date.now();
        break;
      case 'token-expiring':
        this.refreshToken(frame);
        break;
      case 'token-refreshed':
        this.emit('token-refreshed', frame);
        break;
      case 'error': {
        const err = IcewayError.fromFrame(frame);
        this.emit('error', err);
        break;
      }
      case 'camera-online':
      case 'camera-offline':
      case 'viewer-joined':
      case 'peer-left':
      case 'offer':
      case 'answer':
      case 'candidate':
        (this.emit as (t: string, v: ServerFrame) => void)(frame.type, frame);
        break;
    }
    this.emit('frame', frame);
  }

  private refreshToken(frame: TokenExpiringFrame): void {
    const provider = this.opts.tokenProvider;
    if (!provider) {
      this.emit('token-expiring', frame);
      return;
    }
    provider().then(
      (t) => this.updateToken(t),
      (e: unknown) => {
        console.warn('iceway: the token provider failed', e);
        this.emit('token-expiring', frame);
      },
    );
  }

  private scheduleReconnect(immediately: boolean): void {
    if (this.stopped) return;
    this.setState('reconnecting');
    const base = this.opts.backoffMs ?? 500;
    const max = this.opts.maxBackoffMs ?? 10_000;
    const ceiling = Math.min(max, base * 2 ** Math.min(this.attempt, 16));
    this.attempt += 1;
    // "Equal jitter": never zero, so thousands of clients dropped by one server restart
    // spread over the window instead of arriving in the same millisecond.
    const random = this.opts.random ?? Math.random;
    const delay = immediately && this.attempt === 1 ? random() * base : ceiling / 2 + random() * (ceiling / 2);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  private drop(ws: WebSocketLike, why: string, reconnect = true): void {
    if (this.ws === ws) this.ws = null;
    ws.onclose = null;
    ws.onmessage = null;
    try {
      // 4000: reconnecting, not leaving; the server keeps the session for the resume.
      ws.close(CloseCode.Reconnecting, why);
    } catch {
      // already closed
    }
    this.stopHeartbeat();
    if (reconnect && !this.stopped) this.scheduleReconnect(true);
  }

  private startHeartbeat(seconds: number | undefined): void {
    this.stopHeartbeat();
    const period = Math.max(5, Number(seconds) || 20) * 1000;
    this.lastPong = Date.now();
    const ws = this.ws;
    this.pingTimer = setInterval(() => {
      if (!ws || this.ws !== ws) return;
      if (Date.now() - this.lastPong > 2.5 * period) {
        // No pong for too long: the path is dead (a network change); start over.
        this.drop(ws, 'heartbeat timeout');
        return;
      }
      this.sendRaw({ type: 'ping' });
    }, period);
  }

  private stopHeartbeat(): void {
    if (this.pingTimer) clearInterval(this.pingTimer);
    this.pingTimer = null;
    if (this.probeTimer) clearTimeout(this.probeTimer);
    this.probeTimer = null;
  }

  private clearTimers(): void {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.welcomeTimer) clearTimeout(this.welcomeTimer);
    this.welcomeTimer = null;
    this.stopHeartbeat();
  }

  private sendRaw(frame: ClientFrame): void {
    const ws = this.ws;
    if (ws && ws.readyState === OPEN) ws.send(JSON.stringify(frame));
  }
}
