package codec

import (
	"reflect"
	"testing"
)

// FuzzPlainStrings: the fast paths for plain strings and lists of them
// return what the decoder returns, or step aside.
func FuzzPlainStrings(f *testing.F) {
	for _, s := range []string{
		`"s1"`, `""`, `"a b"`, `"\u0041"`, `"a\"b"`, `"é"`, `"a`, `a"`, `"\t"`,
		`["a"]`, `["a","b"]`, ` ["a"]`, `[ "a" , "b" ]`, "[\n\"a\",\t\"b\"\r]", `[]`, `[ ]`, `["a",]`,
		`["a"]x`, `["a"] `, `["a" "b"]`, `["a",1]`, `["a\"]`, `["a\\"]`, `[""]`, `["",""]`, `["a"],`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if s, ok := plainString(raw); ok {
			var want string
			if err := jsonAPI.Unmarshal(raw, &want); err != nil || want != s {
				t.Fatalf("plainString(%q) = %q; the decoder: %q, %v", raw, s, want, err)
			}
		}
		if l, ok := plainStrings(raw); ok {
			var want []string
			if err := jsonAPI.Unmarshal(raw, &want); err != nil || !reflect.DeepEqual(want, l) {
				t.Fatalf("plainStrings(%q) = %q; the decoder: %q, %v", raw, l, want, err)
			}
			if cap(l) != len(l) {
				t.Fatalf("plainStrings(%q): capacity %d for %d values", raw, cap(l), len(l))
			}
		}
	})
}

// TestPlainStringsAccept: the fast paths take what clients send.
func TestPlainStringsAccept(t *testing.T) {
	if s, ok := plainString([]byte(`"sub-1"`)); !ok || s != "sub-1" {
		t.Errorf("plainString: %q, %v", s, ok)
	}
	if l, ok := plainStrings([]byte(`[ "P0", "P1" ]`)); !ok || !reflect.DeepEqual(l, []string{"P0", "P1"}) {
		t.Errorf("plainStrings: %q, %v", l, ok)
	}
	if _, ok := plainStrings([]byte(`["caf\u00e9"]`)); ok {
		t.Error("plainStrings took an escape")
	}
}
