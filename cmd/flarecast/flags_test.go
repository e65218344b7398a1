package main

import (
	"strings"
	"testing"

	"github.com/flarecast/flarecast/codec"
	"github.com/flarecast/flarecast/engine"
)

func TestParseSize(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int
	}{
		{"0", 0}, {"65536", 65536}, {"64KiB", 64 << 10}, {"64 KB", 64000}, {"16MiB", 16 << 20}, {"1G", 1 << 30},
		{"1024GiB", 1 << 40}, {"1099511627776", 1 << 40}, {"1073741824K", 1 << 40},
	} {
		if got, err := parseSize(c.in); err != nil || got != c.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", c.in, got, err, c.want)
		}
	}
	for _, c := range []struct{ in, mention string }{
		{"99999999999GiB", "too large"},             // overflows int64 once multiplied
		{"8589934592GiB", "too large"},              // exactly 2^63: wraps to negative
		{"1025GiB", "too large"},                    // fits, but over 1TiB
		{"1099511627777", "too large"},              // one byte over
		{"9223372036854775807", "too large"},        // MaxInt64: the engine adds to sizes
		{"99999999999999999999999", "too large"},    // beyond int64 before any unit
		{"99999999999999999999999KiB", "too large"}, // likewise with a unit
		{"-1", "want a size"}, {"-99999999999999999999999", "want a size"},
		{"12XB", "want a size"}, {"", "want a size"}, {"KiB", "want a size"}, {"1.5MiB", "want a size"},
	} {
		got, err := parseSize(c.in)
		if err == nil || !strings.Contains(err.Error(), c.mention) || strings.Contains(err.Error(), "\n") {
			t.Errorf("parseSize(%q) = %d, %v; want an error mentioning %q", c.in, got, err, c.mention)
		}
	}
}

func TestFloatValue(t *testing.T) {
	for _, c := range []struct {
		in   string
		want float64
	}{{"0", 0}, {"0.0", 0}, {"0e-400", 0}, {"0x0p-2000", 0}, {" 2.5 ", 2.5}, {"1e-310", 1e-310}, {"1e9", 1e9}} {
		var v float64
		if err := (floatValue{&v}).Set(c.in); err != nil || v != c.want {
			t.Errorf("Set(%q) = %v, %v; want %v", c.in, v, err, c.want)
		}
	}
	for _, in := range []string{"-1", "-0.5", "NaN", "nan", "Inf", "+Inf", "-Inf", "1e400", "1e-400", "0x1p-2000", "abc", ""} {
		v := -7.0
		if err := (floatValue{&v}).Set(in); err == nil || v != -7 {
			t.Errorf("Set(%q) accepted (%v)", in, v)
		}
	}
}

// The flag's default is the codec's: a server without the flag refuses what
// a client of the codec's defaults would expect it to.
func TestMaxFilterValuesDefault(t *testing.T) {
	if got := engine.DefaultConfig().MaxFilterValues; got != codec.DefaultMaxFilterValues {
		t.Fatalf("engine default max-filter-values %d, codec's %d", got, codec.DefaultMaxFilterValues)
	}
}
