// Network-change notices: the page's `online` event and, where the Network Information API
// exists (Chromium, Android WebView), its `change` event (Wi-Fi to cellular keeps `onLine` true).
export function onNetworkChange(fn) {
    const g = globalThis;
    const offs = [];
    if (typeof g.addEventListener === 'function' && typeof g.removeEventListener === 'function') {
        g.addEventListener('online', fn);
        offs.push(() => g.removeEventListener?.('online', fn));
    }
    const conn = g.navigator?.connection;
    if (conn && typeof conn.addEventListener === 'function') {
        conn.addEventListener('change', fn);
        offs.push(() => conn.removeEventListener('change', fn));
    }
    return () => offs.forEach((off) => off());
}
