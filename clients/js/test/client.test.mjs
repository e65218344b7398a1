// Tests of @flarecast/client against the real bin/flarecast (make build).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import WebSocket from 'ws';
import {
  FlarecastClient, HandshakeError, InvalidMessageError, LimitExceededError, ServerError, TokenExpiredError,
  ClosedError, SeenSet, matches, tokenExpiry, serverError, closedError,
  NotFoundError, UnsupportedError, RateLimitedError, UnauthorizedError, HistoryGapError,
  ServerShutdownError, SessionTimeoutError, SlowConsumerError, SessionTakenOverError, PolicyViolationError, ConnectionLostError,
} from '../dist/index.js';
import { Server, CutProxy, waitFor, token, ev, priorityOf } from './harness.mjs';

const fast = { WebSocket, minBackoffMs: 10, maxBackoffMs: 100 };

function client(t, url, opts = {}) {
  const c = new FlarecastClient(url, { ...fast, ...opts });
  t.after(() => c.close());
  return c;
}

// collect gathers a subscription's events through on('event').
function collect(sub) {
  const got = [];
  sub.on('event', (e) => { got.push(e); });
  return got;
}

test('SeenSet: new ids once, an overtaken lower id still new, a window that slides', () => {
  const s = new SeenSet(64);
  assert.equal(s.add(5), true);
  assert.equal(s.add(5), false);
  assert.equal(s.add(3), true); // overtaken: lower, but not seen
  assert.equal(s.add(200), true); // slides: base 136
  assert.equal(s.add(100), false); // below the window counts as seen
  assert.equal(s.add(199), true);
  s.reset();
  assert.equal(s.add(5), true);
});

test('matches and tokenExpiry', () => {
  const e = { event_type: 'escalated', priority: 'critical', severity: 'P0', affected_resources: ['api'], labels: { env: 'prod' } };
  assert.equal(matches({}, e), true);
  assert.equal(matches({ severities: ['P0', 'P1'], labels: { env: 'prod' } }, e), true);
  assert.equal(matches({ severities: ['P2'] }, e), false);
  assert.equal(matches({ states: ['Triaged'] }, e), false); // a list never matches an event lacking the field
  assert.equal(matches({ affected_resources: ['db', 'api'] }, e), true);
  assert.equal(matches({ labels: { env: 'dev' } }, e), false);
  const exp = Math.floor(Date.now() / 1000) + 60;
  assert.equal(tokenExpiry(token('k'.repeat(32), { sub: 'x', exp })), exp * 1000);
  assert.equal(tokenExpiry('not-a-jwt'), 0);
});

test('every error code and closing reason has its class', () => {
  const codes = { INVALID_MESSAGE: InvalidMessageError, UNSUPPORTED: UnsupportedError, NOT_FOUND: NotFoundError,
    LIMIT_EXCEEDED: LimitExceededError, RATE_LIMITED: RateLimitedError, UNAUTHORIZED: UnauthorizedError, HISTORY_GAP: HistoryGapError };
  for (const [code, C] of Object.entries(codes)) {
    const e = serverError(code, 'm', 4);
    assert.ok(e instanceof C && e instanceof ServerError && e.code === code && e.serverMessage === 'm', code);
  }
  assert.equal(serverError('SOMETHING_NEW', 'x').constructor, ServerError);
  const reasons = { server_shutdown: ServerShutdownError, session_timeout: SessionTimeoutError, slow_consumer: SlowConsumerError,
    session_taken_over: SessionTakenOverError, token_expired: TokenExpiredError, policy_violation: PolicyViolationError };
  for (const [reason, C] of Object.entries(reasons)) {
    const e = closedError(reason, 1001, 'bye');
    assert.ok(e instanceof C && e instanceof ClosedError && e.reason === reason && e.code === 1001, reason);
  }
  assert.ok(closedError('', 1009, 'too big') instanceof ConnectionLostError);
});

