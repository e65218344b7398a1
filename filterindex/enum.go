package filterindex

import (
	mbits "math/bits"

	"github.com/flarecast/flarecast/event"
)

// enum is the bit layout of one enumerated field inside a 32-bit mask: one
// bit per vocabulary value, and a top bit that stands for a value outside the
// vocabulary or no value at all.
type enum struct {
	bits    map[string]uint32 // value -> its bit
	unknown uint32            // bit of any other value, "" included
	all     uint32            // every bit of the field
	size    int               // values with a bit

	// A perfect hash of the values with a bit, which bit uses instead of
	// the map: table[hash(v)] is the only value that can hash there. mul
	// is 0 if none was found.
	mul   uint64
	table [1 << enumHashBits]enumSlot
}

type enumSlot struct {
	v string
	b uint32
}

const enumHashBits = 6

// hash returns v's slot in e.table, from its length and its first and last
// eight bytes.
func (e *enum) hash(v string) uint32 {
	var x uint64
	if len(v) >= 8 {
		x = le64(v) ^ mbits.RotateLeft64(le64(v[len(v)-8:]), 29)
	} else {
		for i := 0; i < len(v); i++ {
			x = x<<8 | uint64(v[i])
		}
	}
	return uint32((x ^ uint64(len(v))) * e.mul >> (64 - enumHashBits))
}

func le64(s string) uint64 {
	_ = s[7]
	return uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24 |
		uint64(s[4])<<32 | uint64(s[5])<<40 | uint64(s[6])<<48 | uint64(s[7])<<56
}

// enums lays the three enumerated fields out in one uint32: event types in
// bits 0-15, severities in 16-23, states in 24-31. Were a vocabulary to
// outgrow its bits, the values left without one would simply be counted.
var enums = [...]enum{
	fieldType:     newEnum(event.Types, 0, 16),
	fieldSeverity: newEnum(event.Severities, 16, 8),
	fieldState:    newEnum(event.States, 24, 8),
}

func newEnum[T ~string](vocab []T, shift, width uint) enum {
	e := enum{
		bits:    make(map[string]uint32),
		unknown: 1 << (shift + width - 1),
		all:     (1<<width - 1) << shift,
	}
	for i, v := range vocab {
		if i == int(width)-1 {
			break // the top bit is the unknown one
		}
		e.bits[string(v)] = 1 << (shift + uint(i))
	}
	e.size = len(e.bits)
	for k := uint64(1); k < 4096 && e.mul == 0; k++ {
		e.mul = k*0x9e3779b97f4a7c15 | 1
		clear(e.table[:])
		for v, b := range e.bits {
			if v == "" || e.table[e.hash(v)].v != "" {
				e.mul = 0
				break
			}
			e.table[e.hash(v)] = enumSlot{v, b}
		}
	}
	return e
}

// bit returns the bit of an event's value v.
func (e *enum) bit(v string) uint32 {
	if e.mul != 0 {
		if s := &e.table[e.hash(v)]; s.v == v && v != "" {
			return s.b
		}
		return e.unknown
	}
	if b, ok := e.bits[v]; ok {
		return b
	}
	return e.unknown
}

// accept returns the bits of the values of list, and false if one of them
// has none.
func (e *enum) accept(list []string) (uint32, bool) {
	var m uint32
	for _, v := range list {
		b, ok := e.bits[v]
		if !ok {
			return 0, false
		}
		m |= b
	}
	return m, true
}

// eventBits returns ev's enumerated values as one bit per field, to be AND-ed
// with a subscription's reject mask.
func eventBits(ev *event.Event) uint32 {
	return enums[fieldType].bit(string(ev.Type)) |
		enums[fieldSeverity].bit(ev.Severity) |
		enums[fieldState].bit(ev.State)
}
