// Iceway's JavaScript SDK. See docs/sdk.md.

export { Camera } from './camera.js';
export type { CameraEvents, CameraOptions, CameraViewer } from './camera.js';
export { Viewer } from './viewer.js';
export type { CameraState, ViewerEvents, ViewerOptions } from './viewer.js';
export { SignalClient } from './signal.js';
export type { SignalEvents, SignalOptions, SignalState, WebSocketConstructor, WebSocketLike } from './signal.js';
export { PeerLink, rtcConfig } from './peer.js';
export type { PeerConnectionConstructor, PeerLinkEvents, PeerLinkOptions } from './peer.js';
export { IceServerSource, credentialsExpireAt, fetchIceServers, iceServersOf } from './ice.js';
export type { FetchIceServersOptions, IceServerSourceEvents, IceServerSourceOptions, IceServersResponse } from './ice.js';
export { CloseCode, IcewayError, explain } from './errors.js';
export type { ClientErrorCode, ErrorCode, ErrorReason, IcewayErrorInit, ServerErrorCode } from './errors.js';
export { tokenClaims, tokenExpired, tokenExpiresAt } from './token.js';
export type { TokenClaims } from './token.js';
export { keepScreenOn, mediaError, openCamera } from './media.js';
export type { Facing, OpenCameraOptions } from './media.js';
export { onNetworkChange } from './network.js';
export { summarize } from './stats.js';
export type { StatsSummary } from './stats.js';
export { candidateFrame, parseServerFrame } from './protocol.js';
export type * from './protocol.js';
export { Emitter } from './emitter.js';
export type { Listener } from './emitter.js';
