// Phone helpers: open the camera (front or back) with errors in plain words, and keep the
// screen on while a camera runs.
import { IcewayError } from './errors.js';
/** Maps a getUserMedia rejection to `media-permission` or `media-unavailable`. */
export function mediaError(e) {
    if (e instanceof IcewayError)
        return e;
    const name = e?.name || '';
    const message = e?.message || String(e);
    if (name === 'NotAllowedError' || name === 'SecurityError' || name === 'PermissionDeniedError') {
        return new IcewayError({ code: 'media-permission', message, cause: e });
    }
    return new IcewayError({ code: 'media-unavailable', message: name ? `${name}: ${message}` : message, cause: e });
}
/**
 * The camera (and microphone unless `audio: false`). A device whose microphone cannot be opened
 * still gets video; a refused permission rejects with `media-permission`. Needs a secure origin
 * (https, or http://localhost): elsewhere `navigator.mediaDevices` does not exist.
 */
export async function openCamera(opts = {}) {
    const md = globalThis.navigator?.mediaDevices;
    if (!md || typeof md.getUserMedia !== 'function') {
        throw new IcewayError({
            code: 'media-unavailable',
            message: 'this page is not on a secure origin (https), so the browser offers no camera',
        });
    }
    const video = {
        width: { ideal: opts.width ?? 1280 },
        height: { ideal: opts.height ?? 720 },
        facingMode: { ideal: opts.facing ?? 'environment' },
    };
    try {
        return await md.getUserMedia({ video, audio: opts.audio ?? true });
    }
    catch (e) {
        const err = mediaError(e);
        if (err.code === 'media-permission' || opts.audio === false)
            throw err;
        // A camera whose microphone is missing or busy still streams video.
        try {
            return await md.getUserMedia({ video, audio: false });
        }
        catch (e2) {
            throw mediaError(e2);
        }
    }
}
/**
 * Keeps the screen on (Screen Wake Lock API) while the returned handle is held. The browser
 * drops the lock whenever the page is hidden; it is taken again when the page is visible.
 */
export function keepScreenOn() {
    let sentinel = null;
    let active = true;
    const nav = globalThis.navigator;
    const doc = globalThis.document;
    const take = () => {
        if (!active || !nav?.wakeLock || (doc && doc.visibilityState !== 'visible'))
            return;
        nav.wakeLock.request('screen').then((s) => {
            if (active)
                sentinel = s;
            else
                s.release().catch(() => { });
        }, () => {
            // Refused (battery saver, no user gesture yet): the page still works, the screen may sleep.
        });
    };
    const onVisible = () => take();
    doc?.addEventListener('visibilitychange', onVisible);
    take();
    return {
        release() {
            active = false;
            doc?.removeEventListener('visibilitychange', onVisible);
            sentinel?.release().catch(() => { });
            sentinel = null;
        },
        get held() {
            return !!sentinel && !sentinel.released;
        },
    };
}
