package engine

import (
	"sync"

	"github.com/flarecast/flarecast/event"
)

// DispatchGate holds the dispatcher before each event while it is shut:
// tests use it to fill the ring deterministically.
type DispatchGate struct {
	mu sync.Mutex
	ch chan struct{} // non-nil while shut
}

// Shut makes the dispatcher wait before its next event.
func (g *DispatchGate) Shut() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ch == nil {
		g.ch = make(chan struct{})
	}
}

// Open lets the dispatcher go on.
func (g *DispatchGate) Open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ch != nil {
		close(g.ch)
		g.ch = nil
	}
}

func (g *DispatchGate) wait() {
	g.mu.Lock()
	ch := g.ch
	g.mu.Unlock()
	if ch != nil {
		<-ch
	}
}

// GateDispatcher installs an open gate in front of e's dispatcher; call it
// between New and Run.
func GateDispatcher(e *Engine) *DispatchGate {
	g := &DispatchGate{}
	next := e.disp.onEvent
	e.disp.onEvent = func(seq uint64, ev *event.Event) {
		g.wait()
		next(seq, ev)
	}
	return g
}
