package main

import (
	"flag"
	"fmt"
	"math"
	"math/big"
	"net/netip"
	"strconv"
	"strings"

	"github.com/flarecast/flarecast/auth"
	"github.com/flarecast/flarecast/engine"
)

// securityFlags are the serve flags of the README's Security section.
type securityFlags struct {
	mode           string
	files          auth.Files
	allowedOrigins string
	trustedProxies string
}

// addSecurityFlags registers the security flags on fs; apply turns them into cfg.
func addSecurityFlags(fs *flag.FlagSet, cfg *engine.Config) *securityFlags {
	sf := &securityFlags{mode: "none"}
	fs.StringVar(&sf.mode, "auth", sf.mode, "client authentication: none (trusted network only) or jwt")
	fs.StringVar(&sf.files.HS256Secret, "jwt-hs256-secret", "", "HS256 secret, at least 32 bytes (prefer --jwt-hs256-secret-file or FLARECAST_JWT_HS256_SECRET: flags show in ps)")
	fs.StringVar(&sf.files.HS256SecretFile, "jwt-hs256-secret-file", "", "file holding the HS256 secret")
	fs.StringVar(&sf.files.PublicKeyFile, "jwt-public-key", "", "PEM file of RSA (RS256) or ECDSA P-256 (ES256) public keys or certificates")
	fs.StringVar(&sf.files.JWKSFile, "jwks-file", "", "JSON Web Key Set file of RS256/ES256 keys, chosen by kid")
	fs.StringVar(&sf.files.Issuer, "jwt-issuer", "", "required iss claim (empty: not checked)")
	fs.StringVar(&sf.files.Audience, "jwt-audience", "", "required aud claim (empty: not checked)")
	fs.IntVar(&cfg.MaxConnections, "max-connections", cfg.MaxConnections, "WebSocket connections of the server; more get 503 (0: unlimited)")
	fs.IntVar(&cfg.MaxConnectionsPerIP, "max-connections-per-ip", cfg.MaxConnectionsPerIP, "connections per client address (IPv6: per /64); more get 429 (0: unlimited)")
	fs.Var(floatValue{&cfg.RateLimit}, "rate-limit", "client messages per second per connection; excess gets RATE_LIMITED, persistent excess a 1008 close (0: off)")
	fs.IntVar(&cfg.RateBurst, "rate-burst", cfg.RateBurst, "messages a client may send at once under --rate-limit (0: one second's worth)")
	fs.StringVar(&sf.allowedOrigins, "allowed-origins", "", "comma-separated browser origins allowed to connect, e.g. https://ops.example.com; others get 403 (empty: no check)")
	fs.StringVar(&sf.trustedProxies, "trusted-proxies", "", "comma-separated addresses or CIDRs of proxies whose X-Forwarded-For/X-Real-IP name the client (empty: trust none)")
	fs.Var(sizeValue{&cfg.MaxHeaderSize}, "max-header-size", "largest upgrade request header; larger gets 431")
	return sf
}

// apply loads the keys and parses the lists into cfg.
func (sf *securityFlags) apply(cfg *engine.Config) error {
	switch sf.mode {
	case "none":
		if sf.files != (auth.Files{}) {
			return usageError("--jwt-* and --jwks-file need --auth jwt")
		}
	case "jwt":
		v, err := auth.Load(sf.files)
		if err != nil {
			return usageError("--auth jwt: " + err.Error())
		}
		cfg.Auth = v
		if cfg.Logger != nil {
			cfg.Logger.Info("authentication on", "mode", "jwt", "algorithms", strings.Join(v.Algorithms(), ","))
		}
	default:
		return usageError(fmt.Sprintf("--auth: want none or jwt, got %q", sf.mode))
	}
	cfg.AllowedOrigins = append(cfg.AllowedOrigins, splitList(sf.allowedOrigins)...)
	for _, p := range splitList(sf.trustedProxies) {
		prefix, err := netip.ParsePrefix(p)
		if err != nil {
			addr, aerr := netip.ParseAddr(p)
			if aerr != nil {
				return usageError(fmt.Sprintf("--trusted-proxies: %q is neither an address nor a CIDR", p))
			}
			prefix = netip.PrefixFrom(addr.Unmap(), addr.Unmap().BitLen())
		}
		cfg.TrustedProxies = append(cfg.TrustedProxies, prefix.Masked())
	}
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

// floatValue is a non-negative, finite decimal flag (--rate-limit 0.5). A
// number too small to be represented (1e-400) is refused rather than read as
// 0, which would mean "off".
type floatValue struct{ p *float64 }

func (f floatValue) String() string {
	if f.p == nil {
		return "0"
	}
	return strconv.FormatFloat(*f.p, 'f', -1, 64)
}

func (f floatValue) Set(s string) error {
	t := strings.TrimSpace(s)
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return fmt.Errorf("want a finite non-negative number, got %q", s)
	}
	if v == 0 {
		if exact, _, err := big.ParseFloat(t, 0, 64, big.ToNearestEven); err == nil && exact.Sign() != 0 {
			return fmt.Errorf("%q is too small to represent (0 would mean off)", s)
		}
	}
	*f.p = v
	return nil
}
