// The viewer side: watches one camera, owns the peer connection to it, reconnects by itself and
// talks back with push-to-talk.

import { Emitter } from './emitter.js';
import { IcewayError } from './errors.js';
import { IceServerSource } from './ice.js';
import { mediaError } from './media.js';
import { onNetworkChange } from './network.js';
import type { PeerConnectionConstructor } from './peer.js';
import { PeerLink } from './peer.js';
import type { SignalState, WebSocketConstructor } from './signal.js';
import { SignalClient } from './signal.js';

export interface ViewerOptions {
  signalUrl: string;
  /** An app token with `role: viewer` whose `cams` include `camera`. */
  token: string;
  camera: string;
  tokenProvider?: () => Promise<string>;
  iceServersUrl?: string;
  relayOnly?: boolean;
  WebSocket?: WebSocketConstructor;
  RTCPeerConnection?: PeerConnectionConstructor;
  /** How the microphone is opened for push-to-talk (default: getUserMedia({audio: true})). */
  getMicrophone?: () => Promise<MediaStreamTrack>;
}

export type CameraState = 'unknown' | 'online' | 'offline';

export interface ViewerEvents {
  state: SignalState;
  'camera-state': CameraState;
  /** The camera's media; also after a reconnect (a new MediaStream then). */
  stream: MediaStream;
  'connection-state': RTCPeerConnectionState | 'none';
  talking: boolean;
  error: IcewayError;
  fatal: IcewayError;
  'token-expiring': { exp: number };
}

export class Viewer extends Emitter<ViewerEvents> {
  readonly signal: SignalClient;
  readonly iceServers: IceServerSource;
  readonly camera: string;
  private readonly opts: ViewerOptions;
  private link: PeerLink | null = null;
  private _cameraSession: string | null = null;
  private _cameraState: CameraState = 'unknown';
  private mic: MediaStreamTrack | null = null;
  private _talking = false;
  private offs: Array<() => void> = [];
  private started = false;
  private restarts = 0;

  constructor(opts: ViewerOptions) {
    super();
    this.opts = opts;
    this.camera = opts.camera;
    this.signal = new SignalClient({ url: opts.signalUrl, token: opts.token, tokenProvider: opts.tokenProvider, WebSocket: opts.WebSocket });
    this.iceServers = new IceServerSource({ baseUrl: opts.iceServersUrl, token: () => this.signal.token });
  }

  get pc(): RTCPeerConnection | null {
    return this.link ? this.link.pc : null;
  }

  get cameraSession(): string | null {
    return this._cameraSession;
  }

  get cameraState(): CameraState {
    return this._cameraState;
  }

  get talking(): boolean {
    return this._talking;
  }

  /** The last TURN refusal seen by the current connection, if any. */
  get iceError(): IcewayError | null {
    return this.link ? this.link.iceError : null;
  }

  start(): void {
    if (this.started) return;
    this.started = true;
    const s = this.signal;
    this.offs.push(
      s.on('state', (st) => this.emit('state', st)),
      s.on('welcome', (w) => {
        this.iceServers.set(w.iceServers);
        if (w.resumed) {
          // Same session: the call goes on; repair it if the drop broke it.
          if (this.link && this.link.connectionState !== 'connected') this.restart();
          return;
        }
        // A new session: the camera's connection was to the old one.
        this.closePeer();
        s.send({ type: 'watch', camera: this.camera });
      }),
      s.on('token-refreshed', (f) => this.iceServers.set(f.iceServers)),
      s.on('token-expiring', (f) => this.emit('token-expiring', { exp: f.exp })),
      s.on('camera-online', (f) => {
        if (f.camera !== this.camera) return;
        this.setCameraState('online');
        // A camera that came back as a new session offers again; the old connection is dead.
        if (this._cameraSession && f.session !== this._cameraSession) this.closePeer();
      }),
      s.on('camera-offline', (f) => {
        if (f.camera !== this.camera) return;
        this.closePeer();
        this.setCameraState('offline');
      }),
      s.on('peer-left', (f) => {
        if (f.peer !== this._cameraSession) return;
        this.closePeer();
        this.setCameraState('offline');
      }),
      s.on('offer', (f) => {
        this.onOffer(f.from, f.sdp).catch((e: unknown) => this.emit('error', asError(e)));
      }),
      s.on('answer', (f) => {
        if (this.link && f.from === this._cameraSession) {
          this.link.onDescription('answer', f.sdp).catch((e: unknown) => this.emit('error', asError(e)));
        }
      }),
      s.on('candidate', (f) => {
        if (this.link && f.from === this._cameraSession) this.link.onCandidate(f).catch(() => {});
      }),
      s.on('error', (e) => {
        if (e.code === 'peer-gone') {
          if (e.peer && e.peer === this._cameraSession) this.closePeer();
          return;
        }
        // Refused watches cannot be fixed by waiting: stop and say why.
        if (e.code === 'forbidden' || e.code === 'not-found' || (e.code === 'unauthorized' && !this.opts.tokenProvider)) {
          this.fail(e);
          return;
        }
        this.emit('error', e);
      }),
      s.on('fatal', (e) => {
        this.closePeer();
        this.emit('fatal', e);
      }),
      onNetworkChange(() => {
        s.checkConnection();
        if (s.state === 'open') this.restart();
      }),
    );
    s.start();
  }

