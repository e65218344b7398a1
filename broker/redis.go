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
package broker

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
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

func init() {
	// go-redis logs every failed dial to stderr; the broker reports Redis
	// being away through Up (readiness, metrics) instead.
	redis.SetLogger(quietLogger{})
}

type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

// Entry is one event read from the stream.
type Entry struct {
	ID       uint64
	Accepted time.Time
	Data     []byte // the accepted event's JSON
}

// Redis is the Redis Streams broker. It is safe for concurrent use.
type Redis struct {
	client  *redis.Client
	stream  string
	counter string
	maxLen  int64

	up         atomic.Bool
	reconnects atomic.Uint64
	newest     atomic.Uint64
}

// Options are the settings a broker URL can carry besides the Redis address.
const (
	defaultStream = "flarecast:events"
	readBatch     = 512
	blockFor      = time.Second
)

// NewRedis connects to the Redis of url (redis://[user:pass@]host:port[/db]
// [?stream=NAME]); maxLen is the approximate length the stream is trimmed
// to (the history size). It does not fail when Redis is down: the broker
// reports itself unavailable until Redis answers.
func NewRedis(rawURL string, maxLen int) (*Redis, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("broker URL: %w", err)
	}
	stream := u.Query().Get("stream")
	if stream == "" {
		stream = defaultStream
	}
	q := u.Query()
	q.Del("stream")
	u.RawQuery = q.Encode()
	opts, err := redis.ParseURL(u.String())
	if err != nil {
		return nil, fmt.Errorf("broker URL: %w", err)
	}
	opts.MaxRetries = 1
	opts.DialTimeout = 2 * time.Second
	// Fail fast while Redis is away: producers hear UNAVAILABLE at once
	// rather than after go-redis's default five dial attempts.
	opts.DialerRetries = 1
	if maxLen <= 0 {
		maxLen = 100000
	}
	return &Redis{
		client:  redis.NewClient(opts),
		stream:  stream,
		counter: stream + ":id",
		maxLen:  int64(maxLen),
	}, nil
}

// Close closes the connections to Redis.
func (r *Redis) Close() error { return r.client.Close() }

// Up reports whether the last exchange with Redis succeeded.
func (r *Redis) Up() bool { return r.up.Load() }

// Reconnects counts the times the tailer lost Redis and came back.
func (r *Redis) Reconnects() uint64 { return r.reconnects.Load() }

// Newest is the highest message_id the broker has seen appended or read.
func (r *Redis) Newest() uint64 { return r.newest.Load() }

// Append stores the event's JSON and returns its message_id, only once
// Redis has acknowledged it: an error means the event was not accepted.
func (r *Redis) Append(ctx context.Context, data []byte, accepted time.Time) (uint64, error) {
	res, err := appendScript.Run(ctx, r.client, []string{r.stream, r.counter},
		data, accepted.UnixNano(), r.maxLen, r.newest.Load()).Uint64()
	if err != nil {
		r.up.Store(false)
		return 0, fmt.Errorf("append to redis stream %s: %w", r.stream, err)
	}
	r.up.Store(true)
	storeMax(&r.newest, res)
	return res, nil
}

// AppendBatch appends the entries with a Data (others are skipped) in one
// pipelined round trip, in order, setting each one's ID or errs[i].
func (r *Redis) AppendBatch(ctx context.Context, entries []Entry, errs []error) {
	cmds := make([]*redis.Cmd, len(entries))
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
		return nil
	})
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
		entries[i].ID = id
		storeMax(&r.newest, id)
		ok = true
	}
	if tried {
		r.up.Store(ok)
	}
}

// Tail reads the stream from the entry after message_id `after`, in order,
// and hands each entry to fn, until ctx ends. When Redis goes away it
// retries with backoff and goes on from the last id it handed over, so no
// event appended meanwhile is skipped. fn's error stops the tail.
func (r *Redis) Tail(ctx context.Context, after uint64, fn func(Entry) error) error {
	backoff := 50 * time.Millisecond
	wasDown := false
	if r.client.Ping(ctx).Err() == nil {
		r.up.Store(true) // ready before the first blocking read returns
	}
	for ctx.Err() == nil {
		streams, err := r.client.XRead(ctx, &redis.XReadArgs{
			Streams: []string{r.stream, strconv.FormatUint(after, 10) + "-0"},
			Count:   readBatch,
			Block:   blockFor,
		}).Result()
		switch {
		case errors.Is(err, redis.Nil):
			r.up.Store(true)
			r.refreshNewest(ctx)
			continue
		case err != nil:
			if ctx.Err() != nil {
				return nil
			}
			r.up.Store(false)
			wasDown = true
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return nil
			}
			backoff = min(backoff*2, 2*time.Second)
			continue
		}
		if wasDown {
			r.reconnects.Add(1)
			wasDown = false
		}
		r.up.Store(true)
		backoff = 50 * time.Millisecond
		for _, s := range streams {
			for _, msg := range s.Messages {
				e, err := decodeEntry(msg)
				if err != nil {
					return fmt.Errorf("redis stream %s: %w", r.stream, err)
				}
				if e.ID <= after {
					continue
				}
				if err := fn(e); err != nil {
					return err
				}
				after = e.ID
				storeMax(&r.newest, e.ID)
			}
		}
	}
	return nil
}

// refreshNewest reads the id counter, so the lag metric sees appends made
// on other instances even before they are read.
func (r *Redis) refreshNewest(ctx context.Context) {
	if n, err := r.client.Get(ctx, r.counter).Uint64(); err == nil {
		storeMax(&r.newest, n)
	}
}

func decodeEntry(msg redis.XMessage) (Entry, error) {
	idPart, _, _ := strings.Cut(msg.ID, "-")
	id, err := strconv.ParseUint(idPart, 10, 64)
	if err != nil {
		return Entry{}, fmt.Errorf("entry id %q is not a message_id", msg.ID)
	}
	data, _ := msg.Values["e"].(string)
	ts, _ := msg.Values["t"].(string)
	nanos, err := strconv.ParseInt(ts, 10, 64)
	if data == "" || err != nil {
		return Entry{}, fmt.Errorf("entry %s lacks its event or timestamp", msg.ID)
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
