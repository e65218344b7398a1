package auth

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/flarecast/flarecast/codec"
	"github.com/flarecast/flarecast/filterindex"
)

// MinSecretSize is the shortest HS256 secret accepted: RFC 7518 §3.2 asks
// for a key at least as long as the hash output (256 bits).
const MinSecretSize = 32

// MinRSABits is the smallest RSA modulus accepted for RS256.
const MinRSABits = 2048

// Claims is what the server keeps of a verified token. It is immutable once
// Verify returns it, so the event loop and the dispatcher may share it.
type Claims struct {
	Subject   string
	ExpiresAt time.Time
	// Scope restricts every subscription of the holder; nil when the token
	// has no "flarecast" claim (unrestricted). Normalized.
	Scope *filterindex.Filter
}

// SameHolder reports whether a token with claims o may act on a session
// created with c: same subject and same scope. A session made without
// authentication (c == nil) takes only a connection without one, and
// conversely.
func (c *Claims) SameHolder(o *Claims) bool {
	switch {
	case c == nil || o == nil:
		return c == o
	case c.Subject != o.Subject:
		return false
	case c.Scope == nil || o.Scope == nil:
		return c.Scope == o.Scope
	}
	return sameFilter(c.Scope, o.Scope)
}

// Error is a refused token. Reason is short and safe to show the client:
// it becomes the body of the HTTP 401 or the message of an UNAUTHORIZED error.
type Error struct {
	Reason string
	Err    error // the underlying cause, for logs; may be nil
}

