// @flarecast/client: the TypeScript client of the flarecast WebSocket
// protocol (docs/protocol.md). It behaves like the Go package
// github.com/flarecast/flarecast/client: it reconnects with exponential
// backoff and jitter, resumes its session, acks the highest message_id the
// application has processed (after the handler returned; coalesced), hands
// each event over once (de-duplication by message_id across resumes),
// subscribes again with `since` when the session is gone, detects a silent
// connection, and refreshes its token through the `auth` message before it
// expires. One file, no dependencies: it runs in browsers (the global
// WebSocket) and in Node (globalThis.WebSocket, or the `WebSocket` option,
// e.g. the `ws` package).

// ---- the protocol's vocabulary -------------------------------------------

/** An event's severity, P0 (worst) to P4. */
export type Severity = 'P0' | 'P1' | 'P2' | 'P3' | 'P4';
/** The state of the incident an event is about. */
export type IncidentState = 'Detected' | 'Triaged' | 'Investigating' | 'Remediating' | 'Resolved' | 'Closed';
/** The server's priority of an event (docs/protocol.md, "Events and priority"). */
export type Priority = 'critical' | 'high' | 'normal';
/** An event's event_type. */
export type EventType =
  | 'incident_created' | 'incident_updated' | 'incident_resolved' | 'incident_closed'
  | 'alert_received' | 'alert_converted' | 'escalated'
  | 'playbook_started' | 'playbook_action_executed' | 'playbook_completed'
  | 'notification_sent' | 'assignment_changed' | 'comment_added' | 'system_event';

export const SEVERITIES: readonly Severity[] = ['P0', 'P1', 'P2', 'P3', 'P4'];
export const STATES: readonly IncidentState[] = ['Detected', 'Triaged', 'Investigating', 'Remediating', 'Resolved', 'Closed'];
export const PRIORITIES: readonly Priority[] = ['critical', 'high', 'normal'];
export const EVENT_TYPES: readonly EventType[] = [
  'incident_created', 'incident_updated', 'incident_resolved', 'incident_closed',
  'alert_received', 'alert_converted', 'escalated',
  'playbook_started', 'playbook_action_executed', 'playbook_completed',
  'notification_sent', 'assignment_changed', 'comment_added', 'system_event',
];

/**
 * The filters of a subscription (docs/protocol.md, "Filters"). An absent key
 * or an empty list matches every event; a non-empty list matches an event
 * whose field has one of the values (never one lacking the field); every
 * label must be on the event with that value; all keys are AND-ed.
 */
export interface Filters {
  event_types?: EventType[];
  severities?: Severity[];
  states?: IncidentState[];
  sources?: string[];
  affected_resources?: string[];
  incident_ids?: string[];
  labels?: Record<string, string>;
}

/** The event object: the producer's fields (unknown ones included) plus `priority`. */
export interface EventBody {
  event_type: EventType;
  priority: Priority;
  incident_id?: string;
  severity?: Severity;
  state?: IncidentState;
  source?: string;
  affected_resources?: string[];
  labels?: Record<string, string>;
  title?: string;
  description?: string;
  [field: string]: unknown;
}

/** One `event` message, as the server sent it. */
export interface FlarecastEvent {
  type: 'event';
  /** Positive, strictly increasing in dispatch order. */
  message_id: number;
  /** When the server accepted the event (RFC 3339, ns). */
  timestamp: string;
  event: EventBody;
}

/** Reasons of the `closing` message. */
export type ClosingReason = 'server_shutdown' | 'session_timeout' | 'slow_consumer' | 'session_taken_over' | 'token_expired' | 'policy_violation';
/** Codes of the `error` message. */
export type ErrorCode = 'INVALID_MESSAGE' | 'UNSUPPORTED' | 'NOT_FOUND' | 'LIMIT_EXCEEDED' | 'RATE_LIMITED' | 'UNAUTHORIZED' | 'HISTORY_GAP';

/** matches reports whether ev matches f as the server decides it. */
export function matches(f: Filters, ev: EventBody): boolean {
  const one = (list: readonly string[] | undefined, v: unknown) =>
    !list || list.length === 0 || (typeof v === 'string' && v !== '' && list.includes(v));
  if (!one(f.event_types, ev.event_type) || !one(f.severities, ev.severity) || !one(f.states, ev.state) ||
    !one(f.sources, ev.source) || !one(f.incident_ids, ev.incident_id)) return false;
  if (f.affected_resources && f.affected_resources.length > 0) {
    const res = Array.isArray(ev.affected_resources) ? ev.affected_resources : [];
    if (!res.some((r) => f.affected_resources!.includes(r))) return false;
  }
  for (const [k, v] of Object.entries(f.labels ?? {})) {
    if (!ev.labels || ev.labels[k] !== v) return false;
  }
  return true;
}

// ---- errors ---------------------------------------------------------------

/** Every error of this package is a FlarecastError. */
export class FlarecastError extends Error {
  override name = 'FlarecastError';
}

/** An `error` message of the server. `code` is the protocol's error code. */
export class ServerError extends FlarecastError {
  override name = 'ServerError';
  constructor(readonly code: ErrorCode | string, readonly serverMessage: string, readonly firstAvailable?: number) {
    super('flarecast: ' + code + ': ' + serverMessage);
  }
}
/** INVALID_MESSAGE: malformed message, unknown filter key, value outside its vocabulary. */
export class InvalidMessageError extends ServerError { override name = 'InvalidMessageError'; }
/** UNSUPPORTED: unknown type, binary message, `auth` without --auth jwt. */
export class UnsupportedError extends ServerError { override name = 'UnsupportedError'; }
/** NOT_FOUND: unsubscribe of a subscription the session does not hold. */
export class NotFoundError extends ServerError { override name = 'NotFoundError'; }
/** LIMIT_EXCEEDED: too many subscriptions, filter values, or a subscription_id over 128 bytes. */
export class LimitExceededError extends ServerError { override name = 'LimitExceededError'; }
/** RATE_LIMITED: a message over --rate-limit was dropped. */
export class RateLimitedError extends ServerError { override name = 'RateLimitedError'; }
/** UNAUTHORIZED: a subscription outside the token's scope, or a refused `auth`. */
export class UnauthorizedError extends ServerError { override name = 'UnauthorizedError'; }
/** HISTORY_GAP: events below firstAvailable had left the server's window. */
export class HistoryGapError extends ServerError { override name = 'HistoryGapError'; }