test('the iterator acks an event once the loop body finished', async (t) => {
  const s = await new Server(t).start();
  const c = client(t, s.ws, { ackIntervalMs: 50 });
  const sub = c.subscribe({});
  await sub.ready;
  const ids = await s.publish(Array.from({ length: 5 }, () => ev('incident_updated', 'P2')));
  let i = 0;
  for await (const e of sub) {
    assert.equal(e.message_id, ids[i++]);
    if (i === 3) {
      await new Promise((r) => setTimeout(r, 400)); // eight ack intervals inside the body
      assert.equal(c.lastAcked, ids[1], 'the event in the body is not acked');
    }
    if (i === 5) break;
  }
  await waitFor(() => `ack of the last (at ${c.lastAcked})`, () => c.lastAcked === ids[4]);
});

test('events arrive typed, filtered, in order, through on() and the iterator; unsubscribe ends', async (t) => {
  const s = await new Server(t).start();
  const c = client(t, s.ws);
  const states = [];
  c.on('state', (sc) => states.push(sc.state));
  const crit = c.subscribe({ severities: ['P0', 'P1'] });
  const esc = c.subscribe({ event_types: ['escalated'], labels: { env: 'prod' } }, { id: 'esc' });
  await Promise.all([crit.ready, esc.ready]);
  assert.deepEqual(esc.filtersInForce.event_types, ['escalated']);
  const gotCrit = collect(crit);
  const lines = [];
  for (let i = 0; i < 60; i++) {
    lines.push(ev(['incident_created', 'escalated', 'comment_added'][i % 3], ['P0', 'P1', 'P2', 'P3'][i % 4],
      { incident_id: `INC-${i}`, state: 'Triaged', source: 'sentinel', affected_resources: ['api'], labels: { env: 'prod' }, title: `t${i}`, custom: 1 }));
  }
  const ids = await s.publish(lines);
  const wantCrit = ids.filter((_, i) => ['P0', 'P1'].includes(lines[i].severity));
  const wantEsc = ids.filter((_, i) => lines[i].event_type === 'escalated');
  const gotEsc = [];
  for await (const e of esc) {
    gotEsc.push(e);
    if (gotEsc.length === wantEsc.length) break;
  }
  await waitFor(() => `crit ${gotCrit.length}/${wantCrit.length}`, () => gotCrit.length === wantCrit.length);
  assert.deepEqual(gotCrit.map((e) => e.message_id), wantCrit);
  assert.deepEqual(gotEsc.map((e) => e.message_id), wantEsc);
  const e = gotEsc[0];
  assert.equal(e.event.event_type, 'escalated');
  assert.equal(e.event.state, 'Triaged');
  assert.equal(e.event.priority, priorityOf(e.event));
  assert.equal(e.event.custom, 1);
  assert.ok(!Number.isNaN(Date.parse(e.timestamp)));
  await esc.unsubscribe();
  assert.equal(esc.ended, true);
  await waitFor('one active subscription', async () => (await s.metric('websocket_active_subscriptions')) === 1);
  assert.deepEqual(states, ['live']);
  await c.close();
  assert.equal(c.state, 'closed');
  assert.equal(crit.ended, true);
});

test('acks name what the application processed: a resume replays exactly the rest', async (t) => {
  const s = await new Server(t).start();
  const c = client(t, s.ws);
  const sub = c.subscribe({});
  await sub.ready;
  let taken = 0;
  let hold;
  sub.on('event', () => {
    taken++;
    if (taken === 5) return new Promise((r) => (hold = r)); // the fifth is never finished
  });
  const published = await s.publish(Array.from({ length: 10 }, () => ev('incident_updated', 'P2')));
  await waitFor('five events taken', () => taken === 5);
  await waitFor('an ack', async () => (await s.metric('websocket_acks_received_total')) >= 1);
  const session = c.sessionId;
  await c.close();
  hold();
  await waitFor('the close', async () => (await s.metric('websocket_connections_closed_total{reason="client_closed"}')) >= 1);
  const ws = new WebSocket(`${s.ws}?session_id=${session}`);
  const replayed = [];
  let resumed;
  ws.on('message', (d) => {
    const m = JSON.parse(d);
    if (m.type === 'welcome') resumed = m.resumed;
    if (m.type === 'event') replayed.push(m.message_id);
  });
  t.after(() => ws.terminate());
  await waitFor(() => `6 replayed, have ${replayed}`, () => replayed.length >= 6);
  assert.equal(resumed, true);
  assert.deepEqual(replayed, published.slice(4), 'everything after the four processed');
});

