// Package codec turns bytes into WebSocket frames and protocol messages and
// back: the RFC 6455 frame header parser the event loops run on every read,
// the builder of the unmasked server frames that are encoded once and written
// to many connections, and the JSON messages of the flarecast protocol.
//
// Nothing here does I/O or keeps per-connection state; the engine owns that.
package codec

import (
	"encoding/binary"
	"errors"
	"math"

	"github.com/gobwas/ws"
)

// Opcodes and close codes are gobwas/ws's, re-exported where the engine needs
// them so that the engine speaks one vocabulary.
const (
	OpContinuation = ws.OpContinuation
	OpText         = ws.OpText
	OpBinary       = ws.OpBinary
	OpClose        = ws.OpClose
	OpPing         = ws.OpPing
	OpPong         = ws.OpPong
)

// MaxHeaderSize is the longest frame header: 2 bytes, 8 of extended length, 4 of mask.
const MaxHeaderSize = 14

// ErrShortHeader means the buffer ends inside a frame header: wait for more bytes.
var ErrShortHeader = errors.New("codec: short frame header")

// ProtocolError is a violation of RFC 6455 by the peer. Code is the close
// status the server answers with.
type ProtocolError struct {
	Code   ws.StatusCode
	Reason string
}

func (e *ProtocolError) Error() string { return "websocket protocol error: " + e.Reason }

// Header is one parsed frame header.
type Header struct {
	Fin    bool
	Rsv    byte // the three reserved bits, RSV1 in bit 2 (0b100)
	OpCode ws.OpCode
	Masked bool
	Mask   [4]byte
	Length int64
}

// Rsv1 reports whether the RSV1 bit ("compressed" under permessage-deflate) is set.
func (h Header) Rsv1() bool { return h.Rsv&0b100 != 0 }

// ParseHeader parses the frame header at the start of b. It returns the
// header and its size in bytes, ErrShortHeader when b holds only part of it,
// or a *ProtocolError when the header is invalid whatever follows: a
// reserved opcode, a fragmented or oversized control frame, or a length
// with the most significant bit set. It does not allocate.
func ParseHeader(b []byte) (h Header, n int, err error) {
	if len(b) < 2 {
		return h, 0, ErrShortHeader
	}
	h.Fin = b[0]&0x80 != 0
	h.Rsv = (b[0] >> 4) & 0x07
	h.OpCode = ws.OpCode(b[0] & 0x0f)
	h.Masked = b[1]&0x80 != 0
	n = 2
	switch l := b[1] & 0x7f; l {
	case 126:
		if len(b) < 4 {
			return h, 0, ErrShortHeader
		}
		h.Length = int64(binary.BigEndian.Uint16(b[2:4]))
		n = 4
	case 127:
		if len(b) < 10 {
			return h, 0, ErrShortHeader
		}
		u := binary.BigEndian.Uint64(b[2:10])
		if u > math.MaxInt64 {
			return h, 0, &ProtocolError{ws.StatusProtocolError, "payload length has its most significant bit set"}
		}
		h.Length = int64(u)
		n = 10
	default:
		h.Length = int64(l)
	}
	if h.Masked {
		if len(b) < n+4 {
			return h, 0, ErrShortHeader
		}
		copy(h.Mask[:], b[n:n+4])
		n += 4
	}
	switch {
	case h.OpCode.IsReserved():
		return h, 0, &ProtocolError{ws.StatusProtocolError, "reserved opcode"}
	case h.OpCode.IsControl() && !h.Fin:
		return h, 0, &ProtocolError{ws.StatusProtocolError, "fragmented control frame"}
	case h.OpCode.IsControl() && h.Length > 125:
		return h, 0, &ProtocolError{ws.StatusProtocolError, "control frame payload longer than 125 bytes"}
	}
	return h, n, nil
}

// Unmask applies the client's masking key to payload in place.
func Unmask(payload []byte, mask [4]byte) { ws.Cipher(payload, mask, 0) }

// HeaderSize returns the size of an unmasked server frame header for a payload of n bytes.
func HeaderSize(n int) int {
	switch {
	case n < 126:
		return 2
	case n <= math.MaxUint16:
		return 4
	default:
		return 10
	}
}

