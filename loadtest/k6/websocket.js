// k6 script for flarecast's `seed` scenario: 15,000 WebSocket clients, each
// subscribed with one filter, receiving events published at 10,000/s, each
// event matching 10 of them. k6 cannot write to flarecast's Unix ingest
// socket, so the events come from flarecast-loadtest in publish-only mode,
// which stamps each event with its send time (data.lt_sent_ns, Unix ns) and
// targets group g = seq mod 1500 exactly as this script subscribes.
//
//   bin/flarecast serve --listen 127.0.0.1:8080 &
//   k6 run loadtest/k6/websocket.js &          # ramps up for RAMP, holds for HOLD
//   sleep 40                                  # until every VU is connected
//   bin/flarecast-loadtest --publish-only --scenario seed \
//       --ingest-socket flarecast.sock --duration 60s
//
// Environment: URL (ws://127.0.0.1:8080/ws), CONNS (15000), MATCH (10),
// RAMP (30s), HOLD (120s). Keep CONNS below the open-file limit of both k6
// and the server. Loopback only: the script refuses any other host.
//
// Syntax check without k6: node --check --input-type=module < loadtest/k6/websocket.js

import ws from 'k6/ws';
import { check, fail } from 'k6';
import { Counter, Trend } from 'k6/metrics';

const URL = __ENV.URL || 'ws://127.0.0.1:8080/ws';
const CONNS = parseInt(__ENV.CONNS || '15000', 10);
const MATCH = parseInt(__ENV.MATCH || '10', 10);
const RAMP = __ENV.RAMP || '30s';
const HOLD = __ENV.HOLD || '120s';
const GROUPS = MATCH > 0 && MATCH < CONNS ? Math.ceil(CONNS / MATCH) : 1;

const host = URL.replace(/^wss?:\/\//, '').replace(/[/:].*$/, '').replace(/^\[|\]$/g, '');
if (!(host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host))) {
  throw new Error(`refusing non-loopback host ${host}: load tests target 127.0.0.0/8, ::1 or localhost only`);
}

export const options = {
  scenarios: {
    seed: {
      executor: 'ramping-vus',
      startVUs: 0,
      stages: [
        { duration: RAMP, target: CONNS },
        { duration: HOLD, target: CONNS },
      ],
      gracefulRampDown: '5s',
    },
  },
  thresholds: {
    flarecast_latency_ms: ['p(50)<2', 'p(99)<10'],
    flarecast_unexpected_events: ['count==0'],
    flarecast_subscribe_errors: ['count==0'],
    checks: ['rate==1'],
  },
};

const deliveries = new Counter('flarecast_deliveries');
const unexpected = new Counter('flarecast_unexpected_events');
const subscribeErrors = new Counter('flarecast_subscribe_errors');
const latency = new Trend('flarecast_latency_ms', true);

// The same filter kinds as flarecast-loadtest's default mix; every kind
// matches exactly the events of the connection's group.
const kinds = [
  (g) => ({ incident_ids: [`INC-${g}`] }),
  (g) => ({ sources: [`lt-src-${g}`] }),
  (g) => ({ labels: { lt_group: `g${g}` } }),
  (g) => ({ affected_resources: [`lt-res-${g}`] }),
  (g) => ({
    event_types: ['incident_updated', 'alert_received'],
    severities: ['P3'],
    labels: { env: 'loadtest' },
    incident_ids: [`INC-${g}`],
  }),
];

export default function () {
  const i = __VU - 1;
  const group = i % GROUPS;
  const filters = kinds[i % kinds.length](group);
  const res = ws.connect(URL, { compression: 'deflate' }, (socket) => {
    socket.on('message', (data) => {
      const msg = JSON.parse(data);
      switch (msg.type) {
        case 'welcome':
          socket.send(JSON.stringify({ type: 'subscribe', subscription_id: 'lt', filters }));
          break;
        case 'error':
          subscribeErrors.add(1);
          break;
        case 'event': {
          const d = msg.event.data || {};
          if (d.lt_seq % GROUPS !== group) {
            unexpected.add(1);
            return;
          }
          deliveries.add(1);
          // lt_sent_ns is Unix time in ns; a JS number keeps it to ~256 ns.
          latency.add(Date.now() - d.lt_sent_ns / 1e6);
          break;
        }
        default:
      }
    });
    // Hold the connection until the scenario ends; answer the server's
    // heartbeat pings (k6 replies to pings itself) and send a protocol ping
    // now and then so a long hold never reaches the session timeout.
    socket.setInterval(() => socket.send(JSON.stringify({ type: 'ping', timestamp: new Date().toISOString() })), 60000);
    socket.setTimeout(() => socket.close(), 3600 * 1000);
  });
  if (!check(res, { 'upgraded (101)': (r) => r && r.status === 101 })) {
    fail(`connect ${URL}: status ${res && res.status}`);
  }
}