test('a TCP proxy cuts the connection in the middle of a publish: every event once, in order per priority', async (t) => {
  const s = await new Server(t).start();
  const p = await new CutProxy(t, s.wsPort).listen();
  const c = client(t, `ws://${p.addr}/ws`);
  let lost = 0;
  c.on('state', (sc) => { if (sc.state === 'reconnecting') lost++; });
  const sub = c.subscribe({ severities: ['P0', 'P1', 'P3'] });
  await sub.ready;
  const got = new Map();
  const last = {};
  let bad = '';
  sub.on('event', (e) => {
    got.set(e.message_id, (got.get(e.message_id) ?? 0) + 1);
    if (got.get(e.message_id) > 1) bad ||= `message ${e.message_id} delivered twice`;
    const pr = e.event.priority;
    if (e.message_id <= (last[pr] ?? 0)) bad ||= `${pr} event ${e.message_id} after ${last[pr]}`;
    last[pr] = e.message_id;
  });
  const n = 3000, batch = 10;
  const t0 = Date.now();
  const want = new Set();
  let cuts = 0;
  // Four cuts at random batches, one in each fifth of the stream after the first.
  const cutAt = [1, 2, 3, 4].map((k) => Math.floor((k + Math.random()) * n / batch / 5));
  for (let b = 0; b * batch < n; b++) {
    const lines = [];
    for (let j = b * batch; j < (b + 1) * batch; j++) lines.push(ev(['escalated', 'incident_created', 'comment_added'][j % 3], ['P0', 'P1', 'P2', 'P3'][j % 4]));
    const publishing = s.publish(lines);
    if (cutAt.includes(b)) { await waitFor('live', () => c.state === 'live'); p.cut(); cuts++; } // while the batch is in flight
    const ids = await publishing;
    ids.forEach((id, k) => { if (lines[k].severity !== 'P2') want.add(id); });
    await new Promise((r) => setTimeout(r, 5));
  }
  await waitFor(() => `${got.size} of ${want.size} events (cuts ${cuts}, reconnects ${lost})`, () => got.size >= want.size, 60000);
  const [sentinel] = await s.publish([ev('escalated', 'P0')]);
  await waitFor('the sentinel', () => got.has(sentinel));
  assert.equal(bad, '');
  for (const id of want) assert.equal(got.get(id), 1, `message ${id}`);
  assert.equal(got.size, want.size + 1);
  const resumes = await s.metric('flarecast_session_resumes_total{result="resumed"}');
  assert.ok(cuts === 4 && lost >= 4 && resumes >= 1 && c.stats.resumes >= 1, `cuts ${cuts}, reconnects ${lost}, resumes ${resumes}`);
  t.diagnostic(`${Date.now() - t0} ms: ${want.size} events, ${cuts} cuts, ${c.stats.resumes} resumes, ${c.stats.duplicates} duplicates suppressed, ${c.stats.acksSent} acks`);
});

// restartBehindProxy is the start of the restart tests: a client behind a
// cut proxy, subscribed to incident_updated, received five events; then the
// proxy reset its connection (before the server stops: a server-side close
// would leave the port in TIME_WAIT) and held new ones while the server
// restarted on the same ports.
async function restartBehindProxy(t) {
  const s = await new Server(t).start();
  const p = await new CutProxy(t, s.wsPort).listen();
  const c = client(t, `ws://${p.addr}/ws`);
  const states = [];
  c.on('state', (sc) => states.push(sc));
  const sub = c.subscribe({ event_types: ['incident_updated'] });
  await sub.ready;
  const got = collect(sub);
  const before = await s.publish(Array.from({ length: 5 }, () => ev('incident_updated', 'P1')));
  await waitFor('the first five', () => got.length === 5);
  assert.deepEqual(got.map((e) => e.message_id), before);
  p.holdNew();
  p.cut();
  await s.restart();
  return { s, p, c, got, before, newSession: () => states.some((sc) => sc.state === 'live' && sc.newSession) };
}