// AppendFrameHeader appends the header of a final, unmasked server frame.
// compressed sets RSV1 (permessage-deflate).
func AppendFrameHeader(dst []byte, op ws.OpCode, compressed bool, n int) []byte {
	b0 := 0x80 | byte(op)
	if compressed {
		b0 |= 0x40
	}
	switch {
	case n < 126:
		return append(dst, b0, byte(n))
	case n <= math.MaxUint16:
		return append(dst, b0, 126, byte(n>>8), byte(n))
	default:
		return binary.BigEndian.AppendUint64(append(dst, b0, 127), uint64(n))
	}
}

// AppendFrame appends a complete final, unmasked server frame carrying payload.
func AppendFrame(dst []byte, op ws.OpCode, payload []byte) []byte {
	return append(AppendFrameHeader(dst, op, false, len(payload)), payload...)
}

// AppendClose appends a close frame with a status code and a reason
// (truncated so the payload fits a control frame).
func AppendClose(dst []byte, code ws.StatusCode, reason string) []byte {
	if len(reason) > 123 {
		reason = reason[:123]
	}
	dst = AppendFrameHeader(dst, OpClose, false, 2+len(reason))
	dst = binary.BigEndian.AppendUint16(dst, uint16(code))
	return append(dst, reason...)
}

// ParseClosePayload validates a close frame's payload: empty, or a valid
// status code followed by a UTF-8 reason. It returns the code to echo.
func ParseClosePayload(p []byte) (ws.StatusCode, error) {
	switch {
	case len(p) == 0:
		return ws.StatusNoStatusRcvd, nil
	case len(p) == 1:
		return 0, &ProtocolError{ws.StatusProtocolError, "close payload of one byte"}
	}
	code := ws.StatusCode(binary.BigEndian.Uint16(p))
	if !validCloseCode(code) {
		return 0, &ProtocolError{ws.StatusProtocolError, "invalid close code"}
	}
	if !validUTF8(p[2:]) {
		return 0, &ProtocolError{ws.StatusInvalidFramePayloadData, "close reason is not valid UTF-8"}
	}
	return code, nil
}

// validCloseCode reports whether a peer may send code in a close frame (RFC 6455 §7.4).
func validCloseCode(c ws.StatusCode) bool {
	switch {
	case c >= 1000 && c <= 1003, c >= 1007 && c <= 1011:
		return true
	case c >= 3000 && c <= 4999:
		return true
	}
	return false
}

// ErrShortFrame means the buffer ends inside a frame: wait for more bytes.
// ErrShortHeader is the case where even the header is incomplete.
var ErrShortFrame = errors.New("codec: short frame")

// NextClientFrame takes the client frame at the start of b: it checks what
// RFC 6455 requires of a frame from a client (masked, within maxPayload),
// unmasks the payload in place and returns it with the frame's total size.
// It returns ErrShortHeader or ErrShortFrame when b holds only part of the
// frame, and a *ProtocolError (1002, or 1009 for an oversized frame) when
// the frame is unacceptable however it continues. The payload aliases b.
func NextClientFrame(b []byte, maxPayload int64) (h Header, payload []byte, n int, err error) {
	h, hn, err := ParseHeader(b)
	if err != nil {
		return h, nil, 0, err
	}
	switch {
	case !h.Masked:
		return h, nil, 0, &ProtocolError{ws.StatusProtocolError, "client frames must be masked"}
	case h.Length > maxPayload:
		return h, nil, 0, &ProtocolError{ws.StatusMessageTooBig, "frame exceeds max-message-size"}
	case h.OpCode.IsControl() && h.Rsv != 0:
		return h, nil, 0, &ProtocolError{ws.StatusProtocolError, "reserved bits set on a control frame"}
	}
	if int64(len(b)-hn) < h.Length {
		return h, nil, 0, ErrShortFrame
	}
	n = hn + int(h.Length)
	payload = b[hn:n]
	Unmask(payload, h.Mask)
	return h, payload, n, nil
}
