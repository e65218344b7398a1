package ingest

import (
	"crypto/sha256"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadTokens(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	toks, err := LoadTokens(write("ok", "# ci\n\n  alpha  \r\n#beta\nGamma\n"))
	if err != nil || len(toks) != 2 || toks[0] != sha256.Sum256([]byte("alpha")) || toks[1] != sha256.Sum256([]byte("Gamma")) {
		t.Fatalf("LoadTokens: %d tokens, %v", len(toks), err)
	}
	for name, content := range map[string]string{"empty": "", "comments": "# a\n\n#b\n", "spaces": "two words\n"} {
		if _, err := LoadTokens(write(name, content)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := LoadTokens(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing file: no error")
	}
}

func TestIsLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:8081": true, "127.9.9.9:1": true, "[::1]:8081": true, "localhost:0": true,
		":8081": false, "0.0.0.0:8081": false, "[::]:8081": false, "10.0.0.1:8081": false,
		"example.com:80": false, "127.0.0.1": false,
	} {
		if got := IsLoopback(addr); got != want {
			t.Errorf("IsLoopback(%q) = %v, want %v", addr, got, want)
		}
	}
}

// TestAuthorized: only an exact listed token passes; the scheme is
// case-insensitive; nothing passes without tokens unless Insecure.
func TestAuthorized(t *testing.T) {
	s := &HTTPServer{Tokens: [][sha256.Size]byte{sha256.Sum256([]byte("tok-one")), sha256.Sum256([]byte("tok-two"))}}
	for auth, want := range map[string]bool{
		"Bearer tok-one": true, "bearer tok-two": true, "BEARER tok-one": true,
		"": false, "Bearer": false, "Bearer ": false, "Bearer tok-on": false, "Bearer tok-onf": false,
		"Bearer tok-one1": false, "Basic tok-one": false, "tok-one": false, "Bearer tok-one tok-two": false,
	} {
		r := httptest.NewRequest("POST", EventsPath, strings.NewReader(""))
		if auth != "" {
			r.Header.Set("Authorization", auth)
		}
		if got := s.authorized(r); got != want {
			t.Errorf("Authorization %q: %v, want %v", auth, got, want)
		}
	}
	r := httptest.NewRequest("POST", EventsPath, nil)
	if (&HTTPServer{}).authorized(r) {
		t.Error("no tokens, not insecure: authorized")
	}
	if !(&HTTPServer{Insecure: true}).authorized(r) {
		t.Error("insecure: refused")
	}
}
