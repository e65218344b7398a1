package codec

import (
	"bytes"
	"errors"
	"io"
	"sync"

	"github.com/klauspost/compress/flate"
)

// permessage-deflate (RFC 7692) without per-connection compressor state:
// the server always negotiates server_no_context_takeover and
// client_no_context_takeover, so every message is an independent deflate
// stream. One compression per event serves every deflate client, and
// neither a writer (~1 MB of state) nor a reader belongs to a connection:
// both come from pools for the duration of one message.

// deflateTail is the empty stored block a sync flush ends with; RFC 7692
// §7.2.1 strips it from each message and §7.2.2 appends it before inflating.
var deflateTail = []byte{0x00, 0x00, 0xff, 0xff}

// ErrMessageTooLarge means a message (or what it inflates to) exceeds the limit.
var ErrMessageTooLarge = errors.New("message exceeds the maximum size")

var writers = sync.Pool{New: func() any {
	w, _ := flate.NewWriter(nil, flate.BestSpeed) // level is valid: cannot fail
	return w
}}

var readers = sync.Pool{New: func() any { return flate.NewReader(bytes.NewReader(nil)) }}

// AppendCompressedFrame appends a complete final text frame holding payload
// compressed with permessage-deflate (RSV1 set). scratch is reused for the
// compressed bytes and returned for the next call.
func AppendCompressedFrame(dst, scratch, payload []byte) (frame, scratchOut []byte) {
	buf := bytes.NewBuffer(scratch[:0])
	w := writers.Get().(*flate.Writer)
	w.Reset(buf)
	// Writing to a bytes.Buffer cannot fail.
	_, _ = w.Write(payload)
	_ = w.Flush()
	writers.Put(w)
	compressed := bytes.TrimSuffix(buf.Bytes(), deflateTail)
	dst = AppendFrameHeader(dst, OpText, true, len(compressed))
	return append(dst, compressed...), buf.Bytes()
}

// Inflate appends the decompressed form of one permessage-deflate message
// to dst. It stops with ErrMessageTooLarge as soon as the output would pass
// max bytes, so a small message that inflates to gigabytes costs nothing.
func Inflate(dst, compressed []byte, max int) ([]byte, error) {
	r := readers.Get().(io.ReadCloser)
	defer readers.Put(r)
	src := io.MultiReader(bytes.NewReader(compressed), bytes.NewReader(deflateTail))
	if err := r.(flate.Resetter).Reset(src, nil); err != nil {
		return dst, err
	}
	start := len(dst)
	for {
		if len(dst) == cap(dst) {
			dst = append(dst, 0)[:len(dst)]
		}
		limit := cap(dst)
		if room := start + max + 1; limit > room {
			limit = room
		}
		n, err := r.Read(dst[len(dst):limit])
		dst = dst[:len(dst)+n]
		if len(dst)-start > max {
			return dst[:start], ErrMessageTooLarge
		}
		switch err {
		case nil:
		case io.EOF, io.ErrUnexpectedEOF:
			// A message ends after the sync-flush marker, without a final
			// block, which the reader reports as an unexpected EOF.
			return dst, nil
		default:
			return dst[:start], err
		}
	}
}
