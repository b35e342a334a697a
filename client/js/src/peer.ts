// One RTCPeerConnection to one remote session, negotiated in the "perfect negotiation" pattern
// (W3C WebRTC §10.7): either side may offer at any time (the camera first, either one for an
// ICE restart), and when both offer at once the impolite side (the camera) keeps its offer while
// the polite side (the viewer) rolls its own back and answers.

import { Emitter } from './emitter.js';
import { IcewayError } from './errors.js';
import type { CandidateFields, IceServer } from './protocol.js';
import { candidateFrame } from './protocol.js';
import type { SignalClient } from './signal.js';

export type PeerConnectionConstructor = new (config?: RTCConfiguration) => RTCPeerConnection;

export interface PeerLinkOptions {
  signal: SignalClient;
  /** The remote session id (DESIGN §3 `to`/`from`). */
  peer: string;
  polite: boolean;
  iceServers: IceServer[];
  relayOnly?: boolean;
  /** An offer not answered within this long is rolled back and reported (default 8 s; 0: never). */
  offerTimeoutMs?: number;
  RTCPeerConnection?: PeerConnectionConstructor;
  /** Called after a remote offer is applied, before the answer is made (e.g. to set directions). */
  beforeAnswer?: (pc: RTCPeerConnection) => void | Promise<void>;
}

export interface PeerLinkEvents {
  'connection-state': RTCPeerConnectionState;
  track: RTCTrackEvent;
  /** A TURN server refused us (401: expired or wrong credentials; 486: quota). */
  'ice-error': IcewayError;
  /** Our offer got no answer in time (the other side cannot renegotiate): it was rolled back. */
  'offer-timeout': void;
}

/** RTCPeerConnection configuration from ICE servers and the relay-only switch. */
export function rtcConfig(iceServers: IceServer[], relayOnly = false): RTCConfiguration {
  return {
    iceServers: iceServers as RTCIceServer[],
    iceTransportPolicy: relayOnly ? 'relay' : 'all',
    bundlePolicy: 'max-bundle',
  };
}

export class PeerLink extends Emitter<PeerLinkEvents> {
  readonly pc: RTCPeerConnection;
  readonly peer: string;
  private readonly opts: PeerLinkOptions;
  private makingOffer = false;
  private ignoreOffer = false;
  private pending: CandidateFields[] = [];
  private offerTimer: ReturnType<typeof setTimeout> | null = null;
  private closed = false;
  /** The last TURN refusal, to say why a connection failed. */
  iceError: IcewayError | null = null;

  constructor(opts: PeerLinkOptions) {
    super();
    this.opts = opts;
    this.peer = opts.peer;
    const Ctor = opts.RTCPeerConnection ?? (globalThis as { RTCPeerConnection?: PeerConnectionConstructor }).RTCPeerConnection;
    if (!Ctor) throw new IcewayError({ code: 'connection-failed', message: 'no RTCPeerConnection here' });
    const pc = new Ctor(rtcConfig(opts.iceServers, opts.relayOnly));
    this.pc = pc;
    pc.onnegotiationneeded = () => {
      this.offer().catch((e: unknown) => console.warn('iceway: making an offer failed', e));
    };
    pc.onicecandidate = (ev) => {
      if (ev.candidate && ev.candidate.candidate) this.opts.signal.send(candidateFrame(this.peer, ev.candidate));
    };
    pc.onicecandidateerror = (ev) => {
      const e = ev as RTCPeerConnectionIceErrorEvent;
      if (!/^turns?:/.test(e.url || '')) return;
      // 701 is "unreachable on one interface": other candidates may still work.
      if (e.errorCode === 701) return;
      const err = e.errorCode === 401
        ? new IcewayError({ code: 'turn-refused', message: `${e.url}: 401 ${e.errorText || ''}`.trim() })
        : new IcewayError({ code: 'connection-failed', message: `${e.url}: ${e.errorCode} ${e.errorText || ''}`.trim() });
      this.iceError = err;
      this.emit('ice-error', err);
    };
    pc.ontrack = (ev) => this.emit('track', ev);
    pc.onconnectionstatechange = () => this.emit('connection-state', pc.connectionState);
  }