/** expectSentinel checks that nothing more (no duplicate) comes after the first n events, before a last live one. */
async function expectSentinel(s, got, n) {
  const [sentinel] = await s.publish([ev('incident_updated', 'P1')]);
  await waitFor('the sentinel', () => got.length > n);
  assert.equal(got[n].message_id, sentinel, 'nothing (no duplicate) before the sentinel');
}

test('a server restart within the session timeout: the session is gone, the client subscribes again with since', async (t) => {
  const { s, p, c, got, before, newSession } = await restartBehindProxy(t);
  const early = await s.publish([ev('incident_updated', 'P2'), ev('comment_added', 'P2'), ev('incident_updated', 'P3')]);
  p.release();
  await waitFor('the client subscribed again', async () => (await s.metric('websocket_active_subscriptions')) === 1);
  const late = await s.publish(Array.from({ length: 4 }, () => ev('incident_updated', 'P1')));
  const want = [...before, early[0], early[2], ...late];
  await waitFor(() => `${got.length} of ${want.length}: ${got.map((e) => e.message_id)}`, () => got.length >= want.length);
  // Each of the new server's once (those published before the client
  // noticed the restart are backfilled when it does, after the first live one).
  const ids = got.map((e) => e.message_id);
  assert.deepEqual(ids.slice(5).sort((a, b) => a - b), want.slice(5).sort((a, b) => a - b));
  await expectSentinel(s, got, want.length);
  assert.ok(newSession(), 'a new-session state change');
  assert.equal(c.stats.restarts, 1);
});

test('a restart, then a cut before the new server\'s first event: the resumed session still sees the restart', async (t) => {
  // The first event of the new session, on whichever of its connections,
  // decides; a watch that ended with the connection dropped the new
  // server's ids up to the old ones as duplicates.
  const { s, p, c, got, before, newSession } = await restartBehindProxy(t);
  p.release();
  await waitFor('the client subscribed again', async () => (await s.metric('websocket_active_subscriptions')) === 1);
  await waitFor('a new session', newSession);
  p.cut();
  await waitFor('the session resumed', async () => (await s.metric('flarecast_session_resumes_total{result="resumed"}')) >= 1);
  const after = await s.publish(Array.from({ length: 7 }, () => ev('incident_updated', 'P2')));
  const want = [...before, ...after];
  await waitFor(() => `${got.length} of ${want.length}: ${got.map((e) => e.message_id)}`, () => got.length >= want.length);
  assert.deepEqual(got.map((e) => e.message_id), want);
  await expectSentinel(s, got, want.length);
  assert.equal(c.stats.restarts, 1);
});

test('a session lost before any event was processed: the client subscribes again from its subscription\'s start', async (t) => {
  const s = await new Server(t, ['--session-timeout', '300ms', '--cleanup-interval', '50ms']).start();
  const p = await new CutProxy(t, s.wsPort).listen();
  const c = client(t, `ws://${p.addr}/ws`);
  const states = [];
  c.on('state', (sc) => states.push(sc));
  await s.publish([ev('incident_updated', 'P1')]); // before the subscription: not for it
  const sub = c.subscribe({ severities: ['P1'] });
  await sub.ready;
  const got = collect(sub);
  p.holdNew();
  p.cut();
  const away = await s.publish([ev('incident_updated', 'P1'), ev('escalated', 'P1')]);
  await new Promise((r) => setTimeout(r, 700)); // past the session timeout and a sweep
  p.release();
  await waitFor(() => `${got.length} of 2: ${got.map((e) => e.message_id)}`, () => got.length >= 2);
  assert.deepEqual(got.map((e) => e.message_id), away);
  assert.ok(states.some((sc) => sc.state === 'live' && sc.newSession), 'a new-session state change');
});

