package filterindex

import (
	"cmp"
	"slices"

	"github.com/flarecast/flarecast/event"
)

// Filter is one subscription's predicate over events. It is a plain value: the
// engine stores it, and the Index copies out of it what it needs at Add time
// and keeps no reference to it.
//
// Each list restricts one event field to the values it lists; an empty or nil
// list leaves that field unrestricted. Fields are AND-ed, and a Filter with
// nothing set matches every event. Matches is the reference semantics that
// the Index reproduces.
type Filter struct {
	EventTypes  []string // ev.Type
	Severities  []string // ev.Severity
	States      []string // ev.State
	Sources     []string // ev.Source
	Resources   []string // any of ev.Resources; wire name "affected_resources"
	IncidentIDs []string // ev.IncidentID

	// Labels must all be present in the event with exactly these values.
	// Sorted by Key with unique keys once Normalize has run.
	Labels []event.Label
}

// Matches reports whether ev satisfies f. It is the reference semantics,
// linear in the size of f, and works on any Filter, normalized or not:
//
//   - a non-empty list matches when the event's value is in it, and never
//     when the event lacks the field (empty string, no resources);
//   - Resources matches when any of the event's resources is listed;
//   - every label of f must be in the event's labels with the same value.
func (f *Filter) Matches(ev *event.Event) bool {
	if !matchOne(f.EventTypes, string(ev.Type)) ||
		!matchOne(f.Severities, ev.Severity) ||
		!matchOne(f.States, ev.State) ||
		!matchOne(f.Sources, ev.Source) ||
		!matchOne(f.IncidentIDs, ev.IncidentID) {
		return false
	}
	if len(f.Resources) > 0 && !matchAny(f.Resources, ev.Resources) {
		return false
	}
	for _, l := range f.Labels {
		if v, ok := ev.Label(l.Key); !ok || v != l.Value {
			return false
		}
	}
	return true
}

// matchOne reports whether a single-valued event field v satisfies list.
func matchOne(list []string, v string) bool {
	return len(list) == 0 || (v != "" && slices.Contains(list, v))
}

// matchAny reports whether any non-empty value of vs is in list.
func matchAny(list, vs []string) bool {
	for _, v := range vs {
		if v != "" && slices.Contains(list, v) {
			return true
		}
	}
	return false
}

// MatchesAll reports whether f has no predicate at all, so that it matches
// every event.
func (f *Filter) MatchesAll() bool {
	return len(f.EventTypes) == 0 && len(f.Severities) == 0 && len(f.States) == 0 &&
		len(f.Sources) == 0 && len(f.Resources) == 0 && len(f.IncidentIDs) == 0 &&
		len(f.Labels) == 0
}

// Normalize puts f in the canonical form that Index.Add expects: every list
// sorted with duplicates removed, empty lists set to nil, and Labels sorted by
// Key. When a label key is listed more than once the last value listed wins
// (as with repeated keys in a JSON object), so Normalize never fails.
//
// Normalize keeps empty strings: a list holding only "" stays non-empty and so
// still matches no event, as it did before normalization.
func (f *Filter) Normalize() {
	f.EventTypes = normList(f.EventTypes)
	f.Severities = normList(f.Severities)
	f.States = normList(f.States)
	f.Sources = normList(f.Sources)
	f.Resources = normList(f.Resources)
	f.IncidentIDs = normList(f.IncidentIDs)

	if len(f.Labels) == 0 {
		f.Labels = nil
		return
	}
	// A stable sort keeps the listing order among equal keys, so the last
	// of a run is the last one listed; keep it.
	slices.SortStableFunc(f.Labels, func(a, b event.Label) int { return cmp.Compare(a.Key, b.Key) })
	out := f.Labels[:0]
	for i, l := range f.Labels {
		if i+1 < len(f.Labels) && f.Labels[i+1].Key == l.Key {
			continue
		}
		out = append(out, l)
	}
	clear(f.Labels[len(out):]) // drop references to the strings we removed
	f.Labels = out
}

func normList(list []string) []string {
	if len(list) == 0 {
		return nil
	}
	slices.Sort(list)
	return slices.Compact(list) // Compact zeroes the tail it drops

}

// Clone returns a deep copy of f: its slices are new, the strings (immutable)
// are shared.
func (f *Filter) Clone() Filter {
	return Filter{
		EventTypes:  slices.Clone(f.EventTypes),
		Severities:  slices.Clone(f.Severities),
		States:      slices.Clone(f.States),
		Sources:     slices.Clone(f.Sources),
		Resources:   slices.Clone(f.Resources),
		IncidentIDs: slices.Clone(f.IncidentIDs),
		Labels:      slices.Clone(f.Labels),
	}
}
