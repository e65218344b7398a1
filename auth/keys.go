package auth

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"strings"
)

// Files names where a Verifier's keys are, as `flarecast serve` takes them.
type Files struct {
	HS256Secret     string // the secret itself (prefer the file: flags show up in ps)
	HS256SecretFile string // a file holding the secret; trailing newlines are dropped
	PublicKeyFile   string // PEM: PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE blocks
	JWKSFile        string // a JSON Web Key Set
	Issuer          string
	Audience        string
}

// Load reads the keys f names and builds a Verifier. Keys are read once:
// rotate by restarting (sessions survive only within a process anyway).
func Load(f Files) (*Verifier, error) {
	var opts Options
	opts.Issuer, opts.Audience = f.Issuer, f.Audience
	switch {
	case f.HS256Secret != "" && f.HS256SecretFile != "":
		return nil, errors.New("give the HS256 secret or a file holding it, not both")
	case f.HS256Secret != "":
		opts.HS256Secret = []byte(f.HS256Secret)
	case f.HS256SecretFile != "":
		b, err := os.ReadFile(f.HS256SecretFile)
		if err != nil {
			return nil, fmt.Errorf("HS256 secret file: %w", err)
		}
		opts.HS256Secret = bytes.TrimRight(b, "\r\n")
	}
	if f.PublicKeyFile != "" {
		b, err := os.ReadFile(f.PublicKeyFile)
		if err != nil {
			return nil, fmt.Errorf("public key file: %w", err)
		}
		keys, err := ParsePublicKeysPEM(b)
		if err != nil {
			return nil, fmt.Errorf("public key file %s: %w", f.PublicKeyFile, err)
		}
		opts.Keys = append(opts.Keys, keys...)
	}
	if f.JWKSFile != "" {
		b, err := os.ReadFile(f.JWKSFile)
		if err != nil {
			return nil, fmt.Errorf("JWKS file: %w", err)
		}
		keys, err := ParseJWKS(b)
		if err != nil {
			return nil, fmt.Errorf("JWKS file %s: %w", f.JWKSFile, err)
		}
		opts.Keys = append(opts.Keys, keys...)
	}
	return New(opts)
}

// ParsePublicKeysPEM returns the public keys of every PEM block in data
// (several keys let a rotation overlap). It refuses private keys: the
// server only verifies, and a private key has no business on it.
func ParsePublicKeysPEM(data []byte) ([]Key, error) {
	var keys []Key
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		var pub any
		var err error
		switch block.Type {
		case "PUBLIC KEY":
			pub, err = x509.ParsePKIXPublicKey(block.Bytes)
		case "RSA PUBLIC KEY":
			pub, err = x509.ParsePKCS1PublicKey(block.Bytes)
		case "CERTIFICATE":
			var cert *x509.Certificate
			if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
				pub = cert.PublicKey
			}
		default:
			if strings.Contains(block.Type, "PRIVATE KEY") {
				return nil, fmt.Errorf("PEM block %q is a private key; give the public key only", block.Type)
			}
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("PEM block %q: %w", block.Type, err)
		}
		if err := checkKey(pub); err != nil {
			return nil, err
		}
		keys = append(keys, Key{Public: pub})
	}
	if len(keys) == 0 {
		return nil, errors.New("no PEM public key or certificate found")
	}
	return keys, nil
}

// checkKey accepts RSA keys of MinRSABits or more and ECDSA P-256 keys.
func checkKey(pub any) error {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < MinRSABits {
			return fmt.Errorf("RSA key of %d bits; at least %d are required", k.N.BitLen(), MinRSABits)
		}
		return nil
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return fmt.Errorf("ECDSA key on %s; ES256 needs P-256", k.Curve.Params().Name)
		}
		return nil
	}
	return fmt.Errorf("unsupported key type %T: RS256 (RSA) and ES256 (ECDSA P-256) only", pub)
}

// jwk is one JSON Web Key (RFC 7517) as far as RS256 and ES256 need it.
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
	N   string `json:"n"`
	E   string `json:"e"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
}

// ParseJWKS returns the signature keys of a JSON Web Key Set that this
// server can use. Keys meant for something else are skipped: "use":"enc",
// an "alg" other than RS256 or ES256, EC curves other than P-256, and key
// types other than RSA and EC. A symmetric ("oct") key is refused outright:
// HS256 secrets are configured on their own, never mixed with public keys.
// A key that claims to be usable but is malformed is an error, and so is a
// set with no usable key.
func ParseJWKS(data []byte) ([]Key, error) {
	var set struct {
		Keys []jwk `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("not a JWKS document: %w", err)
	}
	var keys []Key
	for i, k := range set.Keys {
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		var pub any
		var err error
		switch k.Kty {
		case "RSA":
			if k.Alg != "" && k.Alg != "RS256" {
				continue
			}
			pub, err = rsaJWK(k)
		case "EC":
			if (k.Alg != "" && k.Alg != "ES256") || k.Crv != "P-256" {
				continue
			}
			pub, err = ecJWK(k)
		case "oct":
			return nil, fmt.Errorf("key %d (kid %q) is symmetric; configure HS256 secrets with --jwt-hs256-secret-file", i, k.Kid)
		default:
			continue
		}
		if err == nil {
			err = checkKey(pub)
		}
		if err != nil {
			return nil, fmt.Errorf("key %d (kid %q): %w", i, k.Kid, err)
		}
		keys = append(keys, Key{ID: k.Kid, Public: pub})
	}
	if len(keys) == 0 {
		return nil, errors.New("no RS256 or ES256 signature key in the set")
	}
	return keys, nil
}

func rsaJWK(k jwk) (*rsa.PublicKey, error) {
	n, err := b64(k.N, "n")
	if err != nil {
		return nil, err
	}
	e, err := b64(k.E, "e")
	if err != nil {
		return nil, err
	}
	if len(e) == 0 || len(e) > 4 {
		return nil, errors.New(`"e" is not a valid RSA exponent`)
	}
	exp := new(big.Int).SetBytes(e)
	if exp.Int64() < 3 || exp.Bit(0) == 0 {
		return nil, errors.New(`"e" is not a valid RSA exponent`)
	}
	return &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(exp.Int64())}, nil
}

func ecJWK(k jwk) (*ecdsa.PublicKey, error) {
	x, err := b64(k.X, "x")
	if err != nil {
		return nil, err
	}
	y, err := b64(k.Y, "y")
	if err != nil {
		return nil, err
	}
	if len(x) != 32 || len(y) != 32 {
		return nil, errors.New(`"x" and "y" must be 32 bytes each for P-256`)
	}
	point := append(append([]byte{4}, x...), y...)
	return ecdsa.ParseUncompressedPublicKey(elliptic.P256(), point) // checks the point is on the curve
}

func b64(s, name string) ([]byte, error) {
	if s == "" {
		return nil, fmt.Errorf("%q is missing", name)
	}
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
	if err != nil {
		return nil, fmt.Errorf("%q is not base64url: %w", name, err)
	}
	return b, nil
}