test('a token about to expire is refreshed through auth on the same connection', async (t) => {
  const secret = 'flarecast-js-client-test-secret-0123456789';
  const dir = mkdtempSync(path.join(os.tmpdir(), 'flarecast-js-'));
  writeFileSync(path.join(dir, 'secret'), secret);
  const s = await new Server(t, ['--auth', 'jwt', '--jwt-hs256-secret-file', path.join(dir, 'secret'), '--cleanup-interval', '100ms']).start();
  const now = () => Math.floor(Date.now() / 1000);
  const first = token(secret, { sub: 'bot', exp: now() + 2 });
  let calls = 0, reconnects = 0;
  const c = client(t, s.ws, {
    getToken: async () => (++calls === 1 ? first : token(secret, { sub: 'bot', exp: now() + 3600 })),
  });
  c.on('state', (sc) => { if (sc.state === 'reconnecting') reconnects++; });
  const authed = [];
  c.on('authenticated', (a) => authed.push(a));
  const sub = c.subscribe({});
  await sub.ready;
  const got = collect(sub);
  // Let the first token's exp pass (the server checks every 100 ms).
  await new Promise((r) => setTimeout(r, tokenExpiry(first) - Date.now() + 1000));
  const [id] = await s.publish([ev('system_event', 'P4')]);
  await waitFor('the event', () => got.length === 1);
  assert.equal(got[0].message_id, id);
  assert.ok(calls >= 2 && authed.length >= 1 && reconnects === 0, `getToken calls ${calls}, authenticated ${authed.length}, reconnects ${reconnects}`);
  assert.equal(await s.metric('websocket_connections_closed_total{reason="token_expired"}'), 0);

  // A static token that expires ends the client with the typed closing reason.
  const d = client(t, s.ws, { token: token(secret, { sub: 'bot', exp: now() + 1 }) });
  const dsub = d.subscribe({});
  await dsub.ready;
  const it = dsub[Symbol.asyncIterator]();
  await assert.rejects(it.next(), (e) => e instanceof TokenExpiredError && e.code === 1008 && e.reason === 'token_expired');
  await waitFor('the client to close', () => d.state === 'closed');
  assert.ok(d.error instanceof TokenExpiredError);

  // No token at all: the upgrade is refused with 401, which is final.
  const e = client(t, s.ws, {});
  await assert.rejects(e.ready, (err) => err instanceof HandshakeError && err.status === 401);
  assert.equal(e.state, 'closed');
});

test('refusals are typed: LIMIT_EXCEEDED, INVALID_MESSAGE; HISTORY_GAP goes to gap', async (t) => {
  const s = await new Server(t, ['--max-subscriptions', '1', '--history-size', '2']).start();
  const ids = await s.publish(Array.from({ length: 5 }, () => ev('incident_updated', 'P2')));
  const c = client(t, s.ws);
  const gaps = [];
  c.on('gap', (g) => gaps.push(g));
  const one = c.subscribe({}, { since: 0 });
  await one.ready;
  const got = collect(one);
  await waitFor('two replayed', () => got.length === 2);
  assert.deepEqual(got.map((e) => e.message_id), ids.slice(3));
  await waitFor('the gap', () => gaps.length === 1);
  assert.equal(gaps[0].firstAvailable, ids[3]);
  const two = c.subscribe({});
  await assert.rejects(two.ready, (e) => e instanceof LimitExceededError && e.code === 'LIMIT_EXCEEDED');
  assert.ok(two.ended && two.error instanceof ServerError);
  const bad = c.subscribe({ severities: ['P7'] }, { id: 'bad' });
  await assert.rejects(bad.ready, InvalidMessageError);
  await one.unsubscribe();
  assert.equal(c.state, 'live');
  assert.ok(!(gaps[0].error instanceof ClosedError));
});

