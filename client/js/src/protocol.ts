// The frames of docs/signaling.md, as types. Field names are the wire's.

export interface IceServer {
  urls: string | string[];
  username?: string;
  credential?: string;
}

export interface CandidateFields {
  candidate: string;
  sdpMid?: string | null;
  sdpMLineIndex?: number | null;
  usernameFragment?: string | null;
}

/** Frames a client sends. */
export type ClientFrame =
  | { type: 'auth'; token: string; ref?: string; resume?: { session: string; token: string } }
  | { type: 'publish'; camera?: string }
  | { type: 'watch'; camera: string }
  | { type: 'offer'; to: string; sdp: string }
  | { type: 'answer'; to: string; sdp: string }
  | ({ type: 'candidate'; to: string } & CandidateFields)
  | { type: 'leave'; camera?: string }
  | { type: 'ping' };

export interface WelcomeFrame {
  type: 'welcome';
  session: string;
  role: 'camera' | 'viewer';
  iceServers: IceServer[];
  heartbeat?: number;
  resume?: string;
  resumeGrace?: number;
  resumed?: boolean;
}

export interface CameraOnlineFrame { type: 'camera-online'; camera: string; session: string }
export interface CameraOfflineFrame { type: 'camera-offline'; camera: string }
export interface ViewerJoinedFrame { type: 'viewer-joined'; viewer: string; user?: string }
export interface PeerLeftFrame { type: 'peer-left'; peer: string }
export interface OfferFrame { type: 'offer'; from: string; sdp: string }
export interface AnswerFrame { type: 'answer'; from: string; sdp: string }
export type CandidateFrame = { type: 'candidate'; from: string } & CandidateFields;
export interface PongFrame { type: 'pong' }
export interface TokenExpiringFrame { type: 'token-expiring'; exp: number }
export interface TokenRefreshedFrame { type: 'token-refreshed'; exp: number; iceServers: IceServer[] }
export interface ErrorFrame { type: 'error'; code: string; message?: string; ref?: string; peer?: string }

/** Frames the server sends. */
export type ServerFrame =
  | WelcomeFrame
  | CameraOnlineFrame
  | CameraOfflineFrame
  | ViewerJoinedFrame
  | PeerLeftFrame
  | OfferFrame
  | AnswerFrame
  | CandidateFrame
  | PongFrame
  | TokenExpiringFrame
  | TokenRefreshedFrame
  | ErrorFrame;

const SERVER_TYPES = new Set([
  'welcome', 'camera-online', 'camera-offline', 'viewer-joined', 'peer-left', 'offer', 'answer',
  'candidate', 'pong', 'token-expiring', 'token-refreshed', 'error',
]);

/** Parses a text frame; null for anything that is not a known server frame. */
export function parseServerFrame(text: unknown): ServerFrame | null {
  if (typeof text !== 'string') return null;
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return null;
  }
  if (!v || typeof v !== 'object') return null;
  const type = (v as { type?: unknown }).type;
  if (typeof type !== 'string' || !SERVER_TYPES.has(type)) return null;
  return v as ServerFrame;
}

/** A candidate frame for `to` from an RTCIceCandidate (or its init dictionary). */
export function candidateFrame(to: string, c: CandidateFields): ClientFrame {
  const f: ClientFrame = { type: 'candidate', to, candidate: c.candidate, sdpMid: c.sdpMid ?? null, sdpMLineIndex: c.sdpMLineIndex ?? null };
  if (c.usernameFragment) f.usernameFragment = c.usernameFragment;
  return f;
}
