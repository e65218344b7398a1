package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// newFlagSet returns a flag set whose errors come back to the caller as
// usage errors instead of exiting.
func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

// parseFlags applies FLARECAST_* environment variables, then the command
// line, so a flag given explicitly wins over the environment.
func parseFlags(fs *flag.FlagSet, args []string) error {
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		env := "FLARECAST_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok && err == nil {
			if e := fs.Set(f.Name, v); e != nil {
				err = usageError(fmt.Sprintf("%s=%q: %v", env, v, e))
			}
		}
	})
	if err != nil {
		return err
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			fs.SetOutput(os.Stdout)
			fmt.Printf("usage: flarecast %s [flags]\n\nflags (each also FLARECAST_<FLAG>):\n", fs.Name())
			fs.PrintDefaults()
			os.Exit(0)
		}
		return usageError(err.Error())
	}
	return nil
}

// boolValue is a boolean flag that takes its value as the next argument
// (`--compression false`), as the seed's configuration is written, and also
// accepts `--compression=false`.
type boolValue struct{ p *bool }

func (b boolValue) String() string {
	if b.p == nil {
		return "false"
	}
	return strconv.FormatBool(*b.p)
}

func (b boolValue) Set(s string) error {
	v, err := strconv.ParseBool(s)
	if err != nil {
		return fmt.Errorf("want true or false, got %q", s)
	}
	*b.p = v
	return nil
}

// sizeValue is a byte size flag: 65536, 64KiB, 64KB, 1MiB, 1M.
type sizeValue struct{ p *int }

func (s sizeValue) String() string {
	if s.p == nil {
		return "0"
	}
	return formatSize(*s.p)
}

func (s sizeValue) Set(v string) error {
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	*s.p = n
	return nil
}

var sizeUnits = []struct {
	suffix string
	mult   int
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
	{"KB", 1000}, {"MB", 1000 * 1000}, {"GB", 1000 * 1000 * 1000},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"B", 1},
}

// maxSize bounds every size flag: larger than any memory the server could
// use, and far enough below the int range that the engine's arithmetic on
// sizes (a message's length plus a header, a limit plus one) cannot overflow.
const maxSize = 1 << 40

func parseSize(v string) (int, error) {
	s := strings.TrimSpace(v)
	mult := 1
	for _, u := range sizeUnits {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.Atoi(s)
	if err != nil && errors.Is(err, strconv.ErrRange) && !strings.HasPrefix(s, "-") {
		n = maxSize + 1 // too large, whatever the unit
	} else if err != nil || n < 0 {
		return 0, fmt.Errorf("want a size such as 65536 or 64KiB, got %q", v)
	}
	if n > maxSize/mult {
		return 0, fmt.Errorf("too large: at most 1TiB (%d bytes), got %q", maxSize, v)
	}
	return n * mult, nil
}

func formatSize(n int) string {
	switch {
	case n > 0 && n%(1<<20) == 0:
		return strconv.Itoa(n>>20) + "MiB"
	case n > 0 && n%(1<<10) == 0:
		return strconv.Itoa(n>>10) + "KiB"
	}
	return strconv.Itoa(n)
}