test('a connection that goes silent is replaced after three heartbeat intervals, and resumed', async (t) => {
  const s = await new Server(t).start();
  const p = await new CutProxy(t, s.wsPort).listen();
  const c = client(t, `ws://${p.addr}/ws`, { heartbeatIntervalMs: 200 });
  const errors = [];
  c.on('state', (sc) => { if (sc.state === 'reconnecting') errors.push(sc.error); });
  const sub = c.subscribe({});
  await sub.ready;
  const got = collect(sub);
  const [a] = await s.publish([ev('system_event', 'P4')]);
  await waitFor('the first event', () => got.length === 1);
  // Over a second of quiet with pings answered: the connection stays.
  await new Promise((r) => setTimeout(r, 1000));
  assert.equal(errors.length, 0, 'a quiet but healthy connection is kept (pings are answered)');
  p.freeze();
  const t0 = Date.now();
  await waitFor('the silent connection to be replaced', () => errors.length === 1, 5000);
  assert.ok(Date.now() - t0 >= 400, 'not before three intervals of silence');
  const [b] = await s.publish([ev('system_event', 'P4')]);
  await waitFor('the next event', () => got.length === 2);
  assert.deepEqual(got.map((e) => e.message_id), [a, b]);
  assert.equal(errors[0].name, 'ConnectionLostError');
  assert.equal(c.stats.resumes, 1);
});

test('session_taken_over: typed, and the client moves to a new session with since', async (t) => {
  const s = await new Server(t).start();
  const c = client(t, s.ws);
  const errors = [];
  c.on('state', (sc) => { if (sc.state === 'reconnecting') errors.push(sc.error); });
  const sub = c.subscribe({});
  await sub.ready;
  const got = collect(sub);
  const first = await s.publish([ev('system_event', 'P4'), ev('system_event', 'P4')]);
  await waitFor('two events', () => got.length === 2);
  const session = c.sessionId;
  const other = new WebSocket(`${s.ws}?session_id=${session}`);
  t.after(() => other.terminate());
  await waitFor('the take-over', () => errors.length === 1);
  assert.equal(errors[0].name, 'SessionTakenOverError');
  assert.equal(errors[0].reason, 'session_taken_over');
  assert.equal(errors[0].code, 1000);
  await waitFor('live on a new session', () => c.state === 'live' && c.sessionId !== session && c.stats.newSessions === 1);
  const more = await s.publish([ev('system_event', 'P4')]);
  await waitFor('the next event', () => got.length === 3);
  assert.deepEqual(got.map((e) => e.message_id), [...first, ...more], 'nothing twice, nothing lost');
});

test('redeliver: a replaced subscription refills from history once, without repeating live events', async (t) => {
  const s = await new Server(t).start();
  const c = client(t, s.ws);
  const a = c.subscribe({}, { id: 'view' });
  await a.ready;
  const gotA = collect(a);
  const ids = await s.publish(Array.from({ length: 6 }, (_, i) => ev('incident_updated', ['P1', 'P3'][i % 2])));
  await waitFor('six events', () => gotA.length === 6);
  // Without redeliver the backfill is suppressed: those ids were handed over.
  const b = c.subscribe({ severities: ['P1'] }, { id: 'view', since: 0 });
  await b.ready;
  assert.equal(a.ended, true, 'the same id replaces the subscription');
  const gotB = collect(b);
  const v = c.subscribe({ severities: ['P1'] }, { id: 'view', since: 0, redeliver: true });
  await v.ready;
  const gotV = collect(v);
  const [live] = await s.publish([ev('incident_updated', 'P1')]);
  await waitFor('the backfill and the live event', () => gotV.length === 4);
  assert.deepEqual(gotV.map((e) => e.message_id), [ids[0], ids[2], ids[4], live]);
  assert.deepEqual(gotB.map((e) => e.message_id), []);
  const [next] = await s.publish([ev('incident_updated', 'P1')]);
  await waitFor('one more', () => gotV.length === 5);
  assert.equal(gotV[4].message_id, next);
});
