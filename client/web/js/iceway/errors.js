// Typed errors with the server's codes (docs/signaling.md "Error codes" and "Close codes"), and
// the plain words a page shows for each.
import { tokenExpired } from './token.js';
/** WebSocket close codes of the signaling server. */
export const CloseCode = {
    /** Sent by the client: closing to reconnect, the session stays resumable. */
    Reconnecting: 4000,
    /** Missing, invalid or expired token. */
    Unauthorized: 4001,
    Forbidden: 4003,
    Policy: 4008,
    TooLarge: 4009,
    /** The camera was published by a newer connection with the same token. */
    Replaced: 4010,
    /** The session was resumed on another socket. */
    ResumedElsewhere: 4011,
    Draining: 1001,
    Backplane: 1011,
};
export class IcewayError extends Error {
    code;
    reason;
    closeCode;
    ref;
    peer;
    constructor(init) {
        super(init.message || init.code, init.cause === undefined ? undefined : { cause: init.cause });
        this.name = 'IcewayError';
        this.code = init.code;
        this.closeCode = init.closeCode;
        this.ref = init.ref;
        this.peer = init.peer;
        this.reason = reasonOf(init.code, init.message || '');
    }
    /** True when retrying with the same token cannot help. */
    get fatal() {
        return FATAL_CODES.has(this.code);
    }
    /** From a server `error` frame. */
    static fromFrame(f) {
        return new IcewayError({ code: f.code, message: f.message, ref: f.ref, peer: f.peer });
    }
    /** From a close of the signaling socket with one of the server's codes, or null for others. */
    static fromClose(closeCode, reason) {
        const code = CLOSE_TO_CODE.get(closeCode);
        if (!code)
            return null;
        return new IcewayError({ code, closeCode, message: reason || undefined });
    }
}
const FATAL_CODES = new Set([
    'unauthorized', 'forbidden', 'replaced', 'token-expired', 'media-permission', 'media-unavailable',
]);
const CLOSE_TO_CODE = new Map([
    [CloseCode.Unauthorized, 'unauthorized'],
    [CloseCode.Forbidden, 'forbidden'],
    [CloseCode.TooLarge, 'too-large'],
    [CloseCode.Replaced, 'replaced'],
    [CloseCode.ResumedElsewhere, 'resumed-elsewhere'],
]);
function reasonOf(code, message) {
    if (code !== 'forbidden')
        return undefined;
    // The server words these (signal-server session/mod.rs); the code alone cannot tell them apart.
    if (/already has \d+ viewers/.test(message))
        return 'camera-full';
    if (/^only an? (camera|viewer) token may /.test(message))
        return 'wrong-role';
    return 'not-allowed';
}
/** Plain words for an error, for a page to show. `token` words an expiry as such. */
export function explain(err, token) {
    const e = typeof err === 'object' ? err
        : typeof err === 'number' ? IcewayError.fromClose(err, '') : new IcewayError({ code: err });
    if (!e)
        return `The connection closed (code ${String(err)}).`;
    switch (e.code) {
        case 'unauthorized':
        case 'token-expired':
            if (e.code === 'token-expired' || (token && tokenExpired(token))) {
                return 'Your access link has expired. Get a new one from the app to continue.';
            }
            return 'Your access was refused. Get a new link from the app.';
        case 'forbidden': {
            if (e.reason === 'camera-full') {
                const n = /already has (\d+) viewers/.exec(e.message);
                return `This camera already has ${n ? n[1] : 'the most'} viewers, the most it allows. Try again when someone stops watching.`;
            }
            if (e.reason === 'wrong-role')
                return 'This link is for the other side (camera or viewer).';
            return 'This camera is not yours: your access does not include it.';
        }
        case 'replaced':
            return 'This camera was started on another device with the same link, which took over.';
        case 'resumed-elsewhere':
            return 'This session continued in another tab or window.';
        case 'not-found':
            return 'That camera does not exist.';
        case 'rate-limited':
            return 'Too many requests; slowing down.';
        case 'too-large':
            return 'A message was too large for the server.';
        case 'internal':
            return 'The server had a problem; retrying.';
        case 'peer-gone':
            return 'The other side has left.';
        case 'bad-message':
            return `The server did not understand a message (${e.message}).`;
        case 'ice-servers':
            return `Could not get relay (TURN) credentials: ${e.message}`;
        case 'media-permission':
            return 'Camera or microphone access was blocked. Allow it in the browser\'s site settings (the icon next to the address), then tap Retry.';
        case 'media-unavailable':
            return 'No camera or microphone could be opened: another app may be using it, or this device has none.';
        case 'turn-refused':
            return 'The relay (TURN) server refused our credentials: they have expired or are wrong.';
        case 'connection-failed':
            return 'The connection failed; retrying.';
        case 'closed':
            return 'The connection closed.';
        default:
            return e.message;
    }
}
