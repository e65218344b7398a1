// Test harness: the real bin/flarecast on loopback ports, HTTP ingest, a
// TCP proxy that cuts connections, and HS256 tokens. Everything started
// here is registered for cleanup with the test that started it.
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync } from 'node:fs';
import net from 'node:net';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const here = path.dirname(fileURLToPath(import.meta.url));
export const repo = path.resolve(here, '..', '..', '..');
export const BIN = process.env.FLARECAST_BIN ?? path.join(repo, 'bin', 'flarecast');

export function requireBinary() {
  if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run \`make build\` in ${repo} first`);
}

/** freePort asks the kernel for a free loopback port. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** waitFor polls fn until it returns a truthy value, or fails after ms with what() describing the last state. */
export async function waitFor(what, fn, ms = 20000, every = 20) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${typeof what === 'function' ? what() : what}`);
    await new Promise((r) => setTimeout(r, every));
  }
}

function get(url) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    req.on('error', reject);
    req.setTimeout(5000, () => req.destroy(new Error('timeout')));
  });
}

/**
 * Server is one bin/flarecast process. start() picks free ports the first
 * time; restart() stops it and starts it again on the same ports.
 */
export class Server {
  constructor(t, extraArgs = []) {
    this.t = t;
    this.extraArgs = extraArgs;
    this.proc = null;
    this.log = '';
    t.after(() => this.stop());
  }

  async start() {
    requireBinary();
    if (!this.wsPort) {
      this.wsPort = await freePort();
      this.adminPort = await freePort();
      this.ingestPort = await freePort();
    }
    this.ws = `ws://127.0.0.1:${this.wsPort}/ws`;
    this.admin = `http://127.0.0.1:${this.adminPort}`;
    this.ingest = `http://127.0.0.1:${this.ingestPort}`;
    const args = ['serve', '--listen', `127.0.0.1:${this.wsPort}`, '--admin-listen', `127.0.0.1:${this.adminPort}`,
      '--ingest-socket', '', '--ingest-listen', `127.0.0.1:${this.ingestPort}`, '--ingest-insecure',
      '--board=false', '--event-loops', '1', '--log-level', 'warn', ...this.extraArgs];
    // A restart on the same port may find it still held by the kernel for a
    // moment: retry until the deadline.
    const deadline = Date.now() + 30000;
    for (;;) {
      const proc = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      proc.stdout.on('data', (d) => (out += d));
      proc.stderr.on('data', (d) => (out += d));
      const exited = new Promise((r) => proc.on('exit', (code, sig) => r({ code, sig })));
      proc.exited = exited;
      let ok = false;
      let gone = null;
      exited.then((e) => (gone = e));
      while (!gone && Date.now() < deadline) {
        try {
          const r = await get(this.admin + '/readyz');
          // readyz answers while the WebSocket listener may still be binding: check it too.
          if (r.status === 200 && await canConnect(this.wsPort)) { ok = true; break; }
        } catch { /* not yet */ }
        await new Promise((r) => setTimeout(r, 25));
      }
      if (ok) {
        this.proc = proc;
        this.out = () => out;
        return this;
      }
      proc.kill('SIGKILL');
      await exited;
      if (Date.now() > deadline) throw new Error('flarecast did not start: ' + out);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** stop sends SIGTERM (a graceful shutdown) and waits, then SIGKILL. */
  async stop() {
    const p = this.proc;
    if (!p) return;
    this.proc = null;
    p.kill('SIGTERM');
    const timer = setTimeout(() => p.kill('SIGKILL'), 15000);
    await p.exited;
    clearTimeout(timer);
  }

  async restart() {
    await this.stop();
    await this.start();
  }

  /** publish POSTs NDJSON lines to /v1/events and returns their message_ids. */
  async publish(lines) {
    const body = lines.map((l) => (typeof l === 'string' ? l : JSON.stringify(l))).join('\n') + '\n';
    const res = await new Promise((resolve, reject) => {
      const req = http.request(this.ingest + '/v1/events', {
        method: 'POST', agent: false, headers: { 'Content-Type': 'application/x-ndjson', 'Content-Length': Buffer.byteLength(body) },
      }, (res) => {
        let b = '';
        res.setEncoding('utf8');
        res.on('data', (d) => (b += d));
        res.on('end', () => resolve({ status: res.statusCode, body: b }));
      });
      req.on('error', reject);
      req.end(body);
    });
    if (res.status !== 200) throw new Error(`POST /v1/events: ${res.status} ${res.body}`);
    const ids = res.body.trim().split('\n').map((l) => JSON.parse(l)).map((r) => {
      if (!r.ok) throw new Error('event refused: ' + JSON.stringify(r));
      return r.message_id;
    });
    if (ids.length !== lines.length) throw new Error(`${ids.length} replies for ${lines.length} lines`);
    return ids;
  }

  /** metric reads one series from /metrics; -1 when absent. */
  async metric(series) {
    const r = await get(this.admin + '/metrics');
    for (const line of r.body.split('\n')) {
      const i = line.lastIndexOf(' ');
      if (i > 0 && line.slice(0, i) === series) return Number(line.slice(i + 1));
    }
    return -1;
  }
}