const serverErrors: Record<string, new (code: string, msg: string, first?: number) => ServerError> = {
  INVALID_MESSAGE: InvalidMessageError, UNSUPPORTED: UnsupportedError, NOT_FOUND: NotFoundError,
  LIMIT_EXCEEDED: LimitExceededError, RATE_LIMITED: RateLimitedError, UNAUTHORIZED: UnauthorizedError,
  HISTORY_GAP: HistoryGapError,
};

/** serverError makes the typed error of an `error` message. */
export function serverError(code: string, message: string, firstAvailable?: number): ServerError {
  const C = serverErrors[code] ?? ServerError;
  return new C(code, message, firstAvailable);
}

/**
 * A connection the server ended. `reason` is the `closing` message's reason
 * ('' when the server sent none), `code` and `text` the close frame's (1006
 * when the connection broke without one).
 */
export class ClosedError extends FlarecastError {
  override name = 'ClosedError';
  constructor(readonly reason: ClosingReason | '' | string, readonly code: number, readonly text = '') {
    super('flarecast: server closed the connection' + (reason ? ': ' + reason : '') + (code ? ` (${code}${text ? ' ' + text : ''})` : ''));
  }
}
/** server_shutdown (1001): the server is stopping; the client reconnects. */
export class ServerShutdownError extends ClosedError { override name = 'ServerShutdownError'; }
/** session_timeout (1001): nothing received from the client for --session-timeout. */
export class SessionTimeoutError extends ClosedError { override name = 'SessionTimeoutError'; }
/** slow_consumer (1001): the client did not read fast enough; the session stays resumable. */
export class SlowConsumerError extends ClosedError { override name = 'SlowConsumerError'; }
/** session_taken_over (1000): another connection resumed this session; the client starts a new one. */
export class SessionTakenOverError extends ClosedError { override name = 'SessionTakenOverError'; }
/** token_expired (1008): the token's exp passed; fatal without getToken. */
export class TokenExpiredError extends ClosedError { override name = 'TokenExpiredError'; }
/** policy_violation (1008): persistent rate-limit excess, a refused resume…; fatal. */
export class PolicyViolationError extends ClosedError { override name = 'PolicyViolationError'; }
/** A close without `closing`: a protocol violation (1002, 1007, 1009) or a broken connection (1006). */
export class ConnectionLostError extends ClosedError { override name = 'ConnectionLostError'; }

const closedErrors: Record<string, new (reason: string, code: number, text?: string) => ClosedError> = {
  server_shutdown: ServerShutdownError, session_timeout: SessionTimeoutError, slow_consumer: SlowConsumerError,
  session_taken_over: SessionTakenOverError, token_expired: TokenExpiredError, policy_violation: PolicyViolationError,
};

/** closedError makes the typed error of a `closing` reason and close frame. */
export function closedError(reason: string, code: number, text = ''): ClosedError {
  if (!reason) return new ConnectionLostError('', code, text);
  const C = closedErrors[reason] ?? ClosedError;
  return new C(reason, code, text);
}

/**
 * An upgrade the server refused with an HTTP status (401 without a valid
 * token, 403, 404, 429, 503…). Only WebSocket implementations that expose
 * the status (Node's `ws`) produce it; a browser sees a connection that
 * failed (a ConnectionLostError with code 1006).
 */
export class HandshakeError extends FlarecastError {
  override name = 'HandshakeError';
  constructor(readonly status: number, detail = '') {
    super(`flarecast: server refused the WebSocket upgrade: HTTP ${status}${detail ? ': ' + detail : ''}`);
  }
}
/** The client was closed by close(); calls on it fail with this. */
export class ClientClosedError extends FlarecastError {
  override name = 'ClientClosedError';
  constructor() { super('flarecast: client closed'); }
}
/** getToken failed. */
export class TokenError extends FlarecastError {
  override name = 'TokenError';
  constructor(override readonly cause: unknown) { super('flarecast: getting a token: ' + String((cause as Error)?.message ?? cause)); }
}
/** A handler of the application threw (reported on the client's 'error'). */
export class HandlerError extends FlarecastError {
  override name = 'HandlerError';
  constructor(override readonly cause: unknown, readonly subscriptionId: string) {
    super(`flarecast: handler of subscription ${subscriptionId} threw: ${String((cause as Error)?.message ?? cause)}`);
  }
}

// ---- WebSocket ------------------------------------------------------------

