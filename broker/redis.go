// Package broker connects flarecast instances into a fleet through a shared
// event log: Redis Streams. Every accepted event is appended to one stream
// under a global, strictly increasing integer message_id assigned in Redis;
// every instance tails the stream into its own ring and dispatches locally,
// so fan-out per instance is unchanged and a message_id means the same
// event on every instance.
//
// Streams and not plain pub/sub: a subscriber that is disconnected from
// pub/sub loses what was published meanwhile, while a stream is a log an
// instance re-reads from the last id it saw.
//
// The Redis is one node, or a primary with replicas watched by Sentinel
// (a go-redis failover URL, see NewRedis). With replicas, an append is
// acknowledged only once WAIT says it reached MinReplicas of them, so an
// acknowledged event survives the loss of the primary.
package broker

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// appendScript assigns the next message_id and appends the event under it
// in one atomic step, so ids are global, gap-free and in stream order. The
// stream entry id is "<message_id>-0", which lets XREAD/XRANGE address
// events by message_id directly. MAXLEN ~ keeps the stream near the
// history size without the cost of exact trimming.
//
// ARGV[4] is the highest id the appending instance has seen: should Redis
// lose its data (no persistence, a failover to a lagging replica), the
// counter restarts below what the fleet has read, and instances tailing
// from their last id would silently skip the new events. The floor keeps
// new ids above what this instance has seen.
var appendScript = redis.NewScript(`
local id = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[4])
if id <= floor then
  id = floor + 1
  redis.call('SET', KEYS[2], id)
end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], id .. '-0', 'e', ARGV[1], 't', ARGV[2])
return id
`)

// raiseScript lifts the id counter to at least ARGV[1], the highest id the
// tailer has read, and returns the accepted timestamps of the entries with
// ids from ARGV[2] to ARGV[1]: after a failover to a replica that lacked
// the newest appends, those ids may now name other events, which the tailer
// recognises by their timestamps. One script, so no append slips between
// the read and the raise.
var raiseScript = redis.NewScript(`
local floor = tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last > 0 then
  local top = tonumber(string.match(last[1][1], '^(%d+)'))
  if top > cur then cur = top end
end
if cur < floor then
  redis.call('SET', KEYS[2], ARGV[1])
end
local out = {}
for _, e in ipairs(redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[1] .. '-0')) do
  local t = ''
  for i = 1, #e[2], 2 do
    if e[2][i] == 't' then t = e[2][i + 1] end
  end
  out[#out + 1] = e[1]
  out[#out + 1] = t
end
return out
`)

func init() {
	// go-redis logs every failed dial to stderr; the broker reports Redis
	// being away through Up (readiness, metrics) instead.
	redis.SetLogger(quietLogger{})
}

type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

// Entry is one event read from the stream, or, when Err or GapFrom is
// set, something the tailer reports in its place.
type Entry struct {
	ID       uint64
	Accepted time.Time
	Data     []byte // the accepted event's JSON

	// Err is set for an entry that could not be decoded (someone else
	// wrote to the stream): it is skipped, and the tail goes on.
	Err error
	// GapFrom, when not zero, marks events this tailer will never hand
	// over: those with message_ids from GapFrom up to ID-1 were trimmed
	// before it read them, or were appended under ids it had already
	// passed (after a failover). ID is where the tail goes on.
	GapFrom uint64
}

// ErrNotReplicated is returned for an append Redis stored but fewer than
// MinReplicas replicas acknowledged in time: it was not accepted, yet the
// tailers may still deliver it (a retry can then duplicate it).
var ErrNotReplicated = errors.New("not acknowledged by enough replicas")

// Redis is the Redis Streams broker. It is safe for concurrent use.
type Redis struct {
	// client is a plain node's client or a Sentinel failover client, which
	// follows the primary on its own; other stores of the fleet (sessions)
	// share it.
	client      redis.UniversalClient
	stream      string
	counter     string
	maxLen      int64
	sentinel    bool
	minReplicas int

	up         atomic.Bool
	caughtUp   atomic.Bool
	reconnects atomic.Uint64
	newest     atomic.Uint64

	seenMu sync.Mutex
	seen   [seenWindow]seenEntry // the latest entries read, by id % seenWindow
}

