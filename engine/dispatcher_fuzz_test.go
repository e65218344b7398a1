package engine

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/flarecast/flarecast/codec"
	"github.com/flarecast/flarecast/event"
)

// fuzzConn is a gnet.Conn whose socket either takes everything or, while
// stalled, nothing, and whose client sends nothing: what the loop's flush,
// reader and close call on it.
type fuzzConn struct {
	gnet.Conn
	stalled bool
	out     int // bytes "buffered by gnet" while stalled
}

func (c *fuzzConn) OutboundBuffered() int    { return c.out }
func (c *fuzzConn) InboundBuffered() int     { return 0 }
func (c *fuzzConn) Close() error             { return nil }
func (c *fuzzConn) Peek(int) ([]byte, error) { return nil, nil } // the client sends nothing
func (c *fuzzConn) Discard(int) (int, error) { return 0, nil }

func (c *fuzzConn) Write(b []byte) (int, error) {
	if c.stalled {
		c.out += len(b)
	}
	return len(b), nil
}

func (c *fuzzConn) Writev(bs [][]byte) (int, error) {
	n := 0
	for _, b := range bs {
		n += len(b)
	}
	return c.Write(make([]byte, n))
}

// FuzzDispatcherCommands drives one dispatcher with arbitrary streams of
// subscribe (up to 40,000 filter values, under --max-message-size 16MiB),
// unsubscribe, ack, backfill, takeover, disconnect and events, on
// connections whose sockets stall and drain, through the same decoding and
// command path as the event loops. No input may panic, and after every
// step the index holds exactly the sessions' subscriptions and every ack
// ledger's resume point is one the dispatcher has reached.
func FuzzDispatcherCommands(f *testing.F) {
	f.Add([]byte{0, 5, 0, 10, 1, 2, 0, 2, 1, 3, 0, 4, 2, 1})
	f.Add([]byte{0, 0, 0x9c, 0x40, 0, 0, 2, 3, 2, 4, 3, 1, 8, 0, 0x9c, 0x40, 2}) // 40,000 incident ids
	f.Add([]byte{0, 1, 0, 3, 2, 7, 2, 0, 2, 1, 2, 2, 7, 3, 5, 8, 1, 0, 0, 1, 9, 2, 4, 0, 6})
	f.Add([]byte{7, 2, 0, 2, 1, 2, 2, 2, 3, 7, 3, 255, 4, 0, 5, 0, 6, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		cfg := DefaultConfig()
		cfg.IngestSocket, cfg.AdminListen = "", ""
		cfg.IOURing = false // stub connections have no socket to hand the kernel
		cfg.MaxMessageSize = 16 << 20
		cfg.MaxPendingMessages = 50
		cfg.MaxPendingBytes = 64 << 10
		cfg.HistorySize = 64
		eng, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		d := eng.disp
		stubs := []*stubLoop{{}, {}}
		loops := []*loop{newLoop(eng, stubs[0]), newLoop(eng, stubs[1])}
		now := time.Now()
		var conns []*conn
		connect := func(resume string) *conn {
			c := &conn{gc: &fuzzConn{}, loop: loops[len(conns)%2], state: stateOpen, upgraded: true}
			conns = append(conns, c)
			d.attach(c, resume, nil, now)
			return c
		}
		for range 3 {
			connect("")
		}
		step := func() {
			for d.runCommands() {
			}
			d.pumpReplays()
			d.history.Trim()
			d.handOff()
			for _, st := range stubs {
				st.run()
			}
		}
		step()
		next := func() byte {
			if len(ops) == 0 {
				return 0
			}
			b := ops[0]
			ops = ops[1:]
			return b
		}
		published := 0
		for len(ops) > 0 {
			op := next()
			c := conns[int(next())%len(conns)]
			switch op % 8 {
			case 0, 1: // subscribe; an odd op asks for a backfill
				var n [2]byte
				n[0], n[1] = next(), next()
				values := min(int(binary.BigEndian.Uint16(n[:])), 40000)
				msg := fuzzSubscribe(int(op/8)%3, values, op%2 == 1, d.lastID/2)
				m, merr := codec.DecodeClientMessage(msg, codec.Limits{MaxFilterValues: cfg.MaxFilterValues})
				if merr != nil {
					if values <= cfg.MaxFilterValues {
						t.Fatalf("subscribe with %d values refused: %v", values, merr)
					}
					continue
				}
				c.inflight.Add(1)
				d.cmds.push(command{kind: cmdSubscribe, c: c, msg: m})
			case 2: // an event
				line := fmt.Sprintf(`{"event_type":"escalated","incident_id":"INC-%d","severity":"P%d","priority":%q}`,
					next()%4, next()%5, [...]string{"critical", "high", "normal"}[published%3])
				ev, err := event.Parse([]byte(line))
				if err != nil {
					t.Fatalf("event %s: %v", line, err)
				}
				published++
				ev.Accepted = now
				d.dispatchEvent(uint64(published), ev)
			case 3: // an ack, possibly far ahead
				id := d.lastID - min(d.lastID, uint64(next()))
				if op&0x80 != 0 {
					id = 1 << 50
				}
				c.loop.mu.Lock()
				c.acks.ack(id)
				c.loop.mu.Unlock()
			case 4: // another connection takes the session over
				if c.sess != nil && !c.gone {
					connect(c.sess.id.String())
				}
			case 5: // the connection drops
				if !c.closed {
					c.closed = true
					c.loop.release(c)
					d.cmds.push(command{kind: cmdDetach, c: c, now: now})
				}
			case 6: // a new client, or a resume of a dropped one
				if op&0x80 != 0 && c.sess != nil {
					connect(c.sess.id.String())
				} else {
					connect("")
				}
			case 7: // the socket stalls, or drains again
				fc := c.gc.(*fuzzConn)
				fc.stalled = !fc.stalled
				if !fc.stalled {
					fc.out = 0
				}
				c.loop.retry()
			}
			if op&0x40 != 0 {
				d.cmds.push(command{kind: cmdUnsubscribe, c: c, msg: &codec.ClientMessage{SubscriptionID: "s" + strconv.Itoa(int(op)%3)}})
				c.inflight.Add(1)
			}
			step()
			subs := 0
			for _, s := range d.slots {
				if s != nil {
					subs += len(s.subList())
				}
			}
			if got := d.index.Len(); got != subs {
				t.Fatalf("index holds %d subscriptions, sessions %d", got, subs)
			}
			for _, c := range conns {
				if c.acks.point > d.lastID {
					t.Fatalf("resume point %d beyond the last event %d", c.acks.point, d.lastID)
				}
				if n := c.inflight.Load(); n != 0 {
					t.Fatalf("%d commands in flight after the dispatcher ran them", n)
				}
			}
		}
	})
}

// fuzzSubscribe is a subscribe message listing n values of one kind.
func fuzzSubscribe(kind, n int, backfill bool, since uint64) []byte {
	var b strings.Builder
	b.WriteString(`{"type":"subscribe","subscription_id":"s` + strconv.Itoa(n%3) + `","filters":{`)
	key := [...]string{"incident_ids", "affected_resources", "sources"}[kind]
	b.WriteString(`"` + key + `":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`"v` + strconv.Itoa(i%4) + `-` + strconv.Itoa(i) + `"`)
	}
	b.WriteString(`]}`)
	if backfill {
		b.WriteString(`,"since":` + strconv.FormatUint(since, 10))
	}
	b.WriteString(`}`)
	return []byte(b.String())
}
