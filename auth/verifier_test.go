package auth_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/flarecast/flarecast/auth"
)

var secret = []byte("0123456789abcdef0123456789abcdef") // 32 bytes

// Keys are generated once per test binary: RSA generation is slow under -race.
var (
	keysOnce sync.Once
	rsaKey   *rsa.PrivateKey
	rsaKey2  *rsa.PrivateKey
	ecKey    *ecdsa.PrivateKey
	ecKey2   *ecdsa.PrivateKey
)

func keys(t testing.TB) {
	t.Helper()
	keysOnce.Do(func() {
		var err error
		if rsaKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if rsaKey2, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if ecKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			panic(err)
		}
		if ecKey2, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			panic(err)
		}
	})
}

func sign(t testing.TB, method jwt.SigningMethod, key any, claims jwt.MapClaims, header map[string]any) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, claims)
	for k, v := range header {
		tok.Header[k] = v
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatalf("sign: %v", err)
	}
	return s
}

func valid(extra map[string]any) jwt.MapClaims {
	c := jwt.MapClaims{"sub": "alice", "exp": time.Now().Add(time.Hour).Unix()}
	for k, v := range extra {
		c[k] = v
	}
	return c
}

func pemOf(t testing.TB, pub any) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

func newVerifier(t testing.TB, opts auth.Options) *auth.Verifier {
	t.Helper()
	v, err := auth.New(opts)
	if err != nil {
		t.Fatalf("auth.New: %v", err)
	}
	return v
}

// wantRefused checks that token is refused with a reason containing want.
func wantRefused(t *testing.T, v *auth.Verifier, token, want string) {
	t.Helper()
	c, err := v.Verify(token)
	if err == nil {
		t.Fatalf("token accepted (claims %+v), want refused with %q", c, want)
	}
	var aerr *auth.Error
	if !errors.As(err, &aerr) {
		t.Fatalf("error %v is not an *auth.Error", err)
	}
	if !strings.Contains(aerr.Reason, want) {
		t.Fatalf("reason %q, want it to contain %q (err %v)", aerr.Reason, want, err)
	}
}

func TestAuthHS256(t *testing.T) {
	v := newVerifier(t, auth.Options{HS256Secret: secret})
	c, err := v.Verify(sign(t, jwt.SigningMethodHS256, secret, valid(nil), nil))
	if err != nil {
		t.Fatalf("valid token refused: %v", err)
	}
	if c.Subject != "alice" || c.Scope != nil || time.Until(c.ExpiresAt) < 59*time.Minute {
		t.Fatalf("claims %+v", c)
	}
	wantRefused(t, v, sign(t, jwt.SigningMethodHS256, []byte("another-secret-another-secret-xx"), valid(nil), nil), "signature")
	wantRefused(t, v, "", "missing token")
	wantRefused(t, v, "not.a.token", "malformed")
	// Stronger HMAC variants are not accepted either: the algorithm is pinned.
	wantRefused(t, v, sign(t, jwt.SigningMethodHS512, secret, valid(nil), nil), "algorithm")
}

