// Starts the real signaling server for the SDK's tests: `iceway dev` (iceway-signal with the
// credential API, and iceway-turn, in one process) on loopback with kernel-chosen ports and a
// temporary state directory; mints tokens with `iceway token`. Every wait has a deadline.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, '..', '..', '..');
const targetDir = process.env.CARGO_TARGET_DIR || path.join(repoRoot, 'target');
export const icewayBin = process.env.ICEWAY_BIN || path.join(targetDir, 'debug', 'iceway');

export async function startDev({ stateDir, httpPort = 0 } = {}) {
  if (!existsSync(icewayBin)) throw new Error(`missing ${icewayBin}: run cargo build -p iceway`);
  const dir = stateDir || mkdtempSync(path.join(tmpdir(), 'iceway-sdk-'));
  const relayLo = 40000 + Math.floor(Math.random() * 20000);
  const child = spawn(icewayBin, [
    '--state-dir', dir, 'dev', '--json', '--http-port', String(httpPort), '--turn-port', '0',
    '--relay-range', `${relayLo}-${relayLo + 100}`,
  ], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' } });
  const logs = [];
  child.stderr.on('data', (d) => logs.push(d.toString()));
  const exited = new Promise((resolve) => child.once('exit', resolve));
  const info = await new Promise((resolve, reject) => {
    const rl = createInterface({ input: child.stdout });
    const timer = setTimeout(() => { rl.close(); reject(new Error(`iceway dev did not start in 30 s:\n${logs.join('')}`)); }, 30_000);
    rl.on('line', (line) => {
      try {
        const v = JSON.parse(line);
        if (v.signal_url) { clearTimeout(timer); resolve(v); }
      } catch { /* not the JSON line */ }
    });
    child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`iceway dev exited (${code}):\n${logs.join('')}`)); });
  });
  const stop = async ({ keepState = false } = {}) => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(t);
    }
    if (!keepState) rmSync(dir, { recursive: true, force: true });
  };
  const token = (role, sub, { cams = [], ttl = '1h' } = {}) => execFileSync(icewayBin, [
    '--state-dir', dir, 'token', '--role', role, '--sub', sub, ...(cams.length ? ['--cams', cams.join(',')] : []), '--ttl', ttl,
  ], { encoding: 'utf8' }).trim();
  return { ...info, stateDir: dir, logs, stop, token, port: Number(new URL(info.http).port) };
}

/** Resolves with the first value `emitter` emits for `type` that `pred` accepts, or rejects. */
export function next(emitter, type, { pred = () => true, timeoutMs = 10_000 } = {}) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { off(); reject(new Error(`no '${type}' within ${timeoutMs} ms`)); }, timeoutMs);
    const off = emitter.on(type, (v) => {
      if (!pred(v)) return;
      clearTimeout(timer);
      off();
      resolve(v);
    });
  });
}

/**
 * A TCP proxy on loopback in front of `port`; `cut()` destroys every proxied connection with no
 * close frame, as a dropped network does.
 */
export async function proxy(port) {
  const socks = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(port, '127.0.0.1');
    socks.add(client); socks.add(upstream);
    client.pipe(upstream); upstream.pipe(client);
    const done = () => { socks.delete(client); socks.delete(upstream); client.destroy(); upstream.destroy(); };
    client.on('error', done); upstream.on('error', done); client.on('close', done); upstream.on('close', done);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: server.address().port,
    cut() { for (const s of socks) s.destroy(); socks.clear(); },
    close() { for (const s of socks) s.destroy(); return new Promise((r) => server.close(r)); },
  };
}
