// The shared conformance scenario (clients/conformance/scenario.json), also
// run by the Go client in client/conformance_test.go.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import WebSocket from 'ws';
import { FlarecastClient } from '../dist/index.js';
import { Server, CutProxy, waitFor, repo } from './harness.mjs';

const scenario = JSON.parse(readFileSync(path.join(repo, 'clients', 'conformance', 'scenario.json'), 'utf8'));

// eventOf is the scenario's i-th event: its priority follows priority_mix
// (critical, high, normal slots in turn), its number n identifies it across
// server lifetimes (a restarted server numbers message_ids from 1 again).
// Keep in step with eventOf in client/conformance_test.go.
export function eventOf(i, lifetime) {
  const mix = scenario.priority_mix;
  const slot = i % (mix.critical + mix.high + mix.normal);
  const sevs = ['P0', 'P1', 'P2', 'P3', 'P4'];
  let e;
  if (slot < mix.critical) e = { event_type: 'escalated', severity: sevs[Math.floor(i / 10) % 2], priority: 'critical' };
  else if (slot < mix.critical + mix.high) {
    e = slot % 2 === 0
      ? { event_type: 'escalated', severity: sevs[2 + (Math.floor(i / 10) % 3)], priority: 'high' }
      : { event_type: 'incident_created', severity: sevs[Math.floor(i / 10) % 2], priority: 'high' };
  } else e = { event_type: 'comment_added', severity: sevs[i % 5], priority: 'normal' };
  return { line: { event_type: e.event_type, severity: e.severity, source: 'conformance', n: i, lifetime }, priority: e.priority };
}

function matchesScenario(line) {
  const f = scenario.filters;
  return !f.severities || f.severities.includes(line.severity);
}

test('conformance scenario: cuts and a restart, every matching event once, in order per priority', { timeout: (scenario.deadline_s + 60) * 1000 }, async (t) => {
  const t0 = Date.now();
  const s = await new Server(t, ['--session-timeout', scenario.session_timeout]).start();
  const p = await new CutProxy(t, s.wsPort).listen();
  const c = new FlarecastClient(`ws://${p.addr}/ws`, { WebSocket, minBackoffMs: 10, maxBackoffMs: 200 });
  t.after(() => c.close());
  const sub = c.subscribe(scenario.filters);
  await sub.ready;

  const got = new Map(); // n → times handed over
  const last = new Map(); // lifetime/priority → last message_id
  const problems = [];
  sub.on('event', (e) => {
    const n = e.event.n;
    got.set(n, (got.get(n) ?? 0) + 1);
    if (got.get(n) > 1) problems.push(`event n=${n} (message ${e.message_id}) handed over twice`);
    const key = e.event.lifetime + '/' + e.event.priority;
    if (e.message_id <= (last.get(key) ?? 0)) problems.push(`${key}: message ${e.message_id} after ${last.get(key)}`);
    last.set(key, e.message_id);
    if (n >= 0 && e.event.priority !== eventOf(n, 0).priority) problems.push(`event n=${n} has priority ${e.event.priority}`);
  });

  const batches = Math.ceil(scenario.events / scenario.batch);
  const restartAt = Math.floor(scenario.restart_at * batches);
  const cutAt = new Set();
  while (cutAt.size < scenario.random_cuts) {
    const b = 1 + Math.floor(Math.random() * (batches - 1));
    if (Math.abs(b - restartAt) > 1) cutAt.add(b);
  }
  const want = new Set();
  let lifetime = 0, cuts = 0;
  for (let b = 0; b < batches; b++) {
    if (b === restartAt) {
      // Everything the old server published reached the client: a restarted
      // single server cannot replay what it held.
      await waitFor(() => `the old server's ${want.size} events (have ${got.size})`, () => [...want].every((n) => got.has(n)), 30000);
      await waitFor('live', () => c.state === 'live');
      p.holdNew();
      p.cut(); // reset first: a server-side close would leave the port in TIME_WAIT
      await s.restart();
      lifetime++;
      p.release();
      await waitFor('the client subscribed on the new server', async () => (await s.metric('websocket_active_subscriptions')) === 1);
    }
    const lines = [];
    for (let i = b * scenario.batch; i < Math.min((b + 1) * scenario.batch, scenario.events); i++) lines.push(eventOf(i, lifetime).line);
    const publishing = s.publish(lines);
    if (cutAt.has(b)) { await waitFor('live', () => c.state === 'live'); p.cut(); cuts++; } // while the batch is in flight
    await publishing;
    for (const l of lines) if (matchesScenario(l)) want.add(l.n);
    if (scenario.batch_pause_ms) await new Promise((r) => setTimeout(r, scenario.batch_pause_ms));
  }
  await waitFor(() => `${want.size} events (have ${got.size}; ${problems.slice(0, 3)})`, () => [...want].every((n) => got.has(n)), scenario.deadline_s * 1000);
  // Nothing more, no late duplicate, before a last live event.
  const [sentinel] = await s.publish([{ event_type: 'escalated', severity: 'P0', n: -1, lifetime }]);
  await waitFor('the sentinel', () => got.has(-1));
  const elapsed = Date.now() - t0;
  assert.deepEqual(problems, []);
  for (const n of want) assert.equal(got.get(n), 1, `event n=${n}`);
  assert.equal(got.size, want.size + 1, 'only matching events');
  assert.equal(cuts, scenario.random_cuts);
  assert.ok(c.stats.resumes >= 1, 'a cut was resumed');
  assert.ok(c.stats.newSessions >= 1 && c.stats.restarts === 1, `new sessions ${c.stats.newSessions}, restarts ${c.stats.restarts}`);
  assert.ok(sentinel > 0);
  const figures = `JS conformance: ${scenario.events} published, ${want.size} matching, ${got.size - 1} handed over once, ` +
    `${cuts} cuts, 1 restart, ${c.stats.resumes} resumes, ${c.stats.newSessions} new sessions, ` +
    `${c.stats.duplicates} duplicates suppressed, ${c.stats.acksSent} acks, ${(elapsed / 1000).toFixed(1)} s`;
  t.diagnostic(figures);
});
