// The built ESM bundle in real headless Chromium: a page served on
// localhost imports dist/index.js, subscribes, receives events, and
// resumes its session after the test cuts the connection.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { Server, CutProxy, waitFor, here, ev } from './harness.mjs';

const CHROMIUM = process.env.CHROMIUM ?? ['/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome'].find(existsSync);

const page = `<!doctype html>
<html><head><meta charset="utf-8"><title>flarecast client in a browser</title></head>
<body><pre id="log"></pre>
<script type="module">
import { FlarecastClient, SlowConsumerError } from '/flarecast.js';
const ws = new URLSearchParams(location.search).get('ws');
const got = [], states = [];
const c = new FlarecastClient(ws, { minBackoffMs: 20, maxBackoffMs: 200 });
c.on('state', (s) => states.push(s.state + (s.resumed ? ':resumed' : '')));
const sub = c.subscribe({ severities: ['P0', 'P1'] });
sub.on('event', (e) => { got.push(e.message_id); document.getElementById('log').textContent += e.message_id + ' ' + e.event.title + '\\n'; });
await sub.ready;
window.__t = { got, states, client: c, typed: typeof SlowConsumerError === 'function' };
</script></body></html>`;

test('the bundle in headless Chromium: events arrive, a cut is resumed', { timeout: 120000 }, async (t) => {
  if (!CHROMIUM) {
    if (process.env.CI === 'true') assert.fail('chromium is not installed: .ci/run must apt-get install chromium');
    t.skip('chromium is not installed');
    return;
  }
  const { chromium } = await import('playwright-core');
  const s = await new Server(t).start();
  const p = await new CutProxy(t, s.wsPort).listen();
  const bundle = readFileSync(path.join(here, '..', 'dist', 'index.js'));
  const web = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://localhost');
    if (url.pathname === '/') { res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' }); res.end(page); return; }
    if (url.pathname === '/flarecast.js') { res.writeHead(200, { 'Content-Type': 'text/javascript; charset=utf-8' }); res.end(bundle); return; }
    if (url.pathname === '/favicon.ico') { res.writeHead(204); res.end(); return; }
    res.writeHead(404); res.end();
  });
  await new Promise((r) => web.listen(0, '127.0.0.1', r));
  t.after(() => new Promise((r) => { web.closeAllConnections(); web.close(r); }));

  const profile = mkdtempSync(path.join(os.tmpdir(), 'flarecast-chromium-'));
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM, headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  t.after(async () => { await ctx.close(); rmSync(profile, { recursive: true, force: true }); });
  const tab = ctx.pages()[0] ?? await ctx.newPage();
  const problems = [];
  tab.on('pageerror', (e) => problems.push('page exception: ' + e.message));
  tab.on('console', (m) => { if (m.type() === 'error' && !m.text().includes('WebSocket')) problems.push('console error: ' + m.text()); });

  await tab.goto(`http://localhost:${web.address().port}/?ws=${encodeURIComponent(`ws://127.0.0.1:${p.port}/ws`)}`);
  await waitFor('the page to subscribe', () => tab.evaluate(() => !!window.__t));
  const read = () => tab.evaluate(() => ({ got: [...window.__t.got], states: [...window.__t.states], typed: window.__t.typed, stats: { ...window.__t.client.stats } }));

  const lines = Array.from({ length: 30 }, (_, i) => ev(['escalated', 'incident_created', 'comment_added'][i % 3], ['P0', 'P1', 'P2'][i % 3], { title: `browser ${i}` }));
  const ids = await s.publish(lines);
  const want = ids.filter((_, i) => lines[i].severity !== 'P2');
  let st = await waitFor('the events in the page', async () => { const r = await read(); return r.got.length >= want.length && r; });
  assert.deepEqual(st.got, want);
  assert.equal(st.typed, true);

  // Cut the connection, publish while the page is away, see it resume.
  await waitFor('an ack', async () => (await s.metric('websocket_acks_received_total')) >= 1);
  p.holdNew();
  p.cut();
  await waitFor('the page to notice the cut', async () => (await read()).states.includes('reconnecting'));
  const more = await s.publish(lines);
  p.release();
  const want2 = [...want, ...more.filter((_, i) => lines[i].severity !== 'P2')];
  let lastSeen;
  st = await waitFor(() => `the resumed page (${JSON.stringify(lastSeen)})`, async () => { const r = (lastSeen = await read()); return r.got.length >= want2.length && r; });
  assert.deepEqual(st.got, want2);
  assert.ok(st.states.includes('live:resumed') && st.stats.resumes === 1, JSON.stringify(st));
  assert.deepEqual(problems, []);
  t.diagnostic(`Chromium ${ctx.browser()?.version() ?? ''}: ${st.got.length} events, ${st.stats.resumes} resume, ${st.stats.duplicates} duplicates suppressed`);
});
