// Command flarecast-loadtest measures a flarecast server on loopback:
// connections held and their memory, deliveries per second, end-to-end
// latency, and exact loss and duplication. See package loadtest.
//
//	flarecast-loadtest --spawn --scenario seed        # starts bin/flarecast itself
//	flarecast-loadtest --scenario density --conns 19000 --url ws://127.0.0.1:8080/ws
//
// Exit status: 0 when every expected delivery arrived exactly once and every
// connection was held, 1 when the run measured a loss, a duplicate or a
// refused connection (the report is still written), 2 for a usage error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/flarecast/flarecast/loadtest"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == loadtest.BaselineServerFlag {
		// The raw-write baseline server --compare-baseline starts (loadtest/baseline.go).
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		if err := loadtest.RunBaselineServer(ctx, os.Args[2:], os.Stderr); err != nil {
			fmt.Fprintf(os.Stderr, "flarecast-loadtest: %v\n", err)
			os.Exit(1)
		}
		return
	}
	cfg, err := loadtest.ParseArgs(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "flarecast-loadtest: %v\n", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if cfg.AbusersOnly {
		// The abusers' process a run with --abusers starts (loadtest/abuseproc.go).
		if err := loadtest.RunAbusersOnly(ctx, cfg, os.Stdin, os.Stdout, os.Stderr); err != nil {
			fmt.Fprintf(os.Stderr, "flarecast-loadtest: %v\n", err)
			os.Exit(1)
		}
		return
	}
	res, err := loadtest.Run(ctx, cfg, os.Stderr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "flarecast-loadtest: %v\n", err)
		os.Exit(1)
	}
	if err := res.WriteFiles(cfg.Out); err != nil {
		fmt.Fprintf(os.Stderr, "flarecast-loadtest: %v\n", err)
	}
	res.WriteTable(os.Stdout)
	if !res.OK {
		os.Exit(1)
	}
}