type seenEntry struct {
	id uint64
	t  string // the entry's raw accepted timestamp
}

const (
	defaultStream = "flarecast:events"
	readBatch     = 512
	blockFor      = time.Second

	// The fail-fast bounds during an outage or a failover: a dial, a read
	// or write, and WAIT each give up quickly, and AppendTimeout bounds an
	// append as a whole (dial + the pipelined script and WAIT), whatever
	// the caller's context, so a producer hears UNAVAILABLE within it.
	dialTimeout   = 500 * time.Millisecond
	ioTimeout     = time.Second
	WaitTimeout   = 500 * time.Millisecond
	AppendTimeout = 2 * time.Second

	// seenWindow is how far back a reconnecting tailer checks that the ids
	// it read still name the events it read. A failover loses what the
	// promoted replica had not received: a replication lag's worth of
	// appends, far fewer than this.
	seenWindow = 1024
)

// Option adjusts NewRedis.
type Option func(*Redis)

// MinReplicas makes appends wait for n replicas (Redis WAIT) before they
// count as accepted; n < 0 means the default: 1 with Sentinel, 0 otherwise.
func MinReplicas(n int) Option {
	return func(r *Redis) {
		if n >= 0 {
			r.minReplicas = n
		}
	}
}

// NewRedis connects to the Redis of url, redis://[user:pass@]host:port[/db]
// [?stream=NAME], or, when the URL has a master_name parameter, to the
// primary the Sentinels at host:port and at each addr parameter name
// (go-redis's failover URL: redis://s1:26379?master_name=mymaster&
// addr=s2:26379&addr=s3:26379). maxLen is the approximate length the
// stream is trimmed to (the history size). It does not fail when Redis is
// down: the broker reports itself unavailable until Redis answers.
func NewRedis(rawURL string, maxLen int, opts ...Option) (*Redis, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("broker URL: %w", err)
	}
	q := u.Query()
	stream := q.Get("stream")
	if stream == "" {
		stream = defaultStream
	}
	q.Del("stream")
	u.RawQuery = q.Encode()
	if maxLen <= 0 {
		maxLen = 100000
	}
	r := &Redis{stream: stream, counter: stream + ":id", maxLen: int64(maxLen)}
	// Fail fast while Redis is away or failing over: producers hear
	// UNAVAILABLE at once rather than after go-redis's default five dial
	// attempts. No command retries (-1): a retried append whose reply was
	// lost would be appended twice; the caller hears the error and decides.
	if q.Has("master_name") {
		o, err := redis.ParseFailoverURL(u.String())
		if err != nil {
			return nil, fmt.Errorf("broker URL (Sentinel): %w", err)
		}
		o.MaxRetries, o.DialerRetries, o.ContextTimeoutEnabled = -1, 1, true
		o.DialTimeout, o.ReadTimeout, o.WriteTimeout = dialTimeout, ioTimeout, ioTimeout
		r.client = redis.NewFailoverClient(o)
		r.sentinel = true
		r.minReplicas = 1
	} else {
		o, err := redis.ParseURL(u.String())
		if err != nil {
			return nil, fmt.Errorf("broker URL: %w", err)
		}
		o.MaxRetries, o.DialerRetries, o.ContextTimeoutEnabled = -1, 1, true
		o.DialTimeout, o.ReadTimeout, o.WriteTimeout = dialTimeout, ioTimeout, ioTimeout
		r.client = redis.NewClient(o)
	}
	for _, opt := range opts {
		opt(r)
	}
	return r, nil
}

// Close closes the connections to Redis.
func (r *Redis) Close() error { return r.client.Close() }

