'use strict';
// Drives flarecast's echo endpoint (--echo-path) with the Node.js `ws`
// package, for engine/echo_test.go: it sends text and binary messages of
// several sizes, checks each comes back unchanged and of the same kind,
// and prints one JSON line: {"ok":true,"extensions":"…","checked":N} or
// {"ok":false,"message":"…"}. It exits by itself after 30 s.
//
// Usage: node echo.js <ws-url> <deflate: true|false>

const WebSocket = require('ws');

const [url, deflateArg] = process.argv.slice(2);
const out = (o) => { process.stdout.write(JSON.stringify(o) + '\n'); };
const fail = (message) => { out({ ok: false, message }); process.exit(1); };
setTimeout(() => fail('timeout after 30s'), 30000);

const messages = [];
for (const n of [0, 1, 125, 126, 4096, 65535, 65536]) {
  messages.push({ binary: false, data: 'é'.repeat(Math.floor(n / 2)) + 'x'.repeat(n % 2) });
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 7) & 0xff;
  messages.push({ binary: true, data: b });
}

const ws = new WebSocket(url, { perMessageDeflate: deflateArg === 'true' });
let next = 0;
const sendNext = () => {
  const m = messages[next];
  ws.send(m.data, { binary: m.binary, compress: true });
};
ws.on('open', sendNext);
ws.on('message', (data, isBinary) => {
  const m = messages[next];
  if (isBinary !== m.binary) fail(`message ${next}: binary=${isBinary}, want ${m.binary}`);
  const want = m.binary ? m.data : Buffer.from(m.data, 'utf8');
  if (!Buffer.from(data).equals(want)) fail(`message ${next}: ${data.length} bytes back, want ${want.length}`);
  if (++next === messages.length) {
    out({ ok: true, extensions: String(ws.extensions), checked: next });
    ws.close(1000, 'done');
    return;
  }
  sendNext();
});
ws.on('close', () => process.exit(0));
ws.on('error', (err) => fail(String(err)));
