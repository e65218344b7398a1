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
	"strings"
	"syscall"
	"time"

	"github.com/flarecast/flarecast/producer"
)

// publishBatch is how many events are pipelined before waiting for replies.
const publishBatch = 256

func publish(args []string) error {
	fs := newFlagSet("publish")
	socket := fs.String("ingest-socket", "flarecast.sock", "the server's ingest socket")
	ingestURL := fs.String("url", "", "send over HTTP ingest instead of the socket: http(s)://HOST:PORT of a server's --ingest-listen")
	token := fs.String("token", "", "bearer token for --url (prefer --token-file or FLARECAST_TOKEN: flags show in ps)")
	tokenFile := fs.String("token-file", "", "file whose first token line (blank lines and # comments skipped) is the bearer token for --url")
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
	var client batchPublisher
	if *ingestURL != "" {
		tok, err := publishToken(*token, *tokenFile)
		if err != nil {
			return err
		}
		hc, err := producer.DialHTTP(*ingestURL, tok)
		if err != nil {
			return usageError("--url: " + err.Error())
		}
		defer hc.Close()
		client = hc
	} else {
		if *token != "" || *tokenFile != "" {
			return usageError("--token and --token-file go with --url")
		}
		sc, err := producer.Dial(ctx, *socket)
		if err != nil {
			return err
		}
		defer sc.Close()
		client = sc
	}

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

// batchPublisher is what publish needs of a transport: the socket's
// *producer.Client or HTTP ingest's *producer.HTTPClient.
type batchPublisher interface {
	PublishBatch(ctx context.Context, events [][]byte) []producer.Result
}

// publishToken returns the bearer token of --token or --token-file.
func publishToken(token, file string) (string, error) {
	switch {
	case token != "" && file != "":
		return "", usageError("--token and --token-file exclude each other")
	case file == "":
		return token, nil
	}
	raw, err := os.ReadFile(file)
	if err != nil {
		return "", usageError("--token-file: " + err.Error())
	}
	for line := range strings.Lines(string(raw)) {
		if tok := strings.TrimSpace(line); tok != "" && !strings.HasPrefix(tok, "#") {
			return tok, nil
		}
	}
	return "", usageError("--token-file " + file + " holds no token")
}
