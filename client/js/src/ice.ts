// ICE servers: from signaling's `welcome` and `token-refreshed`, or from the credential API
// (GET /v1/ice-servers with the app token), refreshed before their TURN credentials run out.

import { Emitter } from './emitter.js';
import { IcewayError } from './errors.js';
import type { IceServer } from './protocol.js';
import { tokenClaims } from './token.js';

export interface IceServersResponse {
  iceServers: IceServer[];
  /** Seconds the TURN credentials stay valid. */
  ttl?: number;
}

export interface FetchIceServersOptions {
  /** The credential API's base URL, e.g. https://auth.example.com (the path is /v1/ice-servers). */
  baseUrl: string;
  token: string;
  fetch?: typeof fetch;
  signal?: AbortSignal;
}

/** One call of the credential API (DESIGN §2). Errors are `IcewayError` with code `ice-servers`. */
export async function fetchIceServers(opts: FetchIceServersOptions): Promise<IceServersResponse> {
  const f = opts.fetch ?? globalThis.fetch;
  const url = `${opts.baseUrl.replace(/\/+$/, '')}/v1/ice-servers`;
  let res: Response;
  try {
    res = await f(url, { headers: { Authorization: `Bearer ${opts.token}` }, signal: opts.signal });
  } catch (e) {
    throw new IcewayError({ code: 'ice-servers', message: `${url}: ${(e as Error).message}`, cause: e });
  }
  if (!res.ok) {
    let detail = '';
    try {
      const body = (await res.json()) as { title?: string; detail?: string };
      detail = body.detail || body.title || '';
    } catch {
      // not a problem document
    }
    const code = res.status === 401 ? 'unauthorized' : res.status === 403 ? 'forbidden' : 'ice-servers';
    throw new IcewayError({ code, message: `HTTP ${res.status}${detail ? `: ${detail}` : ''}` });
  }
  const body = (await res.json()) as unknown;
  const iceServers = iceServersOf(body);
  const ttl = body && typeof body === 'object' && typeof (body as { ttl?: unknown }).ttl === 'number'
    ? (body as { ttl: number }).ttl : undefined;
  return ttl === undefined ? { iceServers } : { iceServers, ttl };
}

/** The list from a welcome frame's `iceServers` or a /v1/ice-servers body. */
export function iceServersOf(value: unknown): IceServer[] {
  if (Array.isArray(value)) return value as IceServer[];
  if (value && typeof value === 'object' && Array.isArray((value as { iceServers?: unknown }).iceServers)) {
    return (value as { iceServers: IceServer[] }).iceServers;
  }
  return [];
}

/**
 * When the earliest TURN credential in the list expires (ms since the epoch), from its username:
 * coturn's REST format `expiry:user`, or a JWT's `exp`. Null when none says.
 */
export function credentialsExpireAt(servers: IceServer[]): number | null {
  let earliest: number | null = null;
  for (const s of servers) {
    if (!s.username) continue;
    let at: number | null = null;
    const rest = /^(\d{9,}):/.exec(s.username);
    if (rest) at = Number(rest[1]) * 1000;
    else {
      const exp = tokenClaims(s.username)?.exp;
      if (typeof exp === 'number') at = exp * 1000;
    }
    if (at !== null && (earliest === null || at < earliest)) earliest = at;
  }
  return earliest;
}

export interface IceServerSourceOptions {
  /** Credential API base URL. Without it the list only changes through `set` (signaling). */
  baseUrl?: string;
  /** The app token, or a function returning the current one. */
  token?: string | (() => string);
  /** Refresh this long before the credentials expire (default 60 s, at most half their life). */
  refreshLeadMs?: number;
  fetch?: typeof fetch;
}

export interface IceServerSourceEvents {
  change: IceServer[];
  error: IcewayError;
}

/**
 * The ICE servers new peer connections use. Holds the latest list and, given the credential API,
 * refetches it before the TURN credentials expire, so a page open for a day never offers expired
 * ones; a failed refetch keeps the last list and retries.
 */
export class IceServerSource extends Emitter<IceServerSourceEvents> {
  private servers: IceServer[] = [];
  private expiresAt: number | null = null;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private inflight: Promise<IceServer[]> | null = null;
  private stopped = false;
  private readonly opts: IceServerSourceOptions;

  constructor(opts: IceServerSourceOptions = {}) {
    super();
    this.opts = opts;
  }

  /** The current list (may be stale if no refresh could succeed). */
  get list(): IceServer[] {
    return this.servers;
  }

  /** Sets the list, e.g. from `welcome`; `ttlSeconds` if the source said, else read off usernames. */
  set(servers: IceServer[], ttlSeconds?: number): void {
    this.servers = servers;
    this.expiresAt = ttlSeconds !== undefined ? Date.now() + ttlSeconds * 1000 : credentialsExpireAt(servers);
    this.schedule();
    this.emit('change', servers);
  }

  /** The list, refetched first if its credentials have expired (or none is held yet). */
  async current(): Promise<IceServer[]> {
    const stale = this.expiresAt !== null && this.expiresAt <= Date.now() + 5_000;
    if ((stale || this.servers.length === 0) && this.opts.baseUrl) {
      try {
        return await this.refresh();
      } catch {
        // The last list (possibly from signaling) is better than none.
      }
    }
    return this.servers;
  }

  /** Fetches a fresh list from the credential API now. */
  refresh(): Promise<IceServer[]> {
    if (!this.opts.baseUrl) return Promise.resolve(this.servers);
    if (this.inflight) return this.inflight;
    const token = typeof this.opts.token === 'function' ? this.opts.token() : this.opts.token || '';
    const p = fetchIceServers({ baseUrl: this.opts.baseUrl, token, fetch: this.opts.fetch })
      .then((r) => {
        this.set(r.iceServers, r.ttl);
        return r.iceServers;
      })
      .catch((e: unknown) => {
        const err = e instanceof IcewayError ? e : new IcewayError({ code: 'ice-servers', message: String(e) });
        this.emit('error', err);
        this.retryLater();
        throw err;
      })
      .finally(() => {
        this.inflight = null;
      });
    this.inflight = p;
    return p;
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  private schedule(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.stopped || !this.opts.baseUrl || this.expiresAt === null) return;
    const life = this.expiresAt - Date.now();
    const lead = Math.min(this.opts.refreshLeadMs ?? 60_000, life / 2);
    this.arm(Math.max(1_000, life - lead));
  }

  private retryLater(): void {
    if (this.stopped || !this.opts.baseUrl) return;
    this.arm(10_000 + Math.random() * 5_000);
  }

  private arm(ms: number): void {
    if (this.timer) clearTimeout(this.timer);
    // setTimeout overflows past 2^31 ms; a day-long credential is re-armed on the way.
    this.timer = setTimeout(() => {
      this.timer = null;
      this.refresh().catch(() => {});
    }, Math.min(ms, 2 ** 31 - 1));
    (this.timer as { unref?: () => void }).unref?.();
  }
}
