// App-token claims read without verifying: only to word messages and to time refreshes. The
// server decides whether a token is valid.
function base64UrlDecode(part) {
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const padded = b64.padEnd(Math.ceil(b64.length / 4) * 4, '=');
    const bin = atob(padded);
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    return new TextDecoder().decode(bytes);
}
export function tokenClaims(token) {
    try {
        const part = token.split('.')[1];
        if (!part)
            return null;
        const v = JSON.parse(base64UrlDecode(part));
        return v && typeof v === 'object' ? v : null;
    }
    catch {
        return null;
    }
}
/** Milliseconds since the epoch at which the token expires, or null without `exp`. */
export function tokenExpiresAt(token) {
    const c = tokenClaims(token);
    return c && typeof c.exp === 'number' ? c.exp * 1000 : null;
}
export function tokenExpired(token, now = Date.now()) {
    const at = tokenExpiresAt(token);
    return at !== null && at <= now;
}