// Up reports whether the last exchange with Redis succeeded.
func (r *Redis) Up() bool { return r.up.Load() }

// CaughtUp reports whether the tailer has once reached the end the stream
// had when it started: the history window is loaded.
func (r *Redis) CaughtUp() bool { return r.caughtUp.Load() }

// Sentinel reports whether the broker follows a primary through Sentinel.
func (r *Redis) Sentinel() bool { return r.sentinel }

// MinReplicasWaited is the number of replicas an append waits for.
func (r *Redis) MinReplicasWaited() int { return r.minReplicas }

// Reconnects counts the times the tailer lost Redis and came back.
func (r *Redis) Reconnects() uint64 { return r.reconnects.Load() }

// Newest is the highest message_id the broker has seen appended or read.
func (r *Redis) Newest() uint64 { return r.newest.Load() }

// Append stores the event's JSON and returns its message_id, only once
// Redis (and MinReplicas replicas) acknowledged it: an error means the
// event was not accepted. It returns within AppendTimeout.
func (r *Redis) Append(ctx context.Context, data []byte, accepted time.Time) (uint64, error) {
	entries := [1]Entry{{Data: data, Accepted: accepted}}
	var errs [1]error
	r.AppendBatch(ctx, entries[:], errs[:])
	return entries[0].ID, errs[0]
}

// AppendBatch appends the entries with a Data (others are skipped) in one
// pipelined round trip, in order, followed by WAIT when replicas are
// required, setting each one's ID or errs[i]. It returns within
// AppendTimeout.
func (r *Redis) AppendBatch(ctx context.Context, entries []Entry, errs []error) {
	ctx, cancel := context.WithTimeout(ctx, AppendTimeout)
	defer cancel()
	cmds := make([]*redis.Cmd, len(entries))
	var wait *redis.Cmd
	_, _ = r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		floor := r.newest.Load()
		for i, e := range entries {
			if e.Data != nil {
				// EVAL, not EVALSHA: a pipeline cannot fall back on
				// NOSCRIPT, and Redis caches the compiled script anyway.
				cmds[i] = appendScript.Eval(ctx, p, []string{r.stream, r.counter},
					e.Data, e.Accepted.UnixNano(), r.maxLen, floor)
			}
		}
		if r.minReplicas > 0 {
			// WAIT covers every write this connection made before it: the
			// whole batch, in the same round trip.
			// (Pipeliner has no Wait method.)
			wait = p.Do(ctx, "WAIT", r.minReplicas, WaitTimeout.Milliseconds())
		}
		return nil
	})
	var replicated error
	if wait != nil {
		if n, err := wait.Int64(); err != nil {
			replicated = fmt.Errorf("WAIT %d: %w", r.minReplicas, err)
		} else if n < int64(r.minReplicas) {
			replicated = fmt.Errorf("%w: %d of %d replicas within %s", ErrNotReplicated, n, r.minReplicas, WaitTimeout)
		}
	}
	ok, tried := false, false
	for i, cmd := range cmds {
		if cmd == nil {
			continue
		}
		tried = true
		id, err := cmd.Uint64()
		if err != nil {
			errs[i] = fmt.Errorf("append to redis stream %s: %w", r.stream, err)
			continue
		}
		storeMax(&r.newest, id)
		ok = true
		if replicated != nil {
			errs[i] = fmt.Errorf("append to redis stream %s (message_id %d): %w", r.stream, id, replicated)
			continue
		}
		entries[i].ID = id
	}
	if tried {
		r.up.Store(ok)
	}
}

