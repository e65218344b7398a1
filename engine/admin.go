package engine

import (
	"net"
	"net/http"
	"net/http/pprof"
	"strconv"

	"github.com/VictoriaMetrics/metrics"

	"github.com/flarecast/flarecast/board"
)

// AdminHandler serves /metrics (Prometheus text format), /healthz,
// /readyz, /debug/pprof/ and, unless Config.Board is off, the live board at /. It is plain net/http: scrapes and probes are
// few, and they must keep working when the event loops are saturated.
func (e *Engine) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		e.metrics.set.WritePrometheus(w)
		metrics.WriteProcessMetrics(w)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := e.readiness(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	if e.cfg.Board {
		// The board is served here, the WebSocket on --listen: tell the page
		// which port (the bound one, so ":0" works) and path to use.
		_, port, _ := net.SplitHostPort(e.cfg.Listen)
		if a, ok := e.Addr().(*net.TCPAddr); ok {
			port = strconv.Itoa(a.Port)
		}
		mux.Handle("GET /{$}", board.Handler(board.Config{Port: port, Path: e.cfg.Path}))
	}
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}
