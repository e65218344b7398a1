package codec

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/flarecast/flarecast/filterindex"

	"github.com/gobwas/ws"
	"github.com/klauspost/compress/flate"
)

// maskedFrame builds a client frame for the seed corpus.
func maskedFrame(fin bool, op ws.OpCode, payload []byte) []byte {
	h := ws.Header{Fin: fin, OpCode: op, Masked: true, Mask: [4]byte{1, 2, 3, 4}, Length: int64(len(payload))}
	var buf bytes.Buffer
	_ = ws.WriteHeader(&buf, h)
	p := append([]byte(nil), payload...)
	ws.Cipher(p, h.Mask, 0)
	buf.Write(p)
	return buf.Bytes()
}

// FuzzClientFrames feeds arbitrary bytes, cut at arbitrary points, to the
// frame reader the event loops run: it must never panic, never claim more
// bytes than it was given, return the same frames however the stream is
// split, and agree with gobwas/ws's reader on every frame it accepts.
func FuzzClientFrames(f *testing.F) {
	f.Add(maskedFrame(true, ws.OpText, []byte(`{"type":"ping","timestamp":"x"}`)), uint16(3))
	f.Add(append(maskedFrame(false, ws.OpText, []byte("he")), maskedFrame(true, ws.OpContinuation, []byte("llo"))...), uint16(1))
	f.Add(maskedFrame(true, ws.OpPing, nil), uint16(0))
	f.Add(maskedFrame(true, ws.OpBinary, bytes.Repeat([]byte{0xAB}, 300)), uint16(7))
	f.Add([]byte{0x81, 0x05, 'h', 'e', 'l', 'l', 'o'}, uint16(2)) // unmasked
	f.Add([]byte{0x89, 0xFE, 0x00, 0x7E}, uint16(1))              // oversized control
	f.Fuzz(func(t *testing.T, stream []byte, cut uint16) {
		const max = 1 << 12
		whole := readAll(t, stream, len(stream)+1, max)
		step := int(cut)%17 + 1
		split := readAll(t, stream, step, max)
		if len(whole) != len(split) {
			t.Fatalf("%d frames read whole, %d read in pieces of %d", len(whole), len(split), step)
		}
		for i := range whole {
			if whole[i].err != split[i].err || !bytes.Equal(whole[i].payload, split[i].payload) || whole[i].h != split[i].h {
				t.Fatalf("frame %d differs when split: %+v vs %+v", i, whole[i], split[i])
			}
		}
		// Reference: gobwas/ws reads the same headers and payloads.
		r := bytes.NewReader(stream)
		for i, fr := range whole {
			if fr.err != nil {
				break
			}
			h, err := ws.ReadHeader(r)
			if err != nil {
				t.Fatalf("frame %d: we accepted it, gobwas/ws says %v", i, err)
			}
			if h.Fin != fr.h.Fin || h.OpCode != fr.h.OpCode || h.Length != fr.h.Length || h.Mask != fr.h.Mask || h.Rsv != fr.h.Rsv {
				t.Fatalf("frame %d header: ours %+v, gobwas %+v", i, fr.h, h)
			}
			p := make([]byte, h.Length)
			if _, err := io.ReadFull(r, p); err != nil {
				t.Fatalf("frame %d payload: %v", i, err)
			}
			ws.Cipher(p, h.Mask, 0)
			if !bytes.Equal(p, fr.payload) {
				t.Fatalf("frame %d payload differs from gobwas/ws", i)
			}
		}
	})
}

type readFrame struct {
	h       Header
	payload []byte
	err     error
}

// readAll mimics an event loop: bytes arrive step at a time into a buffer,
// complete frames are taken from its front.
func readAll(t *testing.T, stream []byte, step, max int) []readFrame {
	var out []readFrame
	var buf []byte
	for off := 0; off < len(stream); off += step {
		buf = append(buf, stream[off:min(off+step, len(stream))]...)
		for len(buf) > 0 {
			in := append([]byte(nil), buf...) // the reader unmasks in place
			h, payload, n, err := NextClientFrame(in, int64(max))
			if errors.Is(err, ErrShortHeader) || errors.Is(err, ErrShortFrame) {
				break
			}
			if n > len(in) {
				t.Fatalf("frame of %d bytes claimed from a buffer of %d", n, len(in))
			}
			if err != nil {
				var perr *ProtocolError
				if !errors.As(err, &perr) {
					t.Fatalf("unexpected error type %T: %v", err, err)
				}
				return append(out, readFrame{err: errProtocol})
			}
			out = append(out, readFrame{h: h, payload: append([]byte(nil), payload...)})
			buf = buf[n:]
		}
	}
	return out
}

var errProtocol = errors.New("protocol error")

// FuzzInflate checks permessage-deflate inflation: bounded output whatever
// the input, and the same bytes as klauspost's reader when it succeeds.
func FuzzInflate(f *testing.F) {
	for _, msg := range []string{"", "hello", `{"type":"subscribe","subscription_id":"a","filters":{}}`} {
		frame, _ := AppendCompressedFrame(nil, nil, []byte(msg))
		f.Add(frame[HeaderSize(len(frame)-2):], uint16(64))
	}
	f.Add(bytes.Repeat([]byte{0}, 40), uint16(10))
	f.Fuzz(func(t *testing.T, compressed []byte, max uint16) {
		out, err := Inflate(nil, compressed, int(max))
		if len(out) > int(max) {
			t.Fatalf("inflated %d bytes past the limit %d", len(out), max)
		}
		if err != nil {
			return
		}
		ref, rerr := io.ReadAll(io.LimitReader(flate.NewReader(io.MultiReader(bytes.NewReader(compressed), bytes.NewReader(deflateTail))), int64(max)+1))
		if rerr != nil && !errors.Is(rerr, io.ErrUnexpectedEOF) {
			return // the reference rejects a stream we stopped reading early
		}
		if !bytes.Equal(out, ref) {
			t.Fatalf("inflate differs from the reference: %q vs %q", out, ref)
		}
	})
}