// Tail reads the stream from the entry after message_id `after`, in order,
// and hands each entry to fn, until ctx ends. When Redis goes away (or the
// primary fails over) it retries with backoff and goes on from the last id
// it handed over, so no event appended meanwhile is skipped silently: what
// it cannot deliver any more (trimmed, or appended under ids it had already
// passed) it reports as a gap Entry. Undecodable entries are handed over
// with Err set and skipped. fn's error stops the tail.
func (r *Redis) Tail(ctx context.Context, after uint64, fn func(Entry) error) error {
	backoff := 50 * time.Millisecond
	wasDown := true // the first successful exchange is checked like a reconnect
	first := true
	var target uint64 // the stream's end when the tail started
	cursor := strconv.FormatUint(after, 10) + "-0"
	for ctx.Err() == nil {
		if wasDown {
			if err := r.reconnect(ctx, &after, &target, first, fn); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				if errors.Is(err, errHandler) {
					return errors.Unwrap(err)
				}
				r.up.Store(false)
				select {
				case <-time.After(backoff):
				case <-ctx.Done():
					return nil
				}
				backoff = min(backoff*2, time.Second)
				continue
			}
			if !first {
				r.reconnects.Add(1)
			}
			first, wasDown = false, false
			backoff = 50 * time.Millisecond
			r.up.Store(true)
			if after >= target {
				r.caughtUp.Store(true)
			}
		}
		// Bounded, so that a primary that stops answering without closing
		// the connection (a partition) is noticed within seconds, not after
		// go-redis's blocking-command slack of 10 s.
		rctx, cancel := context.WithTimeout(ctx, blockFor+ioTimeout)
		streams, err := r.client.XRead(rctx, &redis.XReadArgs{
			Streams: []string{r.stream, cursor},
			Count:   readBatch,
			Block:   blockFor,
		}).Result()
		cancel()
		switch {
		case errors.Is(err, redis.Nil):
			r.up.Store(true)
			r.caughtUp.Store(true)
			if r.refreshNewest(ctx) < after {
				// The counter fell below what was read without the read
				// failing (a failover between two reads): check as after
				// a reconnect.
				wasDown = true
			}
			continue
		case err != nil:
			if ctx.Err() != nil {
				return nil
			}
			r.up.Store(false)
			wasDown = true
			continue
		}
		r.up.Store(true)
		for _, s := range streams {
			for i, msg := range s.Messages {
				cursor = msg.ID
				e, err := decodeEntry(msg)
				if i == 0 && after > 0 && e.ID > after+1 {
					if err := r.checkTrimmed(ctx, after, e.ID, fn); err != nil {
						return err
					}
				}
				if err != nil {
					if ferr := fn(Entry{ID: e.ID, Err: fmt.Errorf("redis stream %s: %w", r.stream, err)}); ferr != nil {
						return ferr
					}
					r.remember(e.ID, msg)
					after = max(after, e.ID)
					continue
				}
				if e.ID <= after {
					continue
				}
				if err := fn(e); err != nil {
					return err
				}
				r.remember(e.ID, msg)
				after = e.ID
				storeMax(&r.newest, e.ID)
			}
		}
		if after >= target {
			r.caughtUp.Store(true)
		}
	}
	return nil
}

// errHandler marks fn's error coming out of reconnect.
var errHandler = errors.New("tail handler")

// reconnect runs when the tailer (re)gains Redis. On the first call it
// notes where the stream ends, the end of the initial load. Afterwards it
// makes sure the ids after a failover keep increasing: it raises the
// counter to the highest id read, and checks that the ids read recently
// still name the same events; any that do not were appended, after the
// failover, under ids this tailer had passed, and are reported as a gap.
func (r *Redis) reconnect(ctx context.Context, after, target *uint64, first bool, fn func(Entry) error) error {
	if first {
		last, err := r.client.XRevRangeN(ctx, r.stream, "+", "-", 1).Result()
		if err != nil {
			return fmt.Errorf("read the end of redis stream %s: %w", r.stream, err)
		}
		if len(last) > 0 {
			e, _ := decodeEntry(last[0])
			*target = e.ID
		}
		if *after == 0 {
			return nil
		}
	}
	from := uint64(1)
	if *after > seenWindow {
		from = *after - seenWindow + 1
	}
	res, err := raiseScript.Run(ctx, r.client, []string{r.stream, r.counter},
		*after, strconv.FormatUint(from, 10)+"-0").StringSlice()
	if err != nil {
		return fmt.Errorf("check redis stream %s after reconnecting: %w", r.stream, err)
	}
	var reused uint64
	r.seenMu.Lock()
	for i := 0; i+1 < len(res); i += 2 {
		idPart, _, _ := strings.Cut(res[i], "-")
		id, err := strconv.ParseUint(idPart, 10, 64)
		if err != nil || id > *after {
			continue
		}
		if s := r.seen[id%seenWindow]; s.id != id || s.t != res[i+1] {
			reused = id
			break
		}
	}
	r.seenMu.Unlock()
	if reused != 0 {
		if err := fn(Entry{GapFrom: reused, ID: *after + 1}); err != nil {
			return fmt.Errorf("%w: %w", errHandler, err)
		}
	}
	return nil
}

