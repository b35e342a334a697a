// The frames of docs/signaling.md, as types. Field names are the wire's.
const SERVER_TYPES = new Set([
    'welcome', 'camera-online', 'camera-offline', 'viewer-joined', 'peer-left', 'offer', 'answer',
    'candidate', 'pong', 'token-expiring', 'token-refreshed', 'error',
]);
/** Parses a text frame; null for anything that is not a known server frame. */
export function parseServerFrame(text) {
    if (typeof text !== 'string')
        return null;
    let v;
    try {
        v = JSON.parse(text);
    }
    catch {
        return null;
    }
    if (!v || typeof v !== 'object')
        return null;
    const type = v.type;
    if (typeof type !== 'string' || !SERVER_TYPES.has(type))
        return null;
    return v;
}
/** A candidate frame for `to` from an RTCIceCandidate (or its init dictionary). */
export function candidateFrame(to, c) {
    const f = { type: 'candidate', to, candidate: c.candidate, sdpMid: c.sdpMid ?? null, sdpMLineIndex: c.sdpMLineIndex ?? null };
    if (c.usernameFragment)
        f.usernameFragment = c.usernameFragment;
    return f;
}
