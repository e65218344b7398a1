package broker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Sessions keeps what a session needs to resume on any instance of the
// fleet: who may resume it (the holder), its subscriptions and how far its
// acks proved it has read. One Redis hash a session, expiring after the
// session timeout, with an owner field naming the instance that holds it:
//
//	owner   the instance id of the holder
//	resume  the resume point (every owed event up to it reached the client)
//	sent    the highest message_id any connection of the session was sent
//	holder  the token holder, opaque to the broker
//	s:<id>  one subscription, opaque to the broker
//
// Writes are conditional on the owner: once another instance has claimed a
// session, the writes of the instance that held it (acks still in flight,
// its detach) are ignored, so a takeover cannot be undone by a late writer.
type Sessions struct {
	client redis.UniversalClient
	prefix string // "<stream>:session:"
	notify string // pub/sub channel announcing claims
}

// Sessions returns the session store of the broker's stream.
func (r *Redis) Sessions() *Sessions {
	return &Sessions{client: r.client, prefix: r.stream + ":session:", notify: r.stream + ":claims"}
}

// SessionRecord is one stored session.
type SessionRecord struct {
	Owner  string
	Resume uint64
	Sent   uint64
	Holder []byte
	Subs   map[string][]byte // subscription id → its encoding
}

// SessionWrite is one coalesced change to a session held by this instance.
type SessionWrite struct {
	ID     string
	Resume uint64
	Sent   uint64
	Holder []byte            // set once, when the session is first stored; nil: unchanged
	Subs   map[string][]byte // subscriptions added or replaced; a nil value removes one
}

// saveScript applies a SessionWrite when the session is unclaimed or held
// by ARGV[1], and refreshes its expiry. ARGV: owner, ttl ms, resume, sent,
// holder ("" unchanged), then field/value pairs ("" value: delete).
var saveScript = redis.NewScript(`
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'resume', ARGV[3], 'sent', ARGV[4])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'holder', ARGV[5]) end
for i = 6, #ARGV, 2 do
  if ARGV[i+1] == '' then redis.call('HDEL', KEYS[1], ARGV[i])
  else redis.call('HSET', KEYS[1], ARGV[i], ARGV[i+1]) end
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
`)

// claimScript makes ARGV[1] the session's owner and returns the record as
// it was, announcing the claim so that the previous owner lets go of it.
// A claimant whose holder (ARGV[4]) differs from the stored one changes
// nothing: knowing a session id is not enough to take it.
var claimScript = redis.NewScript(`
local rec = redis.call('HGETALL', KEYS[1])
if #rec == 0 then return rec end
local holder = redis.call('HGET', KEYS[1], 'holder')
if holder and holder ~= ARGV[4] then return redis.error_reply('HOLDER session belongs to another token holder') end
redis.call('HSET', KEYS[1], 'owner', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PUBLISH', KEYS[2], ARGV[1] .. ' ' .. ARGV[3])
return rec
`)

const subField = "s:"

// Save applies writes in one pipelined round trip. It returns the first
// error; writes for sessions another instance has claimed are dropped.
func (s *Sessions) Save(ctx context.Context, owner string, ttl time.Duration, writes []SessionWrite) error {
	if len(writes) == 0 {
		return nil
	}
	ttlMS := strconv.FormatInt(max(ttl.Milliseconds(), 1), 10)
	_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range writes {
			w := &writes[i]
			args := make([]any, 0, 5+2*len(w.Subs))
			args = append(args, owner, ttlMS, w.Resume, w.Sent, w.Holder)
			for id, enc := range w.Subs {
				args = append(args, subField+id, enc)
			}
			saveScript.Eval(ctx, p, []string{s.prefix + w.ID}, args...)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("save %d sessions to redis: %w", len(writes), err)
	}
	return nil
}

// A Claim's answers besides a record.
var (
	// ErrNoSession: Redis does not hold the session (never stored, or expired).
	ErrNoSession = errors.New("no such session")
	// ErrSessionHolder: the session belongs to another token holder.
	ErrSessionHolder = errors.New("session belongs to another token holder")
)

// Claim is one session an instance asks for on behalf of a resuming
// client, and the answer: Record, or Err (ErrNoSession, ErrSessionHolder,
// or Redis failing).
type Claim struct {
	ID     string
	Holder []byte // the claimant's holder, compared with the stored one
	Record *SessionRecord
	Err    error
}

// ClaimAll makes owner the holder of every session claimed, in one
// pipelined round trip (a fleet's instance dying sends thousands of
// resumes to the others at once), setting each one's Record or Err. The
// previous owners hear of it through Claims.
func (s *Sessions) ClaimAll(ctx context.Context, owner string, ttl time.Duration, claims []Claim) {
	ttlMS := max(ttl.Milliseconds(), 1)
	cmds := make([]*redis.Cmd, len(claims))
	_, _ = s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, c := range claims {
			cmds[i] = claimScript.Eval(ctx, p, []string{s.prefix + c.ID, s.notify}, owner, ttlMS, c.ID, c.Holder)
		}
		return nil
	})
	for i, cmd := range cmds {
		claims[i].Record, claims[i].Err = decodeClaim(claims[i].ID, cmd)
	}
}

func decodeClaim(id string, cmd *redis.Cmd) (*SessionRecord, error) {
	res, err := cmd.StringSlice()
	if err != nil && strings.HasPrefix(err.Error(), "HOLDER") {
		return nil, ErrSessionHolder
	}
	if err != nil {
		return nil, fmt.Errorf("claim session in redis: %w", err)
	}
	if len(res) == 0 {
		return nil, ErrNoSession
	}
	rec := &SessionRecord{Subs: make(map[string][]byte)}
	for i := 0; i+1 < len(res); i += 2 {
		k, v := res[i], res[i+1]
		switch {
		case k == "owner":
			rec.Owner = v
		case k == "resume":
			rec.Resume, err = strconv.ParseUint(v, 10, 64)
		case k == "sent":
			rec.Sent, err = strconv.ParseUint(v, 10, 64)
		case k == "holder":
			rec.Holder = []byte(v)
		case strings.HasPrefix(k, subField):
			rec.Subs[k[len(subField):]] = []byte(v)
		}
		if err != nil {
			return nil, fmt.Errorf("session %s: field %s: %w", id, k, err)
		}
	}
	return rec, nil
}

// Claims calls fn with the id of every session another instance claims,
// until ctx ends; Redis being away only delays it (go-redis resubscribes).
// A claim announced while this instance was cut off is not heard: the
// owner check of Save and of every resume (Claim) keeps that harmless.
func (s *Sessions) Claims(ctx context.Context, self string, fn func(id string)) {
	ps := s.client.Subscribe(ctx, s.notify)
	defer ps.Close()
	ch := ps.Channel()
	for {
		select {
		case <-ctx.Done():
			return
		case msg, ok := <-ch:
			if !ok {
				return
			}
			owner, id, _ := strings.Cut(msg.Payload, " ")
			if owner != self && id != "" {
				fn(id)
			}
		}
	}
}