// checkTrimmed reports a gap when the entries between `after` and next
// were trimmed (or deleted) before this tailer read them, rather than never
// assigned: the append floor can skip ids. Trimming removes the oldest
// entries, so when the stream still starts at or below `after` nothing
// above it was trimmed; Redis 7.0 does not count trimming in
// max-deleted-entry-id, only XDEL.
func (r *Redis) checkTrimmed(ctx context.Context, after, next uint64, fn func(Entry) error) error {
	trimmed := true // cannot tell: say so rather than skip silently
	if info, err := r.client.XInfoStream(ctx, r.stream).Result(); err == nil {
		firstID, _, _ := strings.Cut(info.FirstEntry.ID, "-")
		first, ferr := strconv.ParseUint(firstID, 10, 64)
		deletedID, _, _ := strings.Cut(info.MaxDeletedEntryID, "-")
		deleted, derr := strconv.ParseUint(deletedID, 10, 64)
		trimmed = ferr != nil || derr != nil || first > after || deleted > after
	}
	if !trimmed {
		return nil
	}
	return fn(Entry{GapFrom: after + 1, ID: next})
}

// remember notes an entry read, for reconnect's check.
func (r *Redis) remember(id uint64, msg redis.XMessage) {
	t, _ := msg.Values["t"].(string)
	r.seenMu.Lock()
	r.seen[id%seenWindow] = seenEntry{id: id, t: t}
	r.seenMu.Unlock()
}

// refreshNewest reads the id counter, so the lag metric sees appends made
// on other instances even before they are read, and returns it (or
// MaxUint64 when it cannot tell).
func (r *Redis) refreshNewest(ctx context.Context) uint64 {
	n, err := r.client.Get(ctx, r.counter).Uint64()
	if err != nil && !errors.Is(err, redis.Nil) {
		return ^uint64(0)
	}
	storeMax(&r.newest, n)
	return n
}

// decodeEntry decodes one stream entry; on error the returned Entry still
// carries the id when it could be read.
func decodeEntry(msg redis.XMessage) (Entry, error) {
	idPart, seq, _ := strings.Cut(msg.ID, "-")
	id, err := strconv.ParseUint(idPart, 10, 64)
	if err != nil {
		return Entry{}, fmt.Errorf("entry id %q is not a message_id", msg.ID)
	}
	if seq != "0" {
		return Entry{ID: id}, fmt.Errorf("entry id %q is not <message_id>-0", msg.ID)
	}
	data, _ := msg.Values["e"].(string)
	ts, _ := msg.Values["t"].(string)
	nanos, err := strconv.ParseInt(ts, 10, 64)
	if data == "" || err != nil {
		return Entry{ID: id}, fmt.Errorf("entry %s lacks its event or timestamp", msg.ID)
	}
	return Entry{ID: id, Accepted: time.Unix(0, nanos), Data: []byte(data)}, nil
}

func storeMax(a *atomic.Uint64, v uint64) {
	for {
		cur := a.Load()
		if v <= cur || a.CompareAndSwap(cur, v) {
			return
		}
	}
}