func (e *Error) Error() string {
	if e.Err == nil {
		return "auth: " + e.Reason
	}
	return "auth: " + e.Reason + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// ErrNoToken is returned for an upgrade request that carries no token.
var ErrNoToken = &Error{Reason: "missing token: send Authorization: Bearer <jwt> or ?token=<jwt>"}

// Key is a public key that verifies RS256 (RSA) or ES256 (ECDSA P-256)
// tokens. ID is the JWKS "kid", empty for a key given as PEM.
type Key struct {
	ID     string
	Public any // *rsa.PublicKey or *ecdsa.PublicKey
}

// Options configures a Verifier. At least one of HS256Secret and Keys is needed.
type Options struct {
	// HS256Secret verifies HS256 tokens; at least MinSecretSize bytes.
	HS256Secret []byte
	// Keys verify RS256 and ES256 tokens.
	Keys []Key
	// Issuer and Audience, when set, must match the token's "iss" and one of its "aud".
	Issuer   string
	Audience string
	// Leeway tolerates clock skew on exp and nbf when a token is verified.
	// Claims.ExpiresAt stays the token's exp: a live session ends then.
	Leeway time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Verifier checks tokens. It is safe for concurrent use: every event loop
// shares one.
type Verifier struct {
	secret []byte
	rsa    []Key
	ec     []Key
	now    func() time.Time
	parser *jwt.Parser
	algs   []string
}

// New builds a Verifier from keys already in memory; see Load for files.
func New(opts Options) (*Verifier, error) {
	v := &Verifier{now: opts.Now}
	if v.now == nil {
		v.now = time.Now
	}
	if opts.HS256Secret != nil {
		if len(opts.HS256Secret) < MinSecretSize {
			return nil, fmt.Errorf("HS256 secret is %d bytes; it must be at least %d", len(opts.HS256Secret), MinSecretSize)
		}
		v.secret = append([]byte(nil), opts.HS256Secret...)
		v.algs = append(v.algs, jwt.SigningMethodHS256.Alg())
	}
	for _, k := range opts.Keys {
		if err := checkKey(k.Public); err != nil {
			return nil, fmt.Errorf("key %q: %w", k.ID, err)
		}
		switch k.Public.(type) {
		case *rsa.PublicKey:
			v.rsa = append(v.rsa, k)
		case *ecdsa.PublicKey:
			v.ec = append(v.ec, k)
		}
	}
	if len(v.rsa) > 0 {
		v.algs = append(v.algs, jwt.SigningMethodRS256.Alg())
	}
	if len(v.ec) > 0 {
		v.algs = append(v.algs, jwt.SigningMethodES256.Alg())
	}
	if len(v.algs) == 0 {
		return nil, errors.New("no key to verify tokens with: give an HS256 secret, a public key or a JWKS")
	}
	popts := []jwt.ParserOption{
		jwt.WithValidMethods(v.algs),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(opts.Leeway),
		jwt.WithTimeFunc(v.now),
		jwt.WithStrictDecoding(),
	}
	if opts.Issuer != "" {
		popts = append(popts, jwt.WithIssuer(opts.Issuer))
	}
	if opts.Audience != "" {
		popts = append(popts, jwt.WithAudience(opts.Audience))
	}
	v.parser = jwt.NewParser(popts...)
	return v, nil
}

// Algorithms returns the algorithms this Verifier accepts, for logs.
func (v *Verifier) Algorithms() []string { return append([]string(nil), v.algs...) }

// tokenClaims is the token's payload as parsed.
type tokenClaims struct {
	jwt.RegisteredClaims
	Flarecast json.RawMessage `json:"flarecast,omitempty"`
}

// Verify checks token's signature and claims and returns what the server
// keeps of it. Every failure is an *Error.
func (v *Verifier) Verify(token string) (*Claims, error) {
	if token == "" {
		return nil, ErrNoToken
	}
	var tc tokenClaims
	if _, err := v.parser.ParseWithClaims(token, &tc, v.key); err != nil {
		return nil, &Error{Reason: reason(err), Err: err}
	}
	if tc.Subject == "" {
		return nil, &Error{Reason: "token has no sub claim"}
	}
	c := &Claims{Subject: tc.Subject, ExpiresAt: tc.ExpiresAt.Time}
	if len(tc.Flarecast) > 0 && string(tc.Flarecast) != "null" {
		scope, merr := codec.DecodeFilter(tc.Flarecast, "flarecast")
		if merr != nil {
			return nil, &Error{Reason: "invalid flarecast scope claim: " + merr.Message}
		}
		c.Scope = &scope
	}
	return c, nil
}

// Expired reports whether a token with claims c has expired at now.
func (c *Claims) Expired(now time.Time) bool {
	return !c.ExpiresAt.IsZero() && !now.Before(c.ExpiresAt)
}

// key picks the keys that may verify t. The algorithm (already limited to
// v.algs by the parser) selects the kind of key; the signing method is
// checked to be the library's own implementation of that algorithm, so a
// key only ever reaches the verifier of its own kind.
func (v *Verifier) key(t *jwt.Token) (any, error) {
	kid, _ := t.Header["kid"].(string)
	switch t.Method {
	case jwt.SigningMethodHS256:
		if v.secret != nil {
			return v.secret, nil
		}
	case jwt.SigningMethodRS256:
		return pick(v.rsa, kid)
	case jwt.SigningMethodES256:
		return pick(v.ec, kid)
	}
	return nil, fmt.Errorf("algorithm %s not accepted", t.Method.Alg())
}

// pick returns the keys a token with key id kid may be signed with: keys
// without an id always, keys with one when kid is empty or names them.
func pick(keys []Key, kid string) (any, error) {
	var set jwt.VerificationKeySet
	for _, k := range keys {
		if k.ID == "" || kid == "" || k.ID == kid {
			set.Keys = append(set.Keys, k.Public)
		}
	}
	switch len(set.Keys) {
	case 0:
		return nil, fmt.Errorf("no key with kid %q", kid)
	case 1:
		return set.Keys[0], nil
	}
	return set, nil
}

// reason turns a parse failure into the short reason shown to the client.
func reason(err error) string {
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "malformed token"
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return "no key verifies this token"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return "invalid token signature or algorithm"
	case errors.Is(err, jwt.ErrTokenExpired):
		return "token expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return "token not valid yet"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		for _, claim := range []string{"iss", "aud"} {
			if strings.Contains(err.Error(), claim+" claim") {
				return "token has no " + claim + " claim"
			}
		}
		return "token has no exp claim"
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return "wrong token issuer"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return "wrong token audience"
	}
	return "invalid token"
}
