package engine

import (
	"strings"
	"testing"
)

// TestRateBucket: every rate and burst the limiter is given must fit its
// int64 nanosecond arithmetic; the rest is refused naming the setting.
func TestRateBucket(t *testing.T) {
	for _, c := range []struct {
		rate  float64
		burst int
	}{
		{1, 0}, {0.5, 10}, {100, 1000}, {1e9, 0}, {1e9, 1 << 32},
		{3e-10, 0}, {1, 4_000_000_000}, // just inside 2^62 ns
	} {
		interval, tolerance, err := rateBucket(c.rate, c.burst)
		if err != nil || interval <= 0 || tolerance < 0 {
			t.Errorf("rateBucket(%v, %d) = %d, %d, %v", c.rate, c.burst, interval, tolerance, err)
		}
	}
	for _, c := range []struct {
		rate    float64
		burst   int
		mention string
	}{
		{1e-300, 0, "rate-limit"}, // the interval overflows int64
		{1e-310, 0, "rate-limit"}, // a denormal: 1s/rate is +Inf
		{1e-10, 0, "rate-limit"},  // 10^19 ns
		{2e9, 0, "rate-limit"},    // the interval truncates to 0
		{1e300, 0, "rate-limit"},
		{1, 5_000_000_000, "rate-burst"}, // tolerance overflows
		{1e-9, 10, "rate-burst"},
	} {
		_, _, err := rateBucket(c.rate, c.burst)
		if err == nil || !strings.HasPrefix(err.Error(), c.mention) || strings.Contains(err.Error(), "\n") {
			t.Errorf("rateBucket(%v, %d) = %v; want a one-line error naming %s", c.rate, c.burst, err, c.mention)
		}
	}
	cfg := DefaultConfig()
	cfg.RateLimit = 1e-300
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "rate-limit") {
		t.Errorf("Validate with rate-limit 1e-300: %v", err)
	}
}

// A session counts its subscriptions in 16 bits: a larger limit is refused
// at start rather than capped without a word.
func TestMaxSubscriptionsBound(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxSubscriptions = maxSessionSubs
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate with max-subscriptions %d: %v", maxSessionSubs, err)
	}
	cfg.MaxSubscriptions = maxSessionSubs + 1
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "max-subscriptions must be at most") {
		t.Fatalf("Validate with max-subscriptions %d: %v", maxSessionSubs+1, err)
	}
}
