// The camera side: publishes a MediaStream, one peer connection per viewer, and hands each
// viewer's push-to-talk audio to the app.

import { Emitter } from './emitter.js';
import { IcewayError } from './errors.js';
import { IceServerSource } from './ice.js';
import { onNetworkChange } from './network.js';
import type { PeerConnectionConstructor } from './peer.js';
import { PeerLink } from './peer.js';
import type { CameraOnlineFrame } from './protocol.js';
import type { SignalState, WebSocketConstructor } from './signal.js';
import { SignalClient } from './signal.js';

export interface CameraOptions {
  /** wss://host/v1/ws */
  signalUrl: string;
  /** An app token with `role: camera`; its `sub` is the camera id. */
  token: string;
  /** Asked for a fresh token before this one expires. */
  tokenProvider?: () => Promise<string>;
  /** The credential API's base URL: fresh ICE servers between welcomes (optional). */
  iceServersUrl?: string;
  /** What to send: video (and audio, which also opens the way back for viewers' talk). */
  stream: MediaStream;
  /** Relay only (TURN), never a direct path. */
  relayOnly?: boolean;
  WebSocket?: WebSocketConstructor;
  RTCPeerConnection?: PeerConnectionConstructor;
}

export interface CameraViewer {
  /** The viewer's session id. */
  readonly id: string;
  /** The viewer token's `sub`. */
  readonly user: string | undefined;
  readonly link: PeerLink;
}

export interface CameraEvents {
  state: SignalState;
  /** Published: viewers can watch now. */
  online: CameraOnlineFrame;
  'viewer-joined': CameraViewer;
  'viewer-left': { id: string };
  'viewer-state': { viewer: CameraViewer; state: RTCPeerConnectionState };
  /** A viewer's push-to-talk audio track. */
  'viewer-audio': { viewer: CameraViewer; track: MediaStreamTrack; stream: MediaStream };
  error: IcewayError;
  fatal: IcewayError;
  /** The token expires soon and no provider refreshed it: call `updateToken`. */
  'token-expiring': { exp: number };
}

export class Camera extends Emitter<CameraEvents> {
  readonly signal: SignalClient;
  readonly iceServers: IceServerSource;
  private readonly opts: CameraOptions;
  private stream: MediaStream;
  private readonly peers = new Map<string, CameraViewer>();
  private readonly restarts = new Map<string, number>();
  private offs: Array<() => void> = [];
  private started = false;

  constructor(opts: CameraOptions) {
    super();
    this.opts = opts;
    this.stream = opts.stream;
    this.signal = new SignalClient({
      url: opts.signalUrl,
      token: opts.token,
      tokenProvider: opts.tokenProvider,
      WebSocket: opts.WebSocket,
    });
    this.iceServers = new IceServerSource({ baseUrl: opts.iceServersUrl, token: () => this.signal.token });
  }

  /** Viewers now connected or connecting, by session id. */
  get viewers(): ReadonlyMap<string, CameraViewer> {
    return this.peers;
  }

  start(): void {
    if (this.started) return;
    this.started = true;
    const s = this.signal;
    this.offs.push(
      s.on('state', (st) => this.emit('state', st)),
      s.on('welcome', (w) => {
        this.iceServers.set(w.iceServers);
        // A resumed session keeps its calls; a new one publishes and waits for viewers afresh
        // (they re-watch when they see the camera's new session).
        if (w.resumed) {
          this.restartAll(true);
          return;
        }
        this.closeAll();
        s.send({ type: 'publish' });
      }),
      s.on('camera-online', (f) => this.emit('online', f)),
      s.on('token-refreshed', (f) => this.iceServers.set(f.iceServers)),
      s.on('token-expiring', (f) => this.emit('token-expiring', { exp: f.exp })),
      s.on('viewer-joined', (f) => {
        this.addViewer(f.viewer, f.user).catch((e: unknown) => this.emit('error', asError(e)));
      }),
      s.on('peer-left', (f) => this.removeViewer(f.peer)),
      s.on('offer', (f) => {
        const v = this.peers.get(f.from);
        if (v) v.link.onDescription('offer', f.sdp).catch((e: unknown) => this.emit('error', asError(e)));
      }),
      s.on('answer', (f) => {
        const v = this.peers.get(f.from);
        if (v) v.link.onDescription('answer', f.sdp).catch((e: unknown) => this.emit('error', asError(e)));
      }),
      s.on('candidate', (f) => {
        this.peers.get(f.from)?.link.onCandidate(f).catch(() => {});
      }),
      s.on('error', (e) => {
        // `peer` names the session that is gone (`ref` is only the frame that found out).
        if (e.code === 'peer-gone') {
          if (e.peer) this.removeViewer(e.peer);
          return;
        }
        this.emit('error', e);
      }),
      s.on('fatal', (e) => {
        this.closeAll();
        this.emit('fatal', e);
      }),
      onNetworkChange(() => this.onNetworkChange()),
    );
    s.start();
  }

