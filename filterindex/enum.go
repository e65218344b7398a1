package filterindex

import "github.com/flarecast/flarecast/event"

// enum is the bit layout of one enumerated field inside a 32-bit mask: one
// bit per vocabulary value, and a top bit that stands for a value outside the
// vocabulary or no value at all.
type enum struct {
	bits    map[string]uint32 // value -> its bit
	unknown uint32            // bit of any other value, "" included
	all     uint32            // every bit of the field
	size    int               // values with a bit
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
	return e
}

// bit returns the bit of an event's value v.
func (e *enum) bit(v string) uint32 {
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
