package auth_test

import (
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"

	"github.com/flarecast/flarecast/auth"
	"github.com/flarecast/flarecast/codec"
	"github.com/flarecast/flarecast/event"
	"github.com/flarecast/flarecast/filterindex"
)

func decode(t *testing.T, s string) filterindex.Filter {
	t.Helper()
	f, err := codec.DecodeFilter([]byte(s), "filters")
	if err != nil {
		t.Fatalf("DecodeFilter(%s): %v", s, err)
	}
	return f
}

func encode(f *filterindex.Filter) string { return string(codec.AppendFilter(nil, f)) }

func TestAuthIntersect(t *testing.T) {
	for _, tc := range []struct {
		name, sub, scope string
		want             string // "" when nothing can match
	}{
		{"empty sub takes the scope",
			`{}`, `{"sources":["team-a"],"labels":{"tenant":"acme"}}`,
			`{"sources":["team-a"],"labels":{"tenant":"acme"}}`},
		{"empty scope keeps the sub",
			`{"severities":["P0","P1"]}`, `{}`,
			`{"severities":["P0","P1"]}`},
		{"lists intersect",
			`{"sources":["a","b","c"],"severities":["P0"]}`, `{"sources":["b","c","d"]}`,
			`{"sources":["b","c"],"severities":["P0"]}`},
		{"disjoint list matches nothing",
			`{"sources":["team-b"]}`, `{"sources":["team-a"]}`, ""},
		{"labels union",
			`{"labels":{"env":"prod"}}`, `{"labels":{"tenant":"acme"}}`,
			`{"labels":{"env":"prod","tenant":"acme"}}`},
		{"same label agrees",
			`{"labels":{"tenant":"acme","a":"1"}}`, `{"labels":{"tenant":"acme","z":"2"}}`,
			`{"labels":{"a":"1","tenant":"acme","z":"2"}}`},
		{"conflicting label matches nothing",
			`{"labels":{"tenant":"globex"}}`, `{"labels":{"tenant":"acme"}}`, ""},
		{"every field",
			`{"event_types":["incident_created","alert_received"],"states":["Detected"],"affected_resources":["db","api"],"incident_ids":["INC-1","INC-2"]}`,
			`{"event_types":["alert_received"],"affected_resources":["api","web"],"incident_ids":["INC-2"],"states":["Detected","Triaged"]}`,
			`{"event_types":["alert_received"],"states":["Detected"],"affected_resources":["api"],"incident_ids":["INC-2"]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sub, scope := decode(t, tc.sub), decode(t, tc.scope)
			subBefore, scopeBefore := encode(&sub), encode(&scope)
			got, ok := auth.Intersect(&sub, &scope)
			if encode(&sub) != subBefore || encode(&scope) != scopeBefore {
				t.Fatal("Intersect modified its arguments")
			}
			if tc.want == "" {
				if ok {
					t.Fatalf("ok for a filter that can match nothing: %s", encode(&got))
				}
				return
			}
			want := decode(t, tc.want)
			if !ok || encode(&got) != encode(&want) {
				t.Fatalf("got %s (ok=%v), want %s", encode(&got), ok, encode(&want))
			}
			// Intersect is symmetric.
			back, ok := auth.Intersect(&scope, &sub)
			if !ok || encode(&back) != encode(&want) {
				t.Fatalf("reversed: got %s, want %s", encode(&back), encode(&want))
			}
		})
	}
}

// TestAuthIntersectCoversFilter fails when filterindex.Filter grows a field
// that Intersect does not know: a new field left out would silently widen
// every scoped subscription.
func TestAuthIntersectCoversFilter(t *testing.T) {
	typ := reflect.TypeFor[filterindex.Filter]()
	lists, labels := 0, 0
	for i := range typ.NumField() {
		switch f := typ.Field(i); {
		case f.Type == reflect.TypeFor[[]string]():
			lists++
		case f.Type == reflect.TypeFor[[]event.Label]():
			labels++
		default:
			t.Errorf("filterindex.Filter has a field %s %s that auth.Intersect does not handle", f.Name, f.Type)
		}
	}
	// Every list field must be intersected: a scope restricting any one of
	// them must restrict the result.
	for i := range typ.NumField() {
		if typ.Field(i).Type != reflect.TypeFor[[]string]() {
			continue
		}
		var scope filterindex.Filter
		reflect.ValueOf(&scope).Elem().Field(i).Set(reflect.ValueOf([]string{"x"}))
		got, ok := auth.Intersect(&filterindex.Filter{}, &scope)
		if !ok || !reflect.DeepEqual(reflect.ValueOf(got).Field(i).Interface(), []string{"x"}) {
			t.Errorf("a scope on %s does not restrict the intersection: %+v", typ.Field(i).Name, got)
		}
	}
	if lists != 6 || labels != 1 {
		t.Errorf("filterindex.Filter has %d list fields and %d label fields; auth.Intersect was written for 6 and 1", lists, labels)
	}
}

// TestAuthIntersectProperty checks, on random filters and events, the
// property the authorisation boundary rests on: whatever matches the
// intersection matches both sides (so never anything outside the scope),
// and, for events with at most one resource, whatever matches both sides
// matches the intersection (nothing the client is entitled to is lost).
func TestAuthIntersectProperty(t *testing.T) {
	rng := rand.New(rand.NewPCG(6, 2026))
	pick := func(vocab []string) []string {
		var out []string
		for _, v := range vocab {
			if rng.IntN(3) == 0 {
				out = append(out, v)
			}
		}
		return out
	}
	sources := []string{"s1", "s2", "s3"}
	resources := []string{"r1", "r2", "r3"}
	incidents := []string{"i1", "i2"}
	types := []string{"incident_created", "alert_received", "escalated"}
	labelKeys := []string{"tenant", "env"}
	labelVals := []string{"a", "b"}
	randFilter := func() filterindex.Filter {
		f := filterindex.Filter{
			EventTypes:  pick(types),
			Severities:  pick(event.Severities[:3]),
			States:      pick(event.States[:3]),
			Sources:     pick(sources),
			Resources:   pick(resources),
			IncidentIDs: pick(incidents),
		}
		for _, k := range labelKeys {
			if rng.IntN(3) == 0 {
				f.Labels = append(f.Labels, event.Label{Key: k, Value: labelVals[rng.IntN(2)]})
			}
		}
		f.Normalize()
		return f
	}
	one := func(vocab []string) string {
		if i := rng.IntN(len(vocab) + 1); i < len(vocab) {
			return vocab[i]
		}
		return "" // the event lacks the field
	}
	const rounds = 3000
	matched, empty := 0, 0
	for range rounds {
		sub, scope := randFilter(), randFilter()
		in, ok := auth.Intersect(&sub, &scope)
		if !ok {
			empty++
		}
		for range 20 {
			ev := &event.Event{
				Type:       event.Type(one(types)),
				Severity:   one(event.Severities[:3]),
				State:      one(event.States[:3]),
				Source:     one(sources),
				IncidentID: one(incidents),
			}
			for range rng.IntN(3) {
				ev.Resources = append(ev.Resources, resources[rng.IntN(len(resources))])
			}
			for _, k := range labelKeys {
				if rng.IntN(2) == 0 {
					ev.Labels = append(ev.Labels, event.Label{Key: k, Value: labelVals[rng.IntN(2)]})
				}
			}
			both := sub.Matches(ev) && scope.Matches(ev)
			got := ok && in.Matches(ev)
			if got && !both {
				t.Fatalf("intersection %s matches an event outside sub %s or scope %s: %+v",
					encode(&in), encode(&sub), encode(&scope), ev)
			}
			if both && !got && len(slices.Compact(slices.Sorted(slices.Values(ev.Resources)))) <= 1 {
				t.Fatalf("event %+v matches sub %s and scope %s but not their intersection %s (ok=%v)",
					ev, encode(&sub), encode(&scope), encode(&in), ok)
			}
			if got {
				matched++
			}
		}
	}
	// The generator must exercise both outcomes, or the property proves nothing.
	if matched == 0 || empty == 0 || empty == rounds {
		t.Fatalf("degenerate generator: %d matches, %d empty intersections of %d", matched, empty, rounds)
	}
}
