package adapter

import (
	"sync"
	"time"
)

// Dedupe remembers the deliveries already published — an alert state
// (fingerprint, status, startsAt) or a PagerDuty event id — so that a
// retried webhook gives no second event. It holds at most MaxKeys of them,
// the oldest forgotten first, each for at most Window: that is the window
// in which a repeated delivery is recognised.
type Dedupe struct {
	maxKeys int
	window  time.Duration
	now     func() time.Time

	mu    sync.Mutex
	keys  map[string]*entry
	order []slot // insertion order; a slot whose seq no longer matches is stale
	head  int
	seq   uint64
}

type slot struct {
	key string
	seq uint64
}

type entry struct {
	id      uint64 // the message_id of the published event; 0 while pending
	at      time.Time
	seq     uint64
	pending bool
}

// NewDedupe returns a Dedupe; maxKeys 0 disables it.
func NewDedupe(maxKeys int, window time.Duration) *Dedupe {
	return &Dedupe{maxKeys: maxKeys, window: window, now: time.Now, keys: make(map[string]*entry)}
}

// Reserve claims key for a publish. It returns false, with the original
// message_id (0 if that publish is still in flight), when the key was
// already delivered within the window. A reserved key must be ended by
// Commit or Release.
func (d *Dedupe) Reserve(key string) (uint64, bool) {
	if d == nil || d.maxKeys == 0 {
		return 0, true
	}
	now := d.now()
	d.mu.Lock()
	defer d.mu.Unlock()
	d.expire(now)
	if e, ok := d.keys[key]; ok {
		return e.id, false
	}
	d.seq++
	d.keys[key] = &entry{at: now, seq: d.seq, pending: true}
	d.order = append(d.order, slot{key, d.seq})
	for len(d.keys) > d.maxKeys {
		d.drop()
	}
	return 0, true
}

// Commit records the message_id of the event published for key.
func (d *Dedupe) Commit(key string, id uint64) {
	if d == nil || d.maxKeys == 0 {
		return
	}
	d.mu.Lock()
	if e, ok := d.keys[key]; ok {
		e.id, e.pending = id, false
	}
	d.mu.Unlock()
}

// Release forgets a reservation whose publish failed, so a retry publishes.
func (d *Dedupe) Release(key string) {
	if d == nil || d.maxKeys == 0 {
		return
	}
	d.mu.Lock()
	if e, ok := d.keys[key]; ok && e.pending {
		delete(d.keys, key) // its slot in order is skipped when reached
	}
	d.mu.Unlock()
}

// Len is the number of keys remembered.
func (d *Dedupe) Len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.keys)
}

// expire forgets keys older than the window.
func (d *Dedupe) expire(now time.Time) {
	for d.head < len(d.order) {
		s := d.order[d.head]
		e, ok := d.keys[s.key]
		if ok && e.seq == s.seq && (d.window <= 0 || now.Sub(e.at) < d.window) {
			break
		}
		d.drop()
	}
}

// drop forgets the oldest key and compacts order now and then.
func (d *Dedupe) drop() {
	if d.head >= len(d.order) {
		return
	}
	s := d.order[d.head]
	d.order[d.head] = slot{}
	d.head++
	if e, ok := d.keys[s.key]; ok && e.seq == s.seq {
		delete(d.keys, s.key)
	}
	if d.head > 1024 && d.head > len(d.order)/2 {
		d.order = append(d.order[:0], d.order[d.head:]...)
		d.head = 0
	}
}