function canConnect(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.on('connect', () => { s.destroy(); resolve(true); });
    s.on('error', () => resolve(false));
  });
}

/**
 * CutProxy forwards a loopback port to target. cut() resets every
 * connection on both sides at once (RST, no close handshake, as a dead
 * network path looks); holdNew() keeps new connections waiting until
 * release(). Like internal/cutproxy.
 */
export class CutProxy {
  constructor(t, targetPort) {
    this.targetPort = targetPort;
    this.conns = new Set();
    this.pairs = [];
    this.held = [];
    this.holding = false;
    this.cuts = 0;
    this.server = net.createServer((c) => this.accept(c));
    t.after(() => this.close());
  }
  listen() {
    return new Promise((resolve) => this.server.listen(0, '127.0.0.1', () => {
      this.port = this.server.address().port;
      this.addr = `127.0.0.1:${this.port}`;
      resolve(this);
    }));
  }
  accept(c) {
    c.on('error', () => {});
    this.conns.add(c);
    c.on('close', () => this.conns.delete(c));
    if (this.holding) { c.pause(); this.held.push(c); return; }
    this.forward(c);
  }
  forward(c) {
    if (c.destroyed) return;
    const up = net.connect(this.targetPort, '127.0.0.1');
    up.on('error', () => {});
    this.conns.add(up);
    up.on('close', () => this.conns.delete(up));
    up.on('error', () => c.destroy());
    c.on('error', () => up.destroy());
    c.pipe(up);
    up.pipe(c);
    c.resume();
    this.pairs.push([c, up]);
  }
  /** freeze stops forwarding on the current connections without closing them: a path that went silent. */
  freeze() {
    for (const [c, up] of this.pairs.splice(0)) {
      c.unpipe(up); up.unpipe(c); c.pause(); up.pause();
    }
  }
  /** cut resets every connection, the client's and the server's side. */
  cut() {
    this.cuts++;
    for (const c of this.conns) if (!c.destroyed) c.resetAndDestroy();
    this.conns.clear();
  }
  holdNew() { this.holding = true; }
  release() {
    this.holding = false;
    for (const c of this.held.splice(0)) this.forward(c);
  }
  close() {
    this.release();
    this.cut();
    return new Promise((r) => this.server.close(() => r()));
  }
}

/** token mints an HS256 JWT. */
export function token(secret, claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = b64({ alg: 'HS256', typ: 'JWT' }) + '.' + b64(claims);
  return head + '.' + createHmac('sha256', secret).update(head).digest('base64url');
}

/** ev builds an event line. */
export function ev(event_type, severity, extra = {}) {
  return { event_type, severity, ...extra };
}

/** priorityOf is the server's priority rule (docs/protocol.md, "Events and priority"). */
export function priorityOf(e) {
  const urgent = e.severity === 'P0' || e.severity === 'P1';
  if (e.event_type === 'escalated') return urgent ? 'critical' : 'high';
  if ((e.event_type === 'incident_created' || e.event_type === 'alert_received') && urgent) return 'high';
  return 'normal';
}
