package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/flarecast/flarecast/producer"
)

// publishBatch is how many events are pipelined before waiting for replies.
const publishBatch = 256

func publish(args []string) error {
	fs := newFlagSet("publish")
	socket := fs.String("ingest-socket", "flarecast.sock", "the server's ingest socket")
	timeout := fs.Duration("timeout", 30*time.Second, "give up on a batch of events not answered within this (the server may be restarting)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	var in io.Reader = os.Stdin
	switch fs.NArg() {
	case 0:
	case 1:
		if name := fs.Arg(0); name != "-" {
			f, err := os.Open(name)
			if err != nil {
				return err
			}
			defer f.Close()
			in = f
		}
	default:
		return usageError("publish takes at most one file")
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	client, err := producer.Dial(ctx, *socket)
	if err != nil {
		return err
	}
	defer client.Close()

	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	var batch [][]byte
	var lineNos []int
	lineNo, rejected := 0, 0
	flush := func() {
		// Lost connections are redialled and unsent events resent by the
		// client; the timeout bounds how long a batch waits for that.
		bctx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		for i, r := range client.PublishBatch(bctx, batch) {
			if r.Err != nil {
				rejected++
				fmt.Fprintf(out, "line %d: rejected: %v\n", lineNos[i], r.Err)
			} else {
				fmt.Fprintf(out, "line %d: accepted message_id=%d\n", lineNos[i], r.MessageID)
			}
		}
		batch, lineNos = batch[:0], lineNos[:0]
	}
	for sc.Scan() {
		lineNo++
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		batch = append(batch, append([]byte(nil), line...))
		lineNos = append(lineNos, lineNo)
		if len(batch) == publishBatch {
			flush()
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read events: %w", err)
	}
	flush()
	if rejected > 0 {
		out.Flush()
		return errors.New(fmt.Sprint(rejected, " of the events were rejected"))
	}
	return nil
}
