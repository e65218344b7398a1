package loadtest

import (
	"context"
	"fmt"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// fdMargin is the descriptors the load tester needs besides its WebSocket
// connections: the ingest socket, admin scrapes, the spawned server's pipes,
// output files, the Go runtime's epoll and friends.
const fdMargin = 64

// fdLimit is what the open-file limit allowed.
type fdLimit struct {
	Soft      uint64 `json:"soft"`
	Hard      uint64 `json:"hard"`
	Requested int    `json:"requested_conns"`
	Allowed   int    `json:"allowed_conns"`
	Capped    bool   `json:"capped"`
	Message   string `json:"message,omitempty"`
}

// raiseNoFile raises this process's RLIMIT_NOFILE soft limit to the hard
// limit and returns how many connections fit under it. A spawned server
// inherits the raised limit; it has its own budget of the same size.
func raiseNoFile(conns int) (fdLimit, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return fdLimit{}, fmt.Errorf("read RLIMIT_NOFILE: %w", err)
	}
	if rl.Cur < rl.Max {
		raised := rl
		raised.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err == nil {
			rl = raised
		}
	}
	l := fdLimit{Soft: rl.Cur, Hard: rl.Max, Requested: conns, Allowed: conns}
	if uint64(conns)+fdMargin > rl.Cur {
		l.Allowed = max(int(rl.Cur)-fdMargin, 1)
		l.Capped = true
		l.Message = fmt.Sprintf("open-file limit binds: %d connections + %d spare descriptors > RLIMIT_NOFILE %d (hard %d); capped at %d connections",
			conns, fdMargin, rl.Cur, rl.Max, l.Allowed)
	}
	return l, nil
}

// sourceAddrs returns the loopback source addresses 127.0.0.1 … 127.0.0.n
// the client sockets are spread over. One address has about 28,000
// ephemeral ports (net.ipv4.ip_local_port_range), so 100,000 connections
// need several.
func sourceAddrs(n, conns int) []net.IP {
	if n <= 0 {
		n = max(4, (conns+19999)/20000)
	}
	n = min(n, 254)
	ips := make([]net.IP, n)
	for i := range ips {
		ips[i] = net.IPv4(127, 0, 0, byte(i+1))
	}
	return ips
}

// dialerFrom returns a dial function whose sockets are bound to the source
// address ip. IP_BIND_ADDRESS_NO_PORT lets the kernel pick the port at
// connect time by the whole 4-tuple instead of reserving one at bind time.
func dialerFrom(ip net.IP, timeout time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{
		LocalAddr: &net.TCPAddr{IP: ip},
		Timeout:   timeout,
		Control: func(network, address string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
			})
			if err != nil {
				return err
			}
			return serr
		},
	}
	return d.DialContext
}
