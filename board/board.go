// Package board serves flarecast's live incident board: one self-contained
// HTML page (markup, style and script inline, no CDN; the script includes
// the committed bundle of the TypeScript client) that is embedded in the
// binary and served on the admin port.
//
// The page is an ordinary WebSocket client of the public protocol: it
// subscribes with the filters its controls describe, acknowledges what it
// has processed, and resumes its session after a drop. It does so through
// the TypeScript client package, @flarecast/client (clients/js): its built
// bundle is committed here as flarecast.js (`npm run board` in clients/js
// refreshes it, and the package's tests check that the copy equals a fresh
// build), and the page carries it inline, in its module script, so that the
// Content-Security-Policy pins one hash for all the code the page runs.
// Nothing it does needs a privilege another client lacks. The only thing the server tells it out
// of band is where the WebSocket endpoint is, because the board is served by
// the admin listener while the WebSocket lives on another port.
package board

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"encoding/json"
	"html"
	"net/http"
	"regexp"
	"time"
)

//go:embed board.html flarecast.js
var files embed.FS

// placeholder is replaced by the endpoint description (HTML-escaped JSON)
// in the page's <meta name="flarecast-ws"> tag.
const placeholder = "{{FLARECAST_WS}}"

// clientPlaceholder, in the page's module script, is replaced by the
// client package's bundle (flarecast.js).
const clientPlaceholder = "/*{{FLARECAST_CLIENT}}*/"

// ClientJS returns the embedded bundle of @flarecast/client (an ES module),
// the code the board runs; ScriptHandler serves it.
func ClientJS() []byte {
	js, err := files.ReadFile("flarecast.js")
	if err != nil {
		panic("board: embedded client missing: " + err.Error()) // cannot happen: go:embed checked it at build time
	}
	return js
}

// ScriptHandler serves the client bundle as a JavaScript module, for pages
// other than the board that want to import it from the server.
func ScriptHandler() http.Handler {
	js := ClientJS()
	modified := time.Now()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "text/javascript; charset=utf-8")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Cache-Control", "no-cache")
		http.ServeContent(w, r, "", modified, bytes.NewReader(js))
	})
}

// page is board.html with the client bundle in its module script.
func page() []byte {
	raw, err := files.ReadFile("board.html")
	if err != nil {
		panic("board: embedded page missing: " + err.Error()) // cannot happen: go:embed checked it at build time
	}
	js := ClientJS()
	if bytes.Contains(bytes.ToLower(js), []byte("</script")) || !bytes.Contains(raw, []byte(clientPlaceholder)) {
		panic("board: the client bundle cannot be inlined") // board_test.go checks it
	}
	return bytes.Replace(raw, []byte(clientPlaceholder), js, 1)
}

// Config tells the page where the WebSocket endpoint is. The page connects
// to the host it was loaded from (a browser reaching the admin port by some
// name reaches the WebSocket port by the same name), on Port and Path; its
// own `?ws=` query parameter overrides all of it.
//
// A request that came through a reverse proxy (it carries
// X-Forwarded-Proto, X-Forwarded-Host or Forwarded) gets the page without
// the port: behind a proxy the board and the WebSocket share one origin,
// e.g. https://ops.example.com/ and wss://ops.example.com/ws.
type Config struct {
	// Port of the WebSocket listener; empty means the page's own port.
	Port string
	// Path of the WebSocket endpoint; empty means /ws.
	Path string
}

// Handler returns the handler that serves the page for every request it is
// given; mount it on the path the page should live at (flarecast: GET /).
func Handler(cfg Config) http.Handler {
	raw := page()
	render := func(port string) []byte {
		endpoint, _ := json.Marshal(struct {
			Port string `json:"port,omitempty"`
			Path string `json:"path,omitempty"`
		}{port, cfg.Path})
		return bytes.Replace(raw, []byte(placeholder), []byte(html.EscapeString(string(endpoint))), 1)
	}
	direct, proxied := render(cfg.Port), render("")
	csp := contentSecurityPolicy(direct) // the script and style are the same in both
	modified := time.Now()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		page := direct
		if r.Header.Get("X-Forwarded-Proto") != "" || r.Header.Get("X-Forwarded-Host") != "" || r.Header.Get("Forwarded") != "" {
			page = proxied
		}
		h := w.Header()
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("Content-Security-Policy", csp)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		http.ServeContent(w, r, "", modified, bytes.NewReader(page))
	})
}

var (
	scriptRe = regexp.MustCompile(`(?s)<script(?: type="module")?>(.*?)</script>`)
	styleRe  = regexp.MustCompile(`(?s)<style>(.*?)</style>`)
)

// contentSecurityPolicy pins the page's inline script and style by hash, so
// the page runs exactly the code embedded in the binary and nothing an event
// could smuggle in; it may open WebSockets anywhere (`?ws=` may name any
// endpoint) and load nothing else.
func contentSecurityPolicy(page []byte) string {
	hashes := func(re *regexp.Regexp) string {
		var out []byte
		for _, m := range re.FindAllSubmatch(page, -1) {
			sum := sha256.Sum256(m[1])
			out = append(out, " 'sha256-"...)
			out = append(out, base64.StdEncoding.EncodeToString(sum[:])...)
			out = append(out, '\'')
		}
		return string(out)
	}
	return "default-src 'none'; script-src" + hashes(scriptRe) + "; style-src" + hashes(styleRe) +
		"; connect-src ws: wss:; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
}
