package producer

import (
	"context"
	"errors"
	"fmt"

	"github.com/flarecast/flarecast/event"
)

// The reply codes of the ingest protocol.
const (
	CodeInvalidEvent = "INVALID_EVENT"
	CodeUnavailable  = "UNAVAILABLE"
)

// A publish ends with a message_id or with an error in exactly one of these
// classes, told apart with errors.Is; each says whether retrying is safe.
var (
	// ErrInvalidEvent: the event was refused for what it is. Retrying the
	// same event is pointless.
	ErrInvalidEvent = errors.New("producer: invalid event")
	// ErrUnavailable: the event was not accepted — the server refused it
	// while shutting down, or it was never sent because no connection could
	// be made before the context ended. Retrying cannot duplicate it.
	ErrUnavailable = errors.New("producer: server unavailable")
	// ErrNoReply: the event was sent but its reply never came (the
	// connection broke, or the context ended first). The server may or may
	// not have accepted it; retrying may deliver it twice.
	ErrNoReply = errors.New("producer: no reply, the event may or may not have been accepted")
	// ErrClosed: the Client was closed before the event was sent.
	ErrClosed = errors.New("producer: client closed")
)

// Error is the refusal of one event: by the server (its reply line), or by
// this package before sending. Code is CodeInvalidEvent or CodeUnavailable;
// errors.Is(err, ErrInvalidEvent) and errors.Is(err, ErrUnavailable) match
// on it. Err is the cause when there is one (a context's error, a dial error).
type Error struct {
	Code    string
	Message string
	Err     error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Code + ": " + e.Message + ": " + e.Err.Error()
	}
	return e.Code + ": " + e.Message
}

// Is makes the sentinel classes match the reply codes.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrInvalidEvent:
		return e.Code == CodeInvalidEvent
	case ErrUnavailable:
		return e.Code == CodeUnavailable
	}
	return false
}

func (e *Error) Unwrap() error { return e.Err }

// errConnLost is shared by every event in flight on a broken connection,
// so a failure storm allocates nothing per event.
var errConnLost = fmt.Errorf("%w: connection to the ingest socket lost", ErrNoReply)

// invalid is a refusal by this package: the event was not sent.
func invalid(format string, args ...any) error {
	return &Error{Code: CodeInvalidEvent, Message: fmt.Sprintf(format, args...) + " (not sent)"}
}

// classify maps what any Publisher returned onto the classes above, so
// handlers report errors alike whether they publish over the socket or
// in-process: the engine returns *event.Error for an invalid event and
// plain errors (stopping, ctx) for an event it did not accept.
func classify(err error) error {
	if err == nil || errors.Is(err, ErrInvalidEvent) || errors.Is(err, ErrUnavailable) ||
		errors.Is(err, ErrNoReply) || errors.Is(err, ErrClosed) {
		return err
	}
	if perr, ok := errors.AsType[*event.Error](err); ok {
		return &Error{Code: CodeInvalidEvent, Message: perr.Message}
	}
	return &Error{Code: CodeUnavailable, Message: "event not accepted", Err: err}
}

// noReply is the error of an event whose reply the caller stopped waiting for.
func noReply(ctx context.Context) error {
	return fmt.Errorf("%w: %w", ErrNoReply, context.Cause(ctx))
}