func TestAuthAlgNoneRefused(t *testing.T) {
	v := newVerifier(t, auth.Options{HS256Secret: secret})
	none := sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, valid(nil), nil)
	wantRefused(t, v, none, "algorithm")
	// The same with the header edited by hand to "NONE" and an empty signature.
	parts := strings.Split(none, ".")
	hdr := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"NONE","typ":"JWT"}`))
	wantRefused(t, v, hdr+"."+parts[1]+".", "")
}

// TestAuthHSRSConfusion is the classic attack: the server's RSA public key is
// public, so an attacker signs an HS256 token with the PEM text as the HMAC
// secret. It must fail whether or not the server also has an HS256 secret.
func TestAuthHSRSConfusion(t *testing.T) {
	keys(t)
	pubPEM := pemOf(t, &rsaKey.PublicKey)
	pub, err := auth.ParsePublicKeysPEM(pubPEM)
	if err != nil {
		t.Fatal(err)
	}
	forged := sign(t, jwt.SigningMethodHS256, pubPEM, valid(nil), nil)
	wantRefused(t, newVerifier(t, auth.Options{Keys: pub}), forged, "algorithm")
	wantRefused(t, newVerifier(t, auth.Options{Keys: pub, HS256Secret: secret}), forged, "signature")
	// And an RS256 token is not checked against the HMAC secret.
	rs := sign(t, jwt.SigningMethodRS256, rsaKey, valid(nil), nil)
	wantRefused(t, newVerifier(t, auth.Options{HS256Secret: secret}), rs, "algorithm")
}

func TestAuthRS256AndES256PEM(t *testing.T) {
	keys(t)
	dir := t.TempDir()
	rsaFile := filepath.Join(dir, "rsa.pem")
	ecFile := filepath.Join(dir, "ec.pem")
	os.WriteFile(rsaFile, pemOf(t, &rsaKey.PublicKey), 0o600)
	os.WriteFile(ecFile, pemOf(t, &ecKey.PublicKey), 0o600)

	rv, err := auth.Load(auth.Files{PublicKeyFile: rsaFile})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rv.Verify(sign(t, jwt.SigningMethodRS256, rsaKey, valid(nil), nil)); err != nil {
		t.Fatalf("RS256: %v", err)
	}
	wantRefused(t, rv, sign(t, jwt.SigningMethodRS256, rsaKey2, valid(nil), nil), "signature")
	wantRefused(t, rv, sign(t, jwt.SigningMethodRS512, rsaKey, valid(nil), nil), "algorithm")
	wantRefused(t, rv, sign(t, jwt.SigningMethodPS256, rsaKey, valid(nil), nil), "algorithm")
	wantRefused(t, rv, sign(t, jwt.SigningMethodES256, ecKey, valid(nil), nil), "algorithm")

	ev, err := auth.Load(auth.Files{PublicKeyFile: ecFile})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ev.Verify(sign(t, jwt.SigningMethodES256, ecKey, valid(nil), nil)); err != nil {
		t.Fatalf("ES256: %v", err)
	}
	wantRefused(t, ev, sign(t, jwt.SigningMethodES256, ecKey2, valid(nil), nil), "signature")
	wantRefused(t, ev, sign(t, jwt.SigningMethodRS256, rsaKey, valid(nil), nil), "algorithm")
}

func TestAuthKeyFiles(t *testing.T) {
	keys(t)
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// A secret file's trailing newline is not part of the secret.
	v, err := auth.Load(auth.Files{HS256SecretFile: write("secret", append(secret, '\n'))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(sign(t, jwt.SigningMethodHS256, secret, valid(nil), nil)); err != nil {
		t.Fatalf("secret from file: %v", err)
	}

	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	privDER, _ := x509.MarshalPKCS8PrivateKey(ecKey)
	for name, files := range map[string]auth.Files{
		"short secret":     {HS256Secret: "short"},
		"secret twice":     {HS256Secret: string(secret), HS256SecretFile: write("s2", secret)},
		"no key":           {},
		"missing file":     {PublicKeyFile: filepath.Join(dir, "absent.pem")},
		"RSA 1024":         {PublicKeyFile: write("small.pem", pemOf(t, &small.PublicKey))},
		"EC P-384":         {PublicKeyFile: write("p384.pem", pemOf(t, &p384.PublicKey))},
		"private key":      {PublicKeyFile: write("priv.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER}))},
		"not PEM":          {PublicKeyFile: write("junk.pem", []byte("hello"))},
		"JWKS not JSON":    {JWKSFile: write("junk.json", []byte("{"))},
		"JWKS no usable":   {JWKSFile: write("enc.json", []byte(`{"keys":[{"kty":"RSA","use":"enc","n":"AQAB","e":"AQAB"}]}`))},
		"JWKS oct":         {JWKSFile: write("oct.json", []byte(`{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}`))},
		"JWKS bad EC":      {JWKSFile: write("badec.json", []byte(`{"keys":[{"kty":"EC","crv":"P-256","x":"AAAA","y":"AAAA"}]}`))},
		"JWKS off-curve":   {JWKSFile: write("offcurve.json", jwksJSON(t, jwkEC("x", &ecdsa.PublicKey{Curve: elliptic.P256(), X: big.NewInt(1), Y: big.NewInt(1)})))},
		"JWKS small RSA":   {JWKSFile: write("smallrsa.json", jwksJSON(t, jwkRSA("s", &small.PublicKey)))},
		"JWKS bad RSA exp": {JWKSFile: write("rsae.json", []byte(`{"keys":[{"kty":"RSA","n":"AQAB","e":"AA"}]}`))},
	} {
		if _, err := auth.Load(files); err == nil {
			t.Errorf("%s: Load accepted %+v", name, files)
		}
	}
}

func jwkRSA(kid string, pub *rsa.PublicKey) map[string]any {
	return map[string]any{"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
		"n": base64.RawURLEncoding.EncodeToString(pub.N.Bytes()),
		"e": base64.RawURLEncoding.EncodeToString(big.NewInt(int64(pub.E)).Bytes())}
}

func jwkEC(kid string, pub *ecdsa.PublicKey) map[string]any {
	return map[string]any{"kty": "EC", "kid": kid, "crv": "P-256",
		"x": base64.RawURLEncoding.EncodeToString(pub.X.FillBytes(make([]byte, 32))),
		"y": base64.RawURLEncoding.EncodeToString(pub.Y.FillBytes(make([]byte, 32)))}
}

func jwksJSON(t testing.TB, ks ...map[string]any) []byte {
	b, err := json.Marshal(map[string]any{"keys": ks})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestAuthJWKS(t *testing.T) {
	keys(t)
	set := jwksJSON(t,
		jwkRSA("r1", &rsaKey.PublicKey),
		jwkRSA("r2", &rsaKey2.PublicKey),
		jwkEC("e1", &ecKey.PublicKey),
		map[string]any{"kty": "RSA", "kid": "ps", "alg": "PS256", "n": "AQAB", "e": "AQAB"}, // skipped
		map[string]any{"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "AAAA"},            // skipped
	)
	ks, err := auth.ParseJWKS(set)
	if err != nil {
		t.Fatal(err)
	}
	if len(ks) != 3 {
		t.Fatalf("got %d keys, want 3 (r1, r2, e1)", len(ks))
	}
	v := newVerifier(t, auth.Options{Keys: ks})
	for name, tok := range map[string]string{
		"kid r1":     sign(t, jwt.SigningMethodRS256, rsaKey, valid(nil), map[string]any{"kid": "r1"}),
		"kid r2":     sign(t, jwt.SigningMethodRS256, rsaKey2, valid(nil), map[string]any{"kid": "r2"}),
		"no kid, r2": sign(t, jwt.SigningMethodRS256, rsaKey2, valid(nil), nil), // every RSA key is tried
		"kid e1":     sign(t, jwt.SigningMethodES256, ecKey, valid(nil), map[string]any{"kid": "e1"}),
	} {
		if _, err := v.Verify(tok); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	// kid r1 names the key to use: r2's signature under kid r1 fails.
	wantRefused(t, v, sign(t, jwt.SigningMethodRS256, rsaKey2, valid(nil), map[string]any{"kid": "r1"}), "signature")
	wantRefused(t, v, sign(t, jwt.SigningMethodRS256, rsaKey, valid(nil), map[string]any{"kid": "zz"}), "no key")
	wantRefused(t, v, sign(t, jwt.SigningMethodES256, ecKey2, valid(nil), nil), "signature")
}

func TestAuthTimeClaims(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	v := newVerifier(t, auth.Options{HS256Secret: secret, Now: func() time.Time { return now }})
	hs := func(c jwt.MapClaims) string { return sign(t, jwt.SigningMethodHS256, secret, c, nil) }
	wantRefused(t, v, hs(jwt.MapClaims{"sub": "a", "exp": now.Add(-time.Second).Unix()}), "expired")
	wantRefused(t, v, hs(jwt.MapClaims{"sub": "a", "exp": now.Unix()}), "expired")
	wantRefused(t, v, hs(jwt.MapClaims{"sub": "a"}), "no exp")
	wantRefused(t, v, hs(jwt.MapClaims{"sub": "a", "exp": now.Add(time.Hour).Unix(), "nbf": now.Add(time.Minute).Unix()}), "not valid yet")
	wantRefused(t, v, hs(jwt.MapClaims{"exp": now.Add(time.Hour).Unix()}), "no sub")
	wantRefused(t, v, hs(jwt.MapClaims{"sub": "a", "exp": "tomorrow"}), "")
	c, err := v.Verify(hs(jwt.MapClaims{"sub": "a", "exp": now.Add(time.Hour).Unix(), "nbf": now.Add(-time.Minute).Unix()}))
	if err != nil {
		t.Fatal(err)
	}
	if !c.ExpiresAt.Equal(now.Add(time.Hour)) || c.Expired(now) || !c.Expired(now.Add(time.Hour)) {
		t.Fatalf("expiry %v", c.ExpiresAt)
	}
}

func TestAuthIssuerAudience(t *testing.T) {
	v := newVerifier(t, auth.Options{HS256Secret: secret, Issuer: "https://idp.example", Audience: "flarecast"})
	hs := func(extra map[string]any) string { return sign(t, jwt.SigningMethodHS256, secret, valid(extra), nil) }
	if _, err := v.Verify(hs(map[string]any{"iss": "https://idp.example", "aud": []string{"other", "flarecast"}})); err != nil {
		t.Fatal(err)
	}
	wantRefused(t, v, hs(map[string]any{"iss": "https://evil.example", "aud": "flarecast"}), "issuer")
	wantRefused(t, v, hs(map[string]any{"iss": "https://idp.example", "aud": "other"}), "audience")
	wantRefused(t, v, hs(map[string]any{"aud": "flarecast"}), "iss")
	wantRefused(t, v, hs(map[string]any{"iss": "https://idp.example"}), "aud")
}

func TestAuthScopeClaim(t *testing.T) {
	v := newVerifier(t, auth.Options{HS256Secret: secret})
	c, err := v.Verify(sign(t, jwt.SigningMethodHS256, secret, valid(map[string]any{
		"flarecast": map[string]any{"sources": []string{"team-b", "team-a", "team-a"}, "labels": map[string]string{"tenant": "acme"}},
	}), nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.Scope == nil || strings.Join(c.Scope.Sources, ",") != "team-a,team-b" ||
		len(c.Scope.Labels) != 1 || c.Scope.Labels[0].Key != "tenant" || c.Scope.Labels[0].Value != "acme" {
		t.Fatalf("scope %+v (want normalized sources and the tenant label)", c.Scope)
	}
	c, err = v.Verify(sign(t, jwt.SigningMethodHS256, secret, valid(map[string]any{"flarecast": nil}), nil))
	if err != nil || c.Scope != nil {
		t.Fatalf("null scope: %+v %v", c, err)
	}
	for _, bad := range []any{
		"acme",
		map[string]any{"tenants": []string{"acme"}},
		map[string]any{"severities": []string{"P9"}},
		map[string]any{"labels": map[string]int{"tenant": 1}},
	} {
		wantRefused(t, v, sign(t, jwt.SigningMethodHS256, secret, valid(map[string]any{"flarecast": bad}), nil), "scope")
	}
}

func TestAuthSameHolder(t *testing.T) {
	v := newVerifier(t, auth.Options{HS256Secret: secret})
	claims := func(sub string, scope any) *auth.Claims {
		extra := map[string]any{"sub": sub}
		if scope != nil {
			extra["flarecast"] = scope
		}
		c, err := v.Verify(sign(t, jwt.SigningMethodHS256, secret, valid(extra), nil))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	acme := map[string]any{"labels": map[string]string{"tenant": "acme"}}
	globex := map[string]any{"labels": map[string]string{"tenant": "globex"}}
	a := claims("alice", acme)
	for _, tc := range []struct {
		name string
		a, b *auth.Claims
		want bool
	}{
		{"same subject and scope", a, claims("alice", acme), true},
		{"other subject", a, claims("bob", acme), false},
		{"other scope", a, claims("alice", globex), false},
		{"scope dropped", a, claims("alice", nil), false},
		{"both unrestricted", claims("alice", nil), claims("alice", nil), true},
		{"no auth both", nil, nil, true},
		{"no auth then auth", nil, a, false},
		{"auth then none", a, nil, false},
	} {
		if got := tc.a.SameHolder(tc.b); got != tc.want {
			t.Errorf("%s: SameHolder = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// BenchmarkAuthVerify measures one token verification per algorithm: the
// event loop does one per upgrade and per auth message.
func BenchmarkAuthVerify(b *testing.B) {
	keys(b)
	for _, tc := range []struct {
		name   string
		method jwt.SigningMethod
		sign   any
		opts   auth.Options
	}{
		{"HS256", jwt.SigningMethodHS256, secret, auth.Options{HS256Secret: secret}},
		{"RS256", jwt.SigningMethodRS256, rsaKey, auth.Options{Keys: []auth.Key{{Public: &rsaKey.PublicKey}}}},
		{"ES256", jwt.SigningMethodES256, ecKey, auth.Options{Keys: []auth.Key{{Public: &ecKey.PublicKey}}}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			v := newVerifier(b, tc.opts)
			tok := sign(b, tc.method, tc.sign, valid(map[string]any{"flarecast": map[string]any{"labels": map[string]string{"tenant": "acme"}}}), nil)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.Verify(tok); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