/** The part of the WebSocket API the client uses (browsers, Node 22+, `ws`). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[], options?: unknown) => WebSocketLike;

// ---- options, states ------------------------------------------------------

export interface ClientOptions {
  /** A bearer token (JWT) for a server run with --auth jwt. */
  token?: string;
  /**
   * Called for the token of every connection, and to refresh it (through the
   * `auth` message) before it expires.
   */
  getToken?: () => string | Promise<string>;
  /** How long before the token's exp getToken is called (default: a third of its remaining life, at most 30 s). */
  refreshBeforeMs?: number;
  /**
   * Send the token as `Authorization: Bearer` (a header keeps it out of
   * access logs) instead of `?token=`. Needs a WebSocket implementation that
   * takes headers as its third constructor argument, like `ws`; browsers
   * cannot, so the default is the query string.
   */
  authHeader?: boolean;
  /** The WebSocket implementation (default: globalThis.WebSocket). */
  WebSocket?: WebSocketConstructor;
  /** Bounds of the delay between reconnection attempts: it doubles from min (250 ms) to max (5 s), with up to 50% added at random. */
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** Give up (close with the last error) when no connection could be made this long (0: never). */
  reconnectForMs?: number;
  /** Acks are coalesced: at most one per interval (default 200 ms), and one on close(). */
  ackIntervalMs?: number;
  /**
   * The server's --heartbeat-interval (default 30 s). The client sends a
   * `ping` when it has heard nothing for one interval, and takes a
   * connection that stays silent for three for dead and replaces it.
   */
  heartbeatIntervalMs?: number;
  /** How long a connection may take to be welcomed (default 10 s). */
  handshakeTimeoutMs?: number;
  /** How many message_ids the de-duplication remembers above the lowest one it may still see (default 2^20, 128 KiB). */
  dedupWindow?: number;
}

export type State = 'connecting' | 'live' | 'reconnecting' | 'closed';

export interface StateChange {
  state: State;
  /** Why the connection was lost (reconnecting), or why the client ended (closed; undefined after close()). */
  error?: FlarecastError;
  /** The session once live. */
  sessionId: string;
  /** live: the session of the previous connection was resumed. */
  resumed: boolean;
  /** live on a new session after an earlier one was lost (its subscriptions were made again with since). */
  newSession: boolean;
  /** connecting, reconnecting: the next attempt is made in this many ms (a state change is reported for every failed attempt). */
  retryInMs?: number;
}

/** A HISTORY_GAP: events from the resume or since point up to firstAvailable-1 cannot be delivered. */
export interface Gap {
  firstAvailable: number;
  message: string;
  error: HistoryGapError;
}

export interface SubscribeOptions {
  /** Replay the held events with a message_id above since first, then go live. */
  since?: number;
  /** The subscription_id (default: s1, s2, …). Subscribing with the id of a live subscription replaces it. */
  id?: string;
  /**
   * Hand this subscription the backfill from since even where the client
   * already delivered those events (to another or a replaced subscription):
   * a view that refills itself from history when its filters change. Each
   * event still reaches the subscription once.
   */
  redeliver?: boolean;
}

/** Figures of a client's life, for tests and dashboards. */
export interface ClientStats {
  /** Events handed to the application (each once, whatever it matched). */
  delivered: number;
  /** Events received again (replays after a resume) and not handed over. */
  duplicates: number;
  /** Connections welcomed; of them, sessions resumed and new sessions after a lost one. */
  connections: number;
  resumes: number;
  newSessions: number;
  /** Times the server's ids were seen to start again (a restarted single server). */
  restarts: number;
  acksSent: number;
  tokenRefreshes: number;
}

// ---- a tiny typed emitter -------------------------------------------------

type Handler<T> = (value: T) => unknown;

class Emitter<M> {
  private handlers = new Map<keyof M, Set<Handler<never>>>();
  /** on adds a handler and returns a function that removes it. */
  on<K extends keyof M>(name: K, fn: Handler<M[K]>): () => void {
    let set = this.handlers.get(name);
    if (!set) this.handlers.set(name, (set = new Set()));
    set.add(fn as Handler<never>);
    this.added(name);
    return () => this.off(name, fn);
  }
  off<K extends keyof M>(name: K, fn: Handler<M[K]>): void {
    this.handlers.get(name)?.delete(fn as Handler<never>);
  }
  protected added(_name: keyof M): void { /* for subclasses */ }
  protected listeners<K extends keyof M>(name: K): Handler<M[K]>[] {
    return [...(this.handlers.get(name) ?? [])] as Handler<M[K]>[];
  }
  protected count(name: keyof M): number {
    return this.handlers.get(name)?.size ?? 0;
  }
  protected emit<K extends keyof M>(name: K, value: M[K]): void {
    for (const fn of this.listeners(name)) {
      try { fn(value); } catch (e) { queueMicrotask(() => { throw e; }); }
    }
  }
}

// quiet keeps a promise the application may ignore from being reported as
// an unhandled rejection; awaiting it still throws.
function quiet<T>(p: Promise<T>): Promise<T> {
  p.catch(() => { /* handled by whoever awaits it */ });
  return p;
}

function isThenable(v: unknown): v is PromiseLike<unknown> {
  return v !== null && (typeof v === 'object' || typeof v === 'function') && typeof (v as { then?: unknown }).then === 'function';
}

// ---- de-duplication -------------------------------------------------------

/**
 * SeenSet remembers which message_ids were delivered. After an overtake (a
 * critical event written before a waiting normal one) a lower id may arrive
 * after a higher one, so "drop ids ≤ the highest" would lose events: it is
 * a sliding bitmap of the ids (base, base+size]; ids at or below base count
 * as seen, ids above the window slide it up. The same as client/dedup.go.
 */
export class SeenSet {
  private base = 0;
  private readonly size: number;
  private bits: Uint32Array;
  constructor(window = 1 << 20) {
    this.size = Math.ceil(Math.max(window, 32) / 32) * 32;
    this.bits = new Uint32Array(this.size / 32);
  }
  /** add records id and reports whether it was new. */
  add(id: number): boolean {
    if (id <= this.base) return false;
    if (id > this.base + this.size) this.slide(id - this.size);
    const i = id % this.size, w = i >>> 5, b = 1 << (i & 31);
    if (this.bits[w]! & b) return false;
    this.bits[w]! |= b;
    return true;
  }
  private slide(nb: number): void {
    if (nb - this.base >= this.size) this.bits.fill(0);
    else for (let id = this.base + 1; id <= nb; id++) { const i = id % this.size; this.bits[i >>> 5]! &= ~(1 << (i & 31)); }
    this.base = nb;
  }
  /** reset forgets everything (the server's numbering started again). */
  reset(): void { this.bits.fill(0); this.base = 0; }
}

