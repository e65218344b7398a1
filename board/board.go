// Package board serves flarecast's live incident board: one self-contained
// HTML page (markup, style and script inline, no CDN, no build step) that is
// embedded in the binary and served on the admin port.
//
// The page is an ordinary WebSocket client of the public protocol: it
// subscribes with the filters its controls describe, acknowledges what it
// has processed, and resumes its session after a drop. Nothing it does needs
// a privilege another client lacks. The only thing the server tells it out
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

//go:embed board.html
var files embed.FS

// placeholder is replaced by the endpoint description (HTML-escaped JSON)
// in the page's <meta name="flarecast-ws"> tag.
const placeholder = "{{FLARECAST_WS}}"

// Config tells the page where the WebSocket endpoint is. The page connects
// to the host it was loaded from (a browser reaching the admin port by some
// name reaches the WebSocket port by the same name), on Port and Path; its
// own `?ws=` query parameter overrides all of it.
type Config struct {
	// Port of the WebSocket listener; empty means the page's own port
	// (the board and the WebSocket behind one reverse proxy).
	Port string
	// Path of the WebSocket endpoint; empty means /ws.
	Path string
}

// Handler returns the handler that serves the page for every request it is
// given; mount it on the path the page should live at (flarecast: GET /).
func Handler(cfg Config) http.Handler {
	raw, err := files.ReadFile("board.html")
	if err != nil {
		panic("board: embedded page missing: " + err.Error()) // cannot happen: go:embed checked it at build time
	}
	endpoint, _ := json.Marshal(struct {
		Port string `json:"port,omitempty"`
		Path string `json:"path,omitempty"`
	}{cfg.Port, cfg.Path})
	page := bytes.Replace(raw, []byte(placeholder), []byte(html.EscapeString(string(endpoint))), 1)
	csp := contentSecurityPolicy(page)
	modified := time.Now()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
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
	scriptRe = regexp.MustCompile(`(?s)<script>(.*?)</script>`)
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