  get connectionState(): RTCPeerConnectionState {
    return this.pc.connectionState;
  }

  /** Applies a remote offer or answer from the signaling server. */
  async onDescription(type: 'offer' | 'answer', sdp: string): Promise<void> {
    if (this.closed) return;
    const pc = this.pc;
    if (type === 'offer') {
      const collision = this.makingOffer || pc.signalingState !== 'stable';
      this.ignoreOffer = !this.opts.polite && collision;
      if (this.ignoreOffer) return;
      // A polite side with its own offer out rolls it back implicitly here.
      await pc.setRemoteDescription({ type, sdp });
      this.clearOfferTimer();
      if (this.opts.beforeAnswer) await this.opts.beforeAnswer(pc);
      await pc.setLocalDescription(await pc.createAnswer());
      const local = pc.localDescription;
      if (local) this.opts.signal.send({ type: 'answer', to: this.peer, sdp: local.sdp });
    } else {
      // An answer to an offer we have since rolled back (or a duplicate): nothing to apply.
      if (pc.signalingState !== 'have-local-offer') return;
      await pc.setRemoteDescription({ type, sdp });
      this.clearOfferTimer();
    }
    for (const c of this.pending.splice(0)) await this.addCandidate(c);
  }

  /** Applies a remote ICE candidate; held until a remote description exists. */
  async onCandidate(c: CandidateFields): Promise<void> {
    if (this.closed || !c.candidate) return;
    if (!this.pc.remoteDescription) {
      this.pending.push(c);
      return;
    }
    await this.addCandidate(c);
  }

  /**
   * Restarts ICE (after a network change or a failure), with fresh ICE servers if given: the
   * next offer gathers new candidates on the new network and fresh TURN allocations.
   */
  restartIce(iceServers?: IceServer[]): void {
    if (this.closed) return;
    if (iceServers) this.pc.setConfiguration(rtcConfig(iceServers, this.opts.relayOnly));
    this.pc.restartIce();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.clearOfferTimer();
    this.pc.onnegotiationneeded = null;
    this.pc.onicecandidate = null;
    this.pc.onconnectionstatechange = null;
    this.pc.ontrack = null;
    this.pc.close();
  }

  private async offer(): Promise<void> {
    if (this.closed) return;
    try {
      this.makingOffer = true;
      await this.pc.setLocalDescription();
      const local = this.pc.localDescription;
      if (local && local.type === 'offer') {
        if (!this.opts.signal.send({ type: 'offer', to: this.peer, sdp: local.sdp })) {
          // Not connected: roll back so the next restart (after the socket is back) can offer.
          await this.rollback();
          return;
        }
        this.armOfferTimer();
      }
    } finally {
      this.makingOffer = false;
    }
  }

  private armOfferTimer(): void {
    this.clearOfferTimer();
    const ms = this.opts.offerTimeoutMs ?? 8_000;
    if (ms <= 0) return;
    this.offerTimer = setTimeout(() => {
      this.offerTimer = null;
      if (this.closed || this.pc.signalingState !== 'have-local-offer') return;
      this.rollback().finally(() => this.emit('offer-timeout', undefined));
    }, ms);
  }

  private clearOfferTimer(): void {
    if (this.offerTimer) clearTimeout(this.offerTimer);
    this.offerTimer = null;
  }

  private async rollback(): Promise<void> {
    try {
      if (this.pc.signalingState === 'have-local-offer') await this.pc.setLocalDescription({ type: 'rollback' });
    } catch (e) {
      console.warn('iceway: rollback failed', e);
    }
  }

  private async addCandidate(c: CandidateFields): Promise<void> {
    try {
      await this.pc.addIceCandidate({
        candidate: c.candidate,
        sdpMid: c.sdpMid ?? null,
        sdpMLineIndex: c.sdpMLineIndex ?? null,
        usernameFragment: c.usernameFragment ?? null,
      });
    } catch (e) {
      // Candidates of an offer we ignored in a collision are expected to fail.
      if (!this.ignoreOffer) console.warn('iceway: addIceCandidate failed', e);
    }
  }
}