// FuzzDecodeClientMessage: any text is either a message or a protocol
// error, never a panic; an accepted filter survives an encode/decode round
// trip; the limits hold: decoded with a small MaxFilterValues, a message is
// refused with LIMIT_EXCEEDED exactly when it lists more values, and is
// otherwise decoded as it is without the limit.
func FuzzDecodeClientMessage(f *testing.F) {
	for _, s := range []string{
		`{"type":"subscribe","subscription_id":"s1","filters":{"severities":["P1","P0"],"labels":{"env":"prod"}}}`,
		`{"type":"subscribe","subscription_id":"s","filters":{},"since":10}`,
		`{"type":"unsubscribe","subscription_id":"s1"}`,
		`{"type":"ping","timestamp":"2026-01-01T00:00:00Z"}`,
		`{"type":"ack","message_id":42}`,
		`{"type":"auth","token":"x.y.z"}`,
		`{"type":"nope"}`, `[]`, `{"type":1}`, `{`,
		`{"type":"subscribe","subscription_id":"s","filters":{"sources":["a,b","c\"],[d"],"incident_ids":["x","x"]}}`,
		`{"type":"subscribe","subscription_id":"s","filters":{"labels":{"a":"1","a":"2","b":"[,]"}}}`,
		`{"type":"unsubscribe","subscription_id":"` + strings.Repeat("\\u00e9", 65) + `"}`,
	} {
		f.Add([]byte(s))
	}
	const small = 3
	f.Fuzz(func(t *testing.T, data []byte) {
		m, merr := DecodeClientMessage(data, DefaultLimits)
		if (m == nil) == (merr == nil) {
			t.Fatalf("want exactly one of message and error, got %v and %v", m, merr)
		}
		sm, serr := DecodeClientMessage(data, Limits{MaxFilterValues: small})
		if (sm == nil) == (serr == nil) {
			t.Fatalf("small limit: want exactly one of message and error, got %v and %v", sm, serr)
		}
		if merr != nil {
			switch merr.Code {
			case CodeInvalidMessage, CodeUnsupported, CodeLimitExceeded, CodeNotFound:
			default:
				t.Fatalf("unexpected code %s", merr.Code)
			}
			// Codes only: which of several unknown keys an error names
			// depends on map order.
			if serr == nil || (serr.Code != merr.Code && serr.Code != CodeLimitExceeded) {
				t.Fatalf("refused (%v) without the small limit, but %v with it", merr, serr)
			}
			return
		}
		if serr != nil && serr.Code != CodeLimitExceeded {
			t.Fatalf("accepted without the small limit, refused with it: %v", serr)
		}
		if m.Type != TypeSubscribe {
			if serr != nil {
				t.Fatalf("a %s refused for its filter values: %v", m.Type, serr)
			}
			return
		}
		if values := filterValues(&m.Filter); serr == nil && values > small {
			t.Fatalf("%d filter values (after normalizing) passed a limit of %d", values, small)
		}
		if listed := listedValues(t, data); (serr != nil) != (listed > small) {
			t.Fatalf("%d filter values listed, limit %d: refused = %v", listed, small, serr)
		}
		if serr == nil && !reflect.DeepEqual(sm, m) {
			t.Fatalf("the limit changed the decoded message: %+v vs %+v", sm, m)
		}
		enc := AppendFilter(nil, &m.Filter)
		back, err := DecodeFilter(enc, "filters")
		if err != nil {
			t.Fatalf("re-decoding our own filter %s: %v", enc, err)
		}
		if again := AppendFilter(nil, &back); !bytes.Equal(enc, again) {
			t.Fatalf("filter round trip changed it: %s -> %s", enc, again)
		}
	})
}

// filterValues counts f's values the way Limits.MaxFilterValues does.
func filterValues(f *filterindex.Filter) int {
	return len(f.EventTypes) + len(f.Severities) + len(f.States) + len(f.Sources) +
		len(f.Resources) + len(f.IncidentIDs) + len(f.Labels)
}

// listedValues counts, with encoding/json's tokenizer as a reference, the
// values a subscribe message's filters list as written (duplicates included):
// the elements of every list and the members of labels.
func listedValues(t *testing.T, data []byte) int {
	var msg map[string]json.RawMessage
	var filters map[string]json.RawMessage
	if err := json.Unmarshal(data, &msg); err != nil {
		t.Fatalf("encoding/json refuses a message the codec accepted: %v", err)
	}
	if err := json.Unmarshal(msg["filters"], &filters); err != nil {
		t.Fatalf("encoding/json refuses filters the codec accepted: %v", err)
	}
	n := 0
	for _, raw := range filters {
		// Tokens at depth 1: an array's elements, or an object's keys
		// and values (two per member).
		tokens, depth := 0, 0
		d := json.NewDecoder(bytes.NewReader(raw))
		for {
			tok, err := d.Token()
			if err != nil {
				break
			}
			switch tok {
			case json.Delim(']'), json.Delim('}'):
				depth--
				continue
			}
			if depth == 1 {
				tokens++
			}
			if tok == json.Delim('[') || tok == json.Delim('{') {
				depth++
			}
		}
		if bytes.HasPrefix(bytes.TrimSpace(raw), []byte("{")) {
			tokens /= 2
		}
		n += tokens
	}
	return n
}