/** tokenExpiry reads a JWT's exp (ms since the epoch) without verifying it; 0 without one. */
export function tokenExpiry(token: string): number {
  const parts = token.split('.');
  if (parts.length !== 3) return 0;
  try {
    let b64 = parts[1]!.replace(/-/g, '+').replace(/_/g, '/');
    while (b64.length % 4) b64 += '=';
    const claims = JSON.parse(atob(b64)) as { exp?: unknown };
    return typeof claims.exp === 'number' && claims.exp > 0 ? claims.exp * 1000 : 0;
  } catch {
    return 0;
  }
}

// ---- subscriptions --------------------------------------------------------

export interface SubscriptionEvents {
  /** An event this subscription matches. The client acks it once every handler returned (or its promise settled). */
  event: FlarecastEvent;
  /** The server refused the subscription, or the client ended with an error. */
  error: FlarecastError;
  /** The subscription ended: unsubscribed, replaced, refused, or the client closed (error set when it failed). */
  end: FlarecastError | undefined;
}

/** Subscription is one subscription of a client: `on('event', fn)` or `for await (const ev of sub)`. */
export class Subscription extends Emitter<SubscriptionEvents> implements AsyncIterable<FlarecastEvent> {
  /** Resolves once the server confirmed the subscription; rejects with its ServerError. */
  readonly ready: Promise<void>;
  private readyResolve!: () => void;
  private readyReject!: (e: FlarecastError) => void;
  private confirmed = false;
  private iters = new Set<SubIterator>();
  private consumerWaiters: (() => void)[] = [];
  private endedWith: { error: FlarecastError | undefined } | undefined;
  private inForce: Filters | undefined;
  /** @internal ids in (since, upTo] are checked against seen, not the client's set */
  _redo: { since: number; upTo: number; seen: SeenSet } | undefined;
  /** @internal the subscribed reply's from: the server delivers ids above it; where a new session starts again while nothing was processed */
  _from: number | undefined;

  /** @internal */
  constructor(private readonly client: FlarecastClient, readonly id: string, readonly filters: Filters, readonly since: number | undefined) {
    super();
    this.ready = quiet(new Promise<void>((res, rej) => { this.readyResolve = res; this.readyReject = rej; }));
  }

  /** The filters in force, as the server normalised them (and intersected with the token's scope); undefined until confirmed. */
  get filtersInForce(): Filters | undefined { return this.inForce; }
  /** Whether the subscription has ended, and with what error. */
  get ended(): boolean { return this.endedWith !== undefined; }
  get error(): FlarecastError | undefined { return this.endedWith?.error; }

  /** unsubscribe ends the subscription (no more events) and tells the server. */
  unsubscribe(): Promise<void> { return this.client._unsubscribe(this); }

  [Symbol.asyncIterator](): AsyncIterator<FlarecastEvent> {
    const it = new SubIterator(() => this.iters.delete(it));
    if (this.endedWith) it.end(this.endedWith.error);
    else { this.iters.add(it); this.added('event'); }
    return it;
  }

  protected override added(name: keyof SubscriptionEvents): void {
    if (name === 'event') { const w = this.consumerWaiters; this.consumerWaiters = []; for (const f of w) f(); }
  }

  /** @internal the server confirmed it */
  _confirm(filters: Filters | undefined): void {
    if (filters) this.inForce = filters;
    if (!this.confirmed) { this.confirmed = true; this.readyResolve(); }
  }

  /** @internal hand ev over, resolving once every consumer processed it */
  async _deliver(ev: FlarecastEvent): Promise<void> {
    // Like an unbuffered channel: with no consumer yet, delivery waits for one.
    while (!this.endedWith && this.count('event') === 0 && this.iters.size === 0) {
      await new Promise<void>((res) => this.consumerWaiters.push(res));
    }
    if (this.endedWith) return;
    for (const fn of this.listeners('event')) {
      try {
        const r = fn(ev);
        if (isThenable(r)) await r;
      } catch (e) {
        this.client._report(new HandlerError(e, this.id));
      }
    }
    if (this.iters.size > 0) await Promise.all([...this.iters].map((it) => it.push(ev)));
  }

  /** @internal */
  _end(error: FlarecastError | undefined): void {
    if (this.endedWith) return;
    this.endedWith = { error };
    if (!this.confirmed) this.readyReject(error ?? new ClientClosedError());
    const w = this.consumerWaiters; this.consumerWaiters = []; for (const f of w) f();
    for (const it of this.iters) it.end(error);
    this.iters.clear();
    if (error) this.emit('error', error);
    this.emit('end', error);
  }
}

class SubIterator implements AsyncIterator<FlarecastEvent> {
  private buf: { ev: FlarecastEvent; done: () => void }[] = [];
  private current: (() => void) | undefined; // the event the consumer holds: processed at its next call
  private waiter: { resolve: (r: IteratorResult<FlarecastEvent>) => void; reject: (e: unknown) => void } | undefined;
  private finished = false;
  private error: FlarecastError | undefined;
  constructor(private readonly detach: () => void) {}