  stop(): void {
    this.started = false;
    this.offs.forEach((off) => off());
    this.offs = [];
    if (this.signal.state === 'open') this.signal.send({ type: 'leave' });
    this.closeAll();
    this.signal.stop();
    this.iceServers.stop();
  }

  updateToken(token: string): void {
    this.signal.updateToken(token);
  }

  /**
   * Sends another stream (the other camera, say) to every viewer without renegotiating: tracks
   * are swapped on the existing senders.
   */
  async replaceStream(stream: MediaStream): Promise<void> {
    this.stream = stream;
    const video = stream.getVideoTracks()[0] ?? null;
    const audio = stream.getAudioTracks()[0] ?? null;
    for (const v of this.peers.values()) {
      for (const t of v.link.pc.getTransceivers()) {
        const kind = t.receiver.track.kind;
        if (t.direction === 'inactive' || t.direction === 'recvonly') continue;
        await t.sender.replaceTrack(kind === 'video' ? video : audio);
      }
    }
  }

  private async addViewer(id: string, user: string | undefined): Promise<void> {
    // A viewer that watches again (after its own failure) gets a fresh connection.
    this.removeViewer(id);
    const link = new PeerLink({
      signal: this.signal,
      peer: id,
      polite: false,
      iceServers: await this.iceServers.current(),
      relayOnly: this.opts.relayOnly,
      // Viewers that cannot renegotiate (the Rust CLI) still answer the first offer.
      offerTimeoutMs: 0,
      RTCPeerConnection: this.opts.RTCPeerConnection,
    });
    const viewer: CameraViewer = { id, user, link };
    this.peers.set(id, viewer);
    const stream = this.stream;
    for (const t of stream.getVideoTracks()) link.pc.addTransceiver(t, { direction: 'sendonly', streams: [stream] });
    const mic = stream.getAudioTracks()[0];
    // Audio is sendrecv even without a microphone: the viewer's push-to-talk comes back on it.
    link.pc.addTransceiver(mic ?? 'audio', { direction: mic ? 'sendrecv' : 'recvonly', streams: [stream] });
    link.on('track', (ev) => {
      if (ev.track.kind !== 'audio') return;
      this.emit('viewer-audio', { viewer, track: ev.track, stream: ev.streams[0] ?? new MediaStream([ev.track]) });
    });
    link.on('ice-error', (e) => this.emit('error', e));
    link.on('connection-state', (state) => {
      this.emit('viewer-state', { viewer, state });
      if (state === 'connected') this.restarts.set(id, 0);
      if (state === 'failed') {
        const n = this.restarts.get(id) ?? 0;
        if (n < 2) {
          // A network change on either side: an ICE restart with fresh TURN credentials keeps
          // the call (and its decoder) instead of starting over.
          this.restarts.set(id, n + 1);
          this.iceServers.current().then((servers) => link.restartIce(servers), () => link.restartIce());
        } else {
          this.removeViewer(id);
        }
      }
    });
    this.emit('viewer-joined', viewer);
  }

  private removeViewer(id: string): void {
    const v = this.peers.get(id);
    if (!v) return;
    this.peers.delete(id);
    this.restarts.delete(id);
    v.link.close();
    this.emit('viewer-left', { id });
  }

  private closeAll(): void {
    for (const id of [...this.peers.keys()]) this.removeViewer(id);
  }

  private onNetworkChange(): void {
    this.signal.checkConnection();
    this.restartAll(false);
  }

  /** ICE restarts for every viewer, or only those whose connection is not up. */
  private restartAll(onlyBroken: boolean): void {
    if (this.peers.size === 0) return;
    this.iceServers.current().then((servers) => {
      for (const v of this.peers.values()) {
        if (!onlyBroken || v.link.connectionState !== 'connected') v.link.restartIce(servers);
      }
    }, () => {});
  }
}

function asError(e: unknown): IcewayError {
  return e instanceof IcewayError ? e : new IcewayError({ code: 'connection-failed', message: String((e as Error)?.message ?? e), cause: e });
}
