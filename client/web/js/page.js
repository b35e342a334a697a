// What the two reference pages share beyond the SDK (./iceway/, built from client/js): URL
// parameters, UI messages, and the "continue with a new link" prompt for an expired token.

/** Page parameters: ?token=JWT&camera=ID&relay=1&signal=wss://host/v1/ws&facing=user */
export function pageParams(search = location.search) {
  const q = new URLSearchParams(search);
  const relay = q.get('relay');
  return {
    token: q.get('token') || '',
    camera: q.get('camera') || '',
    relayOnly: relay === '1' || relay === 'true',
    facing: q.get('facing') === 'user' ? 'user' : 'environment',
    signalUrl: q.get('signal') || defaultSignalUrl(),
    // The credential API is served beside signaling (iceway dev, the chart's ingress).
    iceServersUrl: q.get('auth') || location.origin,
  };
}

function defaultSignalUrl() {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/v1/ws`;
}

/** A message with a tone (ok | warn | bad | ''). */
export function showMessage(el, text, tone = '') {
  el.textContent = text;
  el.className = `message${tone ? ` ${tone}` : ''}`;
}

export function pathLabel(summary) {
  if (!summary || !summary.path) return '–';
  if (summary.path === 'relay') return 'relay (TURN)';
  return `direct (${summary.localCandidateType || '?'})`;
}

export function formatKbps(kbps) {
  if (!kbps) return '0 kbit/s';
  return kbps >= 1000 ? `${(kbps / 1000).toFixed(1)} Mbit/s` : `${kbps} kbit/s`;
}

/** The token of a pasted link (…?token=…) or a bare token; '' if neither. */
export function tokenFromInput(text) {
  const t = (text || '').trim();
  if (!t) return '';
  try {
    const u = new URL(t);
    return u.searchParams.get('token') || '';
  } catch {
    return /^[\w-]+\.[\w-]+\.[\w-]+$/.test(t) ? t : '';
  }
}

/**
 * A fresh token for a page whose token runs out: an app embedding the page (a WebView) defines
 * `window.icewayRefreshToken`; otherwise the user pastes a new link into the form under the
 * message. Resolves with the token, or rejects if the user gives none.
 */
export function askForToken(form) {
  if (typeof window.icewayRefreshToken === 'function') return window.icewayRefreshToken();
  return new Promise((resolve, reject) => {
    form.hidden = false;
    const input = form.querySelector('input');
    const onSubmit = (ev) => {
      ev.preventDefault();
      const token = tokenFromInput(input.value);
      if (!token) {
        input.setCustomValidity('Paste the new link from the app');
        input.reportValidity();
        return;
      }
      form.removeEventListener('submit', onSubmit);
      form.hidden = true;
      input.value = '';
      // Later reloads open the new link.
      const url = new URL(location.href);
      url.searchParams.set('token', token);
      history.replaceState(null, '', url);
      resolve(token);
    };
    input.addEventListener('input', () => input.setCustomValidity(''));
    form.addEventListener('submit', onSubmit);
    form.addEventListener('reset', () => {
      form.removeEventListener('submit', onSubmit);
      form.hidden = true;
      reject(new Error('no new link'));
    }, { once: true });
  });
}