  push(ev: FlarecastEvent): Promise<void> {
    return new Promise<void>((done) => {
      if (this.finished) { done(); return; }
      if (this.waiter) {
        const w = this.waiter; this.waiter = undefined;
        this.current = done;
        w.resolve({ value: ev, done: false });
      } else this.buf.push({ ev, done });
    });
  }
  next(): Promise<IteratorResult<FlarecastEvent>> {
    this.release();
    const item = this.buf.shift();
    if (item) { this.current = item.done; return Promise.resolve({ value: item.ev, done: false }); }
    if (this.finished) {
      if (this.error) { const e = this.error; this.error = undefined; return Promise.reject(e); }
      return Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve, reject) => { this.waiter = { resolve, reject }; });
  }
  return(): Promise<IteratorResult<FlarecastEvent>> {
    this.finish(undefined);
    this.detach();
    return Promise.resolve({ value: undefined, done: true });
  }
  end(error: FlarecastError | undefined): void { this.finish(error); }
  private release(): void {
    const c = this.current; this.current = undefined;
    if (c) c();
  }
  private finish(error: FlarecastError | undefined): void {
    if (this.finished) return;
    this.finished = true;
    this.error = error;
    this.release();
    for (const b of this.buf.splice(0)) b.done();
    const w = this.waiter; this.waiter = undefined;
    if (w) {
      if (error) { this.error = undefined; w.reject(error); } else w.resolve({ value: undefined, done: true });
    }
  }
}

// ---- the client -----------------------------------------------------------

export interface ClientEvents {
  state: StateChange;
  gap: Gap;
  /** Server errors that answer no call of the client (RATE_LIMITED, a refused token refresh…) and handlers that threw. */
  error: FlarecastError;
  /** A token refresh was accepted; expiresAt is the server's RFC 3339 time. */
  authenticated: { expiresAt: string };
  /**
   * The server's message_ids started again (a restarted single server): the
   * client forgot the old ids and backfills the new server's window.
   */
  restart: { firstId: number; since: number };
}

interface Request {
  kind: 'subscribe' | 'unsubscribe';
  sub: Subscription;
  since: number | undefined;
  resolve?: () => void;
  reject?: (e: FlarecastError) => void;
}

interface Conn {
  ws: WebSocketLike;
  gen: number;
  welcomed: boolean;
  token: string;
  acked: number;
  lastRecv: number;
  closing: string;
  httpStatus: number;
  timers: ReturnType<typeof setTimeout>[];
  finish: (err: FlarecastError) => void;
}

type Item =
  | { kind: 'event'; gen: number; ev: FlarecastEvent }
  | { kind: 'fresh'; gen: number; above: number };

/**
 * FlarecastClient is a connection to a flarecast server that survives
 * drops. It connects at once; subscriptions made before the welcome are sent
 * after it.
 */
export class FlarecastClient extends Emitter<ClientEvents> {
  /** Resolves at the first welcome; rejects if the client ends before one. */
  readonly ready: Promise<void>;
  readonly stats: ClientStats = { delivered: 0, duplicates: 0, connections: 0, resumes: 0, newSessions: 0, restarts: 0, acksSent: 0, tokenRefreshes: 0 };

  private readonly url: string;
  private readonly o: Required<Omit<ClientOptions, 'token' | 'getToken' | 'WebSocket' | 'refreshBeforeMs'>> & ClientOptions;
  private readonly WS: WebSocketConstructor;
  private st: State = 'connecting';
  private err: FlarecastError | undefined;
  private sid = '';
  private welcomed = false;
  private closed = false;
  private conn: Conn | undefined;
  private opening: Conn | undefined;
  private wake: (() => void) | undefined;
  private subs = new Map<string, Subscription>();
  private pending: Request[] = [];
  private nextId = 0;
  private readyResolve!: () => void;
  private readyReject!: (e: FlarecastError) => void;
  private authPending = false;

  // Delivery: events wait in arrival order; one loop hands them over.
  private queue: Item[] = [];
  private qHead = 0;
  private pumping = false;
  private seen: SeenSet;
  private watch: { gen: number; above: number } | undefined;
  private voidThrough = 0; // new sessions up to this gen made their since before a restart was seen
  private gen = 0;
  private connProcessed = 0; // highest id processed from connection gen
  private maxProcessed = 0; // highest id processed, any connection: since for a new session

