// Iceway's JavaScript SDK. See docs/sdk.md.
export { Camera } from './camera.js';
export { Viewer } from './viewer.js';
export { SignalClient } from './signal.js';
export { PeerLink, rtcConfig } from './peer.js';
export { IceServerSource, credentialsExpireAt, fetchIceServers, iceServersOf } from './ice.js';
export { CloseCode, IcewayError, explain } from './errors.js';
export { tokenClaims, tokenExpired, tokenExpiresAt } from './token.js';
export { keepScreenOn, mediaError, openCamera } from './media.js';
export { onNetworkChange } from './network.js';
export { summarize } from './stats.js';
export { candidateFrame, parseServerFrame } from './protocol.js';
export { Emitter } from './emitter.js';
