// Command flarecast streams incident-management events to WebSocket clients.
//
//	flarecast serve     run the server
//	flarecast publish   send NDJSON events to a running server's ingest socket
//	flarecast tail      print live events, one line each, resuming after drops
//
// Every flag can also be set with an environment variable named
// FLARECAST_<FLAG>, e.g. FLARECAST_MAX_PENDING_MESSAGES=500; a flag given
// on the command line wins.
package main

import (
	"errors"
	"fmt"
	"os"
)

const usage = `usage: flarecast <command> [flags]

commands:
  serve     run the server (WebSocket on --listen, metrics on --admin-listen)
  publish   send NDJSON events from a file or stdin to the ingest socket
  tail      print live events from a server, one line each (or JSON lines)

Run 'flarecast <command> -h' for the flags of a command.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "serve":
		err = serve(args)
	case "publish":
		err = publish(args)
	case "tail":
		err = tail(args)
	case "-h", "--help", "help":
		fmt.Print(usage)
		return
	default:
		err = usageError(fmt.Sprintf("unknown command %q", cmd))
	}
	if err != nil {
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintf(os.Stderr, "flarecast: %s (see 'flarecast -h')\n", ue)
			os.Exit(2)
		}
		fmt.Fprintf(os.Stderr, "flarecast: %v\n", err)
		os.Exit(1)
	}
}

// usageError is a mistake on the command line: exit status 2.
type usageError string

func (e usageError) Error() string { return string(e) }