  stop(): void {
    this.started = false;
    this.offs.forEach((off) => off());
    this.offs = [];
    if (this.signal.state === 'open') this.signal.send({ type: 'leave', camera: this.camera });
    this.closePeer();
    this.signal.stop();
    this.iceServers.stop();
    if (this.mic) this.mic.stop();
    this.mic = null;
  }

  updateToken(token: string): void {
    this.signal.updateToken(token);
  }

  /**
   * Push-to-talk: while on, the microphone goes to the camera on the audio m-line negotiated
   * for it (no renegotiation, so it starts at once). Rejects with `media-permission` when the
   * microphone is refused.
   */
  async talk(on: boolean): Promise<void> {
    if (on === this._talking) return;
    this._talking = on;
    this.emit('talking', on);
    try {
      if (on && !this.mic) {
        this.mic = this.opts.getMicrophone
          ? await this.opts.getMicrophone()
          : (await navigator.mediaDevices.getUserMedia({ audio: true })).getAudioTracks()[0] ?? null;
      }
      // Released while the permission prompt was open.
      if (on !== this._talking) return;
      const t = this.audioTransceiver();
      if (t) await t.sender.replaceTrack(on ? this.mic : null);
    } catch (e) {
      this._talking = false;
      this.emit('talking', false);
      throw mediaError(e);
    }
  }

  /** An ICE restart with fresh ICE servers; if the camera cannot renegotiate, a new watch. */
  restart(): void {
    const link = this.link;
    if (!link) {
      if (this.signal.state === 'open') this.signal.send({ type: 'watch', camera: this.camera });
      return;
    }
    this.iceServers.current().then((servers) => link.restartIce(servers), () => link.restartIce());
  }

  private async onOffer(from: string, sdp: string): Promise<void> {
    // The same camera session offering again is an ICE restart or renegotiation: same
    // connection. A new session (the camera reconnected) gets a fresh one.
    if (!this.link || from !== this._cameraSession) {
      this.closePeer();
      this._cameraSession = from;
      this.link = this.newLink(from, await this.iceServers.current());
    }
    const link = this.link;
    try {
      await link.onDescription('offer', sdp);
    } catch (e) {
      if (link.pc.remoteDescription === null) throw e;
      // The camera replaced its connection (a new DTLS certificate): start over.
      this.closePeer();
      this._cameraSession = from;
      this.link = this.newLink(from, await this.iceServers.current());
      await this.link.onDescription('offer', sdp);
    }
    this.setCameraState('online');
  }

  private newLink(from: string, iceServers: import('./protocol.js').IceServer[]): PeerLink {
    const link = new PeerLink({
      signal: this.signal,
      peer: from,
      polite: true,
      iceServers,
      relayOnly: this.opts.relayOnly,
      RTCPeerConnection: this.opts.RTCPeerConnection,
      beforeAnswer: async (pc) => {
        const audio = audioTransceiverOf(pc);
        // Ready to talk back without renegotiating: the mic is attached while talking.
        if (audio && (audio.direction === 'recvonly' || audio.direction === 'inactive')) audio.direction = 'sendrecv';
        if (audio && this._talking && this.mic) await audio.sender.replaceTrack(this.mic);
      },
    });
    const remote = new MediaStream();
    link.on('track', (ev) => {
      remote.addTrack(ev.track);
      this.emit('stream', remote);
    });
    link.on('ice-error', (e) => this.emit('error', e));
    link.on('offer-timeout', () => {
      // The camera did not answer our ICE restart (it may not renegotiate): ask for a new offer.
      if (link === this.link) this.signal.send({ type: 'watch', camera: this.camera });
    });
    link.on('connection-state', (state) => {
      if (link !== this.link) return;
      this.emit('connection-state', state);
      if (state === 'connected') this.restarts = 0;
      if (state === 'failed') {
        this.restarts += 1;
        if (this.restarts <= 2) this.restart();
        else {
          // Restarts did not help: a new watch makes the camera start over.
          this.restarts = 0;
          this.signal.send({ type: 'watch', camera: this.camera });
        }
      }
    });
    return link;
  }

  private audioTransceiver(): RTCRtpTransceiver | null {
    return this.link ? audioTransceiverOf(this.link.pc) : null;
  }

  private closePeer(): void {
    if (this.link) {
      this.link.close();
      this.link = null;
      this.emit('connection-state', 'none');
    }
    this._cameraSession = null;
  }

  private setCameraState(s: CameraState): void {
    if (this._cameraState === s) return;
    this._cameraState = s;
    this.emit('camera-state', s);
  }

  private fail(e: IcewayError): void {
    this.closePeer();
    this.signal.stop();
    this.emit('fatal', e);
  }
}

function audioTransceiverOf(pc: RTCPeerConnection): RTCRtpTransceiver | null {
  return pc.getTransceivers().find((t) => t.receiver.track.kind === 'audio') ?? null;
}

function asError(e: unknown): IcewayError {
  return e instanceof IcewayError ? e : new IcewayError({ code: 'connection-failed', message: String((e as Error)?.message ?? e), cause: e });
}
