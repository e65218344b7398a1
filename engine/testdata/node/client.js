'use strict';
// A flarecast client on the Node.js `ws` package, for
// engine/compression_test.go: it connects offering permessage-deflate,
// sends one subscribe message, and prints every server message as one JSON
// line on stdout, plus its own lines (type node_*): node_open (with the
// negotiated extensions), node_close, node_error. It closes after `count`
// events and exits by itself after 30 s whatever happens.
//
// Usage: node client.js <ws-url> <subscribe-json> <count>

const WebSocket = require('ws');

const [url, subscribe, countArg] = process.argv.slice(2);
const want = Number(countArg);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');

const deadline = setTimeout(() => {
  out({ type: 'node_error', message: 'timeout after 30s' });
  process.exit(2);
}, 30000);

let responseExtensions = '';
let events = 0;
const ws = new WebSocket(url, { perMessageDeflate: true });

ws.on('upgrade', (res) => {
  responseExtensions = res.headers['sec-websocket-extensions'] || '';
});
ws.on('open', () => {
  out({ type: 'node_open', extensions: ws.extensions, header: responseExtensions });
  ws.send(subscribe);
});
ws.on('message', (data, isBinary) => {
  if (isBinary) {
    out({ type: 'node_error', message: 'binary message' });
    process.exit(1);
  }
  const msg = JSON.parse(data.toString('utf8'));
  out(msg);
  if (msg.type === 'event' && ++events === want) {
    ws.close(1000, 'done');
  }
});
ws.on('close', (code) => {
  clearTimeout(deadline);
  out({ type: 'node_close', code });
  process.exit(0);
});
ws.on('error', (err) => {
  out({ type: 'node_error', message: String(err) });
  process.exit(1);
});
