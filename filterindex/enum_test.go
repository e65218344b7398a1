package filterindex

import (
	"testing"

	"github.com/flarecast/flarecast/event"
)

// TestEnumBit checks the perfect hash bit uses against the map it stands
// for, on the vocabularies and on values outside them.
func TestEnumBit(t *testing.T) {
	others := []string{"", "x", "P", "P5", "P00", "p0", "incident", "incident_created_", "Incident_created",
		"incident_createe", "Detected ", "Closed\x00", "escalate", "system_events"}
	for fld := range enums {
		e := &enums[fld]
		if e.mul == 0 {
			t.Errorf("field %d: no perfect hash", fld)
		}
		for v, b := range e.bits {
			if got := e.bit(v); got != b {
				t.Errorf("field %d: bit(%q) = %#x, want %#x", fld, v, got, b)
			}
			// The same bytes, not the same string.
			if got := e.bit(string([]byte(v))); got != b {
				t.Errorf("field %d: bit(copy of %q) = %#x, want %#x", fld, v, got, b)
			}
		}
		for _, v := range others {
			if got := e.bit(v); got != e.unknown {
				t.Errorf("field %d: bit(%q) = %#x, want unknown %#x", fld, v, got, e.unknown)
			}
		}
	}
	if got := eventBits(&event.Event{Type: event.Escalated, Severity: "P1", State: "Closed"}); got !=
		enums[fieldType].bits["escalated"]|enums[fieldSeverity].bits["P1"]|enums[fieldState].bits["Closed"] {
		t.Errorf("eventBits = %#x", got)
	}
}

// TestEnumBitWithoutPerfectHash covers a vocabulary the hash cannot tell
// apart (same length, same first and last eight bytes): bit keeps the map.
func TestEnumBitWithoutPerfectHash(t *testing.T) {
	vocab := []string{"prefix-1_A_suffix-1", "prefix-1_B_suffix-1", "x"}
	e := newEnum(vocab, 0, 8)
	if e.mul != 0 {
		t.Fatalf("found a perfect hash for %q", vocab)
	}
	for i, v := range vocab {
		if got := e.bit(v); got != 1<<i {
			t.Errorf("bit(%q) = %#x, want %#x", v, got, 1<<i)
		}
	}
	if got := e.bit("prefix-1_C_suffix-1"); got != e.unknown {
		t.Errorf("bit of an unknown value = %#x, want %#x", got, e.unknown)
	}
}
