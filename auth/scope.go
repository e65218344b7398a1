package auth

import (
	"cmp"
	"slices"

	"github.com/flarecast/flarecast/event"
	"github.com/flarecast/flarecast/filterindex"
)

// Intersect returns a filter that matches only events matched by both f (a
// subscription's filter) and scope, and false when no event can match both.
// Both must be normalized (codec.DecodeFilter returns normalized filters);
// the result is normalized too, and shares no slice with either.
//
//   - A list field restricted by both keeps the values they have in common;
//     when there are none, nothing can match. A list left empty by one side
//     takes the other's.
//   - Labels are the union of both sides' constraints; a key both constrain
//     to different values can match nothing.
//
// For every field but Resources this is exactly "matches f and matches
// scope". Resources is multi-valued (an event matches a list when any of its
// resources is listed), so an event with resources {a, b} matches f=[a] and
// scope=[b] although [a] ∩ [b] is empty: Intersect errs on the safe side
// there, and never lets through an event that scope would refuse.
func Intersect(f, scope *filterindex.Filter) (filterindex.Filter, bool) {
	var out filterindex.Filter
	ok := true
	for _, field := range listFields {
		list, some := intersectList(*field(f), *field(scope))
		*field(&out) = list
		ok = ok && some
	}
	labels, consistent := unionLabels(f.Labels, scope.Labels)
	out.Labels = labels
	return out, ok && consistent
}

// listFields are the list fields of filterindex.Filter. scope_test checks,
// by reflection, that it names every []string field of the type.
var listFields = []func(*filterindex.Filter) *[]string{
	func(f *filterindex.Filter) *[]string { return &f.EventTypes },
	func(f *filterindex.Filter) *[]string { return &f.Severities },
	func(f *filterindex.Filter) *[]string { return &f.States },
	func(f *filterindex.Filter) *[]string { return &f.Sources },
	func(f *filterindex.Filter) *[]string { return &f.Resources },
	func(f *filterindex.Filter) *[]string { return &f.IncidentIDs },
}

// intersectList intersects two sorted, duplicate-free lists where an empty
// list means "anything". It reports false when both restrict and share no value.
func intersectList(a, b []string) ([]string, bool) {
	switch {
	case len(a) == 0 && len(b) == 0:
		return nil, true
	case len(a) == 0:
		return slices.Clone(b), true
	case len(b) == 0:
		return slices.Clone(a), true
	}
	var out []string
	for i, j := 0, 0; i < len(a) && j < len(b); {
		switch c := cmp.Compare(a[i], b[j]); {
		case c < 0:
			i++
		case c > 0:
			j++
		default:
			out = append(out, a[i])
			i++
			j++
		}
	}
	return out, len(out) > 0
}

// unionLabels merges two label lists sorted by key with unique keys. It
// reports false when a key carries different values on the two sides.
func unionLabels(a, b []event.Label) ([]event.Label, bool) {
	if len(a)+len(b) == 0 {
		return nil, true
	}
	out := make([]event.Label, 0, len(a)+len(b))
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		switch c := cmp.Compare(a[i].Key, b[j].Key); {
		case c < 0:
			out = append(out, a[i])
			i++
		case c > 0:
			out = append(out, b[j])
			j++
		default:
			if a[i].Value != b[j].Value {
				return nil, false
			}
			out = append(out, a[i])
			i++
			j++
		}
	}
	out = append(out, a[i:]...)
	return append(out, b[j:]...), true
}

// sameFilter reports whether two normalized filters are identical.
func sameFilter(a, b *filterindex.Filter) bool {
	for _, field := range listFields {
		if !slices.Equal(*field(a), *field(b)) {
			return false
		}
	}
	return slices.Equal(a.Labels, b.Labels)
}
