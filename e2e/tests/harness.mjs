// Shared setup for the browser end-to-end tests: start `iceway dev` on loopback with free ports
// and a temporary state directory, launch Debian's Chromium through playwright-core, and read
// the pages' window.icewayStats() hooks. Every wait is on an event or a polled condition with a
// deadline; nothing sleeps for a fixed time.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, '..', '..');
export const targetDir = process.env.CARGO_TARGET_DIR || path.join(repoRoot, 'target');
export const icewayBin = process.env.ICEWAY_BIN || path.join(targetDir, 'debug', 'iceway');
export const clientBin = process.env.ICEWAY_CLIENT_BIN || path.join(targetDir, 'debug', 'iceway-client');
export const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';
export const artifactsDir = path.join(targetDir, 'e2e');

export function requireTools() {
  const missing = [];
  if (!existsSync(chromiumPath)) missing.push(`chromium at ${chromiumPath} (apt-get install chromium)`);
  if (!existsSync(icewayBin)) missing.push(`${icewayBin} (cargo build -p iceway)`);
  if (missing.length) throw new Error(`missing: ${missing.join('; ')}`);
}

export async function loadPlaywright() {
  try {
    return await import('playwright-core');
  } catch (e) {
    throw new Error(`playwright-core is not installed: run \`npm ci\` in e2e/ (${e.message})`);
  }
}

/** Waits for a line from a child's stream that `match` accepts, with a deadline. */
function waitForLine(stream, match, timeoutMs, what) {
  return new Promise((resolve, reject) => {
    const rl = createInterface({ input: stream });
    const timer = setTimeout(() => {
      rl.close();
      reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`));
      rl.close();
    }, timeoutMs);
    rl.on('line', (line) => {
      const v = match(line);
      if (v !== undefined) {
        clearTimeout(timer);
        resolve(v);
        rl.close();
      }
    });
    rl.on('close', () => {
      clearTimeout(timer);
      reject(new Error(`stream ended while waiting for ${what}`));
    });
  });
}

/** Starts `iceway dev --json` and resolves with its printed info plus a stop() function. */
export async function startDev(extraArgs = [], opts = {}) {
  requireTools();
  const stateDir = opts.stateDir || mkdtempSync(path.join(tmpdir(), 'iceway-e2e-'));
  const relayLo = 40000 + Math.floor(Math.random() * 20000);
  const args = [
    '--state-dir', stateDir, 'dev', '--json',
    '--http-port', String(opts.httpPort || 0), '--turn-port', String(opts.turnPort || 0),
    '--relay-range', `${relayLo}-${relayLo + 200}`, ...extraArgs,
  ];
  // opts.netns: run it inside that network namespace (`ip netns exec` execs, so the PID is its).
  const [cmd, argv] = opts.netns ? ['ip', ['netns', 'exec', opts.netns, icewayBin, ...args]] : [icewayBin, args];
  const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' } });
  const logs = [];
  child.stderr.on('data', (d) => logs.push(d.toString()));
  const exited = new Promise((resolve) => child.once('exit', resolve));
  let info;
  try {
    info = await waitForLine(child.stdout, (line) => {
      try {
        const v = JSON.parse(line);
        return v.signal_url ? v : undefined;
      } catch {
        return undefined;
      }
    }, 30000, 'iceway dev to print its URLs');
  } catch (e) {
    child.kill('SIGKILL');
    throw new Error(`${e.message}\n--- iceway dev stderr ---\n${logs.join('')}`);
  }
  const stop = async ({ keepState = false } = {}) => {
    if (child.exitCode === null) {
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 10000);
      await exited;
      clearTimeout(t);
    }
    if (!keepState) rmSync(stateDir, { recursive: true, force: true });
  };
  return { ...info, stateDir, child, logs, stop };
}

export const chromiumArgs = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--disable-dev-shm-usage',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-default-apps',
  '--disable-sync',
  '--no-first-run',
  '--mute-audio',
  '--autoplay-policy=no-user-gesture-required',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--allow-loopback-in-peer-connection',
  // Plain IP host candidates: no mDNS names, so no multicast queries.
  '--disable-features=WebRtcHideLocalIpsWithMdns',
];

export async function launchBrowser() {
  const { chromium } = await loadPlaywright();
  return chromium.launch({ executablePath: chromiumPath, headless: true, args: chromiumArgs });
}

/** A page in its own context with camera and microphone allowed for `origin`. */
export async function openPage(browser, origin, url) {
  const context = await browser.newContext({ viewport: { width: 480, height: 900 } });
  await context.grantPermissions(['camera', 'microphone'], { origin });
  const page = await context.newPage();
  const consoleLines = [];
  page.on('console', (m) => consoleLines.push(`[${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`[pageerror] ${e.message}`));
  await page.goto(url);
  page.consoleLines = consoleLines;
  return page;
}

export function stats(page) {
  return page.evaluate(() => window.icewayStats());
}

/** Polls icewayStats() until `pred` holds; returns the last stats. Fails with them on timeout. */
export async function waitForStats(page, pred, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  let last = null;
  while (Date.now() < deadline) {
    last = await stats(page);
    if (pred(last)) return last;
    await page.waitForTimeout(250);
  }
  throw new Error(`timed out waiting for ${what}; last stats: ${JSON.stringify(last)}\nconsole:\n${(page.consoleLines || []).slice(-20).join('\n')}`);
}

export function ensureArtifactsDir() {
  mkdirSync(artifactsDir, { recursive: true });
  return artifactsDir;
}

export function withRelay(url, relay = true) {
  return relay ? `${url}&relay=1` : url;
}