  constructor(url: string, options: ClientOptions = {}) {
    super();
    let u: URL;
    try { u = new URL(url); } catch { throw new TypeError('flarecast: not a URL: ' + url); }
    if (u.protocol === 'http:' || u.protocol === 'https:') u.protocol = u.protocol === 'http:' ? 'ws:' : 'wss:';
    if (u.protocol !== 'ws:' && u.protocol !== 'wss:') throw new TypeError('flarecast: not a ws: or wss: URL: ' + url);
    this.url = u.href;
    this.o = {
      authHeader: false, minBackoffMs: 250, maxBackoffMs: 5000, reconnectForMs: 0, ackIntervalMs: 200,
      heartbeatIntervalMs: 30000, handshakeTimeoutMs: 10000, dedupWindow: 1 << 20, ...stripUndefined(options),
    };
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WS) throw new TypeError('flarecast: no WebSocket implementation: pass {WebSocket} (e.g. the ws package) on Node < 22');
    this.WS = WS;
    this.seen = new SeenSet(this.o.dedupWindow);
    this.ready = quiet(new Promise<void>((res, rej) => { this.readyResolve = res; this.readyReject = rej; }));
    this.run().catch((e) => { if (!this.closed) this.finishClient(new FlarecastError('flarecast: internal error: ' + String(e))); });
  }

  /** The connection state. */
  get state(): State { return this.st; }
  /** The current (or last) session id; '' before the first welcome. */
  get sessionId(): string { return this.sid; }
  /** Why the client ended (undefined while it runs, and after close()). */
  get error(): FlarecastError | undefined { return this.err; }
  /** The highest message_id the application processed. */
  get lastProcessed(): number { return this.maxProcessed; }
  /** The message_id of the last ack sent (0 before any). */
  get lastAcked(): number { return this.lastAck; }
  private lastAck = 0;

  /**
   * subscribe makes a subscription. Events come through `sub.on('event')`
   * or `for await (const ev of sub)`; `await sub.ready` to know the server
   * accepted it.
   */
  subscribe(filters: Filters = {}, options: SubscribeOptions = {}): Subscription {
    if (this.closed) {
      const s = new Subscription(this, options.id ?? 'closed', filters, options.since);
      s._end(this.err ?? new ClientClosedError());
      return s;
    }
    const id = options.id ?? 's' + ++this.nextId;
    const sub = new Subscription(this, id, { ...filters }, options.since);
    if (options.redeliver && options.since !== undefined && this.maxProcessed > options.since) {
      sub._redo = { since: options.since, upTo: this.maxProcessed, seen: new SeenSet(Math.min(this.maxProcessed - options.since, this.o.dedupWindow)) };
    }
    const r: Request = { kind: 'subscribe', sub, since: options.since };
    r.resolve = () => sub._confirm(undefined);
    r.reject = (e) => this.dropSub(sub, e);
    this.pending.push(r);
    this.register(sub);
    if (this.conn) this.sendRequest(this.conn, r);
    return sub;
  }

  /** close acks what was processed, closes the connection and ends every subscription. */
  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.closed = true;
    const c = this.conn;
    if (c) {
      this.ack(c);
      try { c.ws.close(1000, 'bye'); } catch { /* already closing */ }
      c.finish(new ClientClosedError());
    }
    this.opening?.finish(new ClientClosedError());
    this.wake?.();
    return this.done;
  }

  private doneResolve!: () => void;
  private readonly done = new Promise<void>((res) => { this.doneResolve = res; });

  /** @internal */
  _unsubscribe(sub: Subscription): Promise<void> {
    if (this.subs.get(sub.id) !== sub) { sub._end(undefined); return Promise.resolve(); }
    this.subs.delete(sub.id);
    sub._end(undefined);
    if (this.closed) return Promise.resolve();
    return quiet(new Promise<void>((resolve, reject) => {
      const r: Request = { kind: 'unsubscribe', sub, since: undefined, resolve, reject };
      this.pending.push(r);
      if (this.conn) this.sendRequest(this.conn, r);
    }));
  }

  /** @internal */
  _report(e: FlarecastError): void { this.emit('error', e); }

  // ---- connection loop ----

  private async run(): Promise<void> {
    let delay = this.o.minBackoffMs;
    let lostAt = Date.now();
    let final: FlarecastError | undefined;
    while (!this.closed) {
      const { welcomed, err } = await this.attempt();
      if (this.closed) break;
      if (this.fatal(err)) { final = err; break; }
      if (err instanceof SessionTakenOverError) this.sid = ''; // taking it back would start a tug of war
      if (welcomed) {
        delay = this.o.minBackoffMs;
        lostAt = Date.now();
      } else if (this.o.reconnectForMs > 0 && Date.now() - lostAt > this.o.reconnectForMs) {
        final = err;
        break;
      }
      const wait = Math.round(delay + Math.random() * (delay / 2));
      this.setState({ state: this.welcomed ? 'reconnecting' : 'connecting', error: err, sessionId: this.sid, resumed: false, newSession: false, retryInMs: wait });
      await this.sleep(wait);
      if (!welcomed) delay = Math.min(2 * delay, this.o.maxBackoffMs);
    }
    this.finishClient(final);
  }

  private fatal(err: FlarecastError): boolean {
    if (err instanceof HandshakeError) return err.status !== 429 && err.status < 500;
    if (err instanceof TokenExpiredError) return !this.o.getToken;
    return err instanceof PolicyViolationError;
  }

  private finishClient(final: FlarecastError | undefined): void {
    this.closed = true;
    this.err = final;
    for (const r of this.pending.splice(0)) r.reject?.(final ?? new ClientClosedError());
    const subs = [...this.subs.values()];
    this.subs.clear();
    for (const s of subs) s._end(final);
    this.queue = []; this.qHead = 0;
    this.readyReject(final ?? new ClientClosedError());
    this.setState({ state: 'closed', error: final, sessionId: this.sid, resumed: false, newSession: false });
    this.doneResolve();
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((res) => {
      const t = setTimeout(() => { this.wake = undefined; res(); }, ms);
      this.wake = () => { clearTimeout(t); this.wake = undefined; res(); };
    });
  }

  private async token(): Promise<string> {
    if (this.o.getToken) return await this.o.getToken();
    return this.o.token ?? '';
  }

  // attempt makes one connection and serves it until it ends; it resolves
  // with whether it was welcomed and why it ended.
  private async attempt(): Promise<{ welcomed: boolean; err: FlarecastError }> {
    let token: string;
    try {
      token = await this.token();
    } catch (e) {
      return { welcomed: false, err: new TokenError(e) };
    }
    if (this.closed) return { welcomed: false, err: new ClientClosedError() };
    const u = new URL(this.url);
    if (this.sid) u.searchParams.set('session_id', this.sid);
    if (token && !this.o.authHeader) u.searchParams.set('token', token);
    return new Promise((resolve) => {
      let ws: WebSocketLike;
      try {
        ws = this.o.authHeader && token
          ? new this.WS(u.href, undefined, { headers: { Authorization: 'Bearer ' + token } })
          : new this.WS(u.href);
      } catch (e) {
        resolve({ welcomed: false, err: new ConnectionLostError('', 0, 'cannot connect: ' + String((e as Error)?.message ?? e)) });
        return;
      }
      let ended = false;
      const conn: Conn = {
        ws, gen: 0, welcomed: false, token, acked: 0, lastRecv: Date.now(), closing: '', httpStatus: 0, timers: [],
        finish: (err) => {
          if (ended) return;
          ended = true;
          for (const t of conn.timers) clearTimeout(t), clearInterval(t);
          ws.onmessage = ws.onclose = ws.onerror = ws.onopen = null;
          ws.onerror = () => { /* errors of a socket being dropped */ };
          if (this.conn === conn) this.conn = undefined;
          if (this.opening === conn) this.opening = undefined;
          this.authPending = false;
          if (!(err instanceof ClientClosedError)) terminate(ws);
          resolve({ welcomed: conn.welcomed, err });
        },
      };
      this.opening = conn;
      conn.timers.push(setTimeout(() => {
        if (!conn.welcomed) conn.finish(new ConnectionLostError('', 0, `no welcome within ${this.o.handshakeTimeoutMs} ms`));
      }, this.o.handshakeTimeoutMs));
      ws.onerror = (ev) => {
        const e = ev as { message?: string; error?: { message?: string } };
        const m = /Unexpected server response: (\d+)/.exec(e?.message ?? e?.error?.message ?? '');
        if (m) conn.httpStatus = Number(m[1]);
      };
      ws.onclose = (ev) => {
        if (!conn.welcomed && conn.httpStatus) conn.finish(new HandshakeError(conn.httpStatus));
        else conn.finish(closedError(conn.closing, ev.code, ev.reason));
      };
      ws.onmessage = (m) => {
        conn.lastRecv = Date.now();
        let msg: ServerMessage;
        try {
          msg = JSON.parse(typeof m.data === 'string' ? m.data : new TextDecoder().decode(m.data as ArrayBuffer)) as ServerMessage;
        } catch {
          conn.finish(new ConnectionLostError('', 0, 'server sent a message that is not JSON'));
          return;
        }
        if (!conn.welcomed) {
          if (msg.type !== 'welcome') { conn.finish(new ConnectionLostError('', 0, 'want a welcome, got ' + msg.type)); return; }
          conn.welcomed = true;
          this.opening = undefined;
          this.onWelcome(conn, msg);
          return;
        }
        this.onMessage(conn, msg);
      };
    });
  }

  private onWelcome(conn: Conn, w: ServerMessage): void {
    const resumed = !!w.resumed && this.sid === w.session_id;
    const hadSession = this.welcomed;
    this.welcomed = true;
    this.sid = String(w.session_id);
    this.gen++;
    conn.gen = this.gen;
    this.connProcessed = 0;
    this.conn = conn;
    this.stats.connections++;
    if (resumed) this.stats.resumes++;
    else if (hadSession) this.stats.newSessions++;

    // What was in flight goes again: on a resumed session as it was; on a
    // new one every subscription is made again, from what was processed.
    const old = this.pending;
    this.pending = [];
    let toSend: Request[];
    if (resumed) {
      toSend = old;
    } else {
      const since = this.maxProcessed;
      const waiting = new Map<Subscription, Request>();
      for (const r of old) {
        if (r.kind === 'subscribe') waiting.set(r.sub, r);
        else r.resolve?.(); // the new session holds no subscription
      }
      toSend = [];
      for (const s of this.subs.values()) {
        const p = waiting.get(s);
        toSend.push({ kind: 'subscribe', sub: s, since: since > 0 ? since : (s._from ?? s.since), resolve: p?.resolve ?? (() => s._confirm(undefined)), reject: p?.reject ?? ((e) => this.dropSub(s, e)) });
      }
      // Even with since 0: a new session ends the watch of the one before it.
      if (hadSession) this.enqueue({ kind: 'fresh', gen: conn.gen, above: since });
    }
    for (const r of toSend) { this.pending.push(r); this.sendRequest(conn, r); }

    const ack = setInterval(() => this.ack(conn), this.o.ackIntervalMs);
    const hb = this.o.heartbeatIntervalMs;
    const beat = setInterval(() => {
      const idle = Date.now() - conn.lastRecv;
      if (idle >= 3 * hb) { conn.finish(new ConnectionLostError('', 1006, `nothing received for ${idle} ms`)); return; }
      if (idle >= hb) this.send(conn, { type: 'ping', timestamp: Date.now() });
    }, Math.max(10, Math.floor(hb / 2)));
    conn.timers.push(ack, beat);
    this.scheduleRefresh(conn, conn.token);
    this.setState({ state: 'live', sessionId: this.sid, resumed, newSession: hadSession && !resumed });
    this.readyResolve();
  }

  private onMessage(conn: Conn, m: ServerMessage): void {
    switch (m.type) {
      case 'event':
        this.enqueue({ kind: 'event', gen: conn.gen, ev: m as unknown as FlarecastEvent });
        break;
      case 'subscribed':
      case 'unsubscribed': {
        const want = m.type === 'subscribed' ? 'subscribe' : 'unsubscribe';
        const i = this.pending.findIndex((r) => r.kind === want && r.sub.id === m.subscription_id);
        if (i >= 0) {
          const [r] = this.pending.splice(i, 1);
          if (m.type === 'subscribed') {
            if (typeof m.from === 'number') r!.sub._from = m.from;
            r!.sub._confirm(m.filters as Filters);
          }
          r!.resolve?.();
        }
        break;
      }
      case 'error': {
        const e = serverError(String(m.code), String(m.message ?? ''), m.first_available as number | undefined);
        if (e instanceof HistoryGapError) {
          this.emit('gap', { firstAvailable: Number(m.first_available), message: String(m.message ?? ''), error: e });
          break;
        }
        if (e instanceof UnauthorizedError && this.authPending) {
          this.authPending = false;
          this.emit('error', e); // a refused refresh: the session keeps its token
          break;
        }
        const r = this.pending.shift();
        if (r) {
          if (r.kind === 'subscribe') this.dropSub(r.sub, e);
          if (r.reject) { r.reject(e); break; }
        }
        this.emit('error', e);
        break;
      }
      case 'authenticated':
        this.authPending = false;
        this.emit('authenticated', { expiresAt: String(m.expires_at) });
        break;
      case 'closing':
        conn.closing = String(m.reason ?? '');
        break;
    }
  }

  private dropSub(sub: Subscription, e: FlarecastError): void {
    if (this.subs.get(sub.id) === sub) this.subs.delete(sub.id);
    sub._end(e);
  }

  private register(sub: Subscription): void {
    const prev = this.subs.get(sub.id);
    this.subs.set(sub.id, sub);
    if (prev && prev !== sub) {
      prev._end(undefined);
      this.pending = this.pending.filter((r) => r.sub !== prev || r.kind !== 'subscribe' || (r.resolve?.(), false));
    }
  }

  private sendRequest(conn: Conn, r: Request): void {
    if (r.kind === 'unsubscribe') { this.send(conn, { type: 'unsubscribe', subscription_id: r.sub.id }); return; }
    const msg: Record<string, unknown> = { type: 'subscribe', subscription_id: r.sub.id, filters: r.sub.filters };
    if (r.since !== undefined) msg.since = r.since;
    this.send(conn, msg);
  }

  private send(conn: Conn, msg: unknown): boolean {
    if (conn.ws.readyState !== 1) return false;
    try { conn.ws.send(JSON.stringify(msg)); return true; } catch { return false; }
  }

  private ack(conn: Conn): void {
    if (conn.gen !== this.gen) return;
    const n = this.connProcessed;
    if (n > conn.acked && this.send(conn, { type: 'ack', message_id: n })) {
      conn.acked = n;
      this.lastAck = n;
      this.stats.acksSent++;
    }
  }

  private scheduleRefresh(conn: Conn, token: string): void {
    const exp = tokenExpiry(token);
    if (!this.o.getToken || !exp) return;
    const left = exp - Date.now();
    const lead = this.o.refreshBeforeMs && this.o.refreshBeforeMs > 0 ? this.o.refreshBeforeMs : Math.min(30000, left / 3);
    conn.timers.push(setTimeout(async () => {
      let tok: string;
      try { tok = await this.token(); } catch (e) { this.emit('error', new TokenError(e)); return; }
      if (this.conn !== conn) return;
      if (this.send(conn, { type: 'auth', token: tok })) {
        this.authPending = true;
        this.stats.tokenRefreshes++;
        conn.token = tok;
        this.scheduleRefresh(conn, tok);
      }
    }, Math.max(0, left - lead)));
  }

  private setState(sc: StateChange): void {
    this.st = sc.state;
    this.emit('state', sc);
  }

  // ---- delivery ----

  private enqueue(it: Item): void {
    this.queue.push(it);
    if (!this.pumping) this.pump().catch((e) => this.emit('error', new FlarecastError('flarecast: internal error: ' + String(e))));
  }

  private async pump(): Promise<void> {
    this.pumping = true;
    try {
      while (this.qHead < this.queue.length && !this.closed) {
        const it = this.queue[this.qHead++]!;
        if (this.qHead > 1024 && this.qHead * 2 > this.queue.length) { this.queue = this.queue.slice(this.qHead); this.qHead = 0; }
        if (it.kind === 'fresh') {
          this.watch = it.above > 0 && it.gen > this.voidThrough ? { gen: it.gen, above: it.above } : undefined;
          continue;
        }
        const id = it.ev.message_id;
        // The first event the new session receives on any of its
        // connections decides: a cut may come before it, and the session
        // then resumes on a later one.
        if (this.watch && it.gen >= this.watch.gen) {
          if (id <= this.watch.above) this.restarted(id, this.watch.above);
          this.watch = undefined;
        }
        const fresh = this.seen.add(id);
        const ev = it.ev;
        const to = [...this.subs.values()].filter((s) => {
          const r = s._redo;
          const again = r !== undefined && id > r.since && id <= r.upTo && r.seen.add(id);
          return (fresh || again) && matches(s.filters, ev.event ?? ({} as EventBody));
        });
        for (const s of to) await s._deliver(ev);
        if (this.closed) break;
        if (to.length > 0) this.stats.delivered++;
        else if (!fresh) this.stats.duplicates++;
        if (fresh && id > this.maxProcessed) this.maxProcessed = id;
        if (it.gen === this.gen && id > this.connProcessed) this.connProcessed = id;
      }
    } finally {
      this.pumping = false;
    }
  }

  // restarted: a new session subscribed with since=N got an id ≤ N, so the
  // server's numbering started again (a restarted single server). Forget
  // the old ids and backfill the new server's window with since 0.
  private restarted(firstId: number, since: number): void {
    this.stats.restarts++;
    this.seen.reset();
    this.maxProcessed = 0;
    // New sessions welcomed until now made their since from the old numbering.
    this.voidThrough = this.gen;
    for (const s of this.subs.values()) s._redo = undefined;
    this.emit('restart', { firstId, since });
    // On the current connection, whichever of the session's connections
    // the event came on; one that is gone leaves the requests pending, and
    // the next connection sends them again.
    const conn = this.conn;
    for (const s of this.subs.values()) {
      const r: Request = { kind: 'subscribe', sub: s, since: 0, resolve: () => s._confirm(undefined), reject: (e) => this.dropSub(s, e) };
      this.pending.push(r);
      if (conn) this.sendRequest(conn, r);
    }
  }
}

interface ServerMessage {
  type: string;
  [field: string]: unknown;
}

function terminate(ws: WebSocketLike): void {
  try {
    const t = (ws as unknown as { terminate?: () => void }).terminate;
    if (typeof t === 'function') t.call(ws);
    else ws.close(4000, 'dead');
  } catch { /* already closed */ }
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  const out: Partial<T> = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) (out as Record<string, unknown>)[k] = v;
  return out;
}
